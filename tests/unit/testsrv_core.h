/*
 * An sqlited in this process, without cmocka: what the opcode tests'
 * fixture (testsrv.h) and bench-view (bench/bench_view.c) both start.
 * The real network core (srv_net) on a unix socket in the caller's data
 * directory, the alias table and the directory; Redis absent (nothing
 * listens on port 1: the login throttle and the change events stay in
 * memory) unless no_events leaves events out altogether.
 *
 * Two phases: tsrv_init makes the pieces, its loop not yet running (the
 * caller adds domains and aliases, tsrv_add_alias runs the loop on the
 * caller's thread while the alias's database is created); tsrv_run
 * listens and runs the loop on a thread of its own until tsrv_stop.
 * Functions return 0 or an ENG_E* code; after an error the caller gives
 * up (a test fails, the bench exits): nothing is undone. Argon2id at its
 * cheapest (1 pass, 8 MiB), so keyrings are quick to make and unlock.
 * Compiled into sm_testutil (tests/CMakeLists.txt) and into bench-view.
 */
#ifndef TESTSRV_CORE_H
#define TESTSRV_CORE_H

#include <stdbool.h>
#include <stdint.h>
#include <uv.h>

#include "config.h"
#include "dir.h"
#include "buf.h"
#include "srv.h"
#include "srv_net.h"

struct tsrv {
	char *dir;          /* the data directory: the caller makes and removes it */
	sm_config *cfg;
	uv_loop_t loop;
	uv_thread_t thread;
	uv_async_t stop;
	srv s;
	int stopped;        /* 1 once the loop's thread has closed everything */
};

typedef struct tsrv_options {
	/* >= 0: an alias without sessions is closed at the next tick after
	 * that long (srv_alias.c); < 0: the default (300). */
	int idle_seconds;
	/* No srv_events: no login throttle, no change events. */
	bool no_events;
} tsrv_options;

/* The pieces of a server whose data directory is data_dir (kept in
 * t->dir, not copied); o NULL: idle_seconds -1, events in memory. */
int tsrv_init(struct tsrv *t, char *data_dir, const tsrv_options *o);
/* Before tsrv_run: an alias (a mailbox, password pw) in the directory and
 * its database; its id to id_r, its master key (secret memory, free it
 * with eng_secret_free) to *mk_r if mk_r is not NULL. The domain must
 * exist (dir_domain_add(t->s.dir, ...)). */
int tsrv_add_alias(struct tsrv *t, const char *address, const char *pw,
		   char id_r[DIR_ID_HEX_LEN + 1], uint8_t **mk_r);
/* Listens (net_opt NULL: srv_net's defaults; with sqlited_port 0, TCP
 * only with tcp_ephemeral) and runs the loop on a thread of its own. */
int tsrv_run(struct tsrv *t, const srv_net_options *net_opt);
/* Stops the server (sessions and aliases closed), joins the thread and
 * frees everything but the data directory; ENG_EBUSY if the loop's
 * thread ended before the aliases were closed or a handle stayed open. */
int tsrv_stop(struct tsrv *t);

/* Request helpers that hold no state: a payload starting with the
 * session (and a mailbox if not NULL); a one-range UID set field. */
void begin(eng_buf *b, const uint8_t *session, const char *mailbox);
void put_uidset(eng_buf *b, uint32_t tag, uint32_t lo, uint32_t hi);

#endif
