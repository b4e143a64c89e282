/*
 * Fuzz target for the SMTP codec (frontends/mx/smtp_parser.h).
 *
 * Input: byte 0 picks the limits, byte 1 where to split, the rest is the
 * stream, read as a session would (DATA -> begin_data, BDAT n ->
 * begin_bdat, AUTH without an initial response -> expect_line). Checks:
 *  - the same events fed whole, in two pieces and (up to 2 KiB) one byte
 *    at a time (DATA/BDAT slices merged: only their boundaries may move);
 *  - invariants: never more consumed than given, all of it on NEED_MORE,
 *    no line held past line_max, every string NUL-terminated at its
 *    length, a reply code for every error, slices inside the input;
 *  - the smuggling oracle, twice over for every message read in DATA:
 *    (1) an independent, non-incremental reference of the rules
 *        (tests/unit/smtp_reference.h) run on the raw bytes from the
 *        start of the message must end it at the same byte, with the same
 *        unstuffed output and the same bare CR/LF verdict; a stream that
 *        ends inside DATA must have no end in the reference either;
 *    (2) a good message (data_err without BARE bits), dot-stuffed again
 *        and followed by ".\r\n", must read back as itself, whole, with
 *        no bare CR/LF: nothing in an accepted message can be turned
 *        into a terminator.
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "buf.h"
#include "smtp_parser.h"
#include "../tests/unit/smtp_reference.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define CHECK(x) do { if (!(x)) abort(); } while (0)

typedef struct run {
	const uint8_t *stream;  /* the whole input */
	size_t stream_len;
	smtp_limits lim;
	eng_buf out;            /* the transcript */
	eng_buf msg;            /* the current DATA/BDAT message */
	smtp_event_type slice_type;
	bool in_data;
	size_t data_start;      /* stream offset where the DATA bytes begin */
} run;

static void check_str(const char *s, size_t n)
{
	if (s == NULL)
		return;
	CHECK(s[n] == '\0' && memchr(s, '\0', n) == NULL);
}

static void render_command(eng_buf *out, const smtp_command *c)
{
	const smtp_path *pa = &c->path;

	check_str(c->verb_text, c->verb_len);
	check_str(c->arg, c->arg_len);
	check_str(c->auth_initial, c->auth_initial_len);
	check_str(pa->mailbox, pa->mailbox_len);
	check_str(pa->local, pa->local_len);
	check_str(pa->domain, pa->domain_len);
	check_str(pa->route, pa->route_len);
	check_str(c->envid, c->envid_len);
	check_str(c->orcpt_type, c->orcpt_type_len);
	check_str(c->orcpt_addr, c->orcpt_addr_len);
	CHECK(c->nparams <= SMTP_MAX_PARAMS);
	eng_buf_printf(out, "C %d %s|%s|%s|%s|%s|%d%d%d%d", (int)c->verb,
		       c->verb_text, c->arg != NULL ? c->arg : "-",
		       pa->route != NULL ? pa->route : "-",
		       pa->local != NULL ? pa->local : "-",
		       pa->domain != NULL ? pa->domain : "-", pa->null_path,
		       pa->quoted_local, pa->domain_literal, pa->utf8);
	for (unsigned i = 0; i < c->nparams; i++) {
		check_str(c->params[i].key, c->params[i].key_len);
		check_str(c->params[i].value, c->params[i].value_len);
		eng_buf_printf(out, " %s=%s", c->params[i].key,
			       c->params[i].value != NULL ? c->params[i].value : "");
	}
	if (c->verb == SMTP_MAIL || c->verb == SMTP_RCPT) {
		/* mailbox = local "@" domain, or Postmaster alone */
		CHECK(pa->null_path ||
		      (pa->domain_len == 0 && pa->mailbox_len == pa->local_len) ||
		      pa->mailbox_len == pa->local_len + 1 + pa->domain_len);
	}
	eng_buf_printf(out, " %llu %d %d %d %u %llu %d\n", (unsigned long long)c->size,
		       (int)c->body, c->smtputf8, (int)c->ret, c->notify,
		       (unsigned long long)c->bdat_size, c->bdat_last);
}

/* Oracle (2): stuffed(msg) + ".\r\n" reads back as msg, whole. */
static void check_restuff(const smtp_limits *lim, const eng_buf *msg)
{
	eng_buf wire = ENG_BUF_INIT, back = ENG_BUF_INIT;
	smtp_parser *p = smtp_parser_new(lim);
	size_t off = 0;
	bool ended = false;

	for (size_t i = 0; i < msg->len; i++) {
		bool line_start = i == 0 || (i >= 2 && msg->data[i - 2] == '\r' &&
					     msg->data[i - 1] == '\n');

		if (line_start && msg->data[i] == '.')
			eng_buf_putc(&wire, '.');
		eng_buf_putc(&wire, msg->data[i]);
	}
	eng_buf_append(&wire, ".\r\n", 3);
	smtp_parser_begin_data(p);
	while (!ended) {
		smtp_event ev;
		size_t n = smtp_parser_feed(p, (const uint8_t *)wire.data + off,
					    wire.len - off, &ev);

		off += n;
		if (ev.type == SMTP_EV_DATA) {
			eng_buf_append(&back, ev.data, ev.len);
		} else {
			CHECK(ev.type == SMTP_EV_DATA_END);
			CHECK((ev.data_err & (SMTP_DATA_BARE_CR | SMTP_DATA_BARE_LF)) == 0);
			ended = true;
		}
	}
	CHECK(off == wire.len);
	CHECK(back.len == msg->len &&
	      (msg->len == 0 || memcmp(back.data, msg->data, msg->len) == 0));
	smtp_parser_free(&p);
	eng_buf_free(&wire);
	eng_buf_free(&back);
}

/* Oracle (1), at DATA_END (end = stream offset after the terminator). */
static void check_message(run *r, const smtp_event *ev, size_t end)
{
	eng_buf ref = ENG_BUF_INIT;
	unsigned ref_err;
	size_t used = smtp_reference_data(r->stream + r->data_start,
					  r->stream_len - r->data_start, &ref, &ref_err);

	CHECK(used == end - r->data_start);
	CHECK(ref.len == r->msg.len &&
	      (ref.len == 0 || memcmp(ref.data, r->msg.data, ref.len) == 0));
	CHECK((ev->data_err & (SMTP_DATA_BARE_CR | SMTP_DATA_BARE_LF)) == ref_err);
	CHECK(ev->data_bytes == r->msg.len);
	if (ref_err == 0)
		check_restuff(&r->lim, &r->msg);
	eng_buf_free(&ref);
}

static void flush_slices(run *r)
{
	if (r->slice_type == SMTP_EV_NEED_MORE)
		return;
	eng_buf_printf(&r->out, "%c %zu:", r->slice_type == SMTP_EV_DATA ? 'D' : 'B',
		       r->msg.len);
	eng_buf_append(&r->out, r->msg.data, r->msg.len);
	eng_buf_putc(&r->out, '\n');
	r->slice_type = SMTP_EV_NEED_MORE;
}

/* One event; at is the stream offset after the bytes consumed for it. */
static void handle(run *r, smtp_parser *p, const smtp_event *ev, size_t at)
{
	if (ev->type == SMTP_EV_DATA || ev->type == SMTP_EV_BDAT) {
		CHECK(ev->len > 0);
		if (r->slice_type == SMTP_EV_NEED_MORE)
			eng_buf_reset(&r->msg);
		r->slice_type = ev->type;
		eng_buf_append(&r->msg, ev->data, ev->len);
		return;
	}
	switch (ev->type) {
	case SMTP_EV_COMMAND:
		flush_slices(r);
		render_command(&r->out, &ev->cmd);
		if (ev->cmd.verb == SMTP_DATA) {
			smtp_parser_begin_data(p);
			r->in_data = true;
			r->data_start = at;
			eng_buf_reset(&r->msg);
		} else if (ev->cmd.verb == SMTP_BDAT) {
			smtp_parser_begin_bdat(p, ev->cmd.bdat_size);
			eng_buf_reset(&r->msg);
		} else if (ev->cmd.verb == SMTP_AUTH && ev->cmd.auth_initial == NULL) {
			smtp_parser_expect_line(p);
		}
		break;
	case SMTP_EV_ERROR:
		flush_slices(r);
		CHECK(ev->err < 0 && (ev->reply_code == 500 || ev->reply_code == 501 ||
				      ev->reply_code == 555));
		CHECK(ev->reply_status != NULL && ev->reply_text != NULL);
		eng_buf_printf(&r->out, "E %d %d %s\n", ev->err, ev->reply_code,
			       ev->reply_status);
		break;
	case SMTP_EV_DATA_END:
		CHECK(r->in_data);
		check_message(r, ev, at);
		r->in_data = false;
		flush_slices(r);
		eng_buf_printf(&r->out, "END %u %llu %llu\n", ev->data_err,
			       (unsigned long long)ev->long_lines,
			       (unsigned long long)ev->nul_bytes);
		break;
	case SMTP_EV_BDAT_END:
		flush_slices(r);
		eng_buf_puts(&r->out, "BEND\n");
		break;
	case SMTP_EV_LINE:
		flush_slices(r);
		check_str(ev->line, ev->line_len);
		eng_buf_printf(&r->out, "L %s\n", ev->line);
		break;
	default:
		abort();
	}
}

/* Feeds in pieces of at most step bytes (0: split only at cut). */
static void transcript(const uint8_t *in, size_t len, size_t cut, size_t step,
		       const smtp_limits *lim, eng_buf *out)
{
	smtp_parser *p = smtp_parser_new(lim);
	run r = { in, len, *lim, ENG_BUF_INIT, ENG_BUF_INIT, SMTP_EV_NEED_MORE, false, 0 };
	size_t pos = 0, line_max = lim->line_max;
	smtp_event ev;

	if (line_max < SMTP_LINE_MAX_MIN)
		line_max = SMTP_LINE_MAX_MIN;
	while (pos < len) {
		size_t end = step != 0 ? pos + step : (pos < cut ? cut : len);
		size_t off = 0, piece;
		uint8_t *copy;

		if (end > len)
			end = len;
		piece = end - pos;
		copy = malloc(piece);  /* exact size: ASan sees an overread */
		CHECK(copy != NULL);
		memcpy(copy, in + pos, piece);
		for (;;) {
			size_t n = smtp_parser_feed(p, copy + off, piece - off, &ev);

			CHECK(n <= piece - off);
			CHECK(smtp_parser_pending(p) < line_max);
			if (ev.type == SMTP_EV_DATA || ev.type == SMTP_EV_BDAT)
				CHECK((ev.data >= copy + off && ev.data + ev.len <= copy + off + n) ||
				      (ev.len == 1 && ev.data[0] == '\r'));
			off += n;
			if (ev.type == SMTP_EV_NEED_MORE) {
				CHECK(off == piece);
				break;
			}
			handle(&r, p, &ev, pos + off);
		}
		free(copy);
		pos = end;
	}
	while (smtp_parser_feed(p, (const uint8_t *)"", 0, &ev) == 0 &&
	       ev.type != SMTP_EV_NEED_MORE)
		handle(&r, p, &ev, len);
	flush_slices(&r);
	if (r.in_data) {
		/* The stream ended inside a message: the reference must agree. */
		eng_buf ref = ENG_BUF_INIT;
		unsigned ref_err;

		CHECK(smtp_reference_data(in + r.data_start, len - r.data_start, &ref,
					  &ref_err) == 0);
		eng_buf_free(&ref);
	}
	smtp_parser_free(&p);
	eng_buf_free(&r.msg);
	*out = r.out;
}

static bool same(const eng_buf *a, const eng_buf *b)
{
	return a->len == b->len && (a->len == 0 || memcmp(a->data, b->data, a->len) == 0);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	eng_buf a = ENG_BUF_INIT, b = ENG_BUF_INIT, c = ENG_BUF_INIT;
	smtp_limits lim;
	size_t cut;

	if (size < 2)
		return 0;
	smtp_limits_default(&lim);
	/* Small DATA limits half of the time, so that they are reached. */
	if (data[0] & 0x80) {
		lim.line_max = SMTP_LINE_MAX_MIN;
		lim.data_line_max = 1 + (data[0] & 0x1f);
		lim.message_max = (uint64_t)(data[0] & 0x60);
	}
	cut = (size - 2) * data[1] / 255;
	transcript(data + 2, size - 2, size - 2, 0, &lim, &a);
	transcript(data + 2, size - 2, cut, 0, &lim, &b);
	CHECK(same(&a, &b));
	if (size <= 2048) {
		transcript(data + 2, size - 2, 0, 1, &lim, &c);
		CHECK(same(&a, &c));
	}
	eng_buf_free(&a);
	eng_buf_free(&b);
	eng_buf_free(&c);
	return 0;
}
