/*
 * The SMTP codec (smtp_parser.h has the contract).
 *
 * Modes: command lines (and one SASL line) are buffered up to line_max,
 * then parsed; once a line passes its limit the rest of it, up to the next
 * LF, is skipped. DATA is a byte-at-a-time state machine that never
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
#include "smtp_parser.h"

#include <arpa/inet.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

enum mode { MODE_CMD, MODE_LINE, MODE_DATA, MODE_BDAT };
enum dstate { D_TEXT, D_DOT, D_DOT_CR };

struct smtp_parser {
	smtp_limits lim;
	char *buf;              /* the current line: line_max - 1 bytes + NUL */
	size_t len;
	char *fields;           /* NUL-terminated copies of a command's fields */
	size_t fields_cap;
	size_t fields_used;
	size_t wipe_len;        /* bytes of buf the last event pointed into */
	enum mode mode;
	bool discarding;        /* skipping the rest of an over-long line */

	/* DATA */
	enum dstate dstate;
	bool at_line_start;
	bool last_cr;
	bool line_counted;      /* this line is already in long_lines */
	uint64_t line_bytes;
	unsigned int data_err;
	uint64_t data_bytes;
	uint64_t long_lines;
	uint64_t nul_bytes;

	/* BDAT */
	uint64_t bdat_left;
};

static const uint8_t held_cr[1] = { '\r' };

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

static void wipe(void *p, size_t n)
{
	if (n > 0)
		explicit_bzero(p, n);
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

/* ---- Character classes (RFC 5321 4.1.2, RFC 6531 3.3) ---- */

static bool is_alpha(unsigned char c)
{
	return (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z');
}

static bool is_digit(unsigned char c)
{
	return c >= '0' && c <= '9';
}

static bool is_atext(unsigned char c)
{
	return is_alpha(c) || is_digit(c) || (c != 0 && strchr("!#$%&'*+-/=?^_`{|}~", c) != NULL);
}

static unsigned char upper(unsigned char c)
{
	return (c >= 'a' && c <= 'z') ? (unsigned char)(c - 'a' + 'A') : c;
}

static bool ieq(const char *s, size_t n, const char *word)
{
	size_t wl = strlen(word);

	if (n != wl)
		return false;
	for (size_t i = 0; i < n; i++) {
		if (upper((unsigned char)s[i]) != (unsigned char)word[i])
			return false;
	}
	return true;
}

/*
 * One well-formed UTF-8 sequence of a non-ASCII character at s[i]
 * (RFC 3629: no overlongs, no surrogates, at most U+10FFFF). Returns its
 * length, or 0.
 */
static size_t utf8_char(const char *s, size_t n, size_t i)
{
	const unsigned char *u = (const unsigned char *)s + i;
	size_t avail = n - i, len;
	unsigned char lo = 0x80, hi = 0xBF;

	if (u[0] >= 0xC2 && u[0] <= 0xDF)
		len = 2;
	else if (u[0] >= 0xE0 && u[0] <= 0xEF)
		len = 3;
	else if (u[0] >= 0xF0 && u[0] <= 0xF4)
		len = 4;
	else
		return 0;
	if (avail < len)
		return 0;
	if (u[0] == 0xE0)
		lo = 0xA0;
	else if (u[0] == 0xED)
		hi = 0x9F;
	else if (u[0] == 0xF0)
		lo = 0x90;
	else if (u[0] == 0xF4)
		hi = 0x8F;
	if (u[1] < lo || u[1] > hi)
		return 0;
	for (size_t k = 2; k < len; k++) {
		if (u[k] < 0x80 || u[k] > 0xBF)
			return 0;
	}
	return len;
}

/* ---- Fields ---- */

static const char *field(smtp_parser *p, const char *s, size_t n)
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

/* ---- Domains, literals, local parts, paths ---- */

/*
 * A domain: labels of letters, digits, '-' (not first or last) and UTF-8
 * (U-labels), at most 63 octets, separated by single dots, at most 255
 * octets; no trailing dot. allow_underscore for HELO names in the wild.
 * Sets *utf8 when a non-ASCII character occurs.
 */
static bool valid_domain(const char *s, size_t n, bool allow_underscore, bool *utf8)
{
	size_t i = 0;

	if (n == 0 || n > 255)
		return false;
	while (i < n) {
		size_t start = i;

		while (i < n && s[i] != '.') {
			unsigned char c = (unsigned char)s[i];

			if (c >= 0x80) {
				size_t l = utf8_char(s, n, i);

				if (l == 0)
					return false;
				*utf8 = true;
				i += l;
				continue;
			}
			if (!is_alpha(c) && !is_digit(c) && c != '-' &&
			    !(allow_underscore && c == '_'))
				return false;
			i++;
		}
		if (i == start || i - start > 63 || s[start] == '-' || s[i - 1] == '-')
			return false;
		if (i < n) {
			i++;  /* the dot */
			if (i == n)
				return false;  /* trailing dot */
		}
	}
	return true;
}

/* "[1.2.3.4]", "[IPv6:...]", "[tag:content]" (RFC 5321 4.1.3). */
static bool valid_literal(const char *s, size_t n)
{
	char tmp[64];
	unsigned char addr[16];
	size_t colon;

	if (n < 3 || s[0] != '[' || s[n - 1] != ']')
		return false;
	s++;
	n -= 2;
	if (n < sizeof(tmp)) {
		memcpy(tmp, s, n);
		tmp[n] = '\0';
		if (inet_pton(AF_INET, tmp, addr) == 1)
			return true;
		if (n > 5 && ieq(s, 5, "IPV6:"))
			return inet_pton(AF_INET6, tmp + 5, addr) == 1;
	}
	/* General-address-literal: Standardized-tag ":" 1*dcontent. */
	for (colon = 0; colon < n && s[colon] != ':'; colon++) {
		unsigned char c = (unsigned char)s[colon];

		if (!is_alpha(c) && !is_digit(c) && c != '-')
			return false;
	}
	if (colon == 0 || colon == n || colon + 1 == n || s[colon - 1] == '-' ||
	    ieq(s, colon, "IPV6"))
		return false;
	for (size_t i = colon + 1; i < n; i++) {
		unsigned char c = (unsigned char)s[i];

		if (c < 33 || c > 126 || c == '[' || c == '\\' || c == ']')
			return false;
	}
	return true;
}

static bool valid_domain_or_literal(const char *s, size_t n, bool allow_underscore,
				    bool *literal, bool *utf8)
{
	*literal = n > 0 && s[0] == '[';
	if (*literal)
		return valid_literal(s, n);
	return valid_domain(s, n, allow_underscore, utf8);
}

/*
 * The local part at s[*i]: a Dot-string or a Quoted-string. Advances *i
 * past it.
 */
static bool scan_local(const char *s, size_t n, size_t *i, smtp_path *path)
{
	size_t k = *i;

	if (k < n && s[k] == '"') {
		path->quoted_local = true;
		k++;
		while (k < n && s[k] != '"') {
			unsigned char c = (unsigned char)s[k];

			if (c == '\\') {
				if (k + 1 >= n || (unsigned char)s[k + 1] < 32 ||
				    (unsigned char)s[k + 1] > 126)
					return false;
				k += 2;
			} else if (c >= 0x80) {
				size_t l = utf8_char(s, n, k);

				if (l == 0)
					return false;
				path->utf8 = true;
				k += l;
			} else if (c >= 32 && c <= 126) {
				k++;
			} else {
				return false;
			}
		}
		if (k >= n)
			return false;
		*i = k + 1;
		return true;
	}
	for (;;) {
		size_t start = k;

		while (k < n) {
			unsigned char c = (unsigned char)s[k];

			if (c >= 0x80) {
				size_t l = utf8_char(s, n, k);

				if (l == 0)
					return false;
				path->utf8 = true;
				k += l;
			} else if (is_atext(c)) {
				k++;
			} else {
				break;
			}
		}
		if (k == start)
			return false;  /* empty atom: leading, trailing or double dot */
		if (k < n && s[k] == '.') {
			k++;
			continue;
		}
		break;
	}
	*i = k;
	return true;
}

/* A-d-l: "@dom,@dom" up to the ':'. Advances *i past the ':'. */
static bool scan_route(const char *s, size_t n, size_t *i, smtp_path *path)
{
	size_t k = *i;

	for (;;) {
		size_t start;
		bool lit;

		if (k >= n || s[k] != '@')
			return false;
		start = ++k;
		while (k < n && s[k] != ',' && s[k] != ':' && s[k] != '>')
			k++;
		if (!valid_domain_or_literal(s + start, k - start, false, &lit, &path->utf8))
			return false;
		if (k < n && s[k] == ',') {
			k++;
			continue;
		}
		if (k < n && s[k] == ':')
			break;
		return false;
	}
	*i = k + 1;
	return true;
}

/*
 * "<...>" at s[*i]. null_ok for MAIL. Advances *i past the '>'. Fills
 * path with copies.
 */
static bool scan_path(smtp_parser *p, const char *s, size_t n, size_t *i,
		      bool is_mail, smtp_path *path)
{
	size_t k = *i, route_start, route_end, mb_start, local_end, dom_start;

	if (k >= n || s[k] != '<')
		return false;
	k++;
	if (k < n && s[k] == '>') {
		if (!is_mail)
			return false;
		path->null_path = true;
		path->mailbox = path->local = path->domain = path->route = "";
		*i = k + 1;
		return true;
	}
	route_start = route_end = k;
	if (k < n && s[k] == '@') {
		if (!scan_route(s, n, &k, path))
			return false;
		route_end = k - 1;
	}
	mb_start = k;
	if (!scan_local(s, n, &k, path))
		return false;
	local_end = k;
	if (k < n && s[k] == '>' && !is_mail && route_end == route_start &&
	    ieq(s + mb_start, local_end - mb_start, "POSTMASTER")) {
		dom_start = k;  /* RCPT TO:<Postmaster> */
	} else {
		bool lit;

		if (k >= n || s[k] != '@')
			return false;
		dom_start = ++k;
		while (k < n && s[k] != '>')
			k++;
		if (!valid_domain_or_literal(s + dom_start, k - dom_start, false,
					     &lit, &path->utf8))
			return false;
		path->domain_literal = lit;
	}
	if (k >= n || s[k] != '>')
		return false;
	path->route = field(p, s + route_start, route_end - route_start);
	path->route_len = route_end - route_start;
	path->mailbox = field(p, s + mb_start, k - mb_start);
	path->mailbox_len = k - mb_start;
	path->local = field(p, s + mb_start, local_end - mb_start);
	path->local_len = local_end - mb_start;
	path->domain = field(p, s + dom_start, k - dom_start);
	path->domain_len = k - dom_start;
	*i = k + 1;
	return true;
}

/* ---- Parameters (RFC 5321 4.1.2 Mail-parameters) ---- */

static bool parse_u64(const char *s, size_t n, uint64_t *v_r)
{
	uint64_t v = 0;

	if (n == 0 || n > 20)
		return false;
	for (size_t i = 0; i < n; i++) {
		unsigned d;

		if (!is_digit((unsigned char)s[i]))
			return false;
		d = (unsigned)(s[i] - '0');
		if (v > (UINT64_MAX - d) / 10)
			return false;
		v = v * 10 + d;
	}
	*v_r = v;
	return true;
}

/* xtext (RFC 3461 4.); utf8 allows UTF-8 characters (RFC 6533 utf-8-addr). */
static bool valid_xtext(const char *s, size_t n, bool utf8)
{
	for (size_t i = 0; i < n; i++) {
		unsigned char c = (unsigned char)s[i];

		if (c == '+') {
			if (n - i < 3)
				return false;
			for (size_t k = 1; k <= 2; k++) {
				unsigned char h = (unsigned char)s[i + k];

				if (!is_digit(h) && !(h >= 'A' && h <= 'F'))
					return false;
			}
			i += 2;
		} else if (c >= 0x80) {
			size_t l = utf8 ? utf8_char(s, n, i) : 0;

			if (l == 0)
				return false;
			i += l - 1;
		} else if (c < 33 || c > 126 || c == '=') {
			return false;
		}
	}
	return true;
}

enum { PARAM_OK = 0, PARAM_UNKNOWN = 1, PARAM_BAD = 2 };

static int decode_mail_param(smtp_command *cmd, const smtp_param *pr, unsigned *seen)
{
	const char *k = pr->key, *v = pr->value;
	size_t kl = pr->key_len, vl = pr->value_len;
	unsigned bit;

	if (ieq(k, kl, "SIZE"))
		bit = 1;
	else if (ieq(k, kl, "BODY"))
		bit = 2;
	else if (ieq(k, kl, "SMTPUTF8"))
		bit = 4;
	else if (ieq(k, kl, "RET"))
		bit = 8;
	else if (ieq(k, kl, "ENVID"))
		bit = 16;
	else
		return PARAM_UNKNOWN;
	if (*seen & bit)
		return PARAM_UNKNOWN;  /* duplicate: 555 like an unknown one */
	*seen |= bit;
	if (bit == 4) {
		cmd->smtputf8 = true;
		return v == NULL ? PARAM_OK : PARAM_BAD;
	}
	if (v == NULL)
		return PARAM_BAD;
	switch (bit) {
	case 1:
		cmd->has_size = true;
		return parse_u64(v, vl, &cmd->size) ? PARAM_OK : PARAM_BAD;
	case 2:
		if (ieq(v, vl, "7BIT"))
			cmd->body = SMTP_BODY_7BIT;
		else if (ieq(v, vl, "8BITMIME"))
			cmd->body = SMTP_BODY_8BITMIME;
		else if (ieq(v, vl, "BINARYMIME"))
			cmd->body = SMTP_BODY_BINARYMIME;
		else
			return PARAM_BAD;
		return PARAM_OK;
	case 8:
		if (ieq(v, vl, "FULL"))
			cmd->ret = SMTP_RET_FULL;
		else if (ieq(v, vl, "HDRS"))
			cmd->ret = SMTP_RET_HDRS;
		else
			return PARAM_BAD;
		return PARAM_OK;
	default:  /* ENVID: at most 100 characters (RFC 3461 4.4) */
		if (vl > 100 || !valid_xtext(v, vl, false))
			return PARAM_BAD;
		cmd->envid = v;
		cmd->envid_len = vl;
		return PARAM_OK;
	}
}

static bool decode_notify(smtp_command *cmd, const char *v, size_t vl)
{
	size_t i = 0;
	unsigned bits = 0;

	while (i <= vl) {
		size_t start = i;
		unsigned bit;

		while (i < vl && v[i] != ',')
			i++;
		if (ieq(v + start, i - start, "NEVER"))
			bit = SMTP_NOTIFY_NEVER;
		else if (ieq(v + start, i - start, "SUCCESS"))
			bit = SMTP_NOTIFY_SUCCESS;
		else if (ieq(v + start, i - start, "FAILURE"))
			bit = SMTP_NOTIFY_FAILURE;
		else if (ieq(v + start, i - start, "DELAY"))
			bit = SMTP_NOTIFY_DELAY;
		else
			return false;
		if (bits & bit)
			return false;
		bits |= bit;
		i++;  /* past the comma (or the end) */
	}
	if ((bits & SMTP_NOTIFY_NEVER) && bits != SMTP_NOTIFY_NEVER)
		return false;
	cmd->notify = bits;
	return true;
}

static int decode_rcpt_param(smtp_parser *p, smtp_command *cmd,
			     const smtp_param *pr, unsigned *seen)
{
	const char *v = pr->value;
	size_t vl = pr->value_len, semi;
	bool utf8_type;

	if (ieq(pr->key, pr->key_len, "NOTIFY")) {
		if (*seen & 1)
			return PARAM_UNKNOWN;
		*seen |= 1;
		return v != NULL && decode_notify(cmd, v, vl) ? PARAM_OK : PARAM_BAD;
	}
	if (!ieq(pr->key, pr->key_len, "ORCPT"))
		return PARAM_UNKNOWN;
	if (*seen & 2)
		return PARAM_UNKNOWN;
	*seen |= 2;
	/* ORCPT=addr-type ";" xtext, at most 500 characters (RFC 3461 4.2). */
	if (v == NULL || vl > 500)
		return PARAM_BAD;
	for (semi = 0; semi < vl && v[semi] != ';'; semi++) {
		if (!is_atext((unsigned char)v[semi]))
			return PARAM_BAD;
	}
	if (semi == 0 || semi == vl || semi + 1 == vl)
		return PARAM_BAD;
	utf8_type = ieq(v, semi, "UTF-8");
	if (!valid_xtext(v + semi + 1, vl - semi - 1, utf8_type))
		return PARAM_BAD;
	cmd->orcpt_type = field(p, v, semi);
	cmd->orcpt_type_len = semi;
	cmd->orcpt_addr = field(p, v + semi + 1, vl - semi - 1);
	cmd->orcpt_addr_len = vl - semi - 1;
	return PARAM_OK;
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
				size_t l = utf8_char(s, end, k);

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
		pr->key = field(p, s + start, eq - start);
		pr->key_len = eq - start;
		if (eq < end) {
			pr->value = field(p, s + eq + 1, end - eq - 1);
			pr->value_len = end - eq - 1;
		}
		ret = is_mail ? decode_mail_param(cmd, pr, &seen) :
			decode_rcpt_param(p, cmd, pr, &seen);
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

	if (n - i < kwl || !ieq(s + i, kwl, kw))
		return syntax_501();
	i = skip_spaces(s, n, i + kwl);
	if (!scan_path(p, s, n, &i, is_mail, &cmd->path)) {
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
		    !valid_domain_or_literal(s + i, e - i, true, &lit, &utf8))
			return syntax_501();
		cmd->arg = field(p, s + i, e - i);
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
		cmd->arg = field(p, s + i, n - i);
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
		cmd->arg = field(p, s + i, e - i);
		cmd->arg_len = e - i;
		j = skip_spaces(s, n, e);
		if (j == n)
			return ok_result();
		e = token_end(s, n, j);
		if (e != n)
			return syntax_501();
		cmd->auth_initial = field(p, s + j, e - j);
		cmd->auth_initial_len = e - j;
		return ok_result();
	}
	case SMTP_BDAT:
		e = token_end(s, n, i);
		if (!parse_u64(s + i, e - i, &cmd->bdat_size))
			return syntax_501();
		i = skip_spaces(s, n, e);
		if (i == n)
			return ok_result();
		e = token_end(s, n, i);
		if (e != n || !ieq(s + i, e - i, "LAST"))
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
		if (ieq(s, n, verb_names[v]))
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
	cmd->verb_text = field(p, s, vend);
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
		ev->line = field(p, p->buf, n);
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

static size_t feed_line(smtp_parser *p, const uint8_t *data, size_t len, smtp_event *ev)
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

static size_t feed_data(smtp_parser *p, const uint8_t *data, size_t len, smtp_event *ev)
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
			return 1 + feed_data(p, data + 1, len - 1, ev);
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
	return 1 + feed_data(p, data + 1, len - 1, ev);
}

/* ---- BDAT ---- */

static size_t feed_bdat(smtp_parser *p, const uint8_t *data, size_t len, smtp_event *ev)
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

size_t smtp_parser_feed(smtp_parser *p, const uint8_t *data, size_t len,
			smtp_event *ev)
{
	memset(ev, 0, sizeof(*ev));
	ev->type = SMTP_EV_NEED_MORE;
	ev->cmd.verb_text = "";
	wipe_last(p);
	switch (p->mode) {
	case MODE_DATA:
		return feed_data(p, data, len, ev);
	case MODE_BDAT:
		return feed_bdat(p, data, len, ev);
	default:
		return feed_line(p, data, len, ev);
	}
}
