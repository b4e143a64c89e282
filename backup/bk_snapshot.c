/*
 * Snapshots: objects, manifests, backup, retention and restore (bk.h).
 *
 * Object (plaintext of size S, k = max(1, ceil(S / 65536)) chunks):
 *
 *     "SMBKOBJ1" | secretstream header (24) | k records
 *
 * each record crypto_secretstream_xchacha20poly1305_push(chunk) with
 * TAG_MESSAGE, the last with TAG_FINAL; every chunk but the last holds
 * exactly 65536 bytes, so the manifest's size gives every record's length.
 * Key: crypto_kdf_derive_from_key(id 1, "sm-bkobj", backup key).
 * Name: "objects/" | hex(BLAKE2b-256 keyed with subkey (2, "sm-bknam") over
 * the file's SHA-256).
 *
 * Manifest: "SMBKMAN1" | version (1 byte) | nonce (24) |
 * XChaCha20-Poly1305-IETF(subkey (3, "sm-bkman"), nonce, text,
 * ad = the first 9 bytes | snapshot id), text being lines
 *
 *     sealmail-backup 1
 *     id <snapshot id>
 *     created <unix seconds>
 *     file <mode octal> <size> <sha256 hex> <object> <path>
 *
 * The version byte is outside the AEAD so that a newer format is refused
 * as newer, not reported as a wrong key; it is in the AD, so it cannot be
 * altered either.
 */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <sodium.h>
#include <sqlite3.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "bk.h"
#include "buf.h"
#include "eng_error.h"
#include "fsutil.h"

#define OBJ_MAGIC "SMBKOBJ1"
#define MAN_MAGIC "SMBKMAN1"
#define MAGIC_BYTES 8
#define SS_HEADER crypto_secretstream_xchacha20poly1305_HEADERBYTES
#define SS_ABYTES crypto_secretstream_xchacha20poly1305_ABYTES
#define OBJ_HEAD_BYTES (MAGIC_BYTES + SS_HEADER)
#define REC_MAX (BK_CHUNK_BYTES + SS_ABYTES)
#define MANIFEST_MAX_BYTES (256u * 1024 * 1024)

enum { SUB_OBJ = 1, SUB_NAME = 2, SUB_MAN = 3 };

static void subkey(uint8_t out[32], const uint8_t *key, int which)
{
	static const char *ctx[] = { NULL, "sm-bkobj", "sm-bknam", "sm-bkman" };

	crypto_kdf_derive_from_key(out, 32, (uint64_t)which, ctx[which], key);
}

static uint8_t *secret_new(size_t n)
{
	uint8_t *p = sodium_malloc(n);

	if (p == NULL)
		abort();
	return p;
}

static uint64_t n_chunks(uint64_t size)
{
	return size == 0 ? 1 : (size + BK_CHUNK_BYTES - 1) / BK_CHUNK_BYTES;
}

static uint64_t object_size(uint64_t size)
{
	return OBJ_HEAD_BYTES + size + n_chunks(size) * SS_ABYTES;
}

static void hex(char *out, const uint8_t *in, size_t n)
{
	sodium_bin2hex(out, 2 * n + 1, in, n);
}

static int io_err(int e)
{
	return e == ENOSPC || e == EDQUOT ? ENG_ENOSPC : ENG_EIO;
}

/* ---- file sets ---- */

struct bk_fileset {
	struct fs_entry {
		char *rel, *src;
		mode_t mode;
	} *v;
	size_t n, cap;
};

bk_fileset *bk_fileset_new(void)
{
	bk_fileset *fs = calloc(1, sizeof(*fs));

	if (fs == NULL)
		abort();
	return fs;
}

void bk_fileset_free(bk_fileset **fsp)
{
	bk_fileset *fs = fsp != NULL ? *fsp : NULL;

	if (fs == NULL)
		return;
	for (size_t i = 0; i < fs->n; i++) {
		free(fs->v[i].rel);
		free(fs->v[i].src);
	}
	free(fs->v);
	free(fs);
	*fsp = NULL;
}

void bk_fileset_add(bk_fileset *fs, const char *rel, const char *src,
		    mode_t mode)
{
	if (fs->n == fs->cap) {
		fs->cap = fs->cap ? 2 * fs->cap : 64;
		fs->v = realloc(fs->v, fs->cap * sizeof(*fs->v));
		if (fs->v == NULL)
			abort();
	}
	fs->v[fs->n].rel = strdup(rel);
	fs->v[fs->n].src = strdup(src);
	if (fs->v[fs->n].rel == NULL || fs->v[fs->n].src == NULL)
		abort();
	fs->v[fs->n].mode = mode & 07777;
	fs->n++;
}

static int add_tree(bk_fileset *fs, const char *root, const char *sub,
		    int depth)
{
	char path[4096];
	DIR *d;
	struct dirent *e;
	int r = 0;

	if (depth > 4)
		return 0;
	snprintf(path, sizeof(path), "%s/%s", root, sub);
	d = opendir(path);
	if (d == NULL)
		return errno == ENOENT ? 0 : ENG_EIO;
	while (r == 0 && (e = readdir(d)) != NULL) {
		char rel[2048], src[4096];
		struct stat st;
		size_t nl = strlen(e->d_name);

		if (e->d_name[0] == '.' || strncmp(e->d_name, "tmp-", 4) == 0 ||
		    (nl > 4 && strcmp(e->d_name + nl - 4, "-shm") == 0))
			continue;
		if ((size_t)snprintf(rel, sizeof(rel), "%s/%s", sub, e->d_name) >=
		    sizeof(rel))
			continue;
		snprintf(src, sizeof(src), "%s/%s", root, rel);
		if (lstat(src, &st) != 0)
			continue;  /* gone meanwhile (a drained spool entry) */
		if (S_ISDIR(st.st_mode))
			r = add_tree(fs, root, rel, depth + 1);
		else if (S_ISREG(st.st_mode))
			bk_fileset_add(fs, rel, src, st.st_mode);
	}
	closedir(d);
	return r;
}

int bk_fileset_add_tree(bk_fileset *fs, const char *root, const char *sub)
{
	return add_tree(fs, root, sub, 0);
}

int bk_copy_sqlite(const char *src, const char *dst)
{
	sqlite3 *from = NULL, *to = NULL;
	sqlite3_backup *b;
	int rc;

	unlink(dst);
	rc = sqlite3_open_v2(src, &from, SQLITE_OPEN_READONLY, NULL);
	if (rc == SQLITE_OK)
		rc = sqlite3_open_v2(dst, &to, SQLITE_OPEN_READWRITE |
				     SQLITE_OPEN_CREATE, NULL);
	if (rc == SQLITE_OK) {
		sqlite3_busy_timeout(from, 5000);
		b = sqlite3_backup_init(to, "main", from, "main");
		if (b == NULL) {
			rc = SQLITE_ERROR;
		} else {
			/* One step: one read transaction, one consistent copy. */
			rc = sqlite3_backup_step(b, -1);
			sqlite3_backup_finish(b);
			rc = rc == SQLITE_DONE ? SQLITE_OK : rc;
		}
	}
	sqlite3_close(from);
	if (sqlite3_close(to) != SQLITE_OK && rc == SQLITE_OK)
		rc = SQLITE_ERROR;
	if (rc != SQLITE_OK) {
		unlink(dst);
		return rc == SQLITE_BUSY ? ENG_EBUSY : ENG_EIO;
	}
	return 0;
}

int bk_collect_offline(const char *data_dir, const char *config_path,
		       const char *stage_dir, bk_fileset **fs_r, char **err_r)
{
	bk_fileset *fs = bk_fileset_new();
	char src[4096], dst[4096];
	struct stat st;
	int r;

	*err_r = NULL;
	if ((r = sm_fs_mkdir_p(stage_dir, 0700, err_r)) < 0)
		goto fail;
	r = bk_fileset_add_tree(fs, data_dir, "mailboxes");
	if (r == 0)
		r = bk_fileset_add_tree(fs, data_dir, "spool");
	if (r < 0) {
		if (asprintf(err_r, "%s: cannot read mailboxes/ or spool/",
			     data_dir) < 0)
			abort();
		goto fail;
	}
	snprintf(src, sizeof(src), "%s/directory.db", data_dir);
	if (stat(src, &st) == 0) {
		snprintf(dst, sizeof(dst), "%s/directory.db", stage_dir);
		if ((r = bk_copy_sqlite(src, dst)) < 0) {
			if (asprintf(err_r, "%s: cannot copy the directory", src) < 0)
				abort();
			goto fail;
		}
		bk_fileset_add(fs, "directory.db", dst, 0600);
	}
	if (config_path != NULL && stat(config_path, &st) == 0)
		bk_fileset_add(fs, "sealmail.conf", config_path, st.st_mode);
	*fs_r = fs;
	return 0;
fail:
	bk_fileset_free(&fs);
	return r;
}

int bk_collect_staged(const char *stage_dir, const char *config_path,
		      bk_fileset **fs_r, char **err_r)
{
	bk_fileset *fs = bk_fileset_new();
	char src[4096];
	struct stat st;
	int r;

	*err_r = NULL;
	r = bk_fileset_add_tree(fs, stage_dir, "mailboxes");
	if (r == 0)
		r = bk_fileset_add_tree(fs, stage_dir, "spool");
	if (r < 0) {
		if (asprintf(err_r, "%s: cannot read the staging copy",
			     stage_dir) < 0)
			abort();
		bk_fileset_free(&fs);
		return r;
	}
	snprintf(src, sizeof(src), "%s/directory.db", stage_dir);
	if (stat(src, &st) == 0)
		bk_fileset_add(fs, "directory.db", src, 0600);
	if (config_path != NULL && stat(config_path, &st) == 0)
		bk_fileset_add(fs, "sealmail.conf", config_path, st.st_mode);
	*fs_r = fs;
	return 0;
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
	uint8_t *nk = secret_new(32);
	uint8_t h[32];
	char hx[65];

	subkey(nk, key, SUB_NAME);
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
	uint8_t *key;                 /* object subkey, secret memory */
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
	c.chunks_left = n_chunks(f->size);
	c.want_sha = f->sha256;
	crypto_hash_sha256_init(&c.h);
	c.plain = malloc(BK_CHUNK_BYTES);
	c.out = malloc(REC_MAX + OBJ_HEAD_BYTES);
	c.key = secret_new(32);
	if (c.plain == NULL || c.out == NULL)
		abort();
	subkey(c.key, key, SUB_OBJ);
	r = bk_target_put(t, f->object, object_size(f->size), enc_read, &c);
	sodium_memzero(&c.st, sizeof(c.st));
	sodium_memzero(c.plain, BK_CHUNK_BYTES);
	sodium_free(c.key);
	free(c.plain);
	free(c.out);
	return r;
}

/* ---- manifests ---- */

static void manifest_id_name(char *out, size_t n, const char *id)
{
	snprintf(out, n, "snapshots/%s.manifest", id);
}

struct mem_reader {
	const uint8_t *p;
	size_t len, off;
};

static long mem_read(void *ctx, void *buf, size_t len)
{
	struct mem_reader *m = ctx;
	size_t n = m->len - m->off;

	if (n > len)
		n = len;
	memcpy(buf, m->p + m->off, n);
	m->off += n;
	return (long)n;
}

static int manifest_put(bk_target *t, const uint8_t *key, const char *id,
			const eng_buf *text)
{
	size_t idlen = strlen(id);
	size_t clen = text->len + crypto_aead_xchacha20poly1305_ietf_ABYTES;
	size_t total = MAGIC_BYTES + 1 + 24 + clen;
	uint8_t *blob = malloc(total), *ad = malloc(MAGIC_BYTES + 1 + idlen);
	uint8_t *mk = secret_new(32);
	unsigned long long outlen;
	struct mem_reader mr;
	char name[128];
	int r;

	if (blob == NULL || ad == NULL)
		abort();
	memcpy(blob, MAN_MAGIC, MAGIC_BYTES);
	blob[MAGIC_BYTES] = BK_FORMAT_VERSION;
	randombytes_buf(blob + MAGIC_BYTES + 1, 24);
	memcpy(ad, blob, MAGIC_BYTES + 1);
	memcpy(ad + MAGIC_BYTES + 1, id, idlen);
	subkey(mk, key, SUB_MAN);
	crypto_aead_xchacha20poly1305_ietf_encrypt(
		blob + MAGIC_BYTES + 1 + 24, &outlen, (const uint8_t *)text->data,
		text->len, ad, MAGIC_BYTES + 1 + idlen, NULL,
		blob + MAGIC_BYTES + 1, mk);
	sodium_free(mk);
	mr.p = blob;
	mr.len = total;
	mr.off = 0;
	manifest_id_name(name, sizeof(name), id);
	r = bk_target_put(t, name, total, mem_read, &mr);
	free(blob);
	free(ad);
	return r;
}

static int mem_write(void *ctx, const void *data, size_t len)
{
	eng_buf *b = ctx;

	if (b->len + len > MANIFEST_MAX_BYTES)
		return ENG_ELIMIT;
	eng_buf_append(b, data, len);
	return 0;
}

void bk_manifest_free(bk_manifest **mp)
{
	bk_manifest *m = mp != NULL ? *mp : NULL;

	if (m == NULL)
		return;
	for (size_t i = 0; i < m->n_files; i++)
		free(m->files[i].path);
	free(m->files);
	free(m);
	*mp = NULL;
}

static int path_ok(const char *p)
{
	if (p[0] == '\0' || p[0] == '/' || strstr(p, "..") != NULL)
		return 0;
	for (; *p; p++) {
		if ((unsigned char)*p < 0x21 || (unsigned char)*p > 0x7e)
			return 0;
	}
	return 1;
}

static int manifest_parse(char *text, size_t len, bk_manifest *m)
{
	size_t cap = 0;
	char *line, *save = NULL;
	int seen_head = 0;

	if (memchr(text, '\0', len) != NULL)
		return ENG_ECORRUPT;
	for (line = strtok_r(text, "\n", &save); line != NULL;
	     line = strtok_r(NULL, "\n", &save)) {
		unsigned v;
		long long created;
		char idbuf[BK_SNAPSHOT_ID_MAX + 1];

		if (!seen_head) {
			if (sscanf(line, "sealmail-backup %u", &v) != 1)
				return ENG_ECORRUPT;
			if (v > BK_FORMAT_VERSION)
				return ENG_ENEWER;
			m->version = v;
			seen_head = 1;
		} else if (strncmp(line, "id ", 3) == 0) {
			if (sscanf(line + 3, "%32s", idbuf) != 1)
				return ENG_ECORRUPT;
			memcpy(m->id, idbuf, sizeof(idbuf));
		} else if (sscanf(line, "created %lld", &created) == 1) {
			m->created = created;
		} else if (strncmp(line, "file ", 5) == 0) {
			bk_file f = { 0 };
			char shahex[65], obj[80];
			unsigned long long size;
			int pos = 0;

			if (sscanf(line + 5, "%o %llu %64s %79s %n", &f.mode, &size,
				   shahex, obj, &pos) != 4 || pos == 0 ||
			    strlen(shahex) != 64 ||
			    sodium_hex2bin(f.sha256, 32, shahex, 64, NULL, NULL,
					   NULL) != 0 ||
			    strncmp(obj, "objects/", 8) != 0 ||
			    strlen(obj) != 8 + 64 || !path_ok(line + 5 + pos))
				return ENG_ECORRUPT;
			f.size = size;
			memcpy(f.object, obj, sizeof(obj));
			f.path = strdup(line + 5 + pos);
			if (f.path == NULL)
				abort();
			if (m->n_files == cap) {
				cap = cap ? 2 * cap : 64;
				m->files = realloc(m->files, cap * sizeof(*m->files));
				if (m->files == NULL)
					abort();
			}
			m->files[m->n_files++] = f;
		}
		/* unknown lines are ignored: fields may be added in version 1 */
	}
	return seen_head ? 0 : ENG_ECORRUPT;
}

int bk_manifest_load(bk_target *t, const uint8_t *key, const char *id,
		     bk_manifest **m_r)
{
	eng_buf blob = ENG_BUF_INIT;
	char name[128];
	char *newest = NULL;
	bk_manifest *m;
	uint8_t *mk, *ad, *plain;
	unsigned long long plen;
	size_t idlen;
	int r;

	*m_r = NULL;
	if (id == NULL) {
		char **ids;
		size_t n;

		if ((r = bk_snapshots(t, &ids, &n)) < 0)
			return r;
		if (n == 0) {
			bk_strv_free(ids, n);
			return ENG_ENOTFOUND;
		}
		newest = strdup(ids[n - 1]);
		bk_strv_free(ids, n);
		if (newest == NULL)
			abort();
		id = newest;
	}
	idlen = strlen(id);
	if (idlen == 0 || idlen > BK_SNAPSHOT_ID_MAX ||
	    strspn(id, "0123456789-") != idlen) {
		free(newest);
		return ENG_ENOTFOUND;
	}
	manifest_id_name(name, sizeof(name), id);
	r = bk_target_get(t, name, mem_write, &blob);
	if (r < 0)
		goto out;
	if (blob.len < MAGIC_BYTES + 1 + 24 +
	    crypto_aead_xchacha20poly1305_ietf_ABYTES ||
	    memcmp(blob.data, MAN_MAGIC, MAGIC_BYTES) != 0) {
		r = ENG_ECORRUPT;
		goto out;
	}
	if ((uint8_t)blob.data[MAGIC_BYTES] > BK_FORMAT_VERSION) {
		r = ENG_ENEWER;
		goto out;
	}
	ad = malloc(MAGIC_BYTES + 1 + idlen);
	plain = malloc(blob.len + 1);
	mk = secret_new(32);
	if (ad == NULL || plain == NULL)
		abort();
	memcpy(ad, blob.data, MAGIC_BYTES + 1);
	memcpy(ad + MAGIC_BYTES + 1, id, idlen);
	subkey(mk, key, SUB_MAN);
	r = crypto_aead_xchacha20poly1305_ietf_decrypt(
		plain, &plen, NULL, (const uint8_t *)blob.data + MAGIC_BYTES + 25,
		blob.len - MAGIC_BYTES - 25, ad, MAGIC_BYTES + 1 + idlen,
		(const uint8_t *)blob.data + MAGIC_BYTES + 1, mk) == 0 ? 0 :
		ENG_EAUTH;
	sodium_free(mk);
	free(ad);
	if (r == 0) {
		m = calloc(1, sizeof(*m));
		if (m == NULL)
			abort();
		plain[plen] = '\0';
		r = manifest_parse((char *)plain, (size_t)plen, m);
		if (r == 0 && strcmp(m->id, id) != 0)
			r = ENG_ECORRUPT;
		if (r < 0)
			bk_manifest_free(&m);
		else
			*m_r = m;
	}
	free(plain);
out:
	eng_buf_free(&blob);
	free(newest);
	return r;
}

/* ---- snapshots ---- */

void bk_strv_free(char **v, size_t n)
{
	for (size_t i = 0; i < n; i++)
		free(v[i]);
	free(v);
}

static int cmp_str(const void *a, const void *b);

int bk_snapshots(bk_target *t, char ***ids_r, size_t *n_r)
{
	char **names;
	size_t n, k = 0;
	int r = bk_target_list(t, "snapshots/", &names, &n);

	*ids_r = NULL;
	*n_r = 0;
	if (r < 0)
		return r;
	for (size_t i = 0; i < n; i++) {
		const char *b = names[i] + strlen("snapshots/");
		size_t bl = strlen(b);
		const char *suf = ".manifest";

		if (bl > strlen(suf) && bl - strlen(suf) <= BK_SNAPSHOT_ID_MAX &&
		    strcmp(b + bl - strlen(suf), suf) == 0) {
			char *id = strndup(b, bl - strlen(suf));

			if (id == NULL)
				abort();
			free(names[i]);
			names[k++] = id;
		} else {
			free(names[i]);
		}
	}
	/* Sorted as ids, not as object names: in "<id>.manifest" the '-' of
	 * a "-N" suffix sorts before the '.', which would put a later
	 * snapshot of the same second first (and confuse retention).
	 * "YYYYMMDD-HHMMSS" and "-N" suffixes sort by time as strings. */
	qsort(names, k, sizeof(*names), cmp_str);
	*ids_r = names;
	*n_r = k;
	return 0;
}

static void make_id(bk_target *t, time_t now, char *id_r)
{
	struct tm tm;
	char base[20], name[128];

	gmtime_r(&now, &tm);
	strftime(base, sizeof(base), "%Y%m%d-%H%M%S", &tm);
	snprintf(id_r, BK_SNAPSHOT_ID_MAX + 1, "%s", base);
	for (unsigned i = 2; i < 1000; i++) {
		manifest_id_name(name, sizeof(name), id_r);
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
		r = manifest_put(t, key, id_r, &text);
	eng_buf_free(&text);
	return r;
}

/* ---- retention ---- */

static int id_time(const char *id, time_t *t_r)
{
	struct tm tm = { 0 };

	if (strlen(id) < 15 ||
	    sscanf(id, "%4d%2d%2d-%2d%2d%2d", &tm.tm_year, &tm.tm_mon,
		   &tm.tm_mday, &tm.tm_hour, &tm.tm_min, &tm.tm_sec) != 6)
		return -1;
	tm.tm_year -= 1900;
	tm.tm_mon -= 1;
	*t_r = timegm(&tm);
	return 0;
}

static int cmp_str(const void *a, const void *b)
{
	return strcmp(*(char *const *)a, *(char *const *)b);
}

int bk_prune(bk_target *t, const uint8_t *key, unsigned keep_daily,
	     unsigned keep_weekly, const char *keep_id, bk_stats *stats)
{
	char **ids = NULL, **objs = NULL, **refs = NULL;
	size_t n = 0, nobj = 0, nref = 0, capref = 0;
	char *keep = NULL;
	char last_day[16] = "", last_week[16] = "";
	unsigned days = 0, weeks = 0;
	int r;

	if ((r = bk_snapshots(t, &ids, &n)) < 0)
		return r;
	keep = calloc(n + 1, 1);
	if (keep == NULL)
		abort();
	/* Newest first: the first snapshot seen of a day/week is its newest. */
	for (size_t k = n; k-- > 0;) {
		time_t when;
		struct tm tm;
		char day[16], week[16];

		if (keep_id != NULL && strcmp(ids[k], keep_id) == 0)
			keep[k] = 1;
		if (id_time(ids[k], &when) < 0) {
			keep[k] = 1;  /* not ours to judge: leave it */
			continue;
		}
		gmtime_r(&when, &tm);
		strftime(day, sizeof(day), "%Y%m%d", &tm);
		strftime(week, sizeof(week), "%G%V", &tm);
		if (strcmp(day, last_day) != 0) {
			snprintf(last_day, sizeof(last_day), "%s", day);
			if (days < keep_daily) {
				keep[k] = 1;
			}
			days++;
		}
		if (strcmp(week, last_week) != 0) {
			snprintf(last_week, sizeof(last_week), "%s", week);
			if (weeks < keep_weekly)
				keep[k] = 1;
			weeks++;
		}
	}
	/* Read every kept manifest before deleting anything. */
	for (size_t k = 0; k < n && r == 0; k++) {
		bk_manifest *m;

		if (!keep[k])
			continue;
		r = bk_manifest_load(t, key, ids[k], &m);
		if (r < 0)
			break;
		for (size_t i = 0; i < m->n_files; i++) {
			if (nref == capref) {
				capref = capref ? 2 * capref : 256;
				refs = realloc(refs, capref * sizeof(*refs));
				if (refs == NULL)
					abort();
			}
			refs[nref] = strdup(m->files[i].object);
			if (refs[nref++] == NULL)
				abort();
		}
		bk_manifest_free(&m);
	}
	if (r < 0)
		goto out;
	for (size_t k = 0; k < n; k++) {
		char name[128];

		if (keep[k])
			continue;
		manifest_id_name(name, sizeof(name), ids[k]);
		if ((r = bk_target_delete(t, name)) < 0)
			goto out;
		if (stats != NULL)
			stats->snapshots_pruned++;
	}
	if (nref > 1)
		qsort(refs, nref, sizeof(*refs), cmp_str);
	if ((r = bk_target_list(t, "objects/", &objs, &nobj)) < 0)
		goto out;
	for (size_t i = 0; i < nobj; i++) {
		if (nref > 0 && bsearch(&objs[i], refs, nref, sizeof(*refs),
					cmp_str) != NULL)
			continue;
		if ((r = bk_target_delete(t, objs[i])) < 0)
			break;
		if (stats != NULL)
			stats->objects_pruned++;
	}
out:
	bk_strv_free(objs, nobj);
	bk_strv_free(refs, nref);
	bk_strv_free(ids, n);
	free(keep);
	return r;
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
	c.chunks_left = n_chunks(f->size);
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
	uint8_t *objkey = secret_new(32);
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
	subkey(objkey, key, SUB_OBJ);
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
