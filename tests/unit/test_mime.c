/*
 * Unit tests for the MIME parser (engine/mime.h): structure, offsets,
 * IMAP writers, summary, limits, split-independence, the stored format,
 * and the email test corpus that ships with Python. The text it extracts
 * (decoding, previews, base subjects, dates, UTF-8 sanitizing) is tested
 * in test_mime_text.c.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <glob.h>
#include <time.h>
#include <cmocka.h>

#include "mime.h"
#include "mime_private.h"
#include "eng_error.h"
#include "testutil.h"
#include "testmime.h"

#define PY_DATA "/usr/lib/python3.11/test/test_email/data"


static char *bodystructure(const eng_mime_part *root, bool extended)
{
	eng_buf b = ENG_BUF_INIT;

	eng_mime_write_bodystructure(root, extended, &b);
	return eng_buf_steal(&b, NULL);
}

/* "type/sub(children)" or "type/sub[message]", for comparing shapes. */
static void tree_str(const eng_mime_part *p, eng_buf *out)
{
	eng_buf_printf(out, "%s/%s", p->type, p->subtype);
	if (p->n_children > 0) {
		eng_buf_putc(out, '(');
		for (size_t i = 0; i < p->n_children; i++) {
			if (i > 0)
				eng_buf_putc(out, ',');
			tree_str(p->children[i], out);
		}
		eng_buf_putc(out, ')');
	}
	if (p->message != NULL) {
		eng_buf_putc(out, '[');
		tree_str(p->message, out);
		eng_buf_putc(out, ']');
	}
}

static char *tree(const eng_mime_part *p)
{
	eng_buf b = ENG_BUF_INIT;

	tree_str(p, &b);
	return eng_buf_steal(&b, NULL);
}

/* Offsets nest: header <= body <= end, inside the parent's body, in order. */
static void check_offsets(const eng_mime_part *p, uint64_t lo, uint64_t hi,
			  size_t *count)
{
	(*count)++;
	assert_true(p->header_off >= lo);
	assert_true(p->header_off <= p->body_off);
	assert_true(p->body_off <= p->body_end);
	assert_true(p->body_end <= hi);
	uint64_t next = p->body_off;
	for (size_t i = 0; i < p->n_children; i++) {
		check_offsets(p->children[i], next, p->body_end, count);
		next = p->children[i]->body_end;
	}
	if (p->message != NULL)
		check_offsets(p->message, p->body_off, p->body_end, count);
}

static size_t max_depth(const eng_mime_part *p)
{
	size_t d = 0;

	for (size_t i = 0; i < p->n_children; i++) {
		size_t c = max_depth(p->children[i]);
		if (c > d)
			d = c;
	}
	if (p->message != NULL) {
		size_t c = max_depth(p->message);
		if (c > d)
			d = c;
	}
	return d + 1;
}

/* encode -> decode -> encode must be byte-identical. */
static void check_roundtrip(const eng_mime_part *root, uint64_t size, eng_buf *enc)
{
	eng_buf enc2 = ENG_BUF_INIT;
	eng_mime_part *dec = NULL;

	eng_mime_encode(root, enc);
	assert_int_equal(eng_mime_decode(enc->data, enc->len, size, &dec), 0);
	eng_mime_encode(dec, &enc2);
	assert_int_equal(enc->len, enc2.len);
	assert_memory_equal(enc->data, enc2.data, enc->len);
	eng_mime_part_free(&dec);
	eng_buf_free(&enc2);
}

static void assert_str_or_null_equal(const char *a, const char *b)
{
	if (a == NULL || b == NULL)
		assert_ptr_equal(a, b);
	else
		assert_string_equal(a, b);
}

static void assert_summary_equal(const eng_mime_summary *a, const eng_mime_summary *b)
{
	assert_str_or_null_equal(a->subject, b->subject);
	assert_str_or_null_equal(a->base_subject, b->base_subject);
	assert_str_or_null_equal(a->from_addr, b->from_addr);
	assert_str_or_null_equal(a->from_display, b->from_display);
	assert_str_or_null_equal(a->to_addr, b->to_addr);
	assert_str_or_null_equal(a->to_display, b->to_display);
	assert_str_or_null_equal(a->cc_addr, b->cc_addr);
	assert_true(a->sent_date == b->sent_date);
	assert_str_or_null_equal(a->message_id, b->message_id);
	assert_int_equal(a->n_references, b->n_references);
	for (size_t i = 0; i < a->n_references; i++)
		assert_string_equal(a->references[i], b->references[i]);
	assert_str_or_null_equal(a->preview, b->preview);
	assert_int_equal(a->body_text.len, b->body_text.len);
	if (a->body_text.len > 0)
		assert_memory_equal(a->body_text.data, b->body_text.data, a->body_text.len);
	assert_int_equal(a->header_text.len, b->header_text.len);
	if (a->header_text.len > 0)
		assert_memory_equal(a->header_text.data, b->header_text.data,
				    a->header_text.len);
}

static const char msg_multi[] =
	"From: \"Joe Q. Public\" <John.Q.Public@Example.COM>\n"
	"To: Mary <mary@x.test>, jdoe@one.test\n"
	"Cc: (comment) Boss@Example.Org\n"
	"Subject: Re: [list] =?ISO-8859-1?Q?Caf=E9?= =?UTF-8?B?w6k=?= test (fwd)\n"
	"Date: Fri, 21 Nov 1997 09:55:06 -0600\n"
	"Message-ID: <1234@local.machine.example>\n"
	"References: <a@x> <b@x>\n"
	"In-Reply-To: <b@x>\n"
	"MIME-Version: 1.0\n"
	"Content-Type: multipart/mixed; boundary=\"XX\"\n"
	"\n"
	"preamble\n"
	"--XX\n"
	"Content-Type: text/plain; charset=us-ascii\n"
	"\n"
	"hello\n"
	"--XX\n"
	"Content-Type: text/html\n"
	"Content-Transfer-Encoding: quoted-printable\n"
	"\n"
	"<p>Hi =3D there</p>\n"
	"--XX--\n"
	"epilogue\n";

static void test_multipart_basic(void **state)
{
	eng_mime_part *root;
	eng_mime_summary sum;
	(void)state;

	parse_str(msg_multi, &root, &sum);
	char *bs = bodystructure(root, false);
	assert_string_equal(bs,
		"((\"text\" \"plain\" (\"charset\" \"us-ascii\") NIL NIL \"7bit\" 5 1)"
		"(\"text\" \"html\" (\"charset\" \"us-ascii\") NIL NIL \"quoted-printable\" 19 1)"
		" \"mixed\")");
	free(bs);
	bs = bodystructure(root, true);
	assert_string_equal(bs,
		"((\"text\" \"plain\" (\"charset\" \"us-ascii\") NIL NIL \"7bit\" 5 1 NIL NIL NIL NIL)"
		"(\"text\" \"html\" (\"charset\" \"us-ascii\") NIL NIL \"quoted-printable\" 19 1 NIL NIL NIL NIL)"
		" \"mixed\" (\"boundary\" \"XX\") NIL NIL NIL)");
	free(bs);

	/* Offsets of part 1: its body is exactly "hello". */
	const eng_mime_part *p1 = eng_mime_find_part(root, "1");
	assert_non_null(p1);
	assert_memory_equal(msg_multi + p1->body_off, "hello", 5);
	assert_int_equal(p1->body_end - p1->body_off, 5);
	assert_memory_equal(msg_multi + p1->header_off, "Content-Type: text/plain", 24);
	assert_non_null(eng_mime_find_part(root, "2"));
	assert_null(eng_mime_find_part(root, "3"));
	assert_null(eng_mime_find_part(root, "1.1"));
	assert_null(eng_mime_find_part(root, "0"));
	assert_ptr_equal(eng_mime_find_part(root, ""), root);

	assert_string_equal(sum.subject, "Re: [list] Caf\xc3\xa9\xc3\xa9 test (fwd)");
	assert_string_equal(sum.base_subject, "Caf\xc3\xa9\xc3\xa9 test");
	assert_string_equal(sum.from_addr, "john.q.public@example.com");
	assert_string_equal(sum.from_display, "Joe Q. Public");
	assert_string_equal(sum.to_addr, "mary@x.test");
	assert_string_equal(sum.to_display, "Mary");
	assert_string_equal(sum.cc_addr, "boss@example.org");
	assert_true(sum.sent_date == 880127706);
	assert_string_equal(sum.message_id, "<1234@local.machine.example>");
	assert_int_equal(sum.n_references, 2);
	assert_string_equal(sum.references[0], "<a@x>");
	assert_string_equal(sum.references[1], "<b@x>");
	assert_non_null(strstr(sum.body_text.data, "hello"));
	assert_non_null(strstr(sum.body_text.data, "Hi = there"));
	assert_null(strstr(sum.body_text.data, "<p>"));
	assert_null(strstr(sum.body_text.data, "preamble"));
	assert_string_equal(sum.preview, "hello Hi = there");
	assert_non_null(strstr(sum.header_text.data, "Subject: Re: [list] Caf\xc3\xa9"));

	eng_buf env = ENG_BUF_INIT;
	eng_mime_write_envelope(root->envelope, &env);
	assert_string_equal(env.data,
		"(\"Fri, 21 Nov 1997 09:55:06 -0600\" "
		"\"Re: [list] =?ISO-8859-1?Q?Caf=E9?= =?UTF-8?B?w6k=?= test (fwd)\" "
		"((\"Joe Q. Public\" NIL \"John.Q.Public\" \"Example.COM\")) "
		"((\"Joe Q. Public\" NIL \"John.Q.Public\" \"Example.COM\")) "
		"((\"Joe Q. Public\" NIL \"John.Q.Public\" \"Example.COM\")) "
		"((\"Mary\" NIL \"mary\" \"x.test\")(NIL NIL \"jdoe\" \"one.test\")) "
		"((NIL NIL \"Boss\" \"Example.Org\")) NIL \"<b@x>\" "
		"\"<1234@local.machine.example>\")");
	eng_buf_free(&env);
	eng_mime_part_free(&root);
	assert_null(root);
	eng_mime_summary_clear(&sum);
}

static const char msg_nested[] =
	"Subject: nested\r\n"
	"Content-Type: multipart/mixed; boundary=outer\r\n"
	"\r\n"
	"--outer\r\n"
	"Content-Type: multipart/alternative; boundary=\"inner\"\r\n"
	"\r\n"
	"--inner\r\n"
	"\r\n"
	"plain text\r\n"
	"--inner\r\n"
	"Content-Type: text/html; charset=iso-8859-1\r\n"
	"\r\n"
	"<b>caf\xe9</b>\r\n"
	"--inner--\r\n"
	"--outer\r\n"
	"Content-Type: message/rfc822\r\n"
	"Content-Disposition: attachment; filename=\"fwd.eml\"\r\n"
	"\r\n"
	"From: Inner Sender <inner@example.net>\r\n"
	"Subject: the inner one\r\n"
	"Content-Type: multipart/mixed; boundary=deep\r\n"
	"\r\n"
	"--deep\r\n"
	"Content-Type: application/octet-stream\r\n"
	"Content-Transfer-Encoding: base64\r\n"
	"\r\n"
	"AAEC\r\n"
	"--deep\r\n"
	"Content-Type: text/plain\r\n"
	"\r\n"
	"deep text\r\n"
	"--deep--\r\n"
	"--outer--\r\n";

static void test_nested(void **state)
{
	eng_mime_part *root;
	eng_mime_summary sum;
	size_t count = 0;
	(void)state;

	parse_str(msg_nested, &root, &sum);
	char *t = tree(root);
	assert_string_equal(t, "multipart/mixed(multipart/alternative(text/plain,text/html),"
			    "message/rfc822[multipart/mixed(application/octet-stream,text/plain)])");
	free(t);
	check_offsets(root, 0, sizeof(msg_nested) - 1, &count);
	assert_int_equal(count, 8);

	const eng_mime_part *p = eng_mime_find_part(root, "1.2");
	assert_non_null(p);
	assert_string_equal(p->subtype, "html");
	assert_memory_equal(msg_nested + p->body_off, "<b>caf\xe9</b>", p->body_end - p->body_off);
	assert_true(p->flags & ENG_MIME_HAS_8BIT);
	assert_true(root->flags & ENG_MIME_HAS_8BIT);
	p = eng_mime_find_part(root, "2");
	assert_string_equal(p->type, "message");
	assert_string_equal(p->disposition, "attachment");
	assert_non_null(p->message->envelope);
	assert_string_equal(p->message->envelope->subject, "the inner one");
	p = eng_mime_find_part(root, "2.1");
	assert_string_equal(p->subtype, "octet-stream");
	assert_memory_equal(msg_nested + p->body_off, "AAEC", 4);
	assert_int_equal(p->body_end - p->body_off, 4);
	p = eng_mime_find_part(root, "2.2");
	assert_string_equal(p->subtype, "plain");
	assert_null(eng_mime_find_part(root, "2.3"));
	assert_null(eng_mime_find_part(root, "2.2.1"));
	assert_null(eng_mime_find_part(root, "1.1.1"));

	/* The embedded message's own structure and envelope. */
	char *bs = bodystructure(eng_mime_find_part(root, "2"), false);
	assert_non_null(strstr(bs, "(\"message\" \"rfc822\" NIL NIL NIL \"7bit\" "));
	assert_non_null(strstr(bs, "((\"Inner Sender\" NIL \"inner\" \"example.net\"))"));
	assert_non_null(strstr(bs, "\"base64\" 4)"));
	free(bs);
	bs = bodystructure(root, true);
	assert_non_null(strstr(bs, "(\"attachment\" (\"filename\" \"fwd.eml\"))"));
	free(bs);

	assert_non_null(strstr(sum.body_text.data, "plain text"));
	assert_non_null(strstr(sum.body_text.data, "caf\xc3\xa9"));
	assert_non_null(strstr(sum.body_text.data, "deep text"));
	assert_null(strstr(sum.body_text.data, "AAEC"));
	eng_mime_part_free(&root);
	eng_mime_summary_clear(&sum);
}

static void test_missing_final_boundary(void **state)
{
	static const char msg[] =
		"Content-Type: multipart/mixed; boundary=b\n\n"
		"--b\n\nfirst\n--b\nContent-Type: text/plain\n\nsecond, never closed\n";
	eng_mime_part *root;
	eng_mime_summary sum;
	(void)state;

	parse_str(msg, &root, &sum);
	assert_int_equal(root->n_children, 2);
	const eng_mime_part *p = root->children[1];
	assert_int_equal(p->body_end, sizeof(msg) - 1);
	assert_int_equal(p->body_lines, 1);
	assert_int_equal(root->body_end, sizeof(msg) - 1);
	assert_memory_equal(msg + root->children[0]->body_off, "first",
			    root->children[0]->body_end - root->children[0]->body_off);
	eng_mime_part_free(&root);
	eng_mime_summary_clear(&sum);
}

static void test_boundary_in_longer_line(void **state)
{
	static const char msg[] =
		"Content-Type: multipart/mixed; boundary=abc\n\n"
		"--abc\n\n"
		"--abcdef is not a boundary\n"
		" --abc neither\n"
		"x--abc--\n"
		"--abc  \t\n"
		"\nsecond\n"
		"--abc-- \n"
		"--abc\n"
		"epilogue\n";
	eng_mime_part *root;
	eng_mime_summary sum;
	(void)state;

	parse_str(msg, &root, &sum);
	assert_int_equal(root->n_children, 2);
	const eng_mime_part *p = root->children[0];
	assert_memory_equal(msg + p->body_off,
			    "--abcdef is not a boundary\n --abc neither\nx--abc--",
			    p->body_end - p->body_off);
	assert_int_equal(p->body_lines, 3);
	p = root->children[1];
	assert_memory_equal(msg + p->body_off, "second", p->body_end - p->body_off);
	/* After the close delimiter, "--abc" is epilogue. */
	assert_int_equal(root->body_end, sizeof(msg) - 1);
	assert_non_null(strstr(sum.body_text.data, "--abcdef is not a boundary\n --abc neither"));
	assert_null(strstr(sum.body_text.data, "epilogue"));
	eng_mime_part_free(&root);
	eng_mime_summary_clear(&sum);
}

static void test_8bit_headers(void **state)
{
	static const char msg[] =
		"Subject: caf\xc3\xa9 na\xefve\n"
		"From: J\xc3\xb6rg <jorg@example.de>\n"
		"\n"
		"body\n";
	eng_mime_part *root;
	eng_mime_summary sum;
	(void)state;

	parse_str(msg, &root, &sum);
	assert_true(root->flags & ENG_MIME_HAS_8BIT);
	/* Valid UTF-8 kept, the stray Latin-1 byte replaced. */
	assert_string_equal(sum.subject, "caf\xc3\xa9 na\xef\xbf\xbdve");
	assert_string_equal(sum.from_display, "J\xc3\xb6rg");
	eng_buf env = ENG_BUF_INIT;
	eng_mime_write_envelope(root->envelope, &env);
	/* 8-bit strings go out as literals. */
	assert_non_null(strstr(env.data, "{11}\r\ncaf\xc3\xa9 na\xefve "));
	assert_non_null(strstr(env.data, "(({5}\r\nJ\xc3\xb6rg NIL \"jorg\" \"example.de\"))"));
	eng_buf_free(&env);
	eng_mime_part_free(&root);
	eng_mime_summary_clear(&sum);
}

static char *decode_subject(const char *subject)
{
	char msg[1024];
	eng_mime_part *root;
	eng_mime_summary sum;

	snprintf(msg, sizeof(msg), "Subject: %s\n\n", subject);
	parse_str(msg, &root, &sum);
	char *r = strdup(sum.subject);
	eng_mime_part_free(&root);
	eng_mime_summary_clear(&sum);
	return r;
}

static void check_subject(const char *in, const char *want)
{
	char *got = decode_subject(in);
	assert_string_equal(got, want);
	free(got);
}

static void test_encoded_words(void **state)
{
	(void)state;
	check_subject("=?utf-8?B?SGVsbG8gd29ybGQ=?=", "Hello world");
	check_subject("=?UTF-8?Q?a_b=3Dc?=", "a b=c");
	check_subject("=?iso-8859-1?q?caf=E9?=   =?iso-8859-1?q?_au_lait?=", "caf\xc3\xa9 au lait");
	check_subject("x =?iso-8859-1?q?y?= z", "x y z");
	/* Bad base64: the word stays as written. */
	check_subject("=?utf-8?B?SGV*bG8=?= tail", "=?utf-8?B?SGV*bG8=?= tail");
	/* Unknown charset: bytes kept, sanitised to valid UTF-8. */
	check_subject("=?x-unknown?Q?ok=FF?=", "ok\xef\xbf\xbd");
	/* RFC 2231 language suffix. */
	check_subject("=?US-ASCII*EN?Q?Keith_Moore?=", "Keith Moore");
	check_subject("=?koi8-r?B?8NLJ18XU?=", "\xd0\x9f\xd1\x80\xd0\xb8\xd0\xb2\xd0\xb5\xd1\x82");
	/* Not an encoded word (space inside). */
	check_subject("=?utf-8?Q?a b?=", "=?utf-8?Q?a b?=");
}

static void test_rfc2231(void **state)
{
	static const char msg[] =
		"Content-Type: multipart/mixed; boundary=b\n\n--b\n"
		"Content-Type: application/x-stuff;\n"
		" title*0*=us-ascii'en'This%20is%20even%20more%20;\n"
		" title*2=\"isn't it!\";\n"
		" title*1*=%2A%2A%2Afun%2A%2A%2A%20\n"
		"Content-Disposition: attachment; filename*0=\"long\"; filename*1=\"name.txt\"\n"
		"\n\n--b\n"
		"Content-Type: text/plain; name*=utf-8''%E2%82%AC.txt; name=\"fallback\"\n"
		"Content-Language: en, de\n"
		"\nx\n--b--\n";
	eng_mime_part *root;
	eng_mime_summary sum;
	(void)state;

	parse_str(msg, &root, &sum);
	assert_int_equal(root->n_children, 2);
	const eng_mime_part *p = root->children[0];
	assert_int_equal(p->n_params, 1);
	assert_string_equal(p->params[0].name, "title*");
	assert_string_equal(p->params[0].value,
			    "us-ascii'en'This%20is%20even%20more%20%2A%2A%2Afun%2A%2A%2A%20isn%27t%20it!");
	assert_int_equal(p->n_disp_params, 1);
	assert_string_equal(p->disp_params[0].name, "filename");
	assert_string_equal(p->disp_params[0].value, "longname.txt");
	p = root->children[1];
	assert_int_equal(p->n_params, 1);
	assert_string_equal(p->params[0].name, "name*");
	assert_string_equal(p->params[0].value, "utf-8''%E2%82%AC.txt");
	assert_int_equal(p->n_languages, 2);
	char *bs = bodystructure(p, true);
	assert_string_equal(bs, "(\"text\" \"plain\" (\"charset\" \"us-ascii\" \"name*\" "
			    "\"utf-8''%E2%82%AC.txt\") NIL NIL \"7bit\" 1 1 NIL NIL (\"en\" \"de\") NIL)");
	free(bs);
	eng_mime_part_free(&root);
	eng_mime_summary_clear(&sum);
}

static void test_groups(void **state)
{
	static const char msg[] =
		"From: Team: alice@a.test, \"Bob B.\" <bob@b.test>;, carol@c.test\n"
		"To: undisclosed-recipients:;\n"
		"Cc: <@route.one,@route.two:dave@d.test>\n"
		"\n";
	eng_mime_part *root;
	eng_mime_summary sum;
	(void)state;

	parse_str(msg, &root, &sum);
	const eng_mime_envelope *e = root->envelope;
	assert_int_equal(e->from.count, 5);
	assert_string_equal(e->from.addrs[0].mailbox, "Team");
	assert_null(e->from.addrs[0].host);
	assert_string_equal(e->from.addrs[1].mailbox, "alice");
	assert_string_equal(e->from.addrs[2].name, "Bob B.");
	assert_null(e->from.addrs[3].mailbox);
	assert_null(e->from.addrs[3].host);
	assert_string_equal(e->from.addrs[4].host, "c.test");
	assert_string_equal(sum.from_addr, "alice@a.test");
	assert_null(sum.to_addr);
	eng_buf env = ENG_BUF_INIT;
	eng_mime_write_envelope(e, &env);
	assert_non_null(strstr(env.data,
		"((NIL NIL \"Team\" NIL)(NIL NIL \"alice\" \"a.test\")"
		"(\"Bob B.\" NIL \"bob\" \"b.test\")(NIL NIL NIL NIL)"
		"(NIL NIL \"carol\" \"c.test\"))"));
	assert_non_null(strstr(env.data,
		"((NIL NIL \"undisclosed-recipients\" NIL)(NIL NIL NIL NIL))"));
	assert_non_null(strstr(env.data,
		"((NIL \"@route.one,@route.two\" \"dave\" \"d.test\"))"));
	eng_buf_free(&env);
	eng_mime_part_free(&root);
	eng_mime_summary_clear(&sum);
}

static void test_deep_nesting(void **state)
{
	eng_buf m = ENG_BUF_INIT;
	eng_mime_part *root;
	eng_mime_summary sum;
	size_t count = 0;
	(void)state;

	for (int i = 0; i < 150; i++)
		eng_buf_printf(&m, "Content-Type: multipart/mixed; boundary=\"b%d\"\n\n--b%d\n", i, i);
	eng_buf_puts(&m, "Content-Type: text/plain\n\ninnermost\n");
	for (int i = 149; i >= 0; i--)
		eng_buf_printf(&m, "--b%d--\n", i);
	eng_mime_parse(m.data, m.len, NULL, &root, &sum);
	assert_true(root->flags & ENG_MIME_DEGRADED);
	assert_true(max_depth(root) <= 100);
	assert_true(max_depth(root) >= 99);
	check_offsets(root, 0, m.len, &count);
	eng_buf enc = ENG_BUF_INIT;
	check_roundtrip(root, m.len, &enc);
	eng_buf_free(&enc);
	eng_mime_part_free(&root);
	eng_mime_summary_clear(&sum);

	/* Nested messages count too. */
	eng_buf_reset(&m);
	for (int i = 0; i < 300; i++)
		eng_buf_puts(&m, "Content-Type: message/rfc822\n\n");
	eng_buf_puts(&m, "Subject: bottom\n\nx\n");
	eng_mime_parse(m.data, m.len, NULL, &root, &sum);
	assert_true(root->flags & ENG_MIME_DEGRADED);
	assert_true(max_depth(root) <= 100);
	eng_mime_part_free(&root);
	eng_mime_summary_clear(&sum);
	eng_buf_free(&m);
}

static void test_many_parts(void **state)
{
	eng_buf m = ENG_BUF_INIT;
	eng_mime_part *root;
	eng_mime_summary sum;
	size_t count = 0;
	(void)state;

	eng_buf_puts(&m, "Content-Type: multipart/mixed; boundary=z\n\n");
	for (int i = 0; i < 20000; i++)
		eng_buf_printf(&m, "--z\nContent-Type: text/plain\n\npart %d\n", i);
	eng_buf_puts(&m, "--z--\n");
	eng_mime_parse(m.data, m.len, NULL, &root, &sum);
	assert_true(root->flags & ENG_MIME_DEGRADED);
	check_offsets(root, 0, m.len, &count);
	assert_int_equal(count, 10000);
	assert_int_equal(root->n_children, 9999);
	/* The rest went into the last part's body, then the close delimiter. */
	const eng_mime_part *last = root->children[9998];
	assert_true(last->body_end > m.len - 100);
	assert_true(root->body_end == m.len);
	eng_buf enc = ENG_BUF_INIT;
	check_roundtrip(root, m.len, &enc);
	eng_buf_free(&enc);
	eng_mime_part_free(&root);
	eng_mime_summary_clear(&sum);
	eng_buf_free(&m);
}

static void test_huge_header(void **state)
{
	eng_buf m = ENG_BUF_INIT;
	eng_mime_part *root;
	eng_mime_summary sum;
	eng_mime_limits lim;
	(void)state;

	eng_buf_puts(&m, "From: a@b.test\nX-Big: ");
	for (int i = 0; i < 400000; i++)
		eng_buf_puts(&m, i % 60 == 59 ? "\n x" : "xx");
	eng_buf_puts(&m, "\nSubject: after the big one\n"
		     "Content-Type: multipart/mixed; boundary=q\n\n--q\n\nhi\n--q--\n");
	eng_mime_parse(m.data, m.len, NULL, &root, &sum);
	assert_true(root->flags & ENG_MIME_DEGRADED);
	assert_string_equal(sum.from_addr, "a@b.test");
	/* Past the header limit nothing more is kept: the body is opaque. */
	assert_null(sum.subject);
	assert_string_equal(root->type, "text");
	assert_memory_equal(m.data + root->body_off, "--q\n", 4);
	eng_mime_part_free(&root);
	eng_mime_summary_clear(&sum);

	/* Too many fields. */
	eng_mime_limits_default(&lim);
	lim.max_headers = 3;
	static const char few[] = "A: 1\nB: 2\nSubject: s\nD: 4\nFrom: x@y\n\nbody";
	eng_mime_parse(few, strlen(few), &lim, &root, &sum);
	assert_true(root->flags & ENG_MIME_DEGRADED);
	assert_string_equal(sum.subject, "s");
	assert_null(sum.from_addr);
	assert_int_equal(root->body_off, 37);
	eng_mime_part_free(&root);
	eng_mime_summary_clear(&sum);
	eng_buf_free(&m);
}

static void test_digest_and_message(void **state)
{
	static const char msg[] =
		"Content-Type: multipart/digest; boundary=d\n\n"
		"--d\n\nSubject: one\n\nfirst\n"
		"--d\nContent-Type: text/plain\n\nnot a message\n"
		"--d--\n";
	static const char msg2[] =
		"Subject: outer\nContent-Type: message/rfc822\n\n"
		"Subject: inner\n\ninner body\n";
	eng_mime_part *root;
	eng_mime_summary sum;
	(void)state;

	parse_str(msg, &root, &sum);
	char *t = tree(root);
	assert_string_equal(t, "multipart/digest(message/rfc822[text/plain],text/plain)");
	free(t);
	eng_mime_part_free(&root);
	eng_mime_summary_clear(&sum);

	parse_str(msg2, &root, &sum);
	assert_string_equal(sum.subject, "outer");
	assert_non_null(root->message);
	assert_string_equal(root->message->envelope->subject, "inner");
	/* Section 1 of a non-multipart message is its body: here the
	 * message/rfc822 part, whose 1 is in turn the inner body. */
	assert_ptr_equal(eng_mime_find_part(root, "1"), root);
	assert_ptr_equal(eng_mime_find_part(root, "1.1"), root->message);
	assert_null(eng_mime_find_part(root, "1.2"));
	assert_null(eng_mime_find_part(root, "2"));
	char *bs = bodystructure(root, false);
	assert_string_equal(bs,
		"(\"message\" \"rfc822\" NIL NIL NIL \"7bit\" 27 "
		"(NIL \"inner\" NIL NIL NIL NIL NIL NIL NIL NIL) "
		"(\"text\" \"plain\" (\"charset\" \"us-ascii\") NIL NIL \"7bit\" 11 1) 3)");
	free(bs);
	eng_mime_part_free(&root);
	eng_mime_summary_clear(&sum);
}

static const char *const split_msgs[] = {
	msg_multi, msg_nested,
	"Content-Type: multipart/mixed; boundary=b\r\n\r\n--b\r\n\r\nx\r\n--b\r\n--b\r\n"
	"Content-Type: text/plain\r\n--b--",
	"no header at all",
	"\n\n\n",
	"Subject: =?utf-8?q?x?=\r\n\r\n\r",
	"Content-Type: multipart/mixed; boundary=b\n\n--b\n\n--b--",
	"Content-Type: multipart/mixed; boundary=b\n\n--b\nContent-Type: message/rfc822\n\n"
	"Content-Type: multipart/mixed; boundary=c\n\n--c\n\nA\n--b\n\nB\n--c\nC\n--b--\n",
	"From: x@y\nContent-Type: text/plain; charset=utf-8\nContent-Transfer-Encoding: base64\n\n"
	"aGVsbG8g\nd29ybGQ=\n",
};

static void parse_split(const char *msg, size_t len, unsigned seed, int mode,
			eng_buf *enc, eng_mime_summary *sum)
{
	eng_mime_parser *p = eng_mime_parser_new(NULL);
	eng_mime_part *root;
	size_t i = 0;

	while (i < len) {
		size_t n;
		if (mode == 0)
			n = len;
		else if (mode == 1)
			n = 1;
		else
			n = 1 + (size_t)(rand_r(&seed) % 17);
		if (n > len - i)
			n = len - i;
		eng_mime_parser_feed(p, msg + i, n);
		i += n;
	}
	eng_mime_parser_finish(p, &root, sum);
	eng_mime_parser_free(&p);
	assert_null(p);
	eng_mime_encode(root, enc);
	eng_buf_printf(enc, "|");
	eng_mime_write_bodystructure(root, true, enc);
	eng_mime_part_free(&root);
}

static void check_splits(const char *msg, size_t len)
{
	eng_buf ref = ENG_BUF_INIT;
	eng_mime_summary ref_sum;

	parse_split(msg, len, 0, 0, &ref, &ref_sum);
	for (int mode = 1; mode < 6; mode++) {
		eng_buf enc = ENG_BUF_INIT;
		eng_mime_summary sum;
		parse_split(msg, len, (unsigned)mode * 7919u, mode, &enc, &sum);
		assert_int_equal(enc.len, ref.len);
		assert_memory_equal(enc.data, ref.data, enc.len);
		assert_summary_equal(&sum, &ref_sum);
		eng_buf_free(&enc);
		eng_mime_summary_clear(&sum);
	}
	eng_buf_free(&ref);
	eng_mime_summary_clear(&ref_sum);
}

static void test_splits(void **state)
{
	(void)state;
	for (size_t i = 0; i < sizeof(split_msgs) / sizeof(split_msgs[0]); i++)
		check_splits(split_msgs[i], strlen(split_msgs[i]));
}

static void test_codec(void **state)
{
	eng_mime_part *root, *dec;
	eng_mime_summary sum;
	eng_buf enc = ENG_BUF_INIT, enc2 = ENG_BUF_INIT;
	size_t size = sizeof(msg_nested) - 1;
	(void)state;

	parse_str(msg_nested, &root, &sum);
	check_roundtrip(root, size, &enc);
	/* The decoded tree writes the same BODYSTRUCTURE. */
	assert_int_equal(eng_mime_decode(enc.data, enc.len, size, &dec), 0);
	char *a = bodystructure(root, true), *b = bodystructure(dec, true);
	assert_string_equal(a, b);
	free(a);
	free(b);
	eng_mime_part_free(&dec);

	/* Every truncation is refused, never read past. */
	for (size_t n = 0; n < enc.len; n++) {
		uint8_t *copy = malloc(n + 1);
		memcpy(copy, enc.data, n);
		assert_int_equal(eng_mime_decode(copy, n, size, &dec), ENG_EMALFORMED);
		assert_null(dec);
		free(copy);
	}
	/* Trailing garbage, a smaller message, a newer version. */
	eng_buf_append(&enc2, enc.data, enc.len);
	eng_buf_putc(&enc2, 0);
	assert_int_equal(eng_mime_decode(enc2.data, enc2.len, size, &dec), ENG_EMALFORMED);
	assert_int_equal(eng_mime_decode(enc.data, enc.len, size - 1, &dec), ENG_EMALFORMED);
	enc.data[0] = 2;
	assert_int_equal(eng_mime_decode(enc.data, enc.len, size, &dec), ENG_ENEWER);
	enc.data[0] = 0;
	assert_int_equal(eng_mime_decode(enc.data, enc.len, size, &dec), ENG_EMALFORMED);
	/* Flip every byte: decode either refuses or gives a consistent tree. */
	enc.data[0] = 1;
	for (size_t i = 1; i < enc.len; i++) {
		enc.data[i] ^= 0x41;
		if (eng_mime_decode(enc.data, enc.len, size, &dec) == 0) {
			size_t count = 0;
			check_offsets(dec, 0, size, &count);
			eng_mime_part_free(&dec);
		}
		enc.data[i] ^= 0x41;
	}
	eng_buf_free(&enc);
	eng_buf_free(&enc2);
	eng_mime_part_free(&root);
	eng_mime_summary_clear(&sum);
}

static void test_line_endings(void **state)
{
	static const char lf[] =
		"Content-Type: multipart/mixed; boundary=b\n\n--b\n\nline1\nline2\n--b--\n";
	static const char crlf[] =
		"Content-Type: multipart/mixed; boundary=b\r\n\r\n--b\r\n\r\nline1\r\nline2\r\n--b--\r\n";
	eng_mime_part *r1, *r2;
	eng_mime_summary s1, s2;
	(void)state;

	parse_str(lf, &r1, &s1);
	parse_str(crlf, &r2, &s2);
	assert_int_equal(r1->n_children, 1);
	assert_int_equal(r2->n_children, 1);
	assert_int_equal(r1->children[0]->body_lines, 2);
	assert_int_equal(r2->children[0]->body_lines, 2);
	assert_int_equal(r1->children[0]->body_end - r1->children[0]->body_off, 11);
	assert_int_equal(r2->children[0]->body_end - r2->children[0]->body_off, 12);
	assert_string_equal(s1.body_text.data, "line1\nline2");
	assert_string_equal(s2.body_text.data, "line1\nline2");
	eng_mime_part_free(&r1);
	eng_mime_part_free(&r2);
	eng_mime_summary_clear(&s1);
	eng_mime_summary_clear(&s2);
}

/* Inputs that would be quadratic in a naive parser finish quickly. */
static void test_adversarial_linear(void **state)
{
	static const char *const pieces[] = {
		"Subject: ", "[a] ", "Subject: ", "[fwd:", "Subject: ", "=?x?q?a",
		"References: ", "<a@b> ", "Content-Type: text/plain", "; a*0=b",
		"To: ", "a@b, ", "Subject: ", "(((",
	};
	(void)state;

	for (size_t k = 0; k < sizeof(pieces) / sizeof(pieces[0]); k += 2) {
		eng_buf m = ENG_BUF_INIT;
		eng_mime_part *root;
		eng_mime_summary sum;
		eng_buf_puts(&m, pieces[k]);
		while (m.len < 200000)
			eng_buf_puts(&m, pieces[k + 1]);
		eng_buf_puts(&m, "\n\nbody\n");
		clock_t t0 = clock();
		eng_mime_parse(m.data, m.len, NULL, &root, &sum);
		double secs = (double)(clock() - t0) / CLOCKS_PER_SEC;
		if (secs > 10.0)
			fail_msg("%s%s...: %.1f s", pieces[k], pieces[k + 1], secs);
		assert_int_equal(root->body_end - root->body_off, 5);
		eng_mime_part_free(&root);
		eng_mime_summary_clear(&sum);
		eng_buf_free(&m);
	}

	/* Many lines that look like boundaries of a deep stack. */
	eng_buf m = ENG_BUF_INIT;
	eng_mime_part *root;
	eng_mime_summary sum;
	for (int i = 0; i < 99; i++)
		eng_buf_printf(&m, "Content-Type: multipart/mixed; boundary=\"%0150d\"\n\n--%0150d\n", i, i);
	eng_buf_puts(&m, "\n");
	while (m.len < 4000000)
		eng_buf_printf(&m, "--%0149d\n", 0);
	clock_t t0 = clock();
	eng_mime_parse(m.data, m.len, NULL, &root, &sum);
	double secs = (double)(clock() - t0) / CLOCKS_PER_SEC;
	if (secs > 20.0)
		fail_msg("boundary-like lines: %.1f s", secs);
	eng_mime_part_free(&root);
	eng_mime_summary_clear(&sum);
	eng_buf_free(&m);
}

static const char *const corpus_facts[][2] = {
	{ "msg_02.txt", "multipart/mixed(text/plain,text/plain,multipart/digest("
	  "message/rfc822[text/plain],message/rfc822[text/plain],message/rfc822[text/plain],"
	  "message/rfc822[text/plain],message/rfc822[text/plain]),text/plain)" },
	{ "msg_04.txt", "multipart/mixed(text/plain,text/plain)" },
	{ "msg_07.txt", "multipart/mixed(text/plain,image/gif)" },
	{ "msg_28.txt", "multipart/digest(message/rfc822[text/plain],message/rfc822[text/plain])" },
	{ "msg_06.txt", "message/rfc822[text/plain]" },
	{ "msg_01.txt", "text/plain" },
};

static void test_python_corpus(void **state)
{
	glob_t g;
	size_t facts_checked = 0;
	(void)state;

	assert_int_equal(glob(PY_DATA "/msg_*.txt", 0, NULL, &g), 0);
	assert_true(g.gl_pathc >= 40);
	for (size_t i = 0; i < g.gl_pathc; i++) {
		size_t len, count = 0;
		uint8_t *data = tu_read_file(g.gl_pathv[i], &len);
		eng_mime_part *root;
		eng_mime_summary sum;
		eng_buf enc = ENG_BUF_INIT;
		assert_non_null(data);
		eng_mime_parse(data, len, NULL, &root, &sum);
		assert_non_null(root);
		assert_false(root->flags & ENG_MIME_DEGRADED);
		check_offsets(root, 0, len, &count);
		check_roundtrip(root, len, &enc);
		char *bs = bodystructure(root, true);
		assert_true(bs[0] == '(' && bs[strlen(bs) - 1] == ')');
		free(bs);
		const char *base = strrchr(g.gl_pathv[i], '/') + 1;
		for (size_t f = 0; f < sizeof(corpus_facts) / sizeof(corpus_facts[0]); f++) {
			if (strcmp(base, corpus_facts[f][0]) != 0)
				continue;
			char *t = tree(root);
			if (strcmp(t, corpus_facts[f][1]) != 0)
				fail_msg("%s: %s", base, t);
			free(t);
			facts_checked++;
		}
		if (strcmp(base, "msg_01.txt") == 0) {
			assert_string_equal(sum.subject, "This is a test message");
			assert_string_equal(sum.from_addr, "bbb@ddd.com");
			assert_string_equal(sum.message_id, "<15090.61304.110929.45684@aaa.zzz.org>");
		}
		check_splits((const char *)data, len);
		eng_buf_free(&enc);
		eng_mime_part_free(&root);
		eng_mime_summary_clear(&sum);
		free(data);
	}
	assert_int_equal(facts_checked, sizeof(corpus_facts) / sizeof(corpus_facts[0]));
	globfree(&g);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_multipart_basic),
		cmocka_unit_test(test_nested),
		cmocka_unit_test(test_missing_final_boundary),
		cmocka_unit_test(test_boundary_in_longer_line),
		cmocka_unit_test(test_8bit_headers),
		cmocka_unit_test(test_encoded_words),
		cmocka_unit_test(test_rfc2231),
		cmocka_unit_test(test_groups),
		cmocka_unit_test(test_deep_nesting),
		cmocka_unit_test(test_many_parts),
		cmocka_unit_test(test_huge_header),
		cmocka_unit_test(test_digest_and_message),
		cmocka_unit_test(test_splits),
		cmocka_unit_test(test_codec),
		cmocka_unit_test(test_line_endings),
		cmocka_unit_test(test_adversarial_linear),
		cmocka_unit_test(test_python_corpus),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
