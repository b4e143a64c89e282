/*
 * The store fixture the engine's store tests share (test_store,
 * test_header_fields, test_search): a fresh encrypted store with a random
 * key in a temporary directory, and plain-SQL helpers that look inside it.
 * Linked through sm_testutil, so only tests that use it pull it in.
 */
#ifndef TESTSTORE_H
#define TESTSTORE_H

#include <stdint.h>

#include "store.h"

typedef struct tu_store {
	char *dir;
	char *path;          /* dir/alias.db */
	uint8_t key[32];
	eng_store *st;
	int64_t inbox;       /* INBOX's id */
} tu_store;

/* Creates the store in a fresh directory (asserts on failure). */
void tu_store_open(tu_store *f);
/* Closes the store and removes its directory; f itself is not freed. */
void tu_store_close(tu_store *f);
/* The first column of the first row of sql, or -1 without a row. */
int64_t tu_sql_int(eng_store *st, const char *sql);

#endif
