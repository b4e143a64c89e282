/*
 * The directory with the MongoDB backend: the same behaviour as the
 * embedded one (dir_behaviour.h), run against the server named by
 * SEALMAIL_TEST_MONGODB_URI (e.g. mongodb://127.0.0.1:27017). Each test
 * gets a database of its own (sealmail_test_<random>), dropped afterwards.
 * Without the variable every test is reported as skipped, not passed.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <mongoc/mongoc.h>
#include <sodium.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "dir.h"
#include "eng_error.h"

static const char skip_note[] =
	"SKIPPED: set SEALMAIL_TEST_MONGODB_URI to run the MongoDB directory tests";

struct mongo_be {
	char *uri;      /* with the test database in it */
	char *db_name;
};

static int be_open(void **be_r, dir **d_r)
{
	const char *base = getenv("SEALMAIL_TEST_MONGODB_URI");
	struct mongo_be *be = calloc(1, sizeof(*be));
	bson_error_t error;
	mongoc_uri_t *uri;
	uint8_t rnd[8];
	char hex[17];

	*be_r = be;
	assert_non_null(base);
	mongoc_init();
	uri = mongoc_uri_new_with_error(base, &error);
	if (uri == NULL)
		fail_msg("SEALMAIL_TEST_MONGODB_URI: %s", error.message);
	randombytes_buf(rnd, sizeof(rnd));
	sodium_bin2hex(hex, sizeof(hex), rnd, sizeof(rnd));
	assert_true(asprintf(&be->db_name, "sealmail_test_%s", hex) > 0);
	assert_true(mongoc_uri_set_database(uri, be->db_name));
	be->uri = strdup(mongoc_uri_get_string(uri));
	mongoc_uri_destroy(uri);
	return dir_open(be->uri, NULL, d_r);
}

static int be_reopen(void *be_v, dir **d_r)
{
	struct mongo_be *be = be_v;

	return dir_open(be->uri, NULL, d_r);
}

static void be_destroy(void *be_v)
{
	struct mongo_be *be = be_v;
	mongoc_client_t *client;
	mongoc_database_t *db;
	bson_error_t error;

	if (be == NULL)
		return;
	if (be->uri != NULL &&
	    (client = mongoc_client_new(be->uri)) != NULL) {
		db = mongoc_client_get_database(client, be->db_name);
		if (!mongoc_database_drop(db, &error))
			print_message("drop %s: %s\n", be->db_name, error.message);
		mongoc_database_destroy(db);
		mongoc_client_destroy(client);
	}
	free(be->uri);
	free(be->db_name);
	free(be);
}

#include "dir_behaviour.h"

/* Mongo-only: a database whose schema is newer is refused. */
static void test_mongo_newer_schema(void **state)
{
	struct dfix *f = *state;
	struct mongo_be *be = f->be;
	mongoc_client_t *client;
	mongoc_collection_t *meta;
	bson_error_t error;
	bson_t *filter, *update;
	dir *d = NULL;

	dir_close(&f->d);
	client = mongoc_client_new(be->uri);
	assert_non_null(client);
	meta = mongoc_client_get_collection(client, be->db_name, "meta");
	filter = BCON_NEW("_id", BCON_UTF8("schema"));
	update = BCON_NEW("$set", "{", "version", BCON_INT64(99), "}");
	assert_true(mongoc_collection_update_one(meta, filter, update, NULL, NULL,
						 &error));
	bson_destroy(filter);
	bson_destroy(update);
	mongoc_collection_destroy(meta);
	mongoc_client_destroy(client);
	assert_int_equal(dir_open(be->uri, NULL, &d), ENG_ENEWER);
	assert_null(d);
}

static void test_skipped(void **state)
{
	(void)state;
	skip();
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		DIR_BEHAVIOUR_TESTS,
		cmocka_unit_test_setup_teardown(test_mongo_newer_schema, dfix_setup,
						dfix_teardown),
	};
	const struct CMUnitTest skipped[] = {
		cmocka_unit_test(test_skipped),
	};
	const char *uri = getenv("SEALMAIL_TEST_MONGODB_URI");
	int rc;

	if (uri == NULL || *uri == '\0') {
		printf("%s\n", skip_note);
		fflush(stdout);
		return cmocka_run_group_tests_name("dir_mongo (skipped)", skipped,
						   NULL, NULL);
	}
	rc = cmocka_run_group_tests(tests, NULL, NULL);
	mongoc_cleanup();
	return rc;
}
