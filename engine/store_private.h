/*
 * What only engine/ may touch of an open store: the SQLite handle, the
 * transaction state and the statement helpers shared by store.c,
 * mailbox.c, message.c, message_read.c, flags.c and search.c.
 */
#ifndef ENG_STORE_PRIVATE_H
#define ENG_STORE_PRIVATE_H

#include <sqlite3.h>

#include "store.h"

struct store_stmt_cache;

#define ENG_SCHEMA_VERSION 4
/* Raw bytes per content chunk; each chunk is compressed on its own so that
 * a byte-range read decompresses only what it needs. */
#define ENG_CHUNK_BYTES (256u * 1024)
/* body_chunk rows (schema version 4) are keyed content id << 16 | seq:
 * at most 65,536 chunks, 16 GiB, per message (message.c refuses more). */
#define ENG_CHUNK_SEQ_BITS 16
#define ENG_CHUNK_SEQ_MAX ((int64_t)1 << ENG_CHUNK_SEQ_BITS)
#define eng_chunk_rowid(content_id, seq) \
	(((int64_t)(content_id) << ENG_CHUNK_SEQ_BITS) | (int64_t)(seq))

struct eng_store {
	sqlite3 *db;
	char *path;
	eng_store_options opt;
	int tx_depth;
	uint64_t tx_modseq;         /* 0 until the transaction needs one */
	int64_t tx_content_next;    /* 0, or the next content id this
	                             * transaction hands to an append */
	int read_depth;             /* eng_store_read_begin calls not ended */
	bool read_tx;               /* the outermost of them ran BEGIN */
	bool broken;                /* I/O error or full disk seen */
	struct store_stmt_cache *stmts;  /* store_stmt.c; NULL until used */
	/* message_read.c: a body_chunk blob handle kept for the next chunk
	 * (sqlite3_blob_reopen) while a read snapshot (read_tx) lasts; closed
	 * when it ends (store_chunk_blob_close). */
	sqlite3_blob *chunk_blob;
	int64_t idem_pruned;        /* last idempotency prune, 0: none */
	int64_t spool_pruned;       /* last spool_applied prune, 0: none */
};

/*
 * SQLCipher decrypts a page that is all zeroes on disk to zeroes without an
 * error (it takes it for a short read past the end of the file). Raw chunk
 * bytes are therefore checked, as they are read, for a block of
 * ENG_ZERO_BLOCK zeroes at a multiple of ENG_ZERO_BLOCK from the chunk's
 * start, which the 4,044 payload bytes of a zeroed overflow page always
 * hold; a chunk that holds such a block is stored as a zstd frame, whose
 * checksum catches the same damage. store_zero_block: p (len bytes) starts
 * at byte at of its chunk; true if it holds such a block.
 */
#define ENG_ZERO_BLOCK 1024
bool store_zero_block(const unsigned char *p, size_t len, size_t at);

/* Closes st->chunk_blob, if open (message_read.c). */
void store_chunk_blob_close(eng_store *st);

/* A content id no row has and no other append of this transaction was
 * given (engine/message.c writes chunks under it before its row). */
int store_content_id_reserve(eng_store *st, int64_t *id_r);

/* Maps a SQLite result code to an engine error (and marks I/O trouble). */
int store_err(eng_store *st, int rc, const char *what);

/* The statement for sql from the store's cache (store_stmt.c), prepared
 * on first use; on failure logs and returns NULL with *err_r set. Every
 * statement returned goes back through store_release or store_step_done
 * on every path, never sqlite3_finalize. */
sqlite3_stmt *store_prepare(eng_store *st, const char *sql, int *err_r);
/* The same, never cached: for SQL built from input (uid sets, search). */
sqlite3_stmt *store_prepare_once(eng_store *st, const char *sql, int *err_r);
/* Resets a cached statement (and clears its bindings) for the next user;
 * finalizes one that is not cached. NULL is a no-op. */
void store_release(eng_store *st, sqlite3_stmt *stmt);
/* True if no cached statement is handed out or stepping (Debug checks). */
bool store_stmts_idle(const eng_store *st);
/* Finalizes every cached statement (before sqlite3_close). */
void store_stmts_free(eng_store *st);
/* Runs a statement without results. */
int store_exec(eng_store *st, const char *sql);
/* Steps a statement that must be done (no rows); releases it. */
int store_step_done(eng_store *st, sqlite3_stmt *stmt);

/* Integers in the meta table; ENG_ENOTFOUND for a missing key. */
int store_meta_get_int(eng_store *st, const char *key, int64_t *value_r);
int store_meta_set_int(eng_store *st, const char *key, int64_t value);

/* The MODSEQ of the current transaction (allocated on first call). */
int store_tx_modseq(eng_store *st, uint64_t *modseq_r);

/* Mailbox id by name; ENG_ENOTFOUND if missing. */
int store_mailbox_id(eng_store *st, const char *name, int64_t *id_r,
		     bool *noselect_r);
/* Adds deltas to a mailbox's counters and raises its HIGHESTMODSEQ. */
int store_mailbox_account(eng_store *st, int64_t mailbox_id,
			  int64_t d_messages, int64_t d_unseen,
			  int64_t d_deleted, int64_t d_size, uint64_t modseq);
/* The UID a new message of the mailbox gets (its UIDNEXT); ENG_ELIMIT
 * when UIDs ran out. Read only: store_mailbox_added moves UIDNEXT on. */
int store_mailbox_uidnext(eng_store *st, int64_t mailbox_id, uint32_t *uid_r);
/* Counts a message just inserted under uid (from store_mailbox_uidnext,
 * in the same transaction): UIDNEXT = uid + 1, one more message (unseen,
 * deleted by its flags), size bytes more, HIGHESTMODSEQ raised to modseq. */
int store_mailbox_added(eng_store *st, int64_t mailbox_id, uint32_t uid,
			uint32_t flags, int64_t size, uint64_t modseq);

/* A daily prune (idempotency keys, spool_applied) last done at last (0:
 * never) is due at now: a day has passed, or the clock went back. */
static inline bool store_prune_due(int64_t last, int64_t now)
{
	return last == 0 || now < last || now - last >= 24 * 3600;
}

/* eng_append_begin for the spool drain (spool_drain.c): the commit also
 * records spool_id in spool_applied (message.c). */
int store_append_begin_spool(eng_store *st, int64_t mailbox_id,
			     const eng_append_opts *opts, const char *spool_id,
			     eng_append **ap_r);

/* A keyword name IMAP allows: an atom of at most ENG_KEYWORD_MAX bytes,
 * not a system flag (keywords.c). */
bool store_keyword_ok(const char *kw);
/* Looks up or creates keyword ids (IMAP keywords are case-insensitive). */
int store_keyword_id(eng_store *st, const char *name, bool create,
		     int64_t *id_r);
int store_set_keywords(eng_store *st, int64_t message_rowid,
		       const char *const *keywords, size_t n);
/* Loads a message's keywords into msg->keywords. */
int store_load_keywords(eng_store *st, int64_t message_rowid, eng_msg *msg);

/* Drops one reference to a content row; deletes it (and its chunks and
 * search text) at zero. */
int store_content_unref(eng_store *st, int64_t content_id);

/* Appends "AND (...)" limiting column `uid` to set; binds nothing. */
void store_uidset_sql(const eng_uidset *set, eng_buf *sql);

/* ---- content pins (content_pin.c; eng_message_pin in store.h) ---- */

/* The content id of m and, in *st_r, its store (message_read.c). */
int64_t store_message_content(const eng_message *m, eng_store **st_r);
/* Deletes a content row with its chunks, fts row and header fields
 * (message.c), inside the caller's transaction. */
int store_content_delete(eng_store *st, int64_t content_id);
/* True while some pin of this process holds (st's file, content_id). */
bool store_content_pinned(eng_store *st, int64_t content_id);
/* Records that an orphan (refs = 0, pinned) was left: meta
 * content_orphans = 1, in the caller's transaction. */
int store_content_orphan(eng_store *st);
/* At open: deletes the orphans no pin holds, if meta content_orphans says
 * there may be some (own transaction). */
int store_content_sweep(eng_store *st);

/* ---- zeroed pages under long values (zero_check.c) ---- */

/* header (len bytes) was read from m's content.header: 0, or
 * ENG_ECORRUPT when it holds a zero block (store_zero_block) that the
 * message's own first bytes, read from its checked chunks, do not. */
int store_header_verify(eng_message *m, const void *header, size_t len);
/* Search text about to be indexed: if it holds a zero block, out gets a
 * copy with every NUL a space, and true (the readers take such a block for
 * a zeroed page). */
bool store_text_unzero(const void *text, size_t len, eng_buf *out);

/* Whether message.c's sample of a chunk (len bytes) says zstd at level
 * would not save an eighth of it, so that it is stored raw untried. */
bool store_chunk_sample_raw(const void *chunk, size_t len, int level);

#endif
