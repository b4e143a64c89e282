/*
 * The POP3 codec (frontends/pop3/pop3_parser.h): every verb and its arity,
 * the limits, every per-line error and the resynchronisation after it, the
 * SASL mode, reset (STLS); and the RETR/TOP dot-stuffing encoder. The
 * parser is fed whole, one byte at a time and in random splits, and must
 * give the same results every time.
 *
 * The codec's sources are compiled into this test directly, so that it
 * does not depend on how frontends/pop3/ builds the daemon.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "buf.h"
#include "testutil.h"

#include "../../frontends/pop3/pop3_parser.c"
#include "../../frontends/pop3/pop3_dotstuff.c"

/*
 * Feeds all of in and writes one line per result into out:
 * "<ret> <VERB|?verb_text> <argc> [arg|num]...". An AUTH with a mechanism
 * and no initial response switches the parser to SASL mode, as the
 * daemon does. Each piece is an exact-size copy, so ASan sees an overread.
 */
static void transcript(pop3_parser *p, const char *in, size_t len,
		       enum tu_split how, eng_buf *out)
{
	size_t pos = 0;

	while (pos < len) {
		size_t piece = len - pos;
		uint8_t *copy;
		size_t off = 0;

		piece = tu_split_piece(how, piece, 64);
		copy = malloc(piece);
		assert_non_null(copy);
		memcpy(copy, in + pos, piece);
		while (off < piece) {
			pop3_command cmd;
			size_t used = 0;
			int ret = pop3_parser_feed(p, copy + off, piece - off, &used, &cmd);

			assert_true(used <= piece - off);
			off += used;
			if (ret == 0) {
				assert_int_equal(off, piece);
				break;
			}
			assert_true(used > 0);
			eng_buf_printf(out, "%d %s", ret, pop3_verb_name(cmd.verb));
			if (cmd.verb == POP3_VERB_UNKNOWN && ret == 1)
				eng_buf_printf(out, "?%.*s", (int)cmd.verb_len, cmd.verb_text);
			if (cmd.verb == POP3_VERB_SASL_RESPONSE)
				eng_buf_puts(out, "SASL");
			if (cmd.verb == POP3_VERB_SASL_CANCEL)
				eng_buf_puts(out, "CANCEL");
			eng_buf_printf(out, " %u", cmd.argc);
			for (unsigned int a = 0; a < cmd.argc; a++) {
				assert_int_equal(strlen(cmd.args[a]), cmd.arg_lens[a]);
				eng_buf_printf(out, " [%s]", cmd.args[a]);
				if (cmd.verb == POP3_VERB_LIST || cmd.verb == POP3_VERB_RETR ||
				    cmd.verb == POP3_VERB_DELE || cmd.verb == POP3_VERB_TOP ||
				    cmd.verb == POP3_VERB_UIDL)
					eng_buf_printf(out, "=%u", cmd.nums[a]);
			}
			eng_buf_putc(out, '\n');
			if (ret == 1 && cmd.verb == POP3_VERB_AUTH && cmd.argc == 1)
				pop3_parser_expect_sasl(p);
		}
		free(copy);
		pos += piece;
	}
}

struct limits {
	size_t max_line, max_sasl;
};

/* transcript() on a new parser with these limits. */
static void transcript_new(const void *ctx, const char *in, size_t len,
			   enum tu_split how, eng_buf *out)
{
	const struct limits *lim = ctx;
	pop3_parser *p = pop3_parser_new(lim->max_line, lim->max_sasl);

	transcript(p, in, len, how, out);
	pop3_parser_free(&p);
	assert_null(p);
}

/* The transcript of in (whole), checked equal under every split. */
static char *parse_all_limits(const char *in, size_t len, size_t max_line,
			      size_t max_sasl)
{
	struct limits lim = { max_line, max_sasl };

	return tu_split_same(transcript_new, &lim, in, len, 21);
}

static char *parse_all(const char *in)
{
	return parse_all_limits(in, strlen(in), 0, 0);
}

static void expect(const char *in, const char *want)
{
	char *got = parse_all(in);

	if (strcmp(got, want) != 0) {
		fprintf(stderr, "input: %s\nwant:\n%s\ngot:\n%s\n", in, want, got);
		fail();
	}
	free(got);
}

static void test_every_verb(void **state)
{
	(void)state;
	expect("USER alice@example.org\r\n"
	       "PASS secret with  spaces \r\n"
	       "STAT\r\nLIST\r\nLIST 2\r\nRETR 1\r\nDELE 3\r\nNOOP\r\n"
	       "RSET\r\nTOP 1 10\r\nUIDL\r\nUIDL 4\r\nCAPA\r\nSTLS\r\n"
	       "AUTH\r\nAUTH PLAIN AGFsaWNlAHNlY3JldA==\r\nQUIT\r\n",
	       "1 USER 1 [alice@example.org]\n"
	       "1 PASS 1 [secret with  spaces ]\n"
	       "1 STAT 0\n1 LIST 0\n1 LIST 1 [2]=2\n1 RETR 1 [1]=1\n"
	       "1 DELE 1 [3]=3\n1 NOOP 0\n1 RSET 0\n1 TOP 2 [1]=1 [10]=10\n"
	       "1 UIDL 0\n1 UIDL 1 [4]=4\n1 CAPA 0\n1 STLS 0\n1 AUTH 0\n"
	       "1 AUTH 2 [PLAIN] [AGFsaWNlAHNlY3JldA==]\n1 QUIT 0\n");
}

static void test_case_and_spacing(void **state)
{
	(void)state;
	/* Verbs in any case; runs of spaces; trailing spaces; bare LF. */
	expect("retr 7\nTop  1   0  \r\n  stat\nuIdL\r\n",
	       "1 RETR 1 [7]=7\n1 TOP 2 [1]=1 [0]=0\n1 STAT 0\n1 UIDL 0\n");
	/* A CR inside a line is content; only the one before LF goes. */
	expect("NOOP\r\r\n", "1 ?NOOP\r 0\n");
}

static void test_unknown_and_errors(void **state)
{
	(void)state;
	expect("APOP alice 0123\r\nXYZZY\r\nRETRX 1\r\nRE\r\nSTAT\r\n",
	       "1 ?APOP 0\n1 ?XYZZY 0\n1 ?RETRX 0\n1 ?RE 0\n1 STAT 0\n");
	expect("\r\n   \r\nNOOP\r\n", "-3  0\n-3  0\n1 NOOP 0\n");
	expect("RETR\r\nRETR 1 2\r\nTOP 1\r\nSTAT 1\r\nQUIT now\r\nUSER\r\n"
	       "USER a b\r\nPASS\r\nPASS \r\nAUTH a b c\r\nNOOP\r\n",
	       "-4 RETR 0\n-4 RETR 0\n-4 TOP 0\n-4 STAT 0\n-4 QUIT 0\n"
	       "-4 USER 0\n-4 USER 0\n-4 PASS 0\n-4 PASS 0\n-4 AUTH 0\n"
	       "1 NOOP 0\n");
	expect("RETR x\r\nRETR -1\r\nRETR +1\r\nDELE 4294967296\r\n"
	       "DELE 4294967295\r\nLIST 00000000001\r\nLIST 0000000000x\r\n"
	       "TOP 1 ten\r\nUIDL 1a\r\n",
	       "-5 RETR 0\n-5 RETR 0\n-5 RETR 0\n-5 DELE 0\n"
	       "1 DELE 1 [4294967295]=4294967295\n"
	       "1 LIST 1 [00000000001]=1\n-5 LIST 0\n-5 TOP 0\n-5 UIDL 0\n");
	/* NUL anywhere in the line: the line is refused, the next works. */
	static const char nul[] = "RETR\0001\r\nST\000AT\r\nSTAT\r\n";
	char *got = parse_all_limits(nul, sizeof(nul) - 1, 0, 0);

	assert_string_equal(got, "-2  0\n-2  0\n1 STAT 0\n");
	free(got);
	assert_string_equal(pop3_strerror(POP3_ENUMBER), "Invalid message number");
	assert_string_equal(pop3_strerror(-99), "Invalid command");
	assert_string_equal(pop3_verb_name(POP3_VERB_TOP), "TOP");
	assert_string_equal(pop3_verb_name((pop3_verb)1000), "");
}

static void test_line_limit(void **state)
{
	eng_buf in = ENG_BUF_INIT;
	char *got;

	(void)state;
	/* Exactly 512 bytes before CRLF and before a bare LF: accepted. */
	eng_buf_puts(&in, "USER ");
	for (int i = 0; i < 507; i++)
		eng_buf_putc(&in, 'a');
	eng_buf_puts(&in, "\r\n");
	eng_buf_puts(&in, "USER ");
	for (int i = 0; i < 507; i++)
		eng_buf_putc(&in, 'a');
	eng_buf_puts(&in, "\n");
	/* 513 bytes: refused, with CRLF and with LF. */
	eng_buf_puts(&in, "USER ");
	for (int i = 0; i < 508; i++)
		eng_buf_putc(&in, 'b');
	eng_buf_puts(&in, "\r\nUSER ");
	for (int i = 0; i < 508; i++)
		eng_buf_putc(&in, 'c');
	eng_buf_puts(&in, "\n");
	/* 512 bytes then CR, then more bytes: too long. */
	eng_buf_puts(&in, "USER ");
	for (int i = 0; i < 507; i++)
		eng_buf_putc(&in, 'd');
	eng_buf_puts(&in, "\rx\r\n");
	/* 100 KB with no line end, then a line end and a command. */
	for (int i = 0; i < 100000; i++)
		eng_buf_putc(&in, "RETR 1 "[i % 7]);
	eng_buf_puts(&in, "\r\nNOOP\r\n");
	got = parse_all_limits(in.data, in.len, 0, 0);
	assert_int_equal(strncmp(got, "1 USER 1 [aaaa", 14), 0);
	{
		const char *second = strchr(got, '\n') + 1;
		const char *rest = strchr(second, '\n') + 1;

		assert_int_equal(strncmp(second, "1 USER 1 [aaaa", 14), 0);
		assert_string_equal(rest, "-1  0\n-1  0\n-1  0\n-1  0\n1 NOOP 0\n");
	}
	free(got);
	eng_buf_free(&in);

	/* The parser never buffers past its limit while discarding. */
	{
		pop3_parser *p = pop3_parser_new(16, 32);
		pop3_command cmd;
		size_t used;
		uint8_t big[4096];

		memset(big, 'z', sizeof(big));
		assert_int_equal(pop3_parser_feed(p, big, 10, &used, &cmd), 0);
		assert_int_equal(pop3_parser_pending(p), 10);
		assert_int_equal(pop3_parser_feed(p, big, sizeof(big), &used, &cmd),
				 POP3_ELINE);
		assert_int_equal(used, sizeof(big));
		assert_true(pop3_parser_discarding(p));
		assert_int_equal(pop3_parser_pending(p), 0);
		for (int i = 0; i < 100; i++) {
			assert_int_equal(pop3_parser_feed(p, big, sizeof(big), &used, &cmd), 0);
			assert_int_equal(pop3_parser_pending(p), 0);
		}
		assert_int_equal(pop3_parser_feed(p, (const uint8_t *)"zz\nSTAT\n", 8,
						  &used, &cmd), 1);
		assert_int_equal(cmd.verb, POP3_VERB_STAT);
		assert_false(pop3_parser_discarding(p));
		pop3_parser_free(&p);
	}
	/* A tighter limit (before authentication). */
	got = parse_all_limits("USER 0123456789\r\nUSER 01234567890\r\nQUIT\n",
			       40, 15, 0);
	assert_string_equal(got, "1 USER 1 [0123456789]\n-1  0\n1 QUIT 0\n");
	free(got);
}

static void test_sasl(void **state)
{
	eng_buf in = ENG_BUF_INIT;
	char *got;

	(void)state;
	/* AUTH PLAIN without an initial response: the next line is SASL. */
	expect("AUTH PLAIN\r\nAGFsaWNlAHNlY3JldA==\r\nSTAT\r\n"
	       "AUTH PLAIN\r\n*\r\nAUTH PLAIN\r\n\r\nAUTH PLAIN\r\nnot base64!\r\n"
	       "AUTH PLAIN\r\nRETR 1\r\nNOOP\r\n",
	       "1 AUTH 1 [PLAIN]\n1 SASL 1 [AGFsaWNlAHNlY3JldA==]\n1 STAT 0\n"
	       "1 AUTH 1 [PLAIN]\n1 CANCEL 0\n"
	       "1 AUTH 1 [PLAIN]\n1 SASL 1 []\n"
	       "1 AUTH 1 [PLAIN]\n-6  0\n"
	       "1 AUTH 1 [PLAIN]\n-6  0\n1 NOOP 0\n");
	/* A SASL line may be up to 8 KiB; a command line may not. */
	eng_buf_puts(&in, "AUTH PLAIN\r\n");
	for (int i = 0; i < 8192; i++)
		eng_buf_putc(&in, 'A');
	eng_buf_puts(&in, "\r\nAUTH PLAIN\r\n");
	for (int i = 0; i < 8193; i++)
		eng_buf_putc(&in, 'B');
	eng_buf_puts(&in, "\r\n");
	for (int i = 0; i < 600; i++)
		eng_buf_putc(&in, 'C');
	eng_buf_puts(&in, "\r\nNOOP\r\n");
	got = parse_all_limits(in.data, in.len, 0, 0);
	assert_int_equal(strncmp(got, "1 AUTH 1 [PLAIN]\n1 SASL 1 [AAAA", 31), 0);
	assert_non_null(strstr(got, "AAAA]\n1 AUTH 1 [PLAIN]\n-1  0\n-1  0\n1 NOOP 0\n"));
	free(got);
	eng_buf_free(&in);
}

static void test_reset_and_wipe(void **state)
{
	pop3_parser *p = pop3_parser_new(0, 0);
	pop3_command cmd;
	const char *in = "STLS\r\nUSER injected\r\nPASS secret\r\n";
	size_t used;

	(void)state;
	assert_int_equal(pop3_parser_feed(p, (const uint8_t *)in, strlen(in), &used, &cmd), 1);
	assert_int_equal(cmd.verb, POP3_VERB_STLS);
	assert_int_equal(used, 6);
	/* The daemon drops the rest of its plaintext input and resets. */
	assert_int_equal(pop3_parser_feed(p, (const uint8_t *)"USER inj", 8, &used, &cmd), 0);
	assert_int_equal(pop3_parser_pending(p), 8);
	pop3_parser_expect_sasl(p);
	pop3_parser_reset(p);
	assert_int_equal(pop3_parser_pending(p), 0);
	assert_int_equal(pop3_parser_feed(p, (const uint8_t *)"CAPA\r\n", 6, &used, &cmd), 1);
	assert_int_equal(cmd.verb, POP3_VERB_CAPA);
	/* A password's bytes are wiped at the next call. */
	assert_int_equal(pop3_parser_feed(p, (const uint8_t *)"PASS hunter2\r\n", 14,
					  &used, &cmd), 1);
	assert_int_equal(cmd.verb, POP3_VERB_PASS);
	assert_string_equal(cmd.args[0], "hunter2");
	assert_int_equal(pop3_parser_feed(p, (const uint8_t *)"N", 1, &used, &cmd), 0);
	for (size_t i = 1; i < 12; i++)
		assert_int_equal(p->buf[i], 0);
	pop3_parser_free(&p);
	pop3_parser_free(&p);   /* NULL is fine */
	pop3_parser_free(NULL);
}

/* ---- dot-stuffing ---- */

/* Encodes in with the given split sizes (random when how is RANDOM). */
static char *stuff(const char *in, size_t len, bool top, uint64_t n,
		   enum tu_split how, size_t *out_len_r)
{
	pop3_dotstuff d;
	uint8_t *out = malloc(POP3_DOTSTUFF_MAX_OUT(len) + POP3_DOTSTUFF_FINISH_MAX + 1);
	size_t pos = 0, o = 0;

	assert_non_null(out);
	if (top)
		pop3_dotstuff_init_top(&d, n);
	else
		pop3_dotstuff_init(&d);
	while (pos < len) {
		size_t piece = len - pos;
		uint8_t *copy;
		size_t w;

		piece = tu_split_piece(how, piece, 40);
		copy = malloc(piece);
		assert_non_null(copy);
		memcpy(copy, in + pos, piece);
		w = pop3_dotstuff_feed(&d, copy, piece, out + o);
		assert_true(w <= POP3_DOTSTUFF_MAX_OUT(piece));
		o += w;
		free(copy);
		pos += piece;
	}
	o += pop3_dotstuff_finish(&d, out + o);
	assert_int_equal(pop3_dotstuff_finish(&d, out + o), 0);
	out[o] = '\0';
	*out_len_r = o;
	return (char *)out;
}

static void expect_stuff(const char *in, bool top, uint64_t n, const char *want)
{
	size_t len = strlen(in), want_len = strlen(want);

	for (int round = 0; round < 12; round++) {
		size_t got_len;
		char *got = stuff(in, len, top, n,
				  round == 0 ? TU_SPLIT_WHOLE :
				  round == 1 ? TU_SPLIT_BYTES : TU_SPLIT_RANDOM,
				  &got_len);

		if (got_len != want_len || memcmp(got, want, want_len) != 0) {
			fprintf(stderr, "input: [%s]\nwant: [%s]\ngot: [%s] (round %d)\n",
				in, want, got, round);
			fail();
		}
		free(got);
	}
}

static void test_dotstuff(void **state)
{
	(void)state;
	expect_stuff("", false, 0, ".\r\n");
	expect_stuff("a\r\n", false, 0, "a\r\n.\r\n");
	expect_stuff("a", false, 0, "a\r\n.\r\n");
	expect_stuff("a\n", false, 0, "a\r\n.\r\n");
	expect_stuff(".\r\n..\n.a\r\nb.c\r\n.", false, 0,
		     "..\r\n...\r\n..a\r\nb.c\r\n..\r\n.\r\n");
	/* Bare LF → CRLF; a bare CR is content (and a CR at the end too). */
	expect_stuff("x\ny\r\rz\n\n\r\n\r", false, 0,
		     "x\r\ny\r\rz\r\n\r\n\r\n\r\r\n.\r\n");
	/* A '.' after a bare CR is not at a line start. */
	expect_stuff("a\r.b\n", false, 0, "a\r.b\r\n.\r\n");
}

static void test_top(void **state)
{
	const char *msg = "From: a\r\nSubject: s\r\n\r\nline1\r\n.line2\nline3\r\n";

	(void)state;
	expect_stuff(msg, true, 0, "From: a\r\nSubject: s\r\n\r\n.\r\n");
	expect_stuff(msg, true, 1, "From: a\r\nSubject: s\r\n\r\nline1\r\n.\r\n");
	expect_stuff(msg, true, 2,
		     "From: a\r\nSubject: s\r\n\r\nline1\r\n..line2\r\n.\r\n");
	expect_stuff(msg, true, 3,
		     "From: a\r\nSubject: s\r\n\r\nline1\r\n..line2\r\nline3\r\n.\r\n");
	expect_stuff(msg, true, 1000,
		     "From: a\r\nSubject: s\r\n\r\nline1\r\n..line2\r\nline3\r\n.\r\n");
	/* Bare-LF header end; no body; no empty line at all. */
	expect_stuff("H: v\n\nb1\nb2", true, 1, "H: v\r\n\r\nb1\r\n.\r\n");
	expect_stuff("H: v\n\nb1\nb2", true, 5, "H: v\r\n\r\nb1\r\nb2\r\n.\r\n");
	expect_stuff("H: v\r\n", true, 0, "H: v\r\n.\r\n");
	expect_stuff("H: v\r\nX: y", true, 0, "H: v\r\nX: y\r\n.\r\n");
	expect_stuff("", true, 3, ".\r\n");
	/* A header line that is only a bare CR is not the empty line. */
	expect_stuff("H: v\r\n\r\r\nX\r\n", true, 0, "H: v\r\n\r\r\nX\r\n.\r\n");
	{
		pop3_dotstuff d;
		uint8_t out[64];

		pop3_dotstuff_init_top(&d, 0);
		assert_false(pop3_dotstuff_done(&d));
		assert_int_equal(pop3_dotstuff_feed(&d, (const uint8_t *)"A: b\r\n\r\nbody", 12,
						    out), 8);
		assert_true(pop3_dotstuff_done(&d));
		assert_int_equal(pop3_dotstuff_feed(&d, (const uint8_t *)"more\r\n", 6, out), 0);
	}
}

/* The worst case for the output bound: every line is ".". */
static void test_dotstuff_bound(void **state)
{
	uint8_t in[1000], out[POP3_DOTSTUFF_MAX_OUT(1000)];
	pop3_dotstuff d;

	(void)state;
	for (size_t i = 0; i < sizeof(in); i++)
		in[i] = i % 2 == 0 ? '.' : '\n';
	pop3_dotstuff_init(&d);
	assert_int_equal(pop3_dotstuff_feed(&d, in, sizeof(in), out), sizeof(out));
	for (size_t i = 0; i < sizeof(in); i++)
		in[i] = '\n';
	pop3_dotstuff_init(&d);
	assert_int_equal(pop3_dotstuff_feed(&d, in, sizeof(in), out), sizeof(out));
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_every_verb),
		cmocka_unit_test(test_case_and_spacing),
		cmocka_unit_test(test_unknown_and_errors),
		cmocka_unit_test(test_line_limit),
		cmocka_unit_test(test_sasl),
		cmocka_unit_test(test_reset_and_wipe),
		cmocka_unit_test(test_dotstuff),
		cmocka_unit_test(test_top),
		cmocka_unit_test(test_dotstuff_bound),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
