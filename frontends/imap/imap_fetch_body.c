/*
 * FETCH's body items (imap_cmd_fetch.c has the command's overview):
 * BODY[...], BINARY[...], BINARY.SIZE[...], RFC822 and its parts, each
 * either from the phase A header (top-level HEADER, HEADER.FIELDS) or from
 * one FETCH_BODY streamed into a literal ("{n}\r\n", "~{n}\r\n" for
 * literal8, then the bytes as they arrive; a partial <a.b> is a byte range
 * of it), or buffered (HEADER.FIELDS of a part, small encoded parts).
 *
 * Body pipelining: when the spec is one streamed body item and nothing
 * that needs phase A (BODY.PEEK[], RFC822, BODY[1], a partial range), the
 * FETCH_BODY of the next FETCH_BODY_AHEAD messages (as many as
 * FETCH_BODY_AHEAD_BYTES allows) goes out while the current one is
 * written (fetch_fill_bodies, in message order, so that an error still
 * belongs to the oldest request); what arrives before its turn is
 * kept with its credit withheld (at most one window each), and at its
 * turn item_adopt writes it and lets the request go on as the item's.
 *
 * Whole bodies in one stream: when that one item is a whole message
 * (BODY[], BODY.PEEK[], RFC822; no partial range) and at least two
 * messages are left in the chunk, one FETCH_BODIES asks for the bodies of
 * all of them (up to RPC_BODIES_MAX_UIDS): sqlited answers with one body
 * stream, a record per UID (rpc_bodies.h), under one window of
 * FETCH_STREAM_WINDOW (512 KiB: sqlited then reads it ahead in 256 KiB
 * pieces, one per grant). Its bytes are consumed by the message being
 * written (fetch_stream_run) where they arrived, in rpc_client's read
 * buffer (written with imap_write_direct: on a plaintext connection
 * straight to the socket, no copy); only what cannot go yet (the output
 * is full, or the next record waits for its message) is kept, its
 * credit withheld (at most that window). Each
 * record's head gives the literal's size, or says the message is gone
 * (expunged meanwhile: skipped, as a FETCH_BODY ENOTFOUND would be); the
 * credit of what is written is reported at once, or when the output
 * drains, and rpc_client grants it in whole halves of the window
 * (docs/rpc.md FETCH_BODIES).
 * A sqlited without FETCH_BODIES answers EOPCODE before any byte: the
 * command goes on with the FETCH_BODY per message above. A lone message
 * (the last one of a chunk) takes that path too.
 *
 * BINARY: the part's Content-Transfer-Encoding comes from the stored MIME
 * structure. Identity encodings stream like BODY. base64 and
 * quoted-printable parts up to FETCH_DECODE_MEM bytes are fetched and
 * decoded in memory; larger ones are streamed twice through the decoder:
 * once to count the decoded size (the literal's length must come first),
 * once to write. An encoding it does not know is "NO [UNKNOWN-CTE]".
 */
#include "imap_fetch_private.h"

#include "eng_error.h"
#include "rpc_proto.h"

#include <stddef.h>
#include <stdlib.h>
#include <string.h>

static int on_data(void *ctx, uint32_t id, const rpc_view *head,
		   const uint8_t *data, size_t len, bool end);
static int stream_fill(fetch_op *op);
static int stream_data(freq *r, uint32_t id, const uint8_t *data, size_t len,
		       bool end);

/* ---- FETCH_BODY, literals ---- */

/* Sends a FETCH_BODY or FETCH_BODIES whose bytes go to on_data with r;
 * frees pl. On failure r is released. */
static int call_body(fetch_op *op, freq *r, uint16_t opcode, eng_buf *pl,
		     bool stream)
{
	rpc_client_opts opts;
	int rc;

	memset(&opts, 0, sizeof(opts));
	opts.data = on_data;
	opts.data_ctx = r;
	opts.retries = 1;            /* idempotent; not resent after a byte */
	if (stream) {
		opts.timeout_ms = FETCH_STREAM_TIMEOUT_MS;
		opts.recv_window = FETCH_STREAM_WINDOW;
	}
	rc = imap_rpc_call(op->cmd, opcode, pl, &opts, fetch_on_rpc_done);
	eng_buf_free_wipe(pl);
	if (rc != 0) {
		r->used = false;
		return rc;
	}
	op->inflight++;
	return 0;
}

/* A FETCH_BODY for the message of UID uid: section, byte range, WANT. */
int fetch_send_body(fetch_op *op, freq *r, uint32_t uid, const char *section,
		    uint32_t want, uint64_t offset, uint64_t length,
		    bool stream)
{
	eng_buf pl = ENG_BUF_INIT;

	fetch_payload_begin(op, &pl);
	rpc_put_u64(&pl, RPC_T_UID, uid);
	rpc_put_u64(&pl, RPC_T_WANT, want | RPC_WANT_BODY);
	if (section != NULL)
		rpc_put_str(&pl, RPC_T_SECTION, section);
	if (offset > 0)
		rpc_put_u64(&pl, RPC_T_OFFSET, offset);
	if (length != UINT64_MAX)
		rpc_put_u64(&pl, RPC_T_LENGTH, length);
	return call_body(op, r, RPC_OP_FETCH_BODY, &pl, stream);
}

/* The space between two items of one FETCH response. */
static void item_sep(fetch_op *op, eng_buf *b)
{
	if (op->need_space)
		eng_buf_putc(b, ' ');
	op->need_space = true;
}

/* " LABEL" of a body item. */
static void put_label(fetch_op *op, const imap_fetch_item *it)
{
	item_sep(op, &op->line);
	imap_fetch_item_label(it, &op->line);
}

static void put_literal_head(fetch_op *op, const imap_fetch_item *it,
			     uint64_t size, bool literal8)
{
	eng_buf *b = &op->line;

	put_label(op, it);
	eng_buf_puts(b, literal8 ? " ~{" : " {");
	imap_fetch_put_uint(b, size);
	eng_buf_puts(b, "}\r\n");
}

/* A literal from memory, with the item's partial range applied. */
static void put_literal_mem(fetch_op *op, const imap_fetch_item *it,
			    const char *data, size_t len, bool literal8)
{
	size_t start = 0, n = len;

	if (it->partial) {
		start = it->offset < len ? (size_t)it->offset : len;
		n = len - start;
		if (it->length < n)
			n = (size_t)it->length;
	}
	put_literal_head(op, it, n, literal8);
	if (n > 0)
		fetch_out_put(op, data + start, n);
}

/* ---- phase B: body items ---- */

/* Phase A requests open (sent, not answered). */
bool fetch_a_open(const fetch_op *op)
{
	for (size_t i = 0; i < FETCH_REQS; i++)
		if (op->reqs[i].used && op->reqs[i].kind == RQ_A)
			return true;
	return false;
}

/* Sends the item request that fetch_send_item prepared. */
int fetch_send_pending(fetch_op *op)
{
	freq *r = fetch_req_new(op, RQ_B);
	int rc;

	op->pend = false;
	if (r == NULL)
		rc = ENG_EBUSY;
	else
		rc = fetch_send_body(op, r, op->msgs[op->cur].uid,
				     op->pend_section, 0, op->pend_offset,
				     op->pend_length,
				     op->mode != BM_BUFFER);
	if (rc != 0)
		op->item_busy = false;
	return rc;
}

/*
 * The current item's FETCH_BODY. It goes out once no phase A request is
 * open (and none is sent while it runs), so that an error, which names
 * no request, is never between a phase A request and this one.
 */
int fetch_send_item(fetch_op *op, const char *section, uint64_t offset,
		    uint64_t length, enum bmode mode)
{
	if (strlen(section) >= sizeof(op->pend_section))
		return ENG_EINVAL;
	op->mode = mode;
	op->item_busy = true;
	op->item_done = false;
	op->item_err = 0;
	op->lit_started = false;
	op->decoded = 0;
	eng_buf_reset(&op->buf);
	memcpy(op->pend_section, section, strlen(section) + 1);
	op->pend_offset = offset;
	op->pend_length = length;
	op->pend = true;
	return fetch_a_open(op) ? 0 : fetch_send_pending(op);
}

static bool out_blocked(fetch_op *op, uint32_t id, size_t len)
{
	if (!imap_write_blocked(op->s))
		return false;
	op->held = true;
	op->held_id = id;
	op->held_bytes += len;
	return true;
}

/* Decoded bytes of BM_DECODE_OUT: only those in the window are written. */
static void write_window(fetch_op *op)
{
	uint64_t lo = op->decoded, hi = op->decoded + op->dec.len;
	uint64_t wlo = op->win_off, whi = op->win_off + op->win_len;

	if (hi > wlo && lo < whi) {
		uint64_t a = lo > wlo ? lo : wlo, z = hi < whi ? hi : whi;

		fetch_out_flush(op);
		imap_write(op->s, op->dec.data + (a - lo), (size_t)(z - a));
	}
	op->decoded = hi;
	eng_buf_reset(&op->dec);
}

static int b_data(fetch_op *op, uint32_t id, const rpc_view *head,
		  const uint8_t *data, size_t len, bool end)
{
	const imap_fetch_item *it = &op->spec.items[op->item];
	uint64_t size = 0;

	switch (op->mode) {
	case BM_STREAM:
		if (!op->lit_started) {
			rpc_get_u64(head, RPC_T_SIZE, &size);
			op->lit_started = true;
			op->lit_size = size;
			put_literal_head(op, it, size, op->literal8);
		}
		if (len > 0) {
			fetch_out_flush(op); /* the literal's head first */
			imap_write_direct(op->s, data, len);
		}
		break;
	case BM_BUFFER:
		eng_buf_append(&op->buf, data, len);
		return 0;
	case BM_COUNT:
		imap_cte_feed(&op->cte, data, len, &op->dec);
		if (end)
			imap_cte_finish(&op->cte, &op->dec);
		if (op->dec.len > 0 && memchr(op->dec.data, '\0', op->dec.len))
			op->literal8 = true;   /* RFC 3516: NULs need literal8 */
		op->decoded += op->dec.len;
		eng_buf_reset(&op->dec);
		return 0;
	case BM_DECODE_OUT:
		imap_cte_feed(&op->cte, data, len, &op->dec);
		if (end)
			imap_cte_finish(&op->cte, &op->dec);
		write_window(op);
		break;
	}
	if (!end && len > 0 && out_blocked(op, id, len))
		return RPC_CLIENT_HOLD;
	return 0;
}

/* A body asked ahead arrives before its turn: kept, credit withheld. */
static int ahead_data(freq *r, uint32_t id, const rpc_view *head,
		      const uint8_t *data, size_t len, bool end)
{
	fahead *a = r->ahead;

	a->has_id = true;
	a->id = id;
	if (!a->has_size) {
		rpc_get_u64(head, RPC_T_SIZE, &a->size);
		a->has_size = true;
	}
	eng_buf_append(&a->data, data, len);
	if (end) {
		a->ended = true;
		a->r = NULL;
		r->ended = true;
		r->used = false;
		return 0;
	}
	if (len == 0)
		return 0;
	a->held += len;
	return RPC_CLIENT_HOLD;
}

static int on_data(void *ctx, uint32_t id, const rpc_view *head,
		   const uint8_t *data, size_t len, bool end)
{
	freq *r = ctx;
	fetch_op *op = r->op;
	int rc = 0;

	r->id = id;
	r->has_id = true;
	if (op->aborted || op->finished)
		return RPC_ECANCELLED;
	if (r->kind == RQ_A) {
		if (end) {
			fetch_a_head(op, r->slot, head);
			r->ended = true;
			r->used = false;
		}
		return 0;
	}
	if (r->kind == RQ_P)
		return ahead_data(r, id, head, data, len, end);
	if (r->kind == RQ_S)
		return stream_data(r, id, data, len, end);
	rc = b_data(op, id, head, data, len, end);
	if (end) {
		r->ended = true;
		r->used = false;
		op->item_busy = false;
		op->item_done = true;
	}
	return rc;
}

static const eng_mime_part *item_part(const fetch_op *op,
				      const imap_fetch_item *it)
{
	if (op->hs == NULL || op->hs->mime == NULL)
		return NULL;
	if (it->part[0] == '\0')
		return op->hs->mime;
	return eng_mime_find_part(op->hs->mime, it->part);
}

static bool part_is_leaf(const eng_mime_part *p)
{
	return p->n_children == 0 && p->message == NULL;
}

/* The decoder an item needs (identity for the whole message and for
 * multipart and message parts, whose bytes are the part as it is). */
static int item_cte(const fetch_op *op, const imap_fetch_item *it,
		    imap_cte *d)
{
	const eng_mime_part *p = item_part(op, it);

	if (p == NULL || it->part[0] == '\0' || !part_is_leaf(p))
		return imap_cte_init(d, NULL);
	return imap_cte_init(d, p->encoding);
}

/* A body item from the header column (top-level HEADER / FIELDS). */
static bool item_from_header(fetch_op *op, const imap_fetch_item *it)
{
	fslot *sl = op->hs;

	if (it->kind != IMAP_FK_BODY || it->part[0] != '\0' || sl == NULL ||
	    !sl->hdr_complete)
		return false;
	if (it->text == IMAP_FT_HEADER) {
		put_literal_mem(op, it, sl->hdr.data, sl->hdr.len, false);
		return true;
	}
	if (it->text != IMAP_FT_FIELDS && it->text != IMAP_FT_FIELDS_NOT)
		return false;
	eng_buf_reset(&op->buf);
	imap_header_filter(sl->hdr.data != NULL ? sl->hdr.data : "",
			   sl->hdr.len, it->fields, it->field_lens,
			   it->n_fields, it->text == IMAP_FT_FIELDS_NOT,
			   &op->buf);
	put_literal_mem(op, it, op->buf.data, op->buf.len, false);
	return true;
}

/* BINARY / BINARY.SIZE: 1 started an RPC, 0 answered at once. */
static int item_binary(fetch_op *op, const imap_fetch_item *it)
{
	const eng_mime_part *p = item_part(op, it);
	char section[80];
	uint64_t enc_size;

	imap_fetch_item_rpc_section(it, section, sizeof(section));
	op->literal8 = p != NULL && (p->flags & ENG_MIME_HAS_NUL) != 0;
	if (p == NULL) {
		put_label(op, it);
		eng_buf_puts(&op->line, it->kind == IMAP_FK_BINARY_SIZE ?
			     " 0" : " \"\"");
		fetch_out_maybe_flush(op);
		return 0;
	}
	enc_size = it->part[0] == '\0' ? op->msgs[op->cur].size :
		p->body_end - p->body_off;
	item_cte(op, it, &op->cte);
	if (op->cte.kind == IMAP_CTE_IDENTITY) {
		if (it->kind == IMAP_FK_BINARY_SIZE) {
			put_label(op, it);
			eng_buf_printf(&op->line, " %llu",
				       (unsigned long long)enc_size);
			fetch_out_maybe_flush(op);
			return 0;
		}
		return fetch_send_item(op, section,
				       it->partial ? it->offset : 0,
				       it->partial ? it->length : UINT64_MAX,
				       BM_STREAM) == 0 ? 1 : -1;
	}
	if (enc_size <= FETCH_DECODE_MEM) {
		op->after = BA_DECODE;
		return fetch_send_item(op, section, 0, UINT64_MAX,
				       BM_BUFFER) == 0 ? 1 : -1;
	}
	op->item_pass = 0;
	return fetch_send_item(op, section, 0, UINT64_MAX, BM_COUNT) == 0 ?
		1 : -1;
}

/* The section, offset and length of a streamed body item. */
static void body_range(const imap_fetch_item *it, char *section, size_t size,
		       uint64_t *off_r, uint64_t *len_r)
{
	imap_fetch_item_rpc_section(it, section, size);
	*off_r = it->partial ? it->offset : 0;
	*len_r = it->partial ? it->length : UINT64_MAX;
}

static fahead *ahead_of(fetch_op *op, size_t msg)
{
	for (size_t i = 0; i < FETCH_BODY_AHEAD; i++)
		if (op->ahead[i].used && op->ahead[i].msg == msg)
			return &op->ahead[i];
	return NULL;
}

static fahead *ahead_free(fetch_op *op)
{
	for (size_t i = 0; i < FETCH_BODY_AHEAD; i++)
		if (!op->ahead[i].used)
			return &op->ahead[i];
	return NULL;
}

/* What a body asked ahead may hold until its turn: its size, at most
 * one window. */
static uint64_t ahead_bytes(const fetch_op *op, size_t msg)
{
	uint64_t size = op->msgs[msg].size;

	return size < RPC_INITIAL_WINDOW_BYTES ? size : RPC_INITIAL_WINDOW_BYTES;
}

/* Asks for the bodies of the next messages, the current one first, in
 * order (an error, which names no request, goes to the oldest). */
int fetch_fill_bodies(fetch_op *op)
{
	const imap_fetch_item *it = &op->spec.items[0];
	char section[200];
	uint64_t off, len, held = 0;

	if (!op->body_ahead)
		return 0;
	if (op->bodies) {
		int rc = stream_fill(op);

		if (rc <= 0)
			return rc;
	}
	if (op->next_b < op->cur)
		op->next_b = op->cur;
	for (size_t i = 0; i < FETCH_BODY_AHEAD; i++)
		if (op->ahead[i].used && op->ahead[i].msg > op->cur)
			held += ahead_bytes(op, op->ahead[i].msg);
	body_range(it, section, sizeof(section), &off, &len);
	while (op->next_b < op->n && op->next_b <= op->cur + FETCH_BODY_AHEAD) {
		fahead *a;
		freq *r;
		int rc;

		if (op->msgs[op->next_b].seq == 0) {
			op->next_b++;        /* skipped */
			continue;
		}
		/* The current message always; those after it within budget. */
		if (op->next_b > op->cur) {
			if (held > 0 && held + ahead_bytes(op, op->next_b) >
			    FETCH_BODY_AHEAD_BYTES)
				break;
			held += ahead_bytes(op, op->next_b);
		}
		if ((a = ahead_free(op)) == NULL ||
		    (r = fetch_req_new(op, RQ_P)) == NULL)
			break;
		eng_buf_reset(&a->data);
		memset(a, 0, offsetof(fahead, data));
		a->used = true;
		a->msg = op->next_b;
		a->r = r;
		r->ahead = a;
		rc = fetch_send_body(op, r, op->msgs[op->next_b].uid, section,
				     0, off, len, true);
		if (rc != 0) {
			a->used = false;
			return rc;
		}
		op->next_b++;
	}
	return 0;
}

/*
 * The current message's body item from its request asked ahead: what
 * arrived is written, the request goes on as the item's (RQ_B), and the
 * withheld credit is granted (or kept held while the output is full).
 * 1 it runs (or is done: the pump goes round), < 0 failed.
 */
static int item_adopt(fetch_op *op, const imap_fetch_item *it)
{
	fahead *a = ahead_of(op, op->cur);

	if (a == NULL) {
		if (fetch_fill_bodies(op) != 0 ||
		    (a = ahead_of(op, op->cur)) == NULL)
			return -1;
	}
	op->mode = BM_STREAM;
	op->item_done = false;
	op->item_err = a->err;
	op->lit_started = false;
	op->decoded = 0;
	if (a->err == 0 && a->has_size) {
		op->lit_started = true;
		op->lit_size = a->size;
		put_literal_head(op, it, a->size, false);
		if (a->data.len > 0) {
			fetch_out_flush(op); /* the literal's head first */
			imap_write_direct(op->s, a->data.data, a->data.len);
		}
	}
	if (a->err != 0 || a->ended) {
		op->item_done = a->err == 0;
		op->repump = true;
	} else {
		a->r->kind = RQ_B;
		op->item_busy = true;
		if (a->held > 0 && a->has_id) {
			if (imap_write_blocked(op->s)) {
				op->held = true;
				op->held_id = a->id;
				op->held_bytes += a->held;
			} else {
				rpc_client_consumed(op->s->d->rpc, a->id, a->held);
			}
		}
	}
	eng_buf_free(&a->data);
	a->used = false;
	a->r = NULL;
	return 1;
}

/* ---- FETCH_BODIES: whole bodies in one stream ---- */

/* An item FETCH_BODIES serves: a whole message, as it is stored. */
bool fetch_item_whole(const imap_fetch_item *it)
{
	return it->kind == IMAP_FK_BODY && it->part[0] == '\0' &&
		it->text == IMAP_FT_ALL && !it->partial;
}

/* The stream's next record is the current message's. */
static bool stream_covers(const fetch_op *op)
{
	const fstream *st = &op->st;

	return op->bodies && !st->rd.in_body && st->rd.records < st->n &&
		st->msgs[st->rd.records] == op->cur;
}

/* The next messages of the chunk, the current one first, in one
 * FETCH_BODIES once the previous stream is all consumed. 0: the stream
 * serves them (or still runs), 1: not this time (fewer than two left, or
 * the current one already asked by FETCH_BODY), < 0: an error. */
static int stream_fill(fetch_op *op)
{
	fstream *st = &op->st;
	eng_buf pl = ENG_BUF_INIT;
	size_t n = 0, from;
	freq *r;
	int rc;

	if (st->busy || st->rd.in_body || st->rd.records < st->n)
		return 0;
	/* From the first message no request has asked for (next_b: the
	 * current one may be the last record of the stream just read). */
	if (ahead_of(op, op->cur) != NULL)
		return 1;
	from = op->next_b > op->cur ? op->next_b : op->cur;
	for (size_t i = from; i < op->n && n < RPC_BODIES_MAX_UIDS; i++)
		n += op->msgs[i].seq != 0;
	if (n < 2 || (r = fetch_req_new(op, RQ_S)) == NULL)
		return 1;
	free(st->uids);
	free(st->msgs);
	eng_buf_reset(&st->buf);
	st->in_len = 0;
	st->uids = eng_malloc(n * sizeof(*st->uids));
	st->msgs = eng_malloc(n * sizeof(*st->msgs));
	st->n = 0;
	for (size_t i = from; st->n < n; i++) {
		if (op->msgs[i].seq == 0)
			continue;
		st->uids[st->n] = op->msgs[i].uid;
		st->msgs[st->n++] = i;
		op->next_b = i + 1;
	}
	rpc_bodies_reader_init(&st->rd);
	st->off = st->to_credit = 0;
	st->ended = st->got_any = st->has_id = st->attached = false;
	st->err = 0;
	fetch_payload_begin(op, &pl);
	rpc_put_uids(&pl, RPC_T_UIDS, st->uids, n);
	rc = call_body(op, r, RPC_OP_FETCH_BODIES, &pl, true);
	if (rc != 0) {
		st->n = 0;
		return rc;
	}
	st->busy = true;
	return 0;
}

/* The request failed (from fetch_on_rpc_done). */
void fetch_stream_failed(fetch_op *op, int err)
{
	fstream *st = &op->st;

	st->busy = false;
	if (err == RPC_EOPCODE && !st->got_any) {
		/* A sqlited without FETCH_BODIES: FETCH_BODY per message from
		 * here on; an item waiting for its record starts again. */
		op->bodies = false;
		if (st->n > 0)
			op->next_b = st->msgs[0];    /* none of them came */
		st->n = 0;
		rpc_bodies_reader_init(&st->rd);
		if (st->attached) {
			st->attached = false;
			op->item_busy = false;
			op->item_done = false;
			op->item_err = 0;
		}
		return;
	}
	/* What came before the error is still written; the item that finds
	 * the buffer dry fails (fetch_stream_run). */
	st->err = err;
}

/* Credit for what fetch_stream_run consumed. */
static void stream_credit(fetch_op *op)
{
	fstream *st = &op->st;

	if (st->to_credit > 0 && st->has_id && !st->ended)
		rpc_client_consumed(op->s->d->rpc, st->id, st->to_credit);
	st->to_credit = 0;
}

/* The current item's record is over: written (0), gone (ENG_ENOTFOUND:
 * fetch_item_finished skips the message) or failed. */
static void stream_item_end(fetch_op *op, int err)
{
	op->st.attached = false;
	op->item_busy = false;
	op->item_err = err;
	op->item_done = err == 0;
	op->repump = true;
}

/* The stream's bytes not consumed yet, in order: those kept in buf, then
 * those of the DATA being delivered (read in place). */
static const uint8_t *stream_next(const fstream *st, size_t *n_r)
{
	if (st->off < st->buf.len) {
		*n_r = st->buf.len - st->off;
		return (const uint8_t *)st->buf.data + st->off;
	}
	*n_r = st->in_len;
	return st->in;
}

/* n bytes of stream_next's are consumed. */
static void stream_take(fstream *st, size_t n)
{
	if (st->off < st->buf.len) {
		st->off += n;
	} else {
		st->in += n;
		st->in_len -= n;
	}
	st->to_credit += n;
}

/*
 * Gives the attached item what has arrived of its record: the literal's
 * head, then its bytes as far as the output takes them. Stops at the
 * record's end (the next record waits for its message), when the output
 * is full (the bytes stay, their credit withheld: sqlited stops at a
 * window) or when nothing is left.
 */
void fetch_stream_run(fetch_op *op)
{
	fstream *st = &op->st;
	const imap_fetch_item *it = &op->spec.items[op->item];

	while (st->attached) {
		size_t n, used;
		const uint8_t *p = stream_next(st, &n);
		uint32_t expect = 0;
		rpc_bodies_ev ev;
		int rc;

		if (n == 0) {
			if (st->err != 0 || st->ended)
				stream_item_end(op, st->err != 0 ? st->err :
						ENG_EMALFORMED);
			break;
		}
		if (imap_write_blocked(op->s))
			break;
		if (!st->rd.in_body)
			expect = st->rd.records < st->n ?
				st->uids[st->rd.records] : 0;
		rc = rpc_bodies_step(&st->rd, p, n, 0, expect, &used, &ev);
		if (rc != 0) {
			/* A record sqlited should not have sent: nothing of
			 * this stream can be trusted from here on. */
			st->err = rc;
			stream_item_end(op, rc);
			break;
		}
		stream_take(st, used);
		if (ev.kind == RPC_BODIES_HEAD && ev.head.gone) {
			stream_item_end(op, ENG_ENOTFOUND);
			break;
		}
		if (ev.kind == RPC_BODIES_HEAD) {
			op->lit_started = true;
			op->lit_size = ev.head.size;
			put_literal_head(op, it, ev.head.size, false);
		} else if (ev.kind == RPC_BODIES_DATA) {
			fetch_out_flush(op); /* the literal's head first */
			imap_write_direct(op->s, ev.data, ev.len);
		}
		if (ev.kind != RPC_BODIES_NEED && ev.rec_end) {
			stream_item_end(op, 0);
			break;
		}
	}
	if (st->off == st->buf.len) {
		eng_buf_reset(&st->buf);
		st->off = 0;
	}
	stream_credit(op);
}

/* What stream_data's DATA left unconsumed is kept (its credit withheld:
 * at most the window); the in-place view ends. */
static void stream_keep(fstream *st, bool wanted)
{
	if (wanted && st->in_len > 0) {
		if (st->off > 0 && st->off == st->buf.len) {
			eng_buf_reset(&st->buf);
			st->off = 0;
		}
		eng_buf_append(&st->buf, st->in, st->in_len);
	}
	st->in = NULL;
	st->in_len = 0;
}

/* Bytes of the stream: given in place to the item waiting for them, the
 * rest kept (credit withheld until consumed). */
static int stream_data(freq *r, uint32_t id, const uint8_t *data, size_t len,
		       bool end)
{
	fetch_op *op = r->op;
	fstream *st = &op->st;

	st->has_id = true;
	st->id = id;
	st->got_any = true;
	st->in = data;
	st->in_len = len;
	if (end) {
		st->ended = true;
		st->busy = false;
		r->ended = true;
		r->used = false;
	}
	/* The pump may end the command: op lives until this returns (the
	 * request counts until its own completion, unless cancelled). */
	op->inflight++;
	fetch_stream_run(op);
	if (op->repump)
		fetch_pump(op);
	stream_keep(st, !op->finished && !op->aborted);
	op->inflight--;
	if (op->finished || op->aborted) {
		if (op->inflight == 0)
			fetch_op_end(op);
		return RPC_ECANCELLED;
	}
	return end || len == 0 ? 0 : RPC_CLIENT_HOLD;
}

/* The current item takes its record from the stream: 1 (it runs, or is
 * done and the pump goes round). */
static int stream_attach(fetch_op *op)
{
	op->mode = BM_STREAM;
	op->item_done = false;
	op->item_err = 0;
	op->lit_started = false;
	op->decoded = 0;
	op->item_busy = true;
	op->st.attached = true;
	fetch_stream_run(op);
	return 1;
}

/* ---- the current item: start, end ---- */

/* Starts the current item: 1 an RPC runs, 0 done, < 0 failed. */
int fetch_item_start(fetch_op *op)
{
	const imap_fetch_item *it = &op->spec.items[op->item];
	char section[200];

	op->literal8 = false;
	if (op->body_ahead) {
		if (op->bodies && !stream_covers(op) &&
		    ahead_of(op, op->cur) == NULL && fetch_fill_bodies(op) != 0)
			return -1;
		if (stream_covers(op))
			return stream_attach(op);
		return item_adopt(op, it);
	}
	if (it->kind != IMAP_FK_BODY)
		return item_binary(op, it);
	if (item_from_header(op, it))
		return 0;
	imap_fetch_item_rpc_section(it, section, sizeof(section));
	if (it->text == IMAP_FT_FIELDS || it->text == IMAP_FT_FIELDS_NOT) {
		op->after = BA_FIELDS;
		return fetch_send_item(op, section, 0, FETCH_HEADER_MAX,
				       BM_BUFFER) == 0 ? 1 : -1;
	}
	return fetch_send_item(op, section, it->partial ? it->offset : 0,
			       it->partial ? it->length : UINT64_MAX, BM_STREAM) ==
		0 ? 1 : -1;
}

/* A buffered fetch arrived: filter or decode it and write the item. */
static void item_buffered(fetch_op *op)
{
	const imap_fetch_item *it = &op->spec.items[op->item];

	if (op->after == BA_FIELDS) {
		eng_buf_reset(&op->dec);
		imap_header_filter(op->buf.data != NULL ? op->buf.data : "",
				   op->buf.len, it->fields, it->field_lens,
				   it->n_fields, it->text == IMAP_FT_FIELDS_NOT,
				   &op->dec);
		put_literal_mem(op, it, op->dec.data, op->dec.len, false);
		eng_buf_reset(&op->dec);
		return;
	}
	eng_buf_reset(&op->dec);
	imap_cte_feed(&op->cte, op->buf.data, op->buf.len, &op->dec);
	imap_cte_finish(&op->cte, &op->dec);
	if (it->kind == IMAP_FK_BINARY_SIZE) {
		put_label(op, it);
		eng_buf_printf(&op->line, " %zu", op->dec.len);
		fetch_out_maybe_flush(op);
	} else {
		put_literal_mem(op, it, op->dec.data, op->dec.len,
				op->literal8 || memchr(op->dec.data != NULL ?
						       op->dec.data : "", '\0',
						       op->dec.len) != NULL);
	}
	eng_buf_reset(&op->dec);
	eng_buf_reset(&op->buf);
}

/* The counting pass of a large encoded part is over. 1: the writing
 * pass runs, 0: done (BINARY.SIZE). */
static int item_counted(fetch_op *op)
{
	const imap_fetch_item *it = &op->spec.items[op->item];
	uint64_t total = op->decoded;
	char section[80];

	if (it->kind == IMAP_FK_BINARY_SIZE) {
		put_label(op, it);
		eng_buf_printf(&op->line, " %llu", (unsigned long long)total);
		fetch_out_maybe_flush(op);
		return 0;
	}
	op->win_off = 0;
	op->win_len = total;
	if (it->partial) {
		op->win_off = it->offset < total ? it->offset : total;
		op->win_len = total - op->win_off;
		if (it->length < op->win_len)
			op->win_len = it->length;
	}
	put_literal_head(op, it, op->win_len, op->literal8);
	op->item_pass = 1;
	item_cte(op, it, &op->cte);
	imap_fetch_item_rpc_section(it, section, sizeof(section));
	return fetch_send_item(op, section, 0, UINT64_MAX, BM_DECODE_OUT) == 0 ?
		1 : -1;
}

/* The current item's RPC ended (item_done or item_err). 1: another RPC
 * runs for it, 0: the item is done, 2: the message is gone (skip it),
 * < 0: the command failed. */
int fetch_item_finished(fetch_op *op)
{
	int err = op->item_err;

	if (err != 0) {
		if (op->lit_started || op->mode == BM_DECODE_OUT) {
			fetch_fail_midstream(op, err);
			return -1;
		}
		if (err != ENG_ENOTFOUND) {
			fetch_finish_rpc_error(op, err);
			return -1;
		}
		/* Expunged meanwhile: skipped if nothing of it was written,
		 * else the item is empty. */
		if (op->msg_open)
			return 2;
		eng_buf_reset(&op->buf);
		op->decoded = 0;
		if (op->mode == BM_STREAM) {
			put_literal_head(op, &op->spec.items[op->item], 0,
					 false);
			return 0;
		}
	}
	switch (op->mode) {
	case BM_STREAM:
		if (!op->lit_started)
			put_literal_head(op, &op->spec.items[op->item], 0,
					 false);
		return 0;
	case BM_BUFFER:
		item_buffered(op);
		return 0;
	case BM_COUNT:
		return item_counted(op);
	case BM_DECODE_OUT:
		return 0;
	}
	return 0;
}

/* A BINARY item whose encoding is unknown stops the command. */
bool fetch_binary_ok(fetch_op *op)
{
	for (size_t i = 0; i < op->spec.n_items; i++) {
		const imap_fetch_item *it = &op->spec.items[i];
		imap_cte d;

		if (it->kind != IMAP_FK_BODY && item_part(op, it) != NULL &&
		    item_cte(op, it, &d) != 0)
			return false;
	}
	return true;
}

