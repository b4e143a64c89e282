/*
 * sqlited's server: the contract between the network core (srv_net*.c:
 * listeners, connections, TLS, peer authentication, framing, flow
 * control) and the opcode handlers (srv_ops_*.c).
 *
 * Threads. Everything here runs on the one libuv loop thread. Handlers
 * never touch a database on the loop: mailbox work goes to the alias's
 * queue (srv_alias_submit, srv_alias.h), other blocking work (the
 * directory, file I/O that fsyncs) to srv_blocking().
 *
 * A request's life:
 *   1. the core reads a REQUEST frame, checks the opcode (rpc_op_lookup),
 *      the in-flight limits and, for RPC_OPF_SESSION opcodes, resolves
 *      T_SESSION to an alias id (else ERROR ENOSESSION, handler not run);
 *   2. for RPC_OPF_BODY_IN opcodes with RPC_F_BODY, the core receives the
 *      whole body first, granting WINDOW credit as it writes it to a
 *      sealed temporary file (so a 50 MB APPEND is never in memory and
 *      never on disk in the clear), and only then runs the handler, with
 *      req->body set; an oversized body is answered with ELIMIT;
 *   3. the handler is called once; it answers exactly once, with
 *      srv_reply() or srv_fail(), possibly much later from a done
 *      callback; before that it may send srv_reply_more() parts and a
 *      body (srv_send_data) under the client's WINDOW credit;
 *   4. if the connection goes away or the client sends CANCEL, the core
 *      answers ERROR ECANCELLED itself (docs/rpc.md, Cancel) and sets
 *      req->cancelled; the handler still runs to its end (a write that
 *      began is committed or rolled back, never left half-done), may stop
 *      early at its next step, and still calls srv_reply()/srv_fail(),
 *      whose answer the core then drops.
 */
#ifndef SRV_H
#define SRV_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <uv.h>

#include "config.h"
#include "dir.h"
#include "rpc_codec.h"
#include "rpc_proto.h"
#include "srv_alias.h"

typedef struct srv srv;
typedef struct srv_conn srv_conn;
typedef struct srv_req srv_req;
typedef struct srv_body srv_body;
typedef struct srv_events srv_events;
typedef struct srv_net srv_net;

/* Process-wide state; one per sqlited. */
struct srv {
	uv_loop_t *loop;
	const sm_config *cfg;
	srv_aliases *aliases;
	dir *dir;                    /* thread-safe: call it from srv_blocking() */
	srv_events *events;          /* Redis: change events and login throttle */
	uint8_t *rpc_secret;         /* 32 bytes, secret memory */
	char *tmp_dir;               /* data_dir/tmp: sealed request bodies */
	eng_kdf_params kdf;          /* cost for new keyrings */
	bool shutting_down;
	bool backup_busy;            /* a staging copy or a scheduled backup runs */
	srv_net *net;                /* the network core (srv_net.h); NULL until started */
	/* The forward queue (srv_outbound.h); NULL: forwards answer EUNAVAILABLE. */
	struct srv_outbound *outbound;
	/* Counters for STATS. */
	uint64_t requests, errors, bytes_in, bytes_out;
	unsigned connections;
};

/* One request in flight. */
struct srv_req {
	srv *srv;
	srv_conn *conn;              /* NULL once the connection has gone */
	uint32_t id;
	const rpc_op *op;
	rpc_view args;               /* the request's fields, valid until answered */
	/* RPC_OPF_SESSION opcodes: the session's alias, resolved by the core. */
	char alias_id[SRV_ALIAS_ID_MAX + 1];
	uint8_t session[SRV_SESSION_BYTES];
	/* The peer's name (from AUTH) and address, for logs and throttling. */
	const char *peer_name;
	const char *peer_addr;
	/* RPC_OPF_BODY_IN with RPC_F_BODY: the received body; else NULL. */
	srv_body *body;
	/* The payload of the next RESPONSE; handlers append fields to it. */
	eng_buf reply;
	/* Set by the core on CANCEL or when the connection goes. */
	bool cancelled;
	/* Called by the core when WINDOW credit arrives (see srv_send_data). */
	void (*on_window)(srv_req *req);
	/* For the handler's own state; the core never touches it. */
	void *data;
	/* Core-private state follows in net_req (srv_net_private.h). */
};

/* An opcode handler; see the life of a request above. */
typedef void srv_handler_fn(srv_req *req);

/* The handler of an opcode (the static table in srv_ops.c), or NULL. */
srv_handler_fn *srv_handler(uint16_t opcode);

/*
 * The address the login throttle charges for this request: T_CLIENT_ADDR
 * (the end user's IP as the frontend saw it) when present and sane, else
 * the peer's address, else its name. eng_strdup'd.
 */
char *srv_req_client_addr(const srv_req *req);

/* Sends a RESPONSE with req->reply as payload and frees req. */
void srv_reply(srv_req *req);
/* Sends a RESPONSE part with RPC_F_MORE and empties req->reply. */
void srv_reply_more(srv_req *req);
/* Sends ERROR with err (an eng_err or rpc_err) and frees req. The message
 * is rpc_strerror(err): never a detail. */
void srv_fail(srv_req *req, int err);

/*
 * Streaming a body back (RPC_OPF_BODY_OUT). srv_reply_body() sends
 * req->reply as a RESPONSE with RPC_F_BODY, which tells the client that
 * DATA frames follow; then the handler sends the body with
 * srv_send_data(), never more than srv_window() bytes at a time; the call
 * with end = true sends the last chunk (DATA with RPC_F_END), ends the
 * request and frees req. At a window of 0 the handler sets
 * req->on_window and returns; the core calls it when WINDOW credit
 * arrives (or with req->cancelled set when the client is gone).
 */
void srv_reply_body(srv_req *req);
size_t srv_window(const srv_req *req);
/* The smallest credit of the stream's WINDOW frames, 0 before any: how
 * much the client lets go at a time (FETCH_BODIES sizes its pieces by it). */
size_t srv_credit_min(const srv_req *req);
void srv_send_data(srv_req *req, const void *data, size_t len, bool end);
/*
 * srv_send_data of the len bytes at buf + RPC_HEADER_BYTES, where buf is
 * a srv_pieces buffer (srv_bufpool.h) the caller gives up: the DATA frame
 * is built in place (its header in buf's first RPC_HEADER_BYTES) and buf
 * itself goes to the socket, back to the pool once written. Over TLS (or
 * when the request's answer is dropped) as srv_send_data, and buf goes
 * back at once. len within the window and RPC_MAX_CHUNK_BYTES.
 */
void srv_send_data_buf(srv_req *req, uint8_t *buf, size_t len, bool end);
/*
 * A whole body of len bytes within the first window: srv_reply_body()
 * and srv_send_data(data, len, true) in one write (RESPONSE and DATA
 * frames back to back), and req freed; true. False when it cannot (the
 * connection's output is held back, len too large): then it has done
 * srv_reply_body() only and the handler goes on as after it.
 */
bool srv_reply_body_end(srv_req *req, const void *data, size_t len);
/*
 * srv_reply_body_end of the len bytes at buf + at, where buf is a
 * srv_pieces buffer and at is 2 * RPC_HEADER_BYTES + req->reply.len: both
 * frames are built in place in front of the bytes and buf itself goes to
 * the socket (no copy). Where srv_reply_body_end would copy (TLS) it
 * does. True when the answer is sent: buf is given up (to the socket or
 * back to the pool). False as srv_reply_body_end's false: the caller
 * keeps buf.
 */
bool srv_reply_body_end_buf(srv_req *req, uint8_t *buf, size_t at,
			    size_t len);

/*
 * A received request body: a temporary file sealed to an ephemeral key
 * that exists only in this process's memory. Read it on any one thread
 * at a time; free it on the loop thread (the core frees req->body after
 * the answer).
 */
uint64_t srv_body_size(const srv_body *b);
typedef struct srv_body_reader srv_body_reader;
int srv_body_open(srv_body *b, srv_body_reader **r_r);
/* Like eng_spool_read: count, 0 at a verified end, or ENG_ECORRUPT. */
long srv_body_read(srv_body_reader *r, void *buf, size_t len);
/* Like srv_body_read, at most max bytes, but *p_r points at them: into a
 * body held in memory (no copy), else into a buffer of the reader's (valid
 * until the next call or the reader's free). */
long srv_body_next(srv_body_reader *r, size_t max, const void **p_r);
void srv_body_reader_free(srv_body_reader **r);

/*
 * Runs fn(ctx) on the thread pool, not tied to an alias (the directory,
 * spool writes that fsync), then done(ctx, result) on the loop.
 */
typedef int srv_blocking_fn(void *ctx);
int srv_blocking(srv *s, srv_blocking_fn *fn, srv_done_fn *done, void *ctx);

/* ---- backups (srv_ops_backup.c, srv_backup.c) ---- */

/*
 * Makes a consistent staging copy of the data dir under
 * data_dir/tmp/backup-<16 hex>/ (as BACKUP_PREPARE does: docs/rpc.md):
 * the directory on the pool, each alias on its own queue, one at a time.
 * done(ctx, result, stage) runs on the loop once; stage is the copy's
 * path (valid during the call; on failure the caller removes it).
 * cancelled (may be NULL) is read before each alias: true stops early with
 * RPC_ECANCELLED. The caller holds s->backup_busy while it runs, so that
 * one backup job runs at a time.
 */
typedef void srv_backup_stage_fn(void *ctx, int result, const char *stage);
void srv_backup_stage(srv *s, const bool *cancelled,
		      srv_backup_stage_fn *done, void *ctx);

/*
 * The schedule (backup_schedule, "daily HH:MM" UTC): a timer on s->loop
 * runs, at each due time, the job of `sealmail backup` to backup_target:
 * a staging copy (srv_backup_stage), then, on the pool, bk_backup and
 * bk_prune with the backup key, one log line, the copy removed. A job due
 * while another backup job runs waits for it. config_path is the file
 * named "sealmail.conf" in snapshots. The environment variable
 * SEALMAIL_BACKUP_SCHEDULE_TEST_SECONDS=N (tests only) runs one job N
 * seconds after start, whatever the schedule. Returns 0 with *sched_r
 * NULL when nothing is scheduled.
 */
typedef struct srv_backup_sched srv_backup_sched;
int srv_backup_sched_start(srv *s, const char *config_path,
			   srv_backup_sched **sched_r);
/* Stops the timer; a job that runs finishes first. Frees it; NULL is fine. */
void srv_backup_sched_stop(srv_backup_sched **sched);

/*
 * At start, before any job can run: removes data_dir/tmp/backup-* and
 * restore-* left by a killed sqlited or CLI, except those named after a
 * process (backup-<pid>, restore-<pid>) that still runs.
 */
void srv_backup_clean_tmp(const char *data_dir);

/* ---- events and throttling (srv_events.c; Redis) ---- */

enum srv_event_kind {
	SRV_EV_EXISTS = 1,           /* a message arrived (append, delivery, copy) */
	SRV_EV_FLAGS = 2,            /* flags or keywords changed */
	SRV_EV_EXPUNGE = 3,          /* messages removed */
	SRV_EV_MAILBOX = 4,          /* a mailbox created, renamed, deleted */
};

/*
 * Publishes a change of an alias on Redis channel "sealmail:alias:<id>"
 * as "<kind> <mailbox> <uid> <modseq>" (docs/rpc.md, Events), so that IDLE
 * sessions on every frontend hear of it. Never blocks; a lost Redis
 * connection loses events (clients still see changes at their next
 * command), it never fails the request.
 */
void srv_event_publish(srv *s, const char *alias_id, enum srv_event_kind kind,
		       const char *mailbox, uint32_t uid, uint64_t modseq);

/*
 * Login throttling shared by every sqlited through Redis (in memory when
 * Redis is down): a failed unlock raises the counters of the client
 * address and of the alias; srv_throttle_delay() gives the delay to wait
 * before running the next unlock for them (0, then doubling from 1 s
 * after 3 failures, at most 15 s, as Dovecot's auth penalty). An unknown
 * alias counts like a wrong password.
 */
typedef void srv_delay_cb(void *ctx, uint64_t delay_ms);
void srv_throttle_delay(srv *s, const char *client_addr, const char *alias,
			srv_delay_cb *cb, void *ctx);
void srv_throttle_failed(srv *s, const char *client_addr, const char *alias);
void srv_throttle_succeeded(srv *s, const char *client_addr, const char *alias);

int srv_events_new(srv *s, const char *redis_url, srv_events **ev_r);
void srv_events_free(srv_events **ev);

#endif
