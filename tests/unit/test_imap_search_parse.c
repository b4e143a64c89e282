/*
 * The IMAP SEARCH program parser and its writers
 * (frontends/imap/imap_search_parse.h): every search key on commands read
 * by the real IMAP parser, printed back as an S-expression of the engine
 * query tree; flattening and its bounds (depth 16 after flattening, raw
 * nesting, node count, string bytes); CHARSET and RETURN; "$"; dates in
 * UTC and in a local zone; the SORT criteria and THREAD algorithms; the
 * sequence-set writer; the THREAD writer on RFC 5256's example, dummies,
 * the view mapping and a 200000-message reply chain (iterative).
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "eng_error.h"
#include "imap_parser.h"
#include "imap_search_parse.h"

static imap_parser *parser;

/* Reads "t SEARCH <args>\r\n" with the real parser; the arguments stay
 * valid until the next call. */
static const imap_arg *read_args(const char *args, size_t *n_r)
{
	imap_parser_limits lim;
	static char line[70000];
	imap_event ev;
	size_t off = 0, len;

	imap_parser_free(&parser);
	imap_parser_limits_default(&lim);
	lim.line_max = sizeof(line);
	parser = imap_parser_new(&lim);
	snprintf(line, sizeof(line), "t SEARCH %s\r\n", args);
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
	*n_r = ev.cmd.n_args;
	return ev.cmd.args;
}

static const char *const kind_names[] = {
	[ENG_Q_ALL] = "ALL", [ENG_Q_AND] = "AND", [ENG_Q_OR] = "OR",
	[ENG_Q_NOT] = "NOT", [ENG_Q_FLAG] = "FLAG", [ENG_Q_UNFLAG] = "UNFLAG",
	[ENG_Q_KEYWORD] = "KEYWORD", [ENG_Q_UNKEYWORD] = "UNKEYWORD",
	[ENG_Q_UID] = "UID", [ENG_Q_SEQ] = "SEQ", [ENG_Q_BEFORE] = "BEFORE",
	[ENG_Q_ON] = "ON", [ENG_Q_SINCE] = "SINCE",
	[ENG_Q_SENTBEFORE] = "SENTBEFORE", [ENG_Q_SENTON] = "SENTON",
	[ENG_Q_SENTSINCE] = "SENTSINCE", [ENG_Q_SAVEDBEFORE] = "SAVEDBEFORE",
	[ENG_Q_SAVEDON] = "SAVEDON", [ENG_Q_SAVEDSINCE] = "SAVEDSINCE",
	[ENG_Q_SAVEDATESUPPORTED] = "SAVEDATESUPPORTED",
	[ENG_Q_LARGER] = "LARGER", [ENG_Q_SMALLER] = "SMALLER",
	[ENG_Q_HEADER] = "HEADER", [ENG_Q_BODY] = "BODY", [ENG_Q_TEXT] = "TEXT",
	[ENG_Q_MODSEQ] = "MODSEQ", [ENG_Q_OLDER] = "OLDER",
	[ENG_Q_YOUNGER] = "YOUNGER", [ENG_Q_EMAILID] = "EMAILID",
	[ENG_Q_THREADID] = "THREADID",
};

/* The tree as "(AND (FLAG 1) (HEADER From \"x\"))". */
static void dump(const eng_query *q, eng_buf *b)
{
	eng_buf_printf(b, "(%s", kind_names[q->kind]);
	switch (q->kind) {
	case ENG_Q_FLAG:
	case ENG_Q_UNFLAG:
		eng_buf_printf(b, " %u", q->flag);
		break;
	case ENG_Q_KEYWORD:
	case ENG_Q_UNKEYWORD:
	case ENG_Q_BODY:
	case ENG_Q_TEXT:
		eng_buf_printf(b, " \"%s\"", q->text);
		break;
	case ENG_Q_HEADER:
		eng_buf_printf(b, " %s \"%s\"", q->field, q->text);
		break;
	case ENG_Q_UID:
	case ENG_Q_SEQ:
		for (size_t i = 0; i < q->set.count; i++) {
			uint32_t lo = q->set.ranges[i].lo;
			uint32_t hi = q->set.ranges[i].hi;

			eng_buf_putc(b, i == 0 ? ' ' : ',');
			if (lo == UINT32_MAX)
				eng_buf_putc(b, '*');
			else
				eng_buf_printf(b, "%u", lo);
			if (hi == UINT32_MAX && lo != hi)
				eng_buf_puts(b, ":*");
			else if (hi != lo)
				eng_buf_printf(b, ":%u", hi);
		}
		break;
	case ENG_Q_ALL:
	case ENG_Q_AND:
	case ENG_Q_OR:
	case ENG_Q_NOT:
	case ENG_Q_SAVEDATESUPPORTED:
		break;
	default:
		eng_buf_printf(b, " %lld", (long long)q->number);
		break;
	}
	for (size_t i = 0; i < q->n_children; i++) {
		eng_buf_putc(b, ' ');
		dump(q->children[i], b);
	}
	eng_buf_putc(b, ')');
}

static const uint32_t saved_uids[] = { 1, 2, 3, 7 };

static int parse_with(const char *args, enum imap_search_syntax syntax,
		      bool saved, imap_search_prog *p)
{
	imap_search_in in = { syntax, saved ? saved_uids : NULL,
			      saved ? 4 : 0 };
	const imap_arg *a;
	size_t n;

	a = read_args(args, &n);
	return imap_search_parse(a, n, &in, p);
}

/* Parses and compares the dump; returns the prog for more checks. */
static void expect_tree(const char *args, const char *want)
{
	imap_search_prog p;
	eng_buf b = ENG_BUF_INIT;
	int st = parse_with(args, IMAP_SYNTAX_SEARCH, true, &p);

	if (st != IMAP_SEARCH_OK) {
		fprintf(stderr, "refused (%d, %s): %s\n", st, p.error, args);
		fail();
	}
	dump(p.query, &b);
	eng_buf_putc(&b, '\0');
	if (strcmp(b.data, want) != 0) {
		fprintf(stderr, "%s\n  got  %s\n  want %s\n", args, b.data,
			want);
		fail();
	}
	eng_buf_free(&b);
	imap_search_prog_free(&p);
}

static void expect_status(const char *args, int want)
{
	imap_search_prog p;
	int st = parse_with(args, IMAP_SYNTAX_SEARCH, false, &p);

	if (st != want) {
		fprintf(stderr, "%s: status %d, want %d\n", args, st, want);
		fail();
	}
	if (want != IMAP_SEARCH_OK)
		assert_non_null(p.error);
	imap_search_prog_free(&p);
}

static void test_every_key(void **state)
{
	(void)state;
	expect_tree("ALL", "(ALL)");
	expect_tree("OLD", "(ALL)");
	expect_tree("NEW", "(OR)");
	expect_tree("RECENT", "(OR)");
	expect_tree("ANSWERED", "(FLAG 2)");
	expect_tree("DELETED", "(FLAG 8)");
	expect_tree("DRAFT", "(FLAG 16)");
	expect_tree("FLAGGED", "(FLAG 4)");
	expect_tree("seen", "(FLAG 1)");
	expect_tree("UNANSWERED", "(UNFLAG 2)");
	expect_tree("UNDELETED", "(UNFLAG 8)");
	expect_tree("UNDRAFT", "(UNFLAG 16)");
	expect_tree("UNFLAGGED", "(UNFLAG 4)");
	expect_tree("UNSEEN", "(UNFLAG 1)");
	expect_tree("BCC bob", "(HEADER Bcc \"bob\")");
	expect_tree("CC \"a b\"", "(HEADER Cc \"a b\")");
	expect_tree("FROM {3+}\r\nx y", "(HEADER From \"x y\")");
	expect_tree("SUBJECT \"\"", "(HEADER Subject \"\")");
	expect_tree("TO carol", "(HEADER To \"carol\")");
	expect_tree("HEADER X-Mailer mutt", "(HEADER X-Mailer \"mutt\")");
	expect_tree("BODY hello", "(BODY \"hello\")");
	expect_tree("TEXT \"hello world\"", "(TEXT \"hello world\")");
	expect_tree("KEYWORD $Junk", "(KEYWORD \"$Junk\")");
	expect_tree("UNKEYWORD work", "(UNKEYWORD \"work\")");
	expect_tree("LARGER 100", "(LARGER 100)");
	expect_tree("SMALLER 9223372036854775807",
		    "(SMALLER 9223372036854775807)");
	expect_tree("UID 1:3,5:*", "(UID 1:3,5:*)");
	expect_tree("1:3,*", "(SEQ 1:3,*)");
	expect_tree("5:*", "(SEQ 5:*)");
	expect_tree("MODSEQ 620162338", "(MODSEQ 620162338)");
	expect_tree("MODSEQ \"/flags/\\\\draft\" all 620162338",
		    "(MODSEQ 620162338)");
	expect_tree("OLDER 3600", "(OLDER 3600)");
	expect_tree("YOUNGER 60", "(YOUNGER 60)");
	expect_tree("EMAILID M42", "(EMAILID 42)");
	expect_tree("THREADID T7", "(THREADID 7)");
	expect_tree("EMAILID Mn5", "(EMAILID -5)");
	/* Another server's ids are valid and match nothing. */
	expect_tree("EMAILID X-1_a", "(OR)");
	expect_tree("THREADID M7", "(OR)");
	expect_tree("SAVEDATESUPPORTED", "(SAVEDATESUPPORTED)");
	expect_tree("NOT SEEN", "(NOT (FLAG 1))");
	expect_tree("OR SEEN DELETED", "(OR (FLAG 1) (FLAG 8))");
	expect_tree("SEEN DELETED", "(AND (FLAG 1) (FLAG 8))");
	expect_tree("(SEEN)", "(FLAG 1)");
	/* "$" is the saved UID set. */
	expect_tree("$", "(UID 1:3,7)");
	expect_tree("UID $", "(UID 1:3,7)");
}

static void test_flags_of_prog(void **state)
{
	imap_search_prog p;

	(void)state;
	assert_int_equal(parse_with("1:2 UID 3", IMAP_SYNTAX_SEARCH, false, &p),
			 0);
	assert_true(p.uses_seq);
	assert_false(p.uses_modseq);
	assert_false(p.uses_saved);
	imap_search_prog_free(&p);
	assert_int_equal(parse_with("UID 3 MODSEQ 4", IMAP_SYNTAX_SEARCH, false,
				    &p), 0);
	assert_false(p.uses_seq);
	assert_true(p.uses_modseq);
	imap_search_prog_free(&p);
	/* No saved result: "$" matches nothing. */
	assert_int_equal(parse_with("$", IMAP_SYNTAX_SEARCH, false, &p), 0);
	assert_true(p.uses_saved);
	assert_int_equal(p.query->kind, ENG_Q_OR);
	assert_int_equal(p.query->n_children, 0);
	imap_search_prog_free(&p);
}

static void test_flattening(void **state)
{
	(void)state;
	expect_tree("NOT NOT SEEN", "(FLAG 1)");
	expect_tree("NOT NOT NOT SEEN", "(NOT (FLAG 1))");
	expect_tree("SEEN (DELETED (FLAGGED DRAFT))",
		    "(AND (FLAG 1) (FLAG 8) (FLAG 4) (FLAG 16))");
	expect_tree("OR OR SEEN DELETED FLAGGED",
		    "(OR (FLAG 1) (FLAG 8) (FLAG 4))");
	expect_tree("OR SEEN (OR DELETED (OR FLAGGED DRAFT))",
		    "(OR (FLAG 1) (FLAG 8) (FLAG 4) (FLAG 16))");
	/* Different kinds are not merged. */
	expect_tree("OR (SEEN DELETED) FLAGGED",
		    "(OR (AND (FLAG 1) (FLAG 8)) (FLAG 4))");
	expect_tree("NOT (NOT (SEEN DELETED))", "(AND (FLAG 1) (FLAG 8))");
}

/* A program exactly d levels deep that flattening cannot shorten:
 * NOT (OR x NOT (OR x ...)). */
static char *deep_program(unsigned d)
{
	char *s;

	if (d == 1)
		return strdup("SEEN");
	s = deep_program(d - 1);
	{
		size_t len = strlen(s) + 16;
		char *out = malloc(len);

		if (d % 2 == 0)
			snprintf(out, len, "NOT (%s)", s);
		else
			snprintf(out, len, "OR DELETED %s", s);
		free(s);
		return out;
	}
}

static void test_depth_bounds(void **state)
{
	imap_search_prog p;
	char *prog;
	char *nots;

	(void)state;
	prog = deep_program(16);
	assert_int_equal(parse_with(prog, IMAP_SYNTAX_SEARCH, false, &p),
			 IMAP_SEARCH_OK);
	assert_int_equal(imap_search_depth(p.query), 16);
	imap_search_prog_free(&p);
	free(prog);
	prog = deep_program(17);
	expect_status(prog, IMAP_SEARCH_TOO_COMPLEX);
	free(prog);

	/* 998 NOTs flatten away; past the raw bound: refused, no crash. */
	nots = malloc(1010 * 4 + 8);
	nots[0] = '\0';
	for (int i = 0; i < 998; i++)
		strcat(nots, "NOT ");
	strcat(nots, "SEEN");
	expect_tree(nots, "(FLAG 1)");
	nots[0] = '\0';
	for (int i = 0; i < 1010; i++)
		strcat(nots, "NOT ");
	strcat(nots, "SEEN");
	expect_status(nots, IMAP_SEARCH_TOO_COMPLEX);
	free(nots);
}

static void test_node_and_text_bounds(void **state)
{
	char *many = malloc(1001 * 5 + 1);
	imap_search_prog p;
	imap_search_in in = { IMAP_SYNTAX_SEARCH, NULL, 0 };
	imap_arg args[4];
	char *big;

	(void)state;
	many[0] = '\0';
	/* An AND of 999 keys is 1000 nodes. */
	for (int i = 0; i < 998; i++)
		strcat(many, "SEEN ");
	strcat(many, "SEEN");
	expect_status(many, IMAP_SEARCH_OK);
	strcat(many, " SEEN");
	expect_status(many, IMAP_SEARCH_TOO_COMPLEX);
	free(many);

	/* Strings over IMAP_SEARCH_MAX_TEXT bytes in all. */
	big = malloc(IMAP_SEARCH_MAX_TEXT);
	memset(big, 'a', IMAP_SEARCH_MAX_TEXT - 1);
	big[IMAP_SEARCH_MAX_TEXT - 1] = '\0';
	memset(args, 0, sizeof(args));
	args[0].kind = IMAP_ARG_ATOM;
	args[0].s = "BODY";
	args[0].len = 4;
	args[1].kind = IMAP_ARG_LITERAL;
	args[1].s = big;
	args[1].len = IMAP_SEARCH_MAX_TEXT - 1;
	args[2] = args[0];
	args[3].kind = IMAP_ARG_QUOTED;
	args[3].s = "ab";
	args[3].len = 2;
	assert_int_equal(imap_search_parse(args, 2, &in, &p), IMAP_SEARCH_OK);
	imap_search_prog_free(&p);
	assert_int_equal(imap_search_parse(args, 4, &in, &p),
			 IMAP_SEARCH_TOO_COMPLEX);
	imap_search_prog_free(&p);
	/* A literal holding a NUL is not a search string. */
	big[10] = '\0';
	assert_int_equal(imap_search_parse(args, 2, &in, &p), IMAP_SEARCH_BAD);
	imap_search_prog_free(&p);
	free(big);
}

static void test_bad_programs(void **state)
{
	(void)state;
	expect_status("", IMAP_SEARCH_BAD);
	expect_status("FOO", IMAP_SEARCH_BAD);
	expect_status("NOT", IMAP_SEARCH_BAD);
	expect_status("OR SEEN", IMAP_SEARCH_BAD);
	expect_status("()", IMAP_SEARCH_BAD);
	expect_status("\"SEEN\"", IMAP_SEARCH_BAD);
	expect_status("FROM", IMAP_SEARCH_BAD);
	expect_status("FROM (a)", IMAP_SEARCH_BAD);
	expect_status("HEADER Fr:om x", IMAP_SEARCH_BAD);
	expect_status("HEADER \"\" x", IMAP_SEARCH_BAD);
	expect_status("HEADER \"X Y\" x", IMAP_SEARCH_BAD);
	expect_status("LARGER abc", IMAP_SEARCH_BAD);
	expect_status("LARGER -1", IMAP_SEARCH_BAD);
	expect_status("LARGER 9223372036854775808", IMAP_SEARCH_BAD);
	expect_status("KEYWORD \\Seen", IMAP_SEARCH_BAD);
	expect_status("KEYWORD \"a b\"", IMAP_SEARCH_BAD);
	expect_status("UID", IMAP_SEARCH_BAD);
	expect_status("UID 0", IMAP_SEARCH_BAD);
	expect_status("UID 1:", IMAP_SEARCH_BAD);
	expect_status("0", IMAP_SEARCH_BAD);
	expect_status("1,,2", IMAP_SEARCH_BAD);
	expect_status("4294967296", IMAP_SEARCH_BAD);
	expect_status("OLDER 0", IMAP_SEARCH_BAD);
	expect_status("MODSEQ", IMAP_SEARCH_BAD);
	expect_status("MODSEQ \"/flags/x\" bogus 1", IMAP_SEARCH_BAD);
	expect_status("EMAILID \"a b\"", IMAP_SEARCH_BAD);
	expect_status("BEFORE 1-Foo-2020", IMAP_SEARCH_BAD);
	expect_status("BEFORE 31-Feb-2020", IMAP_SEARCH_BAD);
	expect_status("BEFORE 29-Feb-2021", IMAP_SEARCH_BAD);
	expect_status("BEFORE 1-Feb-20", IMAP_SEARCH_BAD);
	expect_status("BEFORE 123-Feb-2020", IMAP_SEARCH_BAD);
	expect_status("BEFORE", IMAP_SEARCH_BAD);
}

static void test_charset_and_return(void **state)
{
	imap_search_prog p;

	(void)state;
	expect_status("CHARSET UTF-8 ALL", IMAP_SEARCH_OK);
	expect_status("CHARSET us-ascii ALL", IMAP_SEARCH_OK);
	expect_status("CHARSET \"UTF-8\" ALL", IMAP_SEARCH_OK);
	expect_status("CHARSET ISO-8859-1 ALL", IMAP_SEARCH_BADCHARSET);
	expect_status("CHARSET", IMAP_SEARCH_BAD);
	expect_status("CHARSET UTF-8", IMAP_SEARCH_BAD);

	assert_int_equal(parse_with("RETURN (MIN max) CHARSET UTF-8 SEEN",
				    IMAP_SYNTAX_SEARCH, false, &p), 0);
	assert_true(p.has_return);
	assert_int_equal(p.ret, IMAP_RET_MIN | IMAP_RET_MAX);
	imap_search_prog_free(&p);
	assert_int_equal(parse_with("RETURN () SEEN", IMAP_SYNTAX_SEARCH,
				    false, &p), 0);
	assert_int_equal(p.ret, IMAP_RET_ALL);
	imap_search_prog_free(&p);
	assert_int_equal(parse_with("RETURN (SAVE COUNT ALL) SEEN",
				    IMAP_SYNTAX_SEARCH, false, &p), 0);
	assert_int_equal(p.ret, IMAP_RET_SAVE | IMAP_RET_COUNT | IMAP_RET_ALL);
	imap_search_prog_free(&p);
	/* A failed parse still tells whether SAVE was asked (SEARCHRES). */
	assert_int_equal(parse_with("RETURN (SAVE) FOO", IMAP_SYNTAX_SEARCH,
				    false, &p), IMAP_SEARCH_BAD);
	assert_true(p.has_return);
	assert_int_equal(p.ret, IMAP_RET_SAVE);
	imap_search_prog_free(&p);
	expect_status("RETURN (FOO) ALL", IMAP_SEARCH_BAD);
	expect_status("RETURN MIN ALL", IMAP_SEARCH_BAD);
	expect_status("RETURN", IMAP_SEARCH_BAD);

	/* SORT and THREAD: a mandatory charset first. */
	assert_int_equal(parse_with("UTF-8 SEEN", IMAP_SYNTAX_CHARSET_FIRST,
				    false, &p), 0);
	imap_search_prog_free(&p);
	assert_int_equal(parse_with("KOI8-R SEEN", IMAP_SYNTAX_CHARSET_FIRST,
				    false, &p), IMAP_SEARCH_BADCHARSET);
	imap_search_prog_free(&p);
	assert_int_equal(parse_with("UTF-8", IMAP_SYNTAX_CHARSET_FIRST,
				    false, &p), IMAP_SEARCH_BAD);
	imap_search_prog_free(&p);
}

static int64_t one_date(const char *args)
{
	imap_search_prog p;
	int64_t t;

	assert_int_equal(parse_with(args, IMAP_SYNTAX_SEARCH, false, &p), 0);
	t = p.query->number;
	imap_search_prog_free(&p);
	return t;
}

static void test_dates(void **state)
{
	(void)state;
	setenv("TZ", "UTC", 1);
	tzset();
	assert_int_equal(one_date("SINCE 1-Feb-1994"), 760060800);
	assert_int_equal(one_date("before \"1-feb-1994\""), 760060800);
	assert_int_equal(one_date("ON 29-Feb-2024"), 1709164800);
	assert_int_equal(one_date("SAVEDON 01-Jan-1970"), 0);
	assert_int_equal(one_date("SENTON 1-Feb-1994"), 760060800);
	/* New York in winter: local midnight is 05:00 UTC; SENT* stay UTC. */
	setenv("TZ", "America/New_York", 1);
	tzset();
	assert_int_equal(one_date("SINCE 1-Feb-1994"), 760060800 + 5 * 3600);
	assert_int_equal(one_date("SAVEDSINCE 1-Jul-2024"),
			 1719792000 + 4 * 3600);
	assert_int_equal(one_date("SENTSINCE 1-Feb-1994"), 760060800);
	assert_int_equal(one_date("SENTBEFORE 1-Jan-1900"), -2208988800LL);
	setenv("TZ", "UTC", 1);
	tzset();
}

static void test_sort_and_thread_args(void **state)
{
	uint32_t keys[IMAP_SORT_MAX_KEYS], alg;
	const imap_arg *a;
	size_t n, nk;

	(void)state;
	a = read_args("(REVERSE DATE subject DISPLAYFROM DISPLAYTO ARRIVAL "
		      "CC FROM SIZE TO)", &n);
	assert_int_equal(imap_sort_parse_criteria(&a[0], keys, &nk), 0);
	assert_int_equal(nk, 9);
	assert_int_equal(keys[0], 2 | 0x100);
	assert_int_equal(keys[1], 5);
	assert_int_equal(keys[2], 7);
	assert_int_equal(keys[3], 8);
	assert_int_equal(keys[4], 0);
	assert_int_equal(keys[5], 1);
	assert_int_equal(keys[6], 3);
	assert_int_equal(keys[7], 4);
	assert_int_equal(keys[8], 6);
	a = read_args("(REVERSE)", &n);
	assert_int_equal(imap_sort_parse_criteria(&a[0], keys, &nk),
			 IMAP_SEARCH_BAD);
	a = read_args("(REVERSE REVERSE DATE)", &n);
	assert_int_equal(imap_sort_parse_criteria(&a[0], keys, &nk),
			 IMAP_SEARCH_BAD);
	a = read_args("()", &n);
	assert_int_equal(imap_sort_parse_criteria(&a[0], keys, &nk),
			 IMAP_SEARCH_BAD);
	a = read_args("(DATE FOO)", &n);
	assert_int_equal(imap_sort_parse_criteria(&a[0], keys, &nk),
			 IMAP_SEARCH_BAD);
	a = read_args("DATE", &n);
	assert_int_equal(imap_sort_parse_criteria(&a[0], keys, &nk),
			 IMAP_SEARCH_BAD);
	a = read_args("(DATE DATE DATE DATE DATE DATE DATE DATE DATE DATE "
		      "DATE DATE DATE DATE DATE DATE DATE)", &n);
	assert_int_equal(imap_sort_parse_criteria(&a[0], keys, &nk),
			 IMAP_SEARCH_BAD);

	a = read_args("references orderedsubject FOO", &n);
	assert_int_equal(imap_thread_parse_algorithm(&a[0], &alg), 0);
	assert_int_equal(alg, 1);
	assert_int_equal(imap_thread_parse_algorithm(&a[1], &alg), 0);
	assert_int_equal(alg, 0);
	assert_int_equal(imap_thread_parse_algorithm(&a[2], &alg),
			 IMAP_SEARCH_BAD);
}

static void expect_numset(const uint32_t *nums, size_t n, const char *want)
{
	eng_buf b = ENG_BUF_INIT;

	imap_put_numset(&b, nums, n);
	eng_buf_putc(&b, '\0');
	assert_string_equal(b.data, want);
	eng_buf_free(&b);
}

static void test_numset(void **state)
{
	static const uint32_t a[] = { 1, 2, 3, 7, 5, 6, 9 };
	static const uint32_t b[] = { 4294967294u, 4294967295u };

	(void)state;
	expect_numset(a, 7, "1:3,7,5:6,9");
	expect_numset(a, 1, "1");
	expect_numset(b, 2, "4294967294:4294967295");
	expect_numset(a + 3, 2, "7,5");
}

/* Renders a preorder list given as "uid/children ..." pairs. */
static void expect_thread(const uint32_t *pairs, size_t n,
			  const uint32_t *view, size_t n_view, bool uid,
			  const char *want)
{
	imap_tnode *nodes = malloc(n * sizeof(*nodes));
	eng_buf b = ENG_BUF_INIT;

	for (size_t i = 0; i < n; i++) {
		nodes[i].uid = pairs[2 * i];
		nodes[i].n_children = pairs[2 * i + 1];
	}
	imap_thread_render(nodes, n, view, n_view, uid, &b);
	eng_buf_putc(&b, '\0');
	if (strcmp(b.data, want) != 0) {
		fprintf(stderr, "got %s\nwant %s\n", b.data, want);
		fail();
	}
	eng_buf_free(&b);
	free(nodes);
}

static void test_thread_render(void **state)
{
	/* RFC 5256 section 4: (2)(3 6 (4 23)(44 7 96)). */
	static const uint32_t rfc[] = {
		0, 2,  2, 0,  3, 1,  6, 2,  4, 1,  23, 0,  44, 1,  7, 1,
		96, 0,
	};
	static const uint32_t all[] = { 2, 3, 4, 6, 7, 23, 44, 96 };
	/* A dummy parent of two threads, a dummy in a chain, and a
	 * dummy with one child (which stands in its place). */
	static const uint32_t dummies[] = {
		0, 3,  0, 2,  1, 0,  2, 0,  3, 1,  0, 1,  4, 0,  0, 1,  5, 0,
	};
	static const uint32_t five[] = { 1, 2, 3, 4, 5 };
	static const uint32_t sparse[] = { 10, 20, 30 };
	static const uint32_t sparse_tree[] = {
		0, 2,  10, 2,  20, 0,  99, 1,  30, 0,  98, 0,
	};
	static const uint32_t empty_root[] = { 0, 0 };
	uint32_t *view;
	imap_tnode *nodes;
	eng_buf b = ENG_BUF_INIT;
	size_t n = 200000;

	(void)state;
	expect_thread(rfc, 9, all, 8, true, "(2)(3 6 (4 23)(44 7 96))");
	expect_thread(rfc, 9, all, 8, false, "(1)(2 4 (3 6)(7 5 8))");
	expect_thread(dummies, 9, five, 5, true, "((1)(2))(3 4)(5)");
	/* UIDs outside the view are dummies: 99's child takes its place. */
	expect_thread(sparse_tree, 6, sparse, 3, true, "(10 (20)(30))");
	expect_thread(sparse_tree, 6, sparse, 3, false, "(1 (2)(3))");
	expect_thread(empty_root, 1, sparse, 3, false, "");
	expect_thread(sparse_tree, 6, NULL, 0, true, "");

	/* A reply chain as long as a big mailbox: iterative, linear. */
	nodes = malloc((n + 1) * sizeof(*nodes));
	view = malloc(n * sizeof(*view));
	nodes[0].uid = 0;
	nodes[0].n_children = 1;
	for (size_t i = 1; i <= n; i++) {
		nodes[i].uid = (uint32_t)i;
		nodes[i].n_children = i < n ? 1 : 0;
		view[i - 1] = (uint32_t)i;
	}
	imap_thread_render(nodes, n + 1, view, n, false, &b);
	assert_true(b.len > 2 * n);
	assert_int_equal(b.data[0], '(');
	assert_int_equal(b.data[b.len - 1], ')');
	assert_memory_equal(b.data, "(1 2 3 ", 7);
	eng_buf_free(&b);
	free(nodes);
	free(view);
}

static void test_view_find(void **state)
{
	static const uint32_t v[] = { 2, 4, 8, 16 };

	(void)state;
	assert_int_equal(imap_view_find(v, 4, 2), 0);
	assert_int_equal(imap_view_find(v, 4, 16), 3);
	assert_int_equal(imap_view_find(v, 4, 5), SIZE_MAX);
	assert_int_equal(imap_view_find(v, 0, 2), SIZE_MAX);
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
		cmocka_unit_test(test_every_key),
		cmocka_unit_test(test_flags_of_prog),
		cmocka_unit_test(test_flattening),
		cmocka_unit_test(test_depth_bounds),
		cmocka_unit_test(test_node_and_text_bounds),
		cmocka_unit_test(test_bad_programs),
		cmocka_unit_test(test_charset_and_return),
		cmocka_unit_test(test_dates),
		cmocka_unit_test(test_sort_and_thread_args),
		cmocka_unit_test(test_numset),
		cmocka_unit_test(test_thread_render),
		cmocka_unit_test(test_view_find),
	};

	return cmocka_run_group_tests(tests, NULL, teardown);
}
