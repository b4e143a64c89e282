/*
 * libFuzzer target for the MIME parser (engine/mime.h).
 *
 * For every input: parse it whole and in 2-3 splits chosen from its first
 * bytes (the results must be identical), check that every offset nests
 * inside the message, that parse -> encode -> decode -> encode is
 * byte-identical, and that the BODY/BODYSTRUCTURE/ENVELOPE writers and the
 * section lookup run. The raw input also goes to eng_mime_decode, whose
 * result (if accepted) must re-encode to the same bytes. abort() on any
 * mismatch so that libFuzzer reports it.
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "mime.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static void check(bool ok)
{
	if (!ok)
		abort();
}

static void check_offsets(const eng_mime_part *p, uint64_t lo, uint64_t hi)
{
	check(p->header_off >= lo && p->header_off <= p->body_off &&
	      p->body_off <= p->body_end && p->body_end <= hi);
	check(p->type != NULL && p->subtype != NULL && p->encoding != NULL);
	uint64_t next = p->body_off;
	for (size_t i = 0; i < p->n_children; i++) {
		check_offsets(p->children[i], next, p->body_end);
		next = p->children[i]->body_end;
	}
	if (p->message != NULL)
		check_offsets(p->message, p->body_off, p->body_end);
}

static void summary_str(const eng_mime_summary *s, eng_buf *out)
{
	const char *f[] = { s->subject, s->base_subject, s->from_addr, s->from_display,
			    s->to_addr, s->to_display, s->cc_addr, s->message_id,
			    s->preview };
	for (size_t i = 0; i < sizeof(f) / sizeof(f[0]); i++)
		eng_buf_printf(out, "%s\x01", f[i] != NULL ? f[i] : "(null)");
	eng_buf_printf(out, "%lld\x01", (long long)s->sent_date);
	for (size_t i = 0; i < s->n_references; i++)
		eng_buf_printf(out, "%s\x01", s->references[i]);
	eng_buf_append(out, s->body_text.data, s->body_text.len);
	eng_buf_putc(out, '\x02');
	eng_buf_append(out, s->header_text.data, s->header_text.len);
}

/* Parses data in pieces ending at the given cut points; leaves the
 * encoded tree, the BODYSTRUCTURE and the summary in out. */
static void parse(const uint8_t *data, size_t size, const size_t *cuts,
		  size_t n_cuts, eng_buf *out)
{
	eng_mime_limits lim;
	eng_mime_parser *p;
	eng_mime_part *root, *dec;
	eng_mime_summary sum;
	eng_buf enc = ENG_BUF_INIT, enc2 = ENG_BUF_INIT;
	size_t pos = 0;

	/* Small limits so that the fuzzer reaches them. */
	eng_mime_limits_default(&lim);
	lim.max_depth = 20;
	lim.max_parts = 200;
	lim.max_headers = 50;
	lim.max_header_bytes = 4096;
	lim.max_text_bytes = 2048;
	p = eng_mime_parser_new(&lim);
	for (size_t i = 0; i < n_cuts; i++) {
		eng_mime_parser_feed(p, data + pos, cuts[i] - pos);
		pos = cuts[i];
	}
	eng_mime_parser_feed(p, data + pos, size - pos);
	eng_mime_parser_finish(p, &root, &sum);
	eng_mime_parser_free(&p);
	check(root != NULL && p == NULL);
	check_offsets(root, 0, size);
	check(sum.body_text.len <= lim.max_text_bytes);

	eng_mime_encode(root, &enc);
	check(eng_mime_decode(enc.data, enc.len, size, &dec) == 0);
	eng_mime_encode(dec, &enc2);
	check(enc.len == enc2.len && memcmp(enc.data, enc2.data, enc.len) == 0);

	eng_buf bs1 = ENG_BUF_INIT, bs2 = ENG_BUF_INIT;
	eng_mime_write_bodystructure(root, true, &bs1);
	eng_mime_write_bodystructure(dec, true, &bs2);
	check(bs1.len == bs2.len && memcmp(bs1.data, bs2.data, bs1.len) == 0);
	eng_buf_reset(&bs2);
	eng_mime_write_bodystructure(root, false, &bs2);
	eng_mime_write_envelope(root->envelope, &bs2);
	check(eng_mime_find_part(root, NULL) == root);
	static const char *const sections[] = { "1", "2", "1.1", "1.2.1", "2.1", "3.1.1" };
	for (size_t i = 0; i < sizeof(sections) / sizeof(sections[0]); i++) {
		const eng_mime_part *a = eng_mime_find_part(root, sections[i]);
		const eng_mime_part *b = eng_mime_find_part(dec, sections[i]);
		check((a == NULL) == (b == NULL));
		check(a == NULL || (a->body_off == b->body_off && a->body_end == b->body_end));
	}

	eng_buf_append(out, enc.data, enc.len);
	eng_buf_append(out, bs1.data, bs1.len);
	summary_str(&sum, out);
	eng_buf_free(&bs1);
	eng_buf_free(&bs2);
	eng_buf_free(&enc);
	eng_buf_free(&enc2);
	eng_mime_part_free(&dec);
	eng_mime_part_free(&root);
	eng_mime_summary_clear(&sum);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	eng_buf whole = ENG_BUF_INIT, split = ENG_BUF_INIT;
	eng_mime_part *dec = NULL;

	parse(data, size, NULL, 0, &whole);
	if (size >= 3) {
		/* Cut points from the first bytes, sorted and in range. */
		size_t cuts[3];
		for (size_t i = 0; i < 3; i++)
			cuts[i] = ((size_t)data[i] * 2654435761u + i * 97) % (size + 1);
		for (size_t i = 0; i < 3; i++) {
			for (size_t j = i + 1; j < 3; j++) {
				if (cuts[j] < cuts[i]) {
					size_t t = cuts[i];
					cuts[i] = cuts[j];
					cuts[j] = t;
				}
			}
		}
		parse(data, size, cuts, 3, &split);
		check(whole.len == split.len && memcmp(whole.data, split.data, whole.len) == 0);
	}
	if (size < 64 * 1024) {
		eng_buf_reset(&split);
		/* Byte by byte, for short inputs. */
		size_t cuts[256];
		size_t n = size < 256 ? size : 0;
		for (size_t i = 0; i < n; i++)
			cuts[i] = i;
		if (n > 0) {
			parse(data, size, cuts, n, &split);
			check(whole.len == split.len &&
			      memcmp(whole.data, split.data, whole.len) == 0);
		}
	}

	/* The stored form must never be trusted. */
	if (eng_mime_decode(data, size, size * 4, &dec) == 0) {
		eng_buf enc = ENG_BUF_INIT;
		check_offsets(dec, 0, size * 4);
		eng_mime_encode(dec, &enc);
		check(enc.len == size && memcmp(enc.data, data, size) == 0);
		eng_buf_reset(&enc);
		eng_mime_write_bodystructure(dec, true, &enc);
		eng_buf_free(&enc);
		eng_mime_part_free(&dec);
	}
	check(dec == NULL);
	eng_buf_free(&whole);
	eng_buf_free(&split);
	return 0;
}
