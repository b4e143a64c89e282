/*
 * Reading messages (docs/storage.md, "chunk"): a handle on one message
 * (eng_message_open) gives its size, its MIME tree and top-level header
 * (read once, when first asked), and its raw bytes by offset: a chunk
 * stored raw is read in place (sqlite3_blob_read, only the bytes asked
 * for), a zstd one is decompressed whole, into a cache of one chunk when
 * only part of it is asked for (read_chunk).
 *
 * Rules:
 * - A handle holds memory only, no statement or blob handle: each read
 *   opens and releases its own, inside the caller's read snapshot, so a
 *   handle may be kept between the pieces of a body stream. (The store
 *   keeps one blob handle while a snapshot lasts: chunk_blob_open.)
 * - eng_message_cursor opens the messages of one read of many (FETCH_BODIES)
 *   by stepping one statement; it lives inside one read snapshot, where a
 *   message's content id cannot change (a content id is reused only after
 *   a delete, which no snapshot sees).
 * - zstd decompression contexts are shared by every thread through a
 *   small pool and freed by eng_message_free_cached (a cached context
 *   holds the literals of the last chunk it decompressed).
 */
#include "store_private.h"
#include "eng_error.h"

#include <pthread.h>
#include <sodium.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <zstd.h>

struct eng_message {
	eng_store *st;
	int64_t content_id;
	uint64_t size;
	bool meta_loaded;           /* mime_blob and header read */
	void *mime_blob;
	size_t mime_len;
	eng_mime_part *mime;
	void *header;
	size_t header_len;
	int64_t cached_seq;         /* -1: nothing cached */
	/* One chunk, in a block of exactly the largest raw length cached
	 * (not a doubling eng_buf: a 256 KiB chunk took 512 KiB). */
	unsigned char *cache;
	size_t cache_cap, cache_len;
};

/* ---- reading ---- */

/* A handle on content content_id of size bytes. */
static eng_message *message_new(eng_store *st, int64_t content_id,
				uint64_t size)
{
	eng_message *m = eng_calloc(1, sizeof(*m));

	m->st = st;
	m->content_id = content_id;
	m->size = size;
	m->cached_seq = -1;
	return m;
}

int eng_message_open(eng_store *st, int64_t mailbox_id, uint32_t uid,
		     eng_message **m_r)
{
	int err;
	/* The message row alone, as the cursor reads it (below): the content
	 * row's leaf page is read only if the MIME tree or header is asked
	 * for (load_meta). */
	sqlite3_stmt *stmt = store_prepare(st,
		"SELECT content_id, size FROM message "
		"WHERE mailbox_id = ? AND uid = ?", &err);
	int rc;

	*m_r = NULL;
	if (stmt == NULL)
		return err;
	sqlite3_bind_int64(stmt, 1, mailbox_id);
	sqlite3_bind_int64(stmt, 2, uid);
	rc = sqlite3_step(stmt);
	if (rc != SQLITE_ROW) {
		store_release(st, stmt);
		return rc == SQLITE_DONE ? ENG_ENOTFOUND :
			store_err(st, rc, "open message");
	}
	*m_r = message_new(st, sqlite3_column_int64(stmt, 0),
			   (uint64_t)sqlite3_column_int64(stmt, 1));
	store_release(st, stmt);
	return 0;
}

/* ---- the cursor (store.h: eng_message_cursor) ---- */

/* A UID this far past the cursor's row is searched for, not stepped to
 * (a sparse UID set over a large mailbox steps no rows it skips). */
#define CURSOR_STEP_MAX 64u

/*
 * The message rows alone, no content row: message.size is the content's
 * size (both are the appended bytes' length; COPY copies it), and a
 * content row's leaf page (its MIME blob and header beside the size) was
 * one page to read and decrypt per message. A message row always has its
 * content (store.c's invariants: refs).
 *
 * The statement walks the rows with uid >= bound by ascending UID; it is
 * on the row uid (at_end: past the last). Every row in [bound, uid) was
 * stepped over, so a UID asked for in that range (and not below the last
 * one asked for) does not exist.
 */
struct eng_message_cursor {
	eng_store *st;
	int64_t mailbox_id;
	sqlite3_stmt *stmt;          /* NULL until the first search */
	uint32_t bound, last;
	uint32_t uid;
	bool at_end;
};

eng_message_cursor *eng_message_cursor_new(eng_store *st, int64_t mailbox_id)
{
	eng_message_cursor *c = eng_calloc(1, sizeof(*c));

	c->st = st;
	c->mailbox_id = mailbox_id;
	return c;
}

/* One step: the next row, or the end. */
static int cursor_step(eng_message_cursor *c)
{
	int rc = sqlite3_step(c->stmt);

	if (rc == SQLITE_ROW) {
		c->uid = (uint32_t)sqlite3_column_int64(c->stmt, 0);
		return 0;
	}
	c->at_end = true;
	if (rc == SQLITE_DONE)
		return 0;
	/* The statement is left for close; the next UID searches again. */
	c->last = 0;
	c->bound = UINT32_MAX;
	return store_err(c->st, rc, "open messages");
}

/* Puts the statement on the first row with uid >= uid. */
static int cursor_seek(eng_message_cursor *c, uint32_t uid)
{
	int err;

	if (c->stmt == NULL) {
		c->stmt = store_prepare(c->st,
			"SELECT uid, content_id, size FROM message "
			"WHERE mailbox_id = ? AND uid >= ? ORDER BY uid", &err);
		if (c->stmt == NULL)
			return err;
	} else {
		sqlite3_reset(c->stmt);
	}
	sqlite3_bind_int64(c->stmt, 1, c->mailbox_id);
	sqlite3_bind_int64(c->stmt, 2, uid);
	c->bound = uid;
	c->at_end = false;
	return cursor_step(c);
}

int eng_message_cursor_open_uid(eng_message_cursor *c, uint32_t uid,
				eng_message **m_r)
{
	int err = 0;

	*m_r = NULL;
	if (c->stmt == NULL || uid < c->bound || uid < c->last)
		err = cursor_seek(c, uid);
	c->last = uid;
	while (err == 0 && !c->at_end && c->uid < uid) {
		if (uid - c->uid > CURSOR_STEP_MAX)
			err = cursor_seek(c, uid);
		else
			err = cursor_step(c);
	}
	if (err != 0)
		return err;
	if (c->at_end || c->uid != uid)
		return ENG_ENOTFOUND;
	*m_r = message_new(c->st, sqlite3_column_int64(c->stmt, 1),
			   (uint64_t)sqlite3_column_int64(c->stmt, 2));
	return 0;
}

void eng_message_cursor_close(eng_message_cursor **cp)
{
	eng_message_cursor *c = *cp;

	if (c == NULL)
		return;
	*cp = NULL;
	if (c->stmt != NULL)
		store_release(c->st, c->stmt);
	free(c);
}

/* Reads the MIME blob and the header of the content row, once. */
static int load_meta(eng_message *m)
{
	int err;
	sqlite3_stmt *stmt;
	int rc;

	if (m->meta_loaded)
		return 0;
	stmt = store_prepare(m->st, "SELECT mime, header FROM content "
			     "WHERE id = ?", &err);
	if (stmt == NULL)
		return err;
	sqlite3_bind_int64(stmt, 1, m->content_id);
	rc = sqlite3_step(stmt);
	if (rc != SQLITE_ROW) {
		store_release(m->st, stmt);
		return rc == SQLITE_DONE ? ENG_ENOTFOUND :
			store_err(m->st, rc, "message meta");
	}
	m->mime_len = (size_t)sqlite3_column_bytes(stmt, 0);
	m->mime_blob = eng_malloc(m->mime_len);
	if (m->mime_len > 0)
		memcpy(m->mime_blob, sqlite3_column_blob(stmt, 0), m->mime_len);
	m->header_len = (size_t)sqlite3_column_bytes(stmt, 1);
	m->header = eng_malloc(m->header_len);
	if (m->header_len > 0)
		memcpy(m->header, sqlite3_column_blob(stmt, 1), m->header_len);
	store_release(m->st, stmt);
	/* A zeroed page under the header reads as zeroes (zero_check.c). */
	if ((err = store_header_verify(m, m->header, m->header_len)) != 0) {
		free(m->mime_blob);
		free(m->header);
		m->mime_blob = m->header = NULL;
		return err;
	}
	m->meta_loaded = true;
	return 0;
}

void eng_message_close(eng_message **mp)
{
	eng_message *m = *mp;

	if (m == NULL)
		return;
	*mp = NULL;
	eng_mime_part_free(&m->mime);
	free(m->mime_blob);
	free(m->header);
	free(m->cache);
	free(m);
}

uint64_t eng_message_size(const eng_message *m)
{
	return m->size;
}

int64_t eng_message_content_id(const eng_message *m)
{
	return m->content_id;
}

int64_t store_message_content(const eng_message *m, eng_store **st_r)
{
	*st_r = m->st;
	return m->content_id;
}

void eng_message_rebind(eng_message *m, eng_store *st)
{
	m->st = st;
}

int eng_message_mime(eng_message *m, const eng_mime_part **root_r)
{
	int err;

	if ((err = load_meta(m)) != 0)
		return err;
	if (m->mime == NULL) {
		err = eng_mime_decode(m->mime_blob, m->mime_len, m->size,
				      &m->mime);
		if (err != 0) {
			eng_log(ENG_LOG_ERROR, "stored MIME structure of content "
				"%lld is damaged", (long long)m->content_id);
			return ENG_ECORRUPT;
		}
	}
	*root_r = m->mime;
	return 0;
}

int eng_message_header(eng_message *m, const void **data_r, size_t *len_r)
{
	int err;

	*data_r = NULL;
	*len_r = 0;
	if ((err = load_meta(m)) != 0)
		return err;
	*data_r = m->header;
	*len_r = m->header_len;
	return 0;
}

/* zstd decompression contexts (about 95 KiB each), shared by the threads:
 * one is taken per chunk and given back, at most DCTX_KEEP are kept for
 * the next chunk, and eng_message_free_cached frees those (sqlited: on
 * its tick after databases are released). Was one per thread for the
 * thread's life: 32 pool threads kept 3 MB (and the literals of the last
 * chunk each decompressed) at rest. */
#define DCTX_KEEP 4

static pthread_mutex_t dctx_mu = PTHREAD_MUTEX_INITIALIZER;
static ZSTD_DCtx *dctx_kept[DCTX_KEEP];
static unsigned dctx_n;

static ZSTD_DCtx *dctx_get(void)
{
	ZSTD_DCtx *d = NULL;

	pthread_mutex_lock(&dctx_mu);
	if (dctx_n > 0)
		d = dctx_kept[--dctx_n];
	pthread_mutex_unlock(&dctx_mu);
	return d != NULL ? d : ZSTD_createDCtx();
}

static void dctx_put(ZSTD_DCtx *d)
{
	pthread_mutex_lock(&dctx_mu);
	if (dctx_n < DCTX_KEEP) {
		dctx_kept[dctx_n++] = d;
		d = NULL;
	}
	pthread_mutex_unlock(&dctx_mu);
	ZSTD_freeDCtx(d);       /* NULL: nothing */
}

unsigned eng_message_free_cached(void)
{
	ZSTD_DCtx *drop[DCTX_KEEP];
	unsigned n;

	pthread_mutex_lock(&dctx_mu);
	n = dctx_n;
	memcpy(drop, dctx_kept, n * sizeof(*drop));
	dctx_n = 0;
	pthread_mutex_unlock(&dctx_mu);
	for (unsigned i = 0; i < n; i++)
		ZSTD_freeDCtx(drop[i]);
	return n;
}

/* The raw length chunk seq must have, from the message size. */
static size_t chunk_raw_len(const eng_message *m, int64_t seq)
{
	uint64_t start = (uint64_t)seq * ENG_CHUNK_BYTES;
	uint64_t n = m->size - start;

	return n < ENG_CHUNK_BYTES ? (size_t)n : ENG_CHUNK_BYTES;
}

/* Copies from byte in_chunk of the cached chunk into out (room bytes). */
static int copy_cached(eng_message *m, size_t in_chunk, unsigned char *out,
		       size_t room, size_t *n_r)
{
	size_t n;

	if (in_chunk >= m->cache_len)
		return ENG_ECORRUPT;
	n = m->cache_len - in_chunk < room ? m->cache_len - in_chunk : room;
	memcpy(out, m->cache + in_chunk, n);
	*n_r = n;
	return 0;
}

/* Maps a failed chunk read to an engine error: a plain SQLITE_ERROR on a
 * primary-key lookup is SQLCipher refusing a page (HMAC mismatch). */
static int chunk_err(eng_store *st, int rc)
{
	int err = store_err(st, rc, "chunk");

	return (rc & 0xff) == SQLITE_ERROR ? ENG_ECORRUPT : err;
}

/* Decompresses a zstd frame into out, which must take exactly raw_len. */
static int unzstd(const void *z, size_t zlen, void *out, size_t raw_len)
{
	ZSTD_DCtx *dctx = dctx_get();
	size_t got;

	if (dctx == NULL)
		return ENG_EIO;
	got = ZSTD_decompressDCtx(dctx, out, raw_len, z, zlen);
	dctx_put(dctx);
	return ZSTD_isError(got) || got != raw_len ? ENG_ECORRUPT : 0;
}

/* Chunk seq of a content stored before schema version 4: its zstd frame
 * in the chunk table, decompressed into out (raw_len bytes). */
static int load_old_chunk(eng_message *m, int64_t seq, void *out,
			  size_t raw_len)
{
	eng_store *st = m->st;
	int err;
	sqlite3_stmt *stmt = store_prepare(st,
		"SELECT raw_len, data FROM chunk WHERE content_id = ? AND seq = ?",
		&err);
	int rc;

	if (stmt == NULL)
		return err;
	sqlite3_bind_int64(stmt, 1, m->content_id);
	sqlite3_bind_int64(stmt, 2, seq);
	rc = sqlite3_step(stmt);
	if (rc != SQLITE_ROW) {
		store_release(st, stmt);
		return rc == SQLITE_DONE ? ENG_ECORRUPT : chunk_err(st, rc);
	}
	if ((uint64_t)sqlite3_column_int64(stmt, 0) != raw_len)
		err = ENG_ECORRUPT;
	else
		err = unzstd(sqlite3_column_blob(stmt, 1),
			     (size_t)sqlite3_column_bytes(stmt, 1), out, raw_len);
	store_release(st, stmt);
	return err;
}

/*
 * Reads n bytes of blob b from off into out. A page that fails its HMAC
 * does not fail the read that fetched it: SQLCipher zeroes it and puts
 * the pager in its error state, which only the next page fetch reports.
 * Zeroes are valid raw bytes (and a valid raw zstd block), so the last
 * byte is read once more: that fetch reports the error if any page of
 * the read was refused.
 */
static int blob_read_checked(eng_store *st, sqlite3_blob *b, void *out,
			     size_t n, size_t off)
{
	unsigned char last;
	int rc = sqlite3_blob_read(b, out, (int)n, (int)off);

	if (rc == SQLITE_OK && n > 0)
		rc = sqlite3_blob_read(b, &last, 1, (int)(off + n - 1));
	return rc == SQLITE_OK ? 0 : chunk_err(st, rc);
}

/* Chunk seq's zstd frame in body_chunk (blob b, zlen bytes), decompressed
 * into out (raw_len bytes). The frame is read into a block from SQLite's
 * allocator, which keeps big ones while a body stream runs (sqlite_mem.h). */
static int load_blob_chunk(eng_message *m, sqlite3_blob *b, size_t zlen,
			   void *out, size_t raw_len)
{
	void *z = sqlite3_malloc64(zlen);
	int err;

	if (z == NULL)
		eng_oom(zlen);
	err = blob_read_checked(m->st, b, z, zlen, 0);
	if (err == 0)
		err = unzstd(z, zlen, out, raw_len);
	sqlite3_free(z);
	return err;
}

bool store_zero_block(const unsigned char *p, size_t len, size_t at)
{
	size_t b = (at + ENG_ZERO_BLOCK - 1) / ENG_ZERO_BLOCK * ENG_ZERO_BLOCK;

	for (; b + ENG_ZERO_BLOCK <= at + len; b += ENG_ZERO_BLOCK) {
		const unsigned char *q = p + (b - at);

		if (q[0] == 0 && memcmp(q, q + 1, ENG_ZERO_BLOCK - 1) == 0)
			return true;
	}
	return false;
}

void store_chunk_blob_close(eng_store *st)
{
	sqlite3_blob_close(st->chunk_blob);     /* NULL: nothing */
	st->chunk_blob = NULL;
}

/*
 * Opens chunk seq's body_chunk row: *b_r, or NULL if there is none (or its
 * page was refused: sqlite3_blob_open fails the same way for both). Inside
 * a read snapshot the handle is kept on the store and moved to the next
 * row with sqlite3_blob_reopen, a seek (sqlite3_blob_open builds and runs
 * a small program each time: 10% of sqlited's body FETCH CPU); a reopen
 * that fails leaves it aborted, so it is closed. Give *b_r back with
 * chunk_blob_done.
 */
static int chunk_blob_open(eng_message *m, int64_t seq, sqlite3_blob **b_r)
{
	eng_store *st = m->st;
	sqlite3_int64 id = eng_chunk_rowid(m->content_id, seq);
	int rc;

	*b_r = NULL;
	if (st->chunk_blob != NULL) {
		rc = sqlite3_blob_reopen(st->chunk_blob, id);
		if (rc == SQLITE_OK) {
			*b_r = st->chunk_blob;
			return 0;
		}
		store_chunk_blob_close(st);
	} else {
		rc = sqlite3_blob_open(st->db, "main", "body_chunk", "data", id,
				       0, b_r);
		if (rc == SQLITE_OK && st->read_tx)
			st->chunk_blob = *b_r;
	}
	if (rc != SQLITE_OK && (rc & 0xff) != SQLITE_ERROR)
		return store_err(st, rc, "chunk");
	return 0;
}

/* Closes b unless it is the one kept for the snapshot. */
static void chunk_blob_done(eng_store *st, sqlite3_blob *b)
{
	if (b != st->chunk_blob)
		sqlite3_blob_close(b);
}

/*
 * Reads chunk seq from byte in_chunk into out (room bytes; *n_r of them).
 * A body_chunk row (schema version 4) stored raw is read in place, just
 * the bytes wanted, straight into out, when the read takes the chunk to
 * its end, and checked for a zeroed page (store_zero_block: a short read
 * within a chunk may miss one). A read that stops inside the chunk (a
 * body stream's piece ends there) takes the whole chunk into the cache,
 * as for zstd: the rest then comes from memory, even if the message is
 * expunged before the stream's next piece is read (each piece is its own
 * snapshot; test_imap_clients test_expunge_while_a_fetch_streams). A zstd chunk (of either table)
 * wanted whole is decompressed straight into out; any other is
 * decompressed once into the handle's cache, where the next read of the
 * same chunk finds it. A chunk not in body_chunk was stored before version
 * 4: the chunk table has it (sqlite3_blob_open fails the same way for a
 * missing row and a refused page; the chunk table then decides).
 */
static int read_chunk(eng_message *m, int64_t seq, size_t in_chunk,
		      unsigned char *out, size_t room, size_t *n_r)
{
	size_t raw_len = chunk_raw_len(m, seq), stored = 0;
	sqlite3_blob *b;
	unsigned char *dst;
	int err;

	if ((err = chunk_blob_open(m, seq, &b)) != 0)
		return err;
	if (b != NULL) {
		stored = (size_t)sqlite3_blob_bytes(b);
		if (stored == 0 || stored > raw_len) {
			chunk_blob_done(m->st, b);
			return ENG_ECORRUPT;
		}
	}
	if (stored == raw_len && room >= raw_len - in_chunk) {
		size_t n = raw_len - in_chunk;

		err = blob_read_checked(m->st, b, out, n, in_chunk);
		chunk_blob_done(m->st, b);
		if (err == 0 && store_zero_block(out, n, in_chunk))
			err = ENG_ECORRUPT;     /* a zeroed page */
		*n_r = n;
		return err;
	}
	if (in_chunk == 0 && room >= raw_len) {
		dst = out;
	} else {
		/* Sized to the chunk: most messages are one chunk of a few
		 * KiB, and a block of ENG_CHUNK_BYTES per handle made a pool
		 * thread's arena give its top back and fault it in again at
		 * every close (bench/README.md, "IMAP body FETCH CPU
		 * (session 5)"). */
		m->cached_seq = -1;
		if (m->cache_cap < raw_len) {
			free(m->cache);
			m->cache = eng_malloc(raw_len);
			m->cache_cap = raw_len;
		}
		dst = m->cache;
	}
	if (b == NULL)
		err = load_old_chunk(m, seq, dst, raw_len);
	else if (stored < raw_len)
		err = load_blob_chunk(m, b, stored, dst, raw_len);
	else if ((err = blob_read_checked(m->st, b, dst, raw_len, 0)) == 0 &&
		 store_zero_block(dst, raw_len, 0))
		err = ENG_ECORRUPT;
	chunk_blob_done(m->st, b);
	if (err != 0)
		return err;
	if (dst == out) {
		*n_r = raw_len;
		return 0;
	}
	m->cached_seq = seq;
	m->cache_len = raw_len;
	return copy_cached(m, in_chunk, out, room, n_r);
}

/* Reads from offset, a chunk at a time (read_chunk). */
long eng_message_read(eng_message *m, uint64_t offset, void *buf, size_t len)
{
	unsigned char *out = buf;
	size_t done = 0;

	if (len > LONG_MAX)
		len = LONG_MAX;
	while (done < len && offset < m->size) {
		int64_t seq = (int64_t)(offset / ENG_CHUNK_BYTES);
		size_t in_chunk = (size_t)(offset % ENG_CHUNK_BYTES);
		size_t n = 0;
		int err;

		if (seq == m->cached_seq)
			err = copy_cached(m, in_chunk, out + done, len - done,
					  &n);
		else
			err = read_chunk(m, seq, in_chunk, out + done,
					 len - done, &n);
		if (err != 0)
			return err;
		done += n;
		offset += n;
	}
	return (long)done;
}

int eng_message_section(eng_message *m, const char *section,
			uint64_t *offset_r, uint64_t *len_r)
{
	const eng_mime_part *root, *part;
	const char *last;
	char *nums;
	size_t numlen;
	int err;

	if ((err = eng_message_mime(m, &root)) != 0)
		return err;
	if (section == NULL || *section == '\0') {
		*offset_r = 0;
		*len_r = m->size;
		return 0;
	}
	/* Split "1.2.TEXT" into the part number "1.2" and the text "TEXT". */
	last = strrchr(section, '.');
	last = last != NULL ? last + 1 : section;
	if (*last >= '0' && *last <= '9') {
		numlen = strlen(section);
		last = "";
	} else {
		numlen = last == section ? 0 : (size_t)(last - section - 1);
	}
	nums = eng_strndup(section, numlen);
	part = numlen == 0 ? root : eng_mime_find_part(root, nums);
	free(nums);
	if (part == NULL)
		return ENG_ENOTFOUND;
	if (*last == '\0') {
		*offset_r = part->body_off;
		*len_r = part->body_end - part->body_off;
		return 0;
	}
	if (strcasecmp(last, "MIME") == 0) {
		if (numlen == 0)
			return ENG_EINVAL;
		*offset_r = part->header_off;
		*len_r = part->body_off - part->header_off;
		return 0;
	}
	/* HEADER and TEXT of a part are those of its embedded message. */
	if (numlen != 0) {
		if (part->message == NULL)
			return ENG_ENOTFOUND;
		part = part->message;
	}
	if (strcasecmp(last, "HEADER") == 0) {
		*offset_r = part->header_off;
		*len_r = part->body_off - part->header_off;
	} else if (strcasecmp(last, "TEXT") == 0) {
		*offset_r = part->body_off;
		*len_r = part->body_end - part->body_off;
	} else {
		return ENG_EINVAL;
	}
	return 0;
}
