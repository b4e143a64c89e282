/*
 * DATA and BDAT bodies. DATA is a byte-at-a-time state machine that never
 * buffers: it hands out runs of the caller's input between the dots it
 * removes, and holds back at most one CR (the one in "CRLF . CR" that may
 * be the start of the terminator), released from a constant. BDAT counts
 * bytes down.
 *
 * The DATA machine (the smuggling rule lives here):
 *   TEXT   at_line_start means "the previous two bytes were CR LF" (or the
 *          message just began). A '.' there is removed and -> DOT. A CR
 *          sets last_cr; a byte after a CR that is not LF is a bare CR; an
 *          LF not after a CR is a bare LF and does NOT start a line, so a
 *          '.' after it is text, never a terminator.
 *   DOT    CR -> DOT_CR (the CR held); anything else is text (the dot was
 *          stuffing), processed in TEXT with at_line_start false.
 *   DOT_CR LF -> the end (DATA_END). Anything else: the held CR is released
 *          as a slice of its own, and it was a bare CR.
 */
#include "smtp_parser_private.h"

static const uint8_t held_cr[1] = { '\r' };

/* ---- DATA ---- */

static void count_line_byte(smtp_parser *p)
{
	p->line_bytes++;
	if (p->lim.data_line_max != 0 && !p->line_counted &&
	    p->line_bytes > p->lim.data_line_max - 1) {
		p->line_counted = true;
		p->long_lines++;
		p->data_err |= SMTP_DATA_LONG_LINE;
	}
}

static void new_line(smtp_parser *p)
{
	p->line_bytes = 0;
	p->line_counted = false;
}

static void fill_data_counters(const smtp_parser *p, smtp_event *ev)
{
	ev->data_err = p->data_err;
	ev->data_bytes = p->data_bytes;
	ev->long_lines = p->long_lines;
	ev->nul_bytes = p->nul_bytes;
}

static void emit_data(smtp_parser *p, const uint8_t *d, size_t n, smtp_event *ev)
{
	p->data_bytes += n;
	if (p->lim.message_max != 0 && p->data_bytes > p->lim.message_max)
		p->data_err |= SMTP_DATA_TOO_BIG;
	ev->type = SMTP_EV_DATA;
	ev->data = d;
	ev->len = n;
	fill_data_counters(p, ev);
}

/*
 * Text bytes from data[i]: consumes them up to the end of the input or a
 * line-start dot. Returns the index it stopped at.
 */
static size_t scan_text(smtp_parser *p, const uint8_t *data, size_t len, size_t i)
{
	while (i < len) {
		uint8_t b = data[i];

		if (p->last_cr) {
			p->last_cr = false;
			if (b == '\n') {
				p->at_line_start = true;
				new_line(p);
				i++;
				continue;
			}
			p->data_err |= SMTP_DATA_BARE_CR;
		}
		if (b == '\n') {
			/* A bare LF: an error, and not a line start. */
			p->data_err |= SMTP_DATA_BARE_LF;
			p->at_line_start = false;
			new_line(p);
			i++;
			continue;
		}
		if (b == '.' && p->at_line_start)
			return i;
		p->at_line_start = false;
		if (b == '\r')
			p->last_cr = true;
		else if (b == 0)
			p->nul_bytes++;
		count_line_byte(p);
		i++;
	}
	return i;
}

size_t smtp_feed_data(smtp_parser *p, const uint8_t *data, size_t len, smtp_event *ev)
{
	size_t i = 0, start;

	if (len == 0)
		return 0;
	if (p->dstate == D_DOT_CR) {
		if (data[0] == '\n') {
			p->mode = MODE_CMD;
			ev->type = SMTP_EV_DATA_END;
			fill_data_counters(p, ev);
			return 1;
		}
		/* "CRLF . CR x": the CR was text after all, and bare. */
		p->dstate = D_TEXT;
		p->last_cr = true;
		emit_data(p, held_cr, 1, ev);
		return 0;
	}
	if (p->dstate == D_DOT) {
		if (data[0] == '\r') {
			p->dstate = D_DOT_CR;
			count_line_byte(p);
			return 1 + smtp_feed_data(p, data + 1, len - 1, ev);
		}
		/* The dot was stuffing: what follows is text. */
		p->dstate = D_TEXT;
		p->at_line_start = false;
	}
	start = i;
	i = scan_text(p, data, len, i);
	if (i > start) {
		emit_data(p, data + start, i - start, ev);
		return i;
	}
	if (i == len)
		return len;  /* nothing: NEED_MORE */
	/* A line-start dot: removed, and it may begin the terminator. */
	p->dstate = D_DOT;
	p->at_line_start = false;
	new_line(p);
	count_line_byte(p);
	return 1 + smtp_feed_data(p, data + 1, len - 1, ev);
}

/* ---- BDAT ---- */

size_t smtp_feed_bdat(smtp_parser *p, const uint8_t *data, size_t len, smtp_event *ev)
{
	size_t n;

	if (p->bdat_left == 0) {
		p->mode = MODE_CMD;
		ev->type = SMTP_EV_BDAT_END;
		return 0;
	}
	n = p->bdat_left < len ? (size_t)p->bdat_left : len;
	if (n == 0)
		return 0;
	p->bdat_left -= n;
	ev->type = SMTP_EV_BDAT;
	ev->data = data;
	ev->len = n;
	return n;
}
