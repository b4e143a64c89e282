/*
 * Modified UTF-7 for mailbox names (RFC 3501 5.1.3) and a strict UTF-8
 * check (imap_parser.h has the contract).
 *
 * The decoder accepts exactly what the encoder writes, so decode then
 * encode gives back the input: printable ASCII (0x20-0x7e) stands for
 * itself except "&", written "&-"; everything else (controls included) is
 * one "&...-" run per maximal stretch, the minimal modified base64 ("," for
 * "/", no padding, zero pad bits) of its UTF-16. U+0000 is refused both
 * ways (a C string cannot carry it).
 */
#include "imap_parser.h"

#include <stdlib.h>
#include <string.h>

#include <sodium.h>

#include "buf.h"
#include "eng_error.h"

/* Modified base64: "," stands for "/" (RFC 3501 5.1.3). */
static const char mb64_alphabet[] =
	"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+,";

static bool is_printable(uint32_t c)
{
	return c >= 0x20 && c <= 0x7e;
}

static void put_utf8(eng_buf *b, uint32_t cp)
{
	char u[4];
	size_t n;

	if (cp < 0x80) {
		u[0] = (char)cp;
		n = 1;
	} else if (cp < 0x800) {
		u[0] = (char)(0xc0 | (cp >> 6));
		u[1] = (char)(0x80 | (cp & 0x3f));
		n = 2;
	} else if (cp < 0x10000) {
		u[0] = (char)(0xe0 | (cp >> 12));
		u[1] = (char)(0x80 | ((cp >> 6) & 0x3f));
		u[2] = (char)(0x80 | (cp & 0x3f));
		n = 3;
	} else {
		u[0] = (char)(0xf0 | (cp >> 18));
		u[1] = (char)(0x80 | ((cp >> 12) & 0x3f));
		u[2] = (char)(0x80 | ((cp >> 6) & 0x3f));
		u[3] = (char)(0x80 | (cp & 0x3f));
		n = 4;
	}
	eng_buf_append(b, u, n);
}

/*
 * Decodes the base64 run in[0..len) (between "&" and "-") as UTF-16 into
 * b. libsodium's strict decoder refuses stray sextets and non-zero
 * padding bits; with an even byte count that is exactly "minimal".
 * Returns 0 or ENG_EMALFORMED.
 */
static int decode_run(const char *in, size_t len, eng_buf *b)
{
	char *std = eng_malloc(len + 1);
	unsigned char *bin = eng_malloc(len);
	size_t n = 0;
	uint32_t high = 0;
	int ret = ENG_EMALFORMED;

	/* in[len] is the "-", which stops strspn within the input. */
	if (strspn(in, mb64_alphabet) < len)
		goto out;
	for (size_t i = 0; i < len; i++)
		std[i] = in[i] == ',' ? '/' : in[i];
	if (sodium_base642bin(bin, len, std, len, NULL, &n, NULL,
			      sodium_base64_VARIANT_ORIGINAL_NO_PADDING) != 0 ||
	    n == 0 || n % 2 != 0)
		goto out;
	for (size_t i = 0; i < n; i += 2) {
		uint32_t u = (uint32_t)bin[i] << 8 | bin[i + 1];

		if (high != 0) {
			if (u < 0xdc00 || u > 0xdfff)
				goto out;  /* lone high surrogate */
			put_utf8(b, 0x10000 + ((high - 0xd800) << 10) + (u - 0xdc00));
			high = 0;
		} else if (u >= 0xd800 && u <= 0xdbff) {
			high = u;
		} else if (u >= 0xdc00 && u <= 0xdfff) {
			goto out;  /* lone low surrogate */
		} else if (u == 0 || is_printable(u)) {
			goto out;  /* NUL, or ASCII that stands for itself */
		} else {
			put_utf8(b, u);
		}
	}
	if (high == 0)
		ret = 0;
out:
	free(std);
	free(bin);
	return ret;
}

int imap_mutf7_decode(const char *in, size_t len, char **out_r)
{
	eng_buf b = ENG_BUF_INIT;
	bool after_run = false;
	size_t i = 0;

	*out_r = NULL;
	while (i < len) {
		unsigned char c = (unsigned char)in[i];

		if (!is_printable(c))
			goto bad;
		if (c != '&') {
			eng_buf_putc(&b, (char)c);
			after_run = false;
			i++;
			continue;
		}
		const char *dash = memchr(in + i + 1, '-', len - i - 1);

		if (dash == NULL)
			goto bad;  /* unterminated */
		if (dash == in + i + 1) {
			eng_buf_putc(&b, '&');
			after_run = false;
			i += 2;
			continue;
		}
		/* Two runs in a row must have been one. */
		if (after_run || decode_run(in + i + 1, (size_t)(dash - in) - i - 1, &b) < 0)
			goto bad;
		after_run = true;
		i = (size_t)(dash - in) + 1;
	}
	*out_r = b.data != NULL ? eng_buf_steal(&b, NULL) : eng_strdup("");
	return 0;
bad:
	eng_buf_free(&b);
	return ENG_EMALFORMED;
}

/* Decodes one UTF-8 sequence at s[0..len); returns its length or 0. */
static size_t utf8_next(const unsigned char *s, size_t len, uint32_t *cp_r)
{
	uint32_t cp, min;
	size_t n;

	if (s[0] < 0x80) {
		*cp_r = s[0];
		return 1;
	}
	if (s[0] >= 0xc2 && s[0] <= 0xdf) {
		n = 2;
		cp = s[0] & 0x1f;
		min = 0x80;
	} else if (s[0] >= 0xe0 && s[0] <= 0xef) {
		n = 3;
		cp = s[0] & 0x0f;
		min = 0x800;
	} else if (s[0] >= 0xf0 && s[0] <= 0xf4) {
		n = 4;
		cp = s[0] & 0x07;
		min = 0x10000;
	} else {
		return 0;
	}
	if (len < n)
		return 0;
	for (size_t i = 1; i < n; i++) {
		if ((s[i] & 0xc0) != 0x80)
			return 0;
		cp = (cp << 6) | (s[i] & 0x3f);
	}
	if (cp < min || cp > 0x10ffff || (cp >= 0xd800 && cp <= 0xdfff))
		return 0;
	*cp_r = cp;
	return n;
}

bool imap_utf8_valid(const char *s, size_t len)
{
	const unsigned char *u = (const unsigned char *)s;
	size_t i = 0;

	while (i < len) {
		uint32_t cp;
		size_t n = utf8_next(u + i, len - i, &cp);

		if (n == 0)
			return false;
		i += n;
	}
	return true;
}

/* Writes the UTF-16BE bytes be[0..n) as one "&...-" run. */
static void encode_run(const unsigned char *be, size_t n, eng_buf *b)
{
	size_t cap = sodium_base64_ENCODED_LEN(n,
		sodium_base64_VARIANT_ORIGINAL_NO_PADDING);
	char *enc = eng_malloc(cap);

	sodium_bin2base64(enc, cap, be, n, sodium_base64_VARIANT_ORIGINAL_NO_PADDING);
	for (char *c = enc; *c != '\0'; c++) {
		if (*c == '/')
			*c = ',';
	}
	eng_buf_putc(b, '&');
	eng_buf_puts(b, enc);
	eng_buf_putc(b, '-');
	free(enc);
}

static void put_unit(unsigned char *be, size_t *n, uint32_t u)
{
	be[(*n)++] = (unsigned char)(u >> 8);
	be[(*n)++] = (unsigned char)(u & 0xff);
}

int imap_mutf7_encode(const char *in, size_t len, char **out_r)
{
	const unsigned char *u = (const unsigned char *)in;
	eng_buf b = ENG_BUF_INIT;
	unsigned char *units;   /* UTF-16BE of the pending run */
	size_t n_units = 0, i = 0;

	*out_r = NULL;
	/* At most one UTF-16 unit (two bytes) per input byte. */
	units = eng_malloc(2 * (len > 0 ? len : 1));
	while (i < len) {
		uint32_t cp;
		size_t n = utf8_next(u + i, len - i, &cp);

		if (n == 0 || cp == 0) {
			free(units);
			eng_buf_free(&b);
			return ENG_EMALFORMED;
		}
		i += n;
		if (is_printable(cp)) {
			if (n_units > 0)
				encode_run(units, n_units, &b);
			n_units = 0;
			if (cp == '&')
				eng_buf_append(&b, "&-", 2);
			else
				eng_buf_putc(&b, (char)cp);
		} else if (cp >= 0x10000) {
			put_unit(units, &n_units, 0xd800 + ((cp - 0x10000) >> 10));
			put_unit(units, &n_units, 0xdc00 + ((cp - 0x10000) & 0x3ff));
		} else {
			put_unit(units, &n_units, cp);
		}
	}
	if (n_units > 0)
		encode_run(units, n_units, &b);
	free(units);
	*out_r = b.data != NULL ? eng_buf_steal(&b, NULL) : eng_strdup("");
	return 0;
}
