/*
 * The SMTP codec (smtp_parser.h has the contract): the parser object, its
 * limits and modes, and smtp_parser_feed, which hands the input to the
 * current mode (smtp_parser_private.h maps the other pieces).
 *
 * Modes: command lines (and one SASL line) are buffered up to line_max,
 * then parsed (smtp_command.c); DATA and BDAT bodies are never buffered
 * (smtp_data.c).
 */
#include "smtp_parser_private.h"

#include <stdio.h>
#include <stdlib.h>

const char *smtp_strerror(int err)
{
	switch (err) {
	case SMTP_EOK: return "OK";
	case SMTP_ELINE: return "Line too long";
	case SMTP_ENUL: return "NUL byte in command";
	case SMTP_EBARE: return "Bare CR or LF in command";
	case SMTP_EPARAM: return "Bad parameter";
	default: return "Syntax error";
	}
}

bool smtp_data_err_reply(unsigned int data_err, int *code_r,
			 const char **status_r, const char **text_r)
{
	if (data_err & (SMTP_DATA_BARE_CR | SMTP_DATA_BARE_LF)) {
		*code_r = 550;
		*status_r = "5.6.0";
		*text_r = "Message contains bare CR or LF";
	} else if (data_err & SMTP_DATA_TOO_BIG) {
		*code_r = 552;
		*status_r = "5.3.4";
		*text_r = "Message too big";
	} else if (data_err & SMTP_DATA_LONG_LINE) {
		*code_r = 500;
		*status_r = "5.5.2";
		*text_r = "Message line too long";
	} else {
		return false;
	}
	return true;
}

void smtp_limits_default(smtp_limits *lim)
{
	lim->line_max = SMTP_LINE_MAX_DEFAULT;
	lim->data_line_max = SMTP_DATA_LINE_MAX_DEFAULT;
	lim->message_max = SMTP_MESSAGE_MAX_DEFAULT;
}

static void *xmalloc(size_t n)
{
	void *m = malloc(n);

	if (m == NULL) {
		fprintf(stderr, "smtp_parser: out of memory\n");
		abort();
	}
	return m;
}

smtp_parser *smtp_parser_new(const smtp_limits *lim)
{
	smtp_parser *p = xmalloc(sizeof(*p));

	memset(p, 0, sizeof(*p));
	if (lim != NULL)
		p->lim = *lim;
	else
		smtp_limits_default(&p->lim);
	if (p->lim.line_max == 0)
		p->lim.line_max = SMTP_LINE_MAX_DEFAULT;
	if (p->lim.line_max < SMTP_LINE_MAX_MIN)
		p->lim.line_max = SMTP_LINE_MAX_MIN;
	if (p->lim.line_max > SMTP_LINE_MAX_MAX)
		p->lim.line_max = SMTP_LINE_MAX_MAX;
	p->buf = xmalloc(p->lim.line_max);
	/*
	 * A command's fields are substrings of its line, each copied at most
	 * five times (verb; route + mailbox; local + domain; parameters;
	 * ORCPT's two halves), each with a NUL.
	 */
	p->fields_cap = 5 * p->lim.line_max + 64;
	p->fields = xmalloc(p->fields_cap);
	return p;
}

static void wipe_last(smtp_parser *p)
{
	wipe(p->buf, p->wipe_len);
	p->wipe_len = 0;
	wipe(p->fields, p->fields_used);
	p->fields_used = 0;
}

void smtp_parser_free(smtp_parser **pp)
{
	smtp_parser *p;

	if (pp == NULL || *pp == NULL)
		return;
	p = *pp;
	wipe_last(p);
	wipe(p->buf, p->len);
	free(p->buf);
	free(p->fields);
	free(p);
	*pp = NULL;
}

void smtp_parser_reset(smtp_parser *p)
{
	wipe_last(p);
	wipe(p->buf, p->len);
	p->len = 0;
	p->mode = MODE_CMD;
	p->discarding = false;
	p->bdat_left = 0;
}

void smtp_parser_begin_data(smtp_parser *p)
{
	p->mode = MODE_DATA;
	p->dstate = D_TEXT;
	p->at_line_start = true;
	p->last_cr = false;
	p->line_counted = false;
	p->line_bytes = 0;
	p->data_err = 0;
	p->data_bytes = 0;
	p->long_lines = 0;
	p->nul_bytes = 0;
}

void smtp_parser_begin_bdat(smtp_parser *p, uint64_t size)
{
	p->mode = MODE_BDAT;
	p->bdat_left = size;
}

void smtp_parser_expect_line(smtp_parser *p)
{
	p->mode = MODE_LINE;
}

size_t smtp_parser_pending(const smtp_parser *p)
{
	return p->len;
}

bool smtp_parser_in_message(const smtp_parser *p)
{
	return p->mode == MODE_DATA || p->mode == MODE_BDAT;
}

/* ---- Fields ---- */

const char *smtp_field(smtp_parser *p, const char *s, size_t n)
{
	char *f;

	if (p->fields_used + n + 1 > p->fields_cap) {
		fprintf(stderr, "smtp_parser: field area overflow\n");
		abort();  /* a bug: the cap covers every line */
	}
	f = p->fields + p->fields_used;
	memcpy(f, s, n);
	f[n] = '\0';
	p->fields_used += n + 1;
	return f;
}

size_t smtp_parser_feed(smtp_parser *p, const uint8_t *data, size_t len,
			smtp_event *ev)
{
	memset(ev, 0, sizeof(*ev));
	ev->type = SMTP_EV_NEED_MORE;
	ev->cmd.verb_text = "";
	wipe_last(p);
	switch (p->mode) {
	case MODE_DATA:
		return smtp_feed_data(p, data, len, ev);
	case MODE_BDAT:
		return smtp_feed_bdat(p, data, len, ev);
	default:
		return smtp_feed_line(p, data, len, ev);
	}
}
