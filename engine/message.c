/*
 * Appending messages; content rows, chunks, deduplication (reading is
 * message_read.c, keywords keywords.c, the spool drain spool_drain.c).
 *
 * Content is stored once per alias: a content row per distinct SHA-256 of
 * the raw message, with a reference count (one per message row), the MIME
 * tree and the top-level header stored at append time, the summary
 * columns for sort/search/thread, an FTS4 row (docid = content id) and
 * the raw bytes in zstd-compressed chunks of ENG_CHUNK_BYTES.
 *
 * An append streams: chunks are written as the bytes arrive, inside the
 * append's transaction, under a content id reserved for it (the next
 * free one; no row yet). At commit the real hash is known: if that
 * content exists already its chunks are dropped and the existing row
 * gains a reference; otherwise the content row is inserted under the
 * reserved id (one write of the row and of its indexes, where a
 * placeholder row updated later wrote them twice). Either way, until
 * COMMIT nothing of it is visible, and a crash rolls it all back.
 */
#include "store_private.h"
#include "eng_error.h"
#include "keys.h"
#include "spool.h"
#include "search_private.h"

#include <limits.h>
#include <openssl/evp.h>
#include <pthread.h>
#include <sodium.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
/* ZSTD_c_literalCompressionMode (compress_chunk) is in zstd's advanced API. */
#define ZSTD_STATIC_LINKING_ONLY
#include <zstd.h>

#define IDEMPOTENCY_KEY_MAX 128
/* Header bytes kept in memory during an append to fill content.header. */
#define HEADER_CAPTURE_MAX (256u * 1024)

struct eng_append {
	eng_store *st;
	int64_t mailbox_id;
	uint32_t flags;
	char **keywords;
	size_t n_keywords;
	int64_t internal_date;
	char *idempotency_key;
	char *spool_id;
	/* A retry of an append already done: swallow bytes, answer the UID. */
	bool duplicate;
	uint32_t dup_uid;
	uint64_t dup_modseq;
	int failed;                 /* first error; only abort is left */
	int64_t content_id;         /* reserved; its row inserted at commit */
	uint64_t size;
	uint32_t chunks;
	unsigned char *chunk;       /* ENG_CHUNK_BYTES */
	size_t chunk_len;
	eng_buf zbuf;
	eng_buf header;             /* the top-level header's bytes, at most
				     * HEADER_CAPTURE_MAX */
	bool header_done;           /* its end was seen: capture no more */
	EVP_MD_CTX *sha;            /* SHA-256 of the raw bytes */
	eng_mime_parser *parser;
};

void eng_msg_clear(eng_msg *msg)
{
	if (msg->keywords != NULL) {
		for (char **k = msg->keywords; *k != NULL; k++)
			free(*k);
		free(msg->keywords);
	}
	msg->keywords = NULL;
}

/* ---- content ---- */

/* The content's chunks, in body_chunk (its key range) and, for a content
 * stored before schema version 4, in chunk. */
static int delete_chunks(eng_store *st, int64_t content_id)
{
	int err;
	sqlite3_stmt *stmt = store_prepare(st,
		"DELETE FROM body_chunk WHERE id BETWEEN ? AND ?", &err);

	if (stmt == NULL)
		return err;
	sqlite3_bind_int64(stmt, 1, eng_chunk_rowid(content_id, 0));
	sqlite3_bind_int64(stmt, 2, eng_chunk_rowid(content_id,
						    ENG_CHUNK_SEQ_MAX - 1));
	if ((err = store_step_done(st, stmt)) != 0)
		return err;
	stmt = store_prepare(st, "DELETE FROM chunk WHERE content_id = ?",
			     &err);
	if (stmt == NULL)
		return err;
	sqlite3_bind_int64(stmt, 1, content_id);
	return store_step_done(st, stmt);
}

static int delete_content_rows(eng_store *st, int64_t content_id)
{
	static const char *const sqls[] = {
		"DELETE FROM fts WHERE docid = ?",
		"DELETE FROM content WHERE id = ?",
	};
	int err = delete_chunks(st, content_id);

	for (size_t i = 0; err == 0 && i < sizeof(sqls) / sizeof(sqls[0]);
	     i++) {
		sqlite3_stmt *stmt = store_prepare(st, sqls[i], &err);

		if (stmt == NULL)
			return err;
		sqlite3_bind_int64(stmt, 1, content_id);
		err = store_step_done(st, stmt);
	}
	return err != 0 ? err : search_fields_delete(st, content_id);
}

int store_content_unref(eng_store *st, int64_t content_id)
{
	int err;
	sqlite3_stmt *stmt = store_prepare(st,
		"UPDATE content SET refs = refs - 1 WHERE id = ?", &err);
	int rc;
	int64_t refs;

	if (stmt == NULL)
		return err;
	sqlite3_bind_int64(stmt, 1, content_id);
	if ((err = store_step_done(st, stmt)) != 0)
		return err;
	stmt = store_prepare(st, "SELECT refs FROM content WHERE id = ?", &err);
	if (stmt == NULL)
		return err;
	sqlite3_bind_int64(stmt, 1, content_id);
	rc = sqlite3_step(stmt);
	refs = rc == SQLITE_ROW ? sqlite3_column_int64(stmt, 0) : -1;
	store_release(st, stmt);
	if (rc != SQLITE_ROW)
		return rc == SQLITE_DONE ? ENG_ECORRUPT :
			store_err(st, rc, "unref");
	if (refs > 0)
		return 0;
	/* A body stream still reads it (content_pin.c): its last unpin, or
	 * the next open, deletes it. */
	if (store_content_pinned(st, content_id))
		return store_content_orphan(st);
	return delete_content_rows(st, content_id);
}

int store_content_delete(eng_store *st, int64_t content_id)
{
	return delete_content_rows(st, content_id);
}

static int content_ref(eng_store *st, int64_t content_id)
{
	int err;
	sqlite3_stmt *stmt = store_prepare(st,
		"UPDATE content SET refs = refs + 1 WHERE id = ?", &err);

	if (stmt == NULL)
		return err;
	sqlite3_bind_int64(stmt, 1, content_id);
	return store_step_done(st, stmt);
}

/* ---- append ---- */

static void append_free(eng_append *ap)
{
	for (size_t i = 0; i < ap->n_keywords; i++)
		free(ap->keywords[i]);
	free(ap->keywords);
	free(ap->idempotency_key);
	free(ap->spool_id);
	free(ap->chunk);
	eng_buf_free(&ap->zbuf);
	eng_buf_free(&ap->header);
	eng_mime_parser_free(&ap->parser);
	EVP_MD_CTX_free(ap->sha);   /* cleanses the state */
	free(ap);
}

static int idempotency_lookup(eng_store *st, const char *key,
			      uint32_t *uid_r, uint64_t *modseq_r)
{
	int err;
	sqlite3_stmt *stmt = store_prepare(st,
		"SELECT uid, modseq FROM idempotency WHERE key = ?", &err);
	int rc;

	if (stmt == NULL)
		return err;
	sqlite3_bind_text(stmt, 1, key, -1, SQLITE_STATIC);
	rc = sqlite3_step(stmt);
	if (rc == SQLITE_ROW) {
		*uid_r = (uint32_t)sqlite3_column_int64(stmt, 0);
		*modseq_r = (uint64_t)sqlite3_column_int64(stmt, 1);
	}
	store_release(st, stmt);
	if (rc == SQLITE_ROW)
		return 0;
	return rc == SQLITE_DONE ? ENG_ENOTFOUND : store_err(st, rc, "idem");
}

/*
 * The content hash with OpenSSL's SHA-256, which uses the CPU's SHA
 * instructions where there are some (libsodium's is portable C: 266 against
 * 56 us for 25 KB here). The digest is fetched once: EVP_sha256() makes
 * every init look it up in the provider again (0.8% of an APPEND's CPU).
 * Failing to set up a digest is out of memory.
 */
static pthread_once_t sha256_once = PTHREAD_ONCE_INIT;
static EVP_MD *sha256_md;

static void sha256_fetch(void)
{
	sha256_md = EVP_MD_fetch(NULL, "SHA256", NULL);
}

static EVP_MD_CTX *sha256_new(void)
{
	EVP_MD_CTX *c;

	pthread_once(&sha256_once, sha256_fetch);
	c = EVP_MD_CTX_new();
	if (c == NULL || EVP_DigestInit_ex(c, sha256_md != NULL ? sha256_md :
					   EVP_sha256(), NULL) != 1)
		eng_oom(sizeof(void *));
	return c;
}

/*
 * The mailbox, which must exist and be selectable: ap->mailbox_id, or the
 * one named (then ap->mailbox_id is set). uidvalidity_r may be NULL.
 */
static int append_mailbox(eng_append *ap, const char *name,
			  uint32_t *uidvalidity_r)
{
	int err, rc;
	bool noselect = false;
	sqlite3_stmt *q = store_prepare(ap->st, name != NULL ?
		"SELECT noselect, id, uidvalidity FROM mailbox WHERE name = ?" :
		"SELECT noselect, id, uidvalidity FROM mailbox WHERE id = ?",
		&err);

	if (q == NULL)
		return err;
	if (name != NULL)
		sqlite3_bind_text(q, 1, name, -1, SQLITE_STATIC);
	else
		sqlite3_bind_int64(q, 1, ap->mailbox_id);
	rc = sqlite3_step(q);
	if (rc == SQLITE_ROW) {
		noselect = sqlite3_column_int(q, 0) != 0;
		ap->mailbox_id = sqlite3_column_int64(q, 1);
		if (uidvalidity_r != NULL)
			*uidvalidity_r = (uint32_t)sqlite3_column_int64(q, 2);
	}
	store_release(ap->st, q);
	if (rc != SQLITE_ROW)
		return rc == SQLITE_DONE ? ENG_ENOTFOUND :
			store_err(ap->st, rc, "append");
	return noselect ? ENG_EPERM : 0;
}

/* By mailbox_id, or by name when name is not NULL. */
static int append_begin(eng_store *st, int64_t mailbox_id, const char *name,
			const eng_append_opts *opts, const char *spool_id,
			eng_append **ap_r, uint32_t *uidvalidity_r)
{
	eng_append *ap;
	int err;

	*ap_r = NULL;
	if (opts != NULL) {
		if (opts->flags & ~(uint32_t)ENG_F_ALL ||
		    opts->n_keywords > ENG_KEYWORDS_PER_MESSAGE ||
		    (opts->idempotency_key != NULL &&
		     (strlen(opts->idempotency_key) == 0 ||
		      strlen(opts->idempotency_key) > IDEMPOTENCY_KEY_MAX)))
			return ENG_EINVAL;
		for (size_t i = 0; i < opts->n_keywords; i++) {
			if (!store_keyword_ok(opts->keywords[i]))
				return ENG_EINVAL;
		}
	}
	ap = eng_calloc(1, sizeof(*ap));
	ap->st = st;
	ap->mailbox_id = mailbox_id;
	if (opts != NULL) {
		ap->flags = opts->flags;
		ap->internal_date = opts->internal_date;
		if (opts->n_keywords > 0) {
			ap->keywords = eng_calloc(opts->n_keywords, sizeof(char *));
			for (size_t i = 0; i < opts->n_keywords; i++)
				ap->keywords[i] = eng_strdup(opts->keywords[i]);
			ap->n_keywords = opts->n_keywords;
		}
		if (opts->idempotency_key != NULL)
			ap->idempotency_key = eng_strdup(opts->idempotency_key);
	}
	if (ap->internal_date == 0)
		ap->internal_date = (int64_t)time(NULL);
	if (spool_id != NULL)
		ap->spool_id = eng_strdup(spool_id);

	if ((err = eng_store_tx_begin(st)) != 0) {
		append_free(ap);
		return err;
	}
	if ((err = append_mailbox(ap, name, uidvalidity_r)) != 0)
		goto fail;
	if (ap->idempotency_key != NULL) {
		err = idempotency_lookup(st, ap->idempotency_key, &ap->dup_uid,
					 &ap->dup_modseq);
		if (err == 0) {
			ap->duplicate = true;
			*ap_r = ap;
			return 0;
		}
		if (err != ENG_ENOTFOUND)
			goto fail;
	}
	if ((err = store_content_id_reserve(st, &ap->content_id)) != 0)
		goto fail;
	ap->chunk = eng_malloc(ENG_CHUNK_BYTES);
	ap->sha = sha256_new();
	ap->parser = eng_mime_parser_new(&st->opt.mime_limits);
	*ap_r = ap;
	return 0;
fail:
	eng_store_tx_rollback(st);
	append_free(ap);
	return err;
}

int store_append_begin_spool(eng_store *st, int64_t mailbox_id,
			     const eng_append_opts *opts, const char *spool_id,
			     eng_append **ap_r)
{
	return append_begin(st, mailbox_id, NULL, opts, spool_id, ap_r, NULL);
}

int eng_append_begin(eng_store *st, int64_t mailbox_id,
		     const eng_append_opts *opts, eng_append **ap_r)
{
	return append_begin(st, mailbox_id, NULL, opts, NULL, ap_r, NULL);
}

int eng_append_begin_name(eng_store *st, const char *name,
			  const eng_append_opts *opts, eng_append **ap_r,
			  int64_t *mailbox_id_r, uint32_t *uidvalidity_r)
{
	char *canon;
	int err;

	*ap_r = NULL;
	if ((err = eng_mailbox_name_check(name, &canon)) != 0)
		return err;
	err = append_begin(st, 0, canon, opts, NULL, ap_r, uidvalidity_r);
	free(canon);
	if (err == 0 && mailbox_id_r != NULL)
		*mailbox_id_r = (*ap_r)->mailbox_id;
	return err;
}

/*
 * Compression contexts kept for reuse: ZSTD_compress() allocates and
 * initialises one (hundreds of KiB, mmap'd) per chunk. At most
 * CCTX_KEEP are kept, whatever the number of threads compressing, so the
 * memory they hold stays bounded; a thread that finds none makes one.
 * eng_append_free_cached frees the kept ones (sqlited: at rest).
 */
#define CCTX_KEEP 4
static pthread_mutex_t cctx_lock = PTHREAD_MUTEX_INITIALIZER;
static ZSTD_CCtx *cctx_free[CCTX_KEEP];
static unsigned cctx_n;

static ZSTD_CCtx *cctx_get(void)
{
	ZSTD_CCtx *c = NULL;

	pthread_mutex_lock(&cctx_lock);
	if (cctx_n > 0)
		c = cctx_free[--cctx_n];
	pthread_mutex_unlock(&cctx_lock);
	if (c == NULL && (c = ZSTD_createCCtx()) == NULL)
		eng_oom(ENG_CHUNK_BYTES);
	return c;
}

static void cctx_put(ZSTD_CCtx *c)
{
	pthread_mutex_lock(&cctx_lock);
	if (cctx_n < CCTX_KEEP) {
		cctx_free[cctx_n++] = c;
		c = NULL;
	}
	pthread_mutex_unlock(&cctx_lock);
	ZSTD_freeCCtx(c);
}

unsigned eng_append_free_cached(void)
{
	ZSTD_CCtx *kept[CCTX_KEEP];
	unsigned n;

	pthread_mutex_lock(&cctx_lock);
	n = cctx_n;
	for (unsigned i = 0; i < n; i++)
		kept[i] = cctx_free[i];
	cctx_n = 0;
	pthread_mutex_unlock(&cctx_lock);
	for (unsigned i = 0; i < n; i++)
		ZSTD_freeCCtx(kept[i]);
	return n;
}

/*
 * A chunk is written with its literals left raw (zstd's literal
 * compression off). Most of a mailbox's bytes are base64 attachments:
 * Huffman coding their literals saves about a quarter of their size, but
 * then every read decodes them at ~0.7 GB/s instead of copying them at
 * ~3.4 GB/s. Measured (bench/README.md, "zstd literals"): a body FETCH
 * costs sqlited 10-20% less CPU, for a database about a fifth larger
 * (the chunks stay below the raw size). Readers need nothing: each
 * zstd block says how its literals are stored, and chunks written before
 * read as they are. A libzstd without the parameter compresses as before.
 */
static size_t compress_chunk(ZSTD_CCtx *cctx, void *dst, size_t cap,
			     const void *src, size_t len, int level)
{
	ZSTD_CCtx_reset(cctx, ZSTD_reset_session_and_parameters);
	ZSTD_CCtx_setParameter(cctx, ZSTD_c_compressionLevel, level);
	/* XXH64 of the content, checked by every decompression: a zeroed
	 * page inside a raw literal block would decode (store_zero_block). */
	ZSTD_CCtx_setParameter(cctx, ZSTD_c_checksumFlag, 1);
	(void)ZSTD_CCtx_setParameter(cctx, ZSTD_c_literalCompressionMode,
				     ZSTD_lcm_uncompressed);
	return ZSTD_compress2(cctx, dst, cap, src, len);
}

/*
 * Whether a sample says that zstd would not save an eighth of the chunk,
 * so that the chunk goes raw without a trial compression of all of it.
 * The sample is SAMPLE_SLICES slices of SAMPLE_SLICE bytes, one from the
 * middle of each of as many equal stretches of the chunk (so a stretch
 * of text, such as the header, counts by its share of the chunk),
 * compressed together as a chunk is; "raw" only if zstd saves less than
 * SAMPLE_SAVES_1_IN of it, half the eighth the whole chunk must save.
 * Raw and zstd chunks read alike, so a misjudged sample costs space or
 * CPU, never bytes: what it can miss is redundancy only between parts
 * further apart than a slice (such a chunk is then stored raw). Over
 * 3,000 msggen messages it spared the trial on 955 of the 1,093 chunks
 * stored raw and judged none of the others raw (zstd CPU 47 -> 27 us per
 * message; bench/README.md, "APPEND CPU, one client"). Smaller chunks
 * and chunks with a zero block (which are never raw) are always tried.
 */
#define SAMPLE_SLICES 8
#define SAMPLE_SLICE 1024
#define SAMPLE_MIN (16u * 1024)
#define SAMPLE_SAVES_1_IN 16

static bool sample_says_raw(ZSTD_CCtx *cctx, eng_buf *out,
			    const unsigned char *chunk, size_t len, int level)
{
	unsigned char sample[SAMPLE_SLICES * SAMPLE_SLICE];
	size_t bound = ZSTD_compressBound(sizeof(sample));
	size_t zlen;

	if (len < SAMPLE_MIN || store_zero_block(chunk, len, 0))
		return false;
	for (size_t k = 0; k < SAMPLE_SLICES; k++) {
		size_t mid = len / SAMPLE_SLICES * k + len / SAMPLE_SLICES / 2;

		memcpy(sample + k * SAMPLE_SLICE, chunk + mid - SAMPLE_SLICE / 2,
		       SAMPLE_SLICE);
	}
	eng_buf_reset(out);
	eng_buf_reserve(out, bound);
	zlen = compress_chunk(cctx, out->data, bound, sample, sizeof(sample),
			      level);
	return !ZSTD_isError(zlen) &&
		zlen >= sizeof(sample) - sizeof(sample) / SAMPLE_SAVES_1_IN;
}

bool store_chunk_sample_raw(const void *chunk, size_t len, int level)
{
	ZSTD_CCtx *cctx = cctx_get();
	eng_buf out = ENG_BUF_INIT;
	bool raw = sample_says_raw(cctx, &out, chunk, len, level);

	cctx_put(cctx);
	eng_buf_free(&out);
	return raw;
}

/*
 * Writes the chunk as a body_chunk row (schema version 4, docs/storage.md):
 * its zstd frame if that is below seven eighths of the raw length (or the
 * chunk holds a block of zeroes), else the raw bytes, which a read copies
 * in place (message_read.c). A frame is always shorter than the raw
 * length, so the row's length tells which it is. Most of a mailbox's
 * bytes are base64 attachments, which zstd with raw literals leaves at
 * 90-100% of their size; a sample spares most of them the trial.
 */
static int flush_chunk(eng_append *ap)
{
	eng_store *st = ap->st;
	size_t bound = ZSTD_compressBound(ap->chunk_len);
	size_t zlen;
	sqlite3_stmt *stmt;
	ZSTD_CCtx *cctx;
	int err;

	if (ap->chunk_len == 0)
		return 0;
	if (ap->chunks >= (uint64_t)ENG_CHUNK_SEQ_MAX)
		return ENG_ELIMIT;
	cctx = cctx_get();
	if (sample_says_raw(cctx, &ap->zbuf, ap->chunk, ap->chunk_len,
			    st->opt.zstd_level)) {
		zlen = ap->chunk_len;       /* not tried: stored raw */
	} else {
		eng_buf_reset(&ap->zbuf);
		eng_buf_reserve(&ap->zbuf, bound);
		zlen = compress_chunk(cctx, ap->zbuf.data, bound, ap->chunk,
				      ap->chunk_len, st->opt.zstd_level);
	}
	cctx_put(cctx);
	if (ZSTD_isError(zlen)) {
		eng_log(ENG_LOG_ERROR, "zstd: %s", ZSTD_getErrorName(zlen));
		return ENG_EIO;
	}
	stmt = store_prepare(st, "INSERT INTO body_chunk (id, data) "
			     "VALUES (?, ?)", &err);
	if (stmt == NULL)
		return err;
	sqlite3_bind_int64(stmt, 1, eng_chunk_rowid(ap->content_id,
						    ap->chunks));
	/* A chunk with a block of zeroes is never raw: a reader takes such a
	 * block in raw bytes for a zeroed page (store_zero_block); zstd
	 * shrinks the block to a few bytes, so its frame is shorter. */
	if (zlen < ap->chunk_len - ap->chunk_len / 8 ||
	    (zlen < ap->chunk_len &&
	     store_zero_block(ap->chunk, ap->chunk_len, 0)))
		sqlite3_bind_blob(stmt, 2, ap->zbuf.data, (int)zlen,
				  SQLITE_STATIC);
	else
		sqlite3_bind_blob(stmt, 2, ap->chunk, (int)ap->chunk_len,
				  SQLITE_STATIC);
	if ((err = store_step_done(st, stmt)) != 0)
		return err;
	ap->chunks++;
	ap->chunk_len = 0;
	return 0;
}

/*
 * Keeps the bytes of the top-level header for content.header (fill_content
 * stores the first min(body_off, HEADER_CAPTURE_MAX)), p being the len
 * bytes that follow those captured so far; none once the parser has seen
 * the header's end (copying a whole message there cost a copy and
 * a realloc per doubling, 1.2% of an APPEND's CPU).
 */
static void capture_header(eng_append *ap, const unsigned char *p, size_t len)
{
	size_t n = HEADER_CAPTURE_MAX - ap->header.len;
	uint64_t body_off;

	if (n > len)
		n = len;
	if (eng_mime_parser_body_off(ap->parser, &body_off)) {
		ap->header_done = true;
		if (body_off < ap->header.len + n)
			n = body_off > ap->header.len ?
				(size_t)(body_off - ap->header.len) : 0;
	}
	if (ap->header.len + n >= HEADER_CAPTURE_MAX)
		ap->header_done = true;
	eng_buf_append(&ap->header, p, n);
}

int eng_append_write(eng_append *ap, const void *data, size_t len)
{
	const unsigned char *p = data;

	if (ap->failed != 0)
		return ap->failed;
	if (ap->duplicate)
		return 0;
	if (len > ap->st->opt.max_message_bytes - ap->size) {
		ap->failed = ENG_ELIMIT;
		return ap->failed;
	}
	ap->size += len;
	if (EVP_DigestUpdate(ap->sha, p, len) != 1) {
		ap->failed = ENG_EIO;
		return ap->failed;
	}
	eng_mime_parser_feed(ap->parser, p, len);
	if (!ap->header_done)
		capture_header(ap, p, len);
	while (len > 0) {
		size_t n = ENG_CHUNK_BYTES - ap->chunk_len;

		if (n > len)
			n = len;
		memcpy(ap->chunk + ap->chunk_len, p, n);
		ap->chunk_len += n;
		p += n;
		len -= n;
		if (ap->chunk_len == ENG_CHUNK_BYTES) {
			int err = flush_chunk(ap);

			if (err != 0) {
				ap->failed = err;
				return err;
			}
		}
	}
	return 0;
}

static int find_content(eng_store *st, const uint8_t *sha, int64_t *id_r)
{
	int err;
	sqlite3_stmt *stmt = store_prepare(st,
		"SELECT id FROM content WHERE sha256 = ?", &err);
	int rc;

	if (stmt == NULL)
		return err;
	sqlite3_bind_blob(stmt, 1, sha, 32, SQLITE_STATIC);
	rc = sqlite3_step(stmt);
	if (rc == SQLITE_ROW)
		*id_r = sqlite3_column_int64(stmt, 0);
	store_release(st, stmt);
	if (rc == SQLITE_ROW)
		return 0;
	return rc == SQLITE_DONE ? ENG_ENOTFOUND : store_err(st, rc, "content");
}

static void bind_text_or_null(sqlite3_stmt *stmt, int i, const char *s)
{
	if (s != NULL)
		sqlite3_bind_text(stmt, i, s, -1, SQLITE_STATIC);
	else
		sqlite3_bind_null(stmt, i);
}

/* The search text of the content; NULs of a text that holds a zero block
 * go in as spaces (zero_check.c: readers take such a block for damage). */
static int fill_fts(eng_store *st, int64_t content_id,
		    const eng_mime_summary *sum)
{
	eng_buf hfix = ENG_BUF_INIT, bfix = ENG_BUF_INIT;
	const eng_buf *h = &sum->header_text, *b = &sum->body_text;
	int err;
	sqlite3_stmt *stmt = store_prepare(st, "INSERT INTO fts (docid, "
					   "header, body) VALUES (?, ?, ?)",
					   &err);

	if (stmt == NULL)
		return err;
	if (store_text_unzero(h->data, h->len, &hfix))
		h = &hfix;
	if (store_text_unzero(b->data, b->len, &bfix))
		b = &bfix;
	sqlite3_bind_int64(stmt, 1, content_id);
	sqlite3_bind_text(stmt, 2, h->data != NULL ? h->data : "",
			  (int)h->len, SQLITE_STATIC);
	sqlite3_bind_text(stmt, 3, b->data != NULL ? b->data : "",
			  (int)b->len, SQLITE_STATIC);
	if ((err = store_step_done(st, stmt)) == 0)
		err = search_fields_put(st, content_id, h->data, h->len);
	eng_buf_free(&hfix);
	eng_buf_free(&bfix);
	return err;
}

/* The content row of this message, under the id its chunks have. */
static int fill_content(eng_append *ap, const uint8_t *sha,
			const eng_mime_part *root, const eng_mime_summary *sum)
{
	eng_store *st = ap->st;
	eng_buf mime = ENG_BUF_INIT;
	size_t header_len = root->body_off < ap->header.len ?
		(size_t)root->body_off : ap->header.len;
	sqlite3_stmt *stmt;
	int err;

	eng_mime_encode(root, &mime);
	stmt = store_prepare(st, "INSERT INTO content (sha256, size, refs, "
		"chunks, mime, header, subject, base_subject, from_addr, "
		"from_display, to_addr, to_display, cc_addr, sent_date, "
		"message_id, preview, id) VALUES (?, ?, 1, ?, ?, ?, ?, ?, ?, ?, "
		"?, ?, ?, ?, ?, ?, ?)", &err);
	if (stmt == NULL) {
		eng_buf_free(&mime);
		return err;
	}
	sqlite3_bind_blob(stmt, 1, sha, 32, SQLITE_STATIC);
	sqlite3_bind_int64(stmt, 2, (int64_t)ap->size);
	sqlite3_bind_int64(stmt, 3, ap->chunks);
	sqlite3_bind_blob(stmt, 4, mime.data, (int)mime.len, SQLITE_STATIC);
	sqlite3_bind_blob(stmt, 5, ap->header.data != NULL ? ap->header.data :
			  "", (int)header_len, SQLITE_STATIC);
	bind_text_or_null(stmt, 6, sum->subject);
	bind_text_or_null(stmt, 7, sum->base_subject);
	bind_text_or_null(stmt, 8, sum->from_addr);
	bind_text_or_null(stmt, 9, sum->from_display);
	bind_text_or_null(stmt, 10, sum->to_addr);
	bind_text_or_null(stmt, 11, sum->to_display);
	bind_text_or_null(stmt, 12, sum->cc_addr);
	if (sum->sent_date != INT64_MIN)
		sqlite3_bind_int64(stmt, 13, sum->sent_date);
	else
		sqlite3_bind_null(stmt, 13);
	bind_text_or_null(stmt, 14, sum->message_id);
	bind_text_or_null(stmt, 15, sum->preview);
	sqlite3_bind_int64(stmt, 16, ap->content_id);
	err = store_step_done(st, stmt);
	eng_buf_free(&mime);
	if (err != 0)
		return err;
	return fill_fts(st, ap->content_id, sum);
}

static int thread_lookup(eng_store *st, const char *msgid, int64_t *thread_r)
{
	int err;
	sqlite3_stmt *stmt = store_prepare(st,
		"SELECT thread_id FROM thread_ref WHERE msgid = ?", &err);
	int rc;

	if (stmt == NULL)
		return err;
	sqlite3_bind_text(stmt, 1, msgid, -1, SQLITE_STATIC);
	rc = sqlite3_step(stmt);
	if (rc == SQLITE_ROW)
		*thread_r = sqlite3_column_int64(stmt, 0);
	store_release(st, stmt);
	if (rc == SQLITE_ROW)
		return 0;
	return rc == SQLITE_DONE ? ENG_ENOTFOUND : store_err(st, rc, "thread");
}

/*
 * A thread id per message: the thread of the oldest referenced message
 * we know (References, In-Reply-To, or another copy of this Message-ID),
 * else, for a reply or forward ("Re:" stripped), the latest thread with
 * the same base subject, else a new thread. Every id it mentions is
 * recorded, so a reply that arrives before its parent still joins later.
 */
static int assign_thread(eng_store *st, const eng_mime_summary *sum,
			 int64_t *thread_r)
{
	int64_t thread = 0;
	int err;

	for (size_t i = 0; i < sum->n_references && thread == 0; i++) {
		err = thread_lookup(st, sum->references[i], &thread);
		if (err != 0 && err != ENG_ENOTFOUND)
			return err;
	}
	if (thread == 0 && sum->message_id != NULL) {
		err = thread_lookup(st, sum->message_id, &thread);
		if (err != 0 && err != ENG_ENOTFOUND)
			return err;
	}
	if (thread == 0 && sum->subject != NULL && sum->base_subject != NULL &&
	    sum->base_subject[0] != '\0' &&
	    strcmp(sum->subject, sum->base_subject) != 0) {
		sqlite3_stmt *stmt = store_prepare(st,
			"SELECT m.thread_id FROM content c JOIN message m "
			"ON m.content_id = c.id WHERE c.base_subject = ? COLLATE NOCASE "
			"ORDER BY m.id DESC LIMIT 1", &err);
		int rc;

		if (stmt == NULL)
			return err;
		sqlite3_bind_text(stmt, 1, sum->base_subject, -1, SQLITE_STATIC);
		rc = sqlite3_step(stmt);
		if (rc == SQLITE_ROW)
			thread = sqlite3_column_int64(stmt, 0);
		store_release(st, stmt);
		if (rc != SQLITE_ROW && rc != SQLITE_DONE)
			return store_err(st, rc, "thread subject");
	}
	if (thread == 0) {
		if ((err = store_meta_get_int(st, "next_thread", &thread)) != 0 ||
		    (err = store_meta_set_int(st, "next_thread", thread + 1)) != 0)
			return err;
	}
	for (size_t i = 0; i <= sum->n_references; i++) {
		const char *id = i < sum->n_references ? sum->references[i] :
			sum->message_id;
		sqlite3_stmt *stmt;

		if (id == NULL)
			continue;
		stmt = store_prepare(st, "INSERT OR IGNORE INTO thread_ref "
				     "(msgid, thread_id) VALUES (?, ?)", &err);
		if (stmt == NULL)
			return err;
		sqlite3_bind_text(stmt, 1, id, -1, SQLITE_STATIC);
		sqlite3_bind_int64(stmt, 2, thread);
		if ((err = store_step_done(st, stmt)) != 0)
			return err;
	}
	*thread_r = thread;
	return 0;
}

/* The sum over the mailboxes is read only when there is a limit. */
static int check_quota(eng_store *st, uint64_t size)
{
	int64_t limit = 0;
	uint64_t used;
	int err = store_meta_get_int(st, "quota_bytes", &limit);

	if (err != 0 || limit == 0)
		return err;
	if ((err = eng_quota_get(st, &used, NULL, NULL)) != 0)
		return err;
	return used + size > (uint64_t)limit ? ENG_EQUOTA : 0;
}

static int insert_message(eng_append *ap, int64_t content_id, int64_t thread,
			  uint32_t *uid_r, uint64_t *modseq_r)
{
	eng_store *st = ap->st;
	uint32_t uid;
	uint64_t modseq;
	sqlite3_stmt *stmt;
	int err;

	if ((err = store_mailbox_uidnext(st, ap->mailbox_id, &uid)) != 0 ||
	    (err = store_tx_modseq(st, &modseq)) != 0)
		return err;
	stmt = store_prepare(st, "INSERT INTO message (mailbox_id, uid, modseq, "
			     "flags, internal_date, save_date, size, content_id, "
			     "thread_id) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
			     &err);
	if (stmt == NULL)
		return err;
	sqlite3_bind_int64(stmt, 1, ap->mailbox_id);
	sqlite3_bind_int64(stmt, 2, uid);
	sqlite3_bind_int64(stmt, 3, (int64_t)modseq);
	sqlite3_bind_int64(stmt, 4, ap->flags);
	sqlite3_bind_int64(stmt, 5, ap->internal_date);
	sqlite3_bind_int64(stmt, 6, (int64_t)time(NULL));
	sqlite3_bind_int64(stmt, 7, (int64_t)ap->size);
	sqlite3_bind_int64(stmt, 8, content_id);
	sqlite3_bind_int64(stmt, 9, thread);
	if ((err = store_step_done(st, stmt)) != 0)
		return err;
	if (ap->n_keywords > 0 &&
	    (err = store_set_keywords(st, sqlite3_last_insert_rowid(st->db),
				      (const char *const *)ap->keywords,
				      ap->n_keywords)) != 0)
		return err;
	if ((err = store_mailbox_added(st, ap->mailbox_id, uid, ap->flags,
				       (int64_t)ap->size, modseq)) != 0)
		return err;
	*uid_r = uid;
	*modseq_r = modseq;
	return 0;
}

/*
 * Deletes the idempotency records older than ENG_IDEMPOTENCY_TTL_SECONDS
 * (store.h: far past any retry), in the keyed append's own transaction, at
 * most once a day per open store. No index on created: the scan reads only
 * the keys of the last 14 days, once a day, where an index would cost
 * every keyed append a page.
 */
static int idempotency_prune(eng_store *st, int64_t now)
{
	sqlite3_stmt *stmt;
	int err;

	if (!store_prune_due(st->idem_pruned, now))
		return 0;
	stmt = store_prepare(st, "DELETE FROM idempotency WHERE created < ?",
			     &err);
	if (stmt == NULL)
		return err;
	sqlite3_bind_int64(stmt, 1, now - ENG_IDEMPOTENCY_TTL_SECONDS);
	if ((err = store_step_done(st, stmt)) == 0)
		st->idem_pruned = now;
	return err;
}

static int record_keys(eng_append *ap, uint32_t uid, uint64_t modseq)
{
	eng_store *st = ap->st;
	sqlite3_stmt *stmt;
	int err;

	if (ap->idempotency_key != NULL) {
		if ((err = idempotency_prune(st, (int64_t)time(NULL))) != 0)
			return err;
		stmt = store_prepare(st, "INSERT INTO idempotency (key, "
				     "mailbox_id, uid, modseq, created) "
				     "VALUES (?, ?, ?, ?, ?)", &err);
		if (stmt == NULL)
			return err;
		sqlite3_bind_text(stmt, 1, ap->idempotency_key, -1, SQLITE_STATIC);
		sqlite3_bind_int64(stmt, 2, ap->mailbox_id);
		sqlite3_bind_int64(stmt, 3, uid);
		sqlite3_bind_int64(stmt, 4, (int64_t)modseq);
		sqlite3_bind_int64(stmt, 5, (int64_t)time(NULL));
		if ((err = store_step_done(st, stmt)) != 0)
			return err;
	}
	if (ap->spool_id != NULL) {
		stmt = store_prepare(st, "INSERT INTO spool_applied (id, applied) "
				     "VALUES (?, ?)", &err);
		if (stmt == NULL)
			return err;
		sqlite3_bind_text(stmt, 1, ap->spool_id, -1, SQLITE_STATIC);
		sqlite3_bind_int64(stmt, 2, (int64_t)time(NULL));
		if ((err = store_step_done(st, stmt)) != 0)
			return err;
	}
	return 0;
}

static int append_finish(eng_append *ap, uint32_t *uid_r, uint64_t *modseq_r)
{
	eng_store *st = ap->st;
	uint8_t sha[32];
	eng_mime_part *root = NULL;
	eng_mime_summary sum;
	int64_t content_id = 0, thread = 0;
	int err;

	memset(&sum, 0, sizeof(sum));
	if ((err = flush_chunk(ap)) != 0)
		return err;
	if (EVP_DigestFinal_ex(ap->sha, sha, NULL) != 1)
		return ENG_EIO;
	eng_mime_parser_finish(ap->parser, &root, &sum);
	/* Mail from the spool was accepted already: never refuse it here. */
	if (ap->spool_id == NULL && (err = check_quota(st, ap->size)) != 0)
		goto out;
	err = find_content(st, sha, &content_id);
	if (err == 0) {
		/* Seen before: share it, drop the chunks we wrote. */
		if ((err = delete_chunks(st, ap->content_id)) != 0 ||
		    (err = content_ref(st, content_id)) != 0)
			goto out;
	} else if (err == ENG_ENOTFOUND) {
		content_id = ap->content_id;
		if ((err = fill_content(ap, sha, root, &sum)) != 0)
			goto out;
	} else {
		goto out;
	}
	if ((err = assign_thread(st, &sum, &thread)) != 0 ||
	    (err = insert_message(ap, content_id, thread, uid_r, modseq_r)) != 0 ||
	    (err = record_keys(ap, *uid_r, *modseq_r)) != 0)
		goto out;
out:
	eng_mime_part_free(&root);
	eng_mime_summary_clear(&sum);
	return err;
}

int eng_append_commit(eng_append **app, uint32_t *uid_r, uint64_t *modseq_r)
{
	eng_append *ap = *app;
	eng_store *st;
	uint32_t uid = 0;
	uint64_t modseq = 0;
	int err;

	*app = NULL;
	if (ap == NULL)
		return ENG_EINVAL;
	st = ap->st;
	if (ap->failed != 0) {
		err = ap->failed;
	} else if (ap->duplicate) {
		uid = ap->dup_uid;
		modseq = ap->dup_modseq;
		err = 0;
	} else {
		err = append_finish(ap, &uid, &modseq);
	}
	if (err == 0)
		err = eng_store_tx_commit(st);
	if (err != 0)
		eng_store_tx_rollback(st);
	append_free(ap);
	if (err == 0) {
		if (uid_r != NULL)
			*uid_r = uid;
		if (modseq_r != NULL)
			*modseq_r = modseq;
	}
	return err;
}

void eng_append_abort(eng_append **app)
{
	eng_append *ap = *app;

	if (ap == NULL)
		return;
	*app = NULL;
	eng_store_tx_rollback(ap->st);
	append_free(ap);
}

int eng_append_message(eng_store *st, int64_t mailbox_id, const void *data,
		       size_t len, const eng_append_opts *opts,
		       uint32_t *uid_r, uint64_t *modseq_r)
{
	eng_append *ap;
	int err = eng_append_begin(st, mailbox_id, opts, &ap);

	if (err != 0)
		return err;
	if ((err = eng_append_write(ap, data, len)) != 0) {
		eng_append_abort(&ap);
		return err;
	}
	return eng_append_commit(&ap, uid_r, modseq_r);
}
