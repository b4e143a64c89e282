/*
 * What the MX daemon's files share (private to frontends/mx/):
 *   mxd.c          the daemon: configuration, listener, sqlited client,
 *                  Redis, sender authentication, signals;
 *   mx_session.c   one SMTP session: commands, limits, RCPT look-ups,
 *                  reading DATA/BDAT into memory;
 *   mx_deliver.c   one received message: sender authentication, then a
 *                  DELIVER per recipient with Received and
 *                  Authentication-Results prepended, one reply;
 *   mx_ratelimit.c rate limits in Redis (shared by every MX process) with
 *                  an in-memory fallback.
 * docs/mx.md describes the behaviour; every function runs on the loop thread.
 */
#ifndef MX_PRIVATE_H
#define MX_PRIVATE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <uv.h>

#include "buf.h"
#include "config.h"
#include "mx_auth.h"
#include "net.h"
#include "rpc_client.h"
#include "smtp_parser.h"

typedef struct mx_session mx_session;
typedef struct mx_rate_mem mx_rate_mem;

/* DELIVER attempts after a dropped sqlited connection (same idempotency key). */
#define MX_DELIVER_RETRIES 5
/* How long a DELIVER may take, waiting for a reconnect included. */
#define MX_DELIVER_TIMEOUT_MS 60000u
/* A queue id: 16 hex digits of process prefix + 8 of a counter. */
#define MX_QUEUE_ID_CHARS 24

typedef struct mxd {
	uv_loop_t *loop;
	sm_config *cfg;
	rpc_client *rpc;
	mx_auth *auth;
	sm_net_tls *tls;             /* NULL: no certificate, no STARTTLS */
	sm_net_listener *listener;
	mx_session *sessions;        /* every live session */
	unsigned n_sessions;
	bool stopping;
	struct sm_redis_conn *redis;  /* redis_conn.h; NULL: redis_url unusable */
	mx_rate_mem *rate_mem;       /* counters while Redis is down */
	/* Message bytes held in memory by every session (bounded by
	 * mx_max_buffered_mib: a message that would pass it gets 452 4.3.1). */
	uint64_t buffered;
	uint64_t max_buffered;
	char id_prefix[17];          /* random per process */
	uint32_t id_counter;
} mxd;

/* Listener callbacks (mx_session.c). */
extern const sm_net_callbacks mx_net_callbacks;
/* SIGTERM: idle sessions get 421 and close; one delivering finishes first. */
void mx_sessions_shutdown(mxd *d);
/* The last session is gone after mx_sessions_shutdown (mxd.c). */
void mxd_sessions_gone(mxd *d);
/* A new queue id (NUL-terminated, MX_QUEUE_ID_CHARS). */
void mxd_queue_id(mxd *d, char out[MX_QUEUE_ID_CHARS + 1]);

/* ---- mx_deliver.c ---- */

/* What mx_deliver needs from a session's transaction (owned by the session). */
typedef struct mx_envelope {
	const char *queue_id;
	const char *client_ip;
	const char *helo;
	const char *sender;          /* "" for the null sender */
	char **rcpts;                /* as accepted (RCPT TO, lower-cased domain) */
	size_t n_rcpts;
	bool esmtp;                  /* EHLO, not HELO */
	bool tls;
	const char *tls_info;        /* sm_net_tls_describe(), "" without TLS */
	bool smtputf8;
	const uint8_t *message;      /* CRLF line ends; valid until the callback */
	size_t len;
} mx_envelope;

/* The one reply for the message ("250 2.0.0 Ok: queued as ...\r\n"). */
typedef void mx_deliver_cb(void *ctx, const char *reply);

/*
 * Checks the sender (mx_auth), then DELIVERs to every recipient with a
 * Received and an Authentication-Results header prepended, IDEMPOTENCY_KEY
 * "<queue id>:<recipient>", SENDER, retries after a dropped connection.
 * cb gets 250 only when every DELIVER was answered (sqlited answers when
 * the copy is durable); otherwise 550 5.7.1 (DMARC reject), 451 4.7.0
 * (DNS temperror), 452 4.3.1 (disk full), 451 4.3.0 (any other temporary
 * error, partial success included: the sender retries), 554 5.x
 * (permanent for every recipient). cb runs exactly once, maybe before this
 * returns (when nothing could be sent).
 */
void mx_deliver(mxd *d, const mx_envelope *env, mx_deliver_cb *cb, void *ctx);

/* ---- mx_ratelimit.c ---- */

typedef enum mx_rate_kind {
	MX_RATE_CONN_IP = 0,         /* connections per client IP per minute */
	MX_RATE_MSG_DOMAIN = 1,      /* messages per sender domain per day */
	MX_RATE_RCPT_SENDER = 2,     /* recipients per sender per hour */
} mx_rate_kind;

typedef void mx_rate_cb(void *ctx, bool allowed);

/*
 * Counts one event of kind for subject (an IP, a domain, an address; case
 * folded) and says whether the count is still within limit (0: no limit,
 * cb(true) at once). Fixed windows: the Redis key
 * sealmail:mx:rate:<kind>:<BLAKE2b-128 hex of subject>:<window number>
 * gets INCR and EXPIRE in one script. While Redis is down (or when it
 * fails) the in-memory table of this process counts. cb runs exactly once,
 * maybe before this returns.
 */
void mx_rate_hit(mxd *d, mx_rate_kind kind, const char *subject,
		 uint64_t limit, mx_rate_cb *cb, void *ctx);
mx_rate_mem *mx_rate_mem_new(void);
void mx_rate_mem_free(mx_rate_mem **m);

#endif
