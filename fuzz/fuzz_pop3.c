/*
 * Fuzz target for the POP3 codec (frontends/pop3/pop3_parser.h).
 *
 * Input: byte 0 picks the parser's limits and the TOP line count, byte 1
 * where to split, the rest is the stream. Checks:
 *  - the command parser gives the same results fed whole, in two pieces
 *    and (for short inputs) one byte at a time; every argument is
 *    NUL-terminated at its length; it never buffers past its limit;
 *  - the dot-stuffing encoder, fed in two pieces, writes output that
 *    un-stuffs to the input with bare LF made CRLF and a CRLF added at an
 *    unterminated end, within POP3_DOTSTUFF_MAX_OUT; TOP's output
 *    un-stuffs to the header and the first n body lines of that.
 *
 * The codec's sources are compiled in directly (as in its unit test), so
 * the target does not depend on how frontends/pop3/ builds the daemon.
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "buf.h"

#include "../frontends/pop3/pop3_parser.c"
#include "../frontends/pop3/pop3_dotstuff.c"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

/* Feeds in pieces of at most step bytes (0: split only at cut). */
static void transcript(const uint8_t *in, size_t len, size_t cut, size_t step,
		       size_t max_line, size_t max_sasl, eng_buf *out)
{
	pop3_parser *p = pop3_parser_new(max_line, max_sasl);
	size_t pos = 0, limit;

	if (max_line == 0)
		max_line = POP3_MAX_LINE_BYTES;
	if (max_sasl == 0)
		max_sasl = POP3_MAX_SASL_LINE_BYTES;
	limit = max_line > max_sasl ? max_line : max_sasl;

	while (pos < len) {
		size_t end = step != 0 ? pos + step : (pos < cut ? cut : len);
		uint8_t *copy;
		size_t off = 0, piece;

		if (end > len)
			end = len;
		piece = end - pos;
		copy = malloc(piece);  /* exact size: ASan sees an overread */
		if (copy == NULL)
			abort();
		memcpy(copy, in + pos, piece);
		while (off < piece) {
			pop3_command cmd;
			size_t used = 0;
			int ret = pop3_parser_feed(p, copy + off, piece - off, &used, &cmd);

			if (used > piece - off)
				abort();
			off += used;
			if (pop3_parser_pending(p) > limit + 1)
				abort();
			if (ret == 0) {
				if (off != piece)
					abort();
				break;
			}
			if (used == 0 || ret > 1 || ret < POP3_EBASE64)
				abort();
			eng_buf_printf(out, "%d %d %u", ret, (int)cmd.verb, cmd.argc);
			if (cmd.argc > POP3_MAX_ARGS || (ret < 0 && cmd.argc != 0))
				abort();
			for (unsigned int a = 0; a < cmd.argc; a++) {
				if (cmd.args[a][cmd.arg_lens[a]] != '\0' ||
				    memchr(cmd.args[a], '\0', cmd.arg_lens[a]) != NULL)
					abort();
				eng_buf_printf(out, " %zu:", cmd.arg_lens[a]);
				eng_buf_append(out, cmd.args[a], cmd.arg_lens[a]);
				eng_buf_printf(out, "=%u", cmd.nums[a]);
			}
			if (ret == 1 && cmd.verb == POP3_VERB_UNKNOWN)
				eng_buf_append(out, cmd.verb_text, cmd.verb_len);
			eng_buf_putc(out, '\n');
			if (ret == 1 && cmd.verb == POP3_VERB_AUTH && cmd.argc == 1)
				pop3_parser_expect_sasl(p);
			if (ret == 1 && cmd.verb == POP3_VERB_STLS)
				pop3_parser_reset(p);
		}
		free(copy);
		pos = end;
	}
	pop3_parser_free(&p);
}

static void check_parser(const uint8_t *in, size_t len, size_t cut,
			 size_t max_line, size_t max_sasl)
{
	eng_buf a = ENG_BUF_INIT, b = ENG_BUF_INIT, c = ENG_BUF_INIT;

	transcript(in, len, len, 0, max_line, max_sasl, &a);
	transcript(in, len, cut, 0, max_line, max_sasl, &b);
	if (a.len != b.len || (a.len > 0 && memcmp(a.data, b.data, a.len) != 0))
		abort();
	if (len <= 512) {
		transcript(in, len, 0, 1, max_line, max_sasl, &c);
		if (a.len != c.len || (a.len > 0 && memcmp(a.data, c.data, a.len) != 0))
			abort();
	}
	eng_buf_free(&a);
	eng_buf_free(&b);
	eng_buf_free(&c);
}

/* in with every bare LF made CRLF, and CRLF added if it does not end in LF. */
static void normalise(const uint8_t *in, size_t len, eng_buf *out)
{
	for (size_t i = 0; i < len; i++) {
		if (in[i] == '\n' && (i == 0 || in[i - 1] != '\r'))
			eng_buf_putc(out, '\r');
		eng_buf_putc(out, (char)in[i]);
	}
	if (len > 0 && in[len - 1] != '\n')
		eng_buf_append(out, "\r\n", 2);
}

/* Checks the wire form and undoes the stuffing into out. */
static void unstuff(const uint8_t *w, size_t len, eng_buf *out)
{
	size_t pos = 0;

	if (len < 3 || memcmp(w + len - 3, ".\r\n", 3) != 0)
		abort();
	len -= 3;
	if (len > 0 && (len < 2 || w[len - 2] != '\r' || w[len - 1] != '\n'))
		abort();
	while (pos < len) {
		const uint8_t *lf = memchr(w + pos, '\n', len - pos);
		size_t end = (size_t)(lf - w) + 1;

		if (end < pos + 2 || w[end - 2] != '\r')
			abort();  /* a bare LF on the wire */
		if (w[pos] == '.') {
			if (end - pos < 4 || w[pos + 1] != '.')
				abort();  /* an unstuffed dot (or the terminator) */
			pos++;
		}
		eng_buf_append(out, w + pos, end - pos);
		pos = end;
	}
}

static size_t encode(const uint8_t *in, size_t len, size_t cut, bool top,
		     uint64_t n, uint8_t *out)
{
	pop3_dotstuff d;
	size_t o = 0, w;

	if (top)
		pop3_dotstuff_init_top(&d, n);
	else
		pop3_dotstuff_init(&d);
	w = pop3_dotstuff_feed(&d, in, cut, out);
	if (w > POP3_DOTSTUFF_MAX_OUT(cut))
		abort();
	o += w;
	w = pop3_dotstuff_feed(&d, in + cut, len - cut, out + o);
	if (w > POP3_DOTSTUFF_MAX_OUT(len - cut))
		abort();
	o += w;
	w = pop3_dotstuff_finish(&d, out + o);
	if (w > POP3_DOTSTUFF_FINISH_MAX)
		abort();
	return o + w;
}

/* The reference TOP: whole lines of the normalised message. */
static void top_reference(const eng_buf *norm, uint64_t n, eng_buf *out)
{
	size_t pos = 0;
	bool header = true;

	while (pos < norm->len) {
		const char *lf = memchr(norm->data + pos, '\n', norm->len - pos);
		size_t end = (size_t)(lf - norm->data) + 1;

		if (!header) {
			if (n == 0)
				break;
			n--;
		}
		eng_buf_append(out, norm->data + pos, end - pos);
		if (header && end - pos == 2)
			header = false;
		pos = end;
	}
}

static void check_dotstuff(const uint8_t *in, size_t len, size_t cut, uint64_t n)
{
	uint8_t *out = malloc(POP3_DOTSTUFF_MAX_OUT(len) + POP3_DOTSTUFF_FINISH_MAX);
	eng_buf norm = ENG_BUF_INIT, back = ENG_BUF_INIT, top = ENG_BUF_INIT;
	size_t o;

	if (out == NULL)
		abort();
	normalise(in, len, &norm);
	o = encode(in, len, cut, false, 0, out);
	unstuff(out, o, &back);
	if (back.len != norm.len || (norm.len > 0 && memcmp(back.data, norm.data, norm.len) != 0))
		abort();
	eng_buf_reset(&back);
	o = encode(in, len, cut, true, n, out);
	unstuff(out, o, &back);
	top_reference(&norm, n, &top);
	if (back.len != top.len || (top.len > 0 && memcmp(back.data, top.data, top.len) != 0))
		abort();
	eng_buf_free(&norm);
	eng_buf_free(&back);
	eng_buf_free(&top);
	free(out);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	size_t max_line = 0, max_sasl = 0, cut;

	if (size < 2)
		return 0;
	/* Small limits half of the time, so that ELINE is reached often. */
	if (data[0] & 0x80) {
		max_line = 1 + (data[0] & 0x1f);
		max_sasl = 1 + ((data[0] >> 2) & 0x1f);
	}
	cut = (size - 2) * data[1] / 255;
	check_parser(data + 2, size - 2, cut, max_line, max_sasl);
	check_dotstuff(data + 2, size - 2, cut, data[0] & 0x7);
	return 0;
}
