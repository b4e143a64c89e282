#include "buf.h"
#include "eng_error.h"

#include <sodium.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

void eng_buf_reserve(eng_buf *b, size_t extra)
{
	size_t need = b->len + extra + 1;
	size_t cap;

	if (need < b->len)
		eng_oom(SIZE_MAX);
	if (need <= b->cap)
		return;
	cap = b->cap != 0 ? b->cap : 64;
	while (cap < need)
		cap = cap * 2 > cap ? cap * 2 : need;
	b->data = eng_realloc(b->data, cap);
	b->cap = cap;
}

void eng_buf_append(eng_buf *b, const void *data, size_t len)
{
	eng_buf_reserve(b, len);
	if (len != 0)
		memcpy(b->data + b->len, data, len);
	b->len += len;
	b->data[b->len] = '\0';
}

void eng_buf_puts(eng_buf *b, const char *s)
{
	eng_buf_append(b, s, strlen(s));
}

void eng_buf_putc(eng_buf *b, char c)
{
	if (b->data != NULL && b->len + 2 <= b->cap) {
		b->data[b->len++] = c;
		b->data[b->len] = '\0';
		return;
	}
	eng_buf_append(b, &c, 1);
}

void eng_buf_vprintf(eng_buf *b, const char *fmt, va_list ap)
{
	va_list ap2;
	int n;

	va_copy(ap2, ap);
	n = vsnprintf(NULL, 0, fmt, ap2);
	va_end(ap2);
	if (n < 0)
		return;
	eng_buf_reserve(b, (size_t)n);
	vsnprintf(b->data + b->len, (size_t)n + 1, fmt, ap);
	b->len += (size_t)n;
}

void eng_buf_printf(eng_buf *b, const char *fmt, ...)
{
	va_list ap;

	va_start(ap, fmt);
	eng_buf_vprintf(b, fmt, ap);
	va_end(ap);
}

void eng_buf_reset(eng_buf *b)
{
	b->len = 0;
	if (b->data != NULL)
		b->data[0] = '\0';
}

void eng_buf_free(eng_buf *b)
{
	free(b->data);
	b->data = NULL;
	b->len = b->cap = 0;
}

void eng_buf_free_wipe(eng_buf *b)
{
	if (b->data != NULL)
		sodium_memzero(b->data, b->cap);
	eng_buf_free(b);
}

char *eng_buf_steal(eng_buf *b, size_t *len_r)
{
	char *p;

	eng_buf_reserve(b, 0);
	p = b->data;
	if (len_r != NULL)
		*len_r = b->len;
	b->data = NULL;
	b->len = b->cap = 0;
	return p;
}
