/*
 * SMTP command lines: a line is buffered up to line_max, then parsed into
 * a verb and its arguments (smtp_command); once a line passes its limit
 * the rest of it, up to the next LF, is skipped. A NUL, a bare CR or LF,
 * or a line not ended by CRLF is an error event with its reply. MODE_LINE
 * takes one raw line (a SASL response).
 */
#include "smtp_parser_private.h"

#include <stdio.h>

static const char *const verb_names[SMTP_VERB_COUNT] = {
	[SMTP_UNKNOWN] = "",
	[SMTP_HELO] = "HELO",
	[SMTP_EHLO] = "EHLO",
	[SMTP_MAIL] = "MAIL",
	[SMTP_RCPT] = "RCPT",
	[SMTP_DATA] = "DATA",
	[SMTP_BDAT] = "BDAT",
	[SMTP_RSET] = "RSET",
	[SMTP_NOOP] = "NOOP",
	[SMTP_QUIT] = "QUIT",
	[SMTP_VRFY] = "VRFY",
	[SMTP_EXPN] = "EXPN",
	[SMTP_HELP] = "HELP",
	[SMTP_STARTTLS] = "STARTTLS",
	[SMTP_AUTH] = "AUTH",
};

const char *smtp_verb_name(smtp_verb verb)
{
	if ((unsigned)verb >= SMTP_VERB_COUNT)
		return "";
	return verb_names[verb];
}

/* ---- Command lines ---- */

typedef struct line_result {
	smtp_err err;
	int code;
	const char *status;
	const char *text;
} line_result;

static line_result ok_result(void)
{
	line_result r = { SMTP_EOK, 0, NULL, NULL };

	return r;
}

static line_result err_result(smtp_err err, int code, const char *status,
			      const char *text)
{
	line_result r = { err, code, status, text };

	return r;
}

static line_result syntax_501(void)
{
	return err_result(SMTP_ESYNTAX, 501, "5.5.4", "Syntax error in parameters or arguments");
}

static size_t skip_spaces(const char *s, size_t n, size_t i)
{
	while (i < n && s[i] == ' ')
		i++;
	return i;
}

static size_t token_end(const char *s, size_t n, size_t i)
{
	while (i < n && s[i] != ' ')
		i++;
	return i;
}

/* The parameters after a path: (SP+ keyword["=" value])* SP*. */
static line_result parse_params(smtp_parser *p, const char *s, size_t n, size_t i,
				smtp_command *cmd)
{
	bool is_mail = cmd->verb == SMTP_MAIL;
	unsigned seen = 0;

	for (;;) {
		size_t start, end, eq;
		smtp_param *pr;
		int ret;

		if (i < n && s[i] != ' ')
			return syntax_501();  /* "<a@b>X" */
		i = skip_spaces(s, n, i);
		if (i == n)
			return ok_result();
		start = i;
		end = token_end(s, n, i);
		for (eq = start; eq < end && s[eq] != '='; eq++) {
			unsigned char c = (unsigned char)s[eq];

			if (!is_alpha(c) && !is_digit(c) && !(c == '-' && eq > start))
				return syntax_501();
		}
		if (eq == start || (eq < end && eq + 1 == end))
			return syntax_501();  /* no keyword, or "KEY=" */
		for (size_t k = eq + 1; k < end; k++) {
			unsigned char c = (unsigned char)s[k];

			if (c >= 0x80) {
				size_t l = smtp_utf8_char(s, end, k);

				if (l == 0)
					return syntax_501();
				k += l - 1;
			} else if (c < 33 || c == '=' || c > 126) {
				return syntax_501();
			}
		}
		if (cmd->nparams == SMTP_MAX_PARAMS)
			return err_result(SMTP_EPARAM, 555, "5.5.4", "Too many parameters");
		pr = &cmd->params[cmd->nparams++];
		pr->key = smtp_field(p, s + start, eq - start);
		pr->key_len = eq - start;
		if (eq < end) {
			pr->value = smtp_field(p, s + eq + 1, end - eq - 1);
			pr->value_len = end - eq - 1;
		}
		ret = is_mail ? smtp_decode_mail_param(cmd, pr, &seen) :
			smtp_decode_rcpt_param(p, cmd, pr, &seen);
		if (ret == PARAM_UNKNOWN)
			return err_result(SMTP_EPARAM, 555, "5.5.4",
					  "Unsupported or duplicate parameter");
		if (ret == PARAM_BAD)
			return err_result(SMTP_EPARAM, 501, "5.5.4", "Invalid parameter value");
		i = end;
	}
}

/* MAIL FROM:<path> params / RCPT TO:<path> params; s[i] is after the verb's space(s). */
static line_result parse_mail_rcpt(smtp_parser *p, const char *s, size_t n, size_t i,
				   smtp_command *cmd)
{
	bool is_mail = cmd->verb == SMTP_MAIL;
	const char *kw = is_mail ? "FROM:" : "TO:";
	size_t kwl = strlen(kw);

	if (n - i < kwl || !smtp_ieq(s + i, kwl, kw))
		return syntax_501();
	i = skip_spaces(s, n, i + kwl);
	if (!smtp_scan_path(p, s, n, &i, is_mail, &cmd->path)) {
		memset(&cmd->path, 0, sizeof(cmd->path));
		if (is_mail)
			return err_result(SMTP_ESYNTAX, 501, "5.1.7", "Bad sender address syntax");
		return err_result(SMTP_ESYNTAX, 501, "5.1.3", "Bad recipient address syntax");
	}
	return parse_params(p, s, n, i, cmd);
}

/* The length of s[0..n) without its trailing spaces. */
static size_t trim_end(const char *s, size_t n)
{
	while (n > 0 && s[n - 1] == ' ')
		n--;
	return n;
}

static line_result parse_args(smtp_parser *p, const char *s, size_t n, size_t i,
			      smtp_command *cmd)
{
	size_t e;

	n = trim_end(s, n);
	i = skip_spaces(s, n, i);
	switch (cmd->verb) {
	case SMTP_MAIL:
	case SMTP_RCPT:
		return parse_mail_rcpt(p, s, n, i, cmd);
	case SMTP_HELO:
	case SMTP_EHLO: {
		bool lit, utf8 = false;

		e = token_end(s, n, i);
		if (e == i || e != n ||
		    !smtp_valid_domain_or_literal(s + i, e - i, true, &lit, &utf8))
			return syntax_501();
		cmd->arg = smtp_field(p, s + i, e - i);
		cmd->arg_len = e - i;
		cmd->arg_literal = lit;
		return ok_result();
	}
	case SMTP_DATA:
	case SMTP_RSET:
	case SMTP_QUIT:
	case SMTP_STARTTLS:
		return i == n ? ok_result() : syntax_501();
	case SMTP_VRFY:
	case SMTP_EXPN:
		if (i == n)
			return syntax_501();
		/* fall through */
	case SMTP_NOOP:
	case SMTP_HELP:
		cmd->arg = smtp_field(p, s + i, n - i);
		cmd->arg_len = n - i;
		return ok_result();
	case SMTP_AUTH: {
		size_t j;

		e = token_end(s, n, i);
		if (e == i || e - i > 20)
			return syntax_501();
		for (size_t k = i; k < e; k++) {
			unsigned char c = (unsigned char)s[k];

			if (!is_alpha(c) && !is_digit(c) && c != '-' && c != '_')
				return syntax_501();
		}
		cmd->arg = smtp_field(p, s + i, e - i);
		cmd->arg_len = e - i;
		j = skip_spaces(s, n, e);
		if (j == n)
			return ok_result();
		e = token_end(s, n, j);
		if (e != n)
			return syntax_501();
		cmd->auth_initial = smtp_field(p, s + j, e - j);
		cmd->auth_initial_len = e - j;
		return ok_result();
	}
	case SMTP_BDAT:
		e = token_end(s, n, i);
		if (!smtp_parse_u64(s + i, e - i, &cmd->bdat_size))
			return syntax_501();
		i = skip_spaces(s, n, e);
		if (i == n)
			return ok_result();
		e = token_end(s, n, i);
		if (e != n || !smtp_ieq(s + i, e - i, "LAST"))
			return syntax_501();
		cmd->bdat_last = true;
		return ok_result();
	default:
		return ok_result();
	}
}

static smtp_verb lookup_verb(const char *s, size_t n)
{
	for (int v = SMTP_HELO; v < SMTP_VERB_COUNT; v++) {
		if (smtp_ieq(s, n, verb_names[v]))
			return (smtp_verb)v;
	}
	return SMTP_UNKNOWN;
}

/* The line is buf[0..n) without CRLF, free of NUL, CR and LF. */
static line_result parse_command(smtp_parser *p, size_t n, smtp_command *cmd)
{
	const char *s = p->buf;
	size_t vend = token_end(s, n, 0);
	line_result r;

	if (n == 0 || vend == 0)
		return err_result(SMTP_ESYNTAX, 500, "5.5.2", "Syntax error");
	cmd->verb = lookup_verb(s, vend);
	cmd->verb_text = smtp_field(p, s, vend);
	cmd->verb_len = vend;
	if (cmd->verb == SMTP_UNKNOWN)
		return ok_result();
	r = parse_args(p, s, n, vend, cmd);
	if (r.err != SMTP_EOK) {
		smtp_verb verb = cmd->verb;
		const char *vt = cmd->verb_text;
		size_t vl = cmd->verb_len;

		memset(cmd, 0, sizeof(*cmd));
		cmd->verb = verb;
		cmd->verb_text = vt;
		cmd->verb_len = vl;
	}
	return r;
}

static void set_error(smtp_event *ev, line_result r)
{
	ev->type = SMTP_EV_ERROR;
	ev->err = r.err;
	ev->reply_code = r.code;
	ev->reply_status = r.status;
	ev->reply_text = r.text;
}

/* A whole line is in buf[0..len) (the LF not stored). */
static void finish_line(smtp_parser *p, smtp_event *ev)
{
	size_t n = p->len;
	bool line_mode = p->mode == MODE_LINE;
	line_result r;

	p->wipe_len = p->len;
	p->len = 0;
	p->mode = MODE_CMD;
	if (memchr(p->buf, '\0', n) != NULL) {
		set_error(ev, err_result(SMTP_ENUL, 500, "5.5.2", "NUL byte in command"));
		return;
	}
	if (n == 0 || p->buf[n - 1] != '\r' || memchr(p->buf, '\r', n - 1) != NULL) {
		set_error(ev, err_result(SMTP_EBARE, 500, "5.5.2", "Bare CR or LF in command"));
		return;
	}
	n--;
	if (line_mode) {
		ev->type = SMTP_EV_LINE;
		ev->line = smtp_field(p, p->buf, n);
		ev->line_len = n;
		return;
	}
	r = parse_command(p, n, &ev->cmd);
	if (r.err != SMTP_EOK) {
		set_error(ev, r);
		return;
	}
	ev->type = SMTP_EV_COMMAND;
}

size_t smtp_feed_line(smtp_parser *p, const uint8_t *data, size_t len, smtp_event *ev)
{
	size_t cap = p->lim.line_max - 1;  /* stored bytes: the line and its CR */
	size_t pos = 0;

	while (pos < len) {
		const uint8_t *lf = memchr(data + pos, '\n', len - pos);
		size_t chunk = (lf != NULL ? (size_t)(lf - data) : len) - pos;

		if (p->discarding) {
			if (lf == NULL)
				return len;
			pos += chunk + 1;
			p->discarding = false;
			p->mode = MODE_CMD;  /* a SASL line is over too */
			continue;
		}
		if (p->len + chunk > cap) {
			/* Report at the first byte past the limit. */
			pos += cap - p->len + 1;
			wipe(p->buf, p->len);
			p->len = 0;
			p->discarding = true;
			set_error(ev, err_result(SMTP_ELINE, 500, "5.5.2", "Line too long"));
			return pos;
		}
		memcpy(p->buf + p->len, data + pos, chunk);
		p->len += chunk;
		pos += chunk;
		if (lf == NULL)
			break;
		pos++;
		finish_line(p, ev);
		return pos;
	}
	return len;
}
