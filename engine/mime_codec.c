/*
 * The stored form of a MIME tree and IMAP section lookup.
 *
 * Format, version 1 (all integers are unsigned LEB128 varints in their
 * shortest form; a string is varint(len + 1) then len bytes, 0 meaning
 * NULL; strings never contain NUL):
 *
 *   blob     = version(1 byte) part
 *   part     = flags header_off body_off-header_off body_end-body_off
 *              body_lines type subtype n_params *(name value)
 *              id description encoding md5 location disposition
 *              n_disp_params *(name value) n_languages *language
 *              n_children *part has_message(0|1) [part]
 *              has_envelope(0|1) [envelope]
 *   envelope = date subject in_reply_to message_id
 *              from sender reply_to to cc bcc      (each: count *addr)
 *   addr     = name adl mailbox host
 *
 * decode() trusts nothing: every length is checked against the bytes left,
 * offsets must nest (children inside their parent's body, in order) and
 * stay within message_size, recursion is bounded by MIME_MAX_DEPTH, and
 * every field must be in its shortest form so that decode then encode
 * gives back the same bytes.
 */
#include "mime_private.h"
#include "eng_error.h"

#include <stdlib.h>
#include <string.h>

#define MIME_FORMAT_VERSION 1
#define KNOWN_FLAGS (ENG_MIME_DEGRADED | ENG_MIME_HAS_8BIT | ENG_MIME_HAS_NUL)

static void put_varint(eng_buf *out, uint64_t v)
{
	uint8_t b[10];
	size_t n = 0;

	do {
		b[n] = (uint8_t)(v & 0x7f);
		v >>= 7;
		if (v != 0)
			b[n] |= 0x80;
		n++;
	} while (v != 0);
	eng_buf_append(out, b, n);
}

static void put_str(eng_buf *out, const char *s)
{
	if (s == NULL) {
		put_varint(out, 0);
		return;
	}
	size_t len = strlen(s);
	put_varint(out, (uint64_t)len + 1);
	eng_buf_append(out, s, len);
}

static void put_params(eng_buf *out, const eng_mime_param *params, size_t n)
{
	put_varint(out, n);
	for (size_t i = 0; i < n; i++) {
		put_str(out, params[i].name != NULL ? params[i].name : "");
		put_str(out, params[i].value != NULL ? params[i].value : "");
	}
}

static void put_addrlist(eng_buf *out, const eng_mime_addrlist *l)
{
	put_varint(out, l->count);
	for (size_t i = 0; i < l->count; i++) {
		put_str(out, l->addrs[i].name);
		put_str(out, l->addrs[i].adl);
		put_str(out, l->addrs[i].mailbox);
		put_str(out, l->addrs[i].host);
	}
}

static void put_part(eng_buf *out, const eng_mime_part *p)
{
	put_varint(out, p->flags & KNOWN_FLAGS);
	put_varint(out, p->header_off);
	put_varint(out, p->body_off - p->header_off);
	put_varint(out, p->body_end - p->body_off);
	put_varint(out, p->body_lines);
	put_str(out, p->type != NULL ? p->type : "text");
	put_str(out, p->subtype != NULL ? p->subtype : "plain");
	put_params(out, p->params, p->n_params);
	put_str(out, p->id);
	put_str(out, p->description);
	put_str(out, p->encoding != NULL ? p->encoding : "7bit");
	put_str(out, p->md5);
	put_str(out, p->location);
	put_str(out, p->disposition);
	put_params(out, p->disp_params, p->n_disp_params);
	put_varint(out, p->n_languages);
	for (size_t i = 0; i < p->n_languages; i++)
		put_str(out, p->languages[i] != NULL ? p->languages[i] : "");
	put_varint(out, p->n_children);
	for (size_t i = 0; i < p->n_children; i++)
		put_part(out, p->children[i]);
	eng_buf_putc(out, p->message != NULL ? 1 : 0);
	if (p->message != NULL)
		put_part(out, p->message);
	eng_buf_putc(out, p->envelope != NULL ? 1 : 0);
	if (p->envelope != NULL) {
		const eng_mime_envelope *e = p->envelope;
		put_str(out, e->date);
		put_str(out, e->subject);
		put_str(out, e->in_reply_to);
		put_str(out, e->message_id);
		put_addrlist(out, &e->from);
		put_addrlist(out, &e->sender);
		put_addrlist(out, &e->reply_to);
		put_addrlist(out, &e->to);
		put_addrlist(out, &e->cc);
		put_addrlist(out, &e->bcc);
	}
}

void eng_mime_encode(const eng_mime_part *root, eng_buf *out)
{
	eng_buf_putc(out, MIME_FORMAT_VERSION);
	put_part(out, root);
}

/* ---- decoding ---- */

struct rd {
	const uint8_t *p, *end;
	uint64_t msg_size;
};

static int get_varint(struct rd *r, uint64_t *v_r)
{
	uint64_t v = 0;

	for (int shift = 0; shift < 64; shift += 7) {
		if (r->p >= r->end)
			return ENG_EMALFORMED;
		uint8_t b = *r->p++;
		if (shift == 63 && (b & 0x7e) != 0)
			return ENG_EMALFORMED;
		v |= (uint64_t)(b & 0x7f) << shift;
		if ((b & 0x80) == 0) {
			/* Shortest form only: no trailing zero groups. */
			if (b == 0 && shift > 0)
				return ENG_EMALFORMED;
			*v_r = v;
			return 0;
		}
	}
	return ENG_EMALFORMED;
}

/* A count of items each at least min_bytes long: bounded by what is left. */
static int get_count(struct rd *r, size_t min_bytes, size_t *n_r)
{
	uint64_t v;

	if (get_varint(r, &v) != 0 || v > (uint64_t)(r->end - r->p) / min_bytes)
		return ENG_EMALFORMED;
	*n_r = (size_t)v;
	return 0;
}

static int get_str(struct rd *r, bool required, char **s_r)
{
	uint64_t v;

	*s_r = NULL;
	if (get_varint(r, &v) != 0)
		return ENG_EMALFORMED;
	if (v == 0)
		return required ? ENG_EMALFORMED : 0;
	v--;
	if (v > (uint64_t)(r->end - r->p) || memchr(r->p, '\0', (size_t)v) != NULL)
		return ENG_EMALFORMED;
	*s_r = eng_strndup((const char *)r->p, (size_t)v);
	r->p += v;
	return 0;
}

static int get_params(struct rd *r, eng_mime_param **params_r, size_t *n_r)
{
	size_t n;

	if (get_count(r, 2, &n) != 0)
		return ENG_EMALFORMED;
	*n_r = 0;
	*params_r = n > 0 ? eng_calloc(n, sizeof(**params_r)) : NULL;
	for (size_t i = 0; i < n; i++) {
		(*n_r)++;
		if (get_str(r, true, &(*params_r)[i].name) != 0 ||
		    get_str(r, true, &(*params_r)[i].value) != 0)
			return ENG_EMALFORMED;
	}
	return 0;
}

static int get_addrlist(struct rd *r, eng_mime_addrlist *l)
{
	size_t n;

	if (get_count(r, 4, &n) != 0)
		return ENG_EMALFORMED;
	l->addrs = n > 0 ? eng_calloc(n, sizeof(*l->addrs)) : NULL;
	l->count = n;
	for (size_t i = 0; i < n; i++) {
		eng_mime_addr *a = &l->addrs[i];
		if (get_str(r, false, &a->name) != 0 || get_str(r, false, &a->adl) != 0 ||
		    get_str(r, false, &a->mailbox) != 0 || get_str(r, false, &a->host) != 0)
			return ENG_EMALFORMED;
	}
	return 0;
}

static int get_envelope(struct rd *r, eng_mime_envelope *e)
{
	if (get_str(r, false, &e->date) != 0 || get_str(r, false, &e->subject) != 0 ||
	    get_str(r, false, &e->in_reply_to) != 0 ||
	    get_str(r, false, &e->message_id) != 0 ||
	    get_addrlist(r, &e->from) != 0 || get_addrlist(r, &e->sender) != 0 ||
	    get_addrlist(r, &e->reply_to) != 0 || get_addrlist(r, &e->to) != 0 ||
	    get_addrlist(r, &e->cc) != 0 || get_addrlist(r, &e->bcc) != 0)
		return ENG_EMALFORMED;
	return 0;
}

static int get_flag(struct rd *r, bool *v_r)
{
	if (r->p >= r->end || *r->p > 1)
		return ENG_EMALFORMED;
	*v_r = *r->p++ == 1;
	return 0;
}

/* Decodes a part that must lie within [lo, hi]. */
static int get_part(struct rd *r, unsigned depth, uint64_t lo, uint64_t hi,
		    eng_mime_part **part_r)
{
	eng_mime_part *p;
	uint64_t v, hdr_len, body_len, lines;
	bool has;

	*part_r = NULL;
	if (depth >= MIME_MAX_DEPTH)
		return ENG_EMALFORMED;
	p = *part_r = eng_calloc(1, sizeof(*p));
	if (get_varint(r, &v) != 0 || (v & ~(uint64_t)KNOWN_FLAGS) != 0)
		return ENG_EMALFORMED;
	p->flags = (uint32_t)v;
	if (get_varint(r, &p->header_off) != 0 || get_varint(r, &hdr_len) != 0 ||
	    get_varint(r, &body_len) != 0 || get_varint(r, &lines) != 0)
		return ENG_EMALFORMED;
	if (p->header_off < lo || p->header_off > hi ||
	    hdr_len > hi - p->header_off ||
	    body_len > hi - p->header_off - hdr_len || lines > UINT32_MAX)
		return ENG_EMALFORMED;
	p->body_off = p->header_off + hdr_len;
	p->body_end = p->body_off + body_len;
	p->body_lines = (uint32_t)lines;
	if (get_str(r, true, &p->type) != 0 || get_str(r, true, &p->subtype) != 0 ||
	    get_params(r, &p->params, &p->n_params) != 0 ||
	    get_str(r, false, &p->id) != 0 || get_str(r, false, &p->description) != 0 ||
	    get_str(r, true, &p->encoding) != 0 || get_str(r, false, &p->md5) != 0 ||
	    get_str(r, false, &p->location) != 0 ||
	    get_str(r, false, &p->disposition) != 0 ||
	    get_params(r, &p->disp_params, &p->n_disp_params) != 0)
		return ENG_EMALFORMED;
	size_t n;
	if (get_count(r, 1, &n) != 0)
		return ENG_EMALFORMED;
	p->languages = n > 0 ? eng_calloc(n, sizeof(char *)) : NULL;
	for (size_t i = 0; i < n; i++) {
		p->n_languages++;
		if (get_str(r, true, &p->languages[i]) != 0)
			return ENG_EMALFORMED;
	}
	/* A part is at least 9 bytes; children nest and follow each other. */
	if (get_count(r, 9, &n) != 0)
		return ENG_EMALFORMED;
	p->children = n > 0 ? eng_calloc(n, sizeof(*p->children)) : NULL;
	uint64_t next = p->body_off;
	for (size_t i = 0; i < n; i++) {
		p->n_children++;
		if (get_part(r, depth + 1, next, p->body_end, &p->children[i]) != 0)
			return ENG_EMALFORMED;
		next = p->children[i]->body_end;
	}
	if (get_flag(r, &has) != 0)
		return ENG_EMALFORMED;
	if (has && get_part(r, depth + 1, p->body_off, p->body_end, &p->message) != 0)
		return ENG_EMALFORMED;
	if (get_flag(r, &has) != 0)
		return ENG_EMALFORMED;
	if (has) {
		p->envelope = eng_calloc(1, sizeof(*p->envelope));
		if (get_envelope(r, p->envelope) != 0)
			return ENG_EMALFORMED;
	}
	return 0;
}

int eng_mime_decode(const void *blob, size_t len, uint64_t message_size,
		    eng_mime_part **root_r)
{
	struct rd r = { blob, (const uint8_t *)blob + len, message_size };
	eng_mime_part *root = NULL;

	*root_r = NULL;
	if (len < 1)
		return ENG_EMALFORMED;
	if (r.p[0] > MIME_FORMAT_VERSION)
		return ENG_ENEWER;
	if (r.p[0] != MIME_FORMAT_VERSION)
		return ENG_EMALFORMED;
	r.p++;
	if (get_part(&r, 0, 0, message_size, &root) != 0 || r.p != r.end) {
		eng_mime_part_free(&root);
		return ENG_EMALFORMED;
	}
	*root_r = root;
	return 0;
}

/* ---- IMAP section numbers ---- */

static bool is_multipart(const eng_mime_part *p)
{
	return p->type != NULL && strcmp(p->type, "multipart") == 0;
}

const eng_mime_part *eng_mime_find_part(const eng_mime_part *root,
					const char *section)
{
	const eng_mime_part *cur = root;
	bool at_message = true;    /* cur is a message (root or embedded) */
	const char *s = section;

	if (root == NULL)
		return NULL;
	if (s == NULL || *s == '\0')
		return root;
	for (;;) {
		uint64_t n = 0;
		if (*s < '1' || *s > '9')
			return NULL;
		while (*s >= '0' && *s <= '9') {
			n = n * 10 + (uint64_t)(*s++ - '0');
			if (n > UINT32_MAX)
				return NULL;
		}
		if (*s != '\0' && *s != '.')
			return NULL;
		if (!at_message && !is_multipart(cur)) {
			/* Below a leaf part: only into an embedded message. */
			if (cur->message == NULL)
				return NULL;
			cur = cur->message;
		}
		if (is_multipart(cur)) {
			if (n > cur->n_children)
				return NULL;
			cur = cur->children[n - 1];
		} else if (n != 1) {
			return NULL;
		}
		at_message = false;
		if (*s == '\0')
			return cur;
		s++;
	}
}
