/*
 * Summary helpers for the MIME parser: RFC 5322 dates, msg-ids for
 * threading, the RFC 5256 base subject and a rough HTML-to-text filter.
 * Linear in their input (the base subject works on a bounded prefix).
 */
#include "mime_private.h"
#include "eng_error.h"

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

/* ---- dates ---- */

static int64_t days_from_civil(int64_t y, unsigned m, unsigned d)
{
	y -= m <= 2;
	int64_t era = (y >= 0 ? y : y - 399) / 400;
	unsigned yoe = (unsigned)(y - era * 400);
	unsigned doy = (153 * (m + (m > 2 ? -3 : 9)) + 2) / 5 + d - 1;
	unsigned doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
	return era * 146097 + (int64_t)doe - 719468;
}

static const char *read_num(const char *p, int *v, int *digits)
{
	*v = 0;
	*digits = 0;
	while (*p >= '0' && *p <= '9' && *digits < 9) {
		*v = *v * 10 + (*p++ - '0');
		(*digits)++;
	}
	return p;
}

int64_t mime_parse_date(const char *s)
{
	static const char months[] = "janfebmaraprmayjunjulaugsepoctnovdec";
	static const struct { const char *name; int mins; } zones[] = {
		{ "ut", 0 }, { "gmt", 0 }, { "utc", 0 }, { "z", 0 },
		{ "est", -300 }, { "edt", -240 }, { "cst", -360 },
		{ "cdt", -300 }, { "mst", -420 }, { "mdt", -360 },
		{ "pst", -480 }, { "pdt", -420 },
	};
	const char *p = mime_skip_cfws(s, NULL);
	int day, year, hour, min, sec = 0, nd, mon = -1;

	if ((*p | 0x20) >= 'a' && (*p | 0x20) <= 'z') {   /* day-of-week */
		while (((*p | 0x20) >= 'a' && (*p | 0x20) <= 'z'))
			p++;
		p = mime_skip_cfws(p, NULL);
		if (*p == ',')
			p = mime_skip_cfws(p + 1, NULL);
	}
	p = read_num(p, &day, &nd);
	if (nd < 1 || nd > 2)
		return INT64_MIN;
	p = mime_skip_cfws(p, NULL);
	if (*p == '-')
		p++;
	for (int i = 0; i < 12 && p[0] && p[1] && p[2]; i++) {
		if (lower_c(p[0]) == months[i * 3] && lower_c(p[1]) == months[i * 3 + 1] &&
		    lower_c(p[2]) == months[i * 3 + 2]) {
			mon = i + 1;
			break;
		}
	}
	if (mon < 0)
		return INT64_MIN;
	while ((*p | 0x20) >= 'a' && (*p | 0x20) <= 'z')
		p++;
	p = mime_skip_cfws(p, NULL);
	if (*p == '-')
		p++;
	p = read_num(p, &year, &nd);
	if (nd < 2 || nd > 4)
		return INT64_MIN;
	if (nd == 2)
		year += year < 50 ? 2000 : 1900;
	else if (nd == 3)
		year += 1900;
	p = mime_skip_cfws(p, NULL);
	p = read_num(p, &hour, &nd);
	if (nd < 1 || nd > 2)
		return INT64_MIN;
	p = mime_skip_cfws(p, NULL);
	if (*p++ != ':')
		return INT64_MIN;
	p = mime_skip_cfws(p, NULL);
	p = read_num(p, &min, &nd);
	if (nd != 2)
		return INT64_MIN;
	p = mime_skip_cfws(p, NULL);
	if (*p == ':') {
		p = mime_skip_cfws(p + 1, NULL);
		p = read_num(p, &sec, &nd);
		if (nd != 2)
			return INT64_MIN;
		p = mime_skip_cfws(p, NULL);
	}
	static const int mdays[] = { 31, 29, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31 };
	if (day < 1 || day > mdays[mon - 1] || hour > 23 || min > 59 || sec > 60)
		return INT64_MIN;
	if (mon == 2 && day == 29 &&
	    !(year % 4 == 0 && (year % 100 != 0 || year % 400 == 0)))
		return INT64_MIN;

	int zone = 0;
	if (*p == '+' || *p == '-') {
		int z, zd;
		const char *q = read_num(p + 1, &z, &zd);
		if (zd != 4 || z % 100 > 59)
			return INT64_MIN;
		zone = (z / 100) * 60 + z % 100;
		if (*p == '-')
			zone = -zone;
		p = q;
	} else if (*p != '\0') {
		char name[8];
		size_t n = 0;
		while (((*p | 0x20) >= 'a' && (*p | 0x20) <= 'z') && n < sizeof(name) - 1)
			name[n++] = lower_c(*p++);
		name[n] = '\0';
		for (size_t i = 0; i < sizeof(zones) / sizeof(zones[0]); i++) {
			if (strcmp(name, zones[i].name) == 0)
				zone = zones[i].mins;
		}
		/* Military zones and unknown names count as UTC (RFC 5322
		 * section 4.3 says their meaning is unreliable). */
	}
	int64_t t = days_from_civil(year, (unsigned)mon, (unsigned)day) * 86400 +
		hour * 3600 + min * 60 + sec;
	return t - (int64_t)zone * 60;
}

/* ---- msg-ids ---- */

static const char *next_msgid(const char *p, eng_buf *id)
{
	for (;;) {
		p = mime_skip_cfws(p, NULL);
		if (*p == '\0')
			return NULL;
		if (*p != '<') {
			p++;
			continue;
		}
		eng_buf_reset(&*id);
		eng_buf_putc(id, '<');
		for (p++; *p != '\0' && *p != '>' && *p != '<'; p++) {
			if (!is_wsp(*p))
				eng_buf_putc(id, *p);
		}
		if (*p != '>')
			continue;
		p++;
		if (id->len > 1) {
			eng_buf_putc(id, '>');
			return p;
		}
	}
}

void mime_parse_msgids(const char *s, char ***ids, size_t *n)
{
	eng_buf id = ENG_BUF_INIT;
	const char *p = s;

	/* The de-duplication is quadratic: bound the list. */
	while (*n < MIME_MAX_LIST && (p = next_msgid(p, &id)) != NULL) {
		bool dup = false;
		for (size_t i = 0; i < *n && !dup; i++)
			dup = strcmp((*ids)[i], id.data) == 0;
		if (dup)
			continue;
		*ids = eng_realloc(*ids, (*n + 1) * sizeof(char *));
		(*ids)[(*n)++] = eng_strdup(id.data);
	}
	eng_buf_free(&id);
}

char *mime_first_msgid(const char *s)
{
	eng_buf id = ENG_BUF_INIT;

	if (next_msgid(s, &id) == NULL) {
		eng_buf_free(&id);
		return NULL;
	}
	return eng_buf_steal(&id, NULL);
}

/* ---- RFC 5256 base subject ---- */

/* Length of a subj-blob ("[" *BLOBCHAR "]" *WSP) at s, or 0. */
static size_t blob_len(const char *s)
{
	size_t i = 1;

	if (s[0] != '[')
		return 0;
	while (s[i] != '\0' && s[i] != '[' && s[i] != ']')
		i++;
	if (s[i] != ']')
		return 0;
	i++;
	while (s[i] == ' ')
		i++;
	return i;
}

/* Length of a subj-leader "*subj-blob subj-refwd" at s, or 0. */
static size_t refwd_len(const char *s)
{
	size_t i = 0, b;

	while ((b = blob_len(s + i)) > 0)
		i += b;
	if (strncasecmp(s + i, "re", 2) == 0)
		i += 2;
	else if (strncasecmp(s + i, "fwd", 3) == 0)
		i += 3;
	else if (strncasecmp(s + i, "fw", 2) == 0)
		i += 2;
	else
		return 0;
	while (s[i] == ' ')
		i++;
	i += blob_len(s + i);
	return s[i] == ':' ? i + 1 : 0;
}

char *mime_base_subject(const char *subject)
{
	size_t len = strlen(subject);
	char *buf, *s;
	size_t n = 0;

	/* The RFC 5256 steps rescan the string; a bound keeps that cheap. */
	if (len > MIME_MAX_SUBJECT) {
		len = MIME_MAX_SUBJECT;
		while (len > 0 && ((unsigned char)subject[len] & 0xc0) == 0x80)
			len--;
	}
	buf = eng_malloc(len + 1);

	/* (1) fold white space runs to one space */
	for (size_t i = 0; i < len; i++) {
		if (is_wsp(subject[i])) {
			if (n > 0 && buf[n - 1] == ' ')
				continue;
			buf[n++] = ' ';
		} else {
			buf[n++] = subject[i];
		}
	}
	buf[n] = '\0';
	s = buf;
	for (;;) {
		/* (2) trailers: "(fwd)" and white space */
		size_t l = strlen(s);
		for (;;) {
			if (l > 0 && s[l - 1] == ' ')
				l--;
			else if (l >= 5 && strncasecmp(s + l - 5, "(fwd)", 5) == 0)
				l -= 5;
			else
				break;
		}
		s[l] = '\0';
		/* (3)+(4) leaders and blobs, until nothing changes */
		for (;;) {
			size_t r;
			if (*s == ' ') {
				s++;
			} else if ((r = refwd_len(s)) > 0) {
				s += r;
			} else if ((r = blob_len(s)) > 0 && s[r] != '\0') {
				s += r;
			} else {
				break;
			}
		}
		/* (6) "[fwd: ... ]" */
		l = strlen(s);
		if (l >= 6 && strncasecmp(s, "[fwd:", 5) == 0 && s[l - 1] == ']') {
			s[l - 1] = '\0';
			s += 5;
			continue;
		}
		break;
	}
	char *r = eng_strdup(s);
	free(buf);
	return r;
}

/* ---- HTML to text, roughly ---- */

static void put_utf8(eng_buf *out, uint32_t cp)
{
	char b[4];

	if (cp == 0 || cp > 0x10ffff || (cp >= 0xd800 && cp <= 0xdfff))
		cp = 0xfffd;
	if (cp < 0x80) {
		eng_buf_putc(out, (char)cp);
	} else if (cp < 0x800) {
		b[0] = (char)(0xc0 | (cp >> 6));
		b[1] = (char)(0x80 | (cp & 0x3f));
		eng_buf_append(out, b, 2);
	} else if (cp < 0x10000) {
		b[0] = (char)(0xe0 | (cp >> 12));
		b[1] = (char)(0x80 | ((cp >> 6) & 0x3f));
		b[2] = (char)(0x80 | (cp & 0x3f));
		eng_buf_append(out, b, 3);
	} else {
		b[0] = (char)(0xf0 | (cp >> 18));
		b[1] = (char)(0x80 | ((cp >> 12) & 0x3f));
		b[2] = (char)(0x80 | ((cp >> 6) & 0x3f));
		b[3] = (char)(0x80 | (cp & 0x3f));
		eng_buf_append(out, b, 4);
	}
}

/* Decodes an entity at s (after '&'); returns the bytes used or 0. */
static size_t html_entity(const char *s, size_t len, eng_buf *out)
{
	static const struct { const char *name; uint32_t cp; } ents[] = {
		{ "amp", '&' }, { "lt", '<' }, { "gt", '>' }, { "quot", '"' },
		{ "apos", '\'' }, { "nbsp", ' ' }, { "copy", 0xa9 },
		{ "reg", 0xae }, { "euro", 0x20ac }, { "hellip", 0x2026 },
		{ "mdash", 0x2014 }, { "ndash", 0x2013 },
	};
	size_t i = 0;

	while (i < len && i < 12 && s[i] != ';')
		i++;
	if (i >= len || s[i] != ';' || i == 0)
		return 0;
	if (s[0] == '#') {
		uint32_t cp = 0;
		size_t k = 1;
		bool hex = k < i && (s[k] == 'x' || s[k] == 'X');
		if (hex)
			k++;
		if (k == i)
			return 0;
		for (; k < i; k++) {
			int v = hex ? mime_hexval(s[k]) : (s[k] >= '0' && s[k] <= '9' ? s[k] - '0' : -1);
			if (v < 0)
				return 0;
			cp = cp * (hex ? 16 : 10) + (uint32_t)v;
			if (cp > 0x10ffff)
				cp = 0x110000;
		}
		put_utf8(out, cp);
		return i + 1;
	}
	for (size_t e = 0; e < sizeof(ents) / sizeof(ents[0]); e++) {
		if (strlen(ents[e].name) == i && strncasecmp(s, ents[e].name, i) == 0) {
			put_utf8(out, ents[e].cp);
			return i + 1;
		}
	}
	return 0;
}

void mime_html_strip(const char *in, size_t len, eng_buf *out)
{
	size_t i = 0;
	const char *skip_to = NULL;    /* inside <script> or <style> */

	eng_buf_puts(out, "");
	while (i < len) {
		char c = in[i];
		if (c == '<') {
			if (len - i >= 4 && memcmp(in + i, "<!--", 4) == 0) {
				const char *e = memmem(in + i + 4, len - i - 4, "-->", 3);
				i = e != NULL ? (size_t)(e - in) + 3 : len;
				continue;
			}
			size_t k = i + 1;
			bool closing = k < len && in[k] == '/';
			if (closing)
				k++;
			char name[12];
			size_t nl = 0;
			while (k < len && nl < sizeof(name) - 1 &&
			       ((in[k] | 0x20) >= 'a' && (in[k] | 0x20) <= 'z'))
				name[nl++] = lower_c(in[k++]);
			name[nl] = '\0';
			const char *gt = memchr(in + i, '>', len - i);
			i = gt != NULL ? (size_t)(gt - in) + 1 : len;
			if (skip_to != NULL) {
				if (closing && strcmp(name, skip_to) == 0)
					skip_to = NULL;
				continue;
			}
			if (!closing && (strcmp(name, "script") == 0 ||
					 strcmp(name, "style") == 0)) {
				skip_to = name[1] == 'c' ? "script" : "style";
				continue;
			}
			if (strcmp(name, "br") == 0 || strcmp(name, "p") == 0 ||
			    strcmp(name, "div") == 0 || strcmp(name, "tr") == 0 ||
			    strcmp(name, "li") == 0)
				eng_buf_putc(out, '\n');
			else if (out->len > 0 && out->data[out->len - 1] != ' ' &&
				 out->data[out->len - 1] != '\n' && nl > 0 &&
				 strcmp(name, "a") != 0 && strcmp(name, "b") != 0 &&
				 strcmp(name, "i") != 0 && strcmp(name, "span") != 0)
				eng_buf_putc(out, ' ');
			continue;
		}
		if (skip_to != NULL) {
			i++;
			continue;
		}
		if (c == '&') {
			size_t n = html_entity(in + i + 1, len - i - 1, out);
			if (n > 0) {
				i += n + 1;
				continue;
			}
		}
		eng_buf_putc(out, c);
		i++;
	}
}

void eng_mime_text_to_utf8(const char *charset, bool html, const char *in,
			   size_t len, eng_buf *out)
{
	eng_buf utf8 = ENG_BUF_INIT;

	mime_charset_to_utf8(charset, in, len, &utf8);
	if (html)
		mime_html_strip(utf8.data != NULL ? utf8.data : "", utf8.len,
				out);
	else
		eng_buf_append(out, utf8.data, utf8.len);
	eng_buf_free(&utf8);
}
