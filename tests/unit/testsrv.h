/*
 * The sqlited fixture the end-to-end opcode tests share (test_srv_ops,
 * test_srv_ops_fetch, test_srv_ops_view, and test_rpc_client_real for the
 * libuv client): a real server (srv_net) on a
 * unix socket in a temporary directory, its loop on a thread of its own,
 * a real directory with one alias (alice@example.org, password "correct
 * horse"), Redis absent (events and the throttle fall back to memory),
 * and helpers for the blocking client rpc_sync on the test's thread.
 * The server itself is testsrv_core.c's (no cmocka: bench-view starts
 * it too); this fixture asserts on it. test_srv_dir_ops starts it
 * empty, without events, with a client of its own (fx_options).
 * Built into sm_testutil, so only tests that use it pull it in (they link
 * sm_sqlited: their names start with test_srv or test_rpc).
 */
#ifndef TESTSRV_H
#define TESTSRV_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <uv.h>

#include "config.h"
#include "dir.h"
#include "keys.h"
#include "rpc_codec.h"
#include "rpc_sync.h"
#include "srv.h"
#include "srv_alias.h"
#include "srv_net.h"
#include "testsrv_core.h"

struct fx {
	struct tsrv srv;    /* the server (testsrv_core.h) */
	char alias_id[DIR_ID_HEX_LEN + 1];  /* alice's; "" with empty */
	rpc_sync *c;        /* the client of fx_options.client, else NULL */
};

/* What setup_opts starts; zero: setup's server but idle_seconds 0. */
struct fx_options {
	tsrv_options srv;             /* idle_seconds, no_events */
	const srv_net_options *net;   /* NULL: srv_net's defaults */
	bool empty;                   /* no domain and no alias */
	const char *client;           /* a client of this name in f->c */
};

struct meta {
	uint32_t uid;
	uint64_t modseq;
	uint32_t flags;
	size_t n_keywords;
};

extern const char password[];
/* Starts the server (setup: the defaults; setup_cfg: idle_seconds >= 0
 * closes an idle alias after that long; setup_net: and srv_net's options,
 * NULL for its defaults; setup_opts: any of fx_options). teardown stops
 * it, frees f->c and removes its files. */
int setup_opts(void **state, const struct fx_options *o);
int setup_net(void **state, int idle_seconds, const srv_net_options *net_opt);
int setup_cfg(void **state, int idle_seconds);
int setup(void **state);
int teardown(void **state);
rpc_sync *connect_client(struct fx *f);
int call(rpc_sync *c, uint16_t op, eng_buf *req, rpc_sync_resp *resp);
int unlock(rpc_sync *c, const char *alias, const char *pw,
	   uint8_t session[SRV_SESSION_BYTES]);
uint64_t get_u(const rpc_view *v, uint32_t tag);
int append(rpc_sync *c, const uint8_t *session, const char *mailbox,
	   const void *msg, size_t len, uint32_t flags, const char *key,
	   uint32_t *uid_r);
char *small_message(const char *subject, const char *msgid,
		    const char *references, const char *body);
size_t get_messages(const rpc_view *v, struct meta *out, size_t max);
/* Waits (up to 5 s) until the process's piece pool has nothing out and
 * nothing kept, as once no body stream runs, and checks it. */
void pieces_wait_idle(void);

#endif
