/*
 * Pages of zeroes on disk under an encrypted store (engine/wal_vfs.c,
 * "sealmail-sealed"). SQLCipher 3.4.1 decrypts a page that is all zeroes
 * to zeroes without an error; the VFS below it fails such a read with
 * SQLITE_CORRUPT. Here each page of a database in turn, then each page of
 * a WAL (read through a valid wal-index, before any checkpoint), is zeroed
 * in a copy, and everything is read: the messages' metadata (header, MIME
 * structure, FETCH_META), searches and sorts (the FTS index, header_field,
 * the summary columns), the bodies, and every column of content,
 * header_field and the FTS tables in plain SQL. Each read must fail with
 * ENG_ECORRUPT or answer what the undamaged copy answers. The messages
 * have long MIME structures, summaries and header fields, so all of those
 * spill into overflow pages, where a zeroed page used to read as zeroes.
 * A plaintext store is not checked: its legitimate page of zeroes reads
 * back.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <fcntl.h>
#include <sodium.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "eng_error.h"
#include "keys.h"
#include "search.h"
#include "store.h"
#include "store_private.h"
#include "teststore.h"
#include "testutil.h"

#define PAGE 4096
#define N_MSGS 4
#define WAL_HDR 32
#define FRAME (24 + PAGE)

static char *dir;
static uint8_t key[ENG_DBKEY_BYTES];

/* The results of one probe: per read, an error or the bytes read. */
#define MAX_READS 128
struct reads {
	int n;
	int err[MAX_READS];
	eng_buf data[MAX_READS];
};

static void reads_free(struct reads *r)
{
	for (int i = 0; i < r->n; i++)
		eng_buf_free(&r->data[i]);
	r->n = 0;
}

static eng_buf *next_read(struct reads *r)
{
	assert_true(r->n < MAX_READS);
	memset(&r->data[r->n], 0, sizeof(r->data[0]));
	return &r->data[r->n++];
}

static void put_u64(eng_buf *b, uint64_t v)
{
	eng_buf_append(b, &v, sizeof(v));
}

/* Message i: a long From, To, Subject and MIME structure (40 parts with
 * long names), words to search for. */
static char *make_message(int i, size_t *len_r)
{
	eng_buf b = { 0 };

	eng_buf_printf(&b, "From: \"Sender %d", i);
	for (int k = 0; k < 40; k++)
		eng_buf_printf(&b, "\r\n display%02d words of a long name", k);
	eng_buf_printf(&b, "\" <from%d@example.org>\r\nTo: ", i);
	for (int k = 0; k < 120; k++)
		eng_buf_printf(&b, "%suser%03d-%d@example.net", k ? ",\r\n " : "",
			       k, i);
	eng_buf_printf(&b, "\r\nSubject: subj%dword", i);
	for (int k = 0; k < 90; k++)
		eng_buf_printf(&b, "\r\n subject%02d line of a long subject", k);
	eng_buf_printf(&b, "\r\nDate: Tue, 24 Nov 2026 10:00:0%d +0000\r\n"
		       "Message-ID: <m%d@example.org>\r\nMIME-Version: 1.0\r\n"
		       "Content-Type: multipart/mixed; boundary=\"b%d\"\r\n"
		       "\r\n", i, i, i);
	for (int k = 0; k < 40; k++) {
		eng_buf_printf(&b, "--b%d\r\nContent-Type: text/plain; "
			       "charset=utf-8; name=\"part%02d-of-message-%d-with"
			       "-a-long-name-for-its-mime-structure.txt\"\r\n"
			       "Content-Disposition: attachment; filename="
			       "\"part%02d-of-message-%d-with-a-long-name.txt\"\r\n"
			       "Content-ID: <part%02d.%d@example.org>\r\n\r\n",
			       i, k, i, k, i, k, i);
		for (int l = 0; l < 6; l++)
			eng_buf_printf(&b, "needle%d in part %d line %d of the "
				       "text, word%d%02d\r\n", i, k, l, i, k);
	}
	eng_buf_printf(&b, "--b%d--\r\n", i);
	*len_r = b.len;
	return (char *)b.data;
}

static void append_all(eng_store *st, int first, int n)
{
	eng_mailbox mb;

	assert_int_equal(eng_mailbox_get(st, "INBOX", &mb), 0);
	for (int i = first; i < first + n; i++) {
		size_t len;
		char *msg = make_message(i, &len);
		uint32_t uid;

		assert_int_equal(eng_append_message(st, mb.id, msg, len, NULL,
						    &uid, NULL), 0);
		free(msg);
	}
	eng_mailbox_clear(&mb);
}

static int open_store(const char *path, bool create, bool plaintext,
		      eng_store **st_r)
{
	eng_store_options opt;

	eng_store_options_default(&opt);
	opt.create = create;
	opt.plaintext = plaintext;
	return eng_store_open(path, plaintext ? NULL : key, &opt, st_r);
}

/* Only damage may fail a read: SQLITE_CORRUPT or NOTADB. */
static int sql_err(int rc)
{
	if ((rc & 0xff) == SQLITE_CORRUPT || (rc & 0xff) == SQLITE_NOTADB)
		return ENG_ECORRUPT;
	return rc == SQLITE_DONE ? 0 : ENG_EIO;
}

/* Every column of every row of sql, as bytes. */
static void read_sql(struct reads *r, eng_store *st, const char *sql)
{
	eng_buf *b = next_read(r);
	sqlite3_stmt *stmt;
	int rc = sqlite3_prepare_v2(st->db, sql, -1, &stmt, NULL);

	while (rc == SQLITE_OK && (rc = sqlite3_step(stmt)) == SQLITE_ROW) {
		for (int c = 0; c < sqlite3_column_count(stmt); c++) {
			const void *p = sqlite3_column_blob(stmt, c);
			size_t n = (size_t)sqlite3_column_bytes(stmt, c);

			put_u64(b, n);
			eng_buf_append(b, p, n);
		}
		rc = SQLITE_OK;
	}
	sqlite3_finalize(stmt);
	r->err[r->n - 1] = sql_err(rc);
}

static int meta_cb(void *ctx, const eng_msg *m)
{
	eng_buf *b = ctx;

	put_u64(b, m->uid);
	put_u64(b, m->modseq);
	put_u64(b, m->flags);
	put_u64(b, m->size);
	put_u64(b, (uint64_t)m->content_id);
	put_u64(b, (uint64_t)m->thread_id);
	put_u64(b, m->header_len);
	eng_buf_append(b, m->header, m->header_len);
	put_u64(b, m->mime_len);
	eng_buf_append(b, m->mime, m->mime_len);
	return 0;
}

static void read_meta(struct reads *r, eng_store *st, int64_t inbox,
		      unsigned want)
{
	eng_buf *b = next_read(r);

	r->err[r->n - 1] = eng_fetch_meta_want(st, inbox, NULL, 0, want,
					       meta_cb, b);
}

/* A message opened: its header, its MIME tree's part count, its body. */
static void read_message(struct reads *r, eng_store *st, int64_t inbox,
			 uint32_t uid)
{
	eng_buf *b = next_read(r);
	eng_message *m = NULL;
	const eng_mime_part *root;
	const void *hdr;
	size_t hlen;
	uint64_t size;
	char buf[65536];
	long n = 0;
	int err;

	if ((err = eng_message_open(st, inbox, uid, &m)) != 0 ||
	    (err = eng_message_header(m, &hdr, &hlen)) != 0)
		goto out;
	eng_buf_append(b, hdr, hlen);
	if ((err = eng_message_mime(m, &root)) != 0)
		goto out;
	put_u64(b, root->n_children);
	size = eng_message_size(m);
	for (uint64_t off = 0; off < size; off += (uint64_t)n) {
		if ((n = eng_message_read(m, off, buf, sizeof(buf))) <= 0)
			break;
		eng_buf_append(b, buf, (size_t)n);
	}
	err = n < 0 ? (int)n : 0;
out:
	eng_message_close(&m);
	r->err[r->n - 1] = err;
}

static void read_search(struct reads *r, eng_store *st, int64_t inbox,
			eng_query *q, enum eng_sort_field sort)
{
	eng_buf *b = next_read(r);
	eng_sort_key key_ = { sort, false };
	uint32_t *uids = NULL;
	size_t n = 0;

	r->err[r->n - 1] = eng_search(st, inbox, q, &key_, 1, NULL, 0, &uids,
				      &n, NULL);
	eng_buf_append(b, uids, n * sizeof(*uids));
	free(uids);
	eng_query_free(&q);
}

/* Opens path and reads everything into r; the open's error if it fails. */
static int probe(const char *path, int n_msgs, struct reads *r)
{
	eng_store *st = NULL;
	eng_mailbox mb;
	char word[32];
	int err = open_store(path, false, false, &st);

	r->n = 0;
	if (err != 0)
		return err;
	if ((err = eng_mailbox_get(st, "INBOX", &mb)) != 0) {
		eng_store_close(&st);
		return err;
	}
	read_meta(r, st, mb.id, 0);
	read_meta(r, st, mb.id, ENG_FETCH_WANT_HEADER | ENG_FETCH_WANT_MIME);
	for (int i = 0; i < n_msgs; i++) {
		read_message(r, st, mb.id, (uint32_t)i + 1);
		snprintf(word, sizeof(word), "needle%d", i);
		read_search(r, st, mb.id, eng_query_new_text(ENG_Q_BODY, word),
			    ENG_SORT_ARRIVAL);
		snprintf(word, sizeof(word), "subj%dword", i);
		read_search(r, st, mb.id, eng_query_new_header("Subject", word),
			    ENG_SORT_SUBJECT);
		snprintf(word, sizeof(word), "from%d@", i);
		read_search(r, st, mb.id, eng_query_new_header("From", word),
			    ENG_SORT_DISPLAYFROM);
		snprintf(word, sizeof(word), "user119-%d", i);
		read_search(r, st, mb.id, eng_query_new_header("To", word),
			    ENG_SORT_TO);
		snprintf(word, sizeof(word), "part39-of-message-%d", i);
		read_search(r, st, mb.id, eng_query_new_text(ENG_Q_TEXT, word),
			    ENG_SORT_CC);
	}
	read_search(r, st, mb.id, NULL, ENG_SORT_SUBJECT);
	read_search(r, st, mb.id, NULL, ENG_SORT_DISPLAYFROM);
	read_sql(r, st, "SELECT * FROM content ORDER BY id");
	read_sql(r, st, "SELECT * FROM header_field ORDER BY content_id, name");
	read_sql(r, st, "SELECT * FROM fts_segdir ORDER BY level, idx");
	read_sql(r, st, "SELECT * FROM fts_segments ORDER BY blockid");
	read_sql(r, st, "SELECT docid, * FROM fts_content ORDER BY docid");
	eng_mailbox_clear(&mb);
	eng_store_close(&st);
	return 0;
}

/* Every read worked (an undamaged store). */
static void assert_all_read(const struct reads *r)
{
	for (int i = 0; i < r->n; i++)
		assert_int_equal(r->err[i], 0);
}

/* A probe of a copy with a page zeroed (open error err, reads got): the
 * open and each read failed with ENG_ECORRUPT or answered what want did.
 * Frees got; true if nothing failed (nothing read the page). */
static bool unread(const struct reads *want, struct reads *got, int err,
		   const char *what, size_t page)
{
	int failed = 0;

	if (err != 0 && err != ENG_ECORRUPT)
		fail_msg("%s %zu zeroed: open: %s", what, page,
			 eng_strerror(err));
	for (int i = 0; err == 0 && i < got->n; i++) {
		if (got->err[i] == ENG_ECORRUPT) {
			failed++;
			continue;
		}
		if (got->err[i] != 0)
			fail_msg("%s %zu zeroed: read %d: %s", what, page, i,
				 eng_strerror(got->err[i]));
		if (got->data[i].len != want->data[i].len ||
		    memcmp(got->data[i].data, want->data[i].data,
			   got->data[i].len) != 0)
			fail_msg("%s %zu zeroed: read %d answered wrong bytes "
				 "with success", what, page, i);
	}
	reads_free(got);
	return err == 0 && failed == 0;
}

static char *path_in(const char *name)
{
	char *p;

	if (asprintf(&p, "%s/%s", dir, name) < 0)
		abort();
	return p;
}

static void write_file(const char *path, const uint8_t *data, size_t len)
{
	assert_int_equal(tu_write_file(path, data, len), 0);
}

static void zero_at(const char *path, off_t off)
{
	static const uint8_t zeroes[PAGE];
	int fd = open(path, O_WRONLY);

	assert_true(fd >= 0);
	assert_int_equal(pwrite(fd, zeroes, PAGE, off), PAGE);
	close(fd);
}

static void test_every_db_page_zeroed(void **state)
{
	char *path = path_in("a.db"), *bad = path_in("bad.db");
	struct reads want = { 0 }, got = { 0 };
	eng_store *st = NULL;
	size_t len, pages, n_unread = 0;
	uint8_t *orig;

	(void)state;
	assert_int_equal(open_store(path, true, false, &st), 0);
	append_all(st, 0, N_MSGS);
	eng_store_close(&st);
	assert_int_equal(probe(path, N_MSGS, &want), 0);
	assert_all_read(&want);
	/* content's summary and mime, header_field values: overflow. */
	orig = tu_read_file(path, &len);
	assert_non_null(orig);
	pages = len / PAGE;
	assert_true(pages > 60);
	for (size_t page = 0; page < pages; page++) {
		write_file(bad, orig, len);
		zero_at(bad, (off_t)(page * PAGE));
		n_unread += unread(&want, &got, probe(bad, N_MSGS, &got),
				   "page", page);
		unlink(bad);
	}
	print_message("%zu of %zu zeroed pages unread\n", n_unread, pages);
	reads_free(&want);
	free(orig);
	free(bad);
	free(path);
}

/*
 * The same in the WAL: a copy of a database and its WAL is opened by a
 * holder, which builds the wal-index from the good WAL; then one frame's
 * page is zeroed and a second handle reads it through that index (no
 * recovery, which would check the frames' checksums).
 */
struct wal_copy {
	char *db_path, *wal_path, *shm_path;
	uint8_t *db, *wal;
	size_t db_len, wal_len;
};

/* Probes the copy with frame's page zeroed (none if frame < 0). */
static int wal_probe(const struct wal_copy *c, long frame, struct reads *r)
{
	eng_store *holder = NULL;
	int err;

	unlink(c->shm_path);
	write_file(c->db_path, c->db, c->db_len);
	write_file(c->wal_path, c->wal, c->wal_len);
	assert_int_equal(open_store(c->db_path, false, false, &holder), 0);
	if (frame >= 0)
		zero_at(c->wal_path, (off_t)(WAL_HDR + frame * FRAME + 24));
	err = probe(c->db_path, N_MSGS, r);
	eng_store_close(&holder);
	return err;
}

static void test_every_wal_page_zeroed(void **state)
{
	char *path = path_in("a.db"), *wal = path_in("a.db-wal");
	struct wal_copy c = { path_in("bad.db"), path_in("bad.db-wal"),
			      path_in("bad.db-shm"), NULL, NULL, 0, 0 };
	struct reads want = { 0 }, got = { 0 };
	eng_store *st = NULL;
	size_t frames, n_unread = 0;

	(void)state;
	assert_int_equal(open_store(path, true, false, &st), 0);
	append_all(st, 0, 1);
	assert_int_equal(eng_store_checkpoint(st), 0);
	sqlite3_wal_autocheckpoint(st->db, 0);
	append_all(st, 1, N_MSGS - 1);
	c.db = tu_read_file(path, &c.db_len);
	c.wal = tu_read_file(wal, &c.wal_len);
	assert_non_null(c.db);
	assert_non_null(c.wal);
	frames = (c.wal_len - WAL_HDR) / FRAME;
	assert_true(frames > 40);
	eng_store_close(&st);
	assert_int_equal(wal_probe(&c, -1, &want), 0);
	assert_all_read(&want);
	for (size_t f = 0; f < frames; f++)
		n_unread += unread(&want, &got, wal_probe(&c, (long)f, &got),
				   "WAL frame", f);
	print_message("%zu of %zu zeroed WAL pages unread\n", n_unread,
		      frames);
	reads_free(&want);
	free(c.db);
	free(c.wal);
	free(c.shm_path);
	free(c.wal_path);
	free(c.db_path);
	free(wal);
	free(path);
}

/* True if the file holds a page-aligned page of zeroes. */
static bool has_zero_page(const char *path)
{
	size_t len;
	uint8_t *data = tu_read_file(path, &len);
	bool found = false;

	assert_non_null(data);
	for (size_t p = 0; p + PAGE <= len && !found; p += PAGE) {
		size_t i = 0;

		while (i < PAGE && data[p + i] == 0)
			i++;
		found = i == PAGE;
	}
	free(data);
	return found;
}

/* The name of the VFS st's connection is on. */
static const char *vfs_of(eng_store *st)
{
	sqlite3_vfs *vfs = NULL;

	assert_int_equal(sqlite3_file_control(st->db, "main",
					      SQLITE_FCNTL_VFS_POINTER, &vfs),
			 SQLITE_OK);
	assert_non_null(vfs);
	return vfs->zName;
}

/* A plaintext store may hold a page of zeroes (the last overflow page of
 * a blob of zeroes): it reads back, the check is for encrypted ones. */
static void test_plaintext_zero_page(void **state)
{
	char *path = path_in("plain.db");
	eng_store *st = NULL;

	(void)state;
	assert_int_equal(open_store(path, true, true, &st), 0);
	assert_string_equal(vfs_of(st), "sealmail-wal");
	assert_int_equal(sqlite3_exec(st->db, "CREATE TABLE z (b BLOB);"
				      "INSERT INTO z VALUES (zeroblob(40000))",
				      NULL, NULL, NULL), SQLITE_OK);
	eng_store_close(&st);
	assert_true(has_zero_page(path));
	assert_int_equal(open_store(path, false, true, &st), 0);
	assert_int_equal(tu_sql_int(st, "SELECT b = zeroblob(40000) FROM z"),
			 1);
	eng_store_close(&st);
	free(path);
}

/* New and existing encrypted stores open and read on the sealed VFS,
 * whose page checks see every page of them (none is zero). */
static void test_new_and_existing(void **state)
{
	char *path = path_in("b.db");
	struct reads r = { 0 };
	eng_store *st = NULL;

	(void)state;
	assert_int_equal(open_store(path, true, false, &st), 0);
	assert_string_equal(vfs_of(st), "sealmail-sealed");
	append_all(st, 0, 2);
	assert_int_equal(eng_store_check(st, NULL), 0);
	eng_store_close(&st);
	assert_false(has_zero_page(path));
	assert_int_equal(probe(path, 2, &r), 0);
	assert_all_read(&r);
	reads_free(&r);
	/* The store as schema version 3 wrote it: migrates on open. */
	assert_int_equal(open_store(path, false, false, &st), 0);
	tu_store_chunks_to_v3(st);
	assert_int_equal(sqlite3_exec(st->db, "DELETE FROM schema_version "
				      "WHERE version > 3", NULL, NULL, NULL),
			 SQLITE_OK);
	eng_store_close(&st);
	assert_int_equal(probe(path, 2, &r), 0);
	assert_all_read(&r);
	reads_free(&r);
	free(path);
}

static int setup_dir(void **state)
{
	(void)state;
	dir = tu_tmpdir();
	return 0;
}

static int teardown_dir(void **state)
{
	(void)state;
	tu_rmrf(dir);
	free(dir);
	dir = NULL;
	return 0;
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test_setup_teardown(test_every_db_page_zeroed,
						setup_dir, teardown_dir),
		cmocka_unit_test_setup_teardown(test_every_wal_page_zeroed,
						setup_dir, teardown_dir),
		cmocka_unit_test_setup_teardown(test_plaintext_zero_page,
						setup_dir, teardown_dir),
		cmocka_unit_test_setup_teardown(test_new_and_existing,
						setup_dir, teardown_dir),
	};

	eng_set_log(tu_log_silent);
	if (eng_crypto_init() != 0)
		return 1;
	randombytes_buf(key, sizeof(key));
	return cmocka_run_group_tests(tests, NULL, NULL);
}
