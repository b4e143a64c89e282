/*
 * Fuzz target for the I/O-free parts of FETCH (frontends/imap/
 * imap_fetch_parse.h).
 *
 * Input: byte 0 picks what is fuzzed, byte 1 a split point, the rest is
 * the subject. Checks:
 *  - attributes ("t FETCH 1 " + input through the real IMAP parser, then
 *    imap_fetch_parse): a BAD has a sentence; an accepted spec has at most
 *    IMAP_FETCH_MAX_ITEMS items, each with a label and a sqlited section
 *    that fit, and the label of every item parses back (as BODY.PEEK /
 *    BINARY.PEEK / BINARY.SIZE) to the same part, text and field names;
 *  - HEADER.FIELDS[.NOT] over the input as a header block, with names taken
 *    from its first line: the answer ends with the blank line, holds no
 *    more than the input plus a CRLF per field and the blank line, and the
 *    fields kept and dropped (NOT) never share a line;
 *  - base64 and quoted-printable decoding: fed whole and in two pieces at
 *    the split point, the same bytes; never more bytes out than in;
 *  - PREVIEW: valid UTF-8, at most IMAP_PREVIEW_MAX_CHARS characters, no
 *    leading or trailing space and no two spaces in a row.
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "buf.h"
#include "eng_error.h"
#include "imap_fetch_parse.h"
#include "imap_parser.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static void check(bool ok)
{
	if (!ok)
		abort();
}

/* Runs "t FETCH 1 <args>\r\n" through the parser; the spec's pointers
 * stay valid while *p lives. 0 parsed, -1 not a command. */
static int parse_args(const char *args, size_t len, imap_parser **p,
		      imap_fetch_spec *spec, const char **err_r, int *rc_r)
{
	imap_parser_limits lim;
	eng_buf line = ENG_BUF_INIT;
	imap_event ev;
	size_t off = 0;

	imap_parser_limits_default(&lim);
	*p = imap_parser_new(&lim);
	eng_buf_puts(&line, "t FETCH 1 ");
	eng_buf_append(&line, args, len);
	eng_buf_puts(&line, "\r\n");
	memset(&ev, 0, sizeof(ev));
	while (off < line.len) {
		off += imap_parser_feed(*p, (const uint8_t *)line.data + off,
					line.len - off, &ev);
		if (ev.kind == IMAP_EV_COMMAND || ev.kind == IMAP_EV_ERROR ||
		    ev.kind == IMAP_EV_CONTINUE || ev.kind == IMAP_EV_LITERAL)
			break;
	}
	eng_buf_free(&line);
	if (ev.kind != IMAP_EV_COMMAND || ev.cmd.n_args < 2)
		return -1;
	*rc_r = imap_fetch_parse(&ev.cmd.args[1],
				 ev.cmd.n_args > 2 ? &ev.cmd.args[2] : NULL,
				 spec, err_r);
	return 0;
}

/* The label of it, as a PEEK request without the partial. */
static void request_of(const imap_fetch_item *it, eng_buf *out)
{
	eng_buf label = ENG_BUF_INIT;
	const char *p;

	imap_fetch_item_label(it, &label);
	p = label.data;
	if (strncmp(p, "BODY[", 5) == 0) {
		eng_buf_puts(out, "BODY.PEEK");
		p += 4;
	} else if (strncmp(p, "BINARY[", 7) == 0) {
		eng_buf_puts(out, "BINARY.PEEK");
		p += 6;
	}
	eng_buf_puts(out, p);
	if (it->partial) {
		/* Drop "<offset>". */
		char *lt = strrchr(out->data, '<');

		check(lt != NULL);
		out->len = (size_t)(lt - out->data);
		out->data[out->len] = '\0';
	}
	eng_buf_free(&label);
}

static void same_item(const imap_fetch_item *a, const imap_fetch_item *b)
{
	check(a->kind == b->kind);
	check(strcmp(a->part, b->part) == 0);
	check(a->text == b->text);
	check(a->n_fields == b->n_fields);
	for (size_t i = 0; i < a->n_fields; i++)
		check(a->field_lens[i] == b->field_lens[i] &&
		      memcmp(a->fields[i], b->fields[i], a->field_lens[i]) == 0);
}

static void fuzz_attrs(const uint8_t *data, size_t size)
{
	imap_parser *p = NULL;
	imap_fetch_spec spec;
	const char *err = NULL;
	int rc = -1;

	memset(&spec, 0, sizeof(spec));
	if (parse_args((const char *)data, size, &p, &spec, &err, &rc) != 0) {
		imap_parser_free(&p);
		return;
	}
	if (rc != 0) {
		check(rc == ENG_EINVAL && err != NULL && err[0] != '\0');
		imap_fetch_spec_clear(&spec);
		imap_parser_free(&p);
		return;
	}
	check(spec.n_items <= IMAP_FETCH_MAX_ITEMS);
	for (size_t i = 0; i < spec.n_items; i++) {
		const imap_fetch_item *it = &spec.items[i];
		char section[200];
		eng_buf req = ENG_BUF_INIT;
		imap_parser *p2 = NULL;
		imap_fetch_spec spec2;
		const char *err2 = NULL;
		int rc2 = -1;

		imap_fetch_item_rpc_section(it, section, sizeof(section));
		check(strlen(section) < sizeof(section) - 1);
		if (it->rfc822_name != NULL)
			continue;
		request_of(it, &req);
		memset(&spec2, 0, sizeof(spec2));
		check(parse_args(req.data, req.len, &p2, &spec2, &err2, &rc2) == 0);
		check(rc2 == 0 && spec2.n_items == 1);
		same_item(it, &spec2.items[0]);
		imap_fetch_spec_clear(&spec2);
		imap_parser_free(&p2);
		eng_buf_free(&req);
	}
	imap_fetch_spec_clear(&spec);
	imap_parser_free(&p);
}

static void fuzz_filter(const uint8_t *data, size_t size, bool not_)
{
	const char *names[8];
	size_t lens[8], n = 0, start = 0, lines = 0;
	const char *in = (const char *)data;
	const uint8_t *nl = memchr(data, '\n', size);
	size_t first = nl != NULL ? (size_t)(nl - data) : size;
	eng_buf out = ENG_BUF_INIT;

	/* Names: the first line's words. */
	for (size_t i = 0; i <= first && n < 8; i++) {
		if (i == first || in[i] == ' ') {
			if (i > start) {
				names[n] = in + start;
				lens[n++] = i - start;
			}
			start = i + 1;
		}
	}
	for (size_t i = 0; i < size; i++)
		lines += data[i] == '\n';
	imap_header_filter(in, size, names, lens, n, not_, &out);
	check(out.len >= 2 && memcmp(out.data + out.len - 2, "\r\n", 2) == 0);
	check(out.len <= size + 2 * (lines + 1) + 2);
	eng_buf_free(&out);
}

static void fuzz_cte(const uint8_t *data, size_t size, size_t split,
		     const char *enc)
{
	eng_buf a = ENG_BUF_INIT, b = ENG_BUF_INIT;
	imap_cte d;

	if (split > size)
		split = size;
	check(imap_cte_init(&d, enc) == 0);
	imap_cte_feed(&d, data, size, &a);
	imap_cte_finish(&d, &a);
	imap_cte_init(&d, enc);
	imap_cte_feed(&d, data, split, &b);
	imap_cte_feed(&d, data + split, size - split, &b);
	imap_cte_finish(&d, &b);
	check(a.len == b.len);
	check(a.len == 0 || memcmp(a.data, b.data, a.len) == 0);
	check(a.len <= size);
	eng_buf_free(&a);
	eng_buf_free(&b);
}

static void fuzz_preview(const uint8_t *data, size_t size, bool html)
{
	eng_buf out = ENG_BUF_INIT;
	const unsigned char *s;
	size_t chars = 0;

	imap_preview_build((const char *)data, size, html ? "iso-8859-1" : NULL,
			   html, &out);
	s = (const unsigned char *)out.data;
	for (size_t i = 0; i < out.len;) {
		size_t n = s[i] < 0x80 ? 1 : s[i] >= 0xf0 ? 4 : s[i] >= 0xe0 ?
			3 : 2;

		check(s[i] < 0x80 || (s[i] >= 0xc2 && s[i] <= 0xf4));
		check(i + n <= out.len);
		for (size_t k = 1; k < n; k++)
			check((s[i + k] & 0xc0) == 0x80);
		check(!(s[i] == ' ' && (i == 0 || i + 1 == out.len ||
					s[i + 1] == ' ')));
		i += n;
		chars++;
	}
	check(chars <= IMAP_PREVIEW_MAX_CHARS);
	eng_buf_free(&out);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	size_t split;

	if (size < 2 || size > 64 * 1024)
		return 0;
	split = data[1];
	switch (data[0] % 7) {
	case 0:
		fuzz_attrs(data + 2, size - 2);
		break;
	case 1:
	case 2:
		fuzz_filter(data + 2, size - 2, data[0] % 7 == 2);
		break;
	case 3:
		fuzz_cte(data + 2, size - 2, split, "base64");
		break;
	case 4:
		fuzz_cte(data + 2, size - 2, split, "quoted-printable");
		break;
	case 5:
	case 6:
		fuzz_preview(data + 2, size - 2, data[0] % 7 == 6);
		break;
	}
	return 0;
}
