/*
 * The module loader (frontends/common/sm_module.h) with the two real
 * modules, which the build puts next to this test in build/bin/: a module
 * that is not there is ENG_ENOTFOUND, one without the asked descriptor
 * ENG_EINVAL; loading the MongoDB directory module maps libmongoc, and the
 * S3 module libcurl and libxml2, which this process (linked like sqlited)
 * did not map before. Named test_dir_* so that it links sqlited's pieces
 * and exports the symbols the modules call back.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <stdbool.h>
#include <stdio.h>
#include <string.h>

#include "bk_target.h"
#include "eng_error.h"
#include "sm_module.h"

/* Whether a shared object whose file name starts with prefix is mapped. */
static bool mapped(const char *prefix)
{
	FILE *f = fopen("/proc/self/maps", "r");
	char line[4096];
	bool found = false;

	assert_non_null(f);
	while (!found && fgets(line, sizeof(line), f) != NULL) {
		char *name = strrchr(line, '/');

		found = name != NULL && strncmp(name + 1, prefix, strlen(prefix)) == 0;
	}
	fclose(f);
	return found;
}

static void test_missing_module(void **state)
{
	void *entry = &entry;

	(void)state;
	assert_int_equal(sm_module_load("sealmail-no-such-module.so", "x",
					"a test", &entry), ENG_ENOTFOUND);
	assert_null(entry);
}

static void test_wrong_descriptor(void **state)
{
	void *entry = &entry;

	(void)state;
	assert_int_equal(sm_module_load(SM_MODULE_DIR_MONGO, "no_such_symbol",
					"a test", &entry), ENG_EINVAL);
	assert_null(entry);
	/* The other module's descriptor is not in this one. */
	assert_int_equal(sm_module_load(SM_MODULE_DIR_MONGO, SM_MODULE_BK_S3_SYM,
					"a test", &entry), ENG_EINVAL);
}

static void test_mongo_module_maps_libmongoc(void **state)
{
	void *entry = NULL, *again = NULL;

	(void)state;
	assert_false(mapped("libmongoc"));
	assert_int_equal(sm_module_load(SM_MODULE_DIR_MONGO,
					SM_MODULE_DIR_MONGO_SYM, "a test",
					&entry), 0);
	assert_non_null(entry);
	assert_true(mapped("sealmail-dir-mongo.so"));
	assert_true(mapped("libmongoc"));
	/* Loaded once: the same constructor again. */
	assert_int_equal(sm_module_load(SM_MODULE_DIR_MONGO,
					SM_MODULE_DIR_MONGO_SYM, "a test",
					&again), 0);
	assert_ptr_equal(entry, again);
}

static void test_s3_module_maps_libcurl(void **state)
{
	bk_s3_open_fn *open_fn = NULL;
	bk_s3_params p = { .endpoint = "ftp://x", .region = "us-east-1",
			   .bucket = "b", .access_key = "a", .secret_key = "s" };
	const struct bk_target_ops *ops;
	void *impl;

	(void)state;
	assert_false(mapped("libcurl"));
	assert_false(mapped("libxml2"));
	assert_int_equal(bk_s3_load(&open_fn), 0);
	assert_non_null(open_fn);
	assert_true(mapped("libcurl"));
	assert_true(mapped("libxml2"));
	/* It is the S3 constructor: it checks its parameters. */
	assert_int_equal(open_fn(&p, &impl, &ops), ENG_EINVAL);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		/* First: they check what is mapped before a load. */
		cmocka_unit_test(test_mongo_module_maps_libmongoc),
		cmocka_unit_test(test_s3_module_maps_libcurl),
		cmocka_unit_test(test_missing_module),
		cmocka_unit_test(test_wrong_descriptor),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
