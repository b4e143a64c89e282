/*
 * The matching rules of header search (RFC 3501 / RFC 9051 SEARCH: a
 * case-insensitive substring of the decoded field), shared by the scan at
 * search time (engine/search.c) and the folded field values stored at
 * append time (engine/search_fields.c), so that both answer alike.
 *
 * Folding: simple case folding of the scripts most mail is written in,
 * every run of white space one space; bytes that are not valid UTF-8 are
 * kept as they are. A folded string never holds '\n' (a newline is
 * white space), which search_fields.c relies on to join field lines.
 */
#include "search_private.h"

#include <string.h>
#include <strings.h>

/* Simple case folding of the scripts most mail is written in. */
static uint32_t fold_cp(uint32_t c)
{
	if (c < 0x80)
		return c >= 'A' && c <= 'Z' ? c + 32 : c;
	if (c >= 0xc0 && c <= 0xde && c != 0xd7)
		return c + 32;
	if (c >= 0x100 && c <= 0x17f) {
		if (c == 0x130 || c == 0x131)
			return 'i';
		if (c == 0x178)
			return 0xff;
		if ((c >= 0x139 && c <= 0x148) || (c >= 0x179 && c <= 0x17e))
			return (c & 1) ? c + 1 : c;
		if (c == 0x138 || c == 0x149 || c == 0x17f)
			return c;
		return (c & 1) ? c : c + 1;
	}
	if (c >= 0x391 && c <= 0x3a9 && c != 0x3a2)
		return c + 32;
	if (c == 0x3c2)
		return 0x3c3;
	if (c >= 0x410 && c <= 0x42f)
		return c + 32;
	if (c >= 0x400 && c <= 0x40f)
		return c + 80;
	return c;
}

static void put_cp(eng_buf *out, uint32_t c)
{
	char b[4];

	if (c < 0x80) {
		b[0] = (char)c;
		eng_buf_append(out, b, 1);
	} else if (c < 0x800) {
		b[0] = (char)(0xc0 | (c >> 6));
		b[1] = (char)(0x80 | (c & 0x3f));
		eng_buf_append(out, b, 2);
	} else if (c < 0x10000) {
		b[0] = (char)(0xe0 | (c >> 12));
		b[1] = (char)(0x80 | ((c >> 6) & 0x3f));
		b[2] = (char)(0x80 | (c & 0x3f));
		eng_buf_append(out, b, 3);
	} else {
		b[0] = (char)(0xf0 | (c >> 18));
		b[1] = (char)(0x80 | ((c >> 12) & 0x3f));
		b[2] = (char)(0x80 | ((c >> 6) & 0x3f));
		b[3] = (char)(0x80 | (c & 0x3f));
		eng_buf_append(out, b, 4);
	}
}

/*
 * Appends s folded: case folded, every run of white space one space.
 * Bytes that are not valid UTF-8 are copied as they are, so matching
 * degrades to byte comparison rather than failing.
 */
void search_fold_append(eng_buf *out, const char *s, size_t len)
{
	const unsigned char *p = (const unsigned char *)s;
	const unsigned char *end = p + len;
	bool space = false;

	eng_buf_reserve(out, len);
	while (p < end) {
		uint32_t c = *p;
		size_t n = 1;

		if (c == ' ' || c == '\t' || c == '\r' || c == '\n') {
			if (!space)
				eng_buf_putc(out, ' ');
			space = true;
			p++;
			continue;
		}
		space = false;
		if (c >= 0xc2 && c <= 0xdf && end - p >= 2 &&
		    (p[1] & 0xc0) == 0x80) {
			c = ((c & 0x1f) << 6) | (p[1] & 0x3f);
			n = 2;
		} else if (c >= 0xe0 && c <= 0xef && end - p >= 3 &&
			   (p[1] & 0xc0) == 0x80 && (p[2] & 0xc0) == 0x80) {
			c = ((c & 0x0f) << 12) | ((uint32_t)(p[1] & 0x3f) << 6) |
				(p[2] & 0x3f);
			n = 3;
		} else if (c >= 0x80) {
			/* 4-byte sequences and stray bytes: no folding. */
			eng_buf_append(out, p, 1);
			p++;
			continue;
		}
		put_cp(out, fold_cp(c));
		p += n;
	}
}

/* scratch holds the folded haystack; the caller reuses it across calls. */
bool search_folded_contains(const char *hay, size_t hay_len,
			    const eng_buf *needle, eng_buf *scratch)
{
	if (needle->len == 0)
		return true;
	eng_buf_reset(scratch);
	search_fold_append(scratch, hay, hay_len);
	return scratch->len >= needle->len &&
		memmem(scratch->data, scratch->len, needle->data,
		       needle->len) != NULL;
}

/* Walks "Name: value\n" lines; calls back for each line named field. */
bool search_header_find(const char *text, size_t len, const char *field,
			bool (*cb)(void *, const char *, size_t), void *arg)
{
	size_t flen = strlen(field);
	const char *p = text, *end = text + len;

	while (p < end) {
		const char *nl = memchr(p, '\n', (size_t)(end - p));
		const char *eol = nl != NULL ? nl : end;

		if ((size_t)(eol - p) > flen && p[flen] == ':' &&
		    strncasecmp(p, field, flen) == 0) {
			const char *v = p + flen + 1;

			while (v < eol && (*v == ' ' || *v == '\t'))
				v++;
			if (cb(arg, v, (size_t)(eol - v)))
				return true;
		}
		p = eol + 1;
	}
	return false;
}
