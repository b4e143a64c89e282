/*
 * The DATA rules of the SMTP codec (frontends/mx/smtp_parser.h), written
 * the simplest way, not incrementally: an independent reference for the
 * unit test (test_smtp_parser.c) and the fuzzer (fuzz/fuzz_smtp.c).
 *
 * The message ends at the first ".\r\n" at the start of the input or right
 * after a "\r\n"; before it, a '.' at such a line start is removed; a CR
 * not followed by LF or an LF not preceded by CR is bare. Appends the
 * message to out, sets *err_r (SMTP_DATA_BARE_CR/LF bits) and returns the
 * bytes consumed, terminator included (0: no end in the input).
 */
#ifndef SMTP_REFERENCE_H
#define SMTP_REFERENCE_H

#include <stdbool.h>
#include <string.h>

#include "buf.h"
#include "smtp_parser.h"

static bool smtp_ref_line_start(const uint8_t *in, size_t i)
{
	return i == 0 || (i >= 2 && in[i - 2] == '\r' && in[i - 1] == '\n');
}

static size_t smtp_reference_data(const uint8_t *in, size_t len, eng_buf *out,
				  unsigned *err_r)
{
	size_t t;

	*err_r = 0;
	for (t = 0; t + 3 <= len; t++) {
		if (smtp_ref_line_start(in, t) && memcmp(in + t, ".\r\n", 3) == 0)
			break;
	}
	if (t + 3 > len)
		return 0;
	for (size_t i = 0; i < t; i++) {
		if (in[i] == '\r' && in[i + 1] != '\n')
			*err_r |= SMTP_DATA_BARE_CR;
		if (in[i] == '\n' && (i == 0 || in[i - 1] != '\r'))
			*err_r |= SMTP_DATA_BARE_LF;
		if (smtp_ref_line_start(in, i) && in[i] == '.')
			continue;
		eng_buf_putc(out, (char)in[i]);
	}
	return t + 3;
}

#endif
