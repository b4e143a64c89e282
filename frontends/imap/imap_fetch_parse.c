/*
 * The I/O-free parts of FETCH: attribute parsing, HEADER.FIELDS filtering,
 * the streaming transfer-encoding decoder of BINARY and the PREVIEW text
 * (contract in imap_fetch_parse.h). No allocation proportional to the
 * input except the output buffers the caller passes.
 */
#include "imap_fetch_parse.h"

#include "eng_error.h"
#include "mime.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

/* ---- attributes ---- */

static const struct {
	const char *name;
	uint32_t attrs;
} simple_attrs[] = {
	{ "FLAGS", IMAP_FA_FLAGS },
	{ "UID", IMAP_FA_UID },
	{ "INTERNALDATE", IMAP_FA_INTERNALDATE },
	{ "RFC822.SIZE", IMAP_FA_RFC822_SIZE },
	{ "ENVELOPE", IMAP_FA_ENVELOPE },
	{ "BODY", IMAP_FA_BODY },
	{ "BODYSTRUCTURE", IMAP_FA_BODYSTRUCTURE },
	{ "MODSEQ", IMAP_FA_MODSEQ },
	{ "SAVEDATE", IMAP_FA_SAVEDATE },
	{ "EMAILID", IMAP_FA_EMAILID },
	{ "THREADID", IMAP_FA_THREADID },
	{ "PREVIEW", IMAP_FA_PREVIEW },
};

#define FAST (IMAP_FA_FLAGS | IMAP_FA_INTERNALDATE | IMAP_FA_RFC822_SIZE)

static bool prefix_ci(const char *s, size_t len, const char *p)
{
	size_t n = strlen(p);

	return len >= n && strncasecmp(s, p, n) == 0;
}

static bool number(const char **pp, const char *end, uint64_t *n_r)
{
	const char *p = *pp;
	uint64_t n = 0;

	if (p >= end || *p < '0' || *p > '9')
		return false;
	while (p < end && *p >= '0' && *p <= '9') {
		if (n > (UINT64_MAX - 9) / 10)
			return false;
		n = n * 10 + (uint64_t)(*p - '0');
		p++;
	}
	*pp = p;
	*n_r = n;
	return true;
}

/* section-part: nz-number *("." nz-number), copied to it->part. The
 * text after it (if any) starts after a '.', returned in *rest_r. */
static bool parse_part(const char **pp, const char *end, imap_fetch_item *it)
{
	const char *p = *pp, *start = p;
	size_t n;

	while (p < end && *p >= '1' && *p <= '9') {
		uint64_t v;

		if (!number(&p, end, &v) || v > UINT32_MAX)
			return false;
		if (p < end && *p == '.' && p + 1 < end && p[1] >= '0' &&
		    p[1] <= '9') {
			p++;
			continue;
		}
		break;
	}
	n = (size_t)(p - start);
	if (n >= sizeof(it->part))
		return false;
	memcpy(it->part, start, n);
	it->part[n] = '\0';
	*pp = p;
	return true;
}

/* header-list: "(" astring *(SP astring) ")"; names point into the atom
 * (quoted names keep their quotes out; escapes are not allowed in field
 * names, which are printable ASCII without ':'). */
static bool parse_fields(const char **pp, const char *end, imap_fetch_item *it)
{
	const char *p = *pp;

	if (p >= end || *p != ' ')
		return false;
	p++;
	if (p >= end || *p != '(')
		return false;
	p++;
	for (;;) {
		const char *s = p;
		size_t n;

		if (p < end && *p == '"') {
			s = ++p;
			while (p < end && *p != '"' && *p != '\\')
				p++;
			if (p >= end || *p != '"')
				return false;
			n = (size_t)(p - s);
			p++;
		} else {
			while (p < end && *p > ' ' && *p < 0x7f && *p != '(' &&
			       *p != ')' && *p != ':' && *p != '"' &&
			       *p != '{' && *p != '[' && *p != ']')
				p++;
			n = (size_t)(p - s);
		}
		if (n == 0 || it->n_fields == IMAP_FETCH_MAX_FIELDS)
			return false;
		/* A field name is printable ASCII without ':' (RFC 5322
		 * 3.6.8); brackets would end the section even when quoted,
		 * and a backslash could not be written back unescaped. */
		for (size_t i = 0; i < n; i++)
			if (s[i] <= ' ' || s[i] >= 0x7f || s[i] == ':' ||
			    s[i] == '[' || s[i] == ']' || s[i] == '\\')
				return false;
		it->fields[it->n_fields] = s;
		it->field_lens[it->n_fields] = n;
		it->n_fields++;
		if (p < end && *p == ')')
			break;
		if (p >= end || *p != ' ')
			return false;
		p++;
	}
	*pp = p + 1;
	return true;
}

/* The text after a part number (or alone): HEADER, HEADER.FIELDS[.NOT]
 * (list), TEXT, MIME (only after a part). */
static bool parse_text(const char **pp, const char *end, imap_fetch_item *it)
{
	const char *p = *pp;
	size_t left = (size_t)(end - p);

	if (prefix_ci(p, left, "HEADER.FIELDS.NOT")) {
		it->text = IMAP_FT_FIELDS_NOT;
		p += 17;
		if (!parse_fields(&p, end, it))
			return false;
	} else if (prefix_ci(p, left, "HEADER.FIELDS")) {
		it->text = IMAP_FT_FIELDS;
		p += 13;
		if (!parse_fields(&p, end, it))
			return false;
	} else if (prefix_ci(p, left, "HEADER")) {
		it->text = IMAP_FT_HEADER;
		p += 6;
	} else if (prefix_ci(p, left, "TEXT")) {
		it->text = IMAP_FT_TEXT;
		p += 4;
	} else if (prefix_ci(p, left, "MIME") && it->part[0] != '\0') {
		it->text = IMAP_FT_MIME;
		p += 4;
	} else {
		return false;
	}
	*pp = p;
	return true;
}

/* "[" section "]" ["<" number "." nz-number ">"] after BODY / BINARY. */
static bool parse_section(const char *p, const char *end, imap_fetch_item *it,
			  bool partial_ok, const char **err_r)
{
	if (p >= end || *p != '[') {
		*err_r = "Invalid section";
		return false;
	}
	p++;
	*err_r = "Invalid section";
	if (!parse_part(&p, end, it))
		return false;
	if (it->kind != IMAP_FK_BODY) {
		/* section-binary: part numbers only. */
		if (p >= end || *p != ']')
			return false;
	} else if (p < end && *p != ']') {
		if (it->part[0] != '\0') {
			if (*p != '.')
				return false;
			p++;
		}
		if (!parse_text(&p, end, it))
			return false;
	}
	if (p >= end || *p != ']')
		return false;
	p++;
	if (p == end)
		return true;
	*err_r = "Invalid partial";
	if (!partial_ok || *p != '<')
		return false;
	p++;
	if (!number(&p, end, &it->offset) || p >= end || *p != '.')
		return false;
	p++;
	if (!number(&p, end, &it->length) || it->length == 0 || p >= end ||
	    *p != '>' || p + 1 != end)
		return false;
	it->partial = true;
	return true;
}

static imap_fetch_item *new_item(imap_fetch_spec *spec)
{
	imap_fetch_item *it;

	if (spec->items == NULL)
		spec->items = eng_calloc(IMAP_FETCH_MAX_ITEMS, sizeof(*it));
	it = &spec->items[spec->n_items++];
	memset(it, 0, sizeof(*it));
	return it;
}

static bool parse_body_item(const char *s, size_t len, imap_fetch_spec *spec,
			    const char **err_r)
{
	const char *end = s + len;
	imap_fetch_item *it;
	const char *p;
	bool partial_ok = true;

	if (spec->n_items == IMAP_FETCH_MAX_ITEMS) {
		*err_r = "Too many body sections in one FETCH";
		return false;
	}
	it = new_item(spec);
	if (prefix_ci(s, len, "BODY.PEEK[")) {
		it->peek = true;
		p = s + 9;
	} else if (prefix_ci(s, len, "BODY[")) {
		p = s + 4;
	} else if (prefix_ci(s, len, "BINARY.PEEK[")) {
		it->kind = IMAP_FK_BINARY;
		it->peek = true;
		p = s + 11;
	} else if (prefix_ci(s, len, "BINARY.SIZE[")) {
		it->kind = IMAP_FK_BINARY_SIZE;
		it->peek = true;
		partial_ok = false;
		p = s + 11;
	} else if (prefix_ci(s, len, "BINARY[")) {
		it->kind = IMAP_FK_BINARY;
		p = s + 6;
	} else {
		spec->n_items--;
		*err_r = "Unknown FETCH attribute";
		return false;
	}
	return parse_section(p, end, it, partial_ok, err_r);
}

static bool parse_rfc822(const char *s, size_t len, imap_fetch_spec *spec)
{
	static const struct {
		const char *name;
		enum imap_fetch_text text;
		bool peek;
	} forms[] = {
		{ "RFC822", IMAP_FT_ALL, false },
		{ "RFC822.HEADER", IMAP_FT_HEADER, true },
		{ "RFC822.TEXT", IMAP_FT_TEXT, false },
	};

	for (size_t i = 0; i < sizeof(forms) / sizeof(forms[0]); i++) {
		imap_fetch_item *it;

		if (strlen(forms[i].name) != len ||
		    strncasecmp(s, forms[i].name, len) != 0)
			continue;
		if (spec->n_items == IMAP_FETCH_MAX_ITEMS)
			return false;
		it = new_item(spec);
		it->rfc822_name = forms[i].name;
		it->text = forms[i].text;
		it->peek = forms[i].peek;
		return true;
	}
	return false;
}

static bool parse_one(const imap_arg *a, const imap_arg *next,
		      bool *used_next, imap_fetch_spec *spec,
		      const char **err_r)
{
	const char *s;

	*used_next = false;
	if (a->kind != IMAP_ARG_ATOM) {
		*err_r = "Invalid FETCH attribute";
		return false;
	}
	s = a->s;
	for (size_t i = 0; i < sizeof(simple_attrs) / sizeof(simple_attrs[0]);
	     i++) {
		if (strcasecmp(s, simple_attrs[i].name) != 0)
			continue;
		spec->attrs |= simple_attrs[i].attrs;
		/* PREVIEW (LAZY): the modifier list follows the atom. */
		if (simple_attrs[i].attrs == IMAP_FA_PREVIEW && next != NULL &&
		    next->kind == IMAP_ARG_LIST) {
			*used_next = true;
			for (size_t k = 0; k < next->n_list; k++) {
				if (next->list[k].kind != IMAP_ARG_ATOM ||
				    strcasecmp(next->list[k].s, "LAZY") != 0) {
					*err_r = "Unknown PREVIEW modifier";
					return false;
				}
			}
		}
		return true;
	}
	if (parse_rfc822(s, a->len, spec))
		return true;
	if (strchr(s, '[') == NULL) {
		*err_r = "Unknown FETCH attribute";
		return false;
	}
	return parse_body_item(s, a->len, spec, err_r);
}

static int parse_mods(const imap_arg *mods, imap_fetch_spec *spec,
		      const char **err_r)
{
	*err_r = "Invalid FETCH modifier";
	if (mods->kind != IMAP_ARG_LIST || mods->n_list == 0)
		return ENG_EINVAL;
	for (size_t i = 0; i < mods->n_list; i++) {
		const imap_arg *m = &mods->list[i];
		const char *p, *end;

		if (m->kind != IMAP_ARG_ATOM)
			return ENG_EINVAL;
		if (strcasecmp(m->s, "VANISHED") == 0 && !spec->vanished) {
			spec->vanished = true;
			continue;
		}
		if (strcasecmp(m->s, "CHANGEDSINCE") != 0 ||
		    spec->has_changedsince || i + 1 == mods->n_list)
			return ENG_EINVAL;
		m++;
		i++;
		p = m->s;
		end = p + m->len;
		if (m->kind != IMAP_ARG_ATOM ||
		    !number(&p, end, &spec->changedsince) || p != end ||
		    spec->changedsince > INT64_MAX)
			return ENG_EINVAL;
		spec->has_changedsince = true;
	}
	if (spec->vanished && !spec->has_changedsince) {
		*err_r = "VANISHED needs CHANGEDSINCE";
		return ENG_EINVAL;
	}
	return 0;
}

int imap_fetch_parse(const imap_arg *attrs, const imap_arg *mods,
		     imap_fetch_spec *spec, const char **err_r)
{
	bool used;

	memset(spec, 0, sizeof(*spec));
	*err_r = "Invalid FETCH attributes";
	if (attrs == NULL)
		return ENG_EINVAL;
	if (mods != NULL && parse_mods(mods, spec, err_r) != 0)
		return ENG_EINVAL;
	if (attrs->kind == IMAP_ARG_ATOM) {
		if (strcasecmp(attrs->s, "ALL") == 0) {
			spec->attrs = FAST | IMAP_FA_ENVELOPE;
			return 0;
		}
		if (strcasecmp(attrs->s, "FAST") == 0) {
			spec->attrs = FAST;
			return 0;
		}
		if (strcasecmp(attrs->s, "FULL") == 0) {
			spec->attrs = FAST | IMAP_FA_ENVELOPE | IMAP_FA_BODY;
			return 0;
		}
		return parse_one(attrs, NULL, &used, spec, err_r) ? 0 :
			ENG_EINVAL;
	}
	if (attrs->kind != IMAP_ARG_LIST || attrs->n_list == 0)
		return ENG_EINVAL;
	for (size_t i = 0; i < attrs->n_list; i++) {
		const imap_arg *next = i + 1 < attrs->n_list ?
			&attrs->list[i + 1] : NULL;

		if (!parse_one(&attrs->list[i], next, &used, spec, err_r))
			return ENG_EINVAL;
		if (used)
			i++;
	}
	return 0;
}

void imap_fetch_spec_clear(imap_fetch_spec *spec)
{
	free(spec->items);
	memset(spec, 0, sizeof(*spec));
}

bool imap_fetch_item_sets_seen(const imap_fetch_item *it)
{
	return !it->peek && it->kind != IMAP_FK_BINARY_SIZE;
}

static const char *text_name(enum imap_fetch_text t)
{
	switch (t) {
	case IMAP_FT_HEADER:
	case IMAP_FT_FIELDS:
	case IMAP_FT_FIELDS_NOT:
		return "HEADER";
	case IMAP_FT_TEXT:
		return "TEXT";
	case IMAP_FT_MIME:
		return "MIME";
	case IMAP_FT_ALL:
		break;
	}
	return "";
}

void imap_fetch_item_rpc_section(const imap_fetch_item *it, char *out,
				 size_t out_len)
{
	const char *t = it->kind == IMAP_FK_BODY ? text_name(it->text) : "";

	snprintf(out, out_len, "%s%s%s", it->part,
		 it->part[0] != '\0' && t[0] != '\0' ? "." : "", t);
}

void imap_fetch_put_uint(eng_buf *b, uint64_t v)
{
	char tmp[20];
	size_t i = sizeof(tmp);

	do {
		tmp[--i] = (char)('0' + v % 10);
		v /= 10;
	} while (v > 0);
	eng_buf_append(b, tmp + i, sizeof(tmp) - i);
}

void imap_fetch_item_label(const imap_fetch_item *it, eng_buf *out)
{
	static const char *const kinds[] = { "BODY", "BINARY", "BINARY.SIZE" };

	if (it->rfc822_name != NULL) {
		eng_buf_puts(out, it->rfc822_name);
		return;
	}
	eng_buf_puts(out, kinds[it->kind]);
	eng_buf_putc(out, '[');
	eng_buf_puts(out, it->part);
	if (it->text != IMAP_FT_ALL) {
		if (it->part[0] != '\0')
			eng_buf_putc(out, '.');
		eng_buf_puts(out, it->text == IMAP_FT_FIELDS ? "HEADER.FIELDS" :
			     it->text == IMAP_FT_FIELDS_NOT ?
			     "HEADER.FIELDS.NOT" : text_name(it->text));
	}
	if (it->n_fields > 0) {
		eng_buf_puts(out, " (");
		for (size_t i = 0; i < it->n_fields; i++) {
			const char *f = it->fields[i];
			size_t n = it->field_lens[i];
			bool quote = false;

			for (size_t k = 0; k < n; k++)
				quote |= strchr("(){%*", f[k]) != NULL;
			if (i > 0)
				eng_buf_putc(out, ' ');
			if (quote)
				eng_buf_putc(out, '"');
			eng_buf_append(out, f, n);
			if (quote)
				eng_buf_putc(out, '"');
		}
		eng_buf_putc(out, ')');
	}
	eng_buf_putc(out, ']');
	if (it->partial)
		eng_buf_printf(out, "<%llu>", (unsigned long long)it->offset);
}

/* ---- HEADER.FIELDS ---- */

static bool name_listed(const char *name, size_t n, const char *const *names,
			const size_t *lens, size_t count)
{
	for (size_t i = 0; i < count; i++)
		if (lens[i] == n && strncasecmp(names[i], name, n) == 0)
			return true;
	return false;
}

void imap_header_filter(const char *hdr, size_t len,
			const char *const *names, const size_t *name_lens,
			size_t n_names, bool not_, eng_buf *out)
{
	size_t i = 0;

	while (i < len) {
		size_t start = i, name_end, end;
		const char *colon;
		bool keep;

		/* The field runs to the line end not followed by WSP. */
		end = i;
		for (;;) {
			const char *nl = memchr(hdr + end, '\n', len - end);

			end = nl != NULL ? (size_t)(nl - hdr) + 1 : len;
			if (end >= len || (hdr[end] != ' ' && hdr[end] != '\t'))
				break;
		}
		i = end;
		/* The blank line ends the header. */
		if (hdr[start] == '\r' || hdr[start] == '\n')
			break;
		colon = memchr(hdr + start, ':', end - start);
		if (colon == NULL)
			continue;
		name_end = (size_t)(colon - hdr);
		while (name_end > start && (hdr[name_end - 1] == ' ' ||
					    hdr[name_end - 1] == '\t'))
			name_end--;
		keep = name_listed(hdr + start, name_end - start, names,
				   name_lens, n_names) != not_;
		if (!keep)
			continue;
		eng_buf_append(out, hdr + start, end - start);
		if (hdr[end - 1] != '\n')
			eng_buf_puts(out, "\r\n");
	}
	eng_buf_puts(out, "\r\n");
}

/* ---- transfer encodings ---- */

int imap_cte_init(imap_cte *d, const char *encoding)
{
	memset(d, 0, sizeof(*d));
	if (encoding == NULL || strcasecmp(encoding, "7bit") == 0 ||
	    strcasecmp(encoding, "8bit") == 0 ||
	    strcasecmp(encoding, "binary") == 0) {
		d->kind = IMAP_CTE_IDENTITY;
		return 0;
	}
	if (strcasecmp(encoding, "base64") == 0) {
		d->kind = IMAP_CTE_BASE64;
		return 0;
	}
	if (strcasecmp(encoding, "quoted-printable") == 0) {
		d->kind = IMAP_CTE_QP;
		return 0;
	}
	return ENG_ENOTFOUND;
}

/* Values of the base64 alphabet (RFC 2045 6.8), -1 elsewhere; built on
 * first use (the process is single-threaded). */
static int b64_value(unsigned char c)
{
	static const char alphabet[] =
		"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
	static signed char table[256];
	static bool built;

	if (!built) {
		memset(table, -1, sizeof(table));
		for (int i = 0; i < 64; i++)
			table[(unsigned char)alphabet[i]] = (signed char)i;
		built = true;
	}
	return table[c];
}

static void b64_feed(imap_cte *d, const unsigned char *in, size_t len,
		     eng_buf *out)
{
	char tmp[3 * 256];
	size_t n = 0;

	for (size_t i = 0; i < len; i++) {
		int v;

		if (in[i] == '=') {
			d->b64_done = true;
			continue;
		}
		if (d->b64_done || (v = b64_value(in[i])) < 0)
			continue;
		d->acc = (d->acc << 6) | (uint32_t)v;
		if (++d->n_acc == 4) {
			tmp[n++] = (char)(d->acc >> 16);
			tmp[n++] = (char)(d->acc >> 8);
			tmp[n++] = (char)d->acc;
			d->acc = 0;
			d->n_acc = 0;
			if (n == sizeof(tmp)) {
				eng_buf_append(out, tmp, n);
				n = 0;
			}
		}
	}
	eng_buf_append(out, tmp, n);
}

static void b64_finish(imap_cte *d, eng_buf *out)
{
	/* 2 or 3 symbols left: 1 or 2 bytes (1 symbol carries no byte). */
	if (d->n_acc == 2) {
		eng_buf_putc(out, (char)(d->acc >> 4));
	} else if (d->n_acc == 3) {
		eng_buf_putc(out, (char)(d->acc >> 10));
		eng_buf_putc(out, (char)(d->acc >> 2));
	}
	d->n_acc = 0;
}

/* A hexadecimal digit's value (RFC 2045 allows only upper case; lower
 * case is accepted as the robustness rule goes), -1 otherwise. */
static int hexval(unsigned char c)
{
	static const char digits[] = "0123456789abcdef";
	const char *p = c != 0 ? strchr(digits, c | 0x20) : NULL;

	return p != NULL ? (int)(p - digits) : -1;
}

/*
 * Quoted-printable (RFC 2045 6.7): "=XX" is a byte, "=" at a line end a
 * soft break, white space before a line end is dropped. pend holds what
 * cannot be decided yet: a run of trailing blanks (written when a
 * non-blank follows, dropped at a line end) or an "=" with up to two
 * bytes after it. A malformed "=" sequence is kept as it is.
 */
static void qp_flush_blanks(imap_cte *d, eng_buf *out)
{
	eng_buf_append(out, d->pend, d->n_pend);
	d->n_pend = 0;
}

static void qp_byte(imap_cte *d, unsigned char c, eng_buf *out)
{
	if (d->n_pend > 0 && d->pend[0] == '=') {
		d->pend[d->n_pend++] = (char)c;
		if (d->n_pend == 2) {
			if (c == '\n') {
				d->n_pend = 0;          /* "=\n" soft break */
			} else if (c != '\r' && c != ' ' && c != '\t' &&
				   hexval(c) < 0) {
				qp_flush_blanks(d, out);
			}
			return;
		}
		/* Three bytes: "=XX", "=\r\n", or "= ..." (blanks before a
		 * soft break are tolerated only as "=\r"). */
		if (d->pend[1] == '\r' && c == '\n') {
			d->n_pend = 0;
		} else if (hexval((unsigned char)d->pend[1]) >= 0 &&
			   hexval(c) >= 0) {
			eng_buf_putc(out, (char)(hexval((unsigned char)d->pend[1]) * 16 +
						 hexval(c)));
			d->n_pend = 0;
		} else {
			d->n_pend--;
			qp_flush_blanks(d, out);
			qp_byte(d, c, out);
		}
		return;
	}
	if (c == ' ' || c == '\t') {
		if (d->n_pend == sizeof(d->pend))
			qp_flush_blanks(d, out);
		d->pend[d->n_pend++] = (char)c;
		return;
	}
	if (c == '\r' || c == '\n') {
		d->n_pend = 0;                  /* trailing blanks dropped */
		eng_buf_putc(out, (char)c);
		return;
	}
	qp_flush_blanks(d, out);
	if (c == '=') {
		d->pend[d->n_pend++] = '=';
		return;
	}
	eng_buf_putc(out, (char)c);
}

void imap_cte_feed(imap_cte *d, const void *in, size_t len, eng_buf *out)
{
	const unsigned char *p = in;

	switch (d->kind) {
	case IMAP_CTE_IDENTITY:
		eng_buf_append(out, in, len);
		break;
	case IMAP_CTE_BASE64:
		b64_feed(d, p, len, out);
		break;
	case IMAP_CTE_QP:
		for (size_t i = 0; i < len; i++)
			qp_byte(d, p[i], out);
		break;
	}
}

void imap_cte_finish(imap_cte *d, eng_buf *out)
{
	if (d->kind == IMAP_CTE_BASE64) {
		b64_finish(d, out);
	} else if (d->kind == IMAP_CTE_QP) {
		/* Blanks at the very end are trailing: dropped; a lone "=" is
		 * a soft break at the end; "=X" is kept as written. */
		if (d->n_pend > 1 && d->pend[0] == '=')
			eng_buf_append(out, d->pend, d->n_pend);
		d->n_pend = 0;
	}
}

/* ---- PREVIEW ---- */

/* Length of the valid UTF-8 sequence at s (0 if invalid or cut). */
static size_t utf8_seq(const unsigned char *s, size_t left)
{
	size_t n;

	if (s[0] < 0x80)
		return 1;
	n = s[0] >= 0xf0 && s[0] <= 0xf4 ? 4 : s[0] >= 0xe0 ? 3 :
	    s[0] >= 0xc2 && s[0] < 0xe0 ? 2 : 0;
	if (n == 0 || n > left)
		return 0;
	for (size_t i = 1; i < n; i++)
		if ((s[i] & 0xc0) != 0x80)
			return 0;
	return n;
}

void imap_preview_build(const char *in, size_t len, const char *charset,
			bool html, eng_buf *out)
{
	eng_buf text = ENG_BUF_INIT;
	const unsigned char *t;
	size_t chars = 0, i = 0, start = out->len;
	bool space = false;

	eng_mime_text_to_utf8(charset, html, in, len, &text);
	t = (const unsigned char *)text.data;
	while (t != NULL && i < text.len && chars < IMAP_PREVIEW_MAX_CHARS) {
		size_t n;

		if (t[i] == ' ' || t[i] == '\t' || t[i] == '\r' ||
		    t[i] == '\n' || t[i] == '\f' || t[i] == '\v') {
			space = out->len > start;
			i++;
			continue;
		}
		if ((n = utf8_seq(t + i, text.len - i)) == 0) {
			i++;
			continue;
		}
		if (t[i] < 0x20 || t[i] == 0x7f) {
			i++;
			continue;
		}
		if (space) {
			/* A space only between two characters that fit. */
			if (chars + 2 > IMAP_PREVIEW_MAX_CHARS)
				break;
			eng_buf_putc(out, ' ');
			space = false;
			chars++;
		}
		eng_buf_append(out, t + i, n);
		chars++;
		i += n;
	}
	eng_buf_free(&text);
}
