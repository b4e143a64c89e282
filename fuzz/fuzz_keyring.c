/*
 * Keyring decoder: any bytes go to eng_keyring_decode(), which must refuse
 * them cleanly or accept them. What it accepts must encode back to the very
 * same bytes (the format has one encoding per keyring), list its slots, and,
 * when every slot's Argon2id cost is tiny (the seeds: password "fuzz",
 * libsodium's minimum cost), go through unlock, whose result must be a
 * defined error or an MK that opens the secret key.
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "eng_error.h"
#include "keys.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

/* Offsets from docs/crypto.md: the header, then per slot. */
#define HEADER_BYTES 142
#define SLOT_FIXED 26
#define SLOT_TAIL 72

static uint64_t le(const uint8_t *p, int n)
{
	uint64_t v = 0;

	while (n-- > 0)
		v = (v << 8) | p[n];
	return v;
}

/* Decode succeeded, so the structure is sound; is every cost cheap? */
static int cheap(const uint8_t *data, size_t size)
{
	size_t off = HEADER_BYTES, n = data[HEADER_BYTES - 1];

	for (size_t i = 0; i < n; i++) {
		if (off + SLOT_FIXED > size)
			return 0;
		if (le(data + off + 5, 4) > 2 || le(data + off + 9, 8) > 64 * 1024)
			return 0;
		off += SLOT_FIXED + data[off + 25] + SLOT_TAIL;
	}
	return 1;
}

static void quiet(enum eng_log_level level, const char *msg)
{
	(void)level;
	(void)msg;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	eng_keyring *kr = NULL;
	eng_slot_info *slots = NULL;
	uint8_t *blob = NULL, *mk = NULL, *sk = NULL;
	size_t len = 0, n = 0;
	uint32_t slot = 0;
	int ret;

	eng_set_log(quiet);
	if (eng_crypto_init() != 0)
		abort();
	ret = eng_keyring_decode(data, size, &kr);
	if (ret != 0) {
		if (kr != NULL || (ret != ENG_EMALFORMED && ret != ENG_ENEWER))
			abort();
		return 0;
	}
	if (eng_keyring_encode(kr, &blob, &len) != 0 || len != size ||
	    memcmp(blob, data, size) != 0)
		abort();
	free(blob);
	if (eng_keyring_slots(kr, &slots, &n) != 0 || n == 0 ||
	    n > ENG_KEYRING_MAX_SLOTS)
		abort();
	for (size_t i = 0; i < n; i++) {
		if (strlen(slots[i].label) == 0 ||
		    strlen(slots[i].label) > ENG_SLOT_LABEL_MAX)
			abort();
	}
	free(slots);
	if (cheap(data, size)) {
		ret = eng_keyring_unlock(kr, "fuzz", 4, &mk, &slot);
		if (ret == 0) {
			/* An MK that unlocks always opens the key pair. */
			if (eng_keyring_secret_key(kr, mk, &sk) != 0)
				abort();
			eng_secret_free(&sk);
			eng_secret_free(&mk);
		} else if (mk != NULL ||
			   (ret != ENG_EAUTH && ret != ENG_ECORRUPT)) {
			abort();
		}
	}
	eng_keyring_free(&kr);
	return 0;
}
