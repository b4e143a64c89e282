/* Key slots: round trips, wrong passwords, app passwords, tampering. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <cmocka.h>

#include <sodium.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "eng_error.h"
#include "keys.h"
#include "testutil.h"

/* libsodium's minimum Argon2id cost: fast, for tests only. */
static const eng_kdf_params fast = {
	crypto_pwhash_argon2id_OPSLIMIT_MIN, crypto_pwhash_argon2id_MEMLIMIT_MIN
};

#define PW(s) (s), (sizeof(s) - 1)

/* Counts engine log lines instead of printing them (tampering logs a lot). */
static int log_lines;

static void count_log(enum eng_log_level level, const char *msg)
{
	(void)level;
	(void)msg;
	log_lines++;
}

static int setup(void **state)
{
	(void)state;
	eng_set_log(count_log);
	return eng_crypto_init();
}

static void create_fast(const char *pw, size_t len, eng_keyring **kr,
			uint8_t **mk)
{
	assert_int_equal(eng_keyring_create(pw, len, fast, kr, mk), 0);
	assert_non_null(*kr);
	assert_non_null(*mk);
}

static void test_create_unlock(void **state)
{
	eng_keyring *kr = NULL;
	uint8_t *mk = NULL, *mk2 = NULL;
	uint32_t slot = 0;
	eng_slot_info *info = NULL;
	size_t n = 0;

	(void)state;
	create_fast(PW("correct horse"), &kr, &mk);
	assert_int_equal(eng_keyring_unlock(kr, PW("correct horse"), &mk2, &slot), 0);
	assert_int_equal(slot, 1);
	assert_memory_equal(mk, mk2, ENG_MK_BYTES);
	assert_int_equal(eng_keyring_slots(kr, &info, &n), 0);
	assert_int_equal(n, 1);
	assert_int_equal(info[0].id, 1);
	assert_string_equal(info[0].label, "main");
	assert_true(info[0].created > 0);
	free(info);
	eng_secret_free(&mk);
	eng_secret_free(&mk2);
	assert_null(mk);
	eng_secret_free(&mk);  /* accepts NULL */
	eng_keyring_free(&kr);
	assert_null(kr);
	eng_keyring_free(&kr);
}

static void test_wrong_password(void **state)
{
	eng_keyring *kr = NULL;
	uint8_t *mk = NULL, *mk2 = NULL;

	(void)state;
	create_fast(PW("secret"), &kr, &mk);
	assert_int_equal(eng_keyring_unlock(kr, PW("Secret"), &mk2, NULL), ENG_EAUTH);
	assert_null(mk2);
	assert_int_equal(eng_keyring_unlock(kr, PW("secre"), &mk2, NULL), ENG_EAUTH);
	assert_int_equal(eng_keyring_unlock(kr, "secret\0", 7, &mk2, NULL), ENG_EAUTH);
	assert_null(mk2);
	eng_secret_free(&mk);
	eng_keyring_free(&kr);
}

static void test_password_bounds(void **state)
{
	eng_keyring *kr = NULL;
	uint8_t *mk = NULL, *mk2 = NULL;
	char *big = malloc(ENG_PASSWORD_MAX + 1);
	eng_kdf_params bad = fast;

	(void)state;
	memset(big, 0xff, ENG_PASSWORD_MAX + 1);
	assert_int_equal(eng_keyring_create("", 0, fast, &kr, &mk), ENG_EINVAL);
	assert_int_equal(eng_keyring_create(big, ENG_PASSWORD_MAX + 1, fast,
					    &kr, &mk), ENG_EINVAL);
	bad.memlimit_bytes = 1024;
	assert_int_equal(eng_keyring_create(PW("x"), bad, &kr, &mk), ENG_EINVAL);
	bad = fast;
	bad.opslimit = 0;
	assert_int_equal(eng_keyring_create(PW("x"), bad, &kr, &mk), ENG_EINVAL);
	assert_null(kr);
	/* Any bytes, including NUL and non-UTF-8, up to the maximum. */
	big[10] = '\0';
	create_fast(big, ENG_PASSWORD_MAX, &kr, &mk);
	assert_int_equal(eng_keyring_unlock(kr, big, ENG_PASSWORD_MAX, &mk2, NULL), 0);
	assert_memory_equal(mk, mk2, ENG_MK_BYTES);
	eng_secret_free(&mk2);
	assert_int_equal(eng_keyring_unlock(kr, big, ENG_PASSWORD_MAX - 1, &mk2,
					    NULL), ENG_EAUTH);
	assert_int_equal(eng_keyring_unlock(kr, "", 0, &mk2, NULL), ENG_EINVAL);
	free(big);
	eng_secret_free(&mk);
	eng_keyring_free(&kr);
}

static void test_app_passwords(void **state)
{
	eng_keyring *kr = NULL;
	uint8_t *mk = NULL, *mk2 = NULL;
	uint8_t wrong[ENG_MK_BYTES];
	uint32_t id = 0, got = 0;
	eng_slot_info *info = NULL;
	size_t n = 0;
	char pw[32], label[32];

	(void)state;
	create_fast(PW("main password"), &kr, &mk);
	for (int i = 0; i < 5; i++) {
		snprintf(pw, sizeof(pw), "app password %d", i);
		snprintf(label, sizeof(label), "phone %d", i);
		assert_int_equal(eng_keyring_add_slot(kr, mk, pw, strlen(pw),
						      label, &id), 0);
		assert_int_equal(id, (uint32_t)i + 2);
	}
	for (int i = 0; i < 5; i++) {
		snprintf(pw, sizeof(pw), "app password %d", i);
		assert_int_equal(eng_keyring_unlock(kr, pw, strlen(pw), &mk2,
						    &got), 0);
		assert_int_equal(got, (uint32_t)i + 2);
		assert_memory_equal(mk, mk2, ENG_MK_BYTES);
		eng_secret_free(&mk2);
	}
	assert_int_equal(eng_keyring_unlock(kr, PW("main password"), &mk2, &got), 0);
	assert_int_equal(got, 1);
	eng_secret_free(&mk2);
	assert_int_equal(eng_keyring_slots(kr, &info, &n), 0);
	assert_int_equal(n, 6);
	assert_string_equal(info[3].label, "phone 2");
	free(info);

	/* Bad labels and a wrong MK are refused. */
	assert_int_equal(eng_keyring_add_slot(kr, mk, PW("x"), "", NULL), ENG_EINVAL);
	assert_int_equal(eng_keyring_add_slot(kr, mk, PW("x"), "tab\there", NULL),
			 ENG_EINVAL);
	assert_int_equal(eng_keyring_add_slot(kr, mk, PW("x"),
		"0123456789012345678901234567890123456789012345678901234567890123X",
		NULL), ENG_EINVAL);
	memcpy(wrong, mk, sizeof(wrong));
	wrong[0] ^= 1;
	assert_int_equal(eng_keyring_add_slot(kr, wrong, PW("x"), "evil", NULL),
			 ENG_EAUTH);
	assert_int_equal(eng_keyring_unlock(kr, PW("x"), &mk2, NULL), ENG_EAUTH);

	/* Up to the slot limit, not beyond. */
	while (n < ENG_KEYRING_MAX_SLOTS) {
		assert_int_equal(eng_keyring_add_slot(kr, mk, PW("filler"),
						      "filler", NULL), 0);
		n++;
	}
	assert_int_equal(eng_keyring_add_slot(kr, mk, PW("one more"), "more",
					      NULL), ENG_ELIMIT);
	/* 64 slots, still one Argon2id run: the last slot's password opens. */
	assert_int_equal(eng_keyring_unlock(kr, PW("app password 4"), &mk2, &got), 0);
	assert_int_equal(got, 6);
	eng_secret_free(&mk2);
	eng_secret_free(&mk);
	eng_keyring_free(&kr);
}

static void test_change_password(void **state)
{
	eng_keyring *kr = NULL;
	uint8_t *mk = NULL, *mk2 = NULL;
	eng_kdf_params stronger = { 2, 16 * 1024 };

	(void)state;
	create_fast(PW("old password"), &kr, &mk);
	assert_int_equal(eng_keyring_change_password(kr, mk, 1, PW("new password")), 0);
	assert_int_equal(eng_keyring_unlock(kr, PW("old password"), &mk2, NULL),
			 ENG_EAUTH);
	assert_int_equal(eng_keyring_unlock(kr, PW("new password"), &mk2, NULL), 0);
	assert_memory_equal(mk, mk2, ENG_MK_BYTES);
	eng_secret_free(&mk2);
	assert_int_equal(eng_keyring_change_password(kr, mk, 7, PW("x")),
			 ENG_ENOTFOUND);

	/* A raised cost applies at the next change; mixed costs still unlock. */
	assert_int_equal(eng_keyring_add_slot(kr, mk, PW("app"), "app", NULL), 0);
	eng_keyring_set_params(kr, stronger);
	assert_int_equal(eng_keyring_change_password(kr, mk, 1, PW("newer")), 0);
	assert_int_equal(eng_keyring_unlock(kr, PW("newer"), &mk2, NULL), 0);
	assert_memory_equal(mk, mk2, ENG_MK_BYTES);
	eng_secret_free(&mk2);
	assert_int_equal(eng_keyring_unlock(kr, PW("app"), &mk2, NULL), 0);
	assert_memory_equal(mk, mk2, ENG_MK_BYTES);
	eng_secret_free(&mk2);
	eng_secret_free(&mk);
	eng_keyring_free(&kr);
}

static void test_remove_slot(void **state)
{
	eng_keyring *kr = NULL;
	uint8_t *mk = NULL, *mk2 = NULL;
	uint32_t app = 0;

	(void)state;
	create_fast(PW("main"), &kr, &mk);
	assert_int_equal(eng_keyring_add_slot(kr, mk, PW("app"), "laptop", &app), 0);
	assert_int_equal(eng_keyring_remove_slot(kr, app), 0);
	assert_int_equal(eng_keyring_unlock(kr, PW("app"), &mk2, NULL), ENG_EAUTH);
	assert_int_equal(eng_keyring_remove_slot(kr, app), ENG_ENOTFOUND);
	assert_int_equal(eng_keyring_remove_slot(kr, 1), ENG_EPERM);
	assert_int_equal(eng_keyring_unlock(kr, PW("main"), &mk2, NULL), 0);
	eng_secret_free(&mk2);
	/* The main slot can go once another exists. */
	assert_int_equal(eng_keyring_add_slot(kr, mk, PW("app2"), "tablet", &app), 0);
	assert_int_equal(eng_keyring_remove_slot(kr, 1), 0);
	assert_int_equal(eng_keyring_unlock(kr, PW("main"), &mk2, NULL), ENG_EAUTH);
	assert_int_equal(eng_keyring_unlock(kr, PW("app2"), &mk2, NULL), 0);
	eng_secret_free(&mk2);
	eng_secret_free(&mk);
	eng_keyring_free(&kr);
}

static void test_encode_decode(void **state)
{
	eng_keyring *kr = NULL, *kr2 = NULL;
	uint8_t *mk = NULL, *mk2 = NULL, *blob = NULL, *blob2 = NULL;
	size_t len = 0, len2 = 0;
	uint32_t got = 0;

	(void)state;
	create_fast(PW("pw"), &kr, &mk);
	assert_int_equal(eng_keyring_add_slot(kr, mk, PW("app"), "mail app", NULL), 0);
	assert_int_equal(eng_keyring_encode(kr, &blob, &len), 0);
	assert_memory_equal(blob, "SMKR\x01", 5);
	assert_int_equal(eng_keyring_decode(blob, len, &kr2), 0);
	assert_int_equal(eng_keyring_encode(kr2, &blob2, &len2), 0);
	assert_int_equal(len, len2);
	assert_memory_equal(blob, blob2, len);
	assert_memory_equal(eng_keyring_public_key(kr),
			    eng_keyring_public_key(kr2), ENG_PK_BYTES);
	assert_int_equal(eng_keyring_unlock(kr2, PW("app"), &mk2, &got), 0);
	assert_int_equal(got, 2);
	assert_memory_equal(mk, mk2, ENG_MK_BYTES);
	eng_secret_free(&mk2);

	/* Newer version, bad magic, trailing byte. */
	blob[4] = 2;
	assert_int_equal(eng_keyring_decode(blob, len, &kr2), ENG_ENEWER);
	blob[4] = 0;
	assert_int_equal(eng_keyring_decode(blob, len, &kr2), ENG_EMALFORMED);
	blob[4] = 1;
	blob[0] = 'X';
	assert_int_equal(eng_keyring_decode(blob, len, &kr2), ENG_EMALFORMED);
	blob[0] = 'S';
	blob2 = realloc(blob2, len + 1);
	blob2[len] = 0;
	eng_keyring_free(&kr2);
	assert_int_equal(eng_keyring_decode(blob2, len + 1, &kr2), ENG_EMALFORMED);
	assert_null(kr2);
	/* Every truncation is refused. */
	for (size_t cut = 0; cut < len; cut++)
		assert_int_equal(eng_keyring_decode(blob, cut, &kr2), ENG_EMALFORMED);
	assert_null(kr2);
	free(blob);
	free(blob2);
	eng_secret_free(&mk);
	eng_keyring_free(&kr);
}

/*
 * With a single slot every byte of the encoding is either checked by
 * decode, or bound into a key derivation, an AEAD tag or the key-pair
 * check, so flipping any bit must make decode or unlock fail.
 */
static void test_tamper_every_byte(void **state)
{
	eng_keyring *kr = NULL, *kr2 = NULL;
	uint8_t *mk = NULL, *mk2 = NULL, *blob = NULL;
	size_t len = 0;
	int decoded = 0;

	(void)state;
	create_fast(PW("pw"), &kr, &mk);
	assert_int_equal(eng_keyring_encode(kr, &blob, &len), 0);
	for (size_t i = 0; i < len; i++) {
		for (int bit = 0; bit < 8; bit += 3) {
			int ret;

			blob[i] ^= (uint8_t)(1u << bit);
			ret = eng_keyring_decode(blob, len, &kr2);
			if (ret == 0) {
				decoded++;
				ret = eng_keyring_unlock(kr2, PW("pw"), &mk2, NULL);
				assert_true(ret == ENG_EAUTH || ret == ENG_ECORRUPT);
				assert_null(mk2);
				eng_keyring_free(&kr2);
			} else {
				assert_true(ret == ENG_EMALFORMED || ret == ENG_ENEWER);
			}
			blob[i] ^= (uint8_t)(1u << bit);
		}
	}
	/* Most bytes are ciphertext and decode fine: the loop tested unlock. */
	assert_true(decoded > (int)len);
	/* A swapped public key or wrapped secret key was reported. */
	assert_true(log_lines > 0);
	free(blob);
	eng_secret_free(&mk);
	eng_keyring_free(&kr);
}

/* With several slots, tampering may leave other slots usable but never
 * yields a wrong MK. */
static void test_tamper_multi_slot(void **state)
{
	eng_keyring *kr = NULL, *kr2 = NULL;
	uint8_t *mk = NULL, *mk2 = NULL, *blob = NULL;
	size_t len = 0;

	(void)state;
	create_fast(PW("pw"), &kr, &mk);
	assert_int_equal(eng_keyring_add_slot(kr, mk, PW("app"), "app", NULL), 0);
	assert_int_equal(eng_keyring_encode(kr, &blob, &len), 0);
	for (size_t i = 0; i < len; i++) {
		blob[i] ^= 0x80;
		if (eng_keyring_decode(blob, len, &kr2) == 0) {
			if (eng_keyring_unlock(kr2, PW("app"), &mk2, NULL) == 0)
				assert_memory_equal(mk, mk2, ENG_MK_BYTES);
			eng_secret_free(&mk2);
			eng_keyring_free(&kr2);
		}
		blob[i] ^= 0x80;
	}
	free(blob);
	eng_secret_free(&mk);
	eng_keyring_free(&kr);
}

static void test_garbage(void **state)
{
	eng_keyring *kr = NULL;
	uint8_t junk[512] = { 0 };

	(void)state;
	assert_int_equal(eng_keyring_decode(junk, 0, &kr), ENG_EMALFORMED);
	for (int i = 0; i < 200; i++) {
		size_t len = randombytes_uniform(sizeof(junk));

		randombytes_buf(junk, sizeof(junk));
		if (i % 2 == 0 && len >= 5)
			memcpy(junk, "SMKR\x01", 5);
		assert_int_equal(eng_keyring_decode(junk, len, &kr) < 0, 1);
		assert_null(kr);
	}
}

static void test_key_pair(void **state)
{
	eng_keyring *kr = NULL;
	uint8_t *mk = NULL, *sk = NULL;
	uint8_t wrong[ENG_MK_BYTES];
	const char msg[] = "sealed to the alias";
	uint8_t sealed[sizeof(msg) + crypto_box_SEALBYTES];
	char opened[sizeof(msg)];

	(void)state;
	create_fast(PW("pw"), &kr, &mk);
	assert_int_equal(eng_keyring_secret_key(kr, mk, &sk), 0);
	assert_int_equal(crypto_box_seal(sealed, (const uint8_t *)msg,
					 sizeof(msg),
					 eng_keyring_public_key(kr)), 0);
	assert_int_equal(crypto_box_seal_open((uint8_t *)opened, sealed,
					      sizeof(sealed),
					      eng_keyring_public_key(kr), sk), 0);
	assert_string_equal(opened, msg);
	eng_secret_free(&sk);
	memcpy(wrong, mk, sizeof(wrong));
	wrong[31] ^= 0x40;
	assert_int_equal(eng_keyring_secret_key(kr, wrong, &sk), ENG_EAUTH);
	assert_null(sk);
	eng_secret_free(&mk);
	eng_keyring_free(&kr);
}

static void test_db_key(void **state)
{
	uint8_t *mk1 = eng_secret_new(ENG_MK_BYTES);
	uint8_t *mk2 = eng_secret_new(ENG_MK_BYTES);
	uint8_t *a = NULL, *b = NULL, *c = NULL;

	(void)state;
	randombytes_buf(mk1, ENG_MK_BYTES);
	randombytes_buf(mk2, ENG_MK_BYTES);
	assert_int_equal(eng_derive_db_key(mk1, &a), 0);
	assert_int_equal(eng_derive_db_key(mk1, &b), 0);
	assert_int_equal(eng_derive_db_key(mk2, &c), 0);
	assert_memory_equal(a, b, ENG_DBKEY_BYTES);
	assert_memory_not_equal(a, c, ENG_DBKEY_BYTES);
	assert_memory_not_equal(a, mk1, ENG_DBKEY_BYTES);
	/* The documented construction, recomputed independently. */
	{
		uint8_t expect[ENG_DBKEY_BYTES];

		crypto_kdf_derive_from_key(expect, sizeof(expect), 1,
					   "sm-dbkey", mk1);
		assert_memory_equal(a, expect, sizeof(expect));
		sodium_memzero(expect, sizeof(expect));
	}
	eng_secret_free(&a);
	eng_secret_free(&b);
	eng_secret_free(&c);
	eng_secret_free(&mk1);
	eng_secret_free(&mk2);
}

/* The production cost once: 64 MiB, t=3. */
static void test_default_params(void **state)
{
	eng_keyring *kr = NULL;
	uint8_t *mk = NULL, *mk2 = NULL, *blob = NULL;
	eng_kdf_params p = eng_kdf_default();
	size_t len = 0;

	(void)state;
	assert_int_equal(p.opslimit, 3);
	assert_int_equal(p.memlimit_bytes, 64u * 1024 * 1024);
	assert_int_equal(eng_keyring_create(PW("production"), p, &kr, &mk), 0);
	assert_int_equal(eng_keyring_unlock(kr, PW("production"), &mk2, NULL), 0);
	assert_memory_equal(mk, mk2, ENG_MK_BYTES);
	eng_secret_free(&mk2);
	assert_int_equal(eng_keyring_encode(kr, &blob, &len), 0);
	/* slot 1's memlimit field, little-endian, right after id, alg, ops */
	assert_int_equal(blob[142 + 4], 2);
	assert_int_equal(blob[142 + 5], 3);
	assert_int_equal(blob[142 + 9 + 3], 4);   /* 0x04000000 = 64 MiB */
	free(blob);
	eng_secret_free(&mk);
	eng_keyring_free(&kr);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_create_unlock),
		cmocka_unit_test(test_wrong_password),
		cmocka_unit_test(test_password_bounds),
		cmocka_unit_test(test_app_passwords),
		cmocka_unit_test(test_change_password),
		cmocka_unit_test(test_remove_slot),
		cmocka_unit_test(test_encode_decode),
		cmocka_unit_test(test_tamper_every_byte),
		cmocka_unit_test(test_tamper_multi_slot),
		cmocka_unit_test(test_garbage),
		cmocka_unit_test(test_key_pair),
		cmocka_unit_test(test_db_key),
		cmocka_unit_test(test_default_params),
	};

	return cmocka_run_group_tests(tests, setup, NULL);
}
