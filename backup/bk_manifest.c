/*
 * Manifests: the sealed list of a snapshot's files (format in
 * bk_private.h). Written by bk_manifest_put, read by bk_manifest_load:
 * the AEAD is checked before a byte is parsed, the text is bounded
 * (MANIFEST_MAX_BYTES), and paths are checked (no "..", no absolute path,
 * printable ASCII only).
 */
#include <sodium.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "bk_private.h"
#include "buf.h"
#include "eng_error.h"

/* ---- manifests ---- */

void bk_manifest_name(char *out, size_t n, const char *id)
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

int bk_manifest_put(bk_target *t, const uint8_t *key, const char *id,
		    const eng_buf *text)
{
	size_t idlen = strlen(id);
	size_t clen = text->len + crypto_aead_xchacha20poly1305_ietf_ABYTES;
	size_t total = MAGIC_BYTES + 1 + 24 + clen;
	uint8_t *blob = malloc(total), *ad = malloc(MAGIC_BYTES + 1 + idlen);
	uint8_t *mk = bk_secret_new(32);
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
	bk_subkey(mk, key, SUB_MAN);
	crypto_aead_xchacha20poly1305_ietf_encrypt(
		blob + MAGIC_BYTES + 1 + 24, &outlen, (const uint8_t *)text->data,
		text->len, ad, MAGIC_BYTES + 1 + idlen, NULL,
		blob + MAGIC_BYTES + 1, mk);
	sodium_free(mk);
	mr.p = blob;
	mr.len = total;
	mr.off = 0;
	bk_manifest_name(name, sizeof(name), id);
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
	bk_manifest_name(name, sizeof(name), id);
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
	mk = bk_secret_new(32);
	if (ad == NULL || plain == NULL)
		abort();
	memcpy(ad, blob.data, MAGIC_BYTES + 1);
	memcpy(ad + MAGIC_BYTES + 1, id, idlen);
	bk_subkey(mk, key, SUB_MAN);
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
