/*
 * Spool reader: the input is a spool entry as it might lie on disk, read
 * with a fixed test key pair. Layout of an input: 16 bytes of entry id
 * (the file is named by its hex), then the file's bytes. The seeds are
 * valid entries sealed to the fixed public key, so mutations reach every
 * record of the stream. The reader must return data and errors, never
 * crash, and never report a verified end (0) for a file it refused.
 */
#include <sodium.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "eng_error.h"
#include "spool.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static char dir[] = "/tmp/sealmail-fuzz-spool-XXXXXX";
static uint8_t pk[crypto_box_PUBLICKEYBYTES], sk[crypto_box_SECRETKEYBYTES];

static void quiet(enum eng_log_level level, const char *msg)
{
	(void)level;
	(void)msg;
}

/* Every input's file is unlinked after use, so the directory is empty. */
static void remove_dir(void)
{
	rmdir(dir);
}

static void init_once(void)
{
	static int done;
	uint8_t seed[crypto_box_SEEDBYTES];

	if (done)
		return;
	eng_set_log(quiet);
	if (sodium_init() < 0 || mkdtemp(dir) == NULL)
		abort();
	atexit(remove_dir);
	/* The fixed test key pair that the seeds are sealed to. */
	memset(seed, 0x42, sizeof(seed));
	crypto_box_seed_keypair(pk, sk, seed);
	done = 1;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	char id[ENG_SPOOL_ID_LEN + 1], path[sizeof(dir) + ENG_SPOOL_ID_LEN + 8];
	eng_spool_reader *r = NULL;
	uint8_t buf[70000];
	size_t want = 1;
	FILE *f;
	long n;
	int ret;

	init_once();
	if (size < 16)
		return 0;
	sodium_bin2hex(id, sizeof(id), data, 16);
	snprintf(path, sizeof(path), "%s/%s.msg", dir, id);
	if ((f = fopen(path, "wb")) == NULL)
		abort();
	if (fwrite(data + 16, 1, size - 16, f) != size - 16 || fclose(f) != 0)
		abort();
	ret = eng_spool_reader_open(dir, id, sk, &r);
	if (ret == 0) {
		eng_spool_reader_meta(r, NULL, NULL);
		/* Varying read sizes, around and across the 64 KiB chunks. */
		do {
			n = eng_spool_read(r, buf, want);
			if (n > (long)want)
				abort();
			want = (want * 13 + 7) % sizeof(buf) + 1;
		} while (n > 0);
		if (n != 0 && n != ENG_ECORRUPT && n != ENG_EIO)
			abort();
		/* Errors are sticky. */
		if (n < 0 && eng_spool_read(r, buf, 1) != n)
			abort();
		eng_spool_reader_free(&r);
	} else if (r != NULL || (ret != ENG_ECORRUPT && ret != ENG_EIO)) {
		abort();
	}
	unlink(path);
	return 0;
}
