/*
 * Header field parsing for the MIME parser: Content-* values with RFC 2231
 * parameters, RFC 5322 address lists, RFC 2047 encoded words, dates,
 * msg-ids, the RFC 5256 base subject and a rough HTML-to-text filter.
 *
 * Every function here is linear in its input and never fails: malformed
 * input gives a best-effort result, and every loop consumes at least one
 * byte per turn.
 */
#include "mime_private.h"
#include "eng_error.h"

#include <errno.h>
#include <iconv.h>
#include <stdlib.h>
#include <string.h>

static bool is_wsp(char c)
{
	return c == ' ' || c == '\t' || c == '\r' || c == '\n';
}

static char lower_c(char c)
{
	return c >= 'A' && c <= 'Z' ? (char)(c - 'A' + 'a') : c;
}

void mime_lower(char *s)
{
	for (; s != NULL && *s != '\0'; s++)
		*s = lower_c(*s);
}

/* Skips white space and (nested) comments. If comment is not NULL, the
 * text of the last comment is left there. */
const char *mime_skip_cfws(const char *p, eng_buf *comment)
{
	for (;;) {
		while (is_wsp(*p))
			p++;
		if (*p != '(')
			return p;
		if (comment != NULL)
			eng_buf_reset(comment);
		int level = 1;
		for (p++; *p != '\0'; p++) {
			if (*p == '\\' && p[1] != '\0') {
				p++;
			} else if (*p == '(') {
				level++;
			} else if (*p == ')' && --level == 0) {
				p++;
				break;
			}
			if (comment != NULL)
				eng_buf_putc(comment, *p);
		}
	}
}

/* MIME token characters (RFC 2045): no tspecials, controls or space. */
static bool is_token_char(char c)
{
	return (unsigned char)c > 32 && c != 127 &&
		strchr("()<>@,;:\\\"/[]?=", c) == NULL;
}

char *mime_parse_token(const char *value)
{
	const char *p = mime_skip_cfws(value, NULL), *start = p;

	while (is_token_char(*p))
		p++;
	if (p == start)
		return NULL;
	char *t = eng_strndup(start, (size_t)(p - start));
	mime_lower(t);
	return t;
}

/* ---- parameters (RFC 2045 and RFC 2231) ---- */

struct raw_param {
	char *base;      /* attribute without the RFC 2231 suffix */
	int section;     /* -1: none */
	bool encoded;    /* had a trailing '*' */
	char *value;
	size_t order;    /* position of the first parameter with this base */
};

static int raw_param_cmp(const void *a, const void *b)
{
	const struct raw_param *x = a, *y = b;

	if (x->order != y->order)
		return x->order < y->order ? -1 : 1;
	if (x->section != y->section)
		return x->section < y->section ? -1 : 1;
	return 0;
}

static bool is_attr_char(unsigned char c)
{
	return c > 32 && c < 127 && strchr("*'%()<>@,;:\\\"/[]?=", c) == NULL;
}

static void param_push(eng_mime_param **params, size_t *n, char *name,
		       char *value)
{
	*params = eng_realloc(*params, (*n + 1) * sizeof(**params));
	(*params)[*n].name = name;
	(*params)[*n].value = value;
	(*n)++;
}

/* Joins the RFC 2231 sections of one attribute (raw[0..count), sorted). */
static void join_sections(struct raw_param *raw, size_t count,
			  eng_mime_param **params, size_t *n)
{
	bool any_encoded = false;
	size_t used = 0;
	eng_buf v = ENG_BUF_INIT;

	/* Sections must run 0, 1, 2, ...; stop at the first gap. */
	for (size_t i = 0; i < count; i++) {
		if (raw[i].section != (int)i)
			break;
		used++;
		any_encoded |= raw[i].encoded;
	}
	if (used == 0)
		return;
	if (any_encoded && !raw[0].encoded)
		eng_buf_puts(&v, "''");
	for (size_t i = 0; i < used; i++) {
		if (!any_encoded || raw[i].encoded) {
			eng_buf_puts(&v, raw[i].value);
			continue;
		}
		/* A plain section inside an encoded value: percent-encode it
		 * so that the joined value decodes as one. */
		for (const char *s = raw[i].value; *s != '\0'; s++) {
			if (is_attr_char((unsigned char)*s))
				eng_buf_putc(&v, *s);
			else
				eng_buf_printf(&v, "%%%02X", (unsigned char)*s);
		}
	}
	if (v.data == NULL)
		eng_buf_puts(&v, "");
	char *name;
	if (any_encoded) {
		size_t len = strlen(raw[0].base);
		name = eng_malloc(len + 2);
		memcpy(name, raw[0].base, len);
		name[len] = '*';
		name[len + 1] = '\0';
	} else {
		name = eng_strdup(raw[0].base);
	}
	param_push(params, n, name, eng_buf_steal(&v, NULL));
}

static void parse_params(const char *p, eng_mime_param **params_r,
			 size_t *n_r)
{
	struct raw_param *raw = NULL;
	size_t n_raw = 0;
	eng_buf val = ENG_BUF_INIT;

	*params_r = NULL;
	*n_r = 0;
	for (;;) {
		p = mime_skip_cfws(p, NULL);
		if (*p == '\0')
			break;
		if (*p != ';') {
			/* Garbage: skip to the next parameter. */
			while (*p != '\0' && *p != ';')
				p++;
			continue;
		}
		p = mime_skip_cfws(p + 1, NULL);
		const char *a = p;
		while (is_token_char(*p) || *p == '*')
			p++;
		if (p == a)
			continue;
		if (n_raw >= MIME_MAX_LIST)
			break;
		char *attr = eng_strndup(a, (size_t)(p - a));
		p = mime_skip_cfws(p, NULL);
		if (*p != '=') {
			free(attr);
			continue;
		}
		p = mime_skip_cfws(p + 1, NULL);
		eng_buf_reset(&val);
		eng_buf_puts(&val, "");
		if (*p == '"') {
			for (p++; *p != '\0' && *p != '"'; p++) {
				if (*p == '\\' && p[1] != '\0')
					p++;
				eng_buf_putc(&val, *p);
			}
			if (*p == '"')
				p++;
		} else {
			/* Be lenient with unquoted values holding spaces
			 * (common in the wild): take everything to ';'. */
			const char *s = p;
			while (*p != '\0' && *p != ';')
				p++;
			const char *e = p;
			while (e > s && is_wsp(e[-1]))
				e--;
			eng_buf_append(&val, s, (size_t)(e - s));
		}
		mime_lower(attr);

		struct raw_param rp = { .section = -1 };
		char *star = strchr(attr, '*');
		if (star != NULL) {
			char *q = star + 1;
			if (*q >= '0' && *q <= '9') {
				long sec = 0;
				while (*q >= '0' && *q <= '9' && sec < 100000)
					sec = sec * 10 + (*q++ - '0');
				rp.section = (int)sec;
				if (*q == '*') {
					rp.encoded = true;
					q++;
				}
			} else {
				rp.encoded = true;
			}
			if (*q != '\0' || star == attr) {
				/* Not RFC 2231 syntax: keep the name as is. */
				rp.section = -1;
				rp.encoded = false;
			} else {
				*star = '\0';
			}
		}
		rp.base = attr;
		rp.value = eng_buf_steal(&val, NULL);
		rp.order = n_raw;
		for (size_t i = 0; i < n_raw; i++) {
			if (strcmp(raw[i].base, attr) == 0) {
				rp.order = raw[i].order;
				break;
			}
		}
		raw = eng_realloc(raw, (n_raw + 1) * sizeof(*raw));
		raw[n_raw++] = rp;
	}
	eng_buf_free(&val);
	if (n_raw > 1)
		qsort(raw, n_raw, sizeof(*raw), raw_param_cmp);

	for (size_t i = 0; i < n_raw;) {
		size_t j = i;
		bool extended = false;
		while (j < n_raw && raw[j].order == raw[i].order) {
			if (raw[j].section >= 0 || raw[j].encoded)
				extended = true;
			j++;
		}
		/* RFC 2231: an extended form wins over a plain one. */
		if (!extended) {
			param_push(params_r, n_r, eng_strdup(raw[i].base),
				   eng_strdup(raw[i].value));
		} else {
			size_t k = i;
			while (k < j && raw[k].section < 0 && !raw[k].encoded)
				k++;
			if (k < j && raw[k].section < 0) {
				/* name*=charset'lang'value */
				size_t len = strlen(raw[k].base);
				char *name = eng_malloc(len + 2);
				memcpy(name, raw[k].base, len);
				memcpy(name + len, "*", 2);
				param_push(params_r, n_r, name,
					   eng_strdup(raw[k].value));
			} else {
				while (k < j && raw[k].section < 0)
					k++;
				join_sections(raw + k, j - k, params_r, n_r);
			}
		}
		i = j;
	}
	for (size_t i = 0; i < n_raw; i++) {
		free(raw[i].base);
		free(raw[i].value);
	}
	free(raw);
}

void mime_parse_content_type(const char *value, char **type_r, char **subtype_r,
			     eng_mime_param **params_r, size_t *n_params_r)
{
	const char *p = mime_skip_cfws(value, NULL), *t = p;

	*type_r = *subtype_r = NULL;
	while (is_token_char(*p))
		p++;
	const char *te = p;
	p = mime_skip_cfws(p, NULL);
	if (te > t && *p == '/') {
		p = mime_skip_cfws(p + 1, NULL);
		const char *s = p;
		while (is_token_char(*p))
			p++;
		if (p > s) {
			*type_r = eng_strndup(t, (size_t)(te - t));
			*subtype_r = eng_strndup(s, (size_t)(p - s));
			mime_lower(*type_r);
			mime_lower(*subtype_r);
		}
	}
	while (*p != '\0' && *p != ';')
		p++;
	parse_params(p, params_r, n_params_r);
}

void mime_parse_disposition(const char *value, char **disp_r,
			    eng_mime_param **params_r, size_t *n_params_r)
{
	const char *p = mime_skip_cfws(value, NULL), *s = p;

	while (is_token_char(*p))
		p++;
	*disp_r = p > s ? eng_strndup(s, (size_t)(p - s)) : NULL;
	mime_lower(*disp_r);
	while (*p != '\0' && *p != ';')
		p++;
	parse_params(p, params_r, n_params_r);
}

void mime_parse_languages(const char *value, char ***langs_r, size_t *n_r)
{
	const char *p = value;

	*langs_r = NULL;
	*n_r = 0;
	while (*p != '\0') {
		p = mime_skip_cfws(p, NULL);
		const char *s = p;
		while (is_token_char(*p))
			p++;
		if (p > s && *n_r < MIME_MAX_LIST) {
			*langs_r = eng_realloc(*langs_r, (*n_r + 1) * sizeof(char *));
			(*langs_r)[(*n_r)++] = eng_strndup(s, (size_t)(p - s));
		}
		p = mime_skip_cfws(p, NULL);
		if (*p != '\0')
			p++;    /* ',' or garbage */
	}
}

const char *mime_param_get(const eng_mime_param *params, size_t n,
			   const char *name)
{
	for (size_t i = 0; i < n; i++) {
		if (strcmp(params[i].name, name) == 0)
			return params[i].value;
	}
	return NULL;
}

void mime_params_free(eng_mime_param *params, size_t n)
{
	for (size_t i = 0; i < n; i++) {
		free(params[i].name);
		free(params[i].value);
	}
	free(params);
}

/* ---- addresses (RFC 5322 section 3.4, with the obsolete forms) ---- */

static void addr_push(eng_mime_addrlist *list, char *name, char *adl,
		      char *mailbox, char *host)
{
	/* Capacity is the next power of two: amortised linear growth. */
	if ((list->count & (list->count - 1)) == 0)
		list->addrs = eng_realloc(list->addrs, (list->count ? list->count * 2 : 1) *
					  sizeof(*list->addrs));
	eng_mime_addr *a = &list->addrs[list->count++];
	a->name = name;
	a->adl = adl;
	a->mailbox = mailbox;
	a->host = host;
}

static bool is_atext(char c)
{
	return (unsigned char)c > 32 && c != 127 &&
		strchr("()<>[]:;@\\,.\"", c) == NULL;
}

/* Reads words and dots: phrase gets them space-joined and unquoted, local
 * gets them concatenated as written (quotes kept). Returns the end. */
static const char *read_words(const char *p, eng_buf *phrase, eng_buf *local,
			      eng_buf *comment)
{
	for (;;) {
		p = mime_skip_cfws(p, comment);
		if (*p == '"') {
			if (phrase->len > 0)
				eng_buf_putc(phrase, ' ');
			const char *s = p++;
			for (; *p != '\0' && *p != '"'; p++) {
				if (*p == '\\' && p[1] != '\0')
					p++;
				eng_buf_putc(phrase, *p);
			}
			if (*p == '"')
				p++;
			eng_buf_append(local, s, (size_t)(p - s));
		} else if (*p == '.') {
			eng_buf_putc(phrase, '.');
			eng_buf_putc(local, '.');
			p++;
		} else if (is_atext(*p)) {
			const char *s = p;
			while (is_atext(*p))
				p++;
			if (phrase->len > 0)
				eng_buf_putc(phrase, ' ');
			eng_buf_append(phrase, s, (size_t)(p - s));
			eng_buf_append(local, s, (size_t)(p - s));
		} else {
			return p;
		}
	}
}

static const char *read_domain(const char *p, eng_buf *dom)
{
	for (;;) {
		p = mime_skip_cfws(p, NULL);
		if (*p == '[') {
			const char *s = p;
			while (*p != '\0' && *p != ']')
				p++;
			if (*p == ']')
				p++;
			eng_buf_append(dom, s, (size_t)(p - s));
		} else if (*p == '.') {
			eng_buf_putc(dom, '.');
			p++;
		} else if (is_atext(*p)) {
			const char *s = p;
			while (is_atext(*p))
				p++;
			eng_buf_append(dom, s, (size_t)(p - s));
		} else {
			return p;
		}
	}
}

static char *buf_take(eng_buf *b)
{
	if (b->data == NULL)
		eng_buf_puts(b, "");
	return eng_buf_steal(b, NULL);
}

static char *buf_take_or_null(eng_buf *b)
{
	if (b->len == 0) {
		eng_buf_reset(b);
		return NULL;
	}
	return eng_buf_steal(b, NULL);
}

void mime_parse_addrlist(const char *value, eng_mime_addrlist *list)
{
	eng_buf phrase = ENG_BUF_INIT, local = ENG_BUF_INIT, dom = ENG_BUF_INIT;
	eng_buf adl = ENG_BUF_INIT, comment = ENG_BUF_INIT;
	const char *p = value;
	bool in_group = false;

	while (*p != '\0') {
		p = mime_skip_cfws(p, NULL);
		if (*p == ',') {
			p++;
			continue;
		}
		if (*p == ';') {
			if (in_group) {
				addr_push(list, NULL, NULL, NULL, NULL);
				in_group = false;
			}
			p++;
			continue;
		}
		if (*p == '\0')
			break;
		eng_buf_reset(&phrase);
		eng_buf_reset(&local);
		eng_buf_reset(&comment);
		const char *start = p;
		p = read_words(p, &phrase, &local, NULL);
		if (*p == ':' && !in_group) {
			addr_push(list, NULL, NULL, buf_take(&phrase), NULL);
			in_group = true;
			p++;
			continue;
		}
		if (*p == '<') {
			eng_buf_reset(&local);
			eng_buf_reset(&dom);
			eng_buf_reset(&adl);
			p = mime_skip_cfws(p + 1, NULL);
			if (*p == '@') {
				/* obs-route: "@a,@b:" */
				const char *s = p;
				while (*p != '\0' && *p != ':' && *p != '>')
					p++;
				eng_buf_append(&adl, s, (size_t)(p - s));
				if (*p == ':')
					p++;
			}
			eng_buf junk = ENG_BUF_INIT;
			p = read_words(p, &junk, &local, NULL);
			eng_buf_free(&junk);
			if (*p == '@')
				p = read_domain(p + 1, &dom);
			while (*p != '\0' && *p != '>')
				p++;
			if (*p == '>')
				p++;
			p = mime_skip_cfws(p, NULL);
			addr_push(list, buf_take_or_null(&phrase),
				  buf_take_or_null(&adl), buf_take(&local),
				  buf_take(&dom));
		} else if (*p == '@' || local.len > 0) {
			eng_buf_reset(&dom);
			if (*p == '@')
				p = read_domain(p + 1, &dom);
			/* "addr (Name)": the comment is the display name. */
			p = mime_skip_cfws(p, &comment);
			eng_buf_reset(&phrase);
			addr_push(list, buf_take_or_null(&comment), NULL,
				  buf_take(&local), buf_take(&dom));
		}
		/* Skip whatever is left of this address. */
		if (p == start)
			p++;
		while (*p != '\0' && *p != ',' && *p != ';')
			p++;
	}
	if (in_group)
		addr_push(list, NULL, NULL, NULL, NULL);
	eng_buf_free(&phrase);
	eng_buf_free(&local);
	eng_buf_free(&dom);
	eng_buf_free(&adl);
	eng_buf_free(&comment);
}

void mime_addrlist_clear(eng_mime_addrlist *list)
{
	for (size_t i = 0; i < list->count; i++) {
		free(list->addrs[i].name);
		free(list->addrs[i].adl);
		free(list->addrs[i].mailbox);
		free(list->addrs[i].host);
	}
	free(list->addrs);
	list->addrs = NULL;
	list->count = 0;
}

/* ---- charsets and RFC 2047 ---- */

void mime_utf8_sanitize(const char *in, size_t len, eng_buf *out)
{
	const unsigned char *s = (const unsigned char *)in;
	size_t i = 0;

	eng_buf_reserve(out, len);
	while (i < len) {
		unsigned char c = s[i];
		size_t n;
		uint32_t cp;

		if (c == 0) {
			i++;
			continue;
		}
		if (c < 0x80) {
			/* A run of ASCII (NULs dropped) in one append. */
			size_t j = i + 1;

			while (j < len && s[j] != 0 && s[j] < 0x80)
				j++;
			eng_buf_append(out, s + i, j - i);
			i = j;
			continue;
		}
		if (c >= 0xc2 && c <= 0xdf) {
			n = 2; cp = c & 0x1f;
		} else if (c >= 0xe0 && c <= 0xef) {
			n = 3; cp = c & 0x0f;
		} else if (c >= 0xf0 && c <= 0xf4) {
			n = 4; cp = c & 0x07;
		} else {
			n = 0; cp = 0;
		}
		bool ok = n != 0 && i + n <= len;
		for (size_t k = 1; ok && k < n; k++) {
			if ((s[i + k] & 0xc0) != 0x80)
				ok = false;
			else
				cp = (cp << 6) | (s[i + k] & 0x3f);
		}
		if (ok && ((n == 3 && (cp < 0x800 || (cp >= 0xd800 && cp <= 0xdfff))) ||
			   (n == 4 && (cp < 0x10000 || cp > 0x10ffff))))
			ok = false;
		if (ok) {
			eng_buf_append(out, s + i, n);
			i += n;
		} else {
			eng_buf_puts(out, "\xef\xbf\xbd");
			i++;
		}
	}
}

static bool charset_is_utf8(const char *cs)
{
	return strcasecmp(cs, "utf-8") == 0 || strcasecmp(cs, "utf8") == 0 ||
		strcasecmp(cs, "us-ascii") == 0 || strcasecmp(cs, "ascii") == 0;
}

void mime_charset_to_utf8(const char *charset, const char *in, size_t len,
			  eng_buf *out)
{
	/* Only plain charset names reach iconv: glibc gives meaning to
	 * "//TRANSLIT" and friends, and names are short. */
	size_t cl = charset != NULL ? strlen(charset) : 0;
	bool sane = cl > 0 && cl < 64;
	for (size_t i = 0; sane && i < cl; i++) {
		char c = charset[i];
		if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') ||
		      (c >= '0' && c <= '9') || strchr("-_.:+", c) != NULL))
			sane = false;
	}
	if (!sane || charset_is_utf8(charset)) {
		mime_utf8_sanitize(in, len, out);
		return;
	}
	iconv_t cd = iconv_open("UTF-8", charset);
	if (cd == (iconv_t)-1) {
		mime_utf8_sanitize(in, len, out);
		return;
	}
	eng_buf tmp = ENG_BUF_INIT;
	char *ip = (char *)in;
	size_t il = len;
	char chunk[4096];
	while (il > 0) {
		char *op = chunk;
		size_t ol = sizeof(chunk);
		size_t r = iconv(cd, &ip, &il, &op, &ol);
		eng_buf_append(&tmp, chunk, (size_t)(op - chunk));
		if (r != (size_t)-1)
			break;
		if (errno == E2BIG)
			continue;
		/* EILSEQ or EINVAL: mark it and resynchronise. */
		eng_buf_puts(&tmp, "\xef\xbf\xbd");
		ip++;
		il--;
		iconv(cd, NULL, NULL, NULL, NULL);
	}
	char *op = chunk;
	size_t ol = sizeof(chunk);
	iconv(cd, NULL, NULL, &op, &ol);
	eng_buf_append(&tmp, chunk, (size_t)(op - chunk));
	iconv_close(cd);
	mime_utf8_sanitize(tmp.data != NULL ? tmp.data : "", tmp.len, out);
	eng_buf_free(&tmp);
}

int mime_hexval(char c)
{
	if (c >= '0' && c <= '9')
		return c - '0';
	if (c >= 'a' && c <= 'f')
		return c - 'a' + 10;
	if (c >= 'A' && c <= 'F')
		return c - 'A' + 10;
	return -1;
}

static int b64val(char c)
{
	if (c >= 'A' && c <= 'Z')
		return c - 'A';
	if (c >= 'a' && c <= 'z')
		return c - 'a' + 26;
	if (c >= '0' && c <= '9')
		return c - '0' + 52;
	if (c == '+')
		return 62;
	if (c == '/')
		return 63;
	return -1;
}

/* Strict base64 of an encoded word: false on any bad character. */
static bool b64_decode(const char *s, size_t len, eng_buf *out)
{
	uint32_t acc = 0;
	int bits = 0;
	size_t i = 0;

	for (; i < len && s[i] != '='; i++) {
		int v = b64val(s[i]);
		if (v < 0)
			return false;
		acc = (acc << 6) | (uint32_t)v;
		bits += 6;
		if (bits >= 8) {
			bits -= 8;
			eng_buf_putc(out, (char)((acc >> bits) & 0xff));
		}
	}
	for (; i < len; i++) {
		if (s[i] != '=')
			return false;
	}
	return true;
}

/* Tries an encoded word at in[0..len); returns its length or 0. */
static size_t try_encoded_word(const char *in, size_t len, eng_buf *out)
{
	size_t i = 2, cs_start = 2;

	if (len < 8 || in[0] != '=' || in[1] != '?')
		return 0;
	while (i < len && in[i] != '?' && !is_wsp(in[i]))
		i++;
	if (i >= len || in[i] != '?' || i == cs_start || i - cs_start > 60)
		return 0;
	size_t cs_end = i;
	if (i + 3 >= len || in[i + 2] != '?')
		return 0;
	char enc = lower_c(in[i + 1]);
	if (enc != 'b' && enc != 'q')
		return 0;
	size_t t = i + 3, e = t;
	/* Bounded scan (RFC 2047 allows 75 bytes; be generous) so that
	 * a run of "=?" without an end stays linear. */
	while (e + 1 < len && !(in[e] == '?' && in[e + 1] == '=')) {
		if (is_wsp(in[e]) || e - t > 1024)
			return 0;
		e++;
	}
	if (e + 1 >= len)
		return 0;

	char charset[64];
	memcpy(charset, in + cs_start, cs_end - cs_start);
	charset[cs_end - cs_start] = '\0';
	char *star = strchr(charset, '*');    /* RFC 2231 language */
	if (star != NULL)
		*star = '\0';

	eng_buf raw = ENG_BUF_INIT;
	eng_buf_puts(&raw, "");
	if (enc == 'b') {
		if (!b64_decode(in + t, e - t, &raw)) {
			eng_buf_free(&raw);
			return 0;
		}
	} else {
		for (size_t k = t; k < e; k++) {
			if (in[k] == '_') {
				eng_buf_putc(&raw, ' ');
			} else if (in[k] == '=' && k + 2 < e + 1 &&
				   mime_hexval(in[k + 1]) >= 0 && mime_hexval(in[k + 2]) >= 0) {
				eng_buf_putc(&raw, (char)(mime_hexval(in[k + 1]) * 16 +
							  mime_hexval(in[k + 2])));
				k += 2;
			} else {
				eng_buf_putc(&raw, in[k]);
			}
		}
	}
	mime_charset_to_utf8(charset, raw.data, raw.len, out);
	eng_buf_free(&raw);
	return e + 2;
}

void mime_decode_2047(const char *in, size_t len, eng_buf *out)
{
	eng_buf tmp = ENG_BUF_INIT;
	size_t i = 0, ws_start = 0;
	bool after_word = false;

	eng_buf_puts(out, "");
	while (i < len) {
		if (in[i] == '=' && i + 1 < len && in[i + 1] == '?') {
			eng_buf_reset(&tmp);
			size_t n = try_encoded_word(in + i, len - i, &tmp);
			if (n > 0) {
				/* White space between two encoded words goes. */
				if (!after_word && ws_start < i)
					mime_utf8_sanitize(in + ws_start,
							   i - ws_start, out);
				eng_buf_append(out, tmp.data, tmp.len);
				i += n;
				ws_start = i;
				after_word = true;
				continue;
			}
		}
		if (is_wsp(in[i])) {
			i++;
			continue;
		}
		/* Plain text: flush the pending white space with it. */
		size_t s = i;
		while (i < len && !is_wsp(in[i]) &&
		       !(in[i] == '=' && i + 1 < len && in[i + 1] == '?'))
			i++;
		if (i == s)
			i++;
		mime_utf8_sanitize(in + ws_start, i - ws_start, out);
		ws_start = i;
		after_word = false;
	}
	if (ws_start < len && !after_word)
		mime_utf8_sanitize(in + ws_start, len - ws_start, out);
	eng_buf_free(&tmp);
}

void mime_envelope_free(eng_mime_envelope **envp)
{
	eng_mime_envelope *env = *envp;

	if (env == NULL)
		return;
	free(env->date);
	free(env->subject);
	mime_addrlist_clear(&env->from);
	mime_addrlist_clear(&env->sender);
	mime_addrlist_clear(&env->reply_to);
	mime_addrlist_clear(&env->to);
	mime_addrlist_clear(&env->cc);
	mime_addrlist_clear(&env->bcc);
	free(env->in_reply_to);
	free(env->message_id);
	free(env);
	*envp = NULL;
}
