/*
 * Restore (bk.h): bk_restore_fetch downloads, decrypts and verifies the
 * selected objects into a staging directory (a record that fails its tag,
 * a truncated or longer object, or a SHA-256 that differs is
 * ENG_ECORRUPT, and the file is removed); bk_restore_install then renames
 * them into data_dir (fsync of each directory), removing a database's old
 * -wal/-shm first. Nothing is written into data_dir before every object
 * has been verified.
 */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <sodium.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "bk_private.h"
#include "eng_error.h"
#include "fsutil.h"

static int io_err(int e)
{
	return e == ENOSPC || e == EDQUOT ? ENG_ENOSPC : ENG_EIO;
}

/* ---- restore ---- */

struct dec_ctx {
	int fd;
	uint64_t size, left, chunks_left;
	crypto_secretstream_xchacha20poly1305_state st;
	crypto_hash_sha256_state h;
	uint8_t *key;
	unsigned char *rec;       /* REC_MAX */
	size_t have, want;
	int started, finished, err;
	unsigned char *plain;
	uint64_t *done, total;
	bk_progress_fn *progress;
	void *pctx;
};

static int dec_record(struct dec_ctx *c)
{
	unsigned long long plen;
	unsigned char tag;
	ssize_t w;

	if (crypto_secretstream_xchacha20poly1305_pull(&c->st, c->plain, &plen,
						       &tag, c->rec, c->want,
						       NULL, 0) != 0)
		return ENG_ECORRUPT;
	c->chunks_left--;
	if ((c->chunks_left == 0) !=
	    (tag == crypto_secretstream_xchacha20poly1305_TAG_FINAL))
		return ENG_ECORRUPT;
	crypto_hash_sha256_update(&c->h, c->plain, (size_t)plen);
	for (size_t off = 0; off < plen; off += (size_t)w) {
		w = write(c->fd, c->plain + off, (size_t)plen - off);
		if (w < 0) {
			if (errno == EINTR) {
				w = 0;
				continue;
			}
			return io_err(errno);
		}
	}
	c->left -= plen;
	if (c->done != NULL) {
		*c->done += plen;
		if (c->progress != NULL)
			c->progress(c->pctx, "restore", *c->done, c->total);
	}
	if (c->chunks_left == 0)
		c->finished = 1;
	return 0;
}

static void dec_next_want(struct dec_ctx *c)
{
	uint64_t n = c->left < BK_CHUNK_BYTES ? c->left : BK_CHUNK_BYTES;

	c->want = (size_t)n + SS_ABYTES;
	c->have = 0;
}

static int dec_write(void *vctx, const void *data, size_t len)
{
	struct dec_ctx *c = vctx;
	const unsigned char *p = data;

	while (len > 0) {
		size_t n;

		if (c->finished)
			return c->err = ENG_ECORRUPT;  /* bytes after the end */
		n = c->want - c->have;
		if (n > len)
			n = len;
		memcpy(c->rec + c->have, p, n);
		c->have += n;
		p += n;
		len -= n;
		if (c->have < c->want)
			break;
		if (!c->started) {
			if (memcmp(c->rec, OBJ_MAGIC, MAGIC_BYTES) != 0 ||
			    crypto_secretstream_xchacha20poly1305_init_pull(
				    &c->st, c->rec + MAGIC_BYTES, c->key) != 0)
				return c->err = ENG_ECORRUPT;
			c->started = 1;
		} else {
			int r = dec_record(c);

			if (r < 0)
				return c->err = r;
		}
		if (!c->finished)
			dec_next_want(c);
	}
	return 0;
}

static int mkparent(const char *path)
{
	char *copy = strdup(path), *slash;
	char *err = NULL;
	int r = 0;

	if (copy == NULL)
		abort();
	slash = strrchr(copy, '/');
	if (slash != NULL && slash != copy) {
		*slash = '\0';
		r = sm_fs_mkdir_p(copy, 0700, &err);
		free(err);
	}
	free(copy);
	return r;
}

static int fsync_parent(const char *path)
{
	char *copy = strdup(path), *slash;
	int fd, r = 0;

	if (copy == NULL)
		abort();
	slash = strrchr(copy, '/');
	if (slash != NULL)
		*slash = '\0';
	fd = open(slash != NULL ? copy : ".", O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	if (fd < 0 || fsync(fd) != 0)
		r = io_err(errno);
	if (fd >= 0)
		close(fd);
	free(copy);
	return r;
}

static int fetch_one(bk_target *t, const uint8_t *objkey, const bk_file *f,
		     const char *dst, uint64_t *done, uint64_t total,
		     bk_progress_fn *progress, void *pctx)
{
	struct dec_ctx c = { 0 };
	uint8_t sha[32];
	int r;

	if (mkparent(dst) < 0)
		return ENG_EIO;
	unlink(dst);
	c.fd = open(dst, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
	if (c.fd < 0)
		return io_err(errno);
	c.key = (uint8_t *)objkey;
	c.size = c.left = f->size;
	c.chunks_left = bk_n_chunks(f->size);
	c.want = OBJ_HEAD_BYTES;
	c.rec = malloc(REC_MAX + OBJ_HEAD_BYTES);
	c.plain = malloc(REC_MAX);
	if (c.rec == NULL || c.plain == NULL)
		abort();
	c.done = done;
	c.total = total;
	c.progress = progress;
	c.pctx = pctx;
	crypto_hash_sha256_init(&c.h);
	r = bk_target_get(t, f->object, dec_write, &c);
	if (r == 0 && c.err < 0)
		r = c.err;
	if (r == 0 && !c.finished)
		r = ENG_ECORRUPT;  /* truncated */
	if (r == 0) {
		crypto_hash_sha256_final(&c.h, sha);
		if (c.left != 0 || sodium_memcmp(sha, f->sha256, 32) != 0)
			r = ENG_ECORRUPT;
	}
	if (r == 0 && fsync(c.fd) != 0)
		r = io_err(errno);
	if (r == 0 && fchmod(c.fd, f->mode & 0777) != 0)
		r = io_err(errno);
	if (close(c.fd) != 0 && r == 0)
		r = io_err(errno);
	sodium_memzero(&c.st, sizeof(c.st));
	sodium_memzero(c.plain, REC_MAX);
	free(c.rec);
	free(c.plain);
	if (r < 0)
		unlink(dst);
	return r;
}

int bk_restore_fetch(bk_target *t, const uint8_t *key, const bk_manifest *m,
		     bk_select_fn *select, void *sctx, const char *stage_dir,
		     const char **bad_r, bk_progress_fn *progress, void *pctx)
{
	uint8_t *objkey = bk_secret_new(32);
	uint64_t total = 0, done = 0;
	char *err = NULL;
	int r;

	if (bad_r != NULL)
		*bad_r = NULL;
	if ((r = sm_fs_mkdir_p(stage_dir, 0700, &err)) < 0) {
		free(err);
		sodium_free(objkey);
		return ENG_EIO;
	}
	bk_subkey(objkey, key, SUB_OBJ);
	for (size_t i = 0; i < m->n_files; i++) {
		if (select == NULL || select(sctx, &m->files[i]))
			total += m->files[i].size;
	}
	for (size_t i = 0; i < m->n_files && r == 0; i++) {
		const bk_file *f = &m->files[i];
		char dst[4096];

		if (select != NULL && !select(sctx, f))
			continue;
		snprintf(dst, sizeof(dst), "%s/%s", stage_dir, f->path);
		r = fetch_one(t, objkey, f, dst, &done, total, progress, pctx);
		if (r < 0 && bad_r != NULL)
			*bad_r = f->path;
	}
	sodium_free(objkey);
	return r;
}

int bk_restore_install(const bk_manifest *m, bk_select_fn *select,
		       void *sctx, const char *stage_dir, const char *data_dir)
{
	int r = 0;

	for (size_t i = 0; i < m->n_files && r == 0; i++) {
		const bk_file *f = &m->files[i];
		char src[4096], dst[4096];
		size_t pl = strlen(f->path);

		if (select != NULL && !select(sctx, f))
			continue;
		snprintf(src, sizeof(src), "%s/%s", stage_dir, f->path);
		if (strcmp(f->path, "sealmail.conf") == 0)
			snprintf(dst, sizeof(dst), "%s/sealmail.conf.from-backup",
				 data_dir);
		else
			snprintf(dst, sizeof(dst), "%s/%s", data_dir, f->path);
		if (mkparent(dst) < 0) {
			r = ENG_EIO;
			break;
		}
		/*
		 * A database's old WAL must never meet the new file: it would be
		 * replayed into it. Remove it (and -shm) first; the snapshot's own
		 * -wal, if any, is listed after its .db and installed next.
		 */
		if (pl > 3 && (strcmp(f->path + pl - 3, ".db") == 0)) {
			char side[4200];

			snprintf(side, sizeof(side), "%s-wal", dst);
			unlink(side);
			snprintf(side, sizeof(side), "%s-shm", dst);
			unlink(side);
		}
		if (rename(src, dst) != 0)
			r = io_err(errno);
		else
			r = fsync_parent(dst);
	}
	return r;
}

static void rm_tree(const char *path, int depth)
{
	DIR *d;
	struct dirent *e;

	if (depth > 16)
		return;
	d = opendir(path);
	if (d != NULL) {
		while ((e = readdir(d)) != NULL) {
			char child[4096];

			if (strcmp(e->d_name, ".") == 0 || strcmp(e->d_name, "..") == 0)
				continue;
			snprintf(child, sizeof(child), "%s/%s", path, e->d_name);
			if (unlink(child) != 0 && (errno == EISDIR || errno == EPERM))
				rm_tree(child, depth + 1);
		}
		closedir(d);
	}
	rmdir(path);
}

void bk_remove_tree(const char *path)
{
	rm_tree(path, 0);
}
