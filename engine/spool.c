/*
 * The sealed spool: the format and durability rules in spool.h, the bytes
 * in docs/crypto.md.
 *
 * An entry's life:
 *
 *   writer_open ──> tmp-<id> (O_EXCL, 0600) ──write*──> commit:
 *       FINAL chunk, fsync(file), close, rename -> <id>.msg, fsync(dir)
 *   any failure on the way: tmp-<id> (or <id>.msg if the directory fsync
 *   failed) is unlinked and the writer reports ENG_ENOSPC / ENG_EIO.
 *   A staging writer (eng_spool_writer_no_sync) skips both fsyncs.
 *
 * On disk (all records are secretstream records of one stream):
 *   "SMSPOOL1" | crypto_box_seal(file key) | secretstream header
 *   | meta record (id, internal date, flags; TAG_MESSAGE)
 *   | chunk record* (exactly SP_CHUNK plaintext bytes, TAG_MESSAGE)
 *   | last chunk (0..SP_CHUNK bytes, TAG_FINAL) | end of file.
 * Because every chunk but the last is exactly SP_CHUNK bytes, the reader
 * needs no length fields: a short record must be the FINAL one, a full
 * TAG_MESSAGE record must be followed by another, and FINAL by EOF.
 */
#include "spool.h"
#include "eng_error.h"
#include "eng_fs.h"
#include "keys.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <pthread.h>
#include <sodium.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#define SP_MAGIC "SMSPOOL1"
#define SP_MAGIC_LEN 8
#define SP_ID_BYTES 16
#define SP_SEALED_BYTES (crypto_secretstream_xchacha20poly1305_KEYBYTES + \
			 crypto_box_SEALBYTES)
#define SP_SS_HEADER_BYTES crypto_secretstream_xchacha20poly1305_HEADERBYTES
#define SP_HEADER_BYTES (SP_MAGIC_LEN + SP_SEALED_BYTES + SP_SS_HEADER_BYTES)
#define SP_ABYTES crypto_secretstream_xchacha20poly1305_ABYTES
#define SP_META_BYTES (SP_ID_BYTES + 8 + 4 + 4)
#define SP_CHUNK (64 * 1024)
#define SP_TAG_MESSAGE crypto_secretstream_xchacha20poly1305_TAG_MESSAGE
#define SP_TAG_FINAL crypto_secretstream_xchacha20poly1305_TAG_FINAL
/* A tmp file younger than this may belong to a writer still at work. */
#define SP_STALE_TMP_SECONDS 60

typedef crypto_secretstream_xchacha20poly1305_state sp_state;

struct eng_spool_writer {
	int fd;
	int err;                 /* sticky: the first failure */
	char *dir;
	char id[ENG_SPOOL_ID_LEN + 1];
	sp_state *state;         /* secret memory: holds the stream key */
	uint8_t *chunk;          /* plaintext waiting for a full chunk */
	size_t chunk_len;
	uint8_t *cipher;         /* SP_CHUNK + SP_ABYTES */
	bool no_sync;            /* a staging copy: commit skips both fsyncs */
};

struct eng_spool_reader {
	int fd;
	int err;                 /* sticky */
	bool done;               /* the FINAL record and EOF were verified */
	int64_t internal_date;
	uint32_t flags;
	sp_state *state;
	uint8_t *plain;          /* the current chunk, decrypted */
	size_t plain_len, plain_pos;
	uint8_t *cipher;
};

static int errno_to_eng(int e)
{
	return (e == ENOSPC || e == EDQUOT) ? ENG_ENOSPC : ENG_EIO;
}

static void put_u32(uint8_t *p, uint32_t v)
{
	for (int i = 0; i < 4; i++)
		p[i] = (uint8_t)(v >> (8 * i));
}

static void put_u64(uint8_t *p, uint64_t v)
{
	for (int i = 0; i < 8; i++)
		p[i] = (uint8_t)(v >> (8 * i));
}

static uint32_t get_u32(const uint8_t *p)
{
	uint32_t v = 0;

	for (int i = 3; i >= 0; i--)
		v = (v << 8) | p[i];
	return v;
}

static uint64_t get_u64(const uint8_t *p)
{
	uint64_t v = 0;

	for (int i = 7; i >= 0; i--)
		v = (v << 8) | p[i];
	return v;
}

static bool id_valid(const char *id)
{
	if (id == NULL)
		return false;
	for (size_t i = 0; i < ENG_SPOOL_ID_LEN; i++) {
		if (!((id[i] >= '0' && id[i] <= '9') ||
		      (id[i] >= 'a' && id[i] <= 'f')))
			return false;
	}
	return id[ENG_SPOOL_ID_LEN] == '\0';
}

static bool id_to_bin(const char *id, uint8_t bin[SP_ID_BYTES])
{
	size_t bin_len;

	return sodium_hex2bin(bin, SP_ID_BYTES, id, ENG_SPOOL_ID_LEN, NULL,
			      &bin_len, NULL) == 0 && bin_len == SP_ID_BYTES;
}

static char *path_join(const char *dir, const char *prefix, const char *id,
		       const char *suffix)
{
	char *path;

	if (asprintf(&path, "%s/%s%s%s", dir, prefix, id, suffix) < 0)
		eng_oom(strlen(dir) + 64);
	return path;
}

/* Writes all of buf; 0 or ENG_ENOSPC / ENG_EIO. */
static int write_all(int fd, const uint8_t *buf, size_t len)
{
	while (len > 0) {
		ssize_t n = write(fd, buf, len);

		if (n < 0) {
			if (errno == EINTR)
				continue;
			return errno_to_eng(errno);
		}
		if (n == 0)
			return ENG_EIO;
		buf += n;
		len -= (size_t)n;
	}
	return 0;
}

/* Reads until len bytes or EOF; the count, or -1 on an I/O error. */
static ssize_t read_full(int fd, uint8_t *buf, size_t len)
{
	size_t got = 0;

	while (got < len) {
		ssize_t n = read(fd, buf + got, len - got);

		if (n < 0) {
			if (errno == EINTR)
				continue;
			return -1;
		}
		if (n == 0)
			break;
		got += (size_t)n;
	}
	return (ssize_t)got;
}

int eng_fsync_dir(const char *dir)
{
	int fd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	int ret = 0;

	if (fd < 0)
		return errno_to_eng(errno);
	if (fsync(fd) != 0)
		ret = errno_to_eng(errno);
	close(fd);
	return ret;
}

/* Unlinks the tmp file and remembers the first error. */
static void writer_fail(eng_spool_writer *w, int err)
{
	char *tmp;

	if (w->err == 0)
		w->err = err;
	if (w->fd >= 0) {
		close(w->fd);
		w->fd = -1;
		tmp = path_join(w->dir, "tmp-", w->id, "");
		if (unlink(tmp) != 0 && errno != ENOENT)
			eng_log(ENG_LOG_ERROR, "spool: cannot remove %s: %s",
				tmp, strerror(errno));
		free(tmp);
	}
}

static void writer_destroy(eng_spool_writer *w)
{
	if (w->fd >= 0)
		close(w->fd);
	sodium_free(w->state);
	/* The message is not key material, but it is someone's mail. */
	if (w->chunk != NULL) {
		sodium_memzero(w->chunk, SP_CHUNK);
		free(w->chunk);
	}
	free(w->cipher);
	free(w->dir);
	free(w);
}

/* Encrypts and writes one record; 0 or the (sticky) error. */
static int writer_push(eng_spool_writer *w, const uint8_t *m, size_t len,
		       unsigned char tag)
{
	unsigned long long clen;
	int ret;

	if (w->err != 0)
		return w->err;
	crypto_secretstream_xchacha20poly1305_push(w->state, w->cipher, &clen,
						   m, len, NULL, 0, tag);
	if ((ret = write_all(w->fd, w->cipher, (size_t)clen)) != 0) {
		writer_fail(w, ret);
		return ret;
	}
	return 0;
}

int eng_spool_writer_open(const char *dir, const uint8_t *pk,
			  int64_t internal_date, uint32_t flags,
			  eng_spool_writer **w_r)
{
	return eng_spool_writer_open_id(dir, pk, internal_date, flags, NULL,
					w_r);
}

int eng_spool_writer_open_id(const char *dir, const uint8_t *pk,
			     int64_t internal_date, uint32_t flags,
			     const char *id, eng_spool_writer **w_r)
{
	eng_spool_writer *w;
	uint8_t id_bin[SP_ID_BYTES];
	uint8_t header[SP_HEADER_BYTES];
	uint8_t meta[SP_META_BYTES];
	uint8_t *file_key;
	char *tmp;
	int ret;

	if (dir == NULL || *dir == '\0' || pk == NULL || w_r == NULL ||
	    (id != NULL && !id_valid(id)))
		return ENG_EINVAL;
	if (eng_crypto_init() != 0)
		return ENG_EIO;
	if (mkdir(dir, 0700) != 0 && errno != EEXIST) {
		ret = errno_to_eng(errno);
		eng_log(ENG_LOG_ERROR, "spool: mkdir %s: %s", dir,
			strerror(errno));
		return ret;
	}

	w = eng_calloc(1, sizeof(*w));
	w->dir = eng_strdup(dir);
	if (id == NULL) {
		randombytes_buf(id_bin, sizeof(id_bin));
		sodium_bin2hex(w->id, sizeof(w->id), id_bin, sizeof(id_bin));
	} else {
		memcpy(w->id, id, sizeof(w->id));
		(void)id_to_bin(id, id_bin);   /* id_valid() checked it */
	}
	tmp = path_join(dir, "tmp-", w->id, "");
	/* A chosen id may have left a tmp- file in a crash; the caller
	 * serialises writers of one id, so it is nobody's now. */
	if (id != NULL)
		(void)unlink(tmp);
	w->fd = open(tmp, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
	if (w->fd < 0) {
		ret = errno_to_eng(errno);
		eng_log(ENG_LOG_ERROR, "spool: create %s: %s", tmp,
			strerror(errno));
		free(tmp);
		w->fd = -1;
		writer_destroy(w);
		return ret;
	}
	free(tmp);
	w->state = sodium_malloc(sizeof(*w->state));
	if (w->state == NULL)
		eng_oom(sizeof(*w->state));
	w->chunk = eng_malloc(SP_CHUNK);
	w->cipher = eng_malloc(SP_CHUNK + SP_ABYTES);

	/* The file key exists only long enough to seal it and key the stream. */
	file_key = eng_secret_new(crypto_secretstream_xchacha20poly1305_KEYBYTES);
	crypto_secretstream_xchacha20poly1305_keygen(file_key);
	memcpy(header, SP_MAGIC, SP_MAGIC_LEN);
	if (crypto_box_seal(header + SP_MAGIC_LEN, file_key,
			    crypto_secretstream_xchacha20poly1305_KEYBYTES,
			    pk) != 0) {
		/* Only a public key of low order makes this fail. */
		eng_secret_free(&file_key);
		writer_fail(w, ENG_EINVAL);
		writer_destroy(w);
		return ENG_EINVAL;
	}
	crypto_secretstream_xchacha20poly1305_init_push(
		w->state, header + SP_MAGIC_LEN + SP_SEALED_BYTES, file_key);
	eng_secret_free(&file_key);

	if ((ret = write_all(w->fd, header, sizeof(header))) != 0) {
		writer_fail(w, ret);
		writer_destroy(w);
		return ret;
	}
	/* The id inside the stream: a renamed or copied entry fails to open. */
	memcpy(meta, id_bin, SP_ID_BYTES);
	put_u64(meta + SP_ID_BYTES, (uint64_t)internal_date);
	put_u32(meta + SP_ID_BYTES + 8, flags);
	put_u32(meta + SP_ID_BYTES + 12, 0);
	if ((ret = writer_push(w, meta, sizeof(meta), SP_TAG_MESSAGE)) != 0) {
		writer_destroy(w);
		return ret;
	}
	*w_r = w;
	return 0;
}

int eng_spool_write(eng_spool_writer *w, const void *data, size_t len)
{
	const uint8_t *p = data;
	int ret;

	if (w == NULL || (data == NULL && len != 0))
		return ENG_EINVAL;
	if (w->err != 0)
		return w->err;
	while (len > 0) {
		size_t n;

		/*
		 * A full chunk is pushed only once more data arrives: until
		 * then it might be the last one, which carries TAG_FINAL.
		 */
		if (w->chunk_len == SP_CHUNK) {
			ret = writer_push(w, w->chunk, SP_CHUNK, SP_TAG_MESSAGE);
			if (ret != 0)
				return ret;
			w->chunk_len = 0;
		}
		n = SP_CHUNK - w->chunk_len;
		if (n > len)
			n = len;
		memcpy(w->chunk + w->chunk_len, p, n);
		w->chunk_len += n;
		p += n;
		len -= n;
	}
	return 0;
}

void eng_spool_writer_no_sync(eng_spool_writer *w)
{
	if (w != NULL)
		w->no_sync = true;
}

/*
 * The list is drained in mtime order, so an entry's mtime is its arrival
 * time. The kernel stamps files from a coarse clock (one tick, 1-4 ms), which
 * gives two deliveries in a row the same mtime and leaves their order to the
 * random ids; so the commit sets it from the fine clock, strictly increasing
 * within this process (another process's entries interleave by the clock).
 */
static int stamp_arrival(int fd)
{
	static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;
	static struct timespec last;
	struct timespec ts[2];

	if (clock_gettime(CLOCK_REALTIME, &ts[1]) != 0)
		return -1;
	pthread_mutex_lock(&lock);
	if (ts[1].tv_sec < last.tv_sec ||
	    (ts[1].tv_sec == last.tv_sec && ts[1].tv_nsec <= last.tv_nsec)) {
		ts[1] = last;
		if (++ts[1].tv_nsec == 1000000000L) {
			ts[1].tv_sec++;
			ts[1].tv_nsec = 0;
		}
	}
	last = ts[1];
	pthread_mutex_unlock(&lock);
	ts[0].tv_sec = 0;
	ts[0].tv_nsec = UTIME_OMIT;
	return futimens(fd, ts);
}

int eng_spool_commit(eng_spool_writer **wp, char id_r[ENG_SPOOL_ID_LEN + 1])
{
	eng_spool_writer *w;
	char *tmp = NULL, *final = NULL;
	int ret;

	if (wp == NULL || *wp == NULL)
		return ENG_EINVAL;
	w = *wp;
	*wp = NULL;
	if ((ret = writer_push(w, w->chunk, w->chunk_len, SP_TAG_FINAL)) != 0)
		goto out;
	if (stamp_arrival(w->fd) != 0)
		eng_log(ENG_LOG_WARN, "spool: entry %s: cannot set its "
			"arrival time: %s", w->id, strerror(errno));
	if (!w->no_sync && fsync(w->fd) != 0) {
		ret = errno_to_eng(errno);
		writer_fail(w, ret);
		goto out;
	}
	/* close() can report a deferred write error (NFS); nothing is kept. */
	ret = close(w->fd);
	w->fd = -1;
	tmp = path_join(w->dir, "tmp-", w->id, "");
	if (ret != 0) {
		ret = errno_to_eng(errno);
		unlink(tmp);
		goto out;
	}
	final = path_join(w->dir, "", w->id, ".msg");
	if (rename(tmp, final) != 0) {
		ret = errno_to_eng(errno);
		unlink(tmp);
		goto out;
	}
	if (!w->no_sync && (ret = eng_fsync_dir(w->dir)) != 0) {
		/*
		 * The name may or may not survive a crash; fsync is not retried
		 * (its failure may have dropped the dirty pages), so the entry is
		 * withdrawn and the sender is told to retry.
		 */
		unlink(final);
		goto out;
	}
	if (id_r != NULL)
		memcpy(id_r, w->id, ENG_SPOOL_ID_LEN + 1);
out:
	if (ret != 0)
		eng_log(ENG_LOG_ERROR, "spool: entry %s not stored: %s", w->id,
			eng_strerror(ret));
	free(tmp);
	free(final);
	writer_destroy(w);
	return ret;
}

void eng_spool_abort(eng_spool_writer **wp)
{
	if (wp == NULL || *wp == NULL)
		return;
	writer_fail(*wp, ENG_EIO);
	writer_destroy(*wp);
	*wp = NULL;
}

struct sp_entry {
	struct timespec mtime;
	char id[ENG_SPOOL_ID_LEN + 1];
};

static int entry_cmp(const void *a, const void *b)
{
	const struct sp_entry *x = a, *y = b;

	if (x->mtime.tv_sec != y->mtime.tv_sec)
		return x->mtime.tv_sec < y->mtime.tv_sec ? -1 : 1;
	if (x->mtime.tv_nsec != y->mtime.tv_nsec)
		return x->mtime.tv_nsec < y->mtime.tv_nsec ? -1 : 1;
	return strcmp(x->id, y->id);
}

int eng_spool_list(const char *dir, char (**ids_r)[ENG_SPOOL_ID_LEN + 1],
		   size_t *n_r)
{
	struct sp_entry *entries = NULL;
	size_t n = 0, cap = 0;
	char (*ids)[ENG_SPOOL_ID_LEN + 1];
	struct dirent *e;
	time_t now = time(NULL);
	DIR *d;

	if (dir == NULL || ids_r == NULL || n_r == NULL)
		return ENG_EINVAL;
	if ((d = opendir(dir)) == NULL) {
		if (errno != ENOENT)
			return ENG_EIO;
		/* No directory yet: nothing was ever spooled. */
		*ids_r = eng_malloc(sizeof(**ids_r));
		*n_r = 0;
		return 0;
	}
	while ((errno = 0, e = readdir(d)) != NULL) {
		size_t len = strlen(e->d_name);
		struct stat st;

		if (strncmp(e->d_name, "tmp-", 4) == 0) {
			if (fstatat(dirfd(d), e->d_name, &st,
				    AT_SYMLINK_NOFOLLOW) == 0 &&
			    S_ISREG(st.st_mode) &&
			    now - st.st_mtime > SP_STALE_TMP_SECONDS &&
			    unlinkat(dirfd(d), e->d_name, 0) == 0)
				eng_log(ENG_LOG_INFO, "spool: removed stale %s/%s",
					dir, e->d_name);
			continue;
		}
		if (len != ENG_SPOOL_ID_LEN + 4 ||
		    strcmp(e->d_name + ENG_SPOOL_ID_LEN, ".msg") != 0)
			continue;
		if (fstatat(dirfd(d), e->d_name, &st, AT_SYMLINK_NOFOLLOW) != 0 ||
		    !S_ISREG(st.st_mode))
			continue;
		if (n == cap) {
			cap = cap != 0 ? cap * 2 : 16;
			entries = eng_realloc(entries, cap * sizeof(*entries));
		}
		memcpy(entries[n].id, e->d_name, ENG_SPOOL_ID_LEN);
		entries[n].id[ENG_SPOOL_ID_LEN] = '\0';
		if (!id_valid(entries[n].id))
			continue;
		entries[n].mtime = st.st_mtim;
		n++;
	}
	if (errno != 0) {
		closedir(d);
		free(entries);
		return ENG_EIO;
	}
	closedir(d);
	if (n > 0)
		qsort(entries, n, sizeof(*entries), entry_cmp);
	ids = eng_malloc((n != 0 ? n : 1) * sizeof(*ids));
	for (size_t i = 0; i < n; i++)
		memcpy(ids[i], entries[i].id, ENG_SPOOL_ID_LEN + 1);
	free(entries);
	*ids_r = ids;
	*n_r = n;
	return 0;
}

int eng_spool_reader_open(const char *dir, const char *id, const uint8_t *sk,
			  eng_spool_reader **r_r)
{
	eng_spool_reader *r;
	uint8_t header[SP_HEADER_BYTES];
	uint8_t id_bin[SP_ID_BYTES];
	uint8_t meta_c[SP_META_BYTES + SP_ABYTES];
	uint8_t meta[SP_META_BYTES];
	uint8_t pk[crypto_box_PUBLICKEYBYTES];
	unsigned char tag;
	uint8_t *file_key;
	char *path;
	ssize_t n;
	int fd, ret;

	if (dir == NULL || !id_valid(id) || sk == NULL || r_r == NULL ||
	    !id_to_bin(id, id_bin))
		return ENG_EINVAL;
	if (eng_crypto_init() != 0)
		return ENG_EIO;
	path = path_join(dir, "", id, ".msg");
	fd = open(path, O_RDONLY | O_CLOEXEC | O_NOFOLLOW);
	free(path);
	if (fd < 0)
		return errno == ENOENT ? ENG_ENOTFOUND : ENG_EIO;

	r = eng_calloc(1, sizeof(*r));
	r->fd = fd;
	r->state = sodium_malloc(sizeof(*r->state));
	if (r->state == NULL)
		eng_oom(sizeof(*r->state));
	ret = ENG_ECORRUPT;
	n = read_full(fd, header, sizeof(header));
	if (n < 0) {
		ret = ENG_EIO;
		goto fail;
	}
	if ((size_t)n != sizeof(header) ||
	    memcmp(header, SP_MAGIC, SP_MAGIC_LEN) != 0)
		goto fail;
	if (crypto_scalarmult_base(pk, sk) != 0)
		goto fail;
	file_key = eng_secret_new(crypto_secretstream_xchacha20poly1305_KEYBYTES);
	if (crypto_box_seal_open(file_key, header + SP_MAGIC_LEN,
				 SP_SEALED_BYTES, pk, sk) != 0 ||
	    crypto_secretstream_xchacha20poly1305_init_pull(
		    r->state, header + SP_MAGIC_LEN + SP_SEALED_BYTES,
		    file_key) != 0) {
		eng_secret_free(&file_key);
		goto fail;
	}
	eng_secret_free(&file_key);

	n = read_full(fd, meta_c, sizeof(meta_c));
	if (n < 0) {
		ret = ENG_EIO;
		goto fail;
	}
	if ((size_t)n != sizeof(meta_c) ||
	    crypto_secretstream_xchacha20poly1305_pull(r->state, meta, NULL,
						       &tag, meta_c,
						       sizeof(meta_c), NULL,
						       0) != 0 ||
	    tag != SP_TAG_MESSAGE ||
	    sodium_memcmp(meta, id_bin, SP_ID_BYTES) != 0 ||
	    get_u32(meta + SP_ID_BYTES + 12) != 0)
		goto fail;
	r->internal_date = (int64_t)get_u64(meta + SP_ID_BYTES);
	r->flags = get_u32(meta + SP_ID_BYTES + 8);
	r->plain = eng_malloc(SP_CHUNK);
	r->cipher = eng_malloc(SP_CHUNK + SP_ABYTES);
	*r_r = r;
	return 0;
fail:
	eng_spool_reader_free(&r);
	return ret;
}

void eng_spool_reader_meta(const eng_spool_reader *r, int64_t *internal_date_r,
			   uint32_t *flags_r)
{
	if (internal_date_r != NULL)
		*internal_date_r = r->internal_date;
	if (flags_r != NULL)
		*flags_r = r->flags;
}

/* Decrypts the next record into r->plain; 0 or an error. */
static int reader_next(eng_spool_reader *r)
{
	unsigned long long mlen;
	unsigned char tag;
	uint8_t extra;
	ssize_t n;

	n = read_full(r->fd, r->cipher, SP_CHUNK + SP_ABYTES);
	if (n < 0)
		return ENG_EIO;
	/* Shorter than a tag: truncated at (or just after) a boundary. */
	if ((size_t)n < SP_ABYTES)
		return ENG_ECORRUPT;
	if (crypto_secretstream_xchacha20poly1305_pull(r->state, r->plain,
						       &mlen, &tag, r->cipher,
						       (unsigned long long)n,
						       NULL, 0) != 0)
		return ENG_ECORRUPT;
	if (tag == SP_TAG_FINAL) {
		/* Nothing may follow the FINAL record. */
		n = read_full(r->fd, &extra, 1);
		if (n != 0)
			return n < 0 ? ENG_EIO : ENG_ECORRUPT;
		r->done = true;
	} else if (tag != SP_TAG_MESSAGE || mlen != SP_CHUNK) {
		/* The writer only makes full MESSAGE chunks and one FINAL. */
		return ENG_ECORRUPT;
	}
	r->plain_len = (size_t)mlen;
	r->plain_pos = 0;
	return 0;
}

long eng_spool_read(eng_spool_reader *r, void *buf, size_t len)
{
	size_t n;
	int ret;

	if (r == NULL || buf == NULL || len == 0)
		return ENG_EINVAL;
	if (r->err != 0)
		return r->err;
	while (r->plain_pos == r->plain_len) {
		if (r->done)
			return 0;
		if ((ret = reader_next(r)) != 0) {
			r->err = ret;
			return ret;
		}
	}
	n = r->plain_len - r->plain_pos;
	if (n > len)
		n = len;
	if (n > (size_t)LONG_MAX)
		n = (size_t)LONG_MAX;
	memcpy(buf, r->plain + r->plain_pos, n);
	r->plain_pos += n;
	return (long)n;
}

void eng_spool_reader_free(eng_spool_reader **rp)
{
	eng_spool_reader *r;

	if (rp == NULL || *rp == NULL)
		return;
	r = *rp;
	if (r->fd >= 0)
		close(r->fd);
	sodium_free(r->state);
	if (r->plain != NULL) {
		sodium_memzero(r->plain, SP_CHUNK);
		free(r->plain);
	}
	free(r->cipher);
	free(r);
	*rp = NULL;
}

int eng_spool_remove(const char *dir, const char *id)
{
	char *path;
	int ret;

	if (dir == NULL || !id_valid(id))
		return ENG_EINVAL;
	path = path_join(dir, "", id, ".msg");
	ret = unlink(path);
	free(path);
	if (ret != 0)
		return errno == ENOENT ? 0 : errno_to_eng(errno);
	return eng_fsync_dir(dir);
}
