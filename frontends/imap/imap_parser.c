/*
 * The IMAP command parser (imap_parser.h has the contract).
 *
 * A byte-driven state machine: one state per token kind, no recursion
 * (open lists live on an explicit stack bounded by depth_max). Bytes of
 * the command (tag, name, atom/quoted contents, buffered literals) are
 * copied into one buffer `buf`, each token NUL-terminated; the argument
 * tree is a flat array of nodes in parse order (each knows its parent) and
 * is laid out as imap_arg arrays (each list's elements contiguous) only
 * when an event hands it out. Nodes and buffer grow by doubling and are
 * reset per command (per message of a MULTIAPPEND); imap_parser_trim frees
 * them between commands (an IDLE session keeps neither).
 *
 * Invariants:
 *  - non-literal bytes of a command (CR and LF excluded) <= line_max;
 *    buffered literal bytes of a command <= literal_max in total; so buf
 *    holds at most line_max + literal_max + one NUL per token;
 *  - a literal's bytes are copied only as they arrive; a streamed (APPEND)
 *    or skipped literal is never copied;
 *  - one event per imap_parser_feed(); strings handed out stay untouched
 *    until the next feed (resets are deferred to its start).
 *
 * Skipping (after an error or imap_parser_skip_command): bytes up to the
 * line end are dropped, tracking only whether the line ends with a literal
 * announcement "{n}" / "{n+}" / "{n-}" (with or without "~"): a
 * non-synchronising one means n bytes to drop and another line of the
 * same command; a synchronising one ends the command (the client waits
 * for a "+" that never comes, and gets the tagged BAD instead).
 */
#include "imap_parser.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "eng_error.h"

enum pstate {
	S_START,        /* before the first byte of a line */
	S_TAG,
	S_NAME,
	S_ARGS,         /* between arguments */
	S_ATOM,
	S_QUOTED,
	S_QUOTED_ESC,
	S_LIT_NUM,      /* "{" read: digits */
	S_LIT_CLOSE,    /* "+" or "-" read: "}" */
	S_LIT_EOL,      /* "}" read: the line end */
	S_LITERAL,      /* buffered literal bytes */
	S_STREAM,       /* streamed APPEND literal bytes */
	S_RAW,          /* imap_parser_expect_line() */
	S_SKIP_LINE,
	S_SKIP_LIT,     /* then S_SKIP_LINE */
	S_SKIP_RAW,
};

enum reset { RESET_NONE, RESET_ALL, RESET_ARGS };

#define NO_PARENT UINT32_MAX
#define IMAP_PARSER_BUF_INIT 256

struct node {
	imap_arg_kind kind;
	bool lit8;
	uint32_t parent;        /* NO_PARENT: top level */
	uint32_t n_children;
	uint32_t start, fill;   /* layout scratch */
	size_t off, len;        /* in buf */
};

struct imap_parser {
	imap_parser_limits lim;
	enum pstate state;
	enum reset reset;
	bool pending_cr;        /* a CR was read; only LF may follow */
	bool want_line;         /* expect_line() before the next line */
	bool pending_end;       /* LITERAL_END is due */
	bool awaiting_plus;     /* the last event was a synchronising
	                           literal: the client waits for "+" */

	char *buf;
	size_t blen, bcap;
	size_t line_bytes;      /* non-literal bytes of the command */
	uint64_t lit_total;     /* buffered literal bytes of the command */
	unsigned literals;
	unsigned errors;        /* consecutive */

	/* The command. */
	size_t tag_len;
	bool tag_done;
	size_t name_off, name_len;
	bool name_done;
	bool is_append;
	bool streamed;          /* an APPEND message literal was streamed */
	size_t args_base;       /* buf offset where arguments start */

	struct node *nodes;
	size_t n_nodes, nodes_cap;
	imap_arg *out;
	size_t out_cap;
	uint32_t *stack;        /* open lists (node indices) */
	unsigned depth, stack_cap;
	bool need_sep;          /* an argument just ended */
	unsigned brackets;      /* "[" depth inside the current atom */

	/* The literal being announced or read. */
	uint64_t lit_size, lit_rem;
	bool lit8, lit_sync, lit_digits;

	/* Skipping: the line's tail as a literal announcement. */
	int sk_state;           /* 0 none, 1 "{digits", 2 "+/-", 3 "}" */
	uint64_t sk_num;
	bool sk_sync, sk_digits;
};

/* The tests check the buffer stays small; nothing else uses this. */
size_t imap_parser_test_bufcap(const imap_parser *p);

void imap_parser_limits_default(imap_parser_limits *lim)
{
	lim->line_max = 8192;
	lim->literal_max = 1024 * 1024;
	lim->append_max = 64ull * 1024 * 1024;
	lim->literals_max = 1000;
	lim->depth_max = 16;
	lim->args_max = 10000;
	lim->errors_max = 20;
}

imap_parser *imap_parser_new(const imap_parser_limits *lim)
{
	imap_parser *p = eng_calloc(1, sizeof(*p));
	imap_parser_limits def;

	imap_parser_limits_default(&def);
	p->lim = lim != NULL ? *lim : def;
	/* A zero limit means the default. */
	if (p->lim.line_max == 0)
		p->lim.line_max = def.line_max;
	if (p->lim.literal_max == 0)
		p->lim.literal_max = def.literal_max;
	if (p->lim.append_max == 0)
		p->lim.append_max = def.append_max;
	if (p->lim.literals_max == 0)
		p->lim.literals_max = def.literals_max;
	if (p->lim.depth_max == 0)
		p->lim.depth_max = def.depth_max;
	if (p->lim.args_max == 0)
		p->lim.args_max = def.args_max;
	if (p->lim.errors_max == 0)
		p->lim.errors_max = def.errors_max;
	p->bcap = IMAP_PARSER_BUF_INIT;
	p->buf = eng_malloc(p->bcap);
	p->state = S_START;
	return p;
}

void imap_parser_free(imap_parser **pp)
{
	imap_parser *p;

	if (pp == NULL || *pp == NULL)
		return;
	p = *pp;
	/* LOGIN and AUTHENTICATE lines carry credentials. */
	if (p->buf != NULL)
		explicit_bzero(p->buf, p->bcap);
	free(p->buf);
	free(p->nodes);
	free(p->out);
	free(p->stack);
	free(p);
	*pp = NULL;
}

void imap_parser_set_line_max(imap_parser *p, size_t line_max)
{
	p->lim.line_max = line_max;
}

void imap_parser_set_append_max(imap_parser *p, uint64_t append_max)
{
	p->lim.append_max = append_max;
}

size_t imap_parser_test_bufcap(const imap_parser *p)
{
	return p->bcap;
}

void imap_parser_expect_line(imap_parser *p)
{
	p->want_line = true;
}

/* ---- Buffer and nodes ---- */

static void buf_reserve(imap_parser *p, size_t extra)
{
	size_t cap = p->bcap;

	if (p->blen + extra <= cap && p->buf != NULL)
		return;
	if (cap == 0)                /* after imap_parser_trim */
		cap = IMAP_PARSER_BUF_INIT;
	while (cap < p->blen + extra)
		cap *= 2;
	p->buf = eng_realloc(p->buf, cap);
	p->bcap = cap;
}

static void buf_putc(imap_parser *p, char c)
{
	buf_reserve(p, 1);
	p->buf[p->blen++] = c;
}

static void reset_args(imap_parser *p)
{
	if (p->buf != NULL)
		explicit_bzero(p->buf + p->args_base, p->blen - p->args_base);
	p->blen = p->args_base;
	p->n_nodes = 0;
	p->depth = 0;
	p->need_sep = true;
	p->line_bytes = 0;
	p->lit_total = 0;
}

static void reset_all(imap_parser *p)
{
	if (p->buf != NULL)
		explicit_bzero(p->buf, p->blen);
	p->blen = 0;
	p->line_bytes = 0;
	p->lit_total = 0;
	p->literals = 0;
	p->tag_len = 0;
	p->tag_done = false;
	p->name_off = p->name_len = 0;
	p->name_done = false;
	p->is_append = false;
	p->streamed = false;
	p->args_base = 0;
	p->n_nodes = 0;
	p->depth = 0;
	p->need_sep = false;
	p->pending_cr = false;
}

/* A new argument (a child of the innermost open list); NULL over args_max. */
static struct node *add_node(imap_parser *p, imap_arg_kind kind)
{
	struct node *n;

	if (p->n_nodes >= p->lim.args_max)
		return NULL;
	if (p->n_nodes == p->nodes_cap) {
		p->nodes_cap = p->nodes_cap == 0 ? 16 : p->nodes_cap * 2;
		p->nodes = eng_realloc(p->nodes, p->nodes_cap * sizeof(*p->nodes));
	}
	n = &p->nodes[p->n_nodes++];
	memset(n, 0, sizeof(*n));
	n->kind = kind;
	n->off = p->blen;
	n->parent = p->depth > 0 ? p->stack[p->depth - 1] : NO_PARENT;
	if (n->parent != NO_PARENT)
		p->nodes[n->parent].n_children++;
	return n;
}

static void drop_last_node(imap_parser *p)
{
	struct node *n = &p->nodes[--p->n_nodes];

	if (n->parent != NO_PARENT)
		p->nodes[n->parent].n_children--;
	p->blen = n->off;
}

/* Ends the token of the last node at blen. */
static void end_token(imap_parser *p)
{
	struct node *n = &p->nodes[p->n_nodes - 1];

	n->len = p->blen - n->off;
	buf_putc(p, '\0');
}

/* Lays the nodes out as imap_arg arrays and fills ev->cmd. */
static void build_command(imap_parser *p, imap_event *ev)
{
	size_t n_top = 0, cursor;

	ev->cmd.tag = p->tag_done ? p->buf : NULL;
	ev->cmd.name = p->name_done ? p->buf + p->name_off : NULL;
	ev->cmd.args = NULL;
	ev->cmd.n_args = 0;
	if (p->n_nodes == 0)
		return;
	if (p->out_cap < p->n_nodes) {
		p->out_cap = p->nodes_cap;
		p->out = eng_realloc(p->out, p->out_cap * sizeof(*p->out));
	}
	for (size_t i = 0; i < p->n_nodes; i++) {
		if (p->nodes[i].parent == NO_PARENT)
			n_top++;
	}
	/* Nodes are in parse order, so a parent is placed before its
	 * children and its block is known when they come. */
	cursor = n_top;
	for (size_t i = 0, top_fill = 0; i < p->n_nodes; i++) {
		struct node *n = &p->nodes[i];
		size_t at;
		imap_arg *a;

		if (n->parent == NO_PARENT)
			at = top_fill++;
		else
			at = p->nodes[n->parent].start + p->nodes[n->parent].fill++;
		a = &p->out[at];
		memset(a, 0, sizeof(*a));
		a->kind = n->kind;
		a->literal8 = n->lit8;
		if (n->kind == IMAP_ARG_LIST) {
			n->start = (uint32_t)cursor;
			n->fill = 0;
			a->list = n->n_children > 0 ? &p->out[cursor] : NULL;
			a->n_list = n->n_children;
			cursor += n->n_children;
		} else {
			a->s = p->buf + n->off;
			a->len = n->len;
		}
	}
	ev->cmd.args = p->out;
	ev->cmd.n_args = n_top;
}

/* ---- Events ---- */

static const char *err_text(int err)
{
	switch (err) {
	case IMAP_ELINE: return "Command line too long";
	case IMAP_ELITERAL: return "Literal too large";
	case IMAP_ELITERALS: return "Too many literals in command";
	case IMAP_EDEPTH: return "Lists nested too deeply";
	case IMAP_EARGS: return "Too many arguments";
	case IMAP_ENUL: return "NUL byte in command";
	case IMAP_EEMPTY: return "Empty command";
	default: return "Syntax error in command";
	}
}

static void skip_reset(imap_parser *p)
{
	p->sk_state = 0;
	p->sk_num = 0;
	p->sk_sync = true;
	p->sk_digits = false;
}

/* One byte of a line being skipped. */
static void skip_byte(imap_parser *p, uint8_t c)
{
	if (c == '\n') {
		if (p->sk_state == 3 && !p->sk_sync && p->sk_num > 0) {
			p->lit_rem = p->sk_num;
			p->state = S_SKIP_LIT;
		} else if (p->sk_state == 3 && !p->sk_sync) {
			p->state = S_SKIP_LINE;
		} else {
			p->state = S_START;
		}
		skip_reset(p);
		return;
	}
	if (c == '\r')
		return;
	if (c == '{') {
		skip_reset(p);
		p->sk_state = 1;
	} else if (p->sk_state == 1 && c >= '0' && c <= '9') {
		uint64_t d = (uint64_t)(c - '0');

		p->sk_num = p->sk_num > (UINT64_MAX - d) / 10 ? UINT64_MAX :
			p->sk_num * 10 + d;
		p->sk_digits = true;
	} else if (p->sk_state == 1 && p->sk_digits && (c == '+' || c == '-')) {
		p->sk_sync = false;
		p->sk_state = 2;
	} else if ((p->sk_state == 1 && p->sk_digits) || p->sk_state == 2) {
		p->sk_state = c == '}' ? 3 : 0;
	} else {
		p->sk_state = 0;
	}
}

/* Fills an ERROR event; counts it against errors_max. */
static void error_event(imap_parser *p, imap_event *ev, int err, bool fatal)
{
	p->errors++;
	if (p->errors >= p->lim.errors_max) {
		fatal = true;
	}
	ev->kind = IMAP_EV_ERROR;
	ev->err = err;
	ev->text = p->errors >= p->lim.errors_max ? "Too many invalid commands" :
		err_text(err);
	ev->fatal = fatal;
	ev->cmd.tag = p->tag_done ? p->buf : NULL;
	ev->cmd.name = p->name_done ? p->buf + p->name_off : NULL;
	p->reset = RESET_ALL;
	p->pending_cr = false;
	p->want_line = false;
}

/*
 * An error at byte c of a command line: the rest of the command is
 * skipped (c included: it may start a literal announcement or be the LF).
 */
static void fail(imap_parser *p, imap_event *ev, int err, uint8_t c)
{
	error_event(p, ev, err, false);
	skip_reset(p);
	p->state = S_SKIP_LINE;
	skip_byte(p, c);
}

/* An error for a literal whose announcement was just read. */
static void fail_literal(imap_parser *p, imap_event *ev, int err, bool fatal)
{
	error_event(p, ev, err, fatal);
	skip_reset(p);
	if (p->lit_sync) {
		/* Refused before the client sent it. */
		p->state = S_START;
	} else if (p->lit_size > 0) {
		p->lit_rem = p->lit_size;
		p->state = S_SKIP_LIT;
	} else {
		p->state = S_SKIP_LINE;
	}
}

static void command_event(imap_parser *p, imap_event *ev)
{
	ev->kind = IMAP_EV_COMMAND;
	build_command(p, ev);
	p->errors = 0;
	p->reset = RESET_ALL;
	p->state = S_START;
}

/* ---- Tokens ---- */

/* ATOM-CHAR plus "]" (resp-specials), minus "+": the tag. */
static bool is_tag_char(uint8_t c)
{
	if (c <= 0x20 || c >= 0x7f)
		return false;
	return strchr("(){%*\"\\+", c) == NULL;
}

/* ATOM-CHAR: the command name. */
static bool is_name_char(uint8_t c)
{
	if (c <= 0x20 || c >= 0x7f)
		return false;
	return strchr("(){%*\"\\]", c) == NULL;
}

/* An argument atom: ATOM-CHAR plus "]", "\", "*", "%" ("[" opens a
 * section); 8-bit bytes are taken as they are (the session checks UTF-8
 * where it matters). */
static bool is_atom_char(uint8_t c)
{
	if (c <= 0x20 || c == 0x7f)
		return false;
	return c >= 0x80 || strchr("(){\"", c) == NULL;
}

static void finish_atom(imap_parser *p)
{
	struct node *n = &p->nodes[p->n_nodes - 1];

	end_token(p);
	if (n->len == 3 && strncasecmp(p->buf + n->off, "NIL", 3) == 0)
		n->kind = IMAP_ARG_NIL;
	p->need_sep = true;
	p->state = S_ARGS;
}

static void finish_literal(imap_parser *p)
{
	end_token(p);
	p->need_sep = true;
	p->state = S_ARGS;
}

/* The announcement "{n}" ended with its LF. Returns true for an event. */
static bool literal_announced(imap_parser *p, imap_event *ev)
{
	bool stream = p->is_append && p->depth == 0 &&
		(p->streamed || p->n_nodes > 1);
	struct node *n;

	p->literals++;
	if (p->literals > p->lim.literals_max) {
		fail_literal(p, ev, IMAP_ELITERALS, false);
		return true;
	}
	if (stream ? p->lit_size > p->lim.append_max :
	    p->lit_size > p->lim.literal_max - p->lit_total) {
		fail_literal(p, ev, IMAP_ELITERAL, !p->lit_sync);
		return true;
	}
	if (stream) {
		drop_last_node(p);
		ev->kind = IMAP_EV_LITERAL;
		build_command(p, ev);
		ev->literal_size = p->lit_size;
		ev->literal8 = p->lit8;
		ev->literal_sync = p->lit_sync;
		p->lit_rem = p->lit_size;
		p->state = S_STREAM;
		p->pending_end = p->lit_size == 0;
		p->awaiting_plus = p->lit_sync;
		return true;
	}
	n = &p->nodes[p->n_nodes - 1];
	n->kind = IMAP_ARG_LITERAL;
	n->lit8 = p->lit8;
	n->off = p->blen;
	p->lit_total += p->lit_size;
	p->lit_rem = p->lit_size;
	p->state = S_LITERAL;
	if (p->lit_size == 0)
		finish_literal(p);
	if (!p->lit_sync)
		return false;
	ev->kind = IMAP_EV_CONTINUE;
	ev->literal_size = p->lit_size;
	ev->literal8 = p->lit8;
	p->awaiting_plus = true;
	return true;
}

static void start_literal(imap_parser *p, bool lit8)
{
	p->lit8 = lit8;
	p->lit_sync = true;
	p->lit_digits = false;
	p->lit_size = 0;
	p->state = S_LIT_NUM;
}

/* A byte between arguments. */
static bool on_args(imap_parser *p, uint8_t c, imap_event *ev)
{
	struct node *n;

	if (c == '\n') {
		if (p->depth > 0) {
			fail(p, ev, IMAP_ESYNTAX, c);
			return true;
		}
		command_event(p, ev);
		return true;
	}
	if (c == ' ') {
		p->need_sep = false;
		return false;
	}
	if (c == ')') {
		if (p->depth == 0) {
			fail(p, ev, IMAP_ESYNTAX, c);
			return true;
		}
		p->depth--;
		p->need_sep = true;
		return false;
	}
	if (c == '\0' || p->need_sep || !(is_atom_char(c) || c == '(' ||
					   c == '"' || c == '{')) {
		fail(p, ev, c == '\0' ? IMAP_ENUL : IMAP_ESYNTAX, c);
		return true;
	}
	n = add_node(p, c == '(' ? IMAP_ARG_LIST : c == '"' ? IMAP_ARG_QUOTED :
		     c == '{' ? IMAP_ARG_LITERAL : IMAP_ARG_ATOM);
	if (n == NULL) {
		fail(p, ev, IMAP_EARGS, c);
		return true;
	}
	if (c == '(') {
		if (p->depth >= p->lim.depth_max) {
			fail(p, ev, IMAP_EDEPTH, c);
			return true;
		}
		if (p->depth == p->stack_cap) {
			p->stack_cap = p->stack_cap == 0 ? 4 : p->stack_cap * 2;
			p->stack = eng_realloc(p->stack, p->stack_cap * sizeof(*p->stack));
		}
		p->stack[p->depth++] = (uint32_t)(p->n_nodes - 1);
		buf_putc(p, '\0');  /* a list's s is "" (unused) */
	} else if (c == '"') {
		p->state = S_QUOTED;
	} else if (c == '{') {
		start_literal(p, false);
	} else {
		buf_putc(p, (char)c);
		p->brackets = c == '[' ? 1 : 0;
		p->state = S_ATOM;
	}
	return false;
}

static bool on_atom(imap_parser *p, uint8_t c, imap_event *ev)
{
	struct node *n = &p->nodes[p->n_nodes - 1];

	if (c == '\0') {
		fail(p, ev, IMAP_ENUL, c);
		return true;
	}
	if (p->brackets > 0) {
		if (c == '\n' || c < 0x20 || c == 0x7f) {
			fail(p, ev, IMAP_ESYNTAX, c);
			return true;
		}
		if (c == '[' && ++p->brackets > p->lim.depth_max) {
			fail(p, ev, IMAP_EDEPTH, c);
			return true;
		}
		if (c == ']')
			p->brackets--;
		buf_putc(p, (char)c);
		return false;
	}
	if (c == ' ' || c == ')' || c == '\n') {
		finish_atom(p);
		return on_args(p, c, ev);
	}
	if (c == '{' && p->blen - n->off == 1 && p->buf[n->off] == '~') {
		p->blen = n->off;
		start_literal(p, true);
		return false;
	}
	if (!is_atom_char(c)) {
		fail(p, ev, IMAP_ESYNTAX, c);
		return true;
	}
	if (c == '[')
		p->brackets = 1;
	buf_putc(p, (char)c);
	return false;
}

static bool on_quoted(imap_parser *p, uint8_t c, imap_event *ev)
{
	if (c == '\0' || c == '\n' ||
	    (p->state == S_QUOTED_ESC && c != '"' && c != '\\')) {
		fail(p, ev, c == '\0' ? IMAP_ENUL : IMAP_ESYNTAX, c);
		return true;
	}
	if (p->state == S_QUOTED && c == '\\') {
		p->state = S_QUOTED_ESC;
		return false;
	}
	if (p->state == S_QUOTED && c == '"') {
		end_token(p);
		p->need_sep = true;
		p->state = S_ARGS;
		return false;
	}
	buf_putc(p, (char)c);
	p->state = S_QUOTED;
	return false;
}

static bool on_literal_header(imap_parser *p, uint8_t c, imap_event *ev)
{
	if (p->state == S_LIT_NUM && c >= '0' && c <= '9') {
		uint64_t d = (uint64_t)(c - '0');

		p->lit_size = p->lit_size > (UINT64_MAX - d) / 10 ? UINT64_MAX :
			p->lit_size * 10 + d;
		p->lit_digits = true;
		return false;
	}
	if (p->state == S_LIT_NUM && p->lit_digits && (c == '+' || c == '-')) {
		p->lit_sync = false;
		p->state = S_LIT_CLOSE;
		return false;
	}
	if ((p->state == S_LIT_NUM && p->lit_digits) || p->state == S_LIT_CLOSE) {
		if (c == '}') {
			p->state = S_LIT_EOL;
			return false;
		}
	}
	if (p->state == S_LIT_EOL && c == '\n')
		return literal_announced(p, ev);
	fail(p, ev, c == '\0' ? IMAP_ENUL : IMAP_ESYNTAX, c);
	return true;
}

static bool on_tag(imap_parser *p, uint8_t c, imap_event *ev)
{
	if (c == '\n' || (c == ' ' && p->tag_len > 0)) {
		p->tag_done = p->tag_len > 0;
		buf_putc(p, '\0');
		if (c == '\n') {
			fail(p, ev, IMAP_EEMPTY, c);
			return true;
		}
		p->name_off = p->blen;
		p->state = S_NAME;
		return false;
	}
	if (!is_tag_char(c)) {
		fail(p, ev, c == '\0' ? IMAP_ENUL : IMAP_ESYNTAX, c);
		return true;
	}
	buf_putc(p, (char)c);
	p->tag_len++;
	return false;
}

static bool on_name(imap_parser *p, uint8_t c, imap_event *ev)
{
	if (c == ' ' && p->name_len == 0)
		return false;
	if (c == '\n' || c == ' ') {
		if (p->name_len == 0) {
			fail(p, ev, IMAP_EEMPTY, c);
			return true;
		}
		buf_putc(p, '\0');
		p->name_done = true;
		p->is_append = strcmp(p->buf + p->name_off, "APPEND") == 0;
		p->args_base = p->blen;
		p->need_sep = false;
		p->state = S_ARGS;
		if (c == '\n') {
			command_event(p, ev);
			return true;
		}
		return false;
	}
	if (!is_name_char(c)) {
		fail(p, ev, c == '\0' ? IMAP_ENUL : IMAP_ESYNTAX, c);
		return true;
	}
	if (c >= 'a' && c <= 'z')
		c = (uint8_t)(c - 'a' + 'A');
	buf_putc(p, (char)c);
	p->name_len++;
	return false;
}

static bool on_raw(imap_parser *p, uint8_t c, imap_event *ev)
{
	if (c == '\n') {
		buf_putc(p, '\0');  /* first: it may move buf */
		ev->kind = IMAP_EV_LINE;
		ev->data = (const uint8_t *)p->buf;
		ev->len = p->blen - 1;
		p->errors = 0;
		p->reset = RESET_ALL;
		p->state = S_START;
		return true;
	}
	if (c == '\0') {
		error_event(p, ev, IMAP_ENUL, false);
		p->state = S_SKIP_RAW;
		return true;
	}
	buf_putc(p, (char)c);
	return false;
}

/* One byte of a line being parsed (not a literal's). */
static bool on_byte(imap_parser *p, uint8_t c, imap_event *ev)
{
	bool raw = p->state == S_RAW;

	if (p->pending_cr) {
		p->pending_cr = false;
		if (c != '\n') {
			/* A bare CR is no line end. */
			if (raw) {
				error_event(p, ev, IMAP_ESYNTAX, false);
				p->state = S_SKIP_RAW;
			} else {
				fail(p, ev, IMAP_ESYNTAX, c);
			}
			return true;
		}
	} else if (c == '\r') {
		p->pending_cr = true;
		return false;
	}
	if (c != '\n' && ++p->line_bytes > p->lim.line_max) {
		if (raw) {
			error_event(p, ev, IMAP_ELINE, false);
			p->state = S_SKIP_RAW;
		} else {
			fail(p, ev, IMAP_ELINE, c);
		}
		return true;
	}
	switch (p->state) {
	case S_TAG: return on_tag(p, c, ev);
	case S_NAME: return on_name(p, c, ev);
	case S_ARGS: return on_args(p, c, ev);
	case S_ATOM: return on_atom(p, c, ev);
	case S_QUOTED:
	case S_QUOTED_ESC: return on_quoted(p, c, ev);
	case S_LIT_NUM:
	case S_LIT_CLOSE:
	case S_LIT_EOL: return on_literal_header(p, c, ev);
	case S_RAW: return on_raw(p, c, ev);
	default: abort();
	}
}

/* ---- Bulk states ---- */

/* Buffered literal bytes; returns bytes used, sets *event. */
static size_t on_literal_bytes(imap_parser *p, const uint8_t *d, size_t len,
			       imap_event *ev, bool *event)
{
	size_t n = len < p->lit_rem ? len : (size_t)p->lit_rem;
	const uint8_t *nul = p->lit8 ? NULL : memchr(d, '\0', n);

	if (nul != NULL) {
		size_t used = (size_t)(nul - d) + 1;

		p->lit_rem -= used;
		error_event(p, ev, IMAP_ENUL, false);
		skip_reset(p);
		p->state = p->lit_rem > 0 ? S_SKIP_LIT : S_SKIP_LINE;
		*event = true;
		return used;
	}
	buf_reserve(p, n + 1);
	memcpy(p->buf + p->blen, d, n);
	p->blen += n;
	p->lit_rem -= n;
	if (p->lit_rem == 0)
		finish_literal(p);
	return n;
}

/* Streamed APPEND bytes: always an event unless len == 0. */
static size_t on_stream_bytes(imap_parser *p, const uint8_t *d, size_t len,
			      imap_event *ev)
{
	size_t n = len < p->lit_rem ? len : (size_t)p->lit_rem;
	const uint8_t *nul = p->lit8 ? NULL : memchr(d, '\0', n);

	if (nul == d) {
		p->lit_rem--;
		error_event(p, ev, IMAP_ENUL, false);
		skip_reset(p);
		p->state = p->lit_rem > 0 ? S_SKIP_LIT : S_SKIP_LINE;
		return 1;
	}
	if (nul != NULL)
		n = (size_t)(nul - d);  /* the data before it, then the error */
	ev->kind = IMAP_EV_LITERAL_DATA;
	ev->data = d;
	ev->len = n;
	p->lit_rem -= n;
	if (p->lit_rem == 0)
		p->pending_end = true;
	return n;
}

static void apply_reset(imap_parser *p)
{
	if (p->reset == RESET_ALL)
		reset_all(p);
	else if (p->reset == RESET_ARGS)
		reset_args(p);
	p->reset = RESET_NONE;
}

size_t imap_parser_feed(imap_parser *p, const uint8_t *data, size_t len,
			imap_event *ev)
{
	size_t pos = 0;

	memset(ev, 0, sizeof(*ev));
	ev->kind = IMAP_EV_NEED_MORE;
	p->awaiting_plus = false;
	apply_reset(p);
	if (p->pending_end) {
		p->pending_end = false;
		ev->kind = IMAP_EV_LITERAL_END;
		p->streamed = true;
		p->reset = RESET_ARGS;
		p->state = S_ARGS;
		return 0;
	}
	while (pos < len) {
		bool event = false;

		switch (p->state) {
		case S_START:
			p->state = p->want_line ? S_RAW : S_TAG;
			p->want_line = false;
			continue;
		case S_LITERAL:
			pos += on_literal_bytes(p, data + pos, len - pos, ev, &event);
			break;
		case S_STREAM:
			return pos + on_stream_bytes(p, data + pos, len - pos, ev);
		case S_SKIP_LIT: {
			size_t n = len - pos < p->lit_rem ? len - pos : (size_t)p->lit_rem;

			pos += n;
			p->lit_rem -= n;
			if (p->lit_rem == 0) {
				skip_reset(p);
				p->state = S_SKIP_LINE;
			}
			continue;
		}
		case S_SKIP_LINE:
			skip_byte(p, data[pos++]);
			continue;
		case S_SKIP_RAW: {
			const uint8_t *lf = memchr(data + pos, '\n', len - pos);

			if (lf == NULL)
				return len;
			pos = (size_t)(lf - data) + 1;
			p->state = S_START;
			continue;
		}
		default:
			event = on_byte(p, data[pos++], ev);
			break;
		}
		if (event)
			return pos;
	}
	return len;
}

void imap_parser_trim(imap_parser *p)
{
	if (p->reset != RESET_ALL || p->state != S_START || p->pending_end)
		return;
	apply_reset(p);
	free(p->nodes);
	free(p->out);
	free(p->stack);
	p->nodes = NULL;
	p->out = NULL;
	p->stack = NULL;
	p->nodes_cap = p->out_cap = 0;
	p->stack_cap = 0;
	if (p->buf != NULL) {
		explicit_bzero(p->buf, p->bcap);
		free(p->buf);
		p->buf = NULL;
		p->bcap = 0;
	}
}

void imap_parser_skip_command(imap_parser *p)
{
	p->reset = RESET_ALL;
	p->want_line = false;
	p->pending_cr = false;
	skip_reset(p);
	if (p->awaiting_plus) {
		/* A refused synchronising literal: the client waits for a
		 * "+" and sends nothing more of this command. */
		p->awaiting_plus = false;
		p->pending_end = false;
		p->state = S_START;
		return;
	}
	if (p->pending_end) {
		p->pending_end = false;
		p->state = S_SKIP_LINE;
		return;
	}
	switch (p->state) {
	case S_START:
		return;
	case S_STREAM:
	case S_LITERAL:
		p->state = p->lit_rem > 0 ? S_SKIP_LIT : S_SKIP_LINE;
		return;
	case S_RAW:
	case S_SKIP_RAW:
		p->state = S_SKIP_RAW;
		return;
	case S_SKIP_LIT:
		return;
	default:
		p->state = S_SKIP_LINE;
		return;
	}
}
