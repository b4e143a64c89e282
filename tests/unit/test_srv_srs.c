/*
 * SRS (sqlite-server/srv_srs.h): forward for a plain sender (checked
 * against vectors computed with Python's hmac module, an independent
 * implementation of the same HMAC-SHA1/base64/base32 rules), the null
 * sender, our own domain, SRS0 -> SRS1 and SRS1 -> SRS1 re-wrapping as
 * libsrs2 does; reverse: round trips, case-insensitive hashes, tampering,
 * wrong secret, age (21 days, future stamps, the 1024-day wrap), and
 * malformed addresses.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <ctype.h>
#include <stdlib.h>
#include <string.h>

#include "eng_error.h"
#include "srv_srs.h"

static const char secret_text[] =
	"0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";
#define SECRET ((const uint8_t *)secret_text), (sizeof(secret_text) - 1)
/* 2023-11-14: day 19675, 219 mod 1024 = "G3" in base32. */
#define NOW ((int64_t)1700000000)
#define DAY ((int64_t)86400)

static char *fwd(const char *sender, const char *domain, int64_t now)
{
	char *out = NULL;

	assert_int_equal(srv_srs_forward(SECRET, sender, domain, now, &out), 0);
	assert_non_null(out);
	return out;
}

static int rev(const char *addr, int64_t now, char **out_r)
{
	return srv_srs_reverse(SECRET, addr, now, out_r);
}

static void test_forward_vectors(void **state)
{
	char *s;

	(void)state;
	/* Python: base64(hmac_sha1(secret, "g3orig.examplealice.b"))[:4] */
	s = fwd("Alice.B@Orig.Example", "fwd.example", NOW);
	assert_string_equal(s, "SRS0=RNWH=G3=Orig.Example=Alice.B@fwd.example");
	free(s);
	/* An SRS0 sender from hop1 becomes SRS1 naming hop1. */
	s = fwd("SRS0=ABCD=G3=orig.example=alice@hop1.example", "fwd.example", NOW);
	assert_string_equal(s, "SRS1=gfX7=hop1.example==ABCD=G3=orig.example=alice@fwd.example");
	free(s);
	/* The null sender stays null; our own domain is not rewritten. */
	s = fwd("", "fwd.example", NOW);
	assert_string_equal(s, "");
	free(s);
	s = fwd("bob@FWD.example", "fwd.example", NOW);
	assert_string_equal(s, "bob@FWD.example");
	free(s);
}

static void test_round_trip(void **state)
{
	static const char *const senders[] = {
		"alice@orig.example", "a=b+c@orig.example", "\"q x\"@orig.example",
		"x@[192.0.2.1]", "SRS0@orig.example", "srs1x@orig.example",
	};
	(void)state;
	for (size_t i = 0; i < sizeof(senders) / sizeof(senders[0]); i++) {
		char *s = fwd(senders[i], "fwd.example", NOW), *back = NULL, *lc;

		assert_true(strncmp(s, "SRS0=", 5) == 0);
		assert_int_equal(rev(s, NOW, &back), 0);
		assert_string_equal(back, senders[i]);
		free(back);
		/* Some MTAs lower-case the local part: still accepted. */
		lc = strdup(s);
		for (char *c = lc; *c != '\0'; c++)
			*c = (char)tolower((unsigned char)*c);
		assert_int_equal(rev(lc, NOW + 3 * DAY, &back), 0);
		assert_int_equal(strcasecmp(back, senders[i]), 0);
		free(back);
		free(lc);
		free(s);
	}
}

static void test_reverse_checks(void **state)
{
	char *s = fwd("alice@orig.example", "fwd.example", NOW), *t, *back = NULL;
	char *wrong = NULL;

	(void)state;
	/* Age: 21 days is fine, 22 is not, a future stamp is not. */
	assert_int_equal(rev(s, NOW + 21 * DAY, &back), 0);
	free(back);
	assert_int_equal(rev(s, NOW + 22 * DAY, &back), ENG_ELIMIT);
	assert_null(back);
	assert_int_equal(rev(s, NOW - DAY, &back), ENG_ELIMIT);
	/* Tampered user, host or stamp: the hash no longer matches. */
	t = strdup(s);
	t[strlen("SRS0=XXXX=G3=orig.example=")] = 'z';  /* not a case change */
	assert_int_equal(rev(t, NOW, &back), ENG_EAUTH);
	free(t);
	t = strdup(s);
	t[strlen("SRS0=XXXX=G3=o")] = 'x';
	assert_int_equal(rev(t, NOW, &back), ENG_EAUTH);
	free(t);
	t = strdup(s);
	t[strlen("SRS0=XXXX=G")] = '4';
	assert_int_equal(rev(t, NOW, &back), ENG_EAUTH);
	free(t);
	/* Another secret's hash. */
	assert_int_equal(srv_srs_forward((const uint8_t *)"other", 5, "alice@orig.example",
					 "fwd.example", NOW, &wrong), 0);
	assert_int_equal(rev(wrong, NOW, &back), ENG_EAUTH);
	free(wrong);
	free(s);
	/* Across the 1024-day wrap of the stamp. */
	{
		int64_t wrap = (int64_t)(1024 * 20 - 1) * DAY;   /* day 1023 */

		s = fwd("alice@orig.example", "fwd.example", wrap);
		assert_int_equal(rev(s, wrap + 2 * DAY, &back), 0);
		assert_string_equal(back, "alice@orig.example");
		free(back);
		free(s);
	}
	/* Not SRS, or broken. */
	assert_int_equal(rev("alice@orig.example", NOW, &back), ENG_EINVAL);
	assert_int_equal(rev("SRS0=abcd=G3=orig.example@fwd.example", NOW, &back), ENG_EINVAL);
	assert_int_equal(rev("SRS0=abcd=G!=h=u@fwd.example", NOW, &back), ENG_EINVAL);
	assert_int_equal(rev("SRS1=abcd@fwd.example", NOW, &back), ENG_EINVAL);
	assert_int_equal(rev("SRS1=abcd=hop=x@fwd.example", NOW, &back), ENG_EINVAL);
	assert_int_equal(rev("noat", NOW, &back), ENG_EINVAL);
	assert_int_equal(srv_srs_forward(SECRET, "noat", "fwd.example", NOW, &back), ENG_EINVAL);
	assert_int_equal(srv_srs_forward(SECRET, "@orig", "fwd.example", NOW, &back), ENG_EINVAL);
	assert_int_equal(srv_srs_forward(SECRET, "a@", "fwd.example", NOW, &back), ENG_EINVAL);
	assert_int_equal(srv_srs_forward(SECRET, "a@b", "", NOW, &back), ENG_EINVAL);
	assert_int_equal(srv_srs_forward(SECRET, "SRS1=x@hop2", "fwd.example", NOW, &back),
			 ENG_EINVAL);
	assert_null(back);
}

/* Two forwarders in a row, then the bounce walks back. */
static void test_srs1_chain(void **state)
{
	static const char hop1_secret[] = "hop1 secret";
	char *s0 = NULL, *s1, *s1b, *back = NULL, *orig = NULL;

	(void)state;
	/* hop1.example forwards to us, with its own secret. */
	assert_int_equal(srv_srs_forward((const uint8_t *)hop1_secret, sizeof(hop1_secret) - 1,
					 "alice@orig.example", "hop1.example", NOW, &s0), 0);
	/* We forward on: SRS1 naming hop1. */
	s1 = fwd(s0, "fwd.example", NOW);
	assert_true(strncmp(s1, "SRS1=", 5) == 0);
	assert_non_null(strstr(s1, "=hop1.example==") );
	assert_true(strlen(s1) > strlen("@fwd.example") &&
		    strcmp(s1 + strlen(s1) - strlen("@fwd.example"), "@fwd.example") == 0);
	/* Forwarded once more by us (another of our domains): still one
	 * SRS1 layer naming hop1, hashed again. */
	s1b = fwd(s1, "fwd2.example", NOW);
	assert_true(strncmp(s1b, "SRS1=", 5) == 0);
	assert_non_null(strstr(s1b, "=hop1.example==") );
	assert_int_equal(rev(s1b, NOW, &back), 0);
	assert_string_equal(back, s0);
	free(back);
	/* The bounce to s1 goes to hop1 as its SRS0, which hop1 opens. */
	assert_int_equal(rev(s1, NOW + 30 * DAY, &back), 0);  /* SRS1 has no age */
	assert_string_equal(back, s0);
	assert_int_equal(srv_srs_reverse((const uint8_t *)hop1_secret, sizeof(hop1_secret) - 1,
					 back, NOW, &orig), 0);
	assert_string_equal(orig, "alice@orig.example");
	free(back);
	free(orig);
	/* A forged SRS1 (hash for another hop) is refused. */
	s1[5] = s1[5] == 'A' ? 'B' : 'A';
	assert_int_equal(rev(s1, NOW, &back), ENG_EAUTH);
	free(s0);
	free(s1);
	free(s1b);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_forward_vectors),
		cmocka_unit_test(test_round_trip),
		cmocka_unit_test(test_reverse_checks),
		cmocka_unit_test(test_srs1_chain),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
