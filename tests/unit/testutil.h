/* Small helpers shared by the unit tests. */
#ifndef TESTUTIL_H
#define TESTUTIL_H

#include <stddef.h>
#include <stdint.h>

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

#endif
