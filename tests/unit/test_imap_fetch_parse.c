/*
 * The I/O-free parts of FETCH (frontends/imap/imap_fetch_parse.h): the
 * attribute parser on commands read by the real IMAP parser (macros,
 * every section form, partials, modifiers, and the BAD cases), the labels
 * and sqlited sections it derives, HEADER.FIELDS[.NOT] filtering, the
 * streaming base64 / quoted-printable decoder (whole, byte by byte and in
 * every two-piece split must agree, against RFC 2045 vectors) and the
 * PREVIEW text.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "eng_error.h"
#include "imap_fetch_parse.h"
#include "imap_parser.h"

/* Parses "t FETCH <args>\r\n" and runs imap_fetch_parse on it. */
static imap_parser *parser;

static int parse_fetch(const char *args, imap_fetch_spec *spec,
		       const char **err_r)
{
	imap_parser_limits lim;
	char line[4096];
	imap_event ev;
	size_t off = 0, len;

	imap_parser_free(&parser);
	imap_parser_limits_default(&lim);
	parser = imap_parser_new(&lim);
	snprintf(line, sizeof(line), "t FETCH %s\r\n", args);
	len = strlen(line);
	memset(&ev, 0, sizeof(ev));
	while (off < len) {
		off += imap_parser_feed(parser, (const uint8_t *)line + off,
					len - off, &ev);
		if (ev.kind == IMAP_EV_COMMAND)
			break;
		assert_int_not_equal(ev.kind, IMAP_EV_ERROR);
	}
	assert_int_equal(ev.kind, IMAP_EV_COMMAND);
	assert_true(ev.cmd.n_args >= 2);
	return imap_fetch_parse(&ev.cmd.args[1],
				ev.cmd.n_args > 2 ? &ev.cmd.args[2] : NULL,
				spec, err_r);
}

static void expect_bad(const char *args, const char *why)
{
	imap_fetch_spec spec;
	const char *err = NULL;

	if (parse_fetch(args, &spec, &err) != ENG_EINVAL) {
		fprintf(stderr, "accepted: %s\n", args);
		fail();
	}
	assert_non_null(err);
	if (why != NULL && strstr(err, why) == NULL) {
		fprintf(stderr, "%s: got \"%s\"\n", args, err);
		fail();
	}
	imap_fetch_spec_clear(&spec);
}

static void label_of(const imap_fetch_item *it, char *out, size_t n)
{
	eng_buf b = ENG_BUF_INIT;

	imap_fetch_item_label(it, &b);
	snprintf(out, n, "%s", b.data);
	eng_buf_free(&b);
}

/* imap_fetch_put_uint against printf's %llu. */
static void test_put_uint(void **state)
{
	static const uint64_t v[] = { 0, 1, 9, 10, 99, 100, 27000, 4294967295u,
				      4294967296u, UINT64_MAX - 1, UINT64_MAX };
	eng_buf b = ENG_BUF_INIT;
	char want[32];

	(void)state;
	for (size_t i = 0; i < sizeof(v) / sizeof(v[0]); i++) {
		eng_buf_reset(&b);
		eng_buf_putc(&b, '{');
		imap_fetch_put_uint(&b, v[i]);
		eng_buf_putc(&b, '}');
		snprintf(want, sizeof(want), "{%llu}", (unsigned long long)v[i]);
		assert_string_equal(b.data, want);
	}
	eng_buf_free(&b);
}

static void test_macros(void **state)
{
	imap_fetch_spec spec;
	const char *err;

	(void)state;
	assert_int_equal(parse_fetch("1 ALL", &spec, &err), 0);
	assert_int_equal(spec.attrs, IMAP_FA_FLAGS | IMAP_FA_INTERNALDATE |
			 IMAP_FA_RFC822_SIZE | IMAP_FA_ENVELOPE);
	imap_fetch_spec_clear(&spec);
	assert_int_equal(parse_fetch("1 fast", &spec, &err), 0);
	assert_int_equal(spec.attrs, IMAP_FA_FLAGS | IMAP_FA_INTERNALDATE |
			 IMAP_FA_RFC822_SIZE);
	imap_fetch_spec_clear(&spec);
	assert_int_equal(parse_fetch("1 FULL", &spec, &err), 0);
	assert_true(spec.attrs & IMAP_FA_BODY);
	assert_true(spec.attrs & IMAP_FA_ENVELOPE);
	assert_int_equal(spec.n_items, 0);
	imap_fetch_spec_clear(&spec);
	/* A macro is not an attribute inside a list. */
	expect_bad("1 (ALL)", "Unknown");
}

static void test_simple(void **state)
{
	imap_fetch_spec spec;
	const char *err;

	(void)state;
	assert_int_equal(parse_fetch("1:* (FLAGS UID INTERNALDATE RFC822.SIZE "
				     "ENVELOPE BODY BODYSTRUCTURE MODSEQ "
				     "SAVEDATE EMAILID THREADID PREVIEW)",
				     &spec, &err), 0);
	assert_int_equal(spec.attrs, 0xfff);
	assert_int_equal(spec.n_items, 0);
	imap_fetch_spec_clear(&spec);
	assert_int_equal(parse_fetch("1 (PREVIEW (LAZY) UID)", &spec, &err), 0);
	assert_int_equal(spec.attrs, IMAP_FA_PREVIEW | IMAP_FA_UID);
	imap_fetch_spec_clear(&spec);
	assert_int_equal(parse_fetch("1 uid", &spec, &err), 0);
	assert_int_equal(spec.attrs, IMAP_FA_UID);
	imap_fetch_spec_clear(&spec);
	expect_bad("1 (PREVIEW (FUZZY))", "PREVIEW");
	expect_bad("1 (FLAGS FOO)", "Unknown FETCH attribute");
	expect_bad("1 ()", NULL);
	expect_bad("1 \"FLAGS\"", NULL);
}

struct section_case {
	const char *attr;
	enum imap_fetch_kind kind;
	bool peek;
	const char *part;
	enum imap_fetch_text text;
	size_t n_fields;
	bool partial;
	uint64_t offset, length;
	const char *label;
	const char *rpc;
	bool seen;
};

static const struct section_case sections[] = {
	{ "BODY[]", IMAP_FK_BODY, false, "", IMAP_FT_ALL, 0, false, 0, 0,
	  "BODY[]", "", true },
	{ "BODY.PEEK[]<0.100>", IMAP_FK_BODY, true, "", IMAP_FT_ALL, 0, true,
	  0, 100, "BODY[]<0>", "", false },
	{ "body.peek[header]", IMAP_FK_BODY, true, "", IMAP_FT_HEADER, 0,
	  false, 0, 0, "BODY[HEADER]", "HEADER", false },
	{ "BODY[TEXT]<17.3>", IMAP_FK_BODY, false, "", IMAP_FT_TEXT, 0, true,
	  17, 3, "BODY[TEXT]<17>", "TEXT", true },
	{ "BODY[1.2]", IMAP_FK_BODY, false, "1.2", IMAP_FT_ALL, 0, false, 0, 0,
	  "BODY[1.2]", "1.2", true },
	{ "BODY[1.2.HEADER]", IMAP_FK_BODY, false, "1.2", IMAP_FT_HEADER, 0,
	  false, 0, 0, "BODY[1.2.HEADER]", "1.2.HEADER", true },
	{ "BODY[3.TEXT]", IMAP_FK_BODY, false, "3", IMAP_FT_TEXT, 0, false, 0,
	  0, "BODY[3.TEXT]", "3.TEXT", true },
	{ "BODY[2.MIME]", IMAP_FK_BODY, false, "2", IMAP_FT_MIME, 0, false, 0,
	  0, "BODY[2.MIME]", "2.MIME", true },
	{ "BODY.PEEK[HEADER.FIELDS (From To \"Subject\")]", IMAP_FK_BODY, true,
	  "", IMAP_FT_FIELDS, 3, false, 0, 0,
	  "BODY[HEADER.FIELDS (From To Subject)]", "HEADER", false },
	{ "BODY[HEADER.FIELDS.NOT (X-Spam)]<5.10>", IMAP_FK_BODY, false, "",
	  IMAP_FT_FIELDS_NOT, 1, true, 5, 10,
	  "BODY[HEADER.FIELDS.NOT (X-Spam)]<5>", "HEADER", true },
	{ "BODY[4.1.HEADER.FIELDS (date)]", IMAP_FK_BODY, false, "4.1",
	  IMAP_FT_FIELDS, 1, false, 0, 0, "BODY[4.1.HEADER.FIELDS (date)]",
	  "4.1.HEADER", true },
	{ "RFC822", IMAP_FK_BODY, false, "", IMAP_FT_ALL, 0, false, 0, 0,
	  "RFC822", "", true },
	{ "RFC822.HEADER", IMAP_FK_BODY, true, "", IMAP_FT_HEADER, 0, false, 0,
	  0, "RFC822.HEADER", "HEADER", false },
	{ "rfc822.text", IMAP_FK_BODY, false, "", IMAP_FT_TEXT, 0, false, 0, 0,
	  "RFC822.TEXT", "TEXT", true },
	{ "BINARY[1]", IMAP_FK_BINARY, false, "1", IMAP_FT_ALL, 0, false, 0, 0,
	  "BINARY[1]", "1", true },
	{ "BINARY.PEEK[2.3]<0.4>", IMAP_FK_BINARY, true, "2.3", IMAP_FT_ALL, 0,
	  true, 0, 4, "BINARY[2.3]<0>", "2.3", false },
	{ "BINARY.SIZE[1]", IMAP_FK_BINARY_SIZE, true, "1", IMAP_FT_ALL, 0,
	  false, 0, 0, "BINARY.SIZE[1]", "1", false },
	{ "BINARY[]", IMAP_FK_BINARY, false, "", IMAP_FT_ALL, 0, false, 0, 0,
	  "BINARY[]", "", true },
};

static void test_sections(void **state)
{
	(void)state;
	for (size_t i = 0; i < sizeof(sections) / sizeof(sections[0]); i++) {
		const struct section_case *c = &sections[i];
		imap_fetch_spec spec;
		const char *err = NULL;
		char args[512], label[512], rpc[128];
		const imap_fetch_item *it;

		snprintf(args, sizeof(args), "1 (FLAGS %s)", c->attr);
		if (parse_fetch(args, &spec, &err) != 0) {
			fprintf(stderr, "%s: %s\n", c->attr, err);
			fail();
		}
		assert_int_equal(spec.n_items, 1);
		it = &spec.items[0];
		assert_int_equal(it->kind, c->kind);
		assert_int_equal(it->peek, c->peek);
		assert_string_equal(it->part, c->part);
		assert_int_equal(it->text, c->text);
		assert_int_equal(it->n_fields, c->n_fields);
		assert_int_equal(it->partial, c->partial);
		assert_int_equal(it->offset, c->offset);
		assert_int_equal(it->length, c->length);
		label_of(it, label, sizeof(label));
		assert_string_equal(label, c->label);
		imap_fetch_item_rpc_section(it, rpc, sizeof(rpc));
		assert_string_equal(rpc, c->rpc);
		assert_int_equal(imap_fetch_item_sets_seen(it), c->seen);
		imap_fetch_spec_clear(&spec);
	}
}

static void test_bad_sections(void **state)
{
	(void)state;
	expect_bad("1 BODY[MIME]", "section");
	expect_bad("1 BODY[0]", "section");
	expect_bad("1 BODY[1.0]", "section");
	expect_bad("1 BODY[1.]", "section");
	expect_bad("1 BODY[FOO]", "section");
	expect_bad("1 BODY[HEADER.FIELDS]", "section");
	expect_bad("1 BODY[HEADER.FIELDS ()]", "section");
	expect_bad("1 BODY[HEADER.FIELDS (a:b)]", "section");
	expect_bad("1 BODY[1.2.3.4.5.6.7.8.9.1.2.3.4.5.6.7.8.9.1.2.3.4.5.6.7.8."
		   "9.1.2.3.4.5.6.7.8.9]", "section");
	expect_bad("1 BODY[TEXT]<1>", "partial");
	expect_bad("1 BODY[TEXT]<1.0>", "partial");
	expect_bad("1 BODY[TEXT]<a.1>", "partial");
	expect_bad("1 BODY[TEXT]<1.2>x", "partial");
	expect_bad("1 BODY[TEXT]<99999999999999999999999.1>", "partial");
	expect_bad("1 BINARY.SIZE[1]<0.1>", "partial");
	expect_bad("1 BINARY[1.TEXT]", "section");
	expect_bad("1 BINARY[HEADER]", "section");
	expect_bad("1 BODY.PEAK[]", "Unknown");
	/* Field names that could not be written back as they came. */
	expect_bad("1 BODY[HEADER.FIELDS (a\\b)]", "section");
}

static void test_modifiers(void **state)
{
	imap_fetch_spec spec;
	const char *err;

	(void)state;
	assert_int_equal(parse_fetch("1:* (FLAGS) (CHANGEDSINCE 12345)",
				     &spec, &err), 0);
	assert_true(spec.has_changedsince);
	assert_int_equal(spec.changedsince, 12345);
	assert_false(spec.vanished);
	imap_fetch_spec_clear(&spec);
	assert_int_equal(parse_fetch("1:* FLAGS (CHANGEDSINCE 7 VANISHED)",
				     &spec, &err), 0);
	assert_true(spec.vanished);
	assert_int_equal(spec.changedsince, 7);
	imap_fetch_spec_clear(&spec);
	expect_bad("1 FLAGS (VANISHED)", "VANISHED");
	expect_bad("1 FLAGS (CHANGEDSINCE)", "modifier");
	expect_bad("1 FLAGS (CHANGEDSINCE x)", "modifier");
	expect_bad("1 FLAGS (CHANGEDSINCE 1 CHANGEDSINCE 2)", "modifier");
	expect_bad("1 FLAGS (FOO 1)", "modifier");
	expect_bad("1 FLAGS ()", "modifier");
}

static void test_too_many(void **state)
{
	char args[8192];
	size_t n = 0;

	(void)state;
	n += (size_t)snprintf(args + n, sizeof(args) - n, "1 (");
	for (int i = 0; i <= IMAP_FETCH_MAX_ITEMS; i++)
		n += (size_t)snprintf(args + n, sizeof(args) - n,
				      "BODY.PEEK[%d] ", i + 1);
	snprintf(args + n - 1, sizeof(args) - n + 1, ")");
	expect_bad(args, "Too many");
}

/* ---- HEADER.FIELDS ---- */

static const char hdr[] =
	"Received: from a\r\n\tby b\r\n"
	"From: Alice <a@x.org>\r\n"
	"to: b@y.org,\r\n c@y.org\r\n"
	"Subject : hi\r\n"
	"X-Empty:\r\n"
	"\r\n";

static void filter(const char *const *names, size_t n, bool not_,
		   const char *expect)
{
	size_t lens[8];
	eng_buf out = ENG_BUF_INIT;

	for (size_t i = 0; i < n; i++)
		lens[i] = strlen(names[i]);
	imap_header_filter(hdr, sizeof(hdr) - 1, names, lens, n, not_, &out);
	eng_buf_putc(&out, '\0');
	assert_string_equal(out.data, expect);
	eng_buf_free(&out);
}

static void test_header_filter(void **state)
{
	const char *const a[] = { "FROM", "To" };
	const char *const b[] = { "subject", "x-empty" };
	const char *const c[] = { "received" };
	const char *const d[] = { "Nope" };
	const char *const e[] = { "Fro" };

	(void)state;
	filter(a, 2, false, "From: Alice <a@x.org>\r\nto: b@y.org,\r\n c@y.org\r\n\r\n");
	filter(b, 2, false, "Subject : hi\r\nX-Empty:\r\n\r\n");
	filter(c, 1, false, "Received: from a\r\n\tby b\r\n\r\n");
	filter(d, 1, false, "\r\n");
	filter(e, 1, false, "\r\n");
	filter(c, 1, true, "From: Alice <a@x.org>\r\nto: b@y.org,\r\n c@y.org\r\n"
	       "Subject : hi\r\nX-Empty:\r\n\r\n");
}

static void test_header_filter_unterminated(void **state)
{
	const char *const f[] = { "b" };
	size_t lens[] = { 1 };
	eng_buf out = ENG_BUF_INIT;
	const char h[] = "a: 1\nb: 2\n 3";

	(void)state;
	/* Bare LF lines and a header without its blank line. */
	imap_header_filter(h, sizeof(h) - 1, f, lens, 1, false, &out);
	eng_buf_putc(&out, '\0');
	assert_string_equal(out.data, "b: 2\n 3\r\n\r\n");
	eng_buf_free(&out);
}

/* ---- decoding ---- */

static void decode_all_ways(const char *enc, const char *in, size_t in_len,
			    const void *expect, size_t expect_len)
{
	imap_cte d;
	eng_buf out = ENG_BUF_INIT;

	/* Whole. */
	assert_int_equal(imap_cte_init(&d, enc), 0);
	imap_cte_feed(&d, in, in_len, &out);
	imap_cte_finish(&d, &out);
	assert_int_equal(out.len, expect_len);
	assert_memory_equal(out.data != NULL ? out.data : "", expect, expect_len);
	/* Byte by byte. */
	eng_buf_reset(&out);
	imap_cte_init(&d, enc);
	for (size_t i = 0; i < in_len; i++)
		imap_cte_feed(&d, in + i, 1, &out);
	imap_cte_finish(&d, &out);
	assert_int_equal(out.len, expect_len);
	assert_memory_equal(out.data != NULL ? out.data : "", expect, expect_len);
	/* Every split in two. */
	for (size_t k = 0; k <= in_len; k++) {
		eng_buf_reset(&out);
		imap_cte_init(&d, enc);
		imap_cte_feed(&d, in, k, &out);
		imap_cte_feed(&d, in + k, in_len - k, &out);
		imap_cte_finish(&d, &out);
		assert_int_equal(out.len, expect_len);
		assert_memory_equal(out.data != NULL ? out.data : "", expect,
				    expect_len);
	}
	eng_buf_free(&out);
}

#define DECODE(enc, in, out) \
	decode_all_ways(enc, in, sizeof(in) - 1, out, sizeof(out) - 1)

static void test_base64(void **state)
{
	(void)state;
	DECODE("base64", "", "");
	DECODE("base64", "Zg==", "f");
	DECODE("base64", "Zm8=", "fo");
	DECODE("base64", "Zm9v", "foo");
	DECODE("BASE64", "Zm9v\r\nYmFy\r\n", "foobar");
	DECODE("base64", "AAEC/w==\r\n", "\x00\x01\x02\xff");
	/* Junk is skipped; nothing after the padding counts. */
	DECODE("base64", "Zm9v*YmFy\r\n!", "foobar");
	DECODE("base64", "Zg==Zm9v", "f");
	/* Unpadded tails. */
	DECODE("base64", "Zm8", "fo");
	DECODE("base64", "Zg", "f");
}

static void test_qp(void **state)
{
	(void)state;
	DECODE("quoted-printable", "", "");
	DECODE("quoted-printable", "caf=C3=A9\r\n", "caf\xc3\xa9\r\n");
	DECODE("quoted-printable", "soft=\r\nbreak", "softbreak");
	DECODE("quoted-printable", "soft=\nbreak", "softbreak");
	DECODE("quoted-printable", "trailing   \r\nspace", "trailing\r\nspace");
	DECODE("quoted-printable", "in the middle  ok", "in the middle  ok");
	DECODE("quoted-printable", "lower=c3=a9", "lower\xc3\xa9");
	DECODE("quoted-printable", "=3D=3d", "==");
	/* Malformed sequences are kept as written. */
	DECODE("quoted-printable", "a=ZZb", "a=ZZb");
	DECODE("quoted-printable", "a=4", "a=4");
	DECODE("quoted-printable", "end=", "end");
	DECODE("quoted-printable", "tab\t\t\n", "tab\n");
	DECODE("7bit", "as =3D is", "as =3D is");
	DECODE(NULL, "x", "x");
}

static void test_unknown_cte(void **state)
{
	imap_cte d;

	(void)state;
	assert_int_equal(imap_cte_init(&d, "x-uuencode"), ENG_ENOTFOUND);
	assert_int_equal(imap_cte_init(&d, "8bit"), 0);
	assert_int_equal(imap_cte_init(&d, "binary"), 0);
}

/* ---- PREVIEW ---- */

static void preview(const char *in, const char *cs, bool html,
		    const char *expect)
{
	eng_buf out = ENG_BUF_INIT;

	imap_preview_build(in, strlen(in), cs, html, &out);
	eng_buf_putc(&out, '\0');
	assert_string_equal(out.data, expect);
	eng_buf_free(&out);
}

static size_t utf8_chars(const char *s)
{
	size_t n = 0;

	for (; *s != '\0'; s++)
		n += ((unsigned char)*s & 0xc0) != 0x80;
	return n;
}

static void test_preview(void **state)
{
	char big[2000];
	eng_buf out = ENG_BUF_INIT;

	(void)state;
	preview("  Hello,\r\n\r\n  world\t!  \r\n", NULL, false, "Hello, world !");
	preview("", NULL, false, "");
	preview("<html><head><style>p{}</style></head><body><p>Hi &amp; "
		"bye</p></body></html>", "utf-8", true, "Hi & bye");
	preview("caf\xe9", "iso-8859-1", false, "caf\xc3\xa9");
	/* 300 two-byte characters: 256 kept, whole. */
	for (size_t i = 0; i < 300; i++)
		memcpy(big + 2 * i, "\xc3\xa9", 2);
	big[600] = '\0';
	imap_preview_build(big, 600, "utf-8", false, &out);
	eng_buf_putc(&out, '\0');
	assert_int_equal(utf8_chars(out.data), IMAP_PREVIEW_MAX_CHARS);
	assert_int_equal(strlen(out.data), 2 * IMAP_PREVIEW_MAX_CHARS);
	/* Never a space at the end, even when the limit falls on one. */
	memset(big, 'a', 255);
	memcpy(big + 255, " b", 3);
	eng_buf_reset(&out);
	imap_preview_build(big, 257, NULL, false, &out);
	assert_int_equal(out.len, 255);
	assert_int_not_equal(out.data[out.len - 1], ' ');
	/* A prefix cut inside a character drops the partial one. */
	eng_buf_reset(&out);
	imap_preview_build("ab\xe2\x82", 4, "utf-8", false, &out);
	assert_true(out.len >= 2);
	assert_memory_equal(out.data, "ab", 2);
	eng_buf_free(&out);
}

static int teardown(void **state)
{
	(void)state;
	imap_parser_free(&parser);
	return 0;
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_macros),
		cmocka_unit_test(test_simple),
		cmocka_unit_test(test_sections),
		cmocka_unit_test(test_bad_sections),
		cmocka_unit_test(test_modifiers),
		cmocka_unit_test(test_too_many),
		cmocka_unit_test(test_header_filter),
		cmocka_unit_test(test_header_filter_unterminated),
		cmocka_unit_test(test_base64),
		cmocka_unit_test(test_qp),
		cmocka_unit_test(test_unknown_cte),
		cmocka_unit_test(test_preview),
		cmocka_unit_test(test_put_uint),
	};

	return cmocka_run_group_tests(tests, NULL, teardown);
}
