/*
 * Unit tests for the text the MIME parser extracts (engine/mime.h,
 * mime_codec.c, mime_summary.c): transfer and charset decoding into the
 * body text, its runs across pieces, the 200-character preview, the base
 * subject (RFC 5256), dates, and mime_utf8_sanitize against its
 * byte-by-byte reference. Structure and offsets are in test_mime.c.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <cmocka.h>

#include "mime.h"
#include "mime_private.h"
#include "eng_error.h"
#include "testutil.h"
#include "testmime.h"

static void test_text_decoding(void **state)
{
	static const char msg[] =
		"Content-Type: multipart/alternative; boundary=\"=_x\"\n\n"
		"--=_x\n"
		"Content-Type: text/plain; charset=\"iso-8859-1\"\n"
		"Content-Transfer-Encoding: quoted-printable\n\n"
		"Gr=FC=DFe, soft=\n"
		"break and =3D sign\n"
		"--=_x\n"
		"Content-Type: text/html; charset=utf-8\n"
		"Content-Transfer-Encoding: base64\n\n"
		"PGh0bWw+PHN0eWxlPnAge308L3N0eWxlPjxwPkEmYW1wO0IgJiMyMzM7PC9wPjwv\n"
		"aHRtbD4=\n"
		"--=_x--\n";
	eng_mime_part *root;
	eng_mime_summary sum;
	eng_mime_limits lim;
	(void)state;

	parse_str(msg, &root, &sum);
	assert_non_null(strstr(sum.body_text.data, "Gr\xc3\xbc\xc3\x9f" "e, softbreak and = sign"));
	/* <html><style>p {}</style><p>A&amp;B &#233;</p></html> */
	assert_non_null(strstr(sum.body_text.data, "A&B \xc3\xa9"));
	assert_null(strstr(sum.body_text.data, "p {}"));
	eng_mime_part_free(&root);
	eng_mime_summary_clear(&sum);

	/* Bounded by max_text_bytes, cut at a character boundary. */
	eng_mime_limits_default(&lim);
	lim.max_text_bytes = 11;
	eng_mime_parse("\n\xc3\xa9\xc3\xa9\xc3\xa9\xc3\xa9\xc3\xa9\xc3\xa9\xc3\xa9", 15, &lim, &root, &sum);
	assert_int_equal(sum.body_text.len, 10);
	assert_string_equal(sum.preview, "\xc3\xa9\xc3\xa9\xc3\xa9\xc3\xa9\xc3\xa9");
	eng_mime_part_free(&root);
	eng_mime_summary_clear(&sum);
}

/* body_text of msg (len bytes) with max_text_bytes max, fed in pieces of
 * `piece` bytes (0: whole; -1: random sizes up to 1,000). */
static void body_text_of(const char *msg, size_t len, uint32_t max, int piece,
			 eng_buf *out)
{
	eng_mime_limits lim;
	eng_mime_parser *p;
	eng_mime_part *root;
	eng_mime_summary sum;
	unsigned seed = 12345;

	eng_mime_limits_default(&lim);
	lim.max_text_bytes = max;
	p = eng_mime_parser_new(&lim);
	for (size_t i = 0; i < len;) {
		size_t n = piece == 0 ? len : piece > 0 ? (size_t)piece :
			1 + (size_t)(rand_r(&seed) % 1000);

		if (n > len - i)
			n = len - i;
		eng_mime_parser_feed(p, msg + i, n);
		i += n;
	}
	eng_mime_parser_finish(p, &root, &sum);
	eng_mime_parser_free(&p);
	eng_buf_reset(out);
	eng_buf_append(out, sum.body_text.data, sum.body_text.len);
	eng_mime_part_free(&root);
	eng_mime_summary_clear(&sum);
}

static void b64_lines(const unsigned char *in, size_t len, size_t wrap,
		      eng_buf *out)
{
	static const char a[] =
		"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
	size_t col = 0;

	for (size_t i = 0; i < len; i += 3) {
		uint32_t v = (uint32_t)in[i] << 16;
		size_t n = len - i < 3 ? len - i : 3;

		if (n > 1)
			v |= (uint32_t)in[i + 1] << 8;
		if (n > 2)
			v |= in[i + 2];
		eng_buf_putc(out, a[(v >> 18) & 63]);
		eng_buf_putc(out, a[(v >> 12) & 63]);
		eng_buf_putc(out, n > 1 ? a[(v >> 6) & 63] : '=');
		eng_buf_putc(out, n > 2 ? a[v & 63] : '=');
		if ((col += 4) == wrap) {
			eng_buf_puts(out, "\r\n");
			col = 0;
		}
	}
	eng_buf_puts(out, "\r\n");
}

/*
 * The decoded text of plain and base64 parts (lines of 76, and one line),
 * CRLF line ends, several KB:
 * the same whatever the pieces it arrives in (long runs go through
 * text_bytes' bulk paths, single bytes through text_byte), equal to the
 * text itself, and cut at max_text_bytes.
 */
static void test_text_runs(void **state)
{
	enum { TLEN = 6000 };
	char t[TLEN + 1];
	eng_buf msg = ENG_BUF_INIT, want = ENG_BUF_INIT, got = ENG_BUF_INIT;
	static const int pieces[] = { 0, 1, 7, 4096, -1 };
	unsigned seed = 99;
	(void)state;

	for (size_t i = 0; i < TLEN; i++)   /* printable ASCII, LF lines */
		t[i] = i % 71 == 70 ? '\n' : (char)(' ' + rand_r(&seed) % 95);
	t[TLEN] = '\0';
	eng_buf_puts(&msg, "Content-Type: multipart/mixed; boundary=\"b\"\r\n\r\n"
		     "--b\r\nContent-Type: text/plain; charset=utf-8\r\n\r\n");
	for (size_t i = 0; i < TLEN; i++) {
		if (t[i] == '\n')
			eng_buf_putc(&msg, '\r');
		eng_buf_putc(&msg, t[i]);
	}
	eng_buf_puts(&msg, "\r\n--b\r\nContent-Type: text/plain\r\n"
		     "Content-Transfer-Encoding: base64\r\n\r\n");
	b64_lines((const unsigned char *)t, TLEN, 76, &msg);
	eng_buf_puts(&msg, "--b\r\nContent-Type: text/plain\r\n"
		     "Content-Transfer-Encoding: base64\r\n\r\n");
	b64_lines((const unsigned char *)t, TLEN, 0, &msg);  /* one line */
	eng_buf_puts(&msg, "--b--\r\n");
	eng_buf_append(&want, t, TLEN);
	for (int i = 0; i < 2; i++) {
		eng_buf_putc(&want, '\n');
		eng_buf_append(&want, t, TLEN);
	}
	for (size_t k = 0; k < sizeof(pieces) / sizeof(pieces[0]); k++) {
		body_text_of(msg.data, msg.len, 1024 * 1024, pieces[k], &got);
		assert_int_equal(got.len, want.len);
		assert_memory_equal(got.data, want.data, want.len);
		body_text_of(msg.data, msg.len, 1000, pieces[k], &got);
		assert_int_equal(got.len, 1000);
		assert_memory_equal(got.data, t, 1000);
		/* The cut inside the base64 part: both texts, the second cut. */
		body_text_of(msg.data, msg.len, TLEN + 1 + 500, pieces[k], &got);
		assert_int_equal(got.len, TLEN + 1 + 500);
		assert_memory_equal(got.data, want.data, got.len);
	}
	eng_buf_free(&msg);
	eng_buf_free(&want);
	eng_buf_free(&got);
}

static void test_preview_200(void **state)
{
	eng_buf m = ENG_BUF_INIT;
	eng_mime_part *root;
	eng_mime_summary sum;
	(void)state;

	eng_buf_puts(&m, "Subject: p\n\n");
	for (int i = 0; i < 300; i++)
		eng_buf_puts(&m, i % 10 == 0 ? "\n\n  \xe2\x82\xac" : "\xe2\x82\xac");
	eng_mime_parse(m.data, m.len, NULL, &root, &sum);
	size_t chars = 0;
	for (const char *s = sum.preview; *s; s++)
		chars += ((unsigned char)*s & 0xc0) != 0x80;
	assert_int_equal(chars, 200);
	assert_null(strstr(sum.preview, "  "));
	assert_null(strchr(sum.preview, '\n'));
	eng_mime_part_free(&root);
	eng_mime_summary_clear(&sum);
	eng_buf_free(&m);
}

static void test_base_subject(void **state)
{
	static const char *const cases[][2] = {
		{ "Re: hello", "hello" },
		{ "RE: Re: re:  hello  world ", "hello world" },
		{ "Fwd: [list] Re: hi (fwd)", "hi" },
		{ "[fwd: Re: topic]", "topic" },
		{ "[PATCH] fix", "fix" },
		{ "[only blob]", "[only blob]" },
		{ "Re [x]: y", "y" },
		{ "FW: fw: Fwd:x", "x" },
		{ "Renewal", "Renewal" },
		{ "", "" },
	};
	(void)state;

	for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
		char msg[256];
		eng_mime_part *root;
		eng_mime_summary sum;
		snprintf(msg, sizeof(msg), "Subject: %s\n\n", cases[i][0]);
		parse_str(msg, &root, &sum);
		assert_string_equal(sum.base_subject, cases[i][1]);
		eng_mime_part_free(&root);
		eng_mime_summary_clear(&sum);
	}
}

static void test_dates(void **state)
{
	static const struct { const char *date; int64_t t; } cases[] = {
		{ "Fri, 21 Nov 1997 09:55:06 -0600", 880127706 },
		{ "21 Nov 97 09:55:06 GMT", 880106106 },
		{ "Thu, 13 Feb 1969 23:32:54 -0330 (Newfoundland Time)", -27723426 },
		{ "Mon, 1 Jan 2024 00:00 +0000", 1704067200 },
		{ "1 Jan 2024 00:00:00 EST", 1704085200 },
		{ "Tue, 29 Feb 2000 12:00:00 +0100", 951822000 },
		{ "Sat, 29 Feb 2001 12:00:00 +0100", INT64_MIN },
		{ "not a date", INT64_MIN },
		{ "Mon, 32 Jan 2024 00:00:00 +0000", INT64_MIN },
	};
	(void)state;

	for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
		char msg[256];
		eng_mime_part *root;
		eng_mime_summary sum;
		snprintf(msg, sizeof(msg), "Date: %s\n\n", cases[i].date);
		parse_str(msg, &root, &sum);
		if (sum.sent_date != cases[i].t)
			fail_msg("%s: got %lld", cases[i].date, (long long)sum.sent_date);
		eng_mime_part_free(&root);
		eng_mime_summary_clear(&sum);
	}
	eng_mime_part *root;
	eng_mime_summary sum;
	parse_str("Subject: no date\n\n", &root, &sum);
	assert_true(sum.sent_date == INT64_MIN);
	eng_mime_part_free(&root);
	eng_mime_summary_clear(&sum);
}

/* mime_utf8_sanitize byte by byte, as it was before ASCII runs went in
 * one append: the reference for test_utf8_sanitize. */
static void sanitize_ref(const unsigned char *s, size_t len, eng_buf *out)
{
	for (size_t i = 0; i < len;) {
		unsigned char c = s[i];
		size_t n = c >= 0xc2 && c <= 0xdf ? 2 : c >= 0xe0 && c <= 0xef ?
			3 : c >= 0xf0 && c <= 0xf4 ? 4 : 0;
		uint32_t cp = n == 2 ? c & 0x1fu : n == 3 ? c & 0x0fu : c & 0x07u;
		bool ok = n != 0 && i + n <= len;

		if (c == 0 || c < 0x80) {
			if (c != 0)
				eng_buf_putc(out, (char)c);
			i++;
			continue;
		}
		for (size_t k = 1; ok && k < n; k++) {
			ok = (s[i + k] & 0xc0) == 0x80;
			cp = (cp << 6) | (s[i + k] & 0x3fu);
		}
		if (ok && ((n == 3 && (cp < 0x800 || (cp >= 0xd800 &&
						     cp <= 0xdfff))) ||
			   (n == 4 && (cp < 0x10000 || cp > 0x10ffff))))
			ok = false;
		if (ok)
			eng_buf_append(out, s + i, n);
		else
			eng_buf_puts(out, "\xef\xbf\xbd");
		i += ok ? n : 1;
	}
}

/* UTF-8 sanitising (mime_header.c): ASCII runs, NULs, valid and broken
 * sequences, cut at every length; same bytes as byte by byte. */
static void test_utf8_sanitize(void **state)
{
	static const char *const fixed[] = {
		"plain ascii", "a\0b\0\0c", "caf\xc3\xa9 \xe2\x82\xac \xf0\x9f\x98\x80",
		"\xc3", "\xe2\x82", "\xed\xa0\x80 surrogate", "\xc0\xaf overlong",
		"\xf4\x90\x80\x80 too big", "\x80\x80 stray", "x\xff\xfey",
	};
	static const unsigned char alpha[] = { 'a', ' ', 0, 0x7f, 0x80, 0xbf,
		0xc2, 0xc3, 0xdf, 0xe0, 0xed, 0xef, 0xf0, 0xf4, 0xf5, 0xff };
	unsigned char buf[64];
	uint32_t x = 99;

	(void)state;
	for (size_t f = 0; f < sizeof(fixed) / sizeof(fixed[0]); f++) {
		size_t len = strlen(fixed[f]) + (f == 1 ? 5 : 0);

		for (size_t cut = 0; cut <= len; cut++) {
			eng_buf a = ENG_BUF_INIT, b = ENG_BUF_INIT;

			mime_utf8_sanitize(fixed[f], cut, &a);
			sanitize_ref((const unsigned char *)fixed[f], cut, &b);
			assert_int_equal(a.len, b.len);
			if (a.len > 0)
				assert_memory_equal(a.data, b.data, a.len);
			eng_buf_free(&a);
			eng_buf_free(&b);
		}
	}
	for (int round = 0; round < 20000; round++) {
		eng_buf a = ENG_BUF_INIT, b = ENG_BUF_INIT;
		size_t len = (x >> 8) % sizeof(buf);

		for (size_t i = 0; i < len; i++) {
			x = x * 1103515245u + 12345u;
			buf[i] = (x >> 20) & 1 ? alpha[(x >> 16) % sizeof(alpha)] :
				(unsigned char)('a' + (x >> 24) % 26);
		}
		x = x * 1103515245u + 12345u;
		mime_utf8_sanitize((const char *)buf, len, &a);
		sanitize_ref(buf, len, &b);
		assert_int_equal(a.len, b.len);
		if (a.len > 0)
			assert_memory_equal(a.data, b.data, a.len);
		eng_buf_free(&a);
		eng_buf_free(&b);
	}
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_text_decoding),
		cmocka_unit_test(test_text_runs),
		cmocka_unit_test(test_preview_200),
		cmocka_unit_test(test_base_subject),
		cmocka_unit_test(test_dates),
		cmocka_unit_test(test_utf8_sanitize),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
