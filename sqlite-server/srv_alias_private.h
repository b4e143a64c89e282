/*
 * What srv_alias.c (the alias table, work queues, sessions, housekeeping)
 * and srv_unlock.c (the unlock path) share: the alias and table structs,
 * the unlock request, and the few helpers each calls in the other. Only
 * these two files include it; everything here runs on the loop thread
 * unless its comment says otherwise (see srv_alias.c's invariants).
 */
#ifndef SRV_ALIAS_PRIVATE_H
#define SRV_ALIAS_PRIVATE_H

#include <sodium.h>
#include <stdbool.h>
#include <stdint.h>

#include "srv_alias.h"
#include "srv_keyslab.h"

#define ALIAS_BUCKETS 1024
#define SESSION_BUCKETS 1024
/* Passwords remembered per open alias (main + a few app passwords). */
#define SRV_VERIFIERS 4
/* Full unlocks (Argon2id) waiting for a slot at most, by default. */
#define UNLOCK_WAITING_DEFAULT 256

struct srv_alias {
	srv_alias *hash_next;
	srv_aliases *owner;
	char id[SRV_ALIAS_ID_MAX + 1];
	char *db_path;
	char *spool_dir;
	/* Touched only by this alias's running work item. MK and the X25519
	 * key share one slot of the guarded key pages (alias_keys_set,
	 * srv_keyslab.h): sk is mk + ENG_MK_BYTES, given back with it (a
	 * sodium_malloc of its own costs 2 resident pages and 4 mappings;
	 * a slot is 64 bytes of a shared guarded page). */
	eng_store *st;
	uint8_t *mk;
	uint8_t *sk;
	bool reopened;                 /* srv_alias_store reopened it */
	/* The mailbox a read looked up last (srv_alias_mailbox_get): of the
	 * store as it was at generation mb_gen (0: none), asked as mb_key. */
	eng_mailbox mb;
	char *mb_key;
	uint64_t mb_gen;
	/* Loop thread. */
	struct work_item *head, *tail;
	unsigned queued;
	bool running;
	/* The write generation (srv_alias_quiet_gen): a new value from the
	 * table's clock after every work item not declared read-only, when
	 * sessions are ended, and when the entry is made. */
	uint64_t gen;
	/* gen when the running item started (queue_start writes it before the
	 * item runs; the item reads it: srv_alias_work_gen). */
	uint64_t run_gen;
	/* The running item wrote nothing (set by it on the pool through
	 * srv_alias_work_read_only, read by after_work_cb). */
	bool run_read_only;
	unsigned sessions;
	uint64_t last_used_ms;
	/* Verifiers of passwords that opened this alias while it is open (see
	 * srv_unlock's fast path); cleared whenever a close is queued. */
	uint8_t verifiers[SRV_VERIFIERS][crypto_generichash_BYTES];
	unsigned n_verifiers, next_verifier;
	/* A close is queued or done: no fast unlock until a full one reopens. */
	bool closing;
	/* Bumped at every close submitted: an open queued before it must not
	 * re-arm the fast path (its verifier would outlive MK). */
	uint64_t close_gen;
};

/* A login that waits for the result of an identical one (see srv_unlock). */
struct unlock_join {
	struct unlock_join *next;
	srv_unlock_done *done;
	void *ctx;
};

struct unlock_req {
	struct unlock_req *next;
	/* In as->pending from srv_unlock until its result is handed out. */
	struct unlock_req *pend_prev, *pend_next;
	uint8_t join_key[crypto_generichash_BYTES];
	struct unlock_join *joined, *joined_tail;
	uv_work_t req;
	srv_aliases *owner;
	char alias_id[SRV_ALIAS_ID_MAX + 1];
	eng_keyring *keyring;          /* NULL: unknown alias, burn the time */
	uint8_t *blob;                 /* the encoded keyring, for the verifier */
	size_t blob_len;
	uint8_t *password;             /* secret memory */
	size_t password_len;
	uint8_t *mk;                   /* result of the KDF step */
	uint8_t verifier[crypto_generichash_BYTES];
	uint64_t close_gen;            /* the alias's, when open_work was queued */
	int result;
	srv_unlock_done *done;
	void *ctx;
};

struct srv_aliases {
	uv_loop_t *loop;
	srv_alias_config cfg;
	char *data_dir;
	srv_alias *buckets[ALIAS_BUCKETS];
	struct session *sessions[SESSION_BUCKETS];
	unsigned n_aliases, n_sessions;
	struct unlock_req *wait_head, *wait_tail;
	struct unlock_req *pending;    /* every full unlock not yet answered */
	unsigned unlocks_running, unlocks_waiting, unlocks_joined;
	uint64_t unlocks_refused, unlocks_joins;
	uint64_t refused_logged_ms;    /* last "queue full" log line */
	uint64_t work_done;
	uint64_t fast_unlocks;
	uint64_t kdf_unlocks;          /* Argon2id runs started (STATS unlocks_kdf) */
	uint64_t releases, reopens;
	uint64_t gen_clock;            /* the last generation given (alias_bump) */
	bool trim_pending;             /* a release freed memory: malloc_trim */
	eng_keyring *dummy;            /* same cost as real ones: see srv_unlock */
	uint8_t *verifier_key;         /* secret memory; random per process */
	srv_keyslab *keys;             /* the aliases' MK + sk slots */
	uv_timer_t timer;
	bool shutting_down;
	void (*shutdown_done)(void *ctx);
	void *shutdown_ctx;
};

/* srv_alias.c */
bool alias_id_ok(const char *id);
srv_alias *alias_find(srv_aliases *as, const char *id);
srv_alias *alias_get(srv_aliases *as, const char *id);
/* On the alias's queue (its running work item). */
void alias_keys_set(srv_alias *a, uint8_t **mk, uint8_t **sk);
int alias_open(srv_alias *a, const uint8_t *mk, bool create);
void alias_close(srv_alias *a);
void session_add(srv_aliases *as, srv_alias *a,
		 uint8_t handle[SRV_SESSION_BYTES]);
void check_shutdown_done(srv_aliases *as);

/* srv_unlock.c */
void unlock_answer(srv_aliases *as, struct unlock_req *u, int result,
		   srv_alias *a);

#endif
