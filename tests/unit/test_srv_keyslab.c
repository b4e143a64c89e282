/*
 * srv_keyslab: fixed-size secret slots packed into guarded pages
 * (sqlite-server/srv_keyslab.h). Slots are distinct, aligned, zeroed when
 * handed out and wiped when given back; pages are shared by many slots
 * and freed with their last slot; the locked memory of 500 aliases' keys
 * is a few pages, not 500 (skipped where mlock is not in effect, e.g.
 * under ASan); concurrent users from several threads.
 */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <cmocka.h>

#include "keys.h"
#include "srv_keyslab.h"

#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define KEY_BYTES (ENG_MK_BYTES + ENG_SK_BYTES)

static size_t per_page(void)
{
	return ((size_t)sysconf(_SC_PAGESIZE) - 16) / KEY_BYTES;
}

/* VmLck of this process, KiB; -1 if unreadable. */
static long locked_kib(void)
{
	FILE *f = fopen("/proc/self/status", "r");
	char line[256];
	long kib = -1;

	if (f == NULL)
		return -1;
	while (fgets(line, sizeof(line), f) != NULL) {
		if (sscanf(line, "VmLck: %ld kB", &kib) == 1)
			break;
	}
	fclose(f);
	return kib;
}

static int setup(void **state)
{
	(void)state;
	return eng_crypto_init() == 0 ? 0 : -1;
}

static void test_slots_distinct_zeroed_packed(void **state)
{
	enum { N = 200 };
	srv_keyslab *ks = srv_keyslab_new(KEY_BYTES);
	uint8_t *slot[N];
	size_t pages;

	(void)state;
	assert_non_null(ks);
	for (size_t i = 0; i < N; i++) {
		slot[i] = srv_keyslab_get(ks);
		assert_non_null(slot[i]);
		assert_int_equal((uintptr_t)slot[i] % 16, 0);
		for (size_t b = 0; b < KEY_BYTES; b++)
			assert_int_equal(slot[i][b], 0);
		memset(slot[i], (int)(i & 0xff) | 1, KEY_BYTES);
	}
	/* No two slots overlap: each still holds its own pattern. */
	for (size_t i = 0; i < N; i++) {
		for (size_t b = 0; b < KEY_BYTES; b++)
			assert_int_equal(slot[i][b], (int)(i & 0xff) | 1);
	}
	assert_int_equal(srv_keyslab_used(ks), N);
	pages = srv_keyslab_pages(ks);
	assert_int_equal(pages, (N + per_page() - 1) / per_page());
	/* Given back: wiped at once (the page stays: others use it). */
	srv_keyslab_put(ks, &slot[1]);
	assert_null(slot[1]);
	for (size_t b = 0; b < KEY_BYTES; b++)
		assert_int_equal(slot[0][KEY_BYTES + b], 0);
	/* Reused before a new page is taken. */
	slot[1] = srv_keyslab_get(ks);
	assert_ptr_equal(slot[1], slot[0] + KEY_BYTES);
	assert_int_equal(srv_keyslab_pages(ks), pages);
	for (size_t i = 0; i < N; i++)
		srv_keyslab_put(ks, &slot[i]);
	assert_int_equal(srv_keyslab_used(ks), 0);
	assert_int_equal(srv_keyslab_pages(ks), 0);
	srv_keyslab_put(ks, &slot[0]);      /* NULL: no-op */
	srv_keyslab_free(&ks);
	assert_null(ks);
}

static void test_bad_sizes(void **state)
{
	(void)state;
	assert_null(srv_keyslab_new(0));
	assert_null(srv_keyslab_new((size_t)sysconf(_SC_PAGESIZE)));
}

/* The keys of 500 aliases: one locked page per alias before (a
 * sodium_malloc each), a page per per_page() aliases now. */
static void test_locked_memory_of_500(void **state)
{
	enum { N = 500 };
	srv_keyslab *ks = srv_keyslab_new(KEY_BYTES);
	uint8_t *slot[N], *probe;
	long before, probe_kib, after;
	long page_kib = sysconf(_SC_PAGESIZE) / 1024;

	(void)state;
	before = locked_kib();
	probe = eng_secret_new(KEY_BYTES);
	probe_kib = locked_kib();
	eng_secret_free(&probe);
	if (before < 0 || probe_kib <= before) {
		srv_keyslab_free(&ks);
		skip();                 /* mlock not in effect (ASan, limits) */
	}
	for (size_t i = 0; i < N; i++)
		slot[i] = srv_keyslab_get(ks);
	after = locked_kib();
	assert_true(after - before <=
		    (long)((N + per_page() - 1) / per_page()) * page_kib);
	assert_true(after - before < N * page_kib / 20);
	for (size_t i = 0; i < N; i++)
		srv_keyslab_put(ks, &slot[i]);
	assert_int_equal(locked_kib(), before);
	srv_keyslab_free(&ks);
}

struct churn {
	srv_keyslab *ks;
	unsigned seed;
};

static void *churn_thread(void *arg)
{
	struct churn *c = arg;
	uint8_t *mine[16] = { NULL };

	for (int round = 0; round < 2000; round++) {
		size_t i = rand_r(&c->seed) % 16;

		if (mine[i] == NULL) {
			mine[i] = srv_keyslab_get(c->ks);
			memset(mine[i], (int)i + 1, KEY_BYTES);
		} else {
			for (size_t b = 0; b < KEY_BYTES; b++) {
				if (mine[i][b] != (uint8_t)(i + 1))
					return (void *)1;
			}
			srv_keyslab_put(c->ks, &mine[i]);
		}
	}
	for (size_t i = 0; i < 16; i++)
		srv_keyslab_put(c->ks, &mine[i]);
	return NULL;
}

static void test_threads(void **state)
{
	srv_keyslab *ks = srv_keyslab_new(KEY_BYTES);
	pthread_t t[4];
	struct churn c[4];

	(void)state;
	for (unsigned i = 0; i < 4; i++) {
		c[i].ks = ks;
		c[i].seed = i + 1;
		assert_int_equal(pthread_create(&t[i], NULL, churn_thread, &c[i]), 0);
	}
	for (unsigned i = 0; i < 4; i++) {
		void *ret;

		assert_int_equal(pthread_join(t[i], &ret), 0);
		assert_null(ret);
	}
	assert_int_equal(srv_keyslab_used(ks), 0);
	assert_int_equal(srv_keyslab_pages(ks), 0);
	srv_keyslab_free(&ks);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_slots_distinct_zeroed_packed),
		cmocka_unit_test(test_bad_sizes),
		cmocka_unit_test(test_locked_memory_of_500),
		cmocka_unit_test(test_threads),
	};

	return cmocka_run_group_tests(tests, setup, NULL);
}
