/*
 * FETCH's metadata (imap_cmd_fetch.c has the command's overview):
 * FETCH_META per chunk of messages (the next chunk asked while the current
 * one is written), STORE +FLAGS \Seen for a non-PEEK body item, phase A
 * (each message's MIME structure and top-level header, from FETCH_META's
 * answer or from FETCH_BODY WANT MIME/HEADER ahead of the message being
 * written), "* n FETCH (" with every item that is not a body section
 * (UID FLAGS INTERNALDATE RFC822.SIZE ENVELOPE BODY BODYSTRUCTURE MODSEQ
 * SAVEDATE EMAILID THREADID PREVIEW), and the text PREVIEW is made of.
 *
 * EMAILID / THREADID (RFC 8474): "M" and "T" followed by the decimal
 * CONTENT_ID / THREAD_ID of sqlited ("M42", "T17"); a THREAD_ID of 0 is
 * NIL. These are stable across sessions and mailboxes (COPY keeps them).
 */
#include "imap_fetch_private.h"

#include "eng_error.h"
#include "rpc_proto.h"

#include <stdlib.h>
#include <string.h>
#include <strings.h>

/* ---- phase A ---- */

static bool msg_needs_a(const fetch_op *op)
{
	return op->need_mime || op->need_header;
}

static fslot *slot_free(fetch_op *op)
{
	for (size_t i = 0; i < sizeof(op->slots) / sizeof(op->slots[0]); i++)
		if (op->slots[i].state == SL_FREE)
			return &op->slots[i];
	return NULL;
}

static fslot *slot_of(fetch_op *op, size_t msg)
{
	for (size_t i = 0; i < sizeof(op->slots) / sizeof(op->slots[0]); i++)
		if (op->slots[i].state != SL_FREE && op->slots[i].msg == msg)
			return &op->slots[i];
	return NULL;
}

/* A phase A answer into sl: mime (NULL: none came) is decoded, hdr
 * (NULL: none came) copied. */
static void slot_fill(fetch_op *op, fslot *sl, const uint8_t *mime,
		      size_t mime_len, const uint8_t *hdr, size_t hdr_len)
{
	if (op->need_mime) {
		if (mime == NULL ||
		    eng_mime_decode(mime, mime_len, op->msgs[sl->msg].size,
				    &sl->mime) != 0) {
			sl->state = SL_FAILED;
			sl->err = ENG_ECORRUPT;
			return;
		}
	}
	if (op->need_header && hdr != NULL) {
		eng_buf_append(&sl->hdr, hdr, hdr_len);
		/* The column holds at most 256 KiB: a header that long may
		 * be cut, so it is streamed from the message instead. */
		sl->hdr_complete = hdr_len < FETCH_HEADER_COLUMN_MAX;
	}
	sl->state = SL_READY;
}

void fetch_a_head(fetch_op *op, fslot *sl, const rpc_view *head)
{
	const uint8_t *mime = NULL, *hdr = NULL;
	size_t mime_len = 0, hdr_len = 0;

	if (rpc_get_bytes(head, RPC_T_MIME, &mime, &mime_len) != 0)
		mime = NULL;
	if (rpc_get_bytes(head, RPC_T_HEADER, &hdr, &hdr_len) != 0)
		hdr = NULL;
	slot_fill(op, sl, mime, mime_len, hdr, hdr_len);
}

/* Every blob phase A needs for message i came with FETCH_META. */
static bool msg_inline(const fetch_op *op, size_t i)
{
	const fmsg *m = &op->msgs[i];

	return (!op->need_mime || m->has_mime) &&
		(!op->need_header || m->has_hdr);
}

/* Phase A of the message being written from FETCH_META's blobs. */
static fslot *slot_inline(fetch_op *op)
{
	const fmsg *m = &op->msgs[op->cur];
	/* op->blobs has no buffer when every blob came empty. */
	const uint8_t *base = op->blobs.data != NULL ?
		(const uint8_t *)op->blobs.data : (const uint8_t *)"";
	fslot *sl = &op->inl;

	fetch_slot_reset(sl);
	sl->msg = op->cur;
	slot_fill(op, sl, m->has_mime ? base + m->mime_off : NULL, m->mime_len,
		  m->has_hdr ? base + m->hdr_off : NULL, m->hdr_len);
	return sl;
}

/* Sends phase A requests ahead, within the pipeline. */
int fetch_fill_pipeline(fetch_op *op)
{
	uint32_t want = (op->need_mime ? RPC_WANT_MIME : 0) |
			(op->need_header ? RPC_WANT_HEADER : 0);

	if (!msg_needs_a(op) || op->item_busy)
		return 0;            /* none while an item request is open */
	if (op->next_a < op->cur)
		op->next_a = op->cur;
	while (op->next_a < op->n && op->next_a < op->cur + FETCH_PIPELINE &&
	       !imap_write_blocked(op->s)) {
		fslot *sl;
		freq *r;
		int rc;

		if (op->msgs[op->next_a].seq == 0 ||
		    msg_inline(op, op->next_a)) {
			op->next_a++;        /* skipped, or no RPC needed */
			continue;
		}
		sl = slot_free(op);
		if (sl == NULL || (r = fetch_req_new(op, RQ_A)) == NULL)
			break;
		sl->state = SL_WAIT;
		sl->msg = op->next_a;
		r->slot = sl;
		rc = fetch_send_body(op, r, op->msgs[op->next_a].uid, NULL,
				     want, 0, 0, false);
		if (rc != 0) {
			sl->state = SL_FREE;
			return rc;
		}
		op->next_a++;
	}
	return 0;
}

/* ---- the simple items ---- */

static void put_objectid(eng_buf *b, const char *name, char c, int64_t id)
{
	if (id == 0)
		eng_buf_printf(b, " %s NIL", name);
	else if (id > 0)
		eng_buf_printf(b, " %s (%c%lld)", name, c, (long long)id);
	else
		eng_buf_printf(b, " %s (%cn%lld)", name, c, -(long long)id);
}

static void put_flags(fetch_op *op, const fmsg *m, eng_buf *b)
{
	const char *kws[FETCH_MAX_KEYWORDS];
	const char *p = op->kw.data + m->kw_off;
	size_t n = 0;

	for (uint32_t i = 0; i < m->n_kw && n < FETCH_MAX_KEYWORDS; i++) {
		kws[n++] = p;
		p += strlen(p) + 1;
	}
	eng_buf_puts(b, " FLAGS ");
	imap_put_flags(b, m->flags, kws, n);
}

/* "* n FETCH (" and every item that is not a body section. */
void fetch_put_prefix(fetch_op *op, const fmsg *m, const fslot *sl)
{
	uint32_t a = op->spec.attrs;
	eng_buf *b = &op->line;
	bool condstore = (op->s->enabled & IMAP_EN_CONDSTORE) != 0;

	size_t mark;

	op->msg_mark = b->len;
	op->msg_open = true;
	eng_buf_puts(b, "* ");
	imap_fetch_put_uint(b, m->seq);
	eng_buf_puts(b, " FETCH (");
	mark = b->len;
	if (op->cmd->uid || (a & IMAP_FA_UID)) {
		eng_buf_puts(b, " UID ");
		imap_fetch_put_uint(b, m->uid);
	}
	if ((a & IMAP_FA_FLAGS) || m->flags_changed)
		put_flags(op, m, b);
	if (a & IMAP_FA_INTERNALDATE) {
		eng_buf_puts(b, " INTERNALDATE ");
		imap_put_datetime(b, m->internal_date);
	}
	if (a & IMAP_FA_RFC822_SIZE)
		eng_buf_printf(b, " RFC822.SIZE %llu",
			       (unsigned long long)m->size);
	if (a & IMAP_FA_ENVELOPE) {
		eng_buf_puts(b, " ENVELOPE ");
		eng_mime_write_envelope(sl->mime->envelope, b);
	}
	if (a & IMAP_FA_BODY) {
		eng_buf_puts(b, " BODY ");
		eng_mime_write_bodystructure(sl->mime, false, b);
	}
	if (a & IMAP_FA_BODYSTRUCTURE) {
		eng_buf_puts(b, " BODYSTRUCTURE ");
		eng_mime_write_bodystructure(sl->mime, true, b);
	}
	if ((a & IMAP_FA_MODSEQ) || op->spec.has_changedsince ||
	    (m->flags_changed && condstore))
		eng_buf_printf(b, " MODSEQ (%llu)", (unsigned long long)m->modseq);
	if (a & IMAP_FA_SAVEDATE) {
		eng_buf_puts(b, " SAVEDATE ");
		if (m->has_savedate && m->save_date != 0)
			imap_put_datetime(b, m->save_date);
		else
			eng_buf_puts(b, "NIL");
	}
	if (a & IMAP_FA_EMAILID)
		put_objectid(b, "EMAILID", 'M', m->content_id);
	if (a & IMAP_FA_THREADID)
		put_objectid(b, "THREADID", 'T', m->thread_id);
	if (a & IMAP_FA_PREVIEW) {
		eng_buf_puts(b, " PREVIEW ");
		imap_put_string(b, op->preview != NULL ? op->preview : "",
				op->preview != NULL ? strlen(op->preview) : 0);
	}
	/* Every item above began with a space: drop the first one. */
	op->need_space = b->len > mark;
	if (op->need_space) {
		memmove(b->data + mark, b->data + mark + 1, b->len - mark - 1);
		b->data[--b->len] = '\0';
	}
}

/* ---- PREVIEW ---- */

/* The first text/plain part, else the first text/html, depth first. */
static const eng_mime_part *preview_part(const eng_mime_part *p,
					 bool html)
{
	if (p->message != NULL)
		return NULL;         /* an attached message is not our text */
	if (p->n_children == 0) {
		if (strcasecmp(p->type, "text") == 0 &&
		    strcasecmp(p->subtype, html ? "html" : "plain") == 0 &&
		    (p->disposition == NULL ||
		     strcasecmp(p->disposition, "attachment") != 0))
			return p;
		return NULL;
	}
	for (size_t i = 0; i < p->n_children; i++) {
		const eng_mime_part *r = preview_part(p->children[i], html);

		if (r != NULL)
			return r;
	}
	return NULL;
}

/* The section number of part within root ("1.2"; "" for the root). */
static bool part_number(const eng_mime_part *root, const eng_mime_part *part,
			eng_buf *out)
{
	if (root == part)
		return true;
	for (size_t i = 0; i < root->n_children; i++) {
		size_t mark = out->len;

		eng_buf_printf(out, "%s%zu", mark > 0 ? "." : "", i + 1);
		if (part_number(root->children[i], part, out))
			return true;
		out->len = mark;
		if (out->data != NULL)
			out->data[mark] = '\0';
	}
	return false;
}

static const char *param(const eng_mime_part *p, const char *name)
{
	for (size_t i = 0; i < p->n_params; i++)
		if (strcmp(p->params[i].name, name) == 0)
			return p->params[i].value;
	return NULL;
}

/* 1: the part's bytes are being fetched, 0: no text part (empty). */
int fetch_preview_start(fetch_op *op)
{
	const eng_mime_part *root = op->hs->mime, *p;
	eng_buf sec = ENG_BUF_INIT;
	int rc;

	free(op->preview);
	op->preview = NULL;
	if ((p = preview_part(root, false)) == NULL &&
	    (p = preview_part(root, true)) == NULL)
		return 0;
	if (!part_number(root, p, &sec) || sec.len >= sizeof(op->pend_section)) {
		eng_buf_free(&sec);
		return 0;            /* too deep to name: no preview */
	}
	if (sec.len == 0)
		eng_buf_putc(&sec, '1');   /* a single-part message: part 1 */
	if (imap_cte_init(&op->cte, p->encoding) != 0)
		imap_cte_init(&op->cte, NULL);
	op->after = BA_PREVIEW;
	rc = fetch_send_item(op, sec.data, 0, FETCH_PREVIEW_BYTES, BM_BUFFER);
	eng_buf_free(&sec);
	return rc == 0 ? 1 : -1;
}

void fetch_preview_finished(fetch_op *op)
{
	const eng_mime_part *root = op->hs->mime;
	const eng_mime_part *p = preview_part(root, false);
	bool html = false;
	eng_buf out = ENG_BUF_INIT;

	if (p == NULL) {
		p = preview_part(root, true);
		html = true;
	}
	eng_buf_reset(&op->dec);
	imap_cte_feed(&op->cte, op->buf.data, op->buf.len, &op->dec);
	imap_cte_finish(&op->cte, &op->dec);
	imap_preview_build(op->dec.data != NULL ? op->dec.data : "",
			   op->dec.len, p != NULL ? param(p, "charset") : NULL,
			   html, &out);
	eng_buf_putc(&out, '\0');
	op->preview = eng_buf_steal(&out, NULL);
	eng_buf_reset(&op->dec);
	eng_buf_reset(&op->buf);
}

/* HS_START: 1 ready to go on, 0 wait, -1 finished/skipped handled. */
int fetch_stage_start(fetch_op *op)
{
	fslot *sl;

	if (!msg_needs_a(op)) {
		op->stage = (op->spec.attrs & IMAP_FA_PREVIEW) ? HS_PREVIEW :
			HS_PREFIX;
		return 1;
	}
	if (msg_inline(op, op->cur))
		sl = slot_inline(op);
	else if ((sl = slot_of(op, op->cur)) == NULL || sl->state == SL_WAIT)
		return 0;
	op->hs = sl;
	if (sl->state == SL_FAILED) {
		if (sl->err == ENG_ENOTFOUND) {
			/* expunged meanwhile: skipped */
			fetch_next_message(op);
			return 1;
		}
		fetch_finish_rpc_error(op, sl->err);
		return -1;
	}
	op->stage = (op->spec.attrs & IMAP_FA_PREVIEW) ? HS_PREVIEW : HS_PREFIX;
	return 1;
}

/* ---- the start: FETCH_META, STORE ---- */

static int meta_cmp(const void *a, const void *b)
{
	const fmsg *x = a, *y = b;

	return x->uid < y->uid ? -1 : x->uid > y->uid;
}

static fmsg *msg_find(fetch_op *op, uint32_t uid)
{
	fmsg key = { .uid = uid };

	return bsearch(&key, op->msgs, op->n, sizeof(*op->msgs), meta_cmp);
}

/* A blob of the group into blobs; false when it is absent. */
static bool meta_blob(eng_buf *blobs, const rpc_view *g, uint32_t tag,
		      size_t *off_r, size_t *len_r)
{
	const uint8_t *p;
	size_t len;

	if (rpc_get_bytes(g, tag, &p, &len) != 0)
		return false;
	*off_r = blobs->len;
	*len_r = len;
	eng_buf_append(blobs, p, len);
	return true;
}

/* One MESSAGE group into m (keywords appended to ch->kw, blobs to
 * ch->blobs). */
static void meta_read(const fetch_op *op, fmeta_chunk *ch, const rpc_view *g,
		      fmsg *m)
{
	rpc_iter it;
	const rpc_field *f;

	rpc_get_u32(g, RPC_T_FLAGS, &m->flags);
	rpc_get_u64(g, RPC_T_MODSEQ, &m->modseq);
	rpc_get_u64(g, RPC_T_SIZE, &m->size);
	rpc_get_s64(g, RPC_T_INTERNAL_DATE, &m->internal_date);
	m->has_savedate = rpc_get_s64(g, RPC_T_SAVE_DATE, &m->save_date) == 0;
	rpc_get_s64(g, RPC_T_CONTENT_ID, &m->content_id);
	rpc_get_s64(g, RPC_T_THREAD_ID, &m->thread_id);
	m->kw_off = ch->kw.len;
	m->n_kw = 0;
	rpc_iter_init(&it, g);
	while ((f = rpc_iter_next(&it, RPC_T_KEYWORD)) != NULL &&
	       m->n_kw < FETCH_MAX_KEYWORDS) {
		if (f->u == 0 || memchr(f->data, '\0', (size_t)f->u) != NULL)
			continue;
		eng_buf_append(&ch->kw, f->data, (size_t)f->u);
		eng_buf_putc(&ch->kw, '\0');
		m->n_kw++;
	}
	m->has_mime = op->need_mime &&
		meta_blob(&ch->blobs, g, RPC_T_MIME, &m->mime_off, &m->mime_len);
	m->has_hdr = op->need_header &&
		meta_blob(&ch->blobs, g, RPC_T_HEADER, &m->hdr_off, &m->hdr_len);
}

static void on_store(imap_cmd *cmd, int err, const rpc_view *resp)
{
	fetch_op *op = cmd->op;
	rpc_iter it;
	const rpc_field *f;
	uint64_t lo = 0, hi = 0;

	op->busy = false;
	if (!fetch_rpc_back(op))
		return;
	if (err != 0) {
		/* \Seen could not be set: the bodies are still served, as
		 * they would be on a read-only mailbox. */
		eng_log(ENG_LOG_INFO, "imap: FETCH: setting \\Seen failed: %s",
			rpc_strerror(err));
		fetch_pump(op);
		return;
	}
	rpc_iter_init(&it, resp);
	while ((f = rpc_iter_next(&it, RPC_T_MESSAGE)) != NULL) {
		rpc_view g = rpc_field_group(f);
		uint32_t uid;
		fmsg *m;

		if (rpc_get_u32(&g, RPC_T_UID, &uid) != 0 ||
		    (m = msg_find(op, uid)) == NULL)
			continue;
		rpc_get_u32(&g, RPC_T_FLAGS, &m->flags);
		rpc_get_u64(&g, RPC_T_MODSEQ, &m->modseq);
		m->flags_changed = true;
		/* The view's held row had another first_unseen. */
		op->s->sel->held.valid = false;
		lo = lo == 0 || m->modseq < lo ? m->modseq : lo;
		hi = m->modseq > hi ? m->modseq : hi;
	}
	/* As STORE does: the view is current when nothing else changed
	 * the mailbox meanwhile, and the next sync does not repeat this. */
	imap_view_advance(op->s->sel, resp, lo, hi);
	fetch_pump(op);
}

/* STORE +FLAGS \Seen on the messages that lack it; false: nothing to do. */
static bool store_seen(fetch_op *op)
{
	eng_uidset set = { NULL, 0, 0 };
	eng_buf pl = ENG_BUF_INIT;
	int rc;

	for (size_t i = 0; i < op->n; i++) {
		const fmsg *m = &op->msgs[i];

		if (m->seq == 0 || (m->flags & 1u))
			continue;
		if (set.count > 0 && set.ranges[set.count - 1].hi + 1 == m->uid)
			set.ranges[set.count - 1].hi = m->uid;
		else
			eng_uidset_add(&set, m->uid, m->uid);
	}
	if (set.count == 0)
		return false;
	fetch_payload_begin(op, &pl);
	rpc_put_uidset(&pl, RPC_T_UIDSET, &set);
	rpc_put_u64(&pl, RPC_T_MODE, RPC_MODE_ADD);
	rpc_put_u64(&pl, RPC_T_FLAGS, 1u);   /* \Seen */
	rc = fetch_call_once(op, RPC_OP_STORE, &pl, on_store);
	eng_uidset_free(&set);
	return rc == 0;
}

/* A FETCH_META answer into ch (the messages of ch->uids, in UID order;
 * sequence numbers are set when the chunk is installed). */
static void meta_parse(const fetch_op *op, const rpc_view *resp,
		       fmeta_chunk *ch)
{
	rpc_iter it;
	const rpc_field *f;
	size_t cap = rpc_count(resp, RPC_T_MESSAGE);

	free(ch->msgs);
	ch->msgs = eng_calloc(cap > 0 ? cap : 1, sizeof(*ch->msgs));
	ch->n = 0;
	eng_buf_reset(&ch->kw);
	eng_buf_reset(&ch->blobs);
	rpc_iter_init(&it, resp);
	while ((f = rpc_iter_next(&it, RPC_T_MESSAGE)) != NULL && ch->n < cap) {
		rpc_view g = rpc_field_group(f);
		fmsg *m = &ch->msgs[ch->n];

		if (rpc_get_u32(&g, RPC_T_UID, &m->uid) != 0 ||
		    !eng_uidset_contains(&ch->uids, m->uid) ||
		    (ch->n > 0 && m->uid <= ch->msgs[ch->n - 1].uid))
			continue;
		meta_read(op, ch, &g, m);
		ch->n++;
	}
}

static void prefetch(fetch_op *op);

/*
 * op->pre becomes the chunk being written, the next one is asked for,
 * and \Seen is set on it when asked. false: STORE is in flight (its
 * answer pumps).
 */
bool fetch_chunk_install(fetch_op *op)
{
	fmeta_chunk *p = &op->pre;
	fmsg *msgs = op->msgs;
	eng_buf kw = op->kw, blobs = op->blobs;
	eng_uidset uids = op->chunk;

	op->msgs = p->msgs;
	op->n = p->n;
	op->kw = p->kw;
	op->blobs = p->blobs;
	op->chunk = p->uids;
	p->msgs = msgs;
	p->n = 0;
	p->kw = kw;
	p->blobs = blobs;
	p->uids = uids;
	op->pre_ready = false;
	op->cur = 0;
	op->next_a = 0;
	op->next_b = 0;
	for (size_t i = 0; i < op->n; i++)
		op->msgs[i].seq = imap_seq_of_uid(op->s->sel, op->msgs[i].uid);
	prefetch(op);
	return !(op->want_seen && store_seen(op));
}

static void on_meta(imap_cmd *cmd, int err, const rpc_view *resp)
{
	fetch_op *op = cmd->op;

	if (!fetch_once_back(op, err))
		return;
	meta_parse(op, resp, &op->pre);
	if (fetch_chunk_install(op))
		fetch_pump(op);
}

/* The answer of the FETCH_META asked ahead: kept until the chunk being
 * written is done (an error too: the messages before it go out first). */
static void on_meta_pre(imap_cmd *cmd, int err, const rpc_view *resp)
{
	fetch_op *op = cmd->op;

	op->pre_busy = false;
	if (!fetch_rpc_back(op))
		return;
	if (err != 0)
		op->pre_err = err;
	else {
		meta_parse(op, resp, &op->pre);
		op->pre_ready = true;
	}
	fetch_pump(op);
}

/* FETCH_META_CHUNK, or less for tests (SEALMAIL_IMAP_FETCH_CHUNK), so
 * that a test crosses chunks without thousands of messages. */
static size_t meta_chunk(void)
{
	static size_t chunk;

	if (chunk == 0) {
		const char *e = getenv("SEALMAIL_IMAP_FETCH_CHUNK");
		unsigned long v = e != NULL ? strtoul(e, NULL, 10) : 0;

		chunk = v > 0 && v < FETCH_META_CHUNK ? (size_t)v :
			FETCH_META_CHUNK;
	}
	return chunk;
}

/*
 * The next FETCH_META: the next FETCH_META_CHUNK messages of the view
 * that are in the set (a UID not in the view is never answered, so only
 * the view is asked for), their UIDs in op->pre.uids; cb gets the answer.
 * 0 sent, 1 nothing is left (op->meta_end), < 0 an error.
 */
static int meta_request(fetch_op *op, imap_rpc_cb *cb)
{
	const imap_selected *sel = op->s->sel;
	eng_buf pl = ENG_BUF_INIT;
	size_t taken = 0, limit = meta_chunk();

	/* With WANT, the MIME structures and headers phase A needs. */
	if (msg_needs_a(op) && limit > FETCH_META_CHUNK_INLINE)
		limit = FETCH_META_CHUNK_INLINE;
	int rc;

	eng_uidset_free(&op->pre.uids);
	while (op->view_pos < sel->n && taken < limit) {
		uint32_t u = sel->uids[op->view_pos++];
		eng_uidset *c = &op->pre.uids;

		if (!eng_uidset_contains(&op->set, u))
			continue;
		if (c->count > 0 && c->ranges[c->count - 1].hi + 1 == u)
			c->ranges[c->count - 1].hi = u;
		else
			eng_uidset_add(c, u, u);
		taken++;
	}
	if (taken == 0) {
		op->meta_end = true;
		return 1;
	}
	fetch_payload_begin(op, &pl);
	rpc_put_uidset(&pl, RPC_T_UIDSET, &op->pre.uids);
	if (op->spec.has_changedsince)
		rpc_put_u64(&pl, RPC_T_CHANGEDSINCE, op->spec.changedsince);
	if (msg_needs_a(op))
		rpc_put_u64(&pl, RPC_T_WANT,
			    (op->need_mime ? RPC_WANT_MIME : 0) |
			    (op->need_header ? RPC_WANT_HEADER : 0));
	rc = imap_rpc_call(op->cmd, RPC_OP_FETCH_META, &pl, NULL, cb);
	eng_buf_free_wipe(&pl);
	if (rc == 0)
		op->inflight++;
	return rc;
}

/* The FETCH_META the command waits for (the first chunk). */
int fetch_send_meta(fetch_op *op)
{
	int rc = meta_request(op, on_meta);

	if (rc == 0)
		op->busy = true;
	return rc;
}

/* Asks for the chunk after the one being written, if any is left. */
static void prefetch(fetch_op *op)
{
	int rc;

	if (op->pre_busy || op->pre_ready || op->meta_end || op->pre_err != 0)
		return;
	rc = meta_request(op, on_meta_pre);
	if (rc == 0)
		op->pre_busy = true;
	else if (rc < 0)
		op->pre_err = rc;
}

