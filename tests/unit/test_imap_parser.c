/*
 * The IMAP command parser and the modified UTF-7 codec
 * (frontends/imap/imap_parser.h): every event kind, the command shapes
 * real clients send, every limit and error with the recovery after it,
 * the memory bound on announced literals, and the mUTF-7 strictness rules.
 *
 * Every parser input is fed whole, one byte at a time and in random
 * splits; the event sequences, recorded as text, must be identical.
 * LITERAL_DATA slices depend on the split, so consecutive ones are joined
 * into one record. The recorder acts as the session would: it calls
 * imap_parser_expect_line() after AUTHENTICATE without an initial response
 * and after IDLE, and (when asked) refuses APPEND literals with
 * imap_parser_skip_command().
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
#include "eng_error.h"
#include "imap_parser.h"
#include "testutil.h"

/* A test hook defined in imap_parser.c: the capacity of its buffer. */
extern size_t imap_parser_test_bufcap(const imap_parser *p);

struct setup {
	imap_parser_limits lim;
	size_t line_max;        /* set_line_max after new, if non-zero */
	uint64_t append_max;    /* set_append_max after new, if non-zero */
	bool refuse;            /* skip_command on every LITERAL, CONTINUE */
};

static void put_bytes(eng_buf *out, const char *s, size_t len)
{
	for (size_t i = 0; i < len; i++) {
		unsigned char c = (unsigned char)s[i];

		if (c < 0x20 || c >= 0x7f || c == '\\')
			eng_buf_printf(out, "\\x%02x", c);
		else
			eng_buf_putc(out, (char)c);
	}
}

static void put_args(eng_buf *out, const imap_arg *args, size_t n)
{
	for (size_t i = 0; i < n; i++) {
		const imap_arg *a = &args[i];

		if (i > 0)
			eng_buf_putc(out, ' ');
		if (a->kind == IMAP_ARG_LIST) {
			assert_true(a->n_list == 0 || a->list != NULL);
			eng_buf_putc(out, '(');
			put_args(out, a->list, a->n_list);
			eng_buf_putc(out, ')');
			continue;
		}
		assert_non_null(a->s);
		assert_int_equal(a->s[a->len], '\0');
		if (!a->literal8)
			assert_int_equal(strlen(a->s), a->len);
		switch (a->kind) {
		case IMAP_ARG_ATOM: eng_buf_puts(out, "A:"); break;
		case IMAP_ARG_NIL: eng_buf_puts(out, "NIL:"); break;
		case IMAP_ARG_QUOTED: eng_buf_puts(out, "Q:"); break;
		case IMAP_ARG_LITERAL:
			eng_buf_printf(out, "L%s:", a->literal8 ? "8" : "");
			break;
		default: fail();
		}
		put_bytes(out, a->s, a->len);
	}
}

static void put_cmd(eng_buf *out, const imap_command *cmd)
{
	eng_buf_printf(out, " %s %s", cmd->tag != NULL ? cmd->tag : "-",
		       cmd->name != NULL ? cmd->name : "-");
	if (cmd->n_args > 0) {
		eng_buf_putc(out, ' ');
		put_args(out, cmd->args, cmd->n_args);
	}
}

static const char *err_name(int err)
{
	switch (err) {
	case IMAP_ESYNTAX: return "SYNTAX";
	case IMAP_ELINE: return "LINE";
	case IMAP_ELITERAL: return "LITERAL";
	case IMAP_ELITERALS: return "LITERALS";
	case IMAP_EDEPTH: return "DEPTH";
	case IMAP_EARGS: return "ARGS";
	case IMAP_ENUL: return "NUL";
	case IMAP_EEMPTY: return "EMPTY";
	default: return "?";
	}
}

/* Records one event (DATA slices are joined by the caller). */
static void record(imap_parser *p, const imap_event *ev, const struct setup *su,
		   eng_buf *out)
{
	bool idle;

	switch (ev->kind) {
	case IMAP_EV_COMMAND:
		eng_buf_puts(out, "CMD");
		put_cmd(out, &ev->cmd);
		assert_non_null(ev->cmd.tag);
		assert_non_null(ev->cmd.name);
		idle = strcmp(ev->cmd.name, "IDLE") == 0;
		if ((strcmp(ev->cmd.name, "AUTHENTICATE") == 0 && ev->cmd.n_args == 1) ||
		    idle)
			imap_parser_expect_line(p);
		/* What the session does entering IDLE (ev's strings are
		 * gone): every IDLE of these transcripts is parsed on with
		 * trimmed memory. */
		if (idle)
			imap_parser_trim(p);
		break;
	case IMAP_EV_CONTINUE:
		eng_buf_printf(out, "CONT %llu%s",
			       (unsigned long long)ev->literal_size,
			       ev->literal8 ? " 8" : "");
		if (su->refuse) {
			imap_parser_skip_command(p);
			eng_buf_puts(out, " refused");
		}
		break;
	case IMAP_EV_LITERAL:
		eng_buf_printf(out, "LIT %llu %s%s",
			       (unsigned long long)ev->literal_size,
			       ev->literal_sync ? "sync" : "nonsync",
			       ev->literal8 ? " 8" : "");
		put_cmd(out, &ev->cmd);
		if (su->refuse) {
			imap_parser_skip_command(p);
			eng_buf_puts(out, " refused");
		}
		break;
	case IMAP_EV_LITERAL_END:
		eng_buf_puts(out, "END");
		break;
	case IMAP_EV_LINE:
		assert_int_equal(ev->data[ev->len], '\0');
		eng_buf_puts(out, "LINE ");
		put_bytes(out, (const char *)ev->data, ev->len);
		break;
	case IMAP_EV_ERROR:
		assert_non_null(ev->text);
		eng_buf_printf(out, "ERR %s %s%s", err_name(ev->err),
			       ev->cmd.tag != NULL ? ev->cmd.tag : "-",
			       ev->fatal ? " fatal" : "");
		break;
	default:
		fail();
	}
	eng_buf_putc(out, '\n');
}

static imap_parser *make_parser(const struct setup *su)
{
	imap_parser *p = imap_parser_new(&su->lim);

	if (su->line_max != 0)
		imap_parser_set_line_max(p, su->line_max);
	if (su->append_max != 0)
		imap_parser_set_append_max(p, su->append_max);
	return p;
}

static void transcript(const void *ctx, const char *in, size_t len,
		       enum tu_split how, eng_buf *out)
{
	const struct setup *su = ctx;
	imap_parser *p = make_parser(su);
	eng_buf data = ENG_BUF_INIT;
	bool in_data = false;
	size_t pos = 0;

	while (pos < len) {
		size_t piece = len - pos, off = 0;
		uint8_t *copy;

		piece = tu_split_piece(how, piece, 40);
		copy = malloc(piece);  /* exact size: ASan sees an overread */
		assert_non_null(copy);
		memcpy(copy, in + pos, piece);
		for (;;) {
			imap_event ev;
			size_t used = imap_parser_feed(p, copy + off, piece - off, &ev);

			assert_true(used <= piece - off);
			off += used;
			if (ev.kind == IMAP_EV_NEED_MORE) {
				assert_int_equal(off, piece);
				break;
			}
			if (ev.kind == IMAP_EV_LITERAL_DATA) {
				assert_true(ev.len > 0);
				assert_true(ev.data >= copy && ev.data + ev.len <= copy + off);
				if (!in_data)
					eng_buf_puts(out, "DATA ");
				in_data = true;
				eng_buf_append(&data, ev.data, ev.len);
				continue;
			}
			if (in_data) {
				put_bytes(out, data.data, data.len);
				eng_buf_putc(out, '\n');
				eng_buf_reset(&data);
				in_data = false;
			}
			record(p, &ev, su, out);
		}
		free(copy);
		pos += piece;
	}
	if (in_data) {
		put_bytes(out, data.data, data.len);
		eng_buf_putc(out, '\n');
	}
	eng_buf_free(&data);
	imap_parser_free(&p);
	assert_null(p);
}

/* The transcript of in, the same under every split. */
static char *parse_with(const struct setup *su, const char *in, size_t len)
{
	return tu_split_same(transcript, su, in, len, 25);
}

static void expect_with(const struct setup *su, const char *in, size_t len,
			const char *want)
{
	char *got = parse_with(su, in, len);

	if (strcmp(got, want) != 0) {
		fprintf(stderr, "input: ");
		for (size_t i = 0; i < len && i < 300; i++)
			fputc(in[i], stderr);
		fprintf(stderr, "\nwant:\n%s\ngot:\n%s\n", want, got);
		fail();
	}
	free(got);
}

/* A string literal as (pointer, length): inputs may hold NULs. */
#define IN(x) x, sizeof(x) - 1

static struct setup defaults(void)
{
	struct setup su;

	memset(&su, 0, sizeof(su));
	imap_parser_limits_default(&su.lim);
	return su;
}

static void expect(const char *in, const char *want)
{
	struct setup su = defaults();

	expect_with(&su, in, strlen(in), want);
}

/* ---- Command shapes ---- */

static void test_login(void **state)
{
	(void)state;
	expect("a1 LOGIN alice \"pa ss\\\"w\\\\d\"\r\n",
	       "CMD a1 LOGIN A:alice Q:pa ss\"w\\x5cd\n");
	expect("a2 login {5}\r\nalice {6}\r\nsecret\r\n",
	       "CONT 5\n"
	       "CONT 6\n"
	       "CMD a2 LOGIN L:alice L:secret\n");
	/* LITERAL+ and LITERAL-: no continuation. */
	expect("a3 LOGIN {3+}\r\nbob {4-}\r\npass\r\n",
	       "CMD a3 LOGIN L:bob L:pass\n");
	/* An empty literal, and a bare LF as line end. */
	expect("a4 LOGIN {0}\r\n \"\"\n",
	       "CONT 0\n"
	       "CMD a4 LOGIN L: Q:\n");
}

static void test_select_fetch_store(void **state)
{
	(void)state;
	expect("a1 SELECT \"INBOX\" (CONDSTORE)\r\n",
	       "CMD a1 SELECT Q:INBOX (A:CONDSTORE)\n");
	expect("a2 UID FETCH 1:* (FLAGS BODY.PEEK[HEADER.FIELDS (From To Subject)]<0.1024>)\r\n",
	       "CMD a2 UID A:FETCH A:1:* (A:FLAGS "
	       "A:BODY.PEEK[HEADER.FIELDS (From To Subject)]<0.1024>)\n");
	expect("a3 STORE 1:3,5 +FLAGS.SILENT (\\Seen $Junk)\r\n",
	       "CMD a3 STORE A:1:3,5 A:+FLAGS.SILENT (A:\\x5cSeen A:$Junk)\n");
	expect("a4 fetch 1 (BODY[] BODY[1.2.MIME] BINARY.PEEK[1]<0.10>)\r\n",
	       "CMD a4 FETCH A:1 (A:BODY[] A:BODY[1.2.MIME] A:BINARY.PEEK[1]<0.10>)\n");
	expect("a5 LIST \"\" *\r\na6 LIST \"\" %\r\n",
	       "CMD a5 LIST Q: A:*\n"
	       "CMD a6 LIST Q: A:%\n");
	/* Nested and empty lists, NIL in any case. */
	expect("a7 X (() (a (b)) nil) NiL\r\n",
	       "CMD a7 X (() (A:a (A:b)) NIL:nil) NIL:NiL\n");
	/* Extra spaces are tolerated. */
	expect("a8  NOOP  \r\n", "CMD a8 NOOP\n");
	expect("a9 NOOP\r\n", "CMD a9 NOOP\n");
}

static void test_search(void **state)
{
	(void)state;
	expect("a1 SEARCH CHARSET UTF-8 OR SUBJECT {5}\r\ncaf\xc3\xa9 FROM {4+}\r\nbob@ SINCE 1-Jan-2024\r\n",
	       "CONT 5\n"
	       "CMD a1 SEARCH A:CHARSET A:UTF-8 A:OR A:SUBJECT L:caf\\xc3\\xa9 "
	       "A:FROM L:bob@ A:SINCE A:1-Jan-2024\n");
	expect("a2 UID SEARCH (OR FROM \"a\" TO \"b\") NOT DELETED\r\n",
	       "CMD a2 UID A:SEARCH (A:OR A:FROM Q:a A:TO Q:b) A:NOT A:DELETED\n");
}

static void test_id_auth_idle(void **state)
{
	(void)state;
	expect("a1 ID (\"name\" \"x\" \"version\" NIL)\r\n",
	       "CMD a1 ID (Q:name Q:x Q:version NIL:NIL)\n");
	expect("a2 AUTHENTICATE PLAIN AGJvYgBzZWNyZXQ=\r\n",
	       "CMD a2 AUTHENTICATE A:PLAIN A:AGJvYgBzZWNyZXQ=\n");
	/* Without SASL-IR: the response is a raw line. */
	expect("a3 AUTHENTICATE PLAIN\r\nAGJvYgBzZWNyZXQ=\r\na4 NOOP\r\n",
	       "CMD a3 AUTHENTICATE A:PLAIN\n"
	       "LINE AGJvYgBzZWNyZXQ=\n"
	       "CMD a4 NOOP\n");
	/* A raw line is not parsed: parens, quotes and braces are bytes. */
	expect("a5 IDLE\r\nDONE\r\na6 IDLE\r\n(\"{5}\r\n",
	       "CMD a5 IDLE\n"
	       "LINE DONE\n"
	       "CMD a6 IDLE\n"
	       "LINE (\"{5}\n");
	expect("a7 IDLE\n\n", "CMD a7 IDLE\nLINE \n");
	/* Raw lines that end where the buffer grows (256, 512, 1024). */
	for (size_t n = 250; n < 1030; n++) {
		struct setup su = defaults();
		eng_buf in = ENG_BUF_INIT, want = ENG_BUF_INIT;

		if (n == 262)
			n = 506;
		else if (n == 518)
			n = 1018;
		eng_buf_puts(&in, "a IDLE\r\n");
		eng_buf_puts(&want, "CMD a IDLE\nLINE ");
		for (size_t i = 0; i < n; i++) {
			eng_buf_putc(&in, 'x');
			eng_buf_putc(&want, 'x');
		}
		eng_buf_puts(&in, "\r\n");
		eng_buf_putc(&want, '\n');
		expect_with(&su, in.data, in.len, want.data);
		eng_buf_free(&in);
		eng_buf_free(&want);
	}
}

static void test_append(void **state)
{
	(void)state;
	expect("a1 APPEND INBOX (\\Seen) \"05-Jan-2024 10:00:00 +0000\" {11}\r\nHello world\r\n",
	       "LIT 11 sync a1 APPEND A:INBOX (A:\\x5cSeen) Q:05-Jan-2024 10:00:00 +0000\n"
	       "DATA Hello world\n"
	       "END\n"
	       "CMD a1 APPEND\n");
	/* MULTIAPPEND: three messages, each with its own arguments. */
	expect("a2 APPEND Drafts (\\Draft) {3+}\r\nabc (\\Seen) {2+}\r\nde {1}\r\nf\r\n",
	       "LIT 3 nonsync a2 APPEND A:Drafts (A:\\x5cDraft)\n"
	       "DATA abc\n"
	       "END\n"
	       "LIT 2 nonsync a2 APPEND (A:\\x5cSeen)\n"
	       "DATA de\n"
	       "END\n"
	       "LIT 1 sync a2 APPEND\n"
	       "DATA f\n"
	       "END\n"
	       "CMD a2 APPEND\n");
	/* literal8 (RFC 3516) carries NULs; a literal mailbox is buffered. */
	expect_with(&(struct setup){ .lim = { 0 } },
		    IN("a3 APPEND {5}\r\nINBOX ~{5}\r\na\0b\0c\r\n"),
		    "CONT 5\n"
		    "LIT 5 sync 8 a3 APPEND L:INBOX\n"
		    "DATA a\\x00b\\x00c\n"
		    "END\n"
		    "CMD a3 APPEND\n");
	/* An empty message. */
	expect("a4 APPEND INBOX {0+}\r\n\r\n",
	       "LIT 0 nonsync a4 APPEND A:INBOX\n"
	       "END\n"
	       "CMD a4 APPEND\n");
	/* A buffered literal8 elsewhere keeps its NULs too. */
	expect_with(&(struct setup){ .lim = { 0 } },
		    IN("a5 X ~{3}\r\n\0\0\0\r\n"),
		    "CONT 3 8\n"
		    "CMD a5 X L8:\\x00\\x00\\x00\n");
}

static void test_append_refused(void **state)
{
	struct setup su = defaults();

	(void)state;
	su.refuse = true;
	/* Synchronising: the client sends nothing more of it. */
	expect_with(&su, IN("a1 APPEND INBOX {5}\r\na2 NOOP\r\n"),
		    "LIT 5 sync a1 APPEND A:INBOX refused\n"
		    "CMD a2 NOOP\n");
	/* Non-synchronising: its bytes and the rest of the command go. */
	expect_with(&su, IN("a1 APPEND INBOX {9+}\r\na9 NOOP\r\n (\\Seen) {3+}\r\nabc\r\na2 NOOP\r\n"),
		    "LIT 9 nonsync a1 APPEND A:INBOX refused\n"
		    "CMD a2 NOOP\n");
	/* A session may refuse any synchronising literal at CONTINUE. */
	expect_with(&su, IN("a1 LOGIN {5}\r\na2 LOGIN {0}\r\na3 NOOP\r\n"),
		    "CONT 5 refused\n"
		    "CONT 0 refused\n"
		    "CMD a3 NOOP\n");
	/* After the message, the rest of the command goes. */
	expect_with(&su, IN("a1 APPEND INBOX {0+}\r\n (\\Seen) {3+}\r\nabc\r\na2 NOOP\r\n"),
		    "LIT 0 nonsync a1 APPEND A:INBOX refused\n"
		    "CMD a2 NOOP\n");
}

/* ---- Limits and errors ---- */

static char *long_line(const char *head, size_t len)
{
	char *s = eng_malloc(len + 3);
	size_t h = strlen(head);

	memcpy(s, head, h);
	memset(s + h, 'x', len - h);
	memcpy(s + len, "\r\n", 3);
	return s;
}

static void test_line_limit(void **state)
{
	struct setup su = defaults();
	char *ok = long_line("a1 X ", 8192), *over = long_line("a1 X ", 8193);
	eng_buf in = ENG_BUF_INIT;
	char *got;

	(void)state;
	eng_buf_puts(&in, ok);
	eng_buf_puts(&in, over);
	eng_buf_puts(&in, "a2 NOOP\r\n");
	got = parse_with(&su, in.data, in.len);
	assert_non_null(strstr(got, "CMD a1 X A:xxx"));
	assert_non_null(strstr(got, "\nERR LINE a1\nCMD a2 NOOP\n"));
	free(got);
	eng_buf_free(&in);
	free(ok);
	free(over);

	/* After login: 64 KiB. */
	su.line_max = 65536;
	ok = long_line("a1 X ", 65536);
	over = long_line("a1 X ", 65537);
	eng_buf_puts(&in, ok);
	eng_buf_puts(&in, over);
	eng_buf_puts(&in, "a2 NOOP\r\n");
	got = parse_with(&su, in.data, in.len);
	assert_true(strncmp(got, "CMD a1 X A:xxx", 14) == 0);
	assert_non_null(strstr(got, "\nERR LINE a1\nCMD a2 NOOP\n"));
	free(got);
	eng_buf_free(&in);
	free(ok);
	free(over);

	/* A raw line has the same limit, and is not fatal. */
	su = defaults();
	su.lim.line_max = 10;
	expect_with(&su, IN("a IDLE\r\n01234567890\r\nDONE\r\n"),
		    "CMD a IDLE\n"
		    "ERR LINE -\n"
		    "ERR EMPTY DONE\n");
}

static void test_literal_limits(void **state)
{
	struct setup su = defaults();

	(void)state;
	su.lim.literal_max = 10;
	/* Synchronising: refused at once, no continuation. */
	expect_with(&su, IN("a1 LOGIN {11}\r\na2 NOOP\r\n"),
		    "ERR LITERAL a1\n"
		    "CMD a2 NOOP\n");
	/* Non-synchronising: fatal, and its bytes are skipped. */
	expect_with(&su, IN("a1 LOGIN {11+}\r\na9 NOOP\r\nxx {1+}\r\nz\r\na2 NOOP\r\n"),
		    "ERR LITERAL a1 fatal\n"
		    "CMD a2 NOOP\n");
	/* The literals of one command share literal_max. */
	expect_with(&su, IN("a1 LOGIN {6}\r\nabcdef {5}\r\na2 NOOP\r\n"),
		    "CONT 6\n"
		    "ERR LITERAL a1\n"
		    "CMD a2 NOOP\n");
	/* APPEND has append_max. */
	su.append_max = 20;
	expect_with(&su, IN("a1 APPEND INBOX {20}\r\n01234567890123456789\r\n"
		    "a2 APPEND INBOX {21}\r\na3 NOOP\r\n"),
		    "LIT 20 sync a1 APPEND A:INBOX\n"
		    "DATA 01234567890123456789\n"
		    "END\n"
		    "CMD a1 APPEND\n"
		    "ERR LITERAL a2\n"
		    "CMD a3 NOOP\n");
	/* Too many literals. */
	su = defaults();
	su.lim.literals_max = 2;
	expect_with(&su, IN("a1 X {1+}\r\na {1+}\r\nb {1+}\r\nc\r\na2 X {1}\r\nd\r\n"),
		    "ERR LITERALS a1\n"
		    "CONT 1\n"
		    "CMD a2 X L:d\n");
	/* A malformed announcement. */
	expect("a1 X {}\r\na2 X {1x}\r\na3 X {1}x\r\na4 X ~{+}\r\na5 X {1+-}\r\n"
	       "a6 NOOP\r\n",
	       "ERR SYNTAX a1\nERR SYNTAX a2\nERR SYNTAX a3\nERR SYNTAX a4\n"
	       "ERR SYNTAX a5\nCMD a6 NOOP\n");
	/* literal8 may be non-synchronising too (RFC 7888). */
	expect("a1 X ~{2+}\r\nab ~{1-}\r\nc\r\n", "CMD a1 X L8:ab L8:c\n");
}

static void test_structure_limits(void **state)
{
	struct setup su = defaults();

	(void)state;
	su.lim.depth_max = 3;
	expect_with(&su, IN("a1 X (((a)))\r\na2 X ((((a))))\r\na3 NOOP\r\n"),
		    "CMD a1 X (((A:a)))\n"
		    "ERR DEPTH a2\n"
		    "CMD a3 NOOP\n");
	/* Brackets in an atom count too. */
	expect_with(&su, IN("a1 X B[[[]]]\r\na2 X B[[[[]]]]\r\na3 NOOP\r\n"),
		    "CMD a1 X A:B[[[]]]\n"
		    "ERR DEPTH a2\n"
		    "CMD a3 NOOP\n");
	su = defaults();
	su.lim.args_max = 3;
	expect_with(&su, IN("a1 X a (b)\r\na2 X a (b c)\r\na3 X a b c d\r\na4 NOOP\r\n"),
		    "CMD a1 X A:a (A:b)\n"
		    "ERR ARGS a2\n"
		    "ERR ARGS a3\n"
		    "CMD a4 NOOP\n");
}

static void test_syntax_errors(void **state)
{
	(void)state;
	/* NUL in a line, a quoted string, a literal. */
	expect_with(&(struct setup){ .lim = { 0 } },
		    IN("a1 NOOP\0\r\na2 LOGIN \"a\0\" b\r\na3 LOGIN {3}\r\na\0b c\r\na4 NOOP\r\n"),
		    "ERR NUL a1\n"
		    "ERR NUL a2\n"
		    "CONT 3\n"
		    "ERR NUL a3\n"
		    "CMD a4 NOOP\n");
	/* Unbalanced parentheses. */
	expect("a1 FETCH 1 (FLAGS\r\na2 FETCH 1 FLAGS)\r\na3 X B[1\r\na4 NOOP\r\n",
	       "ERR SYNTAX a1\n"
	       "ERR SYNTAX a2\n"
	       "ERR SYNTAX a3\n"
	       "CMD a4 NOOP\n");
	/* Empty lines and a tag without a command. */
	expect("\r\n\na1\r\na2 \r\na3 NOOP\r\n",
	       "ERR EMPTY -\n"
	       "ERR EMPTY -\n"
	       "ERR EMPTY a1\n"
	       "ERR EMPTY a2\n"
	       "CMD a3 NOOP\n");
	/* Bad tags. */
	expect("a+1 NOOP\r\n*a NOOP\r\n\"a\" NOOP\r\na{ NOOP\r\n a NOOP\r\na\\b NOOP\r\n"
	       "a] NOOP\r\n",
	       "ERR SYNTAX -\nERR SYNTAX -\nERR SYNTAX -\nERR SYNTAX -\n"
	       "ERR SYNTAX -\nERR SYNTAX -\n"
	       "CMD a] NOOP\n");
	/* Bad command names. */
	expect("a1 NO\\OP\r\na2 NO(OP\r\na3 NOOP\r\n",
	       "ERR SYNTAX a1\nERR SYNTAX a2\nCMD a3 NOOP\n");
	/* Quoted strings: only \" and \\ escapes; no line end inside. */
	expect("a1 LOGIN \"a\\b\" c\r\na2 LOGIN \"ab\r\na3 LOGIN \"a\"b\r\na4 NOOP\r\n",
	       "ERR SYNTAX a1\nERR SYNTAX a2\nERR SYNTAX a3\nCMD a4 NOOP\n");
	/* A bare CR is no line end. */
	expect("a1 NOOP\ra2 NOOP\r\na3 NOOP\r\r\na4 NOOP\r\n",
	       "ERR SYNTAX a1\nERR SYNTAX a3\nCMD a4 NOOP\n");
	/* Arguments must be separated. */
	expect("a1 X (a)(b)\r\na2 X \"a\"(b)\r\na3 X a\"b\"\r\na4 NOOP\r\n",
	       "ERR SYNTAX a1\nERR SYNTAX a2\nERR SYNTAX a3\nCMD a4 NOOP\n");
}

static void test_skip_honours_literals(void **state)
{
	(void)state;
	/* The error is mid-line; the line still announces a literal whose
	 * bytes (which look like a command) belong to the bad command. */
	expect("a1 X ) {9+}\r\na9 NOOP\r\n\r\na2 NOOP\r\n",
	       "ERR SYNTAX a1\nCMD a2 NOOP\n");
	/* A synchronising one ends the command: the client waits for "+". */
	expect("a1 X ) {9}\r\na2 NOOP\r\n",
	       "ERR SYNTAX a1\nCMD a2 NOOP\n");
}

static void test_errors_max(void **state)
{
	struct setup su = defaults();

	(void)state;
	su.lim.errors_max = 3;
	expect_with(&su, IN("(\r\n(\r\na NOOP\r\n(\r\n(\r\n(\r\nb NOOP\r\n"),
		    "ERR SYNTAX -\n"
		    "ERR SYNTAX -\n"
		    "CMD a NOOP\n"
		    "ERR SYNTAX -\n"
		    "ERR SYNTAX -\n"
		    "ERR SYNTAX - fatal\n"
		    "CMD b NOOP\n");
}

/* ---- Memory ---- */

static void feed_expect(imap_parser *p, const char *in, size_t len,
			imap_event_kind want)
{
	imap_event ev;
	size_t used = imap_parser_feed(p, (const uint8_t *)in, len, &ev);

	assert_int_equal(ev.kind, want);
	assert_int_equal(used, len);
}

static void test_huge_announcements(void **state)
{
	imap_parser_limits lim;
	imap_parser *p;
	char chunk[1000];
	size_t cap0;

	(void)state;
	memset(chunk, 'x', sizeof(chunk));
	/* Accepted by the limits: nothing is reserved for them. */
	imap_parser_limits_default(&lim);
	lim.literal_max = UINT64_MAX;
	p = imap_parser_new(&lim);
	cap0 = imap_parser_test_bufcap(p);
	feed_expect(p, "a1 LOGIN {4294967295}\r\n", 23, IMAP_EV_CONTINUE);
	feed_expect(p, chunk, sizeof(chunk), IMAP_EV_NEED_MORE);
	assert_true(imap_parser_test_bufcap(p) <= 4 * sizeof(chunk));
	imap_parser_free(&p);

	p = imap_parser_new(&lim);
	feed_expect(p, "a1 LOGIN {4294967295+}\r\n", 24, IMAP_EV_NEED_MORE);
	assert_int_equal(imap_parser_test_bufcap(p), cap0);
	feed_expect(p, chunk, 10, IMAP_EV_NEED_MORE);
	assert_true(imap_parser_test_bufcap(p) <= 4 * cap0);
	imap_parser_free(&p);

	/* Refused by the default limits: skipping buffers nothing. */
	p = imap_parser_new(NULL);
	feed_expect(p, "a1 LOGIN {4294967295}\r\n", 23, IMAP_EV_ERROR);
	feed_expect(p, "a1 LOGIN {4294967295+}\r\n", 24, IMAP_EV_ERROR);
	for (int i = 0; i < 3000; i++)
		feed_expect(p, chunk, sizeof(chunk), IMAP_EV_NEED_MORE);
	assert_int_equal(imap_parser_test_bufcap(p), cap0);
	imap_parser_free(&p);

	/* A streamed APPEND literal is never buffered. */
	lim.append_max = UINT64_MAX;
	p = imap_parser_new(&lim);
	feed_expect(p, "a1 APPEND INBOX {4294967295}\r\n", 30, IMAP_EV_LITERAL);
	for (int i = 0; i < 3000; i++)
		feed_expect(p, chunk, sizeof(chunk), IMAP_EV_LITERAL_DATA);
	assert_int_equal(imap_parser_test_bufcap(p), cap0);
	imap_parser_free(&p);
}

/* imap_parser_trim: an idle session's parser keeps no memory of earlier
 * commands, and parses the next lines and commands as before. */
static void test_trim(void **state)
{
	imap_parser *p = imap_parser_new(NULL);
	eng_buf big = ENG_BUF_INIT;
	imap_event ev;

	(void)state;
	/* A command with many arguments grows the buffer and the nodes. */
	eng_buf_puts(&big, "a1 STORE 1:* +FLAGS (");
	for (int i = 0; i < 100; i++)
		eng_buf_printf(&big, "%s$Keyword%03d", i > 0 ? " " : "", i);
	eng_buf_puts(&big, ")\r\n");
	feed_expect(p, big.data, big.len, IMAP_EV_COMMAND);
	assert_true(imap_parser_test_bufcap(p) > 512);
	/* Mid-command, trim does nothing. */
	feed_expect(p, "a2 NOOP", 7, IMAP_EV_NEED_MORE);
	imap_parser_trim(p);
	assert_true(imap_parser_test_bufcap(p) > 0);
	feed_expect(p, "\r\n", 2, IMAP_EV_COMMAND);
	feed_expect(p, "a3 IDLE\r\n", 9, IMAP_EV_COMMAND);
	imap_parser_trim(p);
	assert_int_equal(imap_parser_test_bufcap(p), 0);
	imap_parser_trim(p);           /* twice: still nothing to free */
	imap_parser_expect_line(p);
	assert_int_equal(imap_parser_feed(p, (const uint8_t *)"DONE\r\n", 6, &ev), 6);
	assert_int_equal(ev.kind, IMAP_EV_LINE);
	assert_int_equal(ev.len, 4);
	assert_memory_equal(ev.data, "DONE", 5);
	assert_int_equal(imap_parser_feed(p, (const uint8_t *)big.data, big.len, &ev),
			 big.len);
	assert_int_equal(ev.kind, IMAP_EV_COMMAND);
	assert_int_equal(ev.cmd.n_args, 3);
	assert_string_equal(ev.cmd.tag, "a1");
	assert_int_equal(ev.cmd.args[2].kind, IMAP_ARG_LIST);
	assert_int_equal(ev.cmd.args[2].n_list, 100);
	assert_string_equal(ev.cmd.args[2].list[99].s, "$Keyword099");
	/* A trim right after a command, then an empty feed and a new one. */
	imap_parser_trim(p);
	assert_int_equal(imap_parser_test_bufcap(p), 0);
	feed_expect(p, "", 0, IMAP_EV_NEED_MORE);
	feed_expect(p, "a4 SELECT {5}\r\n", 15, IMAP_EV_CONTINUE);
	assert_int_equal(imap_parser_feed(p, (const uint8_t *)"INBOX\r\n", 7, &ev), 7);
	assert_int_equal(ev.kind, IMAP_EV_COMMAND);
	assert_string_equal(ev.cmd.args[0].s, "INBOX");
	eng_buf_free(&big);
	imap_parser_free(&p);
}

/* ---- Modified UTF-7 ---- */

static void mutf7_pair(const char *utf8, const char *mutf7)
{
	char *out;

	assert_int_equal(imap_mutf7_encode(utf8, strlen(utf8), &out), 0);
	assert_string_equal(out, mutf7);
	free(out);
	assert_int_equal(imap_mutf7_decode(mutf7, strlen(mutf7), &out), 0);
	assert_string_equal(out, utf8);
	free(out);
}

static void test_mutf7_examples(void **state)
{
	(void)state;
	mutf7_pair("~peter/mail/\xe5\x8f\xb0\xe5\x8c\x97/\xe6\x97\xa5\xe6\x9c\xac\xe8\xaa\x9e",
		   "~peter/mail/&U,BTFw-/&ZeVnLIqe-");
	mutf7_pair("&", "&-");
	mutf7_pair("a&b&&", "a&-b&-&-");
	mutf7_pair("", "");
	mutf7_pair("INBOX", "INBOX");
	mutf7_pair("caf\xc3\xa9", "caf&AOk-");
	mutf7_pair("\xc3\xa9&", "&AOk-&-");
	/* An astral character: a surrogate pair. */
	mutf7_pair("\xf0\x9f\x98\x80", "&2D3eAA-");
	/* Controls are encoded, and join the run around them. */
	mutf7_pair("\t\xc3\xa9", "&AAkA6Q-");
}

static size_t put_cp(char *s, uint32_t cp)
{
	if (cp < 0x80) {
		s[0] = (char)cp;
		return 1;
	}
	if (cp < 0x800) {
		s[0] = (char)(0xc0 | (cp >> 6));
		s[1] = (char)(0x80 | (cp & 0x3f));
		return 2;
	}
	if (cp < 0x10000) {
		s[0] = (char)(0xe0 | (cp >> 12));
		s[1] = (char)(0x80 | ((cp >> 6) & 0x3f));
		s[2] = (char)(0x80 | (cp & 0x3f));
		return 3;
	}
	s[0] = (char)(0xf0 | (cp >> 18));
	s[1] = (char)(0x80 | ((cp >> 12) & 0x3f));
	s[2] = (char)(0x80 | ((cp >> 6) & 0x3f));
	s[3] = (char)(0x80 | (cp & 0x3f));
	return 4;
}

static void test_mutf7_round_trip(void **state)
{
	(void)state;
	for (int round = 0; round < 2000; round++) {
		char s[200], *enc, *dec;
		size_t len = 0;
		int n = (int)(tu_rng() % 40);

		for (int i = 0; i < n; i++) {
			uint32_t cp;

			switch (tu_rng() % 4) {
			case 0: cp = 0x20 + (uint32_t)(tu_rng() % 0x5f); break;
			case 1: cp = 1 + (uint32_t)(tu_rng() % 0x7f); break;
			case 2: cp = 0x80 + (uint32_t)(tu_rng() % (0x10000 - 0x80)); break;
			default: cp = 0x10000 + (uint32_t)(tu_rng() % 0x100000); break;
			}
			if (cp >= 0xd800 && cp <= 0xdfff)
				cp = 0xe000;
			len += put_cp(s + len, cp);
		}
		assert_true(imap_utf8_valid(s, len));
		assert_int_equal(imap_mutf7_encode(s, len, &enc), 0);
		for (const char *c = enc; *c != '\0'; c++)
			assert_true(*c >= 0x20 && *c <= 0x7e);
		assert_int_equal(imap_mutf7_decode(enc, strlen(enc), &dec), 0);
		assert_int_equal(strlen(dec), len);
		assert_memory_equal(dec, s, len);
		free(enc);
		free(dec);
	}
}

static void mutf7_bad(const char *in, size_t len)
{
	char *out = (char *)1;

	if (imap_mutf7_decode(in, len, &out) != ENG_EMALFORMED) {
		fprintf(stderr, "accepted: %s\n", in);
		fail();
	}
	assert_null(out);
}

static void test_mutf7_strict(void **state)
{
	char *out;

	(void)state;
	mutf7_bad("&AOkA-", 6);      /* not minimal: a spare sextet */
	mutf7_bad("&AOl-", 5);       /* non-zero padding bits */
	mutf7_bad("&AOk=-", 6);      /* base64 padding */
	mutf7_bad("&AGE-", 5);       /* "a" encoded */
	mutf7_bad("&ACY-", 5);       /* "&" encoded instead of "&-" */
	mutf7_bad("&AOk-&AOk-", 10); /* adjacent runs */
	mutf7_bad("&2D0-", 5);       /* lone high surrogate */
	mutf7_bad("&2D3YPQ-", 8);    /* high surrogate then high */
	mutf7_bad("&3gA-", 5);       /* lone low surrogate */
	mutf7_bad("&AOk", 4);        /* unterminated */
	mutf7_bad("a&b", 3);
	mutf7_bad("&A-", 3);         /* too short for a unit */
	mutf7_bad("&A/k-", 5);       /* "/" is "," in modified base64 */
	mutf7_bad("caf\xc3\xa9", 5); /* 8-bit */
	mutf7_bad("a\tb", 3);        /* a control as itself */
	mutf7_bad("&AAA-", 5);       /* U+0000 */
	mutf7_bad("a\0b", 3);
	/* A run then "&-" is fine. */
	assert_int_equal(imap_mutf7_decode("&AOk-&-", 7, &out), 0);
	assert_string_equal(out, "\xc3\xa9&");
	free(out);

	/* The encoder refuses invalid UTF-8. */
	out = (char *)1;
	assert_int_equal(imap_mutf7_encode("\xc3", 1, &out), ENG_EMALFORMED);
	assert_null(out);
	assert_int_equal(imap_mutf7_encode("\xc0\xaf", 2, &out), ENG_EMALFORMED);
	assert_int_equal(imap_mutf7_encode("\xed\xa0\x80", 3, &out), ENG_EMALFORMED);
	assert_int_equal(imap_mutf7_encode("\xf4\x90\x80\x80", 4, &out), ENG_EMALFORMED);
	assert_int_equal(imap_mutf7_encode("a\0b", 3, &out), ENG_EMALFORMED);
}

static void test_utf8_valid(void **state)
{
	(void)state;
	assert_true(imap_utf8_valid("", 0));
	assert_true(imap_utf8_valid("abc", 3));
	assert_true(imap_utf8_valid("\xc3\xa9", 2));
	assert_true(imap_utf8_valid("\xe2\x82\xac", 3));
	assert_true(imap_utf8_valid("\xf0\x9f\x98\x80", 4));
	assert_true(imap_utf8_valid("\xf4\x8f\xbf\xbf", 4));
	assert_false(imap_utf8_valid("\xc3", 1));
	assert_false(imap_utf8_valid("\x80", 1));
	assert_false(imap_utf8_valid("\xc0\xaf", 2));           /* overlong */
	assert_false(imap_utf8_valid("\xe0\x80\xaf", 3));       /* overlong */
	assert_false(imap_utf8_valid("\xf0\x80\x80\xaf", 4));   /* overlong */
	assert_false(imap_utf8_valid("\xed\xa0\x80", 3));       /* surrogate */
	assert_false(imap_utf8_valid("\xf4\x90\x80\x80", 4));   /* > U+10FFFF */
	assert_false(imap_utf8_valid("\xff", 1));
	assert_false(imap_utf8_valid("\xe2\x82", 2));
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_login),
		cmocka_unit_test(test_select_fetch_store),
		cmocka_unit_test(test_search),
		cmocka_unit_test(test_id_auth_idle),
		cmocka_unit_test(test_append),
		cmocka_unit_test(test_append_refused),
		cmocka_unit_test(test_line_limit),
		cmocka_unit_test(test_literal_limits),
		cmocka_unit_test(test_structure_limits),
		cmocka_unit_test(test_syntax_errors),
		cmocka_unit_test(test_skip_honours_literals),
		cmocka_unit_test(test_errors_max),
		cmocka_unit_test(test_huge_announcements),
		cmocka_unit_test(test_trim),
		cmocka_unit_test(test_mutf7_examples),
		cmocka_unit_test(test_mutf7_round_trip),
		cmocka_unit_test(test_mutf7_strict),
		cmocka_unit_test(test_utf8_valid),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
