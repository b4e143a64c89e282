/*
 * The mailbox store: one SQLCipher database per alias.
 *
 * An eng_store is one open database. It is not thread-safe: sqlited gives
 * each open store to one worker at a time (requests for one alias are
 * serialised). Several processes may open the same file; SQLite's locks
 * keep them consistent, and ENG_EBUSY says "try again".
 *
 * Durability: every call that changes something runs in one transaction
 * that is committed with synchronous=FULL in WAL mode before the call
 * returns 0, so what it reported survives kill -9 and power loss. A call
 * that returns an error changed nothing. ENG_ENOSPC and ENG_EIO are
 * temporary failures: the caller answers NO/451 and the store must be
 * closed and reopened before it is used again (eng_store_needs_reopen()).
 *
 * Mailbox names are UTF-8, hierarchy separator '/', "INBOX" in any case is
 * INBOX. UIDs are per mailbox, start at 1 and are never reused while the
 * mailbox's UIDVALIDITY stays. MODSEQs come from one counter per database,
 * so they increase within every mailbox (RFC 7162 only needs that).
 *
 * See docs/storage.md for the schema and its invariants.
 */
#ifndef ENG_STORE_H
#define ENG_STORE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "buf.h"
#include "mime.h"

typedef struct eng_store eng_store;

typedef struct eng_store_options {
	/* Benchmarks only: no SQLCipher key, a plain SQLite file. */
	bool plaintext;
	/* Create the file and the default mailboxes if it does not exist. */
	bool create;
	/* How long to wait for another process's lock, default 5000. */
	int busy_timeout_ms;
	/* zstd level for message content, default 3. */
	int zstd_level;
	/* Largest message accepted by append, default 256 MiB. */
	uint64_t max_message_bytes;
	eng_mime_limits mime_limits;
} eng_store_options;

void eng_store_options_default(eng_store_options *opt);

/* SQLite's process-wide settings (store.c): called by eng_crypto_init and
 * eng_store_open; only the first call before any SQLite use counts. */
void eng_store_global_init(void);

/*
 * Opens (or with opt->create, creates) the database at path with the raw
 * 32-byte key (from eng_derive_db_key; ignored when opt->plaintext).
 * Errors: ENG_ENOTFOUND (no file and !create), ENG_EAUTH (the key does not
 * open the file), ENG_ECORRUPT (not a database, truncated, damaged),
 * ENG_ENEWER (a newer schema), ENG_ENOSPC, ENG_EIO.
 */
int eng_store_open(const char *path, const uint8_t *db_key,
		   const eng_store_options *opt, eng_store **st_r);
/* Checkpoints the WAL into the database, closes, wipes. Accepts NULL. */
void eng_store_close(eng_store **st);
/* Checkpoints the WAL (TRUNCATE) so the file alone is the database. */
int eng_store_checkpoint(eng_store *st);
/* True after an I/O error or a full disk: close and reopen. */
bool eng_store_needs_reopen(const eng_store *st);
/*
 * PRAGMA integrity_check, plus cipher_integrity_check where the SQLCipher
 * version has it. 0 if both say ok; ENG_ECORRUPT with the findings in
 * report (may be NULL) otherwise.
 */
int eng_store_check(eng_store *st, eng_buf *report);
/* The schema version of the open database. */
int eng_store_schema_version(eng_store *st);

/*
 * Groups several calls into one transaction (MULTIAPPEND, a batch of
 * deliveries): nothing is durable until eng_store_tx_commit() returns 0.
 * Calls nest; after an error inside, roll back.
 */
int eng_store_tx_begin(eng_store *st);
int eng_store_tx_commit(eng_store *st);
void eng_store_tx_rollback(eng_store *st);

/*
 * One read snapshot for several reads in a row (a body FETCH: mailbox,
 * message, chunks): one database lock and WAL snapshot for all of them
 * instead of one per statement. Calls nest; inside a write transaction
 * they do nothing. Every begin that returned 0 is ended on every path, in
 * the same work item (never held while waiting: it would pin the WAL).
 * eng_store_tx_begin inside one fails with ENG_EINVAL.
 */
int eng_store_read_begin(eng_store *st);
void eng_store_read_end(eng_store *st);

/* ---- Mailboxes ---- */

enum eng_special_use {
	ENG_SU_DRAFTS = 1u << 0,
	ENG_SU_SENT = 1u << 1,
	ENG_SU_TRASH = 1u << 2,
	ENG_SU_JUNK = 1u << 3,
	ENG_SU_ARCHIVE = 1u << 4,
	ENG_SU_ALL = 1u << 5,
	ENG_SU_FLAGGED = 1u << 6,
};

typedef struct eng_mailbox {
	int64_t id;
	char *name;
	uint32_t uidvalidity;
	uint32_t uidnext;
	uint64_t highestmodseq;
	uint32_t special_use;       /* enum eng_special_use bits */
	bool subscribed;
	bool noselect;              /* kept only as the parent of others */
	uint32_t messages;
	uint32_t unseen;
	uint32_t deleted;           /* messages with \Deleted */
	uint64_t size_bytes;
} eng_mailbox;

#define ENG_MAILBOX_NAME_MAX 1024

/* Checks and canonicalises a name (INBOX); 0 or ENG_EINVAL. */
int eng_mailbox_name_check(const char *name, char **canonical_r);

int eng_mailbox_list(eng_store *st, eng_mailbox **list_r, size_t *n_r);
void eng_mailbox_list_free(eng_mailbox **list, size_t n);
int eng_mailbox_get(eng_store *st, const char *name, eng_mailbox *mb_r);
void eng_mailbox_clear(eng_mailbox *mb);
/* Creates missing parents as plain mailboxes. ENG_EEXIST if taken. */
int eng_mailbox_create(eng_store *st, const char *name, uint32_t special_use,
		       int64_t *id_r);
/*
 * Renames a mailbox and its children. Renaming INBOX moves its messages
 * to the new name and leaves INBOX empty (RFC 3501 6.3.5).
 */
int eng_mailbox_rename(eng_store *st, const char *old_name,
		       const char *new_name);
/*
 * Deletes a mailbox and its messages. One that has children keeps its name
 * as \Noselect (RFC 3501 6.3.4). INBOX: ENG_EPERM.
 */
int eng_mailbox_delete(eng_store *st, const char *name);
/* Subscriptions are names: a name need not exist (RFC 3501 6.3.6). */
int eng_mailbox_subscribe(eng_store *st, const char *name, bool subscribed);
int eng_mailbox_set_special_use(eng_store *st, const char *name,
				uint32_t special_use);

/* ---- UID sets ---- */

typedef struct eng_uid_range {
	uint32_t lo, hi;            /* inclusive; hi == UINT32_MAX means '*' */
} eng_uid_range;

typedef struct eng_uidset {
	eng_uid_range *ranges;
	size_t count;
	size_t cap;
} eng_uidset;

void eng_uidset_add(eng_uidset *set, uint32_t lo, uint32_t hi);
bool eng_uidset_contains(const eng_uidset *set, uint32_t uid);
void eng_uidset_free(eng_uidset *set);
/* Parses IMAP sequence-set syntax with '*' = UINT32_MAX. */
int eng_uidset_parse(const char *text, eng_uidset *set);

/* ---- Messages ---- */

enum eng_flags {
	ENG_F_SEEN = 1u << 0,
	ENG_F_ANSWERED = 1u << 1,
	ENG_F_FLAGGED = 1u << 2,
	ENG_F_DELETED = 1u << 3,
	ENG_F_DRAFT = 1u << 4,
	ENG_F_ALL = 0x1f,
};

#define ENG_KEYWORD_MAX 255        /* bytes of one keyword */
#define ENG_KEYWORDS_PER_MESSAGE 64

typedef struct eng_msg {
	uint32_t uid;
	uint64_t modseq;
	uint32_t flags;
	char **keywords;            /* NULL-terminated; NULL if none */
	int64_t internal_date;      /* unix seconds */
	int64_t save_date;
	uint64_t size;
	int64_t content_id;         /* equal for equal content: RFC 8474 EMAILID */
	int64_t thread_id;          /* RFC 8474 THREADID, THREAD grouping */
	/*
	 * Only from eng_fetch_meta_want(), when asked: the raw top-level
	 * header and the stored MIME structure (eng_mime_encode format),
	 * borrowed from the query's row: valid during the callback only,
	 * NULL with length 0 when not asked for.
	 */
	const void *header;
	size_t header_len;
	const void *mime;
	size_t mime_len;
} eng_msg;

void eng_msg_clear(eng_msg *msg);

/* Called for each message; a non-zero return stops the walk and is returned. */
typedef int eng_msg_cb(void *ctx, const eng_msg *msg);

/*
 * Metadata of the messages in uids (NULL = all), in UID order, whose
 * MODSEQ is above changedsince (0 = no filter).
 */
int eng_fetch_meta(eng_store *st, int64_t mailbox_id, const eng_uidset *uids,
		   uint64_t changedsince, eng_msg_cb *cb, void *ctx);

/* What eng_fetch_meta_want() adds to each eng_msg. */
enum eng_fetch_want {
	ENG_FETCH_WANT_HEADER = 1u << 0,   /* msg->header, header_len */
	ENG_FETCH_WANT_MIME = 1u << 1,     /* msg->mime, mime_len */
};

/*
 * eng_fetch_meta(), with the content row's header and/or MIME blob in
 * each message (want: enum eng_fetch_want bits; 0 = eng_fetch_meta). One
 * query joining the content table: nothing is decompressed or decoded.
 */
int eng_fetch_meta_want(eng_store *st, int64_t mailbox_id,
			const eng_uidset *uids, uint64_t changedsince,
			unsigned want, eng_msg_cb *cb, void *ctx);

/*
 * The sequence map of a SELECT, without the rest of the metadata: cb once
 * per message with its UID and flags (enum eng_flags), in UID order.
 */
typedef int eng_view_cb(void *ctx, uint32_t uid, uint32_t flags);
int eng_mailbox_view(eng_store *st, int64_t mailbox_id, eng_view_cb *cb,
		     void *ctx);

/*
 * What changed in a mailbox since modseq (a view's HIGHESTMODSEQ), read
 * from the two (mailbox_id, modseq) indexes, not from every message:
 * changed once per message whose MODSEQ is above it (appended, copied or
 * moved in, flags or keywords stored) with its UID and flags, then
 * vanished once per UID expunged or moved out since (flags 0), each in
 * UID order. The `expunged` log is kept as long as the mailbox keeps its
 * UIDVALIDITY (a DELETE that leaves the row as a \Noselect parent clears
 * it and gives a new one); a caller patching a view checks its count
 * against MESSAGES all the same. A non-zero return of a callback stops
 * and is returned.
 */
int eng_mailbox_view_since(eng_store *st, int64_t mailbox_id, uint64_t modseq,
			   eng_view_cb *changed, eng_view_cb *vanished,
			   void *ctx);

/* The keywords set on at least one message of the mailbox, at most max,
 * oldest keyword first: cb once each. */
typedef int eng_keyword_cb(void *ctx, const char *name);
int eng_mailbox_keywords(eng_store *st, int64_t mailbox_id, size_t max,
			 eng_keyword_cb *cb, void *ctx);

typedef struct eng_append_opts {
	uint32_t flags;
	const char *const *keywords;
	size_t n_keywords;
	int64_t internal_date;      /* 0 = now */
	/*
	 * If set, a second append with the same key (up to 128 bytes) stores
	 * nothing and answers with the UID of the first: a retry after a
	 * dropped connection never stores a message twice. The record of a
	 * key is kept ENG_IDEMPOTENCY_TTL_SECONDS.
	 */
	const char *idempotency_key;
} eng_append_opts;

/*
 * How long a key's record is kept. A key is presented again only by the
 * resends of one request after a dropped connection (rpc_client retries).
 * The longest such window in use is the MX's DELIVER (docs/mx.md): 5
 * resends (MX_DELIVER_RETRIES) of at most 60 s each (MX_DELIVER_TIMEOUT_MS),
 * about 6 minutes; the MX has no queue, and a sender's own retry is a new
 * SMTP transaction with a new key. 14 days is that window with a margin
 * of thousands, and survives a clock set back by days. sqlited's DELIVER
 * records (data_dir/delivered/) use the same rule. A keyed append deletes
 * the older records at most once a day per open store.
 */
#define ENG_IDEMPOTENCY_TTL_SECONDS (14 * 24 * 3600)

typedef struct eng_append eng_append;

/* Starts an append; the message streams in with eng_append_write(). The
 * mailbox must exist (ENG_ENOTFOUND) and be selectable (ENG_EPERM). */
int eng_append_begin(eng_store *st, int64_t mailbox_id,
		     const eng_append_opts *opts, eng_append **ap_r);
/* The same for the mailbox named (as eng_mailbox_get finds it), looked up
 * inside the append's own transaction: a caller that has only the name
 * needs no lookup, and no read transaction, of its own. mailbox_id_r and
 * uidvalidity_r (either may be NULL) get the mailbox's. */
int eng_append_begin_name(eng_store *st, const char *name,
			  const eng_append_opts *opts, eng_append **ap_r,
			  int64_t *mailbox_id_r, uint32_t *uidvalidity_r);
/* ENG_ELIMIT past max_message_bytes (the append is then only abortable). */
int eng_append_write(eng_append *ap, const void *data, size_t len);
/* Stores the message durably; frees *ap whatever the result. */
int eng_append_commit(eng_append **ap, uint32_t *uid_r, uint64_t *modseq_r);
void eng_append_abort(eng_append **ap);
/* All of the above for a message in memory. */
int eng_append_message(eng_store *st, int64_t mailbox_id, const void *data,
		       size_t len, const eng_append_opts *opts,
		       uint32_t *uid_r, uint64_t *modseq_r);

/* An opened message: content, MIME structure and header. */
typedef struct eng_message eng_message;

/* Opening reads the message row only (its size is the content's; no
 * content row): the MIME tree and the header are read at
 * their first use (a whole-body read never needs them), which must come
 * while the message exists (ENG_ENOTFOUND after its content is gone). */
int eng_message_open(eng_store *st, int64_t mailbox_id, uint32_t uid,
		     eng_message **m_r);
void eng_message_close(eng_message **m);
/*
 * Opening many messages of one mailbox by ascending UID inside one read
 * snapshot (a FETCH_BODIES read): the cursor steps one statement over the
 * mailbox's message rows (no content row: the size is the message row's)
 * instead of a search per message. eng_message_cursor_open_uid is eng_message_open for the next
 * UID (ENG_ENOTFOUND: no such message); a UID below the last one, or far
 * past the row the cursor is on, searches again. The cursor holds a
 * statement: close it before the snapshot ends (eng_store_read_end).
 * The handles it gives are ordinary ones (eng_message_close).
 */
typedef struct eng_message_cursor eng_message_cursor;
eng_message_cursor *eng_message_cursor_new(eng_store *st, int64_t mailbox_id);
int eng_message_cursor_open_uid(eng_message_cursor *c, uint32_t uid,
				eng_message **m_r);
void eng_message_cursor_close(eng_message_cursor **c);
/* Frees the zstd decompression contexts kept for the next chunk read (at
 * most 4, ~95 KiB each; message_read.c); returns how many. Thread-safe; a
 * read running meanwhile keeps its own. sqlited calls it at rest. */
unsigned eng_message_free_cached(void);
/* Frees the zstd compression contexts appends keep for the next chunk (at
 * most 4, ~1 MiB each once used; message.c); returns how many. Thread-safe;
 * an append running meanwhile keeps its own. sqlited calls it at rest. */
unsigned eng_append_free_cached(void);
uint64_t eng_message_size(const eng_message *m);
/* The MIME tree stored at append time (decoded on first use). */
int eng_message_mime(eng_message *m, const eng_mime_part **root_r);
/* The top-level header, straight from its own column (no decompression). */
int eng_message_header(eng_message *m, const void **data_r, size_t *len_r);
/*
 * Copies up to len bytes of the raw message from offset into buf. Returns
 * the count (0 at the end) or a negative code. Only the chunks that hold
 * the range are decompressed.
 */
long eng_message_read(eng_message *m, uint64_t offset, void *buf, size_t len);
/*
 * Resolves an IMAP section ("", "HEADER", "TEXT", "1.2", "1.2.MIME",
 * "2.HEADER", "3.TEXT"; HEADER.FIELDS is HEADER then filtered by the
 * caller) to a byte range of the message. ENG_ENOTFOUND for a part that
 * does not exist (IMAP answers with an empty string).
 */
int eng_message_section(eng_message *m, const char *section,
			uint64_t *offset_r, uint64_t *len_r);

/*
 * Content pins (engine/content_pin.c): a body stream that reads a message
 * in pieces, each in its own read snapshot, pins its content so that an
 * EXPUNGE between pieces leaves the bytes in the file (refs = 0, counted
 * by no mailbox nor the quota) until the last pin goes; unpinning with the
 * store deletes them if still unreferenced (in its own transaction: not
 * inside a read snapshot); without the store (NULL, or another file), the
 * next open of the file does. Pins are per process and outlive the store
 * handle: after the store was closed and reopened, eng_message_rebind lets
 * the open message read through the new handle. Thread-safe registry; the
 * store calls run with the store's owner.
 */
typedef struct eng_content_pin eng_content_pin;
eng_content_pin *eng_message_pin(const eng_message *m);
int64_t eng_content_pin_id(const eng_content_pin *pin);
/* Ends *pin (NULL is a no-op); 0 or the error of the deletion. */
int eng_content_unpin(eng_content_pin **pin, eng_store *st);
/* The message's content id (RFC 8474 EMAILID). */
int64_t eng_message_content_id(const eng_message *m);
/* m reads through st from now on: st is the same file reopened, and m's
 * content is pinned (else it may be gone: reads fail with ENG_ECORRUPT). */
void eng_message_rebind(eng_message *m, eng_store *st);

enum eng_store_mode { ENG_STORE_SET, ENG_STORE_ADD, ENG_STORE_REMOVE };

/*
 * STORE: changes flags and keywords of the messages in uids. With
 * unchangedsince > 0 (CONDSTORE), messages whose MODSEQ is above it are
 * left alone and their UIDs added to failed (may be NULL). changed (may be
 * NULL) is called with the new state of every message that changed; a
 * message whose flags are already as asked keeps its MODSEQ.
 */
int eng_store_flags(eng_store *st, int64_t mailbox_id, const eng_uidset *uids,
		    enum eng_store_mode mode, uint32_t flags,
		    const char *const *keywords, size_t n_keywords,
		    uint64_t unchangedsince, eng_uidset *failed,
		    eng_msg_cb *changed, void *ctx);

/*
 * COPY / MOVE the messages in uids to another mailbox; the content is
 * shared, not duplicated. src_uids_r/dst_uids_r (both or neither NULL;
 * free()) get the UID pairs in source UID order for COPYUID.
 */
int eng_message_copy(eng_store *st, int64_t src_mailbox_id,
		     const eng_uidset *uids, int64_t dst_mailbox_id, bool move,
		     uint32_t **src_uids_r, uint32_t **dst_uids_r, size_t *n_r);

/*
 * EXPUNGE: removes the messages flagged \Deleted (only those in uids when
 * uids is not NULL: UID EXPUNGE). The removed UIDs are logged with their
 * MODSEQ for QRESYNC's VANISHED; uids_r (may be NULL; free()) gets them.
 */
int eng_expunge(eng_store *st, int64_t mailbox_id, const eng_uidset *uids,
		uint32_t **uids_r, size_t *n_r);

/*
 * Changes since a MODSEQ (CONDSTORE/QRESYNC): cb for every message whose
 * MODSEQ is above modseq, then the UIDs expunged since (vanished_r, sorted,
 * free()).
 */
int eng_changes_since(eng_store *st, int64_t mailbox_id, uint64_t modseq,
		      eng_msg_cb *cb, void *ctx, uint32_t **vanished_r,
		      size_t *n_vanished_r);

/* ---- Quota (RFC 9208 STORAGE, in bytes; 0 = no limit) ---- */

int eng_quota_get(eng_store *st, uint64_t *used_bytes_r,
		  uint64_t *limit_bytes_r, uint64_t *messages_r);
int eng_quota_set(eng_store *st, uint64_t limit_bytes);

/* ---- The spool (spool.h) ---- */

typedef void eng_drain_cb(void *ctx, const char *mailbox, uint32_t uid,
			  uint64_t modseq);
/*
 * Moves every entry of spool_dir into INBOX, exactly once: each entry's
 * id is recorded in the same transaction as its message, and the file is
 * removed only after the commit, so a crash at any point either leaves
 * the entry to be drained again (not yet committed) or to be removed
 * (already committed). sk is the alias's X25519 secret key. *n_r (may be
 * NULL) gets the count delivered; cb (may be NULL) hears of each one.
 */
int eng_store_drain_spool(eng_store *st, const char *spool_dir,
			  const uint8_t *sk,
			  eng_drain_cb *cb, void *ctx, size_t *n_r);

#endif
