/* Small helpers shared by the unit tests. */
#ifndef TESTUTIL_H
#define TESTUTIL_H

#include <stddef.h>
#include <stdint.h>

#include "buf.h"
#include "eng_error.h"

/* A fresh directory under $TMPDIR (or /tmp); the caller removes it with tu_rmrf. */
char *tu_tmpdir(void);
/* rm -rf; returns 0. */
int tu_rmrf(const char *path);
/* Reads a whole file; NULL on error. *len_r gets its size. */
uint8_t *tu_read_file(const char *path, size_t *len_r);
/* Writes a whole file; 0 or -1. */
int tu_write_file(const char *path, const void *data, size_t len);
/* $SEALMAIL_SOURCE_DIR/rel, or ../rel as a fallback; free() the result. */
char *tu_source_path(const char *rel);

/* An engine logger that drops every line: eng_set_log(tu_log_silent) in
 * tests that provoke errors on purpose. */
void tu_log_silent(enum eng_log_level level, const char *msg);

/* A deterministic PRNG (xorshift64), so that a failing random split can be
 * reproduced: one sequence per test program, from 0x9e3779b97f4a7c15
 * unless tu_rng_seed (not 0) set another start. */
uint64_t tu_rng(void);
void tu_rng_seed(uint64_t seed);
/* How the parser tests feed an input: whole, byte by byte, or in random
 * pieces; tu_split_piece is the size of the next piece when left bytes
 * remain: left, 1, or 1 to min(left, max) from tu_rng. */
enum tu_split { TU_SPLIT_WHOLE, TU_SPLIT_BYTES, TU_SPLIT_RANDOM };
size_t tu_split_piece(enum tu_split how, size_t left, size_t max);
/* A parser test's transcript of in fed with split how (into out, empty). */
typedef void tu_transcript_fn(const void *ctx, const char *in, size_t len,
			      enum tu_split how, eng_buf *out);
/* The transcript of in fed whole, once rounds other feeds (the first byte
 * by byte, the others in random pieces) gave the same text; the test
 * fails (both printed) if one did not. malloc'd, never NULL. */
char *tu_split_same(tu_transcript_fn *fn, const void *ctx, const char *in,
		    size_t len, int rounds);

#endif
