/*
 * BODY, BODYSTRUCTURE and ENVELOPE in RFC 3501 / RFC 9051 syntax.
 *
 * Strings are written quoted when every byte is a 7-bit TEXT-CHAR (with
 * '"' and '\' escaped) and as literals ({n}CRLF then the bytes) otherwise,
 * so 8-bit and CR/LF never appear inside a quoted string; absent values
 * are NIL. Following Dovecot, a text part without a charset parameter gets
 * ("charset" "us-ascii"), Sender and Reply-To fall back to From, and a
 * multipart without children (no boundary, or past a limit) is written
 * with one empty text/plain child so that the result still parses.
 */
#include "mime_private.h"

#include <string.h>

static void put_string(eng_buf *out, const char *s)
{
	bool quoted = true;
	size_t len;

	if (s == NULL) {
		eng_buf_puts(out, "NIL");
		return;
	}
	len = strlen(s);
	for (size_t i = 0; i < len && quoted; i++) {
		unsigned char c = (unsigned char)s[i];
		if (c == '\r' || c == '\n' || c == 0 || c >= 0x80)
			quoted = false;
	}
	if (!quoted) {
		eng_buf_printf(out, "{%zu}\r\n", len);
		eng_buf_append(out, s, len);
		return;
	}
	eng_buf_putc(out, '"');
	for (size_t i = 0; i < len; i++) {
		if (s[i] == '"' || s[i] == '\\')
			eng_buf_putc(out, '\\');
		eng_buf_putc(out, s[i]);
	}
	eng_buf_putc(out, '"');
}

static void put_params(eng_buf *out, const eng_mime_param *params, size_t n,
		       bool add_charset)
{
	if (n == 0 && !add_charset) {
		eng_buf_puts(out, "NIL");
		return;
	}
	eng_buf_putc(out, '(');
	if (add_charset)
		eng_buf_puts(out, "\"charset\" \"us-ascii\"");
	for (size_t i = 0; i < n; i++) {
		if (i > 0 || add_charset)
			eng_buf_putc(out, ' ');
		put_string(out, params[i].name);
		eng_buf_putc(out, ' ');
		put_string(out, params[i].value);
	}
	eng_buf_putc(out, ')');
}

static void put_addrlist(eng_buf *out, const eng_mime_addrlist *l)
{
	if (l->count == 0) {
		eng_buf_puts(out, "NIL");
		return;
	}
	eng_buf_putc(out, '(');
	for (size_t i = 0; i < l->count; i++) {
		const eng_mime_addr *a = &l->addrs[i];
		eng_buf_putc(out, '(');
		put_string(out, a->name);
		eng_buf_putc(out, ' ');
		put_string(out, a->adl);
		eng_buf_putc(out, ' ');
		put_string(out, a->mailbox);
		eng_buf_putc(out, ' ');
		put_string(out, a->host);
		eng_buf_putc(out, ')');
	}
	eng_buf_putc(out, ')');
}

void eng_mime_write_envelope(const eng_mime_envelope *env, eng_buf *out)
{
	static const eng_mime_envelope empty;

	if (env == NULL)
		env = &empty;
	eng_buf_putc(out, '(');
	put_string(out, env->date);
	eng_buf_putc(out, ' ');
	put_string(out, env->subject);
	eng_buf_putc(out, ' ');
	put_addrlist(out, &env->from);
	eng_buf_putc(out, ' ');
	put_addrlist(out, env->sender.count > 0 ? &env->sender : &env->from);
	eng_buf_putc(out, ' ');
	put_addrlist(out, env->reply_to.count > 0 ? &env->reply_to : &env->from);
	eng_buf_putc(out, ' ');
	put_addrlist(out, &env->to);
	eng_buf_putc(out, ' ');
	put_addrlist(out, &env->cc);
	eng_buf_putc(out, ' ');
	put_addrlist(out, &env->bcc);
	eng_buf_putc(out, ' ');
	put_string(out, env->in_reply_to);
	eng_buf_putc(out, ' ');
	put_string(out, env->message_id);
	eng_buf_putc(out, ')');
}

/* body-fld-dsp SP body-fld-lang SP body-fld-loc */
static void put_ext_common(eng_buf *out, const eng_mime_part *p)
{
	eng_buf_putc(out, ' ');
	if (p->disposition == NULL) {
		eng_buf_puts(out, "NIL");
	} else {
		eng_buf_putc(out, '(');
		put_string(out, p->disposition);
		eng_buf_putc(out, ' ');
		put_params(out, p->disp_params, p->n_disp_params, false);
		eng_buf_putc(out, ')');
	}
	eng_buf_putc(out, ' ');
	if (p->n_languages == 0) {
		eng_buf_puts(out, "NIL");
	} else if (p->n_languages == 1) {
		put_string(out, p->languages[0]);
	} else {
		eng_buf_putc(out, '(');
		for (size_t i = 0; i < p->n_languages; i++) {
			if (i > 0)
				eng_buf_putc(out, ' ');
			put_string(out, p->languages[i]);
		}
		eng_buf_putc(out, ')');
	}
	eng_buf_putc(out, ' ');
	put_string(out, p->location);
}

static bool is_type(const eng_mime_part *p, const char *type)
{
	return p->type != NULL && strcmp(p->type, type) == 0;
}

static void write_part(const eng_mime_part *p, bool extended, eng_buf *out)
{
	eng_buf_putc(out, '(');
	if (is_type(p, "multipart")) {
		if (p->n_children == 0)
			eng_buf_puts(out, "(\"text\" \"plain\" (\"charset\" \"us-ascii\") "
				     "NIL NIL \"7bit\" 0 0)");
		for (size_t i = 0; i < p->n_children; i++)
			write_part(p->children[i], extended, out);
		eng_buf_putc(out, ' ');
		put_string(out, p->subtype);
		if (extended) {
			eng_buf_putc(out, ' ');
			put_params(out, p->params, p->n_params, false);
			put_ext_common(out, p);
		}
		eng_buf_putc(out, ')');
		return;
	}
	bool text = is_type(p, "text");
	put_string(out, p->type != NULL ? p->type : "text");
	eng_buf_putc(out, ' ');
	put_string(out, p->subtype != NULL ? p->subtype : "plain");
	eng_buf_putc(out, ' ');
	put_params(out, p->params, p->n_params,
		   text && mime_param_get(p->params, p->n_params, "charset") == NULL);
	eng_buf_putc(out, ' ');
	put_string(out, p->id);
	eng_buf_putc(out, ' ');
	put_string(out, p->description);
	eng_buf_putc(out, ' ');
	put_string(out, p->encoding != NULL ? p->encoding : "7bit");
	eng_buf_printf(out, " %llu", (unsigned long long)(p->body_end - p->body_off));
	if (p->message != NULL) {
		eng_buf_putc(out, ' ');
		eng_mime_write_envelope(p->message->envelope, out);
		eng_buf_putc(out, ' ');
		write_part(p->message, extended, out);
		eng_buf_printf(out, " %u", p->body_lines);
	} else if (text) {
		eng_buf_printf(out, " %u", p->body_lines);
	}
	if (extended) {
		eng_buf_putc(out, ' ');
		put_string(out, p->md5);
		put_ext_common(out, p);
	}
	eng_buf_putc(out, ')');
}

void eng_mime_write_bodystructure(const eng_mime_part *part, bool extended,
				  eng_buf *out)
{
	write_part(part, extended, out);
}
