/*
 * FETCH and UID FETCH (RFC 3501 6.4.5, RFC 9051 6.4.5, RFC 3516 BINARY,
 * RFC 7162 CONDSTORE/QRESYNC, RFC 8514 SAVEDATE, RFC 8474 OBJECTID,
 * RFC 8970 PREVIEW). The attributes are parsed by imap_fetch_parse.c.
 * This file is the command: its plan and start, its lifetime, the RPC
 * plumbing, the output buffer, the message being written and the pump;
 * imap_fetch_meta.c has FETCH_META, phase A and the simple items,
 * imap_fetch_body.c the body items (imap_fetch_private.h: what they share).
 *
 * One command, in this order:
 *
 *   [CHANGES, when VANISHED]  "* VANISHED (EARLIER) uids"
 *   FETCH_META of the set     one RPC for every message's metadata (per
 *                             FETCH_META_CHUNK messages), with WANT
 *                             MIME/HEADER when an item needs them: each
 *                             message's MIME structure and top-level
 *                             header come inline (docs/rpc.md);
 *                             the next chunk's FETCH_META is asked
 *                             while the current one is written (two
 *                             chunks held at most; output in UID order)
 *   [STORE +\Seen]            one RPC, when a non-PEEK body item is asked
 *                             and the mailbox is not read-only
 *   per message, in UID order (sequence numbers from the session's view;
 *   a UID that is not in the view, or vanished meanwhile, is skipped):
 *     phase A  the MIME structure and header, for ENVELOPE, BODY,
 *              BODYSTRUCTURE, BINARY, PREVIEW and the top-level header
 *              items: from FETCH_META's answer (no RPC), or, for a
 *              message whose blobs sqlited left out of it (above its
 *              size limits), FETCH_BODY WANT MIME/HEADER (no bytes); up
 *              to FETCH_PIPELINE of these are in flight ahead of the
 *              message being written, answers kept in slots;
 *     phase B  the message's response: the simple items, then each body
 *              item, either from the phase A header (top-level HEADER,
 *              HEADER.FIELDS) or from one FETCH_BODY streamed into a
 *              literal ("{n}\r\n" then the bytes as they arrive).
 *
 * Backpressure: when the session's output is full (imap_write_blocked), a
 * streamed chunk is HELD (no credit to sqlited) and handed back with
 * rpc_client_consumed() when cmd->on_drained runs; no new message is
 * started and no phase A request is sent meanwhile. So a 50 MB body costs
 * at most a window (256 KiB) plus the session's output bound.
 *
 * Matching answers to requests: imap_rpc_call's callback names only the
 * command, so every FETCH_BODY asks for the body (WANT_BODY; LENGTH 0 when
 * no bytes are wanted) and its data callback, which always runs before a
 * successful completion, carries the request's context. An error has no
 * context: it is given to the oldest request still open, which is the one
 * sqlited failed since it answers one alias's requests in order.
 */
#include "imap_fetch_private.h"

#include "eng_error.h"
#include "rpc_proto.h"

#include <stdlib.h>
#include <string.h>

static void out_drop_open(fetch_op *op);

/* ---- lifetime ---- */

void fetch_slot_reset(fslot *sl)
{
	eng_mime_part_free(&sl->mime);
	eng_buf_reset(&sl->hdr);
	sl->state = SL_FREE;
	sl->err = 0;
	sl->hdr_complete = false;
}

static void op_free(fetch_op *op)
{
	for (size_t i = 0; i < sizeof(op->slots) / sizeof(op->slots[0]); i++) {
		fetch_slot_reset(&op->slots[i]);
		eng_buf_free(&op->slots[i].hdr);
	}
	fetch_slot_reset(&op->inl);
	eng_buf_free(&op->inl.hdr);
	for (size_t i = 0; i < FETCH_BODY_AHEAD; i++)
		eng_buf_free(&op->ahead[i].data);
	free(op->st.uids);
	free(op->st.msgs);
	eng_buf_free(&op->st.buf);
	eng_buf_free(&op->blobs);
	imap_fetch_spec_clear(&op->spec);
	eng_uidset_free(&op->set);
	eng_uidset_free(&op->chunk);
	eng_uidset_free(&op->pre.uids);
	free(op->pre.msgs);
	eng_buf_free(&op->pre.kw);
	eng_buf_free(&op->pre.blobs);
	free(op->msgs);
	eng_buf_free(&op->kw);
	eng_buf_free(&op->line);
	eng_buf_free(&op->buf);
	eng_buf_free(&op->dec);
	free(op->preview);
	free(op);
}

/* Cancels the requests whose id is known (the others are short). Their
 * callbacks run inside rpc_client_cancel: the extra count keeps op. */
static void cancel_open(fetch_op *op)
{
	op->inflight++;
	for (size_t i = 0; i < FETCH_REQS; i++) {
		freq *r = &op->reqs[i];

		if (r->used && r->has_id && !r->ended) {
			r->ended = true;
			rpc_client_cancel(op->s->d->rpc, r->id);
		}
	}
	op->inflight--;
}

/*
 * The end, once no RPC of the command is in flight (imap_cmd_done frees
 * the command, and the session calls an RPC's callback with it): the
 * tagged answer recorded by finish(), or nothing after an abort.
 */
void fetch_op_end(fetch_op *op)
{
	imap_cmd *cmd = op->cmd;

	cmd->op = NULL;
	cmd->on_drained = NULL;
	cmd->on_abort = NULL;
	if (!op->aborted) {
		if (op->end_err != 0)
			imap_cmd_fail_rpc(cmd, op->end_err, "FETCH");
		else
			imap_cmd_done(cmd, op->end_r, op->end_code, "%s",
				      op->end_text);
	}
	op_free(op);
}

/* Records the tagged answer (the first one wins) and ends when idle. */
static void finish_as(fetch_op *op, enum imap_result r, const char *code,
		      const char *text, int err)
{
	if (op->finished)
		return;
	op->finished = true;
	op->end_r = r;
	op->end_code = code;
	op->end_text = text;
	op->end_err = err;
	if (!op->aborted && !op->cmd->aborted) {
		/* A response begun and not ended (an item failed): closed, so
		 * that the tagged answer follows valid syntax. */
		if (op->msg_open)
			out_drop_open(op);
		else if (op->stage == HS_ITEMS)
			eng_buf_puts(&op->line, ")\r\n");
		if (op->line.len > 0)
			imap_write_buf(op->s, &op->line);
	}
	cancel_open(op);
	if (op->inflight == 0)
		fetch_op_end(op);
}

static void finish(fetch_op *op, enum imap_result r, const char *code,
		   const char *text)
{
	finish_as(op, r, code, text, 0);
}

void fetch_finish_rpc_error(fetch_op *op, int err)
{
	finish_as(op, IMAP_NO, NULL, NULL, err);
}

/* An RPC answered: false when the op is over (and maybe freed). */
bool fetch_rpc_back(fetch_op *op)
{
	op->inflight--;
	if (op->cmd->aborted)
		op->aborted = true;
	if (!op->finished && !op->aborted)
		return true;
	if (op->inflight == 0)
		fetch_op_end(op);
	return false;
}

/* Half a literal is out and the rest cannot come: the response cannot be
 * completed, so the connection is dropped. */
void fetch_fail_midstream(fetch_op *op, int err)
{
	sm_net_conn *c = op->s->c;

	eng_log(ENG_LOG_WARN, "imap: FETCH failed in the middle of a literal: %s",
		rpc_strerror(err));
	finish(op, IMAP_NO, "UNAVAILABLE", "FETCH failed");
	/* op may be gone; the connection is still the session's. */
	if (c != NULL)
		sm_net_abort(c);
}

/* ---- RPC plumbing ---- */

freq *fetch_req_new(fetch_op *op, enum req_kind kind)
{
	for (size_t i = 0; i < FETCH_REQS; i++) {
		freq *r = &op->reqs[i];

		if (r->used)
			continue;
		memset(r, 0, sizeof(*r));
		r->used = true;
		r->op = op;
		r->kind = kind;
		r->order = op->next_order++;
		return r;
	}
	return NULL;
}

/* SESSION, MAILBOX and UIDVALIDITY of the selected mailbox. */
void fetch_payload_begin(fetch_op *op, eng_buf *pl)
{
	imap_rpc_begin(op->s, pl);
	rpc_put_str(pl, RPC_T_MAILBOX, op->s->sel->name);
	rpc_put_u64(pl, RPC_T_UIDVALIDITY, op->s->sel->uidvalidity);
}

/* One of the command's own RPCs (not a FETCH_BODY); frees pl. */
int fetch_call_once(fetch_op *op, uint16_t opcode, eng_buf *pl,
		    imap_rpc_cb *cb)
{
	int rc = imap_rpc_call(op->cmd, opcode, pl, NULL, cb);

	eng_buf_free_wipe(pl);
	if (rc == 0) {
		op->inflight++;
		op->busy = true;
	}
	return rc;
}

/* The answer of a fetch_call_once RPC: false when the command is over (failed,
 * aborted), else the caller goes on with resp. */
bool fetch_once_back(fetch_op *op, int err)
{
	op->busy = false;
	if (!fetch_rpc_back(op))
		return false;
	if (err != 0) {
		fetch_finish_rpc_error(op, err);
		return false;
	}
	return true;
}

/* The oldest open request: the one an error without context belongs to. */
static freq *req_oldest(fetch_op *op)
{
	freq *best = NULL;

	for (size_t i = 0; i < FETCH_REQS; i++) {
		freq *r = &op->reqs[i];

		if (r->used && !r->ended &&
		    (best == NULL || r->order < best->order))
			best = r;
	}
	return best;
}

static void req_failed(fetch_op *op, freq *r, int err)
{
	r->used = false;
	if (r->kind == RQ_A) {
		r->slot->state = SL_FAILED;
		r->slot->err = err;
		return;
	}
	if (r->kind == RQ_P) {
		r->ahead->err = err;
		r->ahead->ended = true;
		r->ahead->r = NULL;
		return;
	}
	if (r->kind == RQ_S) {
		fetch_stream_failed(op, err);
		return;
	}
	op->item_busy = false;
	op->item_err = err;
}

void fetch_on_rpc_done(imap_cmd *cmd, int err, const rpc_view *resp)
{
	fetch_op *op = cmd->op;

	(void)resp;
	if (op == NULL)
		return;
	if (err != 0) {
		freq *r = req_oldest(op);

		if (r != NULL)
			req_failed(op, r, err);
	}
	if (fetch_rpc_back(op))
		fetch_pump(op);
}

/* ---- writing ---- */

/*
 * Output is gathered in op->line and written in pieces of about
 * FETCH_FLUSH_BYTES (each write is a TLS record and a socket write), and
 * whenever the command waits or streams a literal's bytes.
 */
void fetch_out_flush(fetch_op *op)
{
	op->msg_open = false;
	if (op->line.len > 0)
		imap_write_buf(op->s, &op->line);
}

/* Writes the complete responses, keeps the open message's start. */
static void out_flush_ready(fetch_op *op)
{
	eng_buf *b = &op->line;
	size_t keep;

	if (!op->msg_open) {
		fetch_out_flush(op);
		return;
	}
	if (op->msg_mark == 0)
		return;
	keep = b->len - op->msg_mark;
	imap_write(op->s, b->data, op->msg_mark);
	memmove(b->data, b->data + op->msg_mark, keep);
	b->len = keep;
	b->data[keep] = '\0';
	op->msg_mark = 0;
}

/* Drops the open message's response (it is skipped). */
static void out_drop_open(fetch_op *op)
{
	if (!op->msg_open)
		return;
	op->line.len = op->msg_mark;
	if (op->line.data != NULL)
		op->line.data[op->msg_mark] = '\0';
	op->msg_open = false;
}

void fetch_out_maybe_flush(fetch_op *op)
{
	if (op->line.len >= FETCH_FLUSH_BYTES)
		out_flush_ready(op);
}

void fetch_out_put(fetch_op *op, const void *data, size_t len)
{
	if (len >= FETCH_FLUSH_BYTES) {
		fetch_out_flush(op);
		imap_write(op->s, data, len);
		return;
	}
	eng_buf_append(&op->line, data, len);
	fetch_out_maybe_flush(op);
}

/* ---- the message being written ---- */

void fetch_next_message(fetch_op *op)
{
	if (op->hs != NULL)
		fetch_slot_reset(op->hs);
	op->hs = NULL;
	op->cur++;
	op->stage = HS_START;
	op->item = 0;
	free(op->preview);
	op->preview = NULL;
}

/* Runs the message being written as far as it can go. 1: the message is
 * done, 0: waiting (an RPC, or the output), -1: the command ended. */
static int run_message(fetch_op *op)
{
	int rc;

	for (;;) {
		switch (op->stage) {
		case HS_START:
			rc = fetch_stage_start(op);
			if (rc <= 0 || op->stage == HS_START)
				return rc < 0 ? -1 : rc == 0 ? 0 : 1;
			break;
		case HS_PREVIEW:
			if (op->item_busy)
				return 0;
			if (op->item_done || op->item_err != 0) {
				op->item_done = false;
				if (op->item_err == ENG_ENOTFOUND) {
					op->item_err = 0;
					/* gone: skipped */
					fetch_next_message(op);
					return 1;
				}
				if (op->item_err == 0)
					fetch_preview_finished(op);
				op->item_err = 0;
				op->stage = HS_PREFIX;
				break;
			}
			if ((rc = fetch_preview_start(op)) < 0) {
				finish(op, IMAP_NO, "UNAVAILABLE", "FETCH failed");
				return -1;
			}
			if (rc == 0)
				op->stage = HS_PREFIX;
			break;
		case HS_PREFIX:
			if (!fetch_binary_ok(op)) {
				finish(op, IMAP_NO, "UNKNOWN-CTE",
				       "Unknown Content-Transfer-Encoding");
				return -1;
			}
			fetch_put_prefix(op, &op->msgs[op->cur], op->hs);
			op->stage = HS_ITEMS;
			op->item = 0;
			op->item_done = false;
			op->item_err = 0;
			break;
		case HS_ITEMS:
			if (op->item_busy)
				return 0;
			if (op->item_done || op->item_err != 0) {
				op->item_done = false;
				rc = fetch_item_finished(op);
				op->item_err = 0;
				if (rc < 0)
					return -1;
				if (rc == 2) {
					out_drop_open(op);
					fetch_next_message(op);
					return 1;
				}
				if (rc == 1)
					return 0;
				op->item++;
				break;
			}
			if (op->item == op->spec.n_items) {
				eng_buf_puts(&op->line, ")\r\n");
				op->msg_open = false;    /* complete */
				fetch_out_maybe_flush(op);
				op->stage = HS_DONE;
				break;
			}
			if (imap_write_blocked(op->s))
				return 0;
			rc = fetch_item_start(op);
			if (rc < 0) {
				finish(op, IMAP_NO, "UNAVAILABLE", "FETCH failed");
				return -1;
			}
			if (rc == 1)
				return 0;
			op->item++;
			break;
		case HS_DONE:
			fetch_next_message(op);
			return 1;
		}
	}
}

void fetch_pump(fetch_op *op)
{
	int rc;

	if (op->finished || op->aborted || op->busy)
		return;              /* busy: FETCH_META or STORE in flight */
	if (op->pumping) {
		op->repump = true;
		return;
	}
	op->pumping = true;
	for (;;) {
		op->repump = false;
		if (op->st.attached)
			/* after a drain, or bytes in hand */
			fetch_stream_run(op);
		if (op->pend && !fetch_a_open(op) &&
		    (rc = fetch_send_pending(op)) != 0) {
			op->pumping = false;
			fetch_finish_rpc_error(op, rc);
			return;
		}
		if ((rc = fetch_fill_pipeline(op)) != 0 ||
		    (rc = fetch_fill_bodies(op)) != 0) {
			op->pumping = false;
			fetch_finish_rpc_error(op, rc);
			return;
		}
		if (op->cur == op->n) {
			fetch_out_flush(op);
			if (op->pre_ready && op->pre_err == 0) {
				if (fetch_chunk_install(op))
					continue;
				break;       /* STORE in flight */
			}
			op->pumping = false;
			if (op->pre_err != 0)
				fetch_finish_rpc_error(op, op->pre_err);
			else if (op->pre_busy)
				return;      /* on_meta_pre pumps */
			else if (op->meta_end ||
				 (rc = fetch_send_meta(op)) == 1)
				finish(op, IMAP_OK, NULL, "FETCH completed");
			else if (rc < 0)
				fetch_finish_rpc_error(op, rc);
			return;
		}
		if (op->held || (op->stage == HS_START &&
				 imap_write_blocked(op->s))) {
			if (op->repump)
				continue;
			break;
		}
		fetch_out_maybe_flush(op);
		if (op->stage == HS_START && op->msgs[op->cur].seq == 0) {
			fetch_next_message(op);
			continue;
		}
		rc = run_message(op);
		if (rc < 0)
			return;      /* finished: op may be gone */
		if (rc == 0 && !op->repump)
			break;
	}
	op->pumping = false;
	out_flush_ready(op);         /* waiting: what is complete goes out */
}

static void on_drained(imap_cmd *cmd)
{
	fetch_op *op = cmd->op;

	if (op == NULL)
		return;
	if (op->held) {
		size_t n = op->held_bytes;

		op->held = false;
		op->held_bytes = 0;
		rpc_client_consumed(op->s->d->rpc, op->held_id, n);
	}
	fetch_pump(op);
}

static void on_abort(imap_cmd *cmd)
{
	fetch_op *op = cmd->op;

	if (op == NULL)
		return;
	op->aborted = true;
	/* Stop the streams now (a held one would wait for its timeout). */
	cancel_open(op);
	if (op->inflight == 0)
		fetch_op_end(op);
}

/* ---- the start: CHANGES, the plan ---- */

/* "* VANISHED (EARLIER) 3:5,9": the expunged UIDs within the set. */
static void put_vanished(fetch_op *op, const eng_uidset *gone)
{
	eng_buf *b = &op->line;
	size_t mark;
	bool any = false;

	mark = b->len;
	eng_buf_puts(b, "* VANISHED (EARLIER) ");
	for (size_t i = 0; i < gone->count; i++) {
		for (size_t k = 0; k < op->set.count; k++) {
			uint32_t lo = gone->ranges[i].lo, hi = gone->ranges[i].hi;

			if (op->set.ranges[k].lo > lo)
				lo = op->set.ranges[k].lo;
			if (op->set.ranges[k].hi < hi)
				hi = op->set.ranges[k].hi;
			if (lo > hi)
				continue;
			eng_buf_printf(b, "%s%u", any ? "," : "", lo);
			if (hi > lo)
				eng_buf_printf(b, ":%u", hi);
			any = true;
		}
	}
	if (!any) {
		b->len = mark;           /* nothing vanished in the set */
		if (b->data != NULL)
			b->data[mark] = '\0';
		return;
	}
	eng_buf_puts(b, "\r\n");
}

static void on_changes(imap_cmd *cmd, int err, const rpc_view *resp)
{
	fetch_op *op = cmd->op;
	eng_uidset gone = { NULL, 0, 0 };
	int rc;

	if (!fetch_once_back(op, err))
		return;
	if (rpc_get_uidset(resp, RPC_T_VANISHED, 1u << 20, &gone) == 0)
		put_vanished(op, &gone);
	eng_uidset_free(&gone);
	if ((rc = fetch_send_meta(op)) == 1)
		finish(op, IMAP_OK, NULL, "FETCH completed");
	else if (rc < 0)
		fetch_finish_rpc_error(op, rc);
}

static int send_changes(fetch_op *op)
{
	eng_buf pl = ENG_BUF_INIT;

	fetch_payload_begin(op, &pl);
	rpc_put_u64(&pl, RPC_T_MODSEQ, op->spec.changedsince);
	return fetch_call_once(op, RPC_OP_CHANGES, &pl, on_changes);
}

/* What the spec needs from phase A. */
static void plan(fetch_op *op)
{
	const imap_fetch_spec *sp = &op->spec;

	op->need_mime = (sp->attrs & (IMAP_FA_ENVELOPE | IMAP_FA_BODY |
				      IMAP_FA_BODYSTRUCTURE |
				      IMAP_FA_PREVIEW)) != 0;
	for (size_t i = 0; i < sp->n_items; i++) {
		const imap_fetch_item *it = &sp->items[i];

		if (it->kind != IMAP_FK_BODY)
			op->need_mime = true;
		else if (it->part[0] == '\0' && (it->text == IMAP_FT_HEADER ||
						 it->text == IMAP_FT_FIELDS ||
						 it->text == IMAP_FT_FIELDS_NOT))
			op->need_header = true;
		if (imap_fetch_item_sets_seen(it) && !op->s->sel->readonly)
			op->want_seen = true;
	}
	op->body_ahead = sp->n_items == 1 && !op->need_mime && !op->need_header &&
		!(sp->attrs & IMAP_FA_PREVIEW) &&
		sp->items[0].kind == IMAP_FK_BODY &&
		sp->items[0].text != IMAP_FT_FIELDS &&
		sp->items[0].text != IMAP_FT_FIELDS_NOT;
	op->bodies = op->body_ahead && fetch_item_whole(&sp->items[0]);
}

static void cmd_fetch(imap_cmd *cmd)
{
	imap_session *s = cmd->s;
	const char *err_text = NULL;
	fetch_op *op;
	int rc;

	if (cmd->n_args < 2 || cmd->n_args > 3) {
		imap_cmd_done(cmd, IMAP_BAD, NULL, "FETCH needs a sequence set "
			      "and attributes");
		return;
	}
	op = eng_calloc(1, sizeof(*op));
	op->cmd = cmd;
	op->s = s;
	if (imap_fetch_parse(&cmd->args[1], cmd->n_args == 3 ? &cmd->args[2] :
			     NULL, &op->spec, &err_text) != 0) {
		op_free(op);
		imap_cmd_done(cmd, IMAP_BAD, NULL, "%s", err_text);
		return;
	}
	if (op->spec.vanished &&
	    (!cmd->uid || !(s->enabled & IMAP_EN_QRESYNC))) {
		op_free(op);
		imap_cmd_done(cmd, IMAP_BAD, NULL, "VANISHED needs UID FETCH "
			      "and QRESYNC enabled");
		return;
	}
	if (imap_seqset_to_uids(s, &cmd->args[0], cmd->uid, &op->set) != 0) {
		op_free(op);
		imap_cmd_done(cmd, IMAP_BAD, NULL, "Invalid sequence set");
		return;
	}
	/* RFC 7162 3.1: a CONDSTORE-using command enables it. */
	if ((op->spec.attrs & IMAP_FA_MODSEQ) || op->spec.has_changedsince)
		s->enabled |= IMAP_EN_CONDSTORE;
	if (op->set.count == 0) {
		op_free(op);
		imap_cmd_done(cmd, IMAP_OK, NULL, "FETCH completed");
		return;
	}
	plan(op);
	cmd->op = op;
	cmd->on_drained = on_drained;
	cmd->on_abort = on_abort;
	rc = op->spec.vanished ? send_changes(op) : fetch_send_meta(op);
	if (rc == 1)
		finish(op, IMAP_OK, NULL, "FETCH completed");
	else if (rc < 0)
		fetch_finish_rpc_error(op, rc);
}

const imap_cmd_def imap_fetch_cmds[] = {
	{ "FETCH", cmd_fetch, IMAP_CF_SELECTED | IMAP_CF_NO_EXPUNGE, true },
	{ NULL, NULL, 0, false },
};

