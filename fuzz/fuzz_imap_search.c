/*
 * Fuzz target for the IMAP SEARCH program parser and the small parsers of
 * imap_util.c (frontends/imap/imap_search_parse.h, imap.h helpers that
 * live in sm_imap).
 *
 * Input: byte 0 picks what is fuzzed, the rest is the subject.
 *  0  "t SEARCH " + subject through the real IMAP parser, then
 *     imap_search_parse: a failure has a sentence; a success has a query
 *     within IMAP_SEARCH_MAX_DEPTH levels and IMAP_SEARCH_MAX_NODES nodes;
 *     RETURN bits are known ones.
 *  1  "t SORT " + subject: the first argument through
 *     imap_sort_parse_criteria (at most IMAP_SORT_MAX_KEYS keys, each a
 *     known field, optionally reversed), the rest as a charset-first
 *     program.
 *  2  the subject as an IMAP date-time and as a date: a date-time that
 *     parses is written back by imap_put_datetime, and that text parses to
 *     the same instant.
 *  3  the subject as 32-bit numbers through imap_put_numset: only digits,
 *     ':' and ',', and reading the text back gives the numbers in order.
 */
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "buf.h"
#include "eng_error.h"
#include "imap_parser.h"
#include "imap_search_parse.h"
#include "rpc_proto.h"

/* imap_util.c's date helpers (declared in imap.h, which pulls in the
 * daemon's headers; the prototypes are repeated here). */
int imap_parse_datetime(const char *s, int64_t *t_r);
int imap_parse_date(const char *s, int64_t *t_r);
void imap_put_datetime(eng_buf *b, int64_t t);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static void check(bool ok)
{
	if (!ok)
		abort();
}

/* Feeds "t <verb> <subject>\r\n" and returns the parser holding the
 * command's arguments, or NULL when it is not one command. */
static imap_parser *parse_command(const char *verb, const uint8_t *s,
				  size_t len, imap_event *ev)
{
	imap_parser_limits lim;
	imap_parser *p;
	eng_buf line = ENG_BUF_INIT;
	size_t off = 0;

	imap_parser_limits_default(&lim);
	lim.line_max = 65536;
	p = imap_parser_new(&lim);
	eng_buf_printf(&line, "t %s ", verb);
	eng_buf_append(&line, s, len);
	eng_buf_puts(&line, "\r\n");
	memset(ev, 0, sizeof(*ev));
	while (off < line.len) {
		off += imap_parser_feed(p, (const uint8_t *)line.data + off,
					line.len - off, ev);
		if (ev->kind != IMAP_EV_NEED_MORE && ev->kind != IMAP_EV_CONTINUE)
			break;
	}
	eng_buf_free(&line);
	if (ev->kind != IMAP_EV_COMMAND) {
		imap_parser_free(&p);
		return NULL;
	}
	return p;
}

static void check_program(const imap_arg *args, size_t n,
			  enum imap_search_syntax syntax)
{
	static const uint32_t saved[] = { 1, 5, 9 };
	imap_search_in in = { syntax, saved, 3 };
	imap_search_prog prog;
	int rc;

	memset(&prog, 0, sizeof(prog));
	rc = imap_search_parse(args, n, &in, &prog);
	if (rc == IMAP_SEARCH_OK) {
		check(prog.query != NULL);
		check(imap_search_depth(prog.query) <= IMAP_SEARCH_MAX_DEPTH);
		check(imap_search_nodes(prog.query) <= IMAP_SEARCH_MAX_NODES);
		check((prog.ret & ~(uint32_t)(IMAP_RET_MIN | IMAP_RET_MAX |
					      IMAP_RET_ALL | IMAP_RET_COUNT |
					      IMAP_RET_SAVE)) == 0);
	} else {
		check(prog.error != NULL && prog.error[0] != '\0');
	}
	imap_search_prog_free(&prog);
}

static void fuzz_search(const uint8_t *s, size_t len)
{
	imap_event ev;
	imap_parser *p = parse_command("SEARCH", s, len, &ev);

	if (p == NULL)
		return;
	check_program(ev.cmd.args, ev.cmd.n_args, IMAP_SYNTAX_SEARCH);
	imap_parser_free(&p);
}

static void fuzz_sort(const uint8_t *s, size_t len)
{
	uint32_t keys[IMAP_SORT_MAX_KEYS];
	size_t n_keys = 0;
	imap_event ev;
	imap_parser *p = parse_command("SORT", s, len, &ev);

	if (p == NULL)
		return;
	if (ev.cmd.n_args > 0 &&
	    imap_sort_parse_criteria(&ev.cmd.args[0], keys, &n_keys) ==
	    IMAP_SEARCH_OK) {
		check(n_keys >= 1 && n_keys <= IMAP_SORT_MAX_KEYS);
		for (size_t i = 0; i < n_keys; i++)
			check((keys[i] & ~(uint32_t)RPC_SORT_REVERSE) <=
			      RPC_SORT_DISPLAYTO);
		check_program(ev.cmd.args + 1, ev.cmd.n_args - 1,
			      IMAP_SYNTAX_CHARSET_FIRST);
	}
	imap_parser_free(&p);
}

static void fuzz_dates(const uint8_t *s, size_t len)
{
	char *text = malloc(len + 1);
	eng_buf out = ENG_BUF_INIT;
	int64_t t, back;

	memcpy(text, s, len);
	text[len] = '\0';
	if (imap_parse_datetime(text, &t) == 0) {
		imap_put_datetime(&out, t);
		/* Written quoted: take the text between the quotes (a
		 * one-digit day is written with a leading space). */
		check(out.len >= 2 && out.data[0] == '"' &&
		      out.data[out.len - 1] == '"');
		out.data[out.len - 1] = '\0';
		check(imap_parse_datetime(out.data + 1, &back) == 0);
		/* A zone can push a year 0 or 9999 time out of 4 digits:
		 * the writer then says the epoch. */
		check(back == t || back == 0);
	}
	(void)imap_parse_date(text, &t);
	eng_buf_free(&out);
	free(text);
}

static void fuzz_numset(const uint8_t *s, size_t len)
{
	size_t n = len / 4;
	uint32_t *nums = calloc(n + 1, sizeof(uint32_t));
	eng_buf out = ENG_BUF_INIT;
	size_t k = 0;
	const char *p;

	for (size_t i = 0; i < n; i++) {
		memcpy(&nums[i], s + 4 * i, 4);
		if (nums[i] == 0)
			nums[i] = 1;             /* sequence numbers start at 1 */
	}
	imap_put_numset(&out, nums, n);
	check((n == 0) == (out.len == 0));
	p = out.data;
	while (k < n) {
		unsigned long lo, hi;
		char *end;

		check(*p >= '0' && *p <= '9');
		lo = strtoul(p, &end, 10);
		hi = lo;
		if (*end == ':') {
			hi = strtoul(end + 1, &end, 10);
			check(hi > lo);
		}
		for (unsigned long v = lo; v <= hi; v++) {
			check(k < n && nums[k] == v);
			k++;
			if (v == UINT32_MAX)
				break;
		}
		p = end;
		if (k < n) {
			check(*p == ',');
			p++;
		}
	}
	check(k == n && (size_t)(p - out.data) == out.len);
	eng_buf_free(&out);
	free(nums);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	if (size < 1 || size > 70000)
		return 0;
	switch (data[0] % 4) {
	case 0:
		fuzz_search(data + 1, size - 1);
		break;
	case 1:
		fuzz_sort(data + 1, size - 1);
		break;
	case 2:
		fuzz_dates(data + 1, size - 1);
		break;
	default:
		fuzz_numset(data + 1, size - 1);
		break;
	}
	return 0;
}
