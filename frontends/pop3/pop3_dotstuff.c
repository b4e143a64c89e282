/*
 * The RETR/TOP dot-stuffing encoder (pop3_parser.h has the contract).
 *
 * It works a line at a time with memchr, not a byte at a time: inside a
 * line only the first byte ('.') and the last one before the LF (CR or
 * not) matter, so a run of line bytes is copied whole. The state between
 * calls is just where the current line stands, so any split of the input
 * gives the same output.
 */
#include "pop3_parser.h"

#include <string.h>

void pop3_dotstuff_init(pop3_dotstuff *d)
{
	memset(d, 0, sizeof(*d));
}

void pop3_dotstuff_init_top(pop3_dotstuff *d, uint64_t body_lines)
{
	memset(d, 0, sizeof(*d));
	d->top = true;
	d->in_header = true;
	d->body_lines_left = body_lines;
}

bool pop3_dotstuff_done(const pop3_dotstuff *d)
{
	return d->done;
}

/* At an input LF: the line is over; TOP counts it. */
static void end_line(pop3_dotstuff *d)
{
	bool empty = d->line_bytes == 0 || (d->line_bytes == 1 && d->last_cr);

	d->line_bytes = 0;
	d->last_cr = false;
	if (!d->top)
		return;
	if (d->in_header) {
		if (!empty)
			return;
		d->in_header = false;
	} else {
		d->body_lines_left--;
	}
	if (d->body_lines_left == 0)
		d->done = true;
}

size_t pop3_dotstuff_feed(pop3_dotstuff *d, const uint8_t *in, size_t len,
			  uint8_t *out)
{
	size_t pos = 0, n = 0;

	while (pos < len && !d->done && !d->finished) {
		const uint8_t *lf = memchr(in + pos, '\n', len - pos);
		size_t chunk = (lf != NULL ? (size_t)(lf - in) : len) - pos;

		if (chunk > 0) {
			if (d->line_bytes == 0 && in[pos] == '.')
				out[n++] = '.';
			memcpy(out + n, in + pos, chunk);
			n += chunk;
			d->line_bytes += chunk;
			d->last_cr = in[pos + chunk - 1] == '\r';
			pos += chunk;
		}
		if (lf == NULL)
			break;
		/* A bare LF becomes CRLF; a CR before it was already copied. */
		if (!d->last_cr)
			out[n++] = '\r';
		out[n++] = '\n';
		pos++;
		end_line(d);
	}
	return n;
}

size_t pop3_dotstuff_finish(pop3_dotstuff *d, uint8_t *out)
{
	size_t n = 0;

	if (d->finished)
		return 0;
	d->finished = true;
	/* A last line without a line end gets a CRLF of its own (after a
	 * trailing bare CR too: the CR is content, as anywhere else). */
	if (d->line_bytes > 0) {
		out[n++] = '\r';
		out[n++] = '\n';
	}
	memcpy(out + n, ".\r\n", 3);
	return n + 3;
}
