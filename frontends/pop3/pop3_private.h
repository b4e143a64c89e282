/*
 * What pop3d.c (the daemon: listeners, sqlited client, Redis, signals) and
 * pop3_session.c (one POP3 session's state machine) share. Private to
 * frontends/pop3/.
 */
#ifndef POP3_PRIVATE_H
#define POP3_PRIVATE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <uv.h>

#include "config.h"
#include "net.h"
#include "rpc_client.h"

typedef struct pop3_session pop3_session;
typedef struct pop3_lock pop3_lock;

/* The mailbox lock ([IN-USE]): BLAKE2b-128 of the lower-cased alias, hex. */
#define POP3_LOCK_ID_CHARS 32

typedef struct pop3d {
	uv_loop_t *loop;
	sm_config *cfg;
	rpc_client *rpc;
	sm_net_tls *tls;             /* NULL when no certificate could be loaded */
	sm_net_listener *listeners[2];
	pop3_session *sessions;      /* every live session */
	unsigned n_sessions;
	bool stopping;
	/* Mailbox locks held by this process (always consulted), and Redis
	 * (shared by every pop3d of an installation) when it is reachable. */
	pop3_lock *locks;
	struct sm_redis_conn *redis;  /* redis_conn.h; NULL: redis_url unusable */
	uint64_t lock_ttl_ms;
} pop3d;

/* Listener callbacks (pop3_session.c). */
extern const sm_net_callbacks pop3_net_callbacks;

/* Ends every session (SIGTERM): "-ERR [SYS/TEMP]" and close; nothing is
 * deleted for a session still in TRANSACTION. */
void pop3_sessions_shutdown(pop3d *d);

/*
 * The [IN-USE] lock (pop3d.c). pop3_lock_acquire calls cb exactly once
 * (from a later loop turn, or at once when Redis is down) with true when this session
 * now holds the mailbox; release is fire-and-forget. Held locks are
 * refreshed while the session lives, so a crashed pop3d's lock expires
 * after lock_ttl_ms.
 */
typedef void pop3_lock_cb(void *ctx, bool acquired);
void pop3_lock_acquire(pop3d *d, const char *id, pop3_lock_cb *cb, void *ctx);
void pop3_lock_release(pop3d *d, const char *id);
/* The last session is gone after pop3_sessions_shutdown (pop3d.c). */
void pop3d_sessions_gone(pop3d *d);

#endif
