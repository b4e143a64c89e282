/*
 * srv_bufpool: piece buffers kept for reuse while body streams run
 * (sqlite-server/srv_bufpool.h). A buffer given back is wiped (its used
 * bytes) and reused by the next taker while a stream holds the pool;
 * at most SRV_BUFPOOL_KEEP_PER_HOLD per holder and SRV_BUFPOOL_KEEP in
 * all are kept; nothing is kept once the last holder lets go, and a
 * buffer given back with no holder is not kept; counts stay right under
 * threads taking and giving back at once.
 */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <cmocka.h>

#include "srv_bufpool.h"

#include <pthread.h>
#include <string.h>

static size_t kept(srv_bufpool *p)
{
	size_t k, o;

	srv_bufpool_counts(p, &k, &o);
	return k;
}

static size_t out(srv_bufpool *p)
{
	size_t k, o;

	srv_bufpool_counts(p, &k, &o);
	return o;
}

static void test_reuse_and_wipe(void **state)
{
	srv_bufpool p;
	uint8_t *a, *b;
	size_t used = 100000;

	(void)state;
	srv_bufpool_init(&p);
	srv_bufpool_hold(&p);
	a = srv_bufpool_get(&p);
	assert_non_null(a);
	assert_int_equal(out(&p), 1);
	/* The whole buffer is usable: a frame header and a full chunk. */
	memset(a, 0xA5, SRV_BUFPOOL_BYTES);
	srv_bufpool_put(&p, a, used);
	assert_int_equal(out(&p), 0);
	assert_int_equal(kept(&p), 1);
	/* The same block again, its used bytes wiped (the rest untouched:
	 * the wipe is of what was used, not of the whole buffer). */
	b = srv_bufpool_get(&p);
	assert_ptr_equal(a, b);
	for (size_t i = 0; i < used; i++) {
		if (b[i] != 0)
			fail_msg("byte %zu not wiped", i);
	}
	assert_int_equal(b[used], 0xA5);
	srv_bufpool_put(&p, b, SRV_BUFPOOL_BYTES);
	/* A used count past the buffer wipes the buffer, no further. */
	b = srv_bufpool_get(&p);
	assert_int_equal(b[SRV_BUFPOOL_BYTES - 1], 0);
	srv_bufpool_put(&p, b, SIZE_MAX);
	srv_bufpool_put(&p, NULL, 5);   /* nothing */
	assert_int_equal(kept(&p), 1);
	srv_bufpool_unhold(&p);
	assert_int_equal(kept(&p), 0);
	srv_bufpool_destroy(&p);
}

static void test_bounds(void **state)
{
	enum { N = 3 * SRV_BUFPOOL_KEEP };
	srv_bufpool p;
	uint8_t *b[N];

	(void)state;
	srv_bufpool_init(&p);
	/* One holder: its share is kept, the rest freed. */
	srv_bufpool_hold(&p);
	for (size_t i = 0; i < 5; i++)
		b[i] = srv_bufpool_get(&p);
	for (size_t i = 0; i < 5; i++)
		srv_bufpool_put(&p, b[i], 16);
	assert_int_equal(kept(&p), SRV_BUFPOOL_KEEP_PER_HOLD);
	/* Many holders: never past SRV_BUFPOOL_KEEP. */
	for (size_t i = 1; i < N; i++)
		srv_bufpool_hold(&p);
	for (size_t i = 0; i < N; i++)
		b[i] = srv_bufpool_get(&p);
	assert_int_equal(kept(&p), 0);
	assert_int_equal(out(&p), N);
	for (size_t i = 0; i < N; i++)
		srv_bufpool_put(&p, b[i], 16);
	assert_int_equal(kept(&p), SRV_BUFPOOL_KEEP);
	assert_int_equal(out(&p), 0);
	/* Holders leaving: the kept ones shrink to the share of those left. */
	for (size_t i = 1; i < N; i++)
		srv_bufpool_unhold(&p);
	assert_int_equal(kept(&p), SRV_BUFPOOL_KEEP_PER_HOLD);
	srv_bufpool_unhold(&p);
	assert_int_equal(kept(&p), 0);
	srv_bufpool_destroy(&p);
}

static void test_nothing_kept_at_rest(void **state)
{
	srv_bufpool p;
	uint8_t *a, *b;

	(void)state;
	srv_bufpool_init(&p);
	/* Taken and given back with no stream holding the pool. */
	a = srv_bufpool_get(&p);
	srv_bufpool_put(&p, a, 16);
	assert_int_equal(kept(&p), 0);
	/* A stream's last buffer comes back after the stream ended (a
	 * socket write finishing after its request was freed). */
	srv_bufpool_hold(&p);
	a = srv_bufpool_get(&p);
	b = srv_bufpool_get(&p);
	srv_bufpool_put(&p, a, 16);
	assert_int_equal(kept(&p), 1);
	srv_bufpool_unhold(&p);
	assert_int_equal(kept(&p), 0);
	srv_bufpool_put(&p, b, 16);
	assert_int_equal(kept(&p), 0);
	assert_int_equal(out(&p), 0);
	/* Unbalanced unhold: harmless. */
	srv_bufpool_unhold(&p);
	assert_int_equal(kept(&p), 0);
	srv_bufpool_destroy(&p);
}

#define THREADS 4
#define ROUNDS 2000

static void *churn(void *arg)
{
	srv_bufpool *p = arg;

	for (int i = 0; i < ROUNDS; i++) {
		uint8_t *a, *b;

		srv_bufpool_hold(p);
		a = srv_bufpool_get(p);
		b = srv_bufpool_get(p);
		/* Each buffer is this thread's alone while it has it. */
		memset(a, 0x11, 64);
		memset(b, 0x22, 64);
		if (a[63] != 0x11 || b[0] != 0x22)
			return (void *)1;
		srv_bufpool_put(p, a, 64);
		srv_bufpool_unhold(p);
		srv_bufpool_put(p, b, 64);
	}
	return NULL;
}

static void test_threads(void **state)
{
	srv_bufpool p;
	pthread_t t[THREADS];
	void *rv;

	(void)state;
	srv_bufpool_init(&p);
	for (int i = 0; i < THREADS; i++)
		assert_int_equal(pthread_create(&t[i], NULL, churn, &p), 0);
	for (int i = 0; i < THREADS; i++) {
		assert_int_equal(pthread_join(t[i], &rv), 0);
		assert_null(rv);
	}
	assert_int_equal(out(&p), 0);
	assert_int_equal(kept(&p), 0);
	srv_bufpool_destroy(&p);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_reuse_and_wipe),
		cmocka_unit_test(test_bounds),
		cmocka_unit_test(test_nothing_kept_at_rest),
		cmocka_unit_test(test_threads),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
