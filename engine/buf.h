/*
 * A growable byte buffer. Always NUL-terminated (the NUL is not counted in
 * len) so that text can be handed to C string functions. Grows by doubling;
 * allocation failure aborts.
 */
#ifndef ENG_BUF_H
#define ENG_BUF_H

#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

typedef struct eng_buf {
	char *data;
	size_t len;
	size_t cap;
} eng_buf;

#define ENG_BUF_INIT { NULL, 0, 0 }

void eng_buf_reserve(eng_buf *b, size_t extra);
void eng_buf_append(eng_buf *b, const void *data, size_t len);
void eng_buf_puts(eng_buf *b, const char *s);
void eng_buf_putc(eng_buf *b, char c);
void eng_buf_printf(eng_buf *b, const char *fmt, ...)
	__attribute__((format(printf, 2, 3)));
void eng_buf_vprintf(eng_buf *b, const char *fmt, va_list ap)
	__attribute__((format(printf, 2, 0)));
void eng_buf_reset(eng_buf *b);          /* len = 0, keeps the memory */
void eng_buf_free(eng_buf *b);           /* frees and re-initialises */
/* Like eng_buf_free, but wipes the memory first: for buffers that held
 * passwords or keys on their way to or from the wire. */
void eng_buf_free_wipe(eng_buf *b);
/* Hands the data to the caller (who frees it) and re-initialises b. */
char *eng_buf_steal(eng_buf *b, size_t *len_r);

#endif
