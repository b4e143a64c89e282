/*
 * The IMAP helpers of frontends/imap/imap_util.c: sequence sets over a fake
 * selected mailbox (sequence numbers, UIDs, "*", "$", ranges written
 * backwards, errors), mailbox names (modified UTF-7 and UTF-8, INBOX
 * folding, every refused form), strings (quoted or literal), flags and
 * keywords, dates both ways, and SELECT's flag runs (the first message
 * without \Seen, malformed runs refused).
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
#include "imap.h"
#include "rpc_proto.h"

/* ---- Fixtures ---- */

static imap_arg atom(const char *s)
{
	imap_arg a;

	memset(&a, 0, sizeof(a));
	a.kind = IMAP_ARG_ATOM;
	a.s = s;
	a.len = strlen(s);
	return a;
}

static imap_arg quoted(const char *s)
{
	imap_arg a = atom(s);

	a.kind = IMAP_ARG_QUOTED;
	return a;
}

/* A mailbox of UIDs 3 5 6 7 10 20 (sequence numbers 1..6). */
static uint32_t view_uids[] = { 3, 5, 6, 7, 10, 20 };

static void fake_session(imap_session *s, imap_selected *sel)
{
	memset(s, 0, sizeof(*s));
	memset(sel, 0, sizeof(*sel));
	sel->uids = view_uids;
	sel->n = sizeof(view_uids) / sizeof(view_uids[0]);
	sel->uidnext = 21;
	s->sel = sel;
	s->state = IMAP_S_SELECTED;
}

/* The set as text "lo:hi,..." for comparisons. */
static char *set_text(const eng_uidset *set)
{
	static char buf[512];
	size_t n = 0;

	buf[0] = '\0';
	for (size_t i = 0; i < set->count; i++) {
		n += (size_t)snprintf(buf + n, sizeof(buf) - n, "%s%u:%u",
				      i > 0 ? "," : "", set->ranges[i].lo,
				      set->ranges[i].hi);
	}
	return buf;
}

static void expect_set(imap_session *s, const char *in, bool uid,
		       const char *want)
{
	imap_arg a = atom(in);
	eng_uidset set;

	assert_int_equal(imap_seqset_to_uids(s, &a, uid, &set), 0);
	assert_string_equal(set_text(&set), want);
	eng_uidset_free(&set);
}

static void expect_set_bad(imap_session *s, const char *in, bool uid)
{
	imap_arg a = atom(in);
	eng_uidset set;

	assert_int_equal(imap_seqset_to_uids(s, &a, uid, &set), ENG_EINVAL);
	assert_int_equal(set.count, 0);
}

/* ---- Sequence sets ---- */

static void test_seqset_sequence_numbers(void **state)
{
	imap_session s;
	imap_selected sel;

	(void)state;
	fake_session(&s, &sel);
	expect_set(&s, "1", false, "3:3");
	expect_set(&s, "2:4", false, "5:7");
	expect_set(&s, "4:2", false, "5:7");
	expect_set(&s, "*", false, "20:20");
	expect_set(&s, "1:*", false, "3:20");
	expect_set(&s, "*:5", false, "10:20");
	/* Past the end: dropped; partly past: clipped. */
	expect_set(&s, "7", false, "");
	expect_set(&s, "5:100", false, "10:20");
	/* Sorted and merged. */
	expect_set(&s, "6,1,2", false, "3:3,5:5,20:20");
	expect_set(&s, "1:3,2:4", false, "3:7");
	expect_set_bad(&s, "0", false);
	expect_set_bad(&s, "1:0", false);
	expect_set_bad(&s, "", false);
	expect_set_bad(&s, "1,", false);
	expect_set_bad(&s, ",1", false);
	expect_set_bad(&s, "1::2", false);
	expect_set_bad(&s, "01", false);
	expect_set_bad(&s, "4294967296", false);
	expect_set_bad(&s, "1 2", false);
	expect_set_bad(&s, "$,1", false);
	expect_set_bad(&s, "**", false);
}

static void test_seqset_uids(void **state)
{
	imap_session s;
	imap_selected sel;
	imap_arg list;
	eng_uidset set;

	(void)state;
	fake_session(&s, &sel);
	expect_set(&s, "5", true, "5:5");
	expect_set(&s, "4:8", true, "4:8");
	expect_set(&s, "*", true, "20:20");
	/* RFC 3501 6.4.8: "559:*" includes the last UID even past it. */
	expect_set(&s, "559:*", true, "20:559");
	expect_set(&s, "4294967295", true, "4294967295:4294967295");
	expect_set(&s, "30,1:2", true, "1:2,30:30");
	expect_set_bad(&s, "0:5", true);
	/* An empty view: "*" is UINT32_MAX. */
	sel.n = 0;
	expect_set(&s, "*", true, "4294967295:4294967295");
	expect_set(&s, "*", false, "");
	expect_set(&s, "1:*", false, "");
	/* Not an atom. */
	memset(&list, 0, sizeof(list));
	list.kind = IMAP_ARG_LIST;
	assert_int_equal(imap_seqset_to_uids(&s, &list, true, &set),
			 ENG_EINVAL);
	list = quoted("1:2");
	assert_int_equal(imap_seqset_to_uids(&s, &list, true, &set),
			 ENG_EINVAL);
}

static void test_seqset_saved(void **state)
{
	imap_session s;
	imap_selected sel;
	uint32_t saved[] = { 5, 6, 8, 20 };

	(void)state;
	fake_session(&s, &sel);
	/* No saved result: "$" is the empty set, not an error. */
	expect_set(&s, "$", true, "");
	expect_set(&s, "$", false, "");
	sel.saved = saved;
	sel.n_saved = 4;
	sel.has_saved = true;
	expect_set(&s, "$", true, "5:6,8:8,20:20");
	/* By sequence number only what is still in the view (8 is not). */
	expect_set(&s, "$", false, "5:6,20:20");
	/* Unselected: nothing. */
	s.sel = NULL;
	expect_set(&s, "$", false, "");
	expect_set(&s, "1:*", false, "");
}

static void test_seq_of_uid(void **state)
{
	imap_session s;
	imap_selected sel;

	(void)state;
	fake_session(&s, &sel);
	for (size_t i = 0; i < sel.n; i++)
		assert_int_equal(imap_seq_of_uid(&sel, view_uids[i]), i + 1);
	assert_int_equal(imap_seq_of_uid(&sel, 1), 0);
	assert_int_equal(imap_seq_of_uid(&sel, 4), 0);
	assert_int_equal(imap_seq_of_uid(&sel, 21), 0);
	assert_int_equal(imap_seq_of_uid(NULL, 3), 0);
	sel.n = 0;
	assert_int_equal(imap_seq_of_uid(&sel, 3), 0);
}

/* ---- Arguments ---- */

static void test_args(void **state)
{
	imap_arg a = atom("12345"), lit, nil;
	uint64_t n = 0;
	static const char with_nul[] = { 'a', '\0', 'b', '\0' };

	(void)state;
	assert_true(imap_arg_number(&a, UINT32_MAX, &n));
	assert_int_equal(n, 12345);
	assert_false(imap_arg_number(&a, 12344, &n));
	assert_true(imap_arg_number(&a, 12345, &n));
	a = atom("18446744073709551615");
	assert_true(imap_arg_number(&a, UINT64_MAX, &n));
	assert_true(n == UINT64_MAX);
	a = atom("18446744073709551616");
	assert_false(imap_arg_number(&a, UINT64_MAX, &n));
	a = atom("-1");
	assert_false(imap_arg_number(&a, UINT64_MAX, &n));
	a = atom("1a");
	assert_false(imap_arg_number(&a, UINT64_MAX, &n));
	a = quoted("5");
	assert_false(imap_arg_number(&a, UINT64_MAX, &n));
	assert_string_equal(imap_arg_astring(&a), "5");
	assert_null(imap_arg_atom(&a));
	a = atom("x");
	assert_string_equal(imap_arg_atom(&a), "x");
	lit = atom("");
	lit.kind = IMAP_ARG_LITERAL;
	lit.s = with_nul;
	lit.len = 3;
	assert_null(imap_arg_astring(&lit));
	lit.len = 1;
	assert_string_equal(imap_arg_astring(&lit), "a");
	nil = atom("NIL");
	nil.kind = IMAP_ARG_NIL;
	assert_null(imap_arg_astring(&nil));
	assert_null(imap_arg_astring(NULL));
}

/* ---- Mailbox names ---- */

static void expect_name(imap_session *s, imap_arg a, const char *want)
{
	char *name = NULL;

	assert_int_equal(imap_mailbox_from_client(s, &a, &name), 0);
	assert_string_equal(name, want);
	free(name);
}

static void expect_name_bad(imap_session *s, imap_arg a)
{
	char *name = (char *)"x";

	assert_int_equal(imap_mailbox_from_client(s, &a, &name),
			 ENG_EMALFORMED);
	assert_null(name);
}

static void test_mailbox_names(void **state)
{
	imap_session s;
	imap_selected sel;
	char big[1100];

	(void)state;
	fake_session(&s, &sel);
	expect_name(&s, atom("Sent"), "Sent");
	expect_name(&s, atom("inbox"), "INBOX");
	expect_name(&s, quoted("iNbOx/sub"), "INBOX/sub");
	expect_name(&s, atom("inboxes"), "inboxes");
	expect_name(&s, atom("a/inbox"), "a/inbox");
	expect_name(&s, atom("foo/"), "foo");
	expect_name(&s, quoted("with space"), "with space");
	expect_name(&s, atom("&-"), "&");
	/* RFC 3501 5.1.3's example. */
	expect_name(&s, atom("~peter/mail/&U,BTFw-/&ZeVnLIqe-"),
		    "~peter/mail/\xe5\x8f\xb0\xe5\x8c\x97/\xe6\x97\xa5\xe6"
		    "\x9c\xac\xe8\xaa\x9e");
	expect_name(&s, atom("Entw&APw-rfe"), "Entw\xc3\xbc" "rfe");
	/* A mailbox named NIL. */
	{
		imap_arg nil = atom("NIL");

		nil.kind = IMAP_ARG_NIL;
		expect_name(&s, nil, "NIL");
	}
	/* Refused forms. */
	expect_name_bad(&s, atom(""));
	expect_name_bad(&s, atom("/"));
	expect_name_bad(&s, atom("/a"));
	expect_name_bad(&s, atom("a//b"));
	expect_name_bad(&s, atom("a//"));
	expect_name_bad(&s, atom("a*"));
	expect_name_bad(&s, atom("a%b"));
	expect_name_bad(&s, quoted("a\rb"));
	expect_name_bad(&s, quoted("a\nb"));
	expect_name_bad(&s, quoted("a\tb"));
	expect_name_bad(&s, quoted("Entw\xc3\xbc" "rfe"));  /* 8-bit, no UTF8 */
	expect_name_bad(&s, atom("&"));
	expect_name_bad(&s, atom("&AGE-"));      /* encoded printable "a" */
	expect_name_bad(&s, atom("&APw"));       /* unterminated */
	{
		imap_arg list = atom("");

		list.kind = IMAP_ARG_LIST;
		expect_name_bad(&s, list);
	}
	memset(big, 'a', 1025);
	big[1025] = '\0';
	expect_name_bad(&s, quoted(big));
	big[1024] = '\0';
	{
		char *name = NULL;
		imap_arg a = quoted(big);

		assert_int_equal(imap_mailbox_from_client(&s, &a, &name), 0);
		assert_int_equal(strlen(name), 1024);
		free(name);
	}
	/* UTF8=ACCEPT: UTF-8 as is, modified UTF-7 still understood. */
	s.enabled |= IMAP_EN_UTF8;
	expect_name(&s, quoted("Entw\xc3\xbc" "rfe"), "Entw\xc3\xbc" "rfe");
	expect_name(&s, atom("Entw&APw-rfe"), "Entw\xc3\xbc" "rfe");
	expect_name(&s, atom("a&b"), "a&b");
	expect_name(&s, quoted("\xc3\xa9&APw-"), "\xc3\xa9&APw-");
	expect_name_bad(&s, quoted("bad\xc3"));
	expect_name_bad(&s, quoted("\xc0\xaf"));
	expect_name_bad(&s, quoted("a/\xc3\xbc/"  "/b"));
}

static void expect_put_mailbox(imap_session *s, const char *name,
			       const char *want)
{
	eng_buf b = ENG_BUF_INIT;

	imap_put_mailbox(s, &b, name);
	assert_string_equal(b.data, want);
	eng_buf_free(&b);
}

static void test_put_mailbox(void **state)
{
	imap_session s;
	imap_selected sel;

	(void)state;
	fake_session(&s, &sel);
	expect_put_mailbox(&s, "INBOX", "\"INBOX\"");
	expect_put_mailbox(&s, "a&b", "\"a&-b\"");
	expect_put_mailbox(&s, "Entw\xc3\xbc" "rfe", "\"Entw&APw-rfe\"");
	expect_put_mailbox(&s, "q\"b\\", "\"q\\\"b\\\\\"");
	s.enabled |= IMAP_EN_UTF8;
	expect_put_mailbox(&s, "Entw\xc3\xbc" "rfe", "\"Entw\xc3\xbc" "rfe\"");
	expect_put_mailbox(&s, "a&b", "\"a&b\"");
}

/* ---- Strings ---- */

static void check_string(const char *in, size_t len, const char *want)
{
	eng_buf b = ENG_BUF_INIT;

	imap_put_string(&b, in, len);
	assert_int_equal(b.len, strlen(want));
	assert_memory_equal(b.data, want, b.len);
	eng_buf_free(&b);
}

static void test_strings(void **state)
{
	eng_buf b = ENG_BUF_INIT;
	char big[2000];

	(void)state;
	check_string("abc", 3, "\"abc\"");
	check_string("", 0, "\"\"");
	check_string("a\"b\\c", 5, "\"a\\\"b\\\\c\"");
	check_string("a\r\nb", 4, "{4}\r\na\r\nb");
	check_string("\xc3\xbc", 2, "{2}\r\n\xc3\xbc");
	check_string(NULL, 0, "NIL");
	memset(big, 'x', sizeof(big));
	imap_put_string(&b, big, sizeof(big));
	assert_memory_equal(b.data, "{2000}\r\n", 8);
	assert_int_equal(b.len, 8 + sizeof(big));
	eng_buf_free(&b);
	imap_put_nstring(&b, NULL);
	assert_string_equal(b.data, "NIL");
	eng_buf_reset(&b);
	imap_put_nstring(&b, "hi");
	assert_string_equal(b.data, "\"hi\"");
	eng_buf_free(&b);
}

/* ---- Flags ---- */

static void test_put_flags(void **state)
{
	eng_buf b = ENG_BUF_INIT;
	const char *kw[] = { "$Junk", "work" };

	(void)state;
	imap_put_flags(&b, 0, NULL, 0);
	assert_string_equal(b.data, "()");
	eng_buf_reset(&b);
	imap_put_flags(&b, ENG_F_ALL, NULL, 0);
	assert_string_equal(b.data,
			    "(\\Seen \\Answered \\Flagged \\Deleted \\Draft)");
	eng_buf_reset(&b);
	imap_put_flags(&b, ENG_F_FLAGGED, kw, 2);
	assert_string_equal(b.data, "(\\Flagged $Junk work)");
	eng_buf_reset(&b);
	imap_put_flags(&b, 0, kw, 1);
	assert_string_equal(b.data, "($Junk)");
	eng_buf_free(&b);
}

static imap_arg list_of(imap_arg *items, size_t n)
{
	imap_arg a;

	memset(&a, 0, sizeof(a));
	a.kind = IMAP_ARG_LIST;
	a.list = items;
	a.n_list = n;
	return a;
}

static int parse_one(const char *flag, uint32_t *flags_r)
{
	imap_arg a = atom(flag);
	const char **kw;
	size_t n;
	int err = imap_parse_flags(&a, flags_r, &kw, &n);

	free(kw);
	return err;
}

static void test_parse_flags(void **state)
{
	imap_arg items[70];
	imap_arg l;
	uint32_t flags;
	const char **kw = NULL;
	size_t n = 9;
	char names[70][8];

	(void)state;
	items[0] = atom("\\seen");
	items[1] = atom("\\DRAFT");
	items[2] = atom("$Junk");
	items[3] = atom("$junk");
	items[4] = atom("\\Flagged");
	l = list_of(items, 5);
	assert_int_equal(imap_parse_flags(&l, &flags, &kw, &n), 0);
	assert_int_equal(flags, ENG_F_SEEN | ENG_F_DRAFT | ENG_F_FLAGGED);
	assert_int_equal(n, 1);
	assert_string_equal(kw[0], "$Junk");
	free(kw);
	/* The empty list. */
	l = list_of(items, 0);
	flags = 7;
	assert_int_equal(imap_parse_flags(&l, &flags, &kw, &n), 0);
	assert_int_equal(flags, 0);
	assert_int_equal(n, 0);
	assert_null(kw);
	/* One flag, not in a list. */
	assert_int_equal(parse_one("\\Answered", &flags), 0);
	assert_int_equal(flags, ENG_F_ANSWERED);
	assert_int_equal(parse_one("\\Deleted", &flags), 0);
	assert_int_equal(flags, ENG_F_DELETED);
	/* Refused. */
	assert_int_equal(parse_one("\\Recent", &flags), ENG_EINVAL);
	assert_int_equal(parse_one("\\Foo", &flags), ENG_EINVAL);
	assert_int_equal(parse_one("\\*", &flags), ENG_EINVAL);
	assert_int_equal(parse_one("a]b", &flags), ENG_EINVAL);
	assert_int_equal(parse_one("a*", &flags), ENG_EINVAL);
	assert_int_equal(parse_one("caf\xc3\xa9", &flags), ENG_EINVAL);
	items[0] = quoted("$Junk");
	l = list_of(items, 1);
	assert_int_equal(imap_parse_flags(&l, &flags, &kw, &n), ENG_EINVAL);
	assert_null(kw);
	items[0] = list_of(items + 1, 0);
	assert_int_equal(imap_parse_flags(&l, &flags, &kw, &n), ENG_EINVAL);
	/* 255 bytes is the longest keyword. */
	{
		char kw255[257];

		memset(kw255, 'k', 256);
		kw255[256] = '\0';
		assert_int_equal(parse_one(kw255, &flags), ENG_EINVAL);
		kw255[255] = '\0';
		assert_int_equal(parse_one(kw255, &flags), 0);
	}
	/* 64 keywords at most. */
	for (size_t i = 0; i < 70; i++) {
		snprintf(names[i], sizeof(names[i]), "k%zu", i);
		items[i] = atom(names[i]);
	}
	l = list_of(items, 64);
	assert_int_equal(imap_parse_flags(&l, &flags, &kw, &n), 0);
	assert_int_equal(n, 64);
	free(kw);
	l = list_of(items, 65);
	assert_int_equal(imap_parse_flags(&l, &flags, &kw, &n), ENG_ELIMIT);
	assert_null(kw);
}

/* ---- Dates ---- */

static void test_dates(void **state)
{
	int64_t t = 0;
	eng_buf b = ENG_BUF_INIT;

	(void)state;
	/* RFC 3501's example. 1996-07-17 09:44:25 UTC. */
	assert_int_equal(imap_parse_datetime("17-Jul-1996 02:44:25 -0700", &t),
			 0);
	assert_int_equal(t, 837596665);
	assert_int_equal(imap_parse_datetime("17-jul-1996 11:44:25 +0200", &t),
			 0);
	assert_int_equal(t, 837596665);
	assert_int_equal(imap_parse_datetime(" 1-Feb-1994 00:00:00 +0000", &t),
			 0);
	assert_int_equal(t, 760060800);
	assert_int_equal(imap_parse_datetime("01-Feb-1994 00:00:00 +0000", &t),
			 0);
	assert_int_equal(t, 760060800);
	assert_int_equal(imap_parse_datetime("1-Feb-1994 00:00:00 +0000", &t),
			 0);
	assert_int_equal(t, 760060800);
	assert_int_equal(imap_parse_datetime("29-Feb-2000 23:59:60 +0000", &t),
			 0);
	assert_int_equal(t, 951868800);
	assert_int_equal(imap_parse_datetime("01-Jan-1970 00:00:00 +0100", &t),
			 0);
	assert_int_equal(t, -3600);
	static const char *const bad[] = {
		"", "17-Jul-1996", "17-Jul-1996 02:44:25", "17-Jul-96 02:44:25 -0700",
		"32-Jan-1996 02:44:25 -0700", "29-Feb-1900 00:00:00 +0000",
		"17-Jux-1996 02:44:25 -0700", "17-Jul-1996 24:00:00 -0700",
		"17-Jul-1996 02:60:25 -0700", "17-Jul-1996 02:44:25 0700",
		"17-Jul-1996 02:44:25 -07000", "17-Jul-1996  02:44:25 -0700",
		"17-Jul-1996 2:44:25 -0700", "0-Jul-1996 02:44:25 -0700",
		"17-Jul-1996 02:44:25 -0760", "\"17-Jul-1996 02:44:25 -0700\"",
		"117-Jul-1996 02:44:25 -0700",
	};
	for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++)
		assert_int_equal(imap_parse_datetime(bad[i], &t), ENG_EINVAL);
	assert_int_equal(imap_parse_datetime(NULL, &t), ENG_EINVAL);

	assert_int_equal(imap_parse_date("1-Feb-1994", &t), 0);
	assert_int_equal(t, 760060800);
	assert_int_equal(imap_parse_date("01-feb-1994", &t), 0);
	assert_int_equal(t, 760060800);
	assert_int_equal(imap_parse_date("29-Feb-2024", &t), 0);
	assert_int_equal(t, 1709164800);
	assert_int_equal(imap_parse_date("29-Feb-2023", &t), ENG_EINVAL);
	assert_int_equal(imap_parse_date("1-Feb-1994 ", &t), ENG_EINVAL);
	assert_int_equal(imap_parse_date("1-Feb-94", &t), ENG_EINVAL);
	assert_int_equal(imap_parse_date("Feb-1994", &t), ENG_EINVAL);

	imap_put_datetime(&b, 837596665);
	assert_string_equal(b.data, "\"17-Jul-1996 09:44:25 +0000\"");
	eng_buf_reset(&b);
	imap_put_datetime(&b, 760060800 + 3661);
	assert_string_equal(b.data, "\" 1-Feb-1994 01:01:01 +0000\"");
	eng_buf_reset(&b);
	imap_put_datetime(&b, -1);
	assert_string_equal(b.data, "\"31-Dec-1969 23:59:59 +0000\"");
	eng_buf_free(&b);
	/* Round trips over a span of days and times. */
	for (int64_t x = -86400LL * 800; x < 86400LL * 365 * 80;
	     x += 86400 * 13 + 3607) {
		char tmp[64];

		imap_put_datetime(&b, x);
		assert_int_equal(b.len, 28);
		memcpy(tmp, b.data + 1, b.len - 2);
		tmp[b.len - 2] = '\0';
		assert_int_equal(imap_parse_datetime(tmp, &t), 0);
		assert_true(t == x);
		eng_buf_reset(&b);
	}
	eng_buf_free(&b);
}

/* ---- SELECT's flag runs ---- */

/* A MAILBOX_VIEW answer whose FLAG_RUNS are runs[] ((count, flags) pairs),
 * the first split of them in one field and the rest in a second (none if
 * split == n_runs); then imap_flag_runs_first_unseen over n messages. */
static int runs_check(const uint32_t (*runs)[2], size_t n_runs, size_t split,
		      size_t n, size_t *first_unseen_r)
{
	eng_buf b = ENG_BUF_INIT, field = ENG_BUF_INIT;
	rpc_msg msg = RPC_MSG_INIT;
	rpc_view root;
	int err;

	rpc_put_u64(&b, RPC_T_MESSAGES, n);
	for (size_t i = 0; i < n_runs; i++) {
		for (int k = 0; k < 2; k++) {
			uint8_t be[4] = { runs[i][k] >> 24, runs[i][k] >> 16,
					  runs[i][k] >> 8, runs[i][k] };

			eng_buf_append(&field, be, 4);
		}
		if (i + 1 == split || i + 1 == n_runs) {
			rpc_put_bytes(&b, RPC_T_FLAG_RUNS, field.data, field.len);
			eng_buf_reset(&field);
		}
	}
	assert_int_equal(rpc_decode((const uint8_t *)b.data, b.len, NULL, &msg,
				    &root), 0);
	err = imap_flag_runs_first_unseen(&root, n, first_unseen_r);
	rpc_msg_clear(&msg);
	eng_buf_free(&field);
	eng_buf_free(&b);
	return err;
}

#define RUNS(r) (r), sizeof(r) / sizeof((r)[0])

static void test_flag_runs_first_unseen(void **state)
{
	const uint32_t seen = ENG_F_SEEN;
	const uint32_t at_start[][2] = { { 3, 0 }, { 2, seen } };
	const uint32_t in_middle[][2] = { { 2, seen }, { 1, seen | ENG_F_FLAGGED },
		{ 4, ENG_F_ANSWERED }, { 1, 0 } };
	const uint32_t at_end[][2] = { { 99999, seen }, { 1, ENG_F_DELETED } };
	const uint32_t none[][2] = { { 5, seen }, { 5, seen | ENG_F_DRAFT } };
	const uint32_t zero_run[][2] = { { 0, 0 }, { 5, seen } };
	const uint32_t huge_run[][2] = { { 2, seen }, { UINT32_MAX, 0 } };
	size_t fu = 0;
	(void)state;

	assert_int_equal(runs_check(RUNS(at_start), 2, 5, &fu), 0);
	assert_int_equal(fu, 1);
	for (size_t split = 1; split <= 4; split++) {
		fu = 77;
		assert_int_equal(runs_check(RUNS(in_middle), split, 8, &fu), 0);
		assert_int_equal(fu, 4);
	}
	assert_int_equal(runs_check(RUNS(at_end), 1, 100000, &fu), 0);
	assert_int_equal(fu, 100000);
	assert_int_equal(runs_check(RUNS(none), 2, 10, &fu), 0);
	assert_int_equal(fu, 0);
	fu = 77;
	assert_int_equal(runs_check(NULL, 0, 0, 0, &fu), 0);
	assert_int_equal(fu, 0);

	/* Runs over or under n, an empty run, a count past what is left:
	 * refused, *first_unseen_r untouched. */
	fu = 77;
	assert_int_equal(runs_check(RUNS(none), 2, 9, &fu), ENG_EIO);
	assert_int_equal(runs_check(RUNS(none), 2, 11, &fu), ENG_EIO);
	assert_int_equal(runs_check(at_start, 1, 1, 5, &fu), ENG_EIO);
	assert_int_equal(runs_check(NULL, 0, 0, 1, &fu), ENG_EIO);
	assert_int_equal(runs_check(RUNS(zero_run), 2, 5, &fu), ENG_EIO);
	assert_int_equal(runs_check(RUNS(huge_run), 2, 5, &fu), ENG_EIO);
	assert_int_equal(fu, 77);
}

/* A FLAG_RUNS field that is not whole (count, flags) pairs, or not bytes. */
static void test_flag_runs_malformed(void **state)
{
	static const uint8_t twelve[12] = { 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 1 };
	eng_buf b = ENG_BUF_INIT;
	rpc_msg msg = RPC_MSG_INIT;
	rpc_view root;
	size_t fu = 77;
	(void)state;

	rpc_put_bytes(&b, RPC_T_FLAG_RUNS, twelve, sizeof(twelve));
	assert_int_equal(rpc_decode((const uint8_t *)b.data, b.len, NULL, &msg,
				    &root), 0);
	assert_int_equal(imap_flag_runs_first_unseen(&root, 1, &fu), ENG_EIO);
	eng_buf_reset(&b);
	rpc_put_u64(&b, RPC_T_FLAG_RUNS, 1);
	assert_int_equal(rpc_decode((const uint8_t *)b.data, b.len, NULL, &msg,
				    &root), 0);
	assert_int_equal(imap_flag_runs_first_unseen(&root, 1, &fu), ENG_EIO);
	assert_int_equal(fu, 77);
	rpc_msg_clear(&msg);
	eng_buf_free(&b);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_seqset_sequence_numbers),
		cmocka_unit_test(test_seqset_uids),
		cmocka_unit_test(test_seqset_saved),
		cmocka_unit_test(test_seq_of_uid),
		cmocka_unit_test(test_args),
		cmocka_unit_test(test_mailbox_names),
		cmocka_unit_test(test_put_mailbox),
		cmocka_unit_test(test_strings),
		cmocka_unit_test(test_put_flags),
		cmocka_unit_test(test_parse_flags),
		cmocka_unit_test(test_dates),
		cmocka_unit_test(test_flag_runs_first_unseen),
		cmocka_unit_test(test_flag_runs_malformed),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
