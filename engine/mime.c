/*
 * The incremental MIME parser.
 *
 * Invariants:
 * - Input is consumed one byte at a time by feed_byte() (or, for the rest of
 *   a body line that cannot be a boundary, by feed_run(), which does the
 *   same per byte in one pass); all state lives in the parser, so any
 *   split of the input gives the same result, and the work per byte is
 *   bounded (by the nesting depth at a line end), so the whole parse is
 *   linear.
 * - The parser keeps a stack of frames, one per part being parsed: the
 *   root, then each open multipart child or embedded message. Only the top
 *   frame receives header or body bytes. A frame is either in its header
 *   (bytes collected, up to max_header_bytes) or in its body.
 * - A line is a boundary candidate while it could still be "--boundary"
 *   for an open multipart on the stack; its first CAND_MAX bytes are kept
 *   so that the text extractor only sees lines that turned out not to be
 *   boundaries. The line break before a boundary belongs to the boundary
 *   (RFC 2046 section 5.1.1), so a part ends where that line break starts.
 * - Past a limit nothing is split further: the bytes stay in the body of
 *   the current part and ENG_MIME_DEGRADED is set (and propagates to the
 *   ancestors when the part closes).
 */
#include "mime_private.h"
#include "eng_error.h"

#include <stdlib.h>
#include <string.h>

#define CAND_MAX (2 + MIME_MAX_BOUNDARY + 2 + 64)

enum cte { CTE_IDENT, CTE_QP, CTE_B64 };
enum text_kind { TEXT_NONE, TEXT_PLAIN, TEXT_HTML };

struct frame {
	eng_mime_part *part;
	bool in_header;
	bool is_message;       /* a message root: its header is an envelope */
	bool child_digest;     /* multipart/digest: children default to message/rfc822 */
	bool default_rfc822;
	char *boundary;        /* set while the boundary is active */
	size_t blen;
	uint64_t lf_at_body;   /* LFs before body_off */
	eng_buf hdr;
	uint32_t n_fields;
	size_t field_start;
	bool skip_field, hdr_full;
};

/* Where a closing part ends: the offset, the LFs before it and whether
 * the byte before it is an LF (for body_lines). */
struct endinfo {
	uint64_t off;
	uint64_t lfs;
	bool last_lf;
};

struct eng_mime_parser {
	eng_mime_limits lim;
	uint64_t off, n_lf;
	uint64_t line_start, line_lf;
	uint64_t prev_eol, prev_line_start;
	bool have_prev_line;
	uint8_t last_byte;
	bool cand;
	size_t cand_len;
	uint8_t cand_buf[CAND_MAX];
	size_t hdr_mark;
	size_t n_active;       /* frames with an active boundary */
	struct frame *st;
	size_t n_st, cap_st;
	size_t n_parts;
	bool parts_full;
	bool finished;
	eng_mime_part *root;
	bool root_header_done; /* root->body_off is final */
	eng_mime_summary sum;
	bool sum_taken;
	/* Text extraction of the top (leaf) frame. */
	enum text_kind text_kind;
	enum cte cte;
	char *charset;
	eng_buf text_raw;
	size_t text_cap;
	bool text_pending_lf;
	uint32_t b64_acc;
	int b64_bits;
	char qp_pend[2];
	int qp_n;
};

void eng_mime_limits_default(eng_mime_limits *limits)
{
	limits->max_depth = 100;
	limits->max_parts = 10000;
	limits->max_headers = 1000;
	limits->max_header_bytes = 256 * 1024;
	limits->max_text_bytes = 1024 * 1024;
}

static eng_mime_part *new_part(eng_mime_parser *p, uint64_t header_off)
{
	if (p->n_parts >= p->lim.max_parts) {
		p->parts_full = true;
		return NULL;
	}
	p->n_parts++;
	eng_mime_part *part = eng_calloc(1, sizeof(*part));
	part->header_off = part->body_off = part->body_end = header_off;
	return part;
}

static void push_frame(eng_mime_parser *p, eng_mime_part *part, bool is_message,
		       bool default_rfc822)
{
	if (p->n_st == p->cap_st) {
		p->cap_st = p->cap_st ? p->cap_st * 2 : 8;
		p->st = eng_realloc(p->st, p->cap_st * sizeof(*p->st));
	}
	struct frame *f = &p->st[p->n_st++];
	memset(f, 0, sizeof(*f));
	f->part = part;
	f->in_header = true;
	f->is_message = is_message;
	f->default_rfc822 = default_rfc822;
}

eng_mime_parser *eng_mime_parser_new(const eng_mime_limits *limits)
{
	eng_mime_parser *p = eng_calloc(1, sizeof(*p));

	if (limits != NULL)
		p->lim = *limits;
	else
		eng_mime_limits_default(&p->lim);
	if (p->lim.max_depth < 1)
		p->lim.max_depth = 1;
	if (p->lim.max_depth > MIME_MAX_DEPTH)
		p->lim.max_depth = MIME_MAX_DEPTH;
	if (p->lim.max_parts < 1)
		p->lim.max_parts = 1;
	p->root = new_part(p, 0);
	p->sum.sent_date = INT64_MIN;
	push_frame(p, p->root, true, false);
	return p;
}

/* ---- text extraction ---- */

static void text_out(eng_mime_parser *p, char c)
{
	if (p->text_raw.len < p->text_cap)
		eng_buf_putc(&p->text_raw, c);
}

static int hex_digit(char c)
{
	if (c >= '0' && c <= '9')
		return c - '0';
	if (c >= 'a' && c <= 'f')
		return c - 'a' + 10;
	if (c >= 'A' && c <= 'F')
		return c - 'A' + 10;
	return -1;
}

static void text_byte(eng_mime_parser *p, char c)
{
	if (c == '\r' || p->text_kind == TEXT_NONE)
		return;
	switch (p->cte) {
	case CTE_IDENT:
		text_out(p, c);
		break;
	case CTE_B64: {
		int v = -1;
		if (c >= 'A' && c <= 'Z')
			v = c - 'A';
		else if (c >= 'a' && c <= 'z')
			v = c - 'a' + 26;
		else if (c >= '0' && c <= '9')
			v = c - '0' + 52;
		else if (c == '+')
			v = 62;
		else if (c == '/')
			v = 63;
		else if (c == '=')
			p->b64_bits = 0;
		if (v < 0)
			break;
		p->b64_acc = ((p->b64_acc << 6) | (uint32_t)v) & 0xffffff;
		p->b64_bits += 6;
		if (p->b64_bits >= 8) {
			p->b64_bits -= 8;
			text_out(p, (char)((p->b64_acc >> p->b64_bits) & 0xff));
		}
		break;
	}
	case CTE_QP:
		if (p->qp_n == 0) {
			if (c == '=')
				p->qp_pend[p->qp_n++] = c;
			else
				text_out(p, c);
		} else if (p->qp_n == 1) {
			if (c == '\n') {
				p->qp_n = 0;    /* soft line break */
			} else if (hex_digit(c) >= 0) {
				p->qp_pend[p->qp_n++] = c;
			} else {
				text_out(p, '=');
				text_out(p, c);
				p->qp_n = 0;
			}
		} else {
			if (hex_digit(c) >= 0) {
				text_out(p, (char)(hex_digit(p->qp_pend[1]) * 16 +
						   hex_digit(c)));
			} else {
				text_out(p, '=');
				text_out(p, p->qp_pend[1]);
				text_out(p, c);
			}
			p->qp_n = 0;
		}
		break;
	}
}

/*
 * The same as text_out for each of s[0..n): the bytes up to text_cap, in
 * one append (text_bytes' runs: the bulk of a text part, not byte by byte).
 */
static void text_out_run(eng_mime_parser *p, const uint8_t *s, size_t n)
{
	size_t room;

	if (p->text_raw.len >= p->text_cap || n == 0)
		return;
	room = p->text_cap - p->text_raw.len;
	eng_buf_append(&p->text_raw, s, n < room ? n : room);
}

/* text_byte for a run of an identity-encoded part: all but the CRs. */
static void text_ident_run(eng_mime_parser *p, const uint8_t *s, size_t n)
{
	while (n > 0) {
		const uint8_t *cr = memchr(s, '\r', n);
		size_t k = cr != NULL ? (size_t)(cr - s) : n;

		text_out_run(p, s, k);
		if (cr == NULL)
			break;
		s += k + 1;
		n -= k + 1;
	}
}

/* text_byte for a run of a base64 part: decoded 3 bytes per 4, anything
 * outside the alphabet skipped, '=' ending the group; out in blocks. */
static void text_b64_run(eng_mime_parser *p, const uint8_t *s, size_t n)
{
	uint8_t out[256];
	size_t o = 0;
	uint32_t acc = p->b64_acc;
	int bits = p->b64_bits;

	for (size_t i = 0; i < n; i++) {
		uint8_t c = s[i];
		uint32_t v;

		if (c >= 'A' && c <= 'Z')
			v = (uint32_t)(c - 'A');
		else if (c >= 'a' && c <= 'z')
			v = (uint32_t)(c - 'a' + 26);
		else if (c >= '0' && c <= '9')
			v = (uint32_t)(c - '0' + 52);
		else if (c == '+')
			v = 62;
		else if (c == '/')
			v = 63;
		else {
			if (c == '=')
				bits = 0;
			continue;
		}
		acc = ((acc << 6) | v) & 0xffffff;
		bits += 6;
		if (bits >= 8) {
			bits -= 8;
			out[o++] = (uint8_t)((acc >> bits) & 0xff);
			if (o == sizeof(out)) {
				text_out_run(p, out, o);
				o = 0;
			}
		}
	}
	text_out_run(p, out, o);
	p->b64_acc = acc;
	p->b64_bits = bits;
}

/* Body bytes of the top frame that are known not to be a boundary. */
static void text_bytes(eng_mime_parser *p, const uint8_t *s, size_t n)
{
	if (p->text_kind == TEXT_NONE)
		return;
	if (p->text_pending_lf) {
		text_byte(p, '\n');
		p->text_pending_lf = false;
	}
	switch (p->cte) {
	case CTE_IDENT:
		text_ident_run(p, s, n);
		break;
	case CTE_B64:
		text_b64_run(p, s, n);
		break;
	default:
		for (size_t i = 0; i < n; i++)
			text_byte(p, (char)s[i]);
		break;
	}
}

static void text_start(eng_mime_parser *p, const eng_mime_part *part)
{
	size_t used = p->sum.body_text.len;

	if (strcmp(part->type, "text") != 0)
		return;
	if (strcmp(part->subtype, "plain") == 0)
		p->text_kind = TEXT_PLAIN;
	else if (strcmp(part->subtype, "html") == 0)
		p->text_kind = TEXT_HTML;
	else
		return;
	if (used >= p->lim.max_text_bytes) {
		p->text_kind = TEXT_NONE;
		return;
	}
	/* Room for markup and multi-byte charsets, still bounded. */
	p->text_cap = (p->lim.max_text_bytes - used) * 4 + 64;
	p->cte = strcmp(part->encoding, "quoted-printable") == 0 ? CTE_QP :
		strcmp(part->encoding, "base64") == 0 ? CTE_B64 : CTE_IDENT;
	const char *cs = mime_param_get(part->params, part->n_params, "charset");
	p->charset = cs != NULL ? eng_strdup(cs) : NULL;
	eng_buf_reset(&p->text_raw);
	p->b64_acc = 0;
	p->b64_bits = 0;
	p->qp_n = 0;
	p->text_pending_lf = false;
}

/* Appends s to b, at most max bytes in all, cut at a UTF-8 boundary. */
static void append_bounded(eng_buf *b, const char *s, size_t n, size_t max)
{
	if (b->len >= max)
		return;
	if (n > max - b->len) {
		n = max - b->len;
		while (n > 0 && ((unsigned char)s[n] & 0xc0) == 0x80)
			n--;
	}
	eng_buf_append(b, s, n);
}

static void text_finish(eng_mime_parser *p)
{
	eng_buf utf8 = ENG_BUF_INIT, plain = ENG_BUF_INIT;

	if (p->text_kind == TEXT_NONE)
		return;
	for (int i = 0; i < p->qp_n; i++)
		text_out(p, p->qp_pend[i]);
	mime_charset_to_utf8(p->charset, p->text_raw.data != NULL ? p->text_raw.data : "",
			     p->text_raw.len, &utf8);
	eng_buf *t = &utf8;
	if (p->text_kind == TEXT_HTML) {
		mime_html_strip(utf8.data != NULL ? utf8.data : "", utf8.len, &plain);
		t = &plain;
	}
	eng_buf *out = &p->sum.body_text;
	if (t->len > 0) {
		if (out->len > 0)
			append_bounded(out, "\n", 1, p->lim.max_text_bytes);
		append_bounded(out, t->data, t->len, p->lim.max_text_bytes);
	}
	eng_buf_free(&utf8);
	eng_buf_free(&plain);
	free(p->charset);
	p->charset = NULL;
	eng_buf_free(&p->text_raw);
	p->text_kind = TEXT_NONE;
	p->text_pending_lf = false;
}

/* ---- headers ---- */

static bool name_is(const char *name, size_t len, const char *want)
{
	return strlen(want) == len && strncasecmp(name, want, len) == 0;
}

static void set_once(char **dst, const char *value)
{
	if (*dst == NULL)
		*dst = eng_strdup(value);
}

static void summary_address(const eng_mime_addrlist *list, char **addr_r,
			    char **display_r)
{
	for (size_t i = 0; i < list->count; i++) {
		const eng_mime_addr *a = &list->addrs[i];
		if (a->mailbox == NULL || a->host == NULL)
			continue;
		eng_buf b = ENG_BUF_INIT;
		eng_buf_puts(&b, a->mailbox);
		if (a->host[0] != '\0') {
			eng_buf_putc(&b, '@');
			eng_buf_puts(&b, a->host);
		}
		mime_lower(b.data);
		if (display_r != NULL) {
			eng_buf d = ENG_BUF_INIT;
			if (a->name != NULL)
				mime_decode_2047(a->name, strlen(a->name), &d);
			if (d.len == 0) {
				eng_buf_free(&d);
				eng_buf_puts(&d, b.data);
			}
			*display_r = eng_buf_steal(&d, NULL);
		}
		*addr_r = eng_buf_steal(&b, NULL);
		return;
	}
}

/* Fills the part (and envelope, and for the root the summary) from the
 * collected header. */
static void parse_header(eng_mime_parser *p, struct frame *f)
{
	eng_mime_part *part = f->part;
	const char *h = f->hdr.data != NULL ? f->hdr.data : "";
	size_t len = f->hdr.len, i = 0;
	eng_buf val = ENG_BUF_INIT;
	char *ctype = NULL, *cte = NULL, *cdisp = NULL, *clang = NULL;
	char *references = NULL;
	eng_mime_envelope *env = NULL;
	bool is_root = part == p->root;

	if (f->is_message)
		env = eng_calloc(1, sizeof(*env));
	while (i < len) {
		/* One field: a line and its continuation lines. */
		size_t start = i;
		do {
			const char *nl = memchr(h + i, '\n', len - i);
			i = nl != NULL ? (size_t)(nl - h) + 1 : len;
		} while (i < len && (h[i] == ' ' || h[i] == '\t'));
		const char *colon = memchr(h + start, ':', i - start);
		if (colon == NULL)
			continue;
		size_t nlen = (size_t)(colon - (h + start));
		while (nlen > 0 && (h[start + nlen - 1] == ' ' || h[start + nlen - 1] == '\t'))
			nlen--;
		if (nlen == 0)
			continue;
		const char *name = h + start;
		eng_buf_reset(&val);
		eng_buf_puts(&val, "");
		for (const char *s = colon + 1; s < h + i; s++) {
			if (*s != '\r' && *s != '\n' && *s != '\0')
				eng_buf_putc(&val, *s);
		}
		/* Trim. */
		size_t vs = 0, ve = val.len;
		while (vs < ve && (val.data[vs] == ' ' || val.data[vs] == '\t'))
			vs++;
		while (ve > vs && (val.data[ve - 1] == ' ' || val.data[ve - 1] == '\t'))
			ve--;
		val.data[ve] = '\0';
		const char *v = val.data + vs;

		if (name_is(name, nlen, "content-type"))
			set_once(&ctype, v);
		else if (name_is(name, nlen, "content-transfer-encoding"))
			set_once(&cte, v);
		else if (name_is(name, nlen, "content-disposition"))
			set_once(&cdisp, v);
		else if (name_is(name, nlen, "content-language"))
			set_once(&clang, v);
		else if (name_is(name, nlen, "content-id"))
			set_once(&part->id, v);
		else if (name_is(name, nlen, "content-description"))
			set_once(&part->description, v);
		else if (name_is(name, nlen, "content-md5"))
			set_once(&part->md5, v);
		else if (name_is(name, nlen, "content-location"))
			set_once(&part->location, v);
		if (env != NULL) {
			if (name_is(name, nlen, "date"))
				set_once(&env->date, v);
			else if (name_is(name, nlen, "subject"))
				set_once(&env->subject, v);
			else if (name_is(name, nlen, "in-reply-to"))
				set_once(&env->in_reply_to, v);
			else if (name_is(name, nlen, "message-id"))
				set_once(&env->message_id, v);
			else if (name_is(name, nlen, "references"))
				set_once(&references, v);
			else if (name_is(name, nlen, "from") && env->from.count == 0)
				mime_parse_addrlist(v, &env->from);
			else if (name_is(name, nlen, "sender") && env->sender.count == 0)
				mime_parse_addrlist(v, &env->sender);
			else if (name_is(name, nlen, "reply-to") && env->reply_to.count == 0)
				mime_parse_addrlist(v, &env->reply_to);
			else if (name_is(name, nlen, "to") && env->to.count == 0)
				mime_parse_addrlist(v, &env->to);
			else if (name_is(name, nlen, "cc") && env->cc.count == 0)
				mime_parse_addrlist(v, &env->cc);
			else if (name_is(name, nlen, "bcc") && env->bcc.count == 0)
				mime_parse_addrlist(v, &env->bcc);
		}
		if (is_root && p->sum.header_text.len < p->lim.max_text_bytes) {
			eng_buf line = ENG_BUF_INIT;
			mime_utf8_sanitize(name, nlen, &line);
			eng_buf_puts(&line, ": ");
			mime_decode_2047(v, strlen(v), &line);
			eng_buf_putc(&line, '\n');
			append_bounded(&p->sum.header_text, line.data, line.len,
				       p->lim.max_text_bytes);
			eng_buf_free(&line);
		}
	}
	eng_buf_free(&val);

	if (ctype != NULL)
		mime_parse_content_type(ctype, &part->type, &part->subtype,
					&part->params, &part->n_params);
	if (part->type == NULL) {
		/* RFC 2045 5.2: absent or invalid means text/plain (RFC 2046
		 * 5.1.5: message/rfc822 inside multipart/digest). */
		part->type = eng_strdup(f->default_rfc822 ? "message" : "text");
		part->subtype = eng_strdup(f->default_rfc822 ? "rfc822" : "plain");
	}
	part->encoding = cte != NULL ? mime_parse_token(cte) : NULL;
	if (part->encoding == NULL)
		part->encoding = eng_strdup("7bit");
	if (cdisp != NULL)
		mime_parse_disposition(cdisp, &part->disposition,
				       &part->disp_params, &part->n_disp_params);
	if (part->disposition == NULL && part->n_disp_params > 0) {
		mime_params_free(part->disp_params, part->n_disp_params);
		part->disp_params = NULL;
		part->n_disp_params = 0;
	}
	if (clang != NULL)
		mime_parse_languages(clang, &part->languages, &part->n_languages);
	free(ctype);
	free(cte);
	free(cdisp);
	free(clang);

	if (env != NULL) {
		part->envelope = env;
		if (is_root) {
			eng_mime_summary *s = &p->sum;
			if (env->subject != NULL) {
				eng_buf b = ENG_BUF_INIT;
				mime_decode_2047(env->subject, strlen(env->subject), &b);
				s->subject = eng_buf_steal(&b, NULL);
				s->base_subject = mime_base_subject(s->subject);
			}
			summary_address(&env->from, &s->from_addr, &s->from_display);
			summary_address(&env->to, &s->to_addr, &s->to_display);
			summary_address(&env->cc, &s->cc_addr, NULL);
			s->sent_date = env->date != NULL ?
				mime_parse_date(env->date) : INT64_MIN;
			if (env->message_id != NULL)
				s->message_id = mime_first_msgid(env->message_id);
			if (references != NULL)
				mime_parse_msgids(references, &s->references,
						  &s->n_references);
			if (env->in_reply_to != NULL)
				mime_parse_msgids(env->in_reply_to, &s->references,
						  &s->n_references);
		}
	}
	free(references);
}

static bool identity_encoding(const char *enc)
{
	return strcmp(enc, "7bit") == 0 || strcmp(enc, "8bit") == 0 ||
		strcmp(enc, "binary") == 0;
}

/* The header of the top frame ended at body_off; cut is true when a
 * boundary or the end of input cut it short (then the part is closed
 * right away). */
static void header_done(eng_mime_parser *p, uint64_t body_off, bool cut)
{
	struct frame *f = &p->st[p->n_st - 1];
	eng_mime_part *part = f->part;

	part->body_off = part->body_end = body_off;
	if (part == p->root)
		p->root_header_done = true;
	f->lf_at_body = p->n_lf + (cut ? 0 : 1);
	parse_header(p, f);
	eng_buf_free(&f->hdr);
	f->in_header = false;
	if (cut)
		return;

	if (strcmp(part->type, "multipart") == 0) {
		const char *b = mime_param_get(part->params, part->n_params, "boundary");
		size_t bl = b != NULL ? strlen(b) : 0;
		if (bl == 0 || bl > MIME_MAX_BOUNDARY)
			return;
		if (p->n_st >= p->lim.max_depth) {
			part->flags |= ENG_MIME_DEGRADED;
			return;
		}
		f->boundary = eng_strdup(b);
		f->blen = bl;
		f->child_digest = strcmp(part->subtype, "digest") == 0;
		p->n_active++;
	} else if (strcmp(part->type, "message") == 0 &&
		   (strcmp(part->subtype, "rfc822") == 0 ||
		    strcmp(part->subtype, "global") == 0) &&
		   identity_encoding(part->encoding)) {
		if (p->n_st >= p->lim.max_depth) {
			part->flags |= ENG_MIME_DEGRADED;
			return;
		}
		eng_mime_part *child = new_part(p, body_off);
		if (child == NULL) {
			part->flags |= ENG_MIME_DEGRADED;
			return;
		}
		part->message = child;
		push_frame(p, child, true, false);    /* f is stale from here */
	} else {
		text_start(p, part);
	}
}

static void close_top(eng_mime_parser *p, struct endinfo *e)
{
	struct frame *f = &p->st[p->n_st - 1];
	eng_mime_part *part = f->part;

	if (f->in_header) {
		uint64_t bo = e->off > part->header_off ? e->off : part->header_off;
		header_done(p, bo, true);
	}
	if (p->text_kind != TEXT_NONE)
		text_finish(p);
	if (e->off > part->body_off) {
		part->body_end = e->off;
		part->body_lines = (uint32_t)(e->lfs - f->lf_at_body +
					      (e->last_lf ? 0 : 1));
	} else {
		part->body_end = part->body_off;
		part->body_lines = 0;
		if (part->body_end > e->off) {
			/* The part began at the boundary line itself (an
			 * empty header or body right before it): its parents
			 * must end no earlier, so they keep the line break
			 * before the boundary. This only happens for a
			 * boundary close, where body_end == line_start. */
			e->off = part->body_end;
			e->lfs = p->line_lf;
			e->last_lf = true;
		}
	}
	if (f->boundary != NULL) {
		free(f->boundary);
		f->boundary = NULL;
		p->n_active--;
	}
	eng_buf_free(&f->hdr);
	p->n_st--;
	if (p->n_st > 0) {
		p->st[p->n_st - 1].part->flags |= part->flags &
			(ENG_MIME_DEGRADED | ENG_MIME_HAS_8BIT | ENG_MIME_HAS_NUL);
	}
}

/* The current line [line_start, off) as a boundary: the index of the
 * frame whose boundary it is, or -1. */
static long match_boundary(eng_mime_parser *p, bool *close_r)
{
	size_t len = p->cand_len;
	const uint8_t *b = p->cand_buf;

	if (len > 0 && b[len - 1] == '\r')
		len--;
	if (len < 3 || b[0] != '-' || b[1] != '-')
		return -1;
	for (size_t i = p->n_st; i-- > 0;) {
		struct frame *f = &p->st[i];
		if (f->boundary == NULL || len < 2 + f->blen ||
		    memcmp(b + 2, f->boundary, f->blen) != 0)
			continue;
		const uint8_t *r = b + 2 + f->blen;
		size_t rl = len - 2 - f->blen;
		bool is_close = rl >= 2 && r[0] == '-' && r[1] == '-';
		if (is_close) {
			r += 2;
			rl -= 2;
		}
		bool ok = true;
		for (size_t k = 0; k < rl && ok; k++)
			ok = r[k] == ' ' || r[k] == '\t';
		if (!ok)
			continue;
		if (!is_close && p->parts_full)
			continue;
		*close_r = is_close;
		return (long)i;
	}
	return -1;
}

/* Handles a boundary line for frame k; next_off is where the next part's
 * header would start. */
static void on_boundary(eng_mime_parser *p, size_t k, bool is_close,
			uint64_t next_off)
{
	struct endinfo e;

	if (p->have_prev_line) {
		e.off = p->prev_eol;
		e.lfs = p->line_lf - 1;
		e.last_lf = p->prev_eol == p->prev_line_start;
	} else {
		e.off = p->line_start;
		e.lfs = p->line_lf;
		e.last_lf = false;
	}
	if (!is_close) {
		/* Check the part limit before closing anything. */
		eng_mime_part *child = new_part(p, next_off);
		if (child == NULL) {
			p->st[p->n_st - 1].part->flags |= ENG_MIME_DEGRADED;
			return;
		}
		while (p->n_st - 1 > k)
			close_top(p, &e);
		struct frame *m = &p->st[k];
		eng_mime_part *mp = m->part;
		if ((mp->n_children & (mp->n_children - 1)) == 0)
			mp->children = eng_realloc(mp->children,
						   (mp->n_children ? mp->n_children * 2 : 1) *
						   sizeof(*mp->children));
		mp->children[mp->n_children++] = child;
		push_frame(p, child, false, m->child_digest);
		return;
	}
	while (p->n_st - 1 > k)
		close_top(p, &e);
	struct frame *m = &p->st[k];
	free(m->boundary);
	m->boundary = NULL;
	p->n_active--;
	p->text_pending_lf = false;
}

static void cand_drop(eng_mime_parser *p)
{
	struct frame *f = &p->st[p->n_st - 1];

	p->cand = false;
	if (!f->in_header)
		text_bytes(p, p->cand_buf, p->cand_len);
}

static void header_line_start(eng_mime_parser *p, struct frame *f, uint8_t c)
{
	p->hdr_mark = f->hdr.len;
	if (c == ' ' || c == '\t' || c == '\r' || c == '\n')
		return;
	f->n_fields++;
	f->field_start = f->hdr.len;
	f->skip_field = f->hdr_full;
	if (f->n_fields > p->lim.max_headers && !f->hdr_full) {
		f->part->flags |= ENG_MIME_DEGRADED;
		f->hdr_full = f->skip_field = true;
	}
}

static void header_byte(eng_mime_parser *p, struct frame *f, uint8_t c)
{
	if (f->skip_field)
		return;
	if (f->hdr.len + 1 > p->lim.max_header_bytes) {
		/* Drop the whole field rather than keep half of it. */
		f->hdr.len = f->field_start;
		if (p->hdr_mark > f->hdr.len)
			p->hdr_mark = f->hdr.len;
		f->part->flags |= ENG_MIME_DEGRADED;
		f->skip_field = f->hdr_full = true;
		return;
	}
	eng_buf_putc(&f->hdr, (char)c);
}

static void end_line(eng_mime_parser *p)
{
	struct frame *f = &p->st[p->n_st - 1];
	bool blank = p->off == p->line_start ||
		(p->off == p->line_start + 1 && p->last_byte == '\r');

	if (p->cand) {
		bool is_close = false;
		long k = match_boundary(p, &is_close);
		if (k >= 0) {
			if (f->in_header) {
				f->hdr.len = p->hdr_mark;
				if (f->hdr.data != NULL)
					f->hdr.data[f->hdr.len] = '\0';
			}
			on_boundary(p, (size_t)k, is_close, p->off + 1);
			return;
		}
		p->cand = false;
		if (!f->in_header)
			text_bytes(p, p->cand_buf, p->cand_len);
	}
	if (f->in_header) {
		if (blank)
			header_done(p, p->off + 1, false);
	} else if (p->text_kind != TEXT_NONE) {
		if (p->text_pending_lf)
			text_byte(p, '\n');
		p->text_pending_lf = true;
	}
}

static void feed_byte(eng_mime_parser *p, uint8_t c)
{
	struct frame *f = &p->st[p->n_st - 1];

	if (p->off == p->line_start) {
		p->line_lf = p->n_lf;
		p->cand = p->n_active > 0;
		p->cand_len = 0;
		if (f->in_header)
			header_line_start(p, f, c);
	}
	if (c >= 0x80)
		f->part->flags |= ENG_MIME_HAS_8BIT;
	else if (c == 0)
		f->part->flags |= ENG_MIME_HAS_NUL;
	if (f->in_header)
		header_byte(p, f, c);
	if (c == '\n') {
		end_line(p);
		p->prev_eol = p->last_byte == '\r' && p->off > p->line_start ?
			p->off - 1 : p->off;
		p->prev_line_start = p->line_start;
		p->have_prev_line = true;
		p->line_start = p->off + 1;
		p->n_lf++;
	} else if (p->cand) {
		if (p->cand_len < CAND_MAX &&
		    (p->cand_len >= 2 || c == '-')) {
			p->cand_buf[p->cand_len++] = c;
		} else {
			cand_drop(p);
			if (!f->in_header)
				text_bytes(p, &c, 1);
		}
	} else if (!f->in_header && p->text_kind != TEXT_NONE) {
		text_bytes(p, &c, 1);
	}
	p->last_byte = c;
	p->off++;
}

/*
 * What feed_byte does for each of n bytes, none of them an LF, in the
 * middle of a body line that can no longer be a boundary (the bulk of a
 * message: attachments, text): the flags, the text, the offsets. The
 * result is the same as n calls of feed_byte.
 */
static void feed_run(eng_mime_parser *p, struct frame *f, const uint8_t *s,
		     size_t n)
{
	uint8_t any = 0;

	for (size_t i = 0; i < n; i++)
		any |= s[i];
	if (any & 0x80)
		f->part->flags |= ENG_MIME_HAS_8BIT;
	if (memchr(s, 0, n) != NULL)
		f->part->flags |= ENG_MIME_HAS_NUL;
	if (p->text_kind != TEXT_NONE)
		text_bytes(p, s, n);
	p->last_byte = s[n - 1];
	p->off += n;
}

void eng_mime_parser_feed(eng_mime_parser *p, const void *data, size_t len)
{
	const uint8_t *s = data;
	size_t i = 0;

	if (p == NULL || p->finished)
		return;
	while (i < len) {
		struct frame *f = &p->st[p->n_st - 1];

		if (p->off != p->line_start && !p->cand && !f->in_header &&
		    s[i] != '\n') {
			const uint8_t *nl = memchr(s + i, '\n', len - i);
			size_t n = nl != NULL ? (size_t)(nl - (s + i)) : len - i;

			feed_run(p, f, s + i, n);
			i += n;
			continue;
		}
		feed_byte(p, s[i++]);
	}
}

bool eng_mime_parser_body_off(const eng_mime_parser *p, uint64_t *body_off_r)
{
	if (!p->root_header_done)
		return false;
	*body_off_r = p->root->body_off;
	return true;
}

/* RFC 8970 preview: the first 200 characters of the text, white space
 * runs folded to one space. */
static void make_preview(eng_mime_summary *s)
{
	eng_buf b = ENG_BUF_INIT;
	size_t chars = 0;
	const char *t = s->body_text.data;

	for (size_t i = 0; t != NULL && i < s->body_text.len; i++) {
		unsigned char c = (unsigned char)t[i];
		if (c == ' ' || c == '\t' || c == '\n' || c == '\r') {
			if (b.len > 0 && b.data[b.len - 1] != ' ') {
				if (chars == 200)
					break;
				eng_buf_putc(&b, ' ');
				chars++;
			}
			continue;
		}
		if ((c & 0xc0) != 0x80) {
			if (chars == 200)
				break;
			chars++;
		}
		eng_buf_putc(&b, (char)c);
	}
	while (b.len > 0 && b.data[b.len - 1] == ' ')
		b.data[--b.len] = '\0';
	s->preview = b.len > 0 ? eng_buf_steal(&b, NULL) : NULL;
	eng_buf_free(&b);
}

void eng_mime_parser_finish(eng_mime_parser *p, eng_mime_part **root_r,
			    eng_mime_summary *summary_r)
{
	if (!p->finished) {
		p->finished = true;
		if (p->off > p->line_start && p->cand) {
			/* A last line without a line break. */
			bool is_close = false;
			long k = match_boundary(p, &is_close);
			if (k >= 0)
				on_boundary(p, (size_t)k, is_close, p->off);
			else
				cand_drop(p);
		}
		struct endinfo e = { p->off, p->n_lf, p->last_byte == '\n' };
		while (p->n_st > 0)
			close_top(p, &e);
		make_preview(&p->sum);
	}
	*root_r = p->root;
	p->root = NULL;
	if (summary_r != NULL) {
		if (!p->sum_taken) {
			*summary_r = p->sum;
			memset(&p->sum, 0, sizeof(p->sum));
			p->sum_taken = true;
		} else {
			memset(summary_r, 0, sizeof(*summary_r));
			summary_r->sent_date = INT64_MIN;
		}
	}
}

void eng_mime_parser_free(eng_mime_parser **pp)
{
	eng_mime_parser *p = *pp;

	if (p == NULL)
		return;
	for (size_t i = 0; i < p->n_st; i++) {
		free(p->st[i].boundary);
		eng_buf_free(&p->st[i].hdr);
	}
	free(p->st);
	free(p->charset);
	eng_buf_free(&p->text_raw);
	eng_mime_part_free(&p->root);
	eng_mime_summary_clear(&p->sum);
	free(p);
	*pp = NULL;
}

void eng_mime_parse(const void *data, size_t len, const eng_mime_limits *limits,
		    eng_mime_part **root_r, eng_mime_summary *summary_r)
{
	eng_mime_parser *p = eng_mime_parser_new(limits);

	eng_mime_parser_feed(p, data, len);
	eng_mime_parser_finish(p, root_r, summary_r);
	eng_mime_parser_free(&p);
}

void eng_mime_part_free(eng_mime_part **rootp)
{
	eng_mime_part *part = *rootp;

	if (part == NULL)
		return;
	free(part->type);
	free(part->subtype);
	mime_params_free(part->params, part->n_params);
	free(part->id);
	free(part->description);
	free(part->encoding);
	free(part->md5);
	free(part->location);
	free(part->disposition);
	mime_params_free(part->disp_params, part->n_disp_params);
	for (size_t i = 0; i < part->n_languages; i++)
		free(part->languages[i]);
	free(part->languages);
	for (size_t i = 0; i < part->n_children; i++)
		eng_mime_part_free(&part->children[i]);
	free(part->children);
	eng_mime_part_free(&part->message);
	mime_envelope_free(&part->envelope);
	free(part);
	*rootp = NULL;
}

void eng_mime_summary_clear(eng_mime_summary *s)
{
	if (s == NULL)
		return;
	free(s->subject);
	free(s->base_subject);
	free(s->from_addr);
	free(s->from_display);
	free(s->to_addr);
	free(s->to_display);
	free(s->cc_addr);
	free(s->message_id);
	for (size_t i = 0; i < s->n_references; i++)
		free(s->references[i]);
	free(s->references);
	free(s->preview);
	eng_buf_free(&s->body_text);
	eng_buf_free(&s->header_text);
	memset(s, 0, sizeof(*s));
	s->sent_date = INT64_MIN;
}
