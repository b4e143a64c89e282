/*
 * The sealed inbound spool.
 *
 * Mail that arrives while nobody holds an alias's MK cannot go into its
 * database. It is sealed to the alias's X25519 public key and written to
 * the alias's spool directory; only the secret key (unwrapped by MK at the
 * next unlock) opens it. eng_store_drain_spool() (store.h) moves it into
 * the database exactly once.
 *
 * File format (docs/crypto.md): magic "SMSPOOL1", a crypto_box_seal of a
 * random 32-byte file key to the public key, then a libsodium
 * secretstream (XChaCha20-Poly1305) of a small metadata record (internal
 * date, flags) followed by the message in 64 KiB chunks, the last one
 * tagged FINAL. So a 50 MB message is never sealed in one piece, and a
 * truncated or altered file fails to open (ENG_ECORRUPT).
 *
 * Durability: an entry is written to "tmp-<id>", fsynced, renamed to
 * "<id>.msg" and the directory fsynced before eng_spool_commit() returns 0
 * (a staging writer, eng_spool_writer_no_sync, skips both fsyncs).
 * Entries are named by a random 128-bit id (32 hex digits) that is also
 * the idempotency key of the drain.
 *
 * Invariants:
 *  - a file named <id>.msg is complete and durable;
 *  - tmp-* files are leftovers of a crash and are removed by
 *    eng_spool_list().
 */
#ifndef ENG_SPOOL_H
#define ENG_SPOOL_H

#include <stddef.h>
#include <stdint.h>

#define ENG_SPOOL_ID_LEN 32       /* hex digits, without the NUL */

typedef struct eng_spool_writer eng_spool_writer;
typedef struct eng_spool_reader eng_spool_reader;

/* Creates dir (mode 0700) if missing. */
int eng_spool_writer_open(const char *dir, const uint8_t *pk,
			  int64_t internal_date, uint32_t flags,
			  eng_spool_writer **w_r);
/*
 * The same with a chosen id (ENG_SPOOL_ID_LEN lowercase hex digits; NULL =
 * random), for a writer that must be idempotent across crashes: the commit
 * replaces an entry of that id not drained yet, and the drain skips an id
 * it has applied, so writing the same id again stores the message once.
 * The caller serialises writers of one id (a stale tmp-<id> is removed).
 */
int eng_spool_writer_open_id(const char *dir, const uint8_t *pk,
			     int64_t internal_date, uint32_t flags,
			     const char *id, eng_spool_writer **w_r);
int eng_spool_write(eng_spool_writer *w, const void *data, size_t len);
/*
 * Marks the entry as a staging copy that is never the only copy of
 * anything acknowledged (sqlited's upload staging in data_dir/tmp/: the
 * body is copied into a database, whose commit syncs, or into another
 * spool entry, whose commit syncs, before anything is answered, and then
 * deleted): eng_spool_commit() then completes and names it without
 * fsync of the file or the directory. After a crash it may be missing,
 * short or absent; the reader reports a truncated one (ENG_ECORRUPT).
 * Never for an alias's spool or the outbound queue.
 */
void eng_spool_writer_no_sync(eng_spool_writer *w);
/*
 * Makes the entry durable and names it; id_r gets ENG_SPOOL_ID_LEN + 1
 * bytes. ENG_ENOSPC / ENG_EIO mean nothing was stored. Frees w either way.
 */
int eng_spool_commit(eng_spool_writer **w, char id_r[ENG_SPOOL_ID_LEN + 1]);
/* Drops an unfinished entry. Accepts NULL. */
void eng_spool_abort(eng_spool_writer **w);

/* The ids of complete entries, oldest first. *ids_r is freed with free(). */
int eng_spool_list(const char *dir, char (**ids_r)[ENG_SPOOL_ID_LEN + 1],
		   size_t *n_r);

/* Opens entry id with the secret key; checks the header. */
int eng_spool_reader_open(const char *dir, const char *id, const uint8_t *sk,
			  eng_spool_reader **r_r);
void eng_spool_reader_meta(const eng_spool_reader *r, int64_t *internal_date_r,
			   uint32_t *flags_r);
/*
 * Reads up to len decrypted bytes; returns the count, 0 at a verified end,
 * or ENG_ECORRUPT (tag failure, truncation, trailing garbage).
 */
long eng_spool_read(eng_spool_reader *r, void *buf, size_t len);
void eng_spool_reader_free(eng_spool_reader **r);

/* Unlinks the entry and fsyncs the directory. A missing entry is OK. */
int eng_spool_remove(const char *dir, const char *id);

#endif
