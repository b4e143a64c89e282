/*
 * sqlited's open mailboxes: a table of aliases, each with its database
 * (open while some session holds its key, plus a grace period) and a
 * queue of work that runs on libuv's thread pool, one item at a time per
 * alias. So requests for one alias are serialised and different aliases
 * run in parallel, and no database call ever runs on the event loop.
 *
 * Threads. Everything in this header is called on the loop thread except
 * the srv_alias_* accessors, which a srv_work_fn calls on its pool thread
 * while it runs. A work function may touch its alias's store freely: no
 * other work for that alias runs at the same time.
 *
 * Keys. While an alias is open, its mailbox key MK and X25519 secret key
 * are held in guarded memory (eng_secret_new). When the last session has
 * gone and the alias has been idle for idle_seconds, or the cache needs
 * room, the database is checkpointed and closed and the keys are wiped.
 *
 * Release. An open alias that has had no work for release_seconds (its
 * sessions idle, e.g. in IMAP IDLE) has its database connection
 * checkpointed and closed (page cache, prepared statements, SQLCipher's
 * buffers) but keeps its keys: srv_alias_store() reopens it with the raw
 * key derived from MK on the next request (no Argon2id; about a
 * millisecond), so sessions never notice.
 * Unlocks (Argon2id, srv_unlock.c) run under a concurrency cap so a login
 * flood cannot exhaust memory: those over the cap wait in a FIFO on the
 * loop thread, at most max_waiting_unlocks of them (one more is refused at
 * once with ENG_EBUSY), and a login identical to one already pending waits
 * for its result instead of running Argon2id again (srv_unlock_login).
 *
 * Files: data_dir/mailboxes/<alias id>.db and data_dir/spool/<alias id>/,
 * alias ids being the directory's random hex ids, never addresses.
 */
#ifndef SRV_ALIAS_H
#define SRV_ALIAS_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <uv.h>

#include "keys.h"
#include "store.h"

#define SRV_ALIAS_ID_MAX 64
#define SRV_SESSION_BYTES 16

typedef struct srv_alias srv_alias;
typedef struct srv_aliases srv_aliases;

typedef struct srv_alias_config {
	const char *data_dir;
	unsigned cache_size;              /* open databases kept, default 128 */
	unsigned idle_seconds;            /* grace period, default 300 */
	unsigned session_idle_seconds;    /* a session unused this long ends, default 1800 */
	unsigned release_seconds;         /* no work this long: connection closed,
					   * keys kept; 0 never, default 10 */
	unsigned max_concurrent_unlocks;  /* Argon2id runs at once, default 2 */
	unsigned max_waiting_unlocks;     /* waiting for a slot, default 256 */
	eng_kdf_params kdf_params;        /* cost of the timing-equaliser keyring */
	eng_store_options store_opt;
} srv_alias_config;

void srv_alias_config_default(srv_alias_config *cfg);
/* Test hook of the daemon: SEALMAIL_SQLITED_TEST_UNLOCKS="C,W" sets
 * max_concurrent_unlocks C and max_waiting_unlocks W (both > 0). */
void srv_alias_config_test_env(srv_alias_config *cfg);

/* Runs on a pool thread with the alias's queue held. Returns 0 or an
 * engine error, handed to the srv_done_fn. */
typedef int srv_work_fn(srv_alias *a, void *ctx);
/* Runs on the loop thread when the work is done (never if submit failed). */
typedef void srv_done_fn(void *ctx, int result);

int srv_aliases_new(uv_loop_t *loop, const srv_alias_config *cfg,
		    srv_aliases **aliases_r);
/*
 * Stops taking work, lets queued work finish, then checkpoints, closes
 * and wipes every alias; done (may be NULL) runs on the loop when all is
 * closed, after which srv_aliases_free() may be called.
 */
void srv_aliases_shutdown(srv_aliases *aliases, void (*done)(void *ctx),
			  void *ctx);
void srv_aliases_free(srv_aliases **aliases);

/*
 * Queues work for an alias. ENG_EINVAL for a bad id, ENG_EBUSY when
 * shutting down or when the alias's queue is full (backpressure).
 */
int srv_alias_submit(srv_aliases *aliases, const char *alias_id,
		     srv_work_fn *work, srv_done_fn *done, void *ctx);

/*
 * Loop thread: true and the alias's write generation in *gen_r if a
 * request for it may be answered from what a read-only work item of
 * that generation recorded: the alias is open (store and keys), no close
 * is pending, the table is not shutting down, and nothing of the alias
 * is queued or running, so no write is in flight. The generation changes
 * after every work item not declared read-only (before its done callback
 * runs) and when a close is queued.
 */
bool srv_alias_quiet_gen(srv_aliases *aliases, const char *alias_id,
			 uint64_t *gen_r);

/* ---- sessions ---- */

/* Called with the result of an unlock: 0 and a session handle, or
 * ENG_EAUTH (wrong password) and other engine errors. */
typedef void srv_unlock_done(void *ctx, int result,
			     const uint8_t session[SRV_SESSION_BYTES]);

/*
 * Opens an alias with a password: Argon2id over the keyring (under the
 * cap), then the database (created on first use with the default
 * mailboxes), then the spool drained into it. A second unlock of an open
 * alias with a password that already opened it (with the same keyring)
 * skips Argon2id, whatever work of the alias is queued or running: a keyed
 * BLAKE2b verifier of (alias, keyring, password), kept only while MK is in
 * memory and no close is pending, proves it, and the session is added at
 * once (so it is ordered before any later close). Any other unlock,
 * including every wrong password and any unlock once a close is
 * submitted, pays the full cost. keyring is copied. done is never called
 * before srv_unlock returns. keyring NULL: an unknown alias (alias_id is
 * then ignored): the same Argon2id cost, then ENG_EAUTH.
 *
 * The queue: full unlocks start in FIFO order, at most
 * max_concurrent_unlocks at once. When max_waiting_unlocks already wait
 * for a slot, a new one is refused at once with ENG_EBUSY (done is not
 * called). A login identical to a full unlock not yet answered (the same
 * login name, alias, keyring and password, compared by a keyed BLAKE2b of
 * them) joins it, whatever the bound: no Argon2id of its own, and the same
 * result when it comes (a session of its own on success). Right and wrong
 * passwords, known and unknown aliases join alike.
 */
int srv_unlock(srv_aliases *aliases, const char *alias_id,
	       const uint8_t *keyring, size_t keyring_len,
	       const char *password, size_t password_len,
	       srv_unlock_done *done, void *ctx);
/* The same, login being the name the client gave (normalised): the join
 * key's first part, so that unknown aliases join like known ones.
 * srv_unlock uses alias_id for it. */
int srv_unlock_login(srv_aliases *aliases, const char *login,
		     const char *alias_id, const uint8_t *keyring,
		     size_t keyring_len, const char *password,
		     size_t password_len, srv_unlock_done *done, void *ctx);

/*
 * Finds the alias of a session handle (and marks the session used).
 * ENG_ENOTFOUND for an unknown or expired handle.
 */
int srv_session_alias(srv_aliases *aliases,
		      const uint8_t session[SRV_SESSION_BYTES],
		      char alias_id_r[SRV_ALIAS_ID_MAX + 1]);
/* Ends a session (LOCK). ENG_ENOTFOUND if unknown. */
int srv_session_end(srv_aliases *aliases,
		    const uint8_t session[SRV_SESSION_BYTES]);
/* Ends every session of an alias (ALIAS_REMOVE, RESTORE_ALIAS, just before
 * they submit the work that closes it); returns how many. It also turns
 * the unlock fast path off: every later unlock runs Argon2id and queues
 * behind that close, until a full unlock has reopened the alias. */
unsigned srv_sessions_end_alias(srv_aliases *aliases, const char *alias_id);

/*
 * Creates the database of a new alias with its MK (from
 * eng_keyring_create), on the alias's queue. done gets the result.
 */
int srv_alias_create_db(srv_aliases *aliases, const char *alias_id,
			const uint8_t *mk, srv_done_fn *done, void *ctx);

/* ---- for work functions (pool thread) ---- */

/* The open store, or NULL while the alias is locked. A released alias
 * (see Release above) is reopened here; NULL (and a log line) if that
 * fails, the keys being kept for the next try. */
eng_store *srv_alias_store(srv_alias *a);
const char *srv_alias_id(const srv_alias *a);
/* The alias's write generation when the running item started: nothing
 * was written between it and the item's first read. */
uint64_t srv_alias_work_gen(const srv_alias *a);
/* The running item wrote nothing (reads only): the generation stays when
 * it ends. Only for an item all of whose work is read-only. */
void srv_alias_work_read_only(srv_alias *a);
/*
 * eng_mailbox_get for a read of the running item: the answer of an
 * earlier lookup of the same name is given again while the alias's
 * generation is the one that lookup ran at (no item wrote since: the
 * mailbox row is as it was), so consecutive read-only items (a FETCH_BODY
 * per message) look their mailbox up once. Only while the running item
 * has written nothing. eng_mailbox_clear *mb_r after.
 */
int srv_alias_mailbox_get(srv_alias *a, const char *name, eng_mailbox *mb_r);
/* data_dir/spool/<id>: where mail for it is sealed while locked. */
const char *srv_alias_spool_dir(const srv_alias *a);
/*
 * Drains the spool into the open store; 0 if the alias is locked (mail
 * stays sealed). cb hears of each delivery.
 */
int srv_alias_drain(srv_alias *a, eng_drain_cb *cb, void *ctx, size_t *n_r);
/*
 * MK of the open alias (ENG_MK_BYTES of secret memory), or NULL while it
 * is locked: for work that rewraps MK into a new key slot
 * (APP_PASSWORD_ADD). Valid only while the work function runs; never copy
 * it out.
 */
const uint8_t *srv_alias_mk(srv_alias *a);
/*
 * Checkpoints and closes the database now and wipes the keys (ALIAS_REMOVE
 * closes it before deleting its files). Later work finds it locked.
 */
void srv_alias_close_now(srv_alias *a);

/* ---- numbers for STATS ---- */

typedef struct srv_alias_stats {
	unsigned aliases;       /* known to the table */
	unsigned open;          /* unlocked: keys in memory */
	unsigned released;      /* of those, with the database closed (Release) */
	unsigned sessions;
	unsigned unlocks_running;
	unsigned unlocks_waiting;
	unsigned unlocks_joined;    /* logins waiting for an identical unlock */
	uint64_t unlocks_refused;   /* refused: max_waiting_unlocks reached */
	uint64_t unlocks_joins;     /* logins that joined one (no Argon2id) */
	uint64_t work_done;
	uint64_t fast_unlocks;  /* repeated logins that skipped Argon2id */
	uint64_t kdf_unlocks;   /* logins that ran Argon2id (any password) */
	uint64_t releases;      /* connections closed by Release */
	uint64_t reopens;       /* and reopened by a later request */
} srv_alias_stats;

void srv_aliases_stats(const srv_aliases *aliases, srv_alias_stats *stats);

#endif
