/*
 * The store fixture the engine's store tests share (test_store,
 * test_store_message, test_header_fields, test_search*): a fresh encrypted store with a random
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
/* INBOX's id in st (asserts it is there). */
int64_t tu_inbox_id(eng_store *st);
/* The first column of the first row of sql, or -1 without a row. */
int64_t tu_sql_int(eng_store *st, const char *sql);

/* Puts st's chunks where schema version 3 kept them: every body_chunk
 * row becomes a chunk row holding a zstd frame (the raw ones compressed),
 * and body_chunk is dropped. With the schema_version rows above 3 deleted,
 * the file is what version 3 wrote. */
void tu_store_chunks_to_v3(eng_store *st);

/* For cmocka_unit_test_setup_teardown: *state is a tu_store, opened and
 * closed (and freed). */
int tu_store_setup(void **state);
int tu_store_teardown(void **state);
/* Asserts the invariants at the top of engine/store.c (plain SQL, then
 * eng_store_check). */
void tu_store_check(eng_store *st);
/* Appends msg with flags to mailbox mbox; asserts it worked, returns the
 * UID. */
uint32_t tu_store_append(tu_store *f, int64_t mbox, const char *msg,
			 uint32_t flags);

/* A small plain message; a string literal, so that sizeof gives its
 * size with the NUL. */
#define TU_SIMPLE_MSG \
	"From: Alice <alice@example.org>\r\n" \
	"To: bob@example.net\r\n" \
	"Subject: Hello\r\n" \
	"Date: Tue, 24 Nov 2026 10:00:00 +0000\r\n" \
	"Message-ID: <m1@example.org>\r\n" \
	"\r\n" \
	"Hi Bob,\r\nhow are you?\r\n"

#endif
