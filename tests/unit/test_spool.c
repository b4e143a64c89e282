/* The sealed spool: round trips, corruption, listing, disk full. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <cmocka.h>

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <sodium.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mount.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "eng_error.h"
#include "keys.h"
#include "spool.h"
#include "testutil.h"

#define CHUNK (64 * 1024)
/* Layout from docs/crypto.md: magic, sealed key, stream header, meta. */
#define HEADER_BYTES (8 + 80 + 24)
#define META_RECORD (32 + 17)
#define CHUNK_RECORD (CHUNK + 17)

static uint8_t pk[crypto_box_PUBLICKEYBYTES];
static uint8_t sk[crypto_box_SECRETKEYBYTES];
static char *dir;

static int setup(void **state)
{
	(void)state;
	eng_set_log(tu_log_silent);
	if (eng_crypto_init() != 0)
		return -1;
	crypto_box_keypair(pk, sk);
	return 0;
}

static int setup_dir(void **state)
{
	char *base = tu_tmpdir();

	(void)state;
	/* A subdirectory that does not exist yet: writer_open creates it. */
	if (asprintf(&dir, "%s/spool", base) < 0)
		abort();
	free(base);
	return 0;
}

static int teardown_dir(void **state)
{
	char *base = strdup(dir);

	(void)state;
	/* A failed disk-full test may have left its tmpfs mounted. */
	(void)umount2(dir, MNT_DETACH);
	*strrchr(base, '/') = '\0';
	tu_rmrf(base);
	free(base);
	free(dir);
	dir = NULL;
	return 0;
}

static uint8_t *pattern(size_t len)
{
	uint8_t *p = malloc(len != 0 ? len : 1);

	for (size_t i = 0; i < len; i++)
		p[i] = (uint8_t)(i * 31 + (i >> 16) * 7 + 1);
	return p;
}

/* Writes data in pieces of varying odd sizes; returns the new id. */
static void spool_put(const uint8_t *data, size_t len, int64_t date,
		      uint32_t flags, char id[ENG_SPOOL_ID_LEN + 1])
{
	eng_spool_writer *w = NULL;
	size_t off = 0, piece = 1;

	assert_int_equal(eng_spool_writer_open(dir, pk, date, flags, &w), 0);
	while (off < len) {
		size_t n = piece < len - off ? piece : len - off;

		assert_int_equal(eng_spool_write(w, data + off, n), 0);
		off += n;
		piece = (piece * 7 + 13) % 100003;
	}
	assert_int_equal(eng_spool_commit(&w, id), 0);
	assert_null(w);
}

/* Reads the whole entry; the final return code of the reader. */
static int spool_get(const char *id, const uint8_t *key, uint8_t **out,
		     size_t *len_r)
{
	eng_spool_reader *r = NULL;
	size_t cap = 4096, len = 0;
	uint8_t *buf;
	int ret;
	long n;

	ret = eng_spool_reader_open(dir, id, key, &r);
	if (ret != 0) {
		assert_null(r);
		return ret;
	}
	buf = malloc(cap);
	for (;;) {
		if (len + 1000 > cap)
			buf = realloc(buf, cap *= 2);
		/* Odd read sizes straddle the chunk boundaries. */
		n = eng_spool_read(r, buf + len, 1000);
		if (n <= 0)
			break;
		assert_true(n <= 1000);
		len += (size_t)n;
	}
	eng_spool_reader_free(&r);
	assert_null(r);
	if (out != NULL) {
		*out = buf;
		*len_r = len;
	} else {
		free(buf);
	}
	return (int)n;
}

static size_t count_files(void)
{
	DIR *d = opendir(dir);
	struct dirent *e;
	size_t n = 0;

	if (d == NULL)
		return 0;
	while ((e = readdir(d)) != NULL) {
		if (e->d_name[0] != '.')
			n++;
	}
	closedir(d);
	return n;
}

static char *entry_path(const char *id)
{
	char *p;

	if (asprintf(&p, "%s/%s.msg", dir, id) < 0)
		abort();
	return p;
}

static void test_round_trip(void **state)
{
	const size_t sizes[] = { 0, 1, CHUNK - 1, CHUNK, CHUNK + 1, 2 * CHUNK,
				 5 * 1000 * 1000 };
	(void)state;
	for (size_t i = 0; i < sizeof(sizes) / sizeof(sizes[0]); i++) {
		char id[ENG_SPOOL_ID_LEN + 1];
		uint8_t *data = pattern(sizes[i]), *got = NULL;
		eng_spool_reader *r = NULL;
		size_t got_len = 0;
		int64_t date = 0;
		uint32_t flags = 0;
		struct stat st;
		char *path;

		spool_put(data, sizes[i], 1700000000 + (int64_t)i, 0x5u + (uint32_t)i, id);
		assert_int_equal(strlen(id), ENG_SPOOL_ID_LEN);
		path = entry_path(id);
		assert_int_equal(stat(path, &st), 0);
		assert_int_equal(st.st_mode & 0777, 0600);
		/* Exactly the documented size: no length fields, no padding. */
		assert_int_equal((size_t)st.st_size,
				 HEADER_BYTES + META_RECORD +
				 (sizes[i] == 0 ? 0 : (sizes[i] - 1) / CHUNK) * CHUNK_RECORD +
				 (sizes[i] - (sizes[i] == 0 ? 0 : (sizes[i] - 1) / CHUNK * CHUNK)) + 17);
		free(path);
		assert_int_equal(eng_spool_reader_open(dir, id, sk, &r), 0);
		eng_spool_reader_meta(r, &date, &flags);
		assert_int_equal(date, 1700000000 + (int64_t)i);
		assert_int_equal(flags, 0x5u + (uint32_t)i);
		eng_spool_reader_free(&r);

		assert_int_equal(spool_get(id, sk, &got, &got_len), 0);
		assert_int_equal(got_len, sizes[i]);
		if (sizes[i] > 0)
			assert_memory_equal(got, data, sizes[i]);
		free(got);
		free(data);
	}
	assert_int_equal(stat(dir, &(struct stat){ 0 }), 0);
}


/* A staging entry (no fsync at commit) is complete, named and readable
 * like any other once committed. */
static void test_no_sync_staging(void **state)
{
	size_t len = 2 * CHUNK + 5;
	uint8_t *data = pattern(len), *got = NULL;
	char id[ENG_SPOOL_ID_LEN + 1];
	eng_spool_writer *w = NULL;
	size_t got_len = 0;
	char *path;

	(void)state;
	assert_int_equal(eng_spool_writer_open(dir, pk, 0, 0, &w), 0);
	eng_spool_writer_no_sync(w);
	eng_spool_writer_no_sync(NULL);
	assert_int_equal(eng_spool_write(w, data, len), 0);
	assert_int_equal(eng_spool_commit(&w, id), 0);
	assert_null(w);
	path = entry_path(id);
	assert_int_equal(access(path, F_OK), 0);
	free(path);
	assert_int_equal(count_files(), 1);
	assert_int_equal(spool_get(id, sk, &got, &got_len), 0);
	assert_int_equal(got_len, len);
	assert_memory_equal(got, data, len);
	free(got);
	free(data);
}

/* A chosen id: writing the same id twice leaves one entry, the second;
 * a bad id is refused; a stale tmp-<id> from a crash does not block it. */
static void test_chosen_id(void **state)
{
	static const char id[] = "0123456789abcdef0123456789abcdef";
	char out[ENG_SPOOL_ID_LEN + 1], (*ids)[ENG_SPOOL_ID_LEN + 1] = NULL;
	eng_spool_writer *w = NULL;
	uint8_t *got = NULL;
	size_t got_len = 0, n = 0;
	char *tmp;

	(void)state;
	assert_int_equal(eng_spool_writer_open_id(dir, pk, 1, 0, "XYZ", &w),
			 ENG_EINVAL);
	assert_null(w);
	assert_true(asprintf(&tmp, "%s/tmp-%s", dir, id) > 0);
	(void)mkdir(dir, 0700);
	assert_int_equal(tu_write_file(tmp, "half", 4), 0);
	for (int round = 0; round < 2; round++) {
		const char *body = round == 0 ? "first" : "second";

		assert_int_equal(eng_spool_writer_open_id(dir, pk, 1, 0, id, &w), 0);
		assert_int_equal(eng_spool_write(w, body, strlen(body)), 0);
		assert_int_equal(eng_spool_commit(&w, out), 0);
		assert_string_equal(out, id);
	}
	assert_int_equal(access(tmp, F_OK), -1);
	assert_int_equal(eng_spool_list(dir, &ids, &n), 0);
	assert_int_equal(n, 1);
	assert_string_equal(ids[0], id);
	free(ids);
	assert_int_equal(spool_get(id, sk, &got, &got_len), 0);
	assert_int_equal(got_len, 6);
	assert_memory_equal(got, "second", 6);
	free(got);
	free(tmp);
}

static void test_wrong_key(void **state)
{
	uint8_t pk2[crypto_box_PUBLICKEYBYTES], sk2[crypto_box_SECRETKEYBYTES];
	char id[ENG_SPOOL_ID_LEN + 1];
	uint8_t *data = pattern(1000);
	int ret;

	(void)state;
	crypto_box_keypair(pk2, sk2);
	spool_put(data, 1000, 0, 0, id);
	ret = spool_get(id, sk2, NULL, NULL);
	assert_true(ret == ENG_ECORRUPT || ret == ENG_EAUTH);
	assert_int_equal(spool_get(id, sk, NULL, NULL), 0);
	assert_int_equal(spool_get("0123456789abcdef0123456789abcdef", sk, NULL,
				   NULL), ENG_ENOTFOUND);
	assert_int_equal(spool_get("../../../../etc/passwd", sk, NULL, NULL),
			 ENG_EINVAL);
	assert_int_equal(spool_get("0123456789ABCDEF0123456789ABCDEF", sk, NULL,
				   NULL), ENG_EINVAL);
	free(data);
}

/* Cuts the file at every record boundary (and next to it). */
static void test_truncation(void **state)
{
	const size_t len = 3 * CHUNK + 100;
	uint8_t *data = pattern(len), *file;
	char id[ENG_SPOOL_ID_LEN + 1];
	size_t file_len, cuts[64], n_cuts = 0;
	char *path;

	(void)state;
	spool_put(data, len, 0, 0, id);
	path = entry_path(id);
	file = tu_read_file(path, &file_len);
	assert_non_null(file);
	cuts[n_cuts++] = 0;
	cuts[n_cuts++] = 7;
	cuts[n_cuts++] = 8 + 40;
	for (size_t b = HEADER_BYTES; b < file_len; ) {
		cuts[n_cuts++] = b - 1;
		cuts[n_cuts++] = b;
		cuts[n_cuts++] = b + 1;
		b += b == HEADER_BYTES ? META_RECORD : CHUNK_RECORD;
	}
	cuts[n_cuts++] = file_len - 1;
	for (size_t i = 0; i < n_cuts; i++) {
		int ret;

		assert_true(cuts[i] < file_len);
		assert_int_equal(tu_write_file(path, file, cuts[i]), 0);
		ret = spool_get(id, sk, NULL, NULL);
		assert_int_equal(ret, ENG_ECORRUPT);
	}
	/* Trailing garbage after the FINAL record. */
	file = realloc(file, file_len + 1);
	file[file_len] = 'x';
	assert_int_equal(tu_write_file(path, file, file_len + 1), 0);
	assert_int_equal(spool_get(id, sk, NULL, NULL), ENG_ECORRUPT);
	/* And the intact file still reads. */
	assert_int_equal(tu_write_file(path, file, file_len), 0);
	assert_int_equal(spool_get(id, sk, NULL, NULL), 0);
	free(file);
	free(path);
	free(data);
}

static void test_flipped_bytes(void **state)
{
	const size_t len = CHUNK + 5000;
	uint8_t *data = pattern(len), *file;
	char id[ENG_SPOOL_ID_LEN + 1];
	size_t file_len, tested = 0;
	char *path;

	(void)state;
	spool_put(data, len, 0, 0, id);
	path = entry_path(id);
	file = tu_read_file(path, &file_len);
	assert_non_null(file);
	/* Every header and meta byte, then a stride through the chunks. */
	for (size_t i = 0; i < file_len;
	     i += i < HEADER_BYTES + META_RECORD + 20 ? 1 : 1009) {
		file[i] ^= 0x10;
		assert_int_equal(tu_write_file(path, file, file_len), 0);
		assert_int_equal(spool_get(id, sk, NULL, NULL), ENG_ECORRUPT);
		file[i] ^= 0x10;
		tested++;
	}
	/* The last byte is the FINAL record's MAC. */
	file[file_len - 1] ^= 1;
	assert_int_equal(tu_write_file(path, file, file_len), 0);
	assert_int_equal(spool_get(id, sk, NULL, NULL), ENG_ECORRUPT);
	assert_true(tested > 200);
	free(file);
	free(path);
	free(data);
}

/* An entry copied under another name does not open: the id is inside. */
static void test_renamed_entry(void **state)
{
	char id[ENG_SPOOL_ID_LEN + 1];
	const char *other = "00000000000000000000000000000001";
	char *from, *to;

	(void)state;
	spool_put((const uint8_t *)"hello", 5, 0, 0, id);
	from = entry_path(id);
	to = entry_path(other);
	assert_int_equal(rename(from, to), 0);
	assert_int_equal(spool_get(other, sk, NULL, NULL), ENG_ECORRUPT);
	free(from);
	free(to);
}

static void set_mtime(const char *name, time_t sec, long nsec)
{
	struct timespec ts[2] = { { sec, nsec }, { sec, nsec } };
	char *path;

	if (asprintf(&path, "%s/%s", dir, name) < 0)
		abort();
	assert_int_equal(utimensat(AT_FDCWD, path, ts, 0), 0);
	free(path);
}

static void test_list(void **state)
{
	char ids[5][ENG_SPOOL_ID_LEN + 1];
	char (*list)[ENG_SPOOL_ID_LEN + 1] = NULL;
	/* Entry i gets mtime order[i]: the list must follow mtime, not creation. */
	const time_t mtimes[5] = { 1000, 500, 2000, 500, 1500 };
	char name[ENG_SPOOL_ID_LEN + 8], *path;
	size_t n = 99;
	time_t now = time(NULL);

	(void)state;
	assert_int_equal(eng_spool_list(dir, &list, &n), 0);
	assert_int_equal(n, 0);
	free(list);
	for (int i = 0; i < 5; i++) {
		spool_put((const uint8_t *)"x", 1, 0, 0, ids[i]);
		memcpy(name, ids[i], ENG_SPOOL_ID_LEN);
		memcpy(name + ENG_SPOOL_ID_LEN, ".msg", 5);
		set_mtime(name, mtimes[i], 0);
	}
	/* A stale tmp file goes, a fresh one (a writer at work) stays. */
	if (asprintf(&path, "%s/tmp-stale", dir) < 0)
		abort();
	assert_int_equal(tu_write_file(path, "x", 1), 0);
	free(path);
	set_mtime("tmp-stale", now - 3600, 0);
	if (asprintf(&path, "%s/tmp-fresh", dir) < 0)
		abort();
	assert_int_equal(tu_write_file(path, "x", 1), 0);
	free(path);
	/* Names that are not entries are ignored. */
	if (asprintf(&path, "%s/notes.txt", dir) < 0)
		abort();
	assert_int_equal(tu_write_file(path, "x", 1), 0);
	free(path);

	assert_int_equal(eng_spool_list(dir, &list, &n), 0);
	assert_int_equal(n, 5);
	for (size_t i = 0; i + 1 < n; i++) {
		int a = -1, b = -1;

		for (int j = 0; j < 5; j++) {
			if (strcmp(list[i], ids[j]) == 0)
				a = j;
			if (strcmp(list[i + 1], ids[j]) == 0)
				b = j;
		}
		assert_true(a >= 0 && b >= 0);
		assert_true(mtimes[a] < mtimes[b] ||
			    (mtimes[a] == mtimes[b] && strcmp(list[i], list[i + 1]) < 0));
	}
	free(list);
	/* 5 entries + tmp-fresh + notes.txt */
	assert_int_equal(count_files(), 7);

	/* Remove is idempotent. */
	assert_int_equal(eng_spool_remove(dir, ids[2]), 0);
	assert_int_equal(eng_spool_remove(dir, ids[2]), 0);
	assert_int_equal(eng_spool_remove(dir, "nothex"), ENG_EINVAL);
	assert_int_equal(eng_spool_list(dir, &list, &n), 0);
	assert_int_equal(n, 4);
	for (size_t i = 0; i < n; i++)
		assert_string_not_equal(list[i], ids[2]);
	free(list);
	assert_int_equal(spool_get(ids[2], sk, NULL, NULL), ENG_ENOTFOUND);
}

/*
 * Entries committed one after another list in commit order, even when they
 * are committed within one kernel clock tick (the coarse mtime used to tie
 * and leave the order to the random ids: mail arrived out of order).
 */
static void test_list_keeps_arrival_order(void **state)
{
	enum { N = 64 };
	char ids[N][ENG_SPOOL_ID_LEN + 1];
	char (*list)[ENG_SPOOL_ID_LEN + 1] = NULL;
	size_t n = 0;

	(void)state;
	for (int i = 0; i < N; i++)
		spool_put((const uint8_t *)"x", 1, 0, 0, ids[i]);
	assert_int_equal(eng_spool_list(dir, &list, &n), 0);
	assert_int_equal(n, N);
	for (size_t i = 0; i < n; i++)
		assert_string_equal(list[i], ids[i]);
	free(list);
}

static void test_abort(void **state)
{
	eng_spool_writer *w = NULL;
	uint8_t *data = pattern(3 * CHUNK);
	char (*list)[ENG_SPOOL_ID_LEN + 1] = NULL;
	size_t n = 1;

	(void)state;
	assert_int_equal(eng_spool_writer_open(dir, pk, 0, 0, &w), 0);
	assert_int_equal(count_files(), 1);   /* tmp-<id> while writing */
	assert_int_equal(eng_spool_write(w, data, 3 * CHUNK), 0);
	eng_spool_abort(&w);
	assert_null(w);
	eng_spool_abort(&w);
	assert_int_equal(count_files(), 0);
	assert_int_equal(eng_spool_list(dir, &list, &n), 0);
	assert_int_equal(n, 0);
	free(list);
	free(data);
}

/*
 * Disk full on a 64 KiB tmpfs: writes fail with ENG_ENOSPC, nothing is left
 * behind and the entries already there still read.
 */
static void test_disk_full(void **state)
{
	char id[ENG_SPOOL_ID_LEN + 1], id2[ENG_SPOOL_ID_LEN + 1];
	char (*list)[ENG_SPOOL_ID_LEN + 1] = NULL;
	uint8_t *data = pattern(8 * CHUNK);
	eng_spool_writer *w = NULL;
	size_t n = 0, before;
	int ret = 0, tries;

	(void)state;
	assert_int_equal(mkdir(dir, 0700), 0);
	if (mount("tmpfs", dir, "tmpfs", 0, "size=64k,mode=0700") != 0) {
		print_message("skipping disk-full test: cannot mount tmpfs (%s)\n",
			      strerror(errno));
		free(data);
		skip();
	}
	spool_put(data, 1000, 42, 0, id);
	before = count_files();
	assert_int_equal(before, 1);

	/* A message bigger than the disk fails, in write or in commit. */
	assert_int_equal(eng_spool_writer_open(dir, pk, 0, 0, &w), 0);
	for (tries = 0; tries < 8 && ret == 0; tries++)
		ret = eng_spool_write(w, data + tries * CHUNK, CHUNK);
	if (ret == 0)
		ret = eng_spool_commit(&w, id2);
	else
		assert_int_equal(eng_spool_commit(&w, id2), ENG_ENOSPC);
	assert_int_equal(ret, ENG_ENOSPC);
	assert_null(w);
	assert_int_equal(count_files(), before);

	/* Small entries until the disk is full. */
	for (tries = 0; tries < 1000; tries++) {
		ret = eng_spool_writer_open(dir, pk, 0, 0, &w);
		if (ret == 0) {
			ret = eng_spool_write(w, data, 4000);
			if (ret == 0)
				ret = eng_spool_commit(&w, id2);
			else
				eng_spool_abort(&w);
		}
		if (ret != 0)
			break;
		before++;
	}
	assert_int_equal(ret, ENG_ENOSPC);
	assert_int_equal(count_files(), before);
	assert_int_equal(eng_spool_list(dir, &list, &n), 0);
	assert_int_equal(n, before);
	free(list);
	assert_int_equal(spool_get(id, sk, NULL, NULL), 0);
	assert_int_equal(umount(dir), 0);
	free(data);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test_setup_teardown(test_round_trip, setup_dir, teardown_dir),
		cmocka_unit_test_setup_teardown(test_chosen_id, setup_dir, teardown_dir),
		cmocka_unit_test_setup_teardown(test_no_sync_staging, setup_dir,
						teardown_dir),
		cmocka_unit_test_setup_teardown(test_wrong_key, setup_dir, teardown_dir),
		cmocka_unit_test_setup_teardown(test_truncation, setup_dir, teardown_dir),
		cmocka_unit_test_setup_teardown(test_flipped_bytes, setup_dir, teardown_dir),
		cmocka_unit_test_setup_teardown(test_renamed_entry, setup_dir, teardown_dir),
		cmocka_unit_test_setup_teardown(test_list, setup_dir, teardown_dir),
		cmocka_unit_test_setup_teardown(test_list_keeps_arrival_order,
						setup_dir, teardown_dir),
		cmocka_unit_test_setup_teardown(test_abort, setup_dir, teardown_dir),
		cmocka_unit_test_setup_teardown(test_disk_full, setup_dir, teardown_dir),
	};

	return cmocka_run_group_tests(tests, setup, NULL);
}
