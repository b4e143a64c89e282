/* redis_url forms shared by sqlited and pop3d (frontends/common/redis_url.h). */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <string.h>

#include "eng_error.h"
#include "redis_url.h"

static void test_forms(void **state)
{
	sm_redis_target t;

	(void)state;
	assert_int_equal(sm_redis_target_parse(NULL, "/d", &t), 0);
	assert_string_equal(t.unix_path, "/d/redis.sock");
	assert_null(t.host);
	sm_redis_target_clear(&t);
	assert_int_equal(sm_redis_target_parse("embedded", "/d", &t), 0);
	assert_string_equal(t.unix_path, "/d/redis.sock");
	sm_redis_target_clear(&t);
	assert_int_equal(sm_redis_target_parse("unix:///run/r.sock", "/d", &t), 0);
	assert_string_equal(t.unix_path, "/run/r.sock");
	sm_redis_target_clear(&t);
	assert_int_equal(sm_redis_target_parse("redis://h.example", "/d", &t), 0);
	assert_string_equal(t.host, "h.example");
	assert_int_equal(t.port, 6379);
	assert_int_equal(t.db, 0);
	assert_null(t.password);
	sm_redis_target_clear(&t);
	assert_int_equal(sm_redis_target_parse("redis://:s3cret@10.0.0.1:6380/2",
					       "/d", &t), 0);
	assert_string_equal(t.host, "10.0.0.1");
	assert_int_equal(t.port, 6380);
	assert_int_equal(t.db, 2);
	assert_string_equal(t.password, "s3cret");
	sm_redis_target_clear(&t);
	assert_null(t.password);
	assert_int_equal(sm_redis_target_parse("redis://[::1]:7000", "/d", &t), 0);
	assert_string_equal(t.host, "::1");
	assert_int_equal(t.port, 7000);
	sm_redis_target_clear(&t);
}

static void test_refused(void **state)
{
	static const char *const bad[] = {
		"unix:", "rediss://h", "http://h", "redis://", "redis://h:0",
		"redis://h:70000", "redis://[::1", "redis://[::1]x", "redis://h/-1",
	};
	sm_redis_target t;

	(void)state;
	for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
		assert_int_equal(sm_redis_target_parse(bad[i], "/d", &t), ENG_EINVAL);
		assert_null(t.host);
		assert_null(t.unix_path);
	}
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_forms),
		cmocka_unit_test(test_refused),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
