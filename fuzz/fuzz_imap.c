/*
 * Fuzz target for the IMAP command parser and the modified UTF-7 codec
 * (frontends/imap/imap_parser.h).
 *
 * Input: byte 0 picks the limits (small ones half of the time, so that
 * every limit is reached) and whether APPEND literals are refused
 * (imap_parser_skip_command), byte 1 where to split, the rest is the
 * stream. Checks:
 *  - the parser gives the same event sequence fed whole, in two pieces
 *    and (for short inputs) one byte at a time (LITERAL_DATA slices are
 *    joined, since their cut depends on the split);
 *  - every event's invariants: strings NUL-terminated at their length and
 *    NUL-free unless literal8, sizes within the limits, list sizes
 *    consistent, arguments within args_max and depth_max, data slices
 *    inside the bytes fed, the parser's buffer within its bound;
 *  - modified UTF-7: what the decoder accepts re-encodes to the input,
 *    and what the encoder writes decodes back.
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "buf.h"
#include "imap_parser.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);
/* A test hook defined in imap_parser.c: the capacity of its buffer. */
extern size_t imap_parser_test_bufcap(const imap_parser *p);

struct run {
	imap_parser_limits lim;
	bool refuse;
	unsigned n_args;        /* arguments seen in the event's tree */
	eng_buf out;
};

static void check(bool ok)
{
	if (!ok)
		abort();
}

static void put_str(struct run *r, const char *s, size_t len, bool lit8)
{
	check(s != NULL && s[len] == '\0');
	check(lit8 || memchr(s, '\0', len) == NULL);
	eng_buf_printf(&r->out, "%zu:", len);
	eng_buf_append(&r->out, s, len);
}

/* Walks the tree without recursion: an explicit stack of (list, index). */
static void put_args(struct run *r, const imap_arg *args, size_t n)
{
	struct { const imap_arg *list; size_t n, i; } st[64];
	unsigned depth = 0;

	st[0].list = args;
	st[0].n = n;
	st[0].i = 0;
	check(n == 0 || args != NULL);
	for (;;) {
		const imap_arg *a;

		if (st[depth].i == st[depth].n) {
			if (depth == 0)
				break;
			depth--;
			eng_buf_putc(&r->out, ')');
			continue;
		}
		a = &st[depth].list[st[depth].i++];
		r->n_args++;
		check(r->n_args <= r->lim.args_max);
		eng_buf_printf(&r->out, " %d", (int)a->kind);
		switch (a->kind) {
		case IMAP_ARG_LIST:
			check(a->n_list == 0 || a->list != NULL);
			check(depth + 1 <= r->lim.depth_max && depth + 1 < 64);
			eng_buf_putc(&r->out, '(');
			depth++;
			st[depth].list = a->list;
			st[depth].n = a->n_list;
			st[depth].i = 0;
			break;
		case IMAP_ARG_LITERAL:
			check(a->len <= r->lim.literal_max);
			put_str(r, a->s, a->len, a->literal8);
			break;
		case IMAP_ARG_ATOM:
		case IMAP_ARG_NIL:
		case IMAP_ARG_QUOTED:
			check(!a->literal8 && a->len <= r->lim.line_max);
			check(a->kind == IMAP_ARG_QUOTED || a->len > 0);
			put_str(r, a->s, a->len, false);
			break;
		default:
			abort();
		}
	}
}

static void put_cmd(struct run *r, const imap_command *cmd, bool complete)
{
	check(!complete || (cmd->tag != NULL && cmd->name != NULL));
	if (cmd->tag != NULL)
		put_str(r, cmd->tag, strlen(cmd->tag), false);
	eng_buf_putc(&r->out, ' ');
	if (cmd->name != NULL)
		put_str(r, cmd->name, strlen(cmd->name), false);
	r->n_args = 0;
	put_args(r, cmd->args, cmd->n_args);
}

/* Records one event and acts as the session would. */
static void on_event(struct run *r, imap_parser *p, const imap_event *ev)
{
	eng_buf_printf(&r->out, "\n%d ", (int)ev->kind);
	switch (ev->kind) {
	case IMAP_EV_COMMAND:
		put_cmd(r, &ev->cmd, true);
		if ((strcmp(ev->cmd.name, "AUTHENTICATE") == 0 && ev->cmd.n_args == 1) ||
		    strcmp(ev->cmd.name, "IDLE") == 0)
			imap_parser_expect_line(p);
		break;
	case IMAP_EV_CONTINUE:
		check(ev->literal_size <= r->lim.literal_max);
		eng_buf_printf(&r->out, "%llu %d", (unsigned long long)ev->literal_size,
			       ev->literal8);
		break;
	case IMAP_EV_LITERAL:
		check(ev->literal_size <= r->lim.append_max);
		check(ev->cmd.name != NULL && strcmp(ev->cmd.name, "APPEND") == 0);
		eng_buf_printf(&r->out, "%llu %d %d ", (unsigned long long)ev->literal_size,
			       ev->literal8, ev->literal_sync);
		put_cmd(r, &ev->cmd, true);
		if (r->refuse)
			imap_parser_skip_command(p);
		break;
	case IMAP_EV_LITERAL_END:
		break;
	case IMAP_EV_LINE:
		check(ev->len <= r->lim.line_max);
		put_str(r, (const char *)ev->data, ev->len, false);
		break;
	case IMAP_EV_ERROR:
		check(ev->err <= IMAP_ESYNTAX && ev->err >= IMAP_EEMPTY);
		check(ev->text != NULL && ev->cmd.n_args == 0);
		eng_buf_printf(&r->out, "%d %d ", ev->err, ev->fatal);
		put_cmd(r, &ev->cmd, false);
		break;
	default:
		abort();
	}
}

/* Feeds in pieces of at most step bytes (0: split only at cut). */
static void transcript(struct run *r, const uint8_t *in, size_t len, size_t cut,
		       size_t step)
{
	imap_parser *p = imap_parser_new(&r->lim);
	/* Every NUL in the buffer ends a token of at least one line byte. */
	size_t bound = 2 * (2 * r->lim.line_max + r->lim.literal_max + 256);
	bool in_data = false;
	size_t pos = 0;

	while (pos < len) {
		size_t end = step != 0 ? pos + step : (pos < cut ? cut : len);
		size_t off = 0, piece;
		uint8_t *copy;

		if (end > len)
			end = len;
		piece = end - pos;
		copy = malloc(piece);  /* exact size: ASan sees an overread */
		check(copy != NULL);
		memcpy(copy, in + pos, piece);
		for (;;) {
			imap_event ev;
			size_t used = imap_parser_feed(p, copy + off, piece - off, &ev);

			check(used <= piece - off);
			off += used;
			check(imap_parser_test_bufcap(p) <= bound);
			if (ev.kind == IMAP_EV_NEED_MORE) {
				check(off == piece);
				break;
			}
			if (ev.kind == IMAP_EV_LITERAL_DATA) {
				check(ev.len > 0 && ev.len == used);
				check(ev.data >= copy && ev.data + ev.len <= copy + off);
				if (!in_data)
					eng_buf_puts(&r->out, "\nDATA ");
				in_data = true;
				eng_buf_append(&r->out, ev.data, ev.len);
				continue;
			}
			in_data = false;
			on_event(r, p, &ev);
		}
		free(copy);
		pos = end;
	}
	imap_parser_free(&p);
}

static void check_parser(const imap_parser_limits *lim, bool refuse,
			 const uint8_t *in, size_t len, size_t cut)
{
	struct run a = { *lim, refuse, 0, ENG_BUF_INIT };
	struct run b = { *lim, refuse, 0, ENG_BUF_INIT };
	struct run c = { *lim, refuse, 0, ENG_BUF_INIT };

	transcript(&a, in, len, len, 0);
	transcript(&b, in, len, cut, 0);
	check(a.out.len == b.out.len &&
	      (a.out.len == 0 || memcmp(a.out.data, b.out.data, a.out.len) == 0));
	if (len <= 512) {
		transcript(&c, in, len, 0, 1);
		check(a.out.len == c.out.len &&
		      (a.out.len == 0 || memcmp(a.out.data, c.out.data, a.out.len) == 0));
	}
	eng_buf_free(&a.out);
	eng_buf_free(&b.out);
	eng_buf_free(&c.out);
}

static void check_mutf7(const char *in, size_t len)
{
	char *dec = NULL, *enc = NULL;

	if (imap_mutf7_decode(in, len, &dec) == 0) {
		check(imap_utf8_valid(dec, strlen(dec)));
		check(imap_mutf7_encode(dec, strlen(dec), &enc) == 0);
		check(strlen(enc) == len && memcmp(enc, in, len) == 0);
		free(enc);
		enc = NULL;
	}
	free(dec);
	dec = NULL;
	if (imap_mutf7_encode(in, len, &enc) == 0) {
		check(imap_utf8_valid(in, len) && memchr(in, '\0', len) == NULL);
		check(imap_mutf7_decode(enc, strlen(enc), &dec) == 0);
		check(strlen(dec) == len && memcmp(dec, in, len) == 0);
		free(dec);
	} else {
		check(!imap_utf8_valid(in, len) || memchr(in, '\0', len) != NULL);
	}
	free(enc);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	imap_parser_limits lim;
	size_t cut;

	if (size < 2)
		return 0;
	imap_parser_limits_default(&lim);
	if (data[0] & 0x80) {
		lim.line_max = 8 + (size_t)(data[0] & 0x0f) * 4;
		lim.literal_max = 2 + ((data[0] >> 4) & 0x3) * 8;
		lim.append_max = 24;
		lim.literals_max = 3;
		lim.depth_max = 3;
		lim.args_max = 12;
		lim.errors_max = 5;
	}
	cut = (size - 2) * data[1] / 255;
	check_parser(&lim, (data[0] & 0x40) != 0, data + 2, size - 2, cut);
	check_mutf7((const char *)data + 2, size - 2);
	return 0;
}
