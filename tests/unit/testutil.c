#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include "testutil.h"

#include <ftw.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

char *tu_tmpdir(void)
{
	const char *base = getenv("TMPDIR");
	char *path;

	if (base == NULL || *base == '\0')
		base = "/tmp";
	if (asprintf(&path, "%s/sealmail-test-XXXXXX", base) < 0)
		abort();
	if (mkdtemp(path) == NULL)
		abort();
	return path;
}

static int rm_one(const char *path, const struct stat *st, int flag, struct FTW *ftw)
{
	(void)st;
	(void)flag;
	(void)ftw;
	return remove(path);
}

int tu_rmrf(const char *path)
{
	nftw(path, rm_one, 16, FTW_DEPTH | FTW_PHYS);
	return 0;
}

uint8_t *tu_read_file(const char *path, size_t *len_r)
{
	FILE *f = fopen(path, "rb");
	uint8_t *data = NULL;
	size_t len = 0, cap = 0, n;

	if (f == NULL)
		return NULL;
	do {
		if (len + 65536 > cap) {
			cap = (cap + 65536) * 2;
			data = realloc(data, cap + 1);
			if (data == NULL)
				abort();
		}
		n = fread(data + len, 1, cap - len, f);
		len += n;
	} while (n > 0);
	fclose(f);
	if (data == NULL && (data = malloc(1)) == NULL)
		abort();
	data[len] = '\0';
	*len_r = len;
	return data;
}

int tu_write_file(const char *path, const void *data, size_t len)
{
	FILE *f = fopen(path, "wb");
	int ret = 0;

	if (f == NULL)
		return -1;
	if (fwrite(data, 1, len, f) != len)
		ret = -1;
	if (fclose(f) != 0)
		ret = -1;
	return ret;
}

char *tu_source_path(const char *rel)
{
	const char *src = getenv("SEALMAIL_SOURCE_DIR");
	char *path;

	if (asprintf(&path, "%s/%s", src != NULL ? src : "..", rel) < 0)
		abort();
	return path;
}

void tu_log_silent(enum eng_log_level level, const char *msg)
{
	(void)level;
	(void)msg;
}

static uint64_t rng_state = 0x9e3779b97f4a7c15ull;

void tu_rng_seed(uint64_t seed)
{
	rng_state = seed;
}

uint64_t tu_rng(void)
{
	rng_state ^= rng_state << 13;
	rng_state ^= rng_state >> 7;
	rng_state ^= rng_state << 17;
	return rng_state;
}

size_t tu_split_piece(enum tu_split how, size_t left, size_t max)
{
	if (how == TU_SPLIT_BYTES)
		return 1;
	if (how == TU_SPLIT_RANDOM)
		return 1 + (size_t)(tu_rng() % (left < max ? left : max));
	return left;
}

char *tu_split_same(tu_transcript_fn *fn, const void *ctx, const char *in,
		    size_t len, int rounds)
{
	eng_buf whole = ENG_BUF_INIT;

	fn(ctx, in, len, TU_SPLIT_WHOLE, &whole);
	for (int round = 0; round < rounds; round++) {
		eng_buf other = ENG_BUF_INIT;

		fn(ctx, in, len, round == 0 ? TU_SPLIT_BYTES : TU_SPLIT_RANDOM,
		   &other);
		if (strcmp(whole.data != NULL ? whole.data : "",
			   other.data != NULL ? other.data : "") != 0) {
			fprintf(stderr, "whole:\n%s\nsplit %d:\n%s\n", whole.data,
				round, other.data);
			fail();
		}
		eng_buf_free(&other);
	}
	return whole.data != NULL ? whole.data : strdup("");
}
