/*
 * What engine/search.c, engine/search_fold.c and engine/search_fields.c
 * share: the matching rules of header search and the stored folded values
 * of the fields IMAP searches by name. Only engine/ includes this.
 */
#ifndef ENG_SEARCH_PRIVATE_H
#define ENG_SEARCH_PRIVATE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "buf.h"
#include "store.h"

/* Appends s folded: case folded, every run of white space one space;
 * bytes that are not valid UTF-8 are copied as they are. */
void search_fold_append(eng_buf *out, const char *s, size_t len);
/* True if the folded needle occurs in hay folded (scratch is reused). */
bool search_folded_contains(const char *hay, size_t hay_len,
			    const eng_buf *needle, eng_buf *scratch);
/* Walks the "Name: value\n" lines of a decoded header text and calls cb
 * with the value (leading blanks skipped) of each line named field (ASCII,
 * case-insensitive); stops and returns true when cb does. */
bool search_header_find(const char *text, size_t len, const char *field,
			bool (*cb)(void *, const char *, size_t), void *arg);

/* The stored name (lower case) of a field whose folded values table
 * header_field holds, or NULL if it holds none for field. */
const char *search_field_stored(const char *field);
/* Writes the header_field rows of a content from its decoded header text
 * (the fts header column); inside the caller's transaction. */
int search_fields_put(eng_store *st, int64_t content_id, const char *text,
		      size_t len);
/* Deletes the header_field rows of a content. */
int search_fields_delete(eng_store *st, int64_t content_id);
/* Schema migration 1 -> 2: fills header_field from every fts row. */
int search_fields_backfill(eng_store *st);

#endif
