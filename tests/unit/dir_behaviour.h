/*
 * The directory's behaviour, the same for every backend. Included by
 * test_dir.c (embedded SQLite) and test_dir_mongo.c (MongoDB), each of
 * which defines, before including this file:
 *
 *   static int be_open(void **be_r, dir **d_r);
 *       a fresh, empty directory; *be_r is the backend's test state
 *   static int be_reopen(void *be, dir **d_r);
 *       the same directory opened again (after dir_close)
 *   static void be_destroy(void *be);
 *       removes the store and frees be
 *
 * and then lists DIR_BEHAVIOUR_TESTS in its cmocka group.
 */
#ifndef DIR_BEHAVIOUR_H
#define DIR_BEHAVIOUR_H

#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "dir.h"
#include "eng_error.h"
#include "keys.h"

struct dfix {
	void *be;
	dir *d;
};

/* A real keyring (cheap Argon2id cost) and its encoding. */
struct test_keyring {
	eng_keyring *kr;
	uint8_t *mk;
	uint8_t *blob;
	size_t len;
	uint8_t pk[ENG_PK_BYTES];
};

static const eng_kdf_params fast_kdf = { 1, 8 * 1024 };

static void tk_make(struct test_keyring *tk, const char *password)
{
	memset(tk, 0, sizeof(*tk));
	assert_int_equal(eng_keyring_create(password, strlen(password), fast_kdf,
					    &tk->kr, &tk->mk), 0);
	assert_int_equal(eng_keyring_encode(tk->kr, &tk->blob, &tk->len), 0);
	memcpy(tk->pk, eng_keyring_public_key(tk->kr), ENG_PK_BYTES);
}

/* Adds an app password slot and re-encodes: a new blob, same key pair. */
static void tk_add_slot(struct test_keyring *tk, const char *password,
			const char *label)
{
	uint32_t slot;

	assert_int_equal(eng_keyring_add_slot(tk->kr, tk->mk, password,
					      strlen(password), label, &slot), 0);
	free(tk->blob);
	assert_int_equal(eng_keyring_encode(tk->kr, &tk->blob, &tk->len), 0);
}

static void tk_free(struct test_keyring *tk)
{
	eng_keyring_free(&tk->kr);
	eng_secret_free(&tk->mk);
	free(tk->blob);
	memset(tk, 0, sizeof(*tk));
}

/* Number of slots in a stored keyring blob. */
static size_t blob_slots(const uint8_t *blob, size_t len)
{
	eng_keyring *kr = NULL;
	eng_slot_info *info = NULL;
	size_t n = 0;

	assert_int_equal(eng_keyring_decode(blob, len, &kr), 0);
	assert_int_equal(eng_keyring_slots(kr, &info, &n), 0);
	free(info);
	eng_keyring_free(&kr);
	return n;
}

static int dfix_setup(void **state)
{
	struct dfix *f = calloc(1, sizeof(*f));

	assert_non_null(f);
	assert_int_equal(eng_crypto_init(), 0);
	assert_int_equal(be_open(&f->be, &f->d), 0);
	assert_non_null(f->d);
	*state = f;
	return 0;
}

static int dfix_teardown(void **state)
{
	struct dfix *f = *state;

	dir_close(&f->d);
	assert_null(f->d);
	dir_close(&f->d);  /* accepts NULL */
	be_destroy(f->be);
	free(f);
	return 0;
}

/* Adds a mailbox alias with a fresh keyring; returns its id in id_r. */
static void add_mailbox(dir *d, const char *address, char *id_r)
{
	struct test_keyring tk;
	dir_alias_spec spec = { 0 };

	tk_make(&tk, "pw");
	spec.kind = DIR_MAILBOX;
	spec.keyring = tk.blob;
	spec.keyring_len = tk.len;
	assert_int_equal(dir_alias_add(d, address, &spec, id_r), 0);
	tk_free(&tk);
}

static void add_forward(dir *d, const char *address, const char *target,
			char *id_r)
{
	const char *targets[1] = { target };
	dir_alias_spec spec = { 0 };

	spec.kind = DIR_FORWARD;
	spec.forwards = targets;
	spec.n_forwards = 1;
	assert_int_equal(dir_alias_add(d, address, &spec, id_r), 0);
}

static size_t count_aliases(dir *d, const char *domain)
{
	dir_alias *v = NULL;
	size_t n = 99;

	assert_int_equal(dir_alias_list(d, domain, &v, &n), 0);
	dir_alias_array_free(&v, n);
	assert_null(v);
	return n;
}

/* ---- domains ---- */

static void bh_domains(void **state)
{
	struct dfix *f = *state;
	char **v = NULL;
	size_t n = 0;
	char id[DIR_ID_HEX_LEN + 1];
	dir_alias a;
	static const char *const bad[] = {
		"", ".", "-a.com", "a-.com", "a..com", "a.com.", ".a.com",
		"[1.2.3.4]", "1.2.3.4", "a_b.com", "exa mple.com", "a.com\n",
		"\xc3\xa9.com", "a@b.com", "a.-b.com", "a.b-.com",
		/* 64-byte label */
		"aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa.com",
	};
	char longdom[300];

	assert_int_equal(dir_domain_list(f->d, &v, &n), 0);
	assert_int_equal(n, 0);
	dir_strv_free(&v, n);

	assert_int_equal(dir_domain_add(f->d, "Example.ORG"), 0);
	assert_int_equal(dir_domain_add(f->d, "example.org"), ENG_EEXIST);
	assert_int_equal(dir_domain_add(f->d, "EXAMPLE.org"), ENG_EEXIST);
	assert_int_equal(dir_domain_add(f->d, "b-2.example.com"), 0);
	assert_int_equal(dir_domain_add(f->d, "localhost"), 0);
	/* A 63-byte label is fine. */
	assert_int_equal(dir_domain_add(f->d,
		"aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa.net"), 0);
	for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
		if (dir_domain_add(f->d, bad[i]) != ENG_EINVAL)
			fail_msg("domain \"%s\" was accepted", bad[i]);
	}
	assert_int_equal(dir_domain_add(f->d, NULL), ENG_EINVAL);
	/* 254 bytes: one too many. */
	memset(longdom, 0, sizeof(longdom));
	for (size_t i = 0; i < 4; i++)
		memcpy(longdom + i * 64, "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa.", 64);
	longdom[254] = '\0';
	longdom[253] = 'b';
	assert_int_equal(strlen(longdom), 254);
	assert_int_equal(dir_domain_add(f->d, longdom), ENG_EINVAL);
	longdom[252] = '\0';  /* 252 bytes, last label "aa...": fine */
	longdom[251] = 'c';
	assert_int_equal(dir_domain_add(f->d, longdom), 0);

	assert_int_equal(dir_domain_list(f->d, &v, &n), 0);
	assert_int_equal(n, 5);
	/* Sorted, lower-case. */
	assert_string_equal(v[0], longdom);
	assert_string_equal(v[1], "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa.net");
	assert_string_equal(v[2], "b-2.example.com");
	assert_string_equal(v[3], "example.org");
	assert_string_equal(v[4], "localhost");
	dir_strv_free(&v, n);
	assert_null(v);
	dir_strv_free(&v, 0);  /* accepts NULL */

	assert_int_equal(dir_domain_exists(f->d, "EXAMPLE.org"), 1);
	assert_int_equal(dir_domain_exists(f->d, "example.net"), 0);
	assert_int_equal(dir_domain_exists(f->d, "[1.2.3.4]"), 0);

	/* Remove: unknown, with aliases (refused, then forced), empty. */
	assert_int_equal(dir_domain_remove(f->d, "nope.org", false), ENG_ENOTFOUND);
	add_mailbox(f->d, "alice@example.org", id);
	assert_int_equal(dir_domain_remove(f->d, "example.org", false), ENG_EPERM);
	assert_int_equal(dir_domain_exists(f->d, "example.org"), 1);
	assert_int_equal(dir_alias_get_id(f->d, id, &a), 0);
	dir_alias_clear(&a);
	assert_int_equal(dir_domain_remove(f->d, "Example.Org", true), 0);
	assert_int_equal(dir_domain_exists(f->d, "example.org"), 0);
	assert_int_equal(dir_alias_get_id(f->d, id, &a), ENG_ENOTFOUND);
	assert_null(a.address);
	assert_int_equal(count_aliases(f->d, NULL), 0);
	assert_int_equal(dir_domain_remove(f->d, "localhost", false), 0);
	assert_int_equal(dir_domain_remove(f->d, "localhost", false), ENG_ENOTFOUND);
	assert_int_equal(dir_domain_list(f->d, &v, &n), 0);
	assert_int_equal(n, 3);
	dir_strv_free(&v, n);
	/* A removed domain can come back. */
	assert_int_equal(dir_domain_add(f->d, "example.org"), 0);
}

/* ---- aliases ---- */

static void bh_alias_crud(void **state)
{
	struct dfix *f = *state;
	struct test_keyring tk;
	dir_alias_spec spec = { 0 };
	char id[DIR_ID_HEX_LEN + 1], id2[DIR_ID_HEX_LEN + 1];
	char id3[DIR_ID_HEX_LEN + 1];
	dir_alias a, *v = NULL;
	size_t n = 0;

	assert_int_equal(dir_domain_add(f->d, "example.org"), 0);
	assert_int_equal(dir_domain_add(f->d, "example.net"), 0);
	tk_make(&tk, "correct horse");
	spec.kind = DIR_MAILBOX;
	spec.keyring = tk.blob;
	spec.keyring_len = tk.len;
	spec.public_key = tk.pk;
	spec.quota_bytes = 1000000;
	assert_int_equal(dir_alias_add(f->d, "Alice.Smith@Example.ORG", &spec, id), 0);
	assert_true(dir_valid_id(id));
	add_mailbox(f->d, "bob@example.org", id2);
	add_forward(f->d, "carol@example.net", "carol@elsewhere.com", id3);
	assert_string_not_equal(id, id2);
	assert_string_not_equal(id2, id3);

	/* By address, any case; by id. */
	assert_int_equal(dir_alias_get(f->d, "ALICE.SMITH@example.org", &a), 0);
	assert_string_equal(a.id, id);
	assert_string_equal(a.address, "alice.smith@example.org");
	assert_string_equal(a.domain, "example.org");
	assert_int_equal(a.kind, DIR_MAILBOX);
	assert_int_equal(a.n_forwards, 0);
	assert_null(a.forwards);
	assert_int_equal(a.keyring_len, tk.len);
	assert_memory_equal(a.keyring, tk.blob, tk.len);
	assert_int_equal(a.keyring_version, 1);
	assert_true(a.has_public_key);
	assert_memory_equal(a.public_key, tk.pk, ENG_PK_BYTES);
	assert_int_equal(a.quota_bytes, 1000000);
	assert_true(a.created > 0);
	dir_alias_clear(&a);
	assert_null(a.address);
	dir_alias_clear(&a);  /* a cleared struct is fine */
	assert_int_equal(dir_alias_get_id(f->d, id3, &a), 0);
	assert_string_equal(a.address, "carol@example.net");
	assert_int_equal(a.kind, DIR_FORWARD);
	assert_null(a.keyring);
	assert_int_equal(a.keyring_version, 0);
	assert_false(a.has_public_key);
	dir_alias_clear(&a);
	assert_int_equal(dir_alias_get(f->d, "nobody@example.org", &a), ENG_ENOTFOUND);
	assert_int_equal(dir_alias_get(f->d, "bad address", &a), ENG_EINVAL);
	assert_int_equal(dir_alias_get_id(f->d, "00000000000000000000000000000000", &a),
			 ENG_ENOTFOUND);
	assert_int_equal(dir_alias_get_id(f->d, "not-an-id", &a), ENG_EINVAL);
	assert_int_equal(dir_alias_get_id(f->d, "0000000000000000000000000000000G", &a),
			 ENG_EINVAL);

	/* Lists: by domain sorted by address, all, unknown domain. */
	assert_int_equal(dir_alias_list(f->d, "EXAMPLE.org", &v, &n), 0);
	assert_int_equal(n, 2);
	assert_string_equal(v[0].address, "alice.smith@example.org");
	assert_string_equal(v[1].address, "bob@example.org");
	assert_string_equal(v[1].id, id2);
	dir_alias_array_free(&v, n);
	assert_int_equal(count_aliases(f->d, NULL), 3);
	assert_int_equal(count_aliases(f->d, "example.net"), 1);
	assert_int_equal(dir_alias_list(f->d, "example.com", &v, &n), ENG_ENOTFOUND);
	assert_null(v);

	/* Duplicates, case-insensitively; unknown domain. */
	assert_int_equal(dir_alias_add(f->d, "alice.smith@example.org", &spec, id2),
			 ENG_EEXIST);
	assert_int_equal(dir_alias_add(f->d, "BOB@EXAMPLE.ORG", &spec, id2), ENG_EEXIST);
	assert_int_equal(dir_alias_add(f->d, "alice@example.com", &spec, id2),
			 ENG_ENOTFOUND);
	assert_int_equal(count_aliases(f->d, NULL), 3);

	/* Remove. */
	assert_int_equal(dir_alias_get(f->d, "bob@example.org", &a), 0);
	assert_int_equal(dir_alias_remove(f->d, a.id), 0);
	assert_int_equal(dir_alias_remove(f->d, a.id), ENG_ENOTFOUND);
	dir_alias_clear(&a);
	assert_int_equal(dir_alias_get(f->d, "bob@example.org", &a), ENG_ENOTFOUND);
	assert_int_equal(dir_alias_remove(f->d, "bob@example.org"), ENG_EINVAL);
	assert_int_equal(count_aliases(f->d, "example.org"), 1);
	/* The address is free again, with a new id. */
	add_mailbox(f->d, "bob@example.org", id3);
	assert_string_not_equal(id3, id2);
	tk_free(&tk);
}

static void bh_alias_rules(void **state)
{
	struct dfix *f = *state;
	struct test_keyring tk, other;
	dir_alias_spec spec;
	char id[DIR_ID_HEX_LEN + 1];
	const char *targets[DIR_MAX_FORWARDS + 1];
	char target_buf[DIR_MAX_FORWARDS + 1][32];
	static const uint8_t garbage[40] = "this is not a keyring at all, no";
	static const char *const bad_addresses[] = {
		"alice", "alice@", "@", "a lice@example.org", "\"alice\"@example.org",
		"a%b@example.org", "a!b@example.org", ".alice@example.org",
		"alice.@example.org", "al..ice@example.org", "alice@example.org.",
		"alice@[127.0.0.1]", "@x.org:alice@example.org", "a@b@example.org",
		"al\303\257ce@example.org", "alice\r@example.org", "*x@", "**",
		/* 65-byte local part */
		"aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa@example.org",
	};

	assert_int_equal(dir_domain_add(f->d, "example.org"), 0);
	tk_make(&tk, "pw");
	tk_make(&other, "pw");

	/* Kinds. */
	memset(&spec, 0, sizeof(spec));
	spec.kind = DIR_MAILBOX;
	assert_int_equal(dir_alias_add(f->d, "a@example.org", &spec, id), ENG_EINVAL);
	assert_string_equal(id, "");
	spec.kind = 0;
	spec.keyring = tk.blob;
	spec.keyring_len = tk.len;
	assert_int_equal(dir_alias_add(f->d, "a@example.org", &spec, id), ENG_EINVAL);
	spec.kind = 4;
	assert_int_equal(dir_alias_add(f->d, "a@example.org", &spec, id), ENG_EINVAL);
	spec.kind = DIR_MAILBOX | 8;
	assert_int_equal(dir_alias_add(f->d, "a@example.org", &spec, id), ENG_EINVAL);

	/* Keyrings: garbage, over-long, wrong public key, lone public key. */
	spec.kind = DIR_MAILBOX;
	spec.keyring = garbage;
	spec.keyring_len = sizeof(garbage);
	assert_int_equal(dir_alias_add(f->d, "a@example.org", &spec, id), ENG_EMALFORMED);
	spec.keyring_len = DIR_KEYRING_MAX_BYTES + 1;
	assert_int_equal(dir_alias_add(f->d, "a@example.org", &spec, id), ENG_ELIMIT);
	spec.keyring = tk.blob;
	spec.keyring_len = tk.len;
	spec.public_key = other.pk;
	assert_int_equal(dir_alias_add(f->d, "a@example.org", &spec, id), ENG_EINVAL);
	spec.public_key = NULL;
	spec.quota_bytes = (uint64_t)INT64_MAX + 1;
	assert_int_equal(dir_alias_add(f->d, "a@example.org", &spec, id), ENG_EINVAL);
	spec.quota_bytes = 0;
	memset(&spec, 0, sizeof(spec));
	spec.kind = DIR_FORWARD;
	targets[0] = "x@elsewhere.com";
	spec.forwards = targets;
	spec.n_forwards = 1;
	spec.public_key = other.pk;
	assert_int_equal(dir_alias_add(f->d, "a@example.org", &spec, id), ENG_EINVAL);

	/* Forward lists. */
	memset(&spec, 0, sizeof(spec));
	spec.kind = DIR_FORWARD;
	assert_int_equal(dir_alias_add(f->d, "a@example.org", &spec, id), ENG_EINVAL);
	for (size_t i = 0; i <= DIR_MAX_FORWARDS; i++) {
		snprintf(target_buf[i], sizeof(target_buf[i]), "t%zu@elsewhere.com", i);
		targets[i] = target_buf[i];
	}
	spec.forwards = targets;
	spec.n_forwards = DIR_MAX_FORWARDS + 1;
	assert_int_equal(dir_alias_add(f->d, "a@example.org", &spec, id), ENG_ELIMIT);
	spec.n_forwards = 2;
	targets[1] = "not an address";
	assert_int_equal(dir_alias_add(f->d, "a@example.org", &spec, id), ENG_EINVAL);
	targets[1] = "@elsewhere.com";   /* a catch-all is not a target */
	assert_int_equal(dir_alias_add(f->d, "a@example.org", &spec, id), ENG_EINVAL);
	targets[1] = "A@Example.org";    /* itself */
	assert_int_equal(dir_alias_add(f->d, "a@example.org", &spec, id), ENG_EINVAL);
	targets[1] = "u%v@elsewhere.com";
	assert_int_equal(dir_alias_add(f->d, "a@example.org", &spec, id), ENG_EINVAL);
	/* Targets without DIR_FORWARD. */
	spec.kind = DIR_MAILBOX;
	spec.keyring = tk.blob;
	spec.keyring_len = tk.len;
	spec.n_forwards = 1;
	assert_int_equal(dir_alias_add(f->d, "a@example.org", &spec, id), ENG_EINVAL);

	/* Addresses. */
	spec.n_forwards = 0;
	for (size_t i = 0; i < sizeof(bad_addresses) / sizeof(bad_addresses[0]); i++) {
		if (dir_alias_add(f->d, bad_addresses[i], &spec, id) != ENG_EINVAL)
			fail_msg("address \"%s\" was accepted", bad_addresses[i]);
	}
	assert_int_equal(dir_alias_add(f->d, NULL, &spec, id), ENG_EINVAL);
	assert_int_equal(dir_alias_add(f->d, "a@example.org", NULL, id), ENG_EINVAL);
	assert_int_equal(count_aliases(f->d, NULL), 0);

	/* Exactly 100 targets and a 64-byte local part are fine; a
	 * public key equal to the keyring's is fine. */
	spec.kind = DIR_MAILBOX | DIR_FORWARD;
	spec.n_forwards = DIR_MAX_FORWARDS;
	targets[1] = target_buf[1];
	spec.public_key = tk.pk;
	assert_int_equal(dir_alias_add(f->d,
		"aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa@example.org",
		&spec, id), 0);
	/* RFC 5322 atext specials other than % and ! are local-part
	 * characters. */
	spec.n_forwards = 0;
	spec.kind = DIR_MAILBOX;
	assert_int_equal(dir_alias_add(f->d, "o'neil+x#y$z&w=q?r^s_t`u{v}|~-/z@example.org",
				       &spec, id), 0);
	assert_int_equal(count_aliases(f->d, NULL), 2);
	tk_free(&tk);
	tk_free(&other);
}

static void bh_forwards(void **state)
{
	struct dfix *f = *state;
	struct test_keyring tk;
	dir_alias_spec spec = { 0 };
	char id[DIR_ID_HEX_LEN + 1], mid[DIR_ID_HEX_LEN + 1];
	const char *targets[4] = { "Carol.X@Elsewhere.COM", "dave@other.example",
				   "Carol.X@elsewhere.com", "eve@third.example" };
	const char *two[2] = { "z@z.example", "y@y.example" };
	dir_alias a;

	assert_int_equal(dir_domain_add(f->d, "example.org"), 0);
	spec.kind = DIR_FORWARD;
	spec.forwards = targets;
	spec.n_forwards = 4;
	assert_int_equal(dir_alias_add(f->d, "list@example.org", &spec, id), 0);
	assert_int_equal(dir_alias_get_id(f->d, id, &a), 0);
	/* Domain lower-cased, local part kept, duplicate dropped, order kept. */
	assert_int_equal(a.n_forwards, 3);
	assert_string_equal(a.forwards[0], "Carol.X@elsewhere.com");
	assert_string_equal(a.forwards[1], "dave@other.example");
	assert_string_equal(a.forwards[2], "eve@third.example");
	dir_alias_clear(&a);

	assert_int_equal(dir_alias_set_forwards(f->d, id, DIR_FORWARD, two, 2), 0);
	assert_int_equal(dir_alias_get_id(f->d, id, &a), 0);
	assert_int_equal(a.kind, DIR_FORWARD);
	assert_int_equal(a.n_forwards, 2);
	assert_string_equal(a.forwards[0], "z@z.example");
	assert_string_equal(a.forwards[1], "y@y.example");
	dir_alias_clear(&a);
	/* A forward needs targets; a mailbox needs a keyring. */
	assert_int_equal(dir_alias_set_forwards(f->d, id, DIR_FORWARD, NULL, 0),
			 ENG_EINVAL);
	assert_int_equal(dir_alias_set_forwards(f->d, id, DIR_MAILBOX, NULL, 0),
			 ENG_EINVAL);
	assert_int_equal(dir_alias_set_forwards(f->d, id, DIR_MAILBOX | DIR_FORWARD,
						two, 2), ENG_EINVAL);
	assert_int_equal(dir_alias_set_forwards(f->d, id, 0, two, 2), ENG_EINVAL);
	assert_int_equal(dir_alias_set_forwards(f->d, "0123456789abcdef0123456789abcdef",
						DIR_FORWARD, two, 2), ENG_ENOTFOUND);
	two[1] = "list@EXAMPLE.org";
	assert_int_equal(dir_alias_set_forwards(f->d, id, DIR_FORWARD, two, 2),
			 ENG_EINVAL);
	two[1] = "y@y.example";
	assert_int_equal(dir_alias_get_id(f->d, id, &a), 0);
	assert_int_equal(a.kind, DIR_FORWARD);
	assert_int_equal(a.n_forwards, 2);
	dir_alias_clear(&a);

	/* A mailbox gains forwarding, then loses it again. */
	tk_make(&tk, "pw");
	memset(&spec, 0, sizeof(spec));
	spec.kind = DIR_MAILBOX;
	spec.keyring = tk.blob;
	spec.keyring_len = tk.len;
	assert_int_equal(dir_alias_add(f->d, "me@example.org", &spec, mid), 0);
	assert_int_equal(dir_alias_set_forwards(f->d, mid, DIR_MAILBOX, two, 1),
			 ENG_EINVAL);
	assert_int_equal(dir_alias_set_forwards(f->d, mid, DIR_MAILBOX | DIR_FORWARD,
						two, 1), 0);
	assert_int_equal(dir_alias_get_id(f->d, mid, &a), 0);
	assert_int_equal(a.kind, DIR_MAILBOX | DIR_FORWARD);
	assert_int_equal(a.n_forwards, 1);
	assert_string_equal(a.forwards[0], "z@z.example");
	dir_alias_clear(&a);
	assert_int_equal(dir_alias_set_forwards(f->d, mid, DIR_MAILBOX, NULL, 0), 0);
	assert_int_equal(dir_alias_get_id(f->d, mid, &a), 0);
	assert_int_equal(a.kind, DIR_MAILBOX);
	assert_int_equal(a.n_forwards, 0);
	dir_alias_clear(&a);

	/* Quota. */
	assert_int_equal(dir_alias_set_quota(f->d, mid, 5u << 20), 0);
	assert_int_equal(dir_alias_get_id(f->d, mid, &a), 0);
	assert_int_equal(a.quota_bytes, 5u << 20);
	dir_alias_clear(&a);
	assert_int_equal(dir_alias_set_quota(f->d, mid, (uint64_t)INT64_MAX + 1),
			 ENG_EINVAL);
	assert_int_equal(dir_alias_set_quota(f->d, "0123456789abcdef0123456789abcdef", 1),
			 ENG_ENOTFOUND);
	assert_int_equal(dir_alias_set_quota(f->d, mid, 0), 0);
	assert_int_equal(dir_alias_get_id(f->d, mid, &a), 0);
	assert_int_equal(a.quota_bytes, 0);
	dir_alias_clear(&a);
	tk_free(&tk);
}

/* ---- resolve ---- */

static void bh_resolve(void **state)
{
	struct dfix *f = *state;
	struct test_keyring tk;
	dir_alias_spec spec = { 0 };
	char alice[DIR_ID_HEX_LEN + 1], tagged[DIR_ID_HEX_LEN + 1];
	char list[DIR_ID_HEX_LEN + 1], catchall[DIR_ID_HEX_LEN + 1];
	char other[DIR_ID_HEX_LEN + 1];
	dir_resolved r;

	assert_int_equal(dir_domain_add(f->d, "example.org"), 0);
	assert_int_equal(dir_domain_add(f->d, "example.net"), 0);
	tk_make(&tk, "pw");
	spec.kind = DIR_MAILBOX;
	spec.keyring = tk.blob;
	spec.keyring_len = tk.len;
	assert_int_equal(dir_alias_add(f->d, "alice@example.org", &spec, alice), 0);
	add_mailbox(f->d, "alice+special@example.org", tagged);
	add_forward(f->d, "list@example.org", "Team@Elsewhere.com", list);

	/* Exact, any case. */
	assert_int_equal(dir_resolve(f->d, "Alice@EXAMPLE.org", &r), 0);
	assert_int_equal(r.match, DIR_MATCH_EXACT);
	assert_string_equal(r.id, alice);
	assert_string_equal(r.address, "alice@example.org");
	assert_string_equal(r.recipient, "alice@example.org");
	assert_null(r.detail);
	assert_int_equal(r.kind, DIR_MAILBOX);
	assert_true(r.has_public_key);
	assert_memory_equal(r.public_key, tk.pk, ENG_PK_BYTES);
	dir_resolved_clear(&r);
	assert_null(r.address);

	/* Plus-addressing: to the base; an exact "+" alias wins. */
	assert_int_equal(dir_resolve(f->d, "alice+News@example.org", &r), 0);
	assert_int_equal(r.match, DIR_MATCH_PLUS);
	assert_string_equal(r.id, alice);
	assert_string_equal(r.address, "alice@example.org");
	assert_string_equal(r.recipient, "alice+news@example.org");
	assert_string_equal(r.detail, "news");
	dir_resolved_clear(&r);
	assert_int_equal(dir_resolve(f->d, "alice+a+b@example.org", &r), 0);
	assert_int_equal(r.match, DIR_MATCH_PLUS);
	assert_string_equal(r.detail, "a+b");
	dir_resolved_clear(&r);
	assert_int_equal(dir_resolve(f->d, "alice+@example.org", &r), 0);
	assert_int_equal(r.match, DIR_MATCH_PLUS);
	assert_string_equal(r.detail, "");
	dir_resolved_clear(&r);
	assert_int_equal(dir_resolve(f->d, "alice+special@example.org", &r), 0);
	assert_int_equal(r.match, DIR_MATCH_EXACT);
	assert_string_equal(r.id, tagged);
	dir_resolved_clear(&r);

	/* A forward, with its targets and no public key. */
	assert_int_equal(dir_resolve(f->d, "list+x@example.org", &r), 0);
	assert_int_equal(r.match, DIR_MATCH_PLUS);
	assert_string_equal(r.id, list);
	assert_int_equal(r.kind, DIR_FORWARD);
	assert_int_equal(r.n_forwards, 1);
	assert_string_equal(r.forwards[0], "Team@elsewhere.com");
	assert_false(r.has_public_key);
	dir_resolved_clear(&r);

	/* No such user, and no catch-all yet. */
	assert_int_equal(dir_resolve(f->d, "bob@example.org", &r), ENG_ENOTFOUND);
	assert_int_equal(dir_resolve(f->d, "bob+x@example.org", &r), ENG_ENOTFOUND);
	assert_int_equal(dir_resolve(f->d, "+x@example.org", &r), ENG_ENOTFOUND);
	assert_int_equal(dir_resolve(f->d, "alice@example.net", &r), ENG_ENOTFOUND);

	/* The catch-all: after exact and plus, per domain only. */
	add_forward(f->d, "@Example.org", "postmaster@elsewhere.com", catchall);
	assert_int_equal(dir_alias_add(f->d, "*@example.org", &spec, other), ENG_EEXIST);
	assert_int_equal(dir_resolve(f->d, "bob@example.org", &r), 0);
	assert_int_equal(r.match, DIR_MATCH_CATCHALL);
	assert_string_equal(r.id, catchall);
	assert_string_equal(r.address, "*@example.org");
	assert_string_equal(r.recipient, "bob@example.org");
	assert_null(r.detail);
	dir_resolved_clear(&r);
	assert_int_equal(dir_resolve(f->d, "bob+x@example.org", &r), 0);
	assert_int_equal(r.match, DIR_MATCH_CATCHALL);
	dir_resolved_clear(&r);
	assert_int_equal(dir_resolve(f->d, "alice+x@example.org", &r), 0);
	assert_int_equal(r.match, DIR_MATCH_PLUS);
	assert_string_equal(r.id, alice);
	dir_resolved_clear(&r);
	assert_int_equal(dir_resolve(f->d, "alice@example.org", &r), 0);
	assert_int_equal(r.match, DIR_MATCH_EXACT);
	dir_resolved_clear(&r);
	assert_int_equal(dir_resolve(f->d, "bob@example.net", &r), ENG_ENOTFOUND);
	/* The catch-all is found by get as "@d" and "*@d". */
	{
		dir_alias a;

		assert_int_equal(dir_alias_get(f->d, "@example.org", &a), 0);
		assert_string_equal(a.id, catchall);
		dir_alias_clear(&a);
		assert_int_equal(dir_alias_get(f->d, "*@EXAMPLE.ORG", &a), 0);
		assert_string_equal(a.id, catchall);
		dir_alias_clear(&a);
	}
	/* Removing the alias lets the catch-all take its mail. */
	assert_int_equal(dir_alias_remove(f->d, list), 0);
	assert_int_equal(dir_resolve(f->d, "list@example.org", &r), 0);
	assert_int_equal(r.match, DIR_MATCH_CATCHALL);
	dir_resolved_clear(&r);
	tk_free(&tk);
}

static void bh_resolve_refusals(void **state)
{
	struct dfix *f = *state;
	char id[DIR_ID_HEX_LEN + 1];
	dir_resolved r;
	char longlocal[80];
	static const char *const refused[] = {
		/* not local: unknown domains, even with a catch-all elsewhere */
		"alice@example.com", "alice@sub.example.org", "alice@org",
		/* percent hack, bang path, source routes */
		"alice%elsewhere.com@example.org", "elsewhere.com!alice@example.org",
		"@relay.example.org:alice@example.org",
		"@example.org,@example.org:alice@example.org",
		/* quoted local parts */
		"\"alice\"@example.org", "\"al ice\"@example.org",
		"\"alice@example.org\"@example.org",
		/* IP literals */
		"alice@[127.0.0.1]", "alice@[IPv6:::1]", "alice@127.0.0.1",
		/* trailing and stray dots */
		"alice@example.org.", "alice.@example.org", ".alice@example.org",
		"al..ice@example.org", "alice@.example.org", "alice@example..org",
		/* empty parts */
		"", "@", "alice@", "@example.org", "alice", "example.org",
		/* catch-all notation is not a recipient */
		"*@example.org",
		/* angle brackets, spaces, control and 8-bit bytes */
		"<alice@example.org>", "alice @example.org", " alice@example.org",
		"alice@example.org ", "ali\tce@example.org", "alice\n@example.org",
		"al\xc3\xaf" "ce@example.org", "alice@ex\xc3\xa4" "mple.org",
		/* several @ */
		"alice@example.org@example.org", "a@b@example.org",
		/* backslash escapes */
		"al\\ice@example.org",
	};

	assert_int_equal(dir_domain_add(f->d, "example.org"), 0);
	add_mailbox(f->d, "alice@example.org", id);
	/* A catch-all must not swallow the refused forms either. */
	add_forward(f->d, "*@example.org", "x@elsewhere.com", id);
	for (size_t i = 0; i < sizeof(refused) / sizeof(refused[0]); i++) {
		int rc = dir_resolve(f->d, refused[i], &r);

		if (rc != ENG_EINVAL)
			fail_msg("resolve(\"%s\") = %d, not ENG_EINVAL", refused[i], rc);
		assert_null(r.address);
	}
	assert_int_equal(dir_resolve(f->d, NULL, &r), ENG_EINVAL);
	memset(longlocal, 'a', 65);
	strcpy(longlocal + 65, "@example.org");
	assert_int_equal(dir_resolve(f->d, longlocal, &r), ENG_EINVAL);
	/* Control: the catch-all does answer for a plain address. */
	strcpy(longlocal + 64, "@example.org");
	assert_int_equal(dir_resolve(f->d, longlocal, &r), 0);
	assert_int_equal(r.match, DIR_MATCH_CATCHALL);
	dir_resolved_clear(&r);
}

/* ---- keyring compare-and-swap ---- */

static void bh_keyring_cas(void **state)
{
	struct dfix *f = *state;
	struct test_keyring tk, other;
	dir_alias_spec spec = { 0 };
	char id[DIR_ID_HEX_LEN + 1], fid[DIR_ID_HEX_LEN + 1];
	uint8_t *v2_blob;
	size_t v2_len;
	uint64_t version = 0;
	dir_alias a;

	assert_int_equal(dir_domain_add(f->d, "example.org"), 0);
	tk_make(&tk, "main password");
	spec.kind = DIR_MAILBOX;
	spec.keyring = tk.blob;
	spec.keyring_len = tk.len;
	assert_int_equal(dir_alias_add(f->d, "alice@example.org", &spec, id), 0);

	/* Two writers both read version 1 and add an app password each. */
	tk_add_slot(&tk, "app one", "phone");
	assert_int_equal(dir_alias_set_keyring(f->d, id, 1, tk.blob, tk.len, &version), 0);
	assert_int_equal(version, 2);
	v2_blob = malloc(tk.len);
	memcpy(v2_blob, tk.blob, tk.len);
	v2_len = tk.len;
	tk_add_slot(&tk, "app two", "laptop");
	version = 77;
	/* The second writer's swap is stale: refused, nothing changes. */
	assert_int_equal(dir_alias_set_keyring(f->d, id, 1, tk.blob, tk.len, &version),
			 ENG_EMODIFIED);
	assert_int_equal(version, 77);
	assert_int_equal(dir_alias_get_id(f->d, id, &a), 0);
	assert_int_equal(a.keyring_version, 2);
	assert_int_equal(a.keyring_len, v2_len);
	assert_memory_equal(a.keyring, v2_blob, v2_len);
	assert_int_equal(blob_slots(a.keyring, a.keyring_len), 2);
	dir_alias_clear(&a);
	/* Re-read, re-apply, retry: both app passwords are kept. */
	assert_int_equal(dir_alias_set_keyring(f->d, id, 2, tk.blob, tk.len, &version), 0);
	assert_int_equal(version, 3);
	assert_int_equal(dir_alias_get_id(f->d, id, &a), 0);
	assert_int_equal(a.keyring_version, 3);
	assert_int_equal(blob_slots(a.keyring, a.keyring_len), 3);
	assert_memory_equal(a.public_key, tk.pk, ENG_PK_BYTES);
	dir_alias_clear(&a);
	/* A version from the future is stale too. */
	assert_int_equal(dir_alias_set_keyring(f->d, id, 4, tk.blob, tk.len, NULL),
			 ENG_EMODIFIED);
	/* Bad blobs and ids. */
	assert_int_equal(dir_alias_set_keyring(f->d, id, 3, v2_blob, 10, NULL),
			 ENG_EMALFORMED);
	assert_int_equal(dir_alias_set_keyring(f->d, id, 3, NULL, 0, NULL), ENG_EINVAL);
	assert_int_equal(dir_alias_set_keyring(f->d, "0123456789abcdef0123456789abcdef",
					       3, tk.blob, tk.len, NULL), ENG_ENOTFOUND);
	assert_int_equal(dir_alias_set_keyring(f->d, "xyz", 3, tk.blob, tk.len, NULL),
			 ENG_EINVAL);

	/* A pure forward gets its first keyring at version 0 → 1, and can
	 * then become a mailbox. */
	add_forward(f->d, "fw@example.org", "x@elsewhere.com", fid);
	tk_make(&other, "pw");
	assert_int_equal(dir_alias_set_keyring(f->d, fid, 1, other.blob, other.len, NULL),
			 ENG_EMODIFIED);
	assert_int_equal(dir_alias_set_keyring(f->d, fid, 0, other.blob, other.len,
					       &version), 0);
	assert_int_equal(version, 1);
	assert_int_equal(dir_alias_set_forwards(f->d, fid, DIR_MAILBOX, NULL, 0), 0);
	assert_int_equal(dir_alias_get_id(f->d, fid, &a), 0);
	assert_int_equal(a.kind, DIR_MAILBOX);
	assert_true(a.has_public_key);
	assert_memory_equal(a.public_key, other.pk, ENG_PK_BYTES);
	dir_alias_clear(&a);
	free(v2_blob);
	tk_free(&tk);
	tk_free(&other);
}

/* ---- persistence ---- */

static void bh_persistence(void **state)
{
	struct dfix *f = *state;
	struct test_keyring tk;
	char id[DIR_ID_HEX_LEN + 1], fid[DIR_ID_HEX_LEN + 1];
	const char *targets[2] = { "a@x.example", "b@y.example" };
	dir_alias_spec spec = { 0 };
	dir_resolved r;
	dir_alias a;
	char **v = NULL;
	size_t n = 0;

	assert_int_equal(dir_domain_add(f->d, "example.org"), 0);
	assert_int_equal(dir_domain_add(f->d, "example.net"), 0);
	tk_make(&tk, "pw");
	spec.kind = DIR_MAILBOX | DIR_FORWARD;
	spec.keyring = tk.blob;
	spec.keyring_len = tk.len;
	spec.forwards = targets;
	spec.n_forwards = 2;
	spec.quota_bytes = 12345;
	assert_int_equal(dir_alias_add(f->d, "alice@example.org", &spec, id), 0);
	tk_add_slot(&tk, "app", "app");
	assert_int_equal(dir_alias_set_keyring(f->d, id, 1, tk.blob, tk.len, NULL), 0);
	add_forward(f->d, "@example.net", "c@z.example", fid);

	dir_close(&f->d);
	assert_int_equal(be_reopen(f->be, &f->d), 0);

	assert_int_equal(dir_domain_list(f->d, &v, &n), 0);
	assert_int_equal(n, 2);
	assert_string_equal(v[0], "example.net");
	assert_string_equal(v[1], "example.org");
	dir_strv_free(&v, n);
	assert_int_equal(dir_alias_get(f->d, "alice@example.org", &a), 0);
	assert_string_equal(a.id, id);
	assert_int_equal(a.kind, DIR_MAILBOX | DIR_FORWARD);
	assert_int_equal(a.n_forwards, 2);
	assert_string_equal(a.forwards[1], "b@y.example");
	assert_int_equal(a.keyring_version, 2);
	assert_int_equal(a.keyring_len, tk.len);
	assert_memory_equal(a.keyring, tk.blob, tk.len);
	assert_memory_equal(a.public_key, tk.pk, ENG_PK_BYTES);
	assert_int_equal(a.quota_bytes, 12345);
	dir_alias_clear(&a);
	assert_int_equal(dir_resolve(f->d, "anyone@example.net", &r), 0);
	assert_int_equal(r.match, DIR_MATCH_CATCHALL);
	assert_string_equal(r.id, fid);
	dir_resolved_clear(&r);
	/* Still writable after reopen, and the CAS version carried over. */
	assert_int_equal(dir_alias_set_keyring(f->d, id, 1, tk.blob, tk.len, NULL),
			 ENG_EMODIFIED);
	assert_int_equal(dir_alias_set_keyring(f->d, id, 2, tk.blob, tk.len, NULL), 0);
	tk_free(&tk);
}

#define DIR_BEHAVIOUR_TESTS \
	cmocka_unit_test_setup_teardown(bh_domains, dfix_setup, dfix_teardown), \
	cmocka_unit_test_setup_teardown(bh_alias_crud, dfix_setup, dfix_teardown), \
	cmocka_unit_test_setup_teardown(bh_alias_rules, dfix_setup, dfix_teardown), \
	cmocka_unit_test_setup_teardown(bh_forwards, dfix_setup, dfix_teardown), \
	cmocka_unit_test_setup_teardown(bh_resolve, dfix_setup, dfix_teardown), \
	cmocka_unit_test_setup_teardown(bh_resolve_refusals, dfix_setup, dfix_teardown), \
	cmocka_unit_test_setup_teardown(bh_keyring_cas, dfix_setup, dfix_teardown), \
	cmocka_unit_test_setup_teardown(bh_persistence, dfix_setup, dfix_teardown)

#endif
