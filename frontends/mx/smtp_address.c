/*
 * SMTP addresses and parameters (RFC 5321 4.1.2, RFC 6531 SMTPUTF8,
 * RFC 3461 DSN): reverse- and forward-paths with source routes, domains
 * and address literals, dot-atom and quoted local parts, and the MAIL and
 * RCPT parameters the MX knows (SIZE, BODY, SMTPUTF8, RET, ENVID, NOTIFY,
 * ORCPT). Validation only: everything kept is copied with smtp_field.
 */
#include "smtp_parser_private.h"

#include <arpa/inet.h>
#include <stdio.h>

/* ---- Character classes (RFC 5321 4.1.2, RFC 6531 3.3) ---- */

static bool is_atext(unsigned char c)
{
	return is_alpha(c) || is_digit(c) || (c != 0 && strchr("!#$%&'*+-/=?^_`{|}~", c) != NULL);
}

static unsigned char upper(unsigned char c)
{
	return (c >= 'a' && c <= 'z') ? (unsigned char)(c - 'a' + 'A') : c;
}

bool smtp_ieq(const char *s, size_t n, const char *word)
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
size_t smtp_utf8_char(const char *s, size_t n, size_t i)
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
				size_t l = smtp_utf8_char(s, n, i);

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
		if (n > 5 && smtp_ieq(s, 5, "IPV6:"))
			return inet_pton(AF_INET6, tmp + 5, addr) == 1;
	}
	/* General-address-literal: Standardized-tag ":" 1*dcontent. */
	for (colon = 0; colon < n && s[colon] != ':'; colon++) {
		unsigned char c = (unsigned char)s[colon];

		if (!is_alpha(c) && !is_digit(c) && c != '-')
			return false;
	}
	if (colon == 0 || colon == n || colon + 1 == n || s[colon - 1] == '-' ||
	    smtp_ieq(s, colon, "IPV6"))
		return false;
	for (size_t i = colon + 1; i < n; i++) {
		unsigned char c = (unsigned char)s[i];

		if (c < 33 || c > 126 || c == '[' || c == '\\' || c == ']')
			return false;
	}
	return true;
}

bool smtp_valid_domain_or_literal(const char *s, size_t n, bool allow_underscore,
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
				size_t l = smtp_utf8_char(s, n, k);

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
				size_t l = smtp_utf8_char(s, n, k);

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
		if (!smtp_valid_domain_or_literal(s + start, k - start, false, &lit, &path->utf8))
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
bool smtp_scan_path(smtp_parser *p, const char *s, size_t n, size_t *i,
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
	    smtp_ieq(s + mb_start, local_end - mb_start, "POSTMASTER")) {
		dom_start = k;  /* RCPT TO:<Postmaster> */
	} else {
		bool lit;

		if (k >= n || s[k] != '@')
			return false;
		dom_start = ++k;
		while (k < n && s[k] != '>')
			k++;
		if (!smtp_valid_domain_or_literal(s + dom_start, k - dom_start, false,
						  &lit, &path->utf8))
			return false;
		path->domain_literal = lit;
	}
	if (k >= n || s[k] != '>')
		return false;
	path->route = smtp_field(p, s + route_start, route_end - route_start);
	path->route_len = route_end - route_start;
	path->mailbox = smtp_field(p, s + mb_start, k - mb_start);
	path->mailbox_len = k - mb_start;
	path->local = smtp_field(p, s + mb_start, local_end - mb_start);
	path->local_len = local_end - mb_start;
	path->domain = smtp_field(p, s + dom_start, k - dom_start);
	path->domain_len = k - dom_start;
	*i = k + 1;
	return true;
}

/* ---- Parameters (RFC 5321 4.1.2 Mail-parameters) ---- */

bool smtp_parse_u64(const char *s, size_t n, uint64_t *v_r)
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
			size_t l = utf8 ? smtp_utf8_char(s, n, i) : 0;

			if (l == 0)
				return false;
			i += l - 1;
		} else if (c < 33 || c > 126 || c == '=') {
			return false;
		}
	}
	return true;
}

int smtp_decode_mail_param(smtp_command *cmd, const smtp_param *pr, unsigned *seen)
{
	const char *k = pr->key, *v = pr->value;
	size_t kl = pr->key_len, vl = pr->value_len;
	unsigned bit;

	if (smtp_ieq(k, kl, "SIZE"))
		bit = 1;
	else if (smtp_ieq(k, kl, "BODY"))
		bit = 2;
	else if (smtp_ieq(k, kl, "SMTPUTF8"))
		bit = 4;
	else if (smtp_ieq(k, kl, "RET"))
		bit = 8;
	else if (smtp_ieq(k, kl, "ENVID"))
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
		return smtp_parse_u64(v, vl, &cmd->size) ? PARAM_OK : PARAM_BAD;
	case 2:
		if (smtp_ieq(v, vl, "7BIT"))
			cmd->body = SMTP_BODY_7BIT;
		else if (smtp_ieq(v, vl, "8BITMIME"))
			cmd->body = SMTP_BODY_8BITMIME;
		else if (smtp_ieq(v, vl, "BINARYMIME"))
			cmd->body = SMTP_BODY_BINARYMIME;
		else
			return PARAM_BAD;
		return PARAM_OK;
	case 8:
		if (smtp_ieq(v, vl, "FULL"))
			cmd->ret = SMTP_RET_FULL;
		else if (smtp_ieq(v, vl, "HDRS"))
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
		if (smtp_ieq(v + start, i - start, "NEVER"))
			bit = SMTP_NOTIFY_NEVER;
		else if (smtp_ieq(v + start, i - start, "SUCCESS"))
			bit = SMTP_NOTIFY_SUCCESS;
		else if (smtp_ieq(v + start, i - start, "FAILURE"))
			bit = SMTP_NOTIFY_FAILURE;
		else if (smtp_ieq(v + start, i - start, "DELAY"))
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

int smtp_decode_rcpt_param(smtp_parser *p, smtp_command *cmd,
			   const smtp_param *pr, unsigned *seen)
{
	const char *v = pr->value;
	size_t vl = pr->value_len, semi;
	bool utf8_type;

	if (smtp_ieq(pr->key, pr->key_len, "NOTIFY")) {
		if (*seen & 1)
			return PARAM_UNKNOWN;
		*seen |= 1;
		return v != NULL && decode_notify(cmd, v, vl) ? PARAM_OK : PARAM_BAD;
	}
	if (!smtp_ieq(pr->key, pr->key_len, "ORCPT"))
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
	utf8_type = smtp_ieq(v, semi, "UTF-8");
	if (!valid_xtext(v + semi + 1, vl - semi - 1, utf8_type))
		return PARAM_BAD;
	cmd->orcpt_type = smtp_field(p, v, semi);
	cmd->orcpt_type_len = semi;
	cmd->orcpt_addr = smtp_field(p, v + semi + 1, vl - semi - 1);
	cmd->orcpt_addr_len = vl - semi - 1;
	return PARAM_OK;
}
