/*
 * A backup (bk_backup): every file of a set hashed (SHA-256), named by
 * its keyed hash, encrypted as an object and uploaded unless the target
 * already has it; then the manifest. A file that changes while it is read
 * is ENG_EMODIFIED, never a wrong object. The format is in bk_private.h.
 */
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <sodium.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "bk_private.h"
#include "buf.h"
#include "eng_error.h"

static uint64_t object_size(uint64_t size)
{
	return OBJ_HEAD_BYTES + size + bk_n_chunks(size) * SS_ABYTES;
}

static void hex(char *out, const uint8_t *in, size_t n)
{
	sodium_bin2hex(out, 2 * n + 1, in, n);
}

/* ---- objects: writing ---- */

static int hash_file(int fd, uint8_t sha[32], uint64_t *size_r)
{
	crypto_hash_sha256_state h;
	unsigned char *buf = malloc(BK_CHUNK_BYTES);
	uint64_t total = 0;
	ssize_t n;

	if (buf == NULL)
		abort();
	crypto_hash_sha256_init(&h);
	while ((n = read(fd, buf, BK_CHUNK_BYTES)) != 0) {
		if (n < 0) {
			if (errno == EINTR)
				continue;
			free(buf);
			return ENG_EIO;
		}
		crypto_hash_sha256_update(&h, buf, (size_t)n);
		total += (uint64_t)n;
	}
	crypto_hash_sha256_final(&h, sha);
	free(buf);
	*size_r = total;
	return 0;
}

static void object_name(char out[80], const uint8_t *key, const uint8_t sha[32])
{
	uint8_t *nk = bk_secret_new(32);
	uint8_t h[32];
	char hx[65];

	bk_subkey(nk, key, SUB_NAME);
	crypto_generichash(h, sizeof(h), sha, 32, nk, 32);
	sodium_free(nk);
	hex(hx, h, sizeof(h));
	snprintf(out, 80, "objects/%s", hx);
}

struct enc_ctx {
	int fd;
	uint64_t size, left;          /* plaintext */
	uint64_t chunks_left;
	crypto_secretstream_xchacha20poly1305_state st;
	crypto_hash_sha256_state h;
	const uint8_t *want_sha;
	unsigned char *plain;         /* BK_CHUNK_BYTES */
	unsigned char *out;           /* REC_MAX */
	size_t out_len, out_off;
	int started;
	uint8_t *key;                 /* object bk_subkey, secret memory */
	uint64_t *progress_done;
	bk_progress_fn *progress;
	void *pctx;
	uint64_t progress_total;
};

static int read_full(int fd, unsigned char *buf, size_t n)
{
	size_t got = 0;

	while (got < n) {
		ssize_t r = read(fd, buf + got, n - got);

		if (r < 0) {
			if (errno == EINTR)
				continue;
			return ENG_EIO;
		}
		if (r == 0)
			return ENG_EMODIFIED;  /* shorter than when hashed */
		got += (size_t)r;
	}
	return 0;
}

static long enc_read(void *vctx, void *buf, size_t len)
{
	struct enc_ctx *c = vctx;

	if (c->out_off == c->out_len) {
		if (!c->started) {
			memcpy(c->out, OBJ_MAGIC, MAGIC_BYTES);
			crypto_secretstream_xchacha20poly1305_init_push(
				&c->st, c->out + MAGIC_BYTES, c->key);
			c->out_len = OBJ_HEAD_BYTES;
			c->started = 1;
		} else if (c->chunks_left == 0) {
			return 0;
		} else {
			size_t n = c->left < BK_CHUNK_BYTES ? (size_t)c->left :
				BK_CHUNK_BYTES;
			unsigned char tag = c->chunks_left == 1 ?
				crypto_secretstream_xchacha20poly1305_TAG_FINAL :
				crypto_secretstream_xchacha20poly1305_TAG_MESSAGE;
			unsigned long long clen;
			int r = read_full(c->fd, c->plain, n);

			if (r < 0)
				return r;
			crypto_hash_sha256_update(&c->h, c->plain, n);
			c->left -= n;
			c->chunks_left--;
			if (c->chunks_left == 0) {
				uint8_t sha[32];
				unsigned char extra;

				/* Longer than when hashed, or other bytes: changed. */
				if (read(c->fd, &extra, 1) != 0)
					return ENG_EMODIFIED;
				crypto_hash_sha256_final(&c->h, sha);
				if (sodium_memcmp(sha, c->want_sha, 32) != 0)
					return ENG_EMODIFIED;
			}
			crypto_secretstream_xchacha20poly1305_push(
				&c->st, c->out, &clen, c->plain, n, NULL, 0, tag);
			c->out_len = (size_t)clen;
			if (c->progress_done != NULL) {
				*c->progress_done += n;
				if (c->progress != NULL)
					c->progress(c->pctx, "backup",
						    *c->progress_done,
						    c->progress_total);
			}
		}
		c->out_off = 0;
	}
	size_t n = c->out_len - c->out_off;

	if (n > len)
		n = len;
	memcpy(buf, c->out + c->out_off, n);
	c->out_off += n;
	return (long)n;
}

static int upload_file(bk_target *t, const uint8_t *key, int fd,
		       const bk_file *f, struct enc_ctx *proto)
{
	struct enc_ctx c = *proto;
	int r;

	if (lseek(fd, 0, SEEK_SET) != 0)
		return ENG_EIO;
	c.fd = fd;
	c.size = c.left = f->size;
	c.chunks_left = bk_n_chunks(f->size);
	c.want_sha = f->sha256;
	crypto_hash_sha256_init(&c.h);
	c.plain = malloc(BK_CHUNK_BYTES);
	c.out = malloc(REC_MAX + OBJ_HEAD_BYTES);
	c.key = bk_secret_new(32);
	if (c.plain == NULL || c.out == NULL)
		abort();
	bk_subkey(c.key, key, SUB_OBJ);
	r = bk_target_put(t, f->object, object_size(f->size), enc_read, &c);
	sodium_memzero(&c.st, sizeof(c.st));
	sodium_memzero(c.plain, BK_CHUNK_BYTES);
	sodium_free(c.key);
	free(c.plain);
	free(c.out);
	return r;
}

static void make_id(bk_target *t, time_t now, char *id_r)
{
	struct tm tm;
	char base[20], name[128];

	gmtime_r(&now, &tm);
	strftime(base, sizeof(base), "%Y%m%d-%H%M%S", &tm);
	snprintf(id_r, BK_SNAPSHOT_ID_MAX + 1, "%s", base);
	for (unsigned i = 2; i < 1000; i++) {
		bk_manifest_name(name, sizeof(name), id_r);
		if (bk_target_stat(t, name, NULL) == ENG_ENOTFOUND)
			return;
		snprintf(id_r, BK_SNAPSHOT_ID_MAX + 1, "%s-%u", base, i);
	}
}

/* ---- backup ---- */

int bk_backup(bk_target *t, const uint8_t *key, const bk_fileset *fs,
	      time_t now, char *id_r, bk_stats *stats,
	      bk_progress_fn *progress, void *pctx)
{
	eng_buf text = ENG_BUF_INIT;
	struct enc_ctx proto = { 0 };
	uint64_t done = 0, total = 0;
	bk_stats local = { 0 };
	int r = 0;

	if (stats == NULL)
		stats = &local;
	memset(stats, 0, sizeof(*stats));
	for (size_t i = 0; i < fs->n; i++) {
		struct stat st;

		if (stat(fs->v[i].src, &st) == 0)
			total += (uint64_t)st.st_size;
	}
	proto.progress_done = &done;
	proto.progress = progress;
	proto.pctx = pctx;
	proto.progress_total = total;
	make_id(t, now, id_r);
	eng_buf_printf(&text, "sealmail-backup %d\nid %s\ncreated %lld\n",
		       BK_FORMAT_VERSION, id_r, (long long)now);
	for (size_t i = 0; i < fs->n && r == 0; i++) {
		bk_file f = { 0 };
		char shahex[65];
		int fd = open(fs->v[i].src, O_RDONLY | O_CLOEXEC);

		if (fd < 0) {
			/* A spool entry drained since it was listed: its
			 * message is in the database copy or a later one. */
			if (errno == ENOENT && strncmp(fs->v[i].rel, "spool/", 6) == 0)
				continue;
			r = ENG_EIO;
			break;
		}
		r = hash_file(fd, f.sha256, &f.size);
		if (r == 0) {
			uint64_t have;

			object_name(f.object, key, f.sha256);
			if (bk_target_stat(t, f.object, &have) == 0 &&
			    have == object_size(f.size)) {
				stats->objects_present++;
				done += f.size;
				if (progress != NULL)
					progress(pctx, "backup", done, total);
			} else {
				r = upload_file(t, key, fd, &f, &proto);
				if (r == 0) {
					stats->objects_uploaded++;
					stats->bytes_uploaded += object_size(f.size);
				}
			}
		}
		close(fd);
		if (r < 0)
			break;
		stats->files++;
		stats->bytes_read += f.size;
		hex(shahex, f.sha256, 32);
		eng_buf_printf(&text, "file %o %" PRIu64 " %s %s %s\n",
			       (unsigned)fs->v[i].mode, f.size, shahex, f.object,
			       fs->v[i].rel);
	}
	if (r == 0)
		r = bk_manifest_put(t, key, id_r, &text);
	eng_buf_free(&text);
	return r;
}
