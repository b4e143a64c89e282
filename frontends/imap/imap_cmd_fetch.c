/*
 * FETCH and UID FETCH (RFC 3501 6.4.5, RFC 9051 6.4.5, RFC 3516 BINARY,
 * RFC 7162 CONDSTORE/QRESYNC, RFC 8514 SAVEDATE, RFC 8474 OBJECTID,
 * RFC 8970 PREVIEW). The attributes are parsed by imap_fetch_parse.c.
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
 * Body pipelining: when the spec is one streamed body item and nothing
 * that needs phase A (BODY.PEEK[], RFC822, BODY[1], a partial range), the
 * FETCH_BODY of the next FETCH_BODY_AHEAD messages (as many as
 * FETCH_BODY_AHEAD_BYTES allows) goes out while the current one is
 * written (fill_bodies, in message order, so that an error still belongs
 * to the oldest request); what arrives before its turn is
 * kept with its credit withheld (at most one window each), and at its
 * turn item_adopt writes it and lets the request go on as the item's.
 *
 * Whole bodies in one stream: when that one item is a whole message
 * (BODY[], BODY.PEEK[], RFC822; no partial range) and at least two
 * messages are left in the chunk, one FETCH_BODIES asks for the bodies of
 * all of them (up to RPC_BODIES_MAX_UIDS): sqlited answers with one body
 * stream, a record per UID (rpc_bodies.h), under one window. Its bytes are
 * kept as they arrive with their credit withheld (at most a window) and
 * consumed by the message being written (stream_run): each record's head
 * gives the literal's size, or says the message is gone (expunged
 * meanwhile: skipped, as a FETCH_BODY ENOTFOUND would be); the credit of
 * what is written goes back at once, or when the output drains. A sqlited
 * without FETCH_BODIES answers EOPCODE before any byte: the command goes
 * on with the FETCH_BODY per message above. A lone message (the last one
 * of a chunk) takes that path too.
 *
 * Backpressure: when the session's output is full (imap_write_blocked), a
 * streamed chunk is HELD (no credit to sqlited) and handed back with
 * rpc_client_consumed() when cmd->on_drained runs; no new message is
 * started and no phase A request is sent meanwhile. So a 50 MB body costs
 * at most a window (256 KiB) plus the session's output bound.
 *
 * BINARY: the part's Content-Transfer-Encoding comes from the stored MIME
 * structure. Identity encodings stream like BODY. base64 and
 * quoted-printable parts up to FETCH_DECODE_MEM bytes are fetched and
 * decoded in memory; larger ones are streamed twice through the decoder:
 * once to count the decoded size (the literal's length must come first),
 * once to write. An encoding it does not know is "NO [UNKNOWN-CTE]".
 *
 * Matching answers to requests: imap_rpc_call's callback names only the
 * command, so every FETCH_BODY asks for the body (WANT_BODY; LENGTH 0 when
 * no bytes are wanted) and its data callback, which always runs before a
 * successful completion, carries the request's context. An error has no
 * context: it is given to the oldest request still open, which is the one
 * sqlited failed since it answers one alias's requests in order.
 *
 * EMAILID / THREADID (RFC 8474): "M" and "T" followed by the decimal
 * CONTENT_ID / THREAD_ID of sqlited ("M42", "T17"); a THREAD_ID of 0 is
 * NIL. These are stable across sessions and mailboxes (COPY keeps them).
 */
#include "imap.h"
#include "imap_fetch_parse.h"

#include "eng_error.h"
#include "mime.h"
#include "rpc_bodies.h"
#include "rpc_codec.h"
#include "rpc_proto.h"

#include <stddef.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

/* Phase A requests in flight ahead of the message being written. */
#define FETCH_PIPELINE 16
#define FETCH_REQS (FETCH_PIPELINE + 4)
/* Bodies asked for ahead of the message being written (see fill_bodies);
 * each holds at most one RPC window (256 KiB) until its turn, and those
 * ahead together at most FETCH_BODY_AHEAD_BYTES (by their sizes, a window
 * each at most), so that many small ones go ahead (sqlited reads them in
 * one work item) and big ones hold no more than 4 windows. */
#define FETCH_BODY_AHEAD 8
#define FETCH_BODY_AHEAD_BYTES (1024u * 1024)
/* Encoded parts up to this size are decoded in memory for BINARY. */
#define FETCH_DECODE_MEM (1024u * 1024)
/* Bytes of a part read for PREVIEW, and of a part header for
 * HEADER.FIELDS when the header column cannot serve it. */
#define FETCH_PREVIEW_BYTES (8u * 1024)
#define FETCH_HEADER_MAX (1024u * 1024)
/* sqlited's header column holds at most this much (engine/message.c). */
#define FETCH_HEADER_COLUMN_MAX (256u * 1024)
/* A streamed body may take long on a slow client. */
#define FETCH_STREAM_TIMEOUT_MS (60u * 60 * 1000)
/* Messages per FETCH_META: the command's memory is bounded by this
 * however large the set; fewer when headers or MIME structures come
 * inline (and sqlited bounds those to 16 MiB an answer). */
#define FETCH_META_CHUNK 4096
#define FETCH_META_CHUNK_INLINE 1024
/* Output is written in pieces of about this size. */
#define FETCH_FLUSH_BYTES (16u * 1024)
/* Keywords written per message at most (sqlited allows 64). */
#define FETCH_MAX_KEYWORDS 64

typedef struct fmsg {
	uint32_t uid;
	uint32_t seq;
	uint32_t flags;
	bool flags_changed;          /* \Seen set by this FETCH */
	bool has_savedate;
	uint64_t modseq;
	uint64_t size;
	int64_t internal_date;
	int64_t save_date;
	int64_t content_id;
	int64_t thread_id;
	size_t kw_off;               /* keywords: NUL-terminated in op->kw */
	uint32_t n_kw;
	/* FETCH_META WANT: the blobs, in op->blobs; has_*: came inline. */
	bool has_mime, has_hdr;
	size_t mime_off, mime_len;
	size_t hdr_off, hdr_len;
} fmsg;

/* A FETCH_META answer asked ahead: the messages, keywords, blobs. */
typedef struct fmeta_chunk {
	eng_uidset uids;
	fmsg *msgs;
	size_t n;
	eng_buf kw;
	eng_buf blobs;
} fmeta_chunk;

enum slot_state { SL_FREE = 0, SL_WAIT, SL_READY, SL_FAILED };

/* A phase A answer. */
typedef struct fslot {
	enum slot_state state;
	size_t msg;
	int err;
	eng_mime_part *mime;
	eng_buf hdr;
	bool hdr_complete;
} fslot;

enum req_kind { RQ_A = 1, RQ_B, RQ_P, RQ_S };

/* Phase B request modes. */
enum bmode { BM_STREAM = 1, BM_BUFFER, BM_COUNT, BM_DECODE_OUT };

typedef struct fetch_op fetch_op;
typedef struct freq freq;

/* A body asked for ahead (RQ_P): what arrived before its turn, its
 * credit withheld (RPC_CLIENT_HOLD), so sqlited stops at a window. */
typedef struct fahead {
	bool used;
	size_t msg;                  /* its message in op->msgs */
	freq *r;                     /* its request while it runs */
	bool ended;
	int err;                     /* it failed */
	bool has_size;
	uint64_t size;               /* the literal's size (SIZE) */
	bool has_id;
	uint32_t id;
	size_t held;                 /* bytes without credit */
	eng_buf data;
} fahead;

/* The FETCH_BODIES stream (RQ_S): the messages it asked for, in order,
 * and its bytes not consumed yet (their credit withheld). */
typedef struct fstream {
	bool busy;                   /* its request is open (sent, no END) */
	bool got_any;                /* a byte (or END) came: no fallback */
	bool ended;                  /* its last DATA came */
	int err;                     /* it failed (after what came) */
	bool has_id;
	uint32_t id;
	uint32_t *uids;              /* the UIDs asked, in order */
	size_t *msgs;                /* their messages in op->msgs */
	size_t n;                    /* records asked */
	rpc_bodies_reader rd;        /* rd.records: records begun */
	bool attached;               /* the current item takes the record */
	eng_buf buf;                 /* arrived, from off on not consumed */
	size_t off;
	size_t to_credit;            /* consumed, credit not yet given */
} fstream;

struct freq {
	fetch_op *op;
	bool used;
	bool ended;
	bool has_id;
	uint32_t id;
	uint64_t order;              /* issue order, for error matching */
	enum req_kind kind;
	fslot *slot;                 /* RQ_A */
	fahead *ahead;               /* RQ_P */
};

/* What the message being written is doing. */
enum hstage { HS_START = 0, HS_PREVIEW, HS_PREFIX, HS_ITEMS, HS_DONE };

/* After a buffered fetch: what to do with the bytes. */
enum bafter { BA_FIELDS = 1, BA_DECODE, BA_PREVIEW };

struct fetch_op {
	imap_cmd *cmd;
	imap_session *s;
	imap_fetch_spec spec;
	eng_uidset set;
	eng_uidset chunk;            /* the UIDs of the current FETCH_META */
	/* The next chunk's FETCH_META, asked while the current one is
	 * written (at most this one ahead: two chunks held at most). */
	fmeta_chunk pre;
	bool pre_busy;               /* its request is in flight */
	bool pre_ready;              /* its answer is in pre */
	bool meta_end;               /* no chunk is left to ask for */
	int pre_err;                 /* its request failed */
	size_t view_pos;             /* next index of sel->uids to take */
	bool want_seen;              /* a non-PEEK item and not read-only */
	uint32_t attrs_a;            /* attributes needing phase A */
	bool need_mime, need_header;
	/* The messages. */
	fmsg *msgs;
	size_t n;
	eng_buf kw;
	eng_buf blobs;               /* inline MIME structures and headers */
	/* Pipeline. */
	fslot slots[FETCH_PIPELINE + 1];
	fslot inl;                   /* phase A of a message served inline */
	freq reqs[FETCH_REQS];
	uint64_t next_order;
	unsigned inflight;           /* every RPC, phases and others */
	size_t next_a;               /* next message to send phase A for */
	/* Body pipelining: when every message is one streamed body item and
	 * nothing else, the bodies of the next messages are asked for while
	 * the current one is written (answers kept in order in ahead[]). */
	bool body_ahead;
	/* ...and as one FETCH_BODIES stream while it is whole messages and
	 * sqlited knows it (see the top). */
	bool bodies;
	fstream st;
	fahead ahead[FETCH_BODY_AHEAD];
	size_t next_b;               /* next message to ask the body of */
	size_t cur;                  /* the message being written */
	bool busy;                   /* a non-pipelined RPC is in flight */
	bool finished;               /* the answer is decided */
	bool aborted;
	enum imap_result end_r;
	const char *end_code;
	const char *end_text;
	int end_err;                 /* != 0: imap_cmd_fail_rpc */
	bool need_space;             /* an item was written for this message */
	bool pumping;
	/* An item request waiting for phase A requests to be answered. */
	bool pend;
	char pend_section[200];
	uint64_t pend_offset, pend_length;
	bool repump;                 /* woken while pumping: go round again */
	/* The message being written. */
	enum hstage stage;
	size_t item;
	bool item_busy;              /* its RPC is in flight */
	bool item_done;
	int item_err;
	int item_pass;               /* BINARY counting: 0 then 1 */
	enum bmode mode;
	enum bafter after;
	fslot *hs;                   /* its phase A slot, if any */
	eng_buf line;                /* output not written yet */
	/* The message being written starts at line[msg_mark] and nothing of
	 * it has been written (msg_open): it can still be dropped if it
	 * turns out to be gone (expunged since FETCH_META). */
	size_t msg_mark;
	bool msg_open;
	eng_buf buf;                 /* a buffered fetch */
	eng_buf dec;                 /* decoder output */
	imap_cte cte;
	bool literal8;
	bool lit_started;
	uint64_t lit_size;
	uint64_t decoded;            /* BM_COUNT / BM_DECODE_OUT */
	uint64_t win_off, win_len;   /* BM_DECODE_OUT: bytes to write */
	char *preview;
	/* Backpressure. */
	bool held;
	uint32_t held_id;
	size_t held_bytes;
};

static void pump(fetch_op *op);
static void stream_failed(fetch_op *op, int err);
static int stream_fill(fetch_op *op);
static int stream_data(freq *r, uint32_t id, const uint8_t *data, size_t len,
		       bool end);
static void stream_run(fetch_op *op);
static void out_drop_open(fetch_op *op);
static int send_meta(fetch_op *op);
static bool chunk_install(fetch_op *op);

/* ---- lifetime ---- */

static void slot_reset(fslot *sl)
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
		slot_reset(&op->slots[i]);
		eng_buf_free(&op->slots[i].hdr);
	}
	slot_reset(&op->inl);
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
static void op_end(fetch_op *op)
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
		op_end(op);
}

static void finish(fetch_op *op, enum imap_result r, const char *code,
		   const char *text)
{
	finish_as(op, r, code, text, 0);
}

static void finish_rpc_error(fetch_op *op, int err)
{
	finish_as(op, IMAP_NO, NULL, NULL, err);
}

/* An RPC answered: false when the op is over (and maybe freed). */
static bool rpc_back(fetch_op *op)
{
	op->inflight--;
	if (op->cmd->aborted)
		op->aborted = true;
	if (!op->finished && !op->aborted)
		return true;
	if (op->inflight == 0)
		op_end(op);
	return false;
}

/* Half a literal is out and the rest cannot come: the response cannot be
 * completed, so the connection is dropped. */
static void fail_midstream(fetch_op *op, int err)
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

static freq *req_new(fetch_op *op, enum req_kind kind)
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

static void on_rpc_done(imap_cmd *cmd, int err, const rpc_view *resp);
static int on_data(void *ctx, uint32_t id, const rpc_view *head,
		   const uint8_t *data, size_t len, bool end);

/* SESSION, MAILBOX and UIDVALIDITY of the selected mailbox. */
static void payload_begin(fetch_op *op, eng_buf *pl)
{
	imap_rpc_begin(op->s, pl);
	rpc_put_str(pl, RPC_T_MAILBOX, op->s->sel->name);
	rpc_put_u64(pl, RPC_T_UIDVALIDITY, op->s->sel->uidvalidity);
}

/* One of the command's own RPCs (not a FETCH_BODY); frees pl. */
static int call_once(fetch_op *op, uint16_t opcode, eng_buf *pl,
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

/* The answer of a call_once RPC: false when the command is over (failed,
 * aborted), else the caller goes on with resp. */
static bool once_back(fetch_op *op, int err)
{
	op->busy = false;
	if (!rpc_back(op))
		return false;
	if (err != 0) {
		finish_rpc_error(op, err);
		return false;
	}
	return true;
}

/* A FETCH_BODY for the message of UID uid: section, byte range, WANT. */
static int send_body(fetch_op *op, freq *r, uint32_t uid, const char *section,
		     uint32_t want, uint64_t offset, uint64_t length,
		     bool stream)
{
	eng_buf pl = ENG_BUF_INIT;
	rpc_client_opts opts;
	int rc;

	payload_begin(op, &pl);
	rpc_put_u64(&pl, RPC_T_UID, uid);
	rpc_put_u64(&pl, RPC_T_WANT, want | RPC_WANT_BODY);
	if (section != NULL)
		rpc_put_str(&pl, RPC_T_SECTION, section);
	if (offset > 0)
		rpc_put_u64(&pl, RPC_T_OFFSET, offset);
	if (length != UINT64_MAX)
		rpc_put_u64(&pl, RPC_T_LENGTH, length);
	memset(&opts, 0, sizeof(opts));
	opts.data = on_data;
	opts.data_ctx = r;
	opts.retries = 1;            /* FETCH_BODY is idempotent */
	if (stream)
		opts.timeout_ms = FETCH_STREAM_TIMEOUT_MS;
	rc = imap_rpc_call(op->cmd, RPC_OP_FETCH_BODY, &pl, &opts, on_rpc_done);
	eng_buf_free_wipe(&pl);
	if (rc != 0) {
		r->used = false;
		return rc;
	}
	op->inflight++;
	return 0;
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
		stream_failed(op, err);
		return;
	}
	op->item_busy = false;
	op->item_err = err;
}

static void on_rpc_done(imap_cmd *cmd, int err, const rpc_view *resp)
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
	if (rpc_back(op))
		pump(op);
}

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

static void a_head(fetch_op *op, fslot *sl, const rpc_view *head)
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

	slot_reset(sl);
	sl->msg = op->cur;
	slot_fill(op, sl, m->has_mime ? base + m->mime_off : NULL, m->mime_len,
		  m->has_hdr ? base + m->hdr_off : NULL, m->hdr_len);
	return sl;
}

/* Sends phase A requests ahead, within the pipeline. */
static int fill_pipeline(fetch_op *op)
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
		if (sl == NULL || (r = req_new(op, RQ_A)) == NULL)
			break;
		sl->state = SL_WAIT;
		sl->msg = op->next_a;
		r->slot = sl;
		rc = send_body(op, r, op->msgs[op->next_a].uid, NULL, want, 0, 0,
			       false);
		if (rc != 0) {
			sl->state = SL_FREE;
			return rc;
		}
		op->next_a++;
	}
	return 0;
}

/* ---- writing ---- */

/*
 * Output is gathered in op->line and written in pieces of about
 * FETCH_FLUSH_BYTES (each write is a TLS record and a socket write), and
 * whenever the command waits or streams a literal's bytes.
 */
static void out_flush(fetch_op *op)
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
		out_flush(op);
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

static void out_maybe_flush(fetch_op *op)
{
	if (op->line.len >= FETCH_FLUSH_BYTES)
		out_flush_ready(op);
}

static void out_put(fetch_op *op, const void *data, size_t len)
{
	if (len >= FETCH_FLUSH_BYTES) {
		out_flush(op);
		imap_write(op->s, data, len);
		return;
	}
	eng_buf_append(&op->line, data, len);
	out_maybe_flush(op);
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
	eng_buf_printf(b, " %s{%llu}\r\n", literal8 ? "~" : "",
		       (unsigned long long)size);
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
		out_put(op, data + start, n);
}

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
static void put_prefix(fetch_op *op, const fmsg *m, const fslot *sl)
{
	uint32_t a = op->spec.attrs;
	eng_buf *b = &op->line;
	bool condstore = (op->s->enabled & IMAP_EN_CONDSTORE) != 0;

	size_t mark;

	op->msg_mark = b->len;
	op->msg_open = true;
	eng_buf_printf(b, "* %u FETCH (", m->seq);
	mark = b->len;
	if (op->cmd->uid || (a & IMAP_FA_UID))
		eng_buf_printf(b, " UID %u", m->uid);
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

/* ---- phase B: body items ---- */

/* Phase A requests open (sent, not answered). */
static bool a_open(const fetch_op *op)
{
	for (size_t i = 0; i < FETCH_REQS; i++)
		if (op->reqs[i].used && op->reqs[i].kind == RQ_A)
			return true;
	return false;
}

/* Sends the item request that send_item prepared. */
static int send_pending(fetch_op *op)
{
	freq *r = req_new(op, RQ_B);
	int rc;

	op->pend = false;
	if (r == NULL)
		rc = ENG_EBUSY;
	else
		rc = send_body(op, r, op->msgs[op->cur].uid, op->pend_section,
			       0, op->pend_offset, op->pend_length,
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
static int send_item(fetch_op *op, const char *section, uint64_t offset,
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
	return a_open(op) ? 0 : send_pending(op);
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

		out_flush(op);
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
			out_flush(op);       /* the literal's head first */
			imap_write(op->s, data, len);
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
			a_head(op, r->slot, head);
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
		out_maybe_flush(op);
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
			out_maybe_flush(op);
			return 0;
		}
		return send_item(op, section, it->partial ? it->offset : 0,
				 it->partial ? it->length : UINT64_MAX,
				 BM_STREAM) == 0 ? 1 : -1;
	}
	if (enc_size <= FETCH_DECODE_MEM) {
		op->after = BA_DECODE;
		return send_item(op, section, 0, UINT64_MAX, BM_BUFFER) == 0 ?
			1 : -1;
	}
	op->item_pass = 0;
	return send_item(op, section, 0, UINT64_MAX, BM_COUNT) == 0 ? 1 : -1;
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
static int fill_bodies(fetch_op *op)
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
		    (r = req_new(op, RQ_P)) == NULL)
			break;
		eng_buf_reset(&a->data);
		memset(a, 0, offsetof(fahead, data));
		a->used = true;
		a->msg = op->next_b;
		a->r = r;
		r->ahead = a;
		rc = send_body(op, r, op->msgs[op->next_b].uid, section, 0, off,
			       len, true);
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
		if (fill_bodies(op) != 0 || (a = ahead_of(op, op->cur)) == NULL)
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
			out_flush(op);       /* the literal's head first */
			imap_write(op->s, a->data.data, a->data.len);
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
static bool item_whole(const imap_fetch_item *it)
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
	rpc_client_opts opts;
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
	if (n < 2 || (r = req_new(op, RQ_S)) == NULL)
		return 1;
	free(st->uids);
	free(st->msgs);
	eng_buf_reset(&st->buf);
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
	payload_begin(op, &pl);
	rpc_put_uids(&pl, RPC_T_UIDS, st->uids, n);
	memset(&opts, 0, sizeof(opts));
	opts.data = on_data;
	opts.data_ctx = r;
	opts.retries = 1;            /* idempotent; not resent after a byte */
	opts.timeout_ms = FETCH_STREAM_TIMEOUT_MS;
	rc = imap_rpc_call(op->cmd, RPC_OP_FETCH_BODIES, &pl, &opts,
			   on_rpc_done);
	eng_buf_free_wipe(&pl);
	if (rc != 0) {
		r->used = false;
		st->n = 0;
		return rc;
	}
	st->busy = true;
	op->inflight++;
	return 0;
}

/* The request failed (from on_rpc_done). */
static void stream_failed(fetch_op *op, int err)
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
	 * the buffer dry fails (stream_run). */
	st->err = err;
}

/* Credit for what stream_run consumed. */
static void stream_credit(fetch_op *op)
{
	fstream *st = &op->st;

	if (st->to_credit > 0 && st->has_id && !st->ended)
		rpc_client_consumed(op->s->d->rpc, st->id, st->to_credit);
	st->to_credit = 0;
}

/* The current item's record is over: written (0), gone (ENG_ENOTFOUND:
 * item_finished skips the message) or failed. */
static void stream_item_end(fetch_op *op, int err)
{
	op->st.attached = false;
	op->item_busy = false;
	op->item_err = err;
	op->item_done = err == 0;
	op->repump = true;
}

/*
 * Gives the attached item what has arrived of its record: the literal's
 * head, then its bytes as far as the output takes them. Stops at the
 * record's end (the next record waits for its message), when the output
 * is full (the bytes stay, their credit withheld: sqlited stops at a
 * window) or when nothing is left.
 */
static void stream_run(fetch_op *op)
{
	fstream *st = &op->st;
	const imap_fetch_item *it = &op->spec.items[op->item];

	while (st->attached) {
		size_t n = st->buf.len - st->off, used;
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
		rc = rpc_bodies_step(&st->rd, (const uint8_t *)st->buf.data +
				     st->off, n, 0, expect, &used, &ev);
		if (rc != 0) {
			/* A record sqlited should not have sent: nothing of
			 * this stream can be trusted from here on. */
			st->err = rc;
			stream_item_end(op, rc);
			break;
		}
		st->off += used;
		st->to_credit += used;
		if (ev.kind == RPC_BODIES_HEAD && ev.head.gone) {
			stream_item_end(op, ENG_ENOTFOUND);
			break;
		}
		if (ev.kind == RPC_BODIES_HEAD) {
			op->lit_started = true;
			op->lit_size = ev.head.size;
			put_literal_head(op, it, ev.head.size, false);
		} else if (ev.kind == RPC_BODIES_DATA) {
			out_flush(op);       /* the literal's head first */
			imap_write(op->s, ev.data, ev.len);
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

/* Bytes of the stream: kept (credit withheld until consumed), and given
 * to the item waiting for them. */
static int stream_data(freq *r, uint32_t id, const uint8_t *data, size_t len,
		       bool end)
{
	fetch_op *op = r->op;
	fstream *st = &op->st;

	st->has_id = true;
	st->id = id;
	st->got_any = true;
	if (st->off > 0 && st->off == st->buf.len) {
		eng_buf_reset(&st->buf);
		st->off = 0;
	}
	eng_buf_append(&st->buf, data, len);
	if (end) {
		st->ended = true;
		st->busy = false;
		r->ended = true;
		r->used = false;
	}
	/* The pump may end the command: op lives until this returns (the
	 * request counts until its own completion, unless cancelled). */
	op->inflight++;
	stream_run(op);
	if (op->repump)
		pump(op);
	op->inflight--;
	if (op->finished || op->aborted) {
		if (op->inflight == 0)
			op_end(op);
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
	stream_run(op);
	return 1;
}

/* Starts the current item: 1 an RPC runs, 0 done, < 0 failed. */
static int item_start(fetch_op *op)
{
	const imap_fetch_item *it = &op->spec.items[op->item];
	char section[200];

	op->literal8 = false;
	if (op->body_ahead) {
		if (op->bodies && !stream_covers(op) &&
		    ahead_of(op, op->cur) == NULL && fill_bodies(op) != 0)
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
		return send_item(op, section, 0, FETCH_HEADER_MAX, BM_BUFFER) ==
			0 ? 1 : -1;
	}
	return send_item(op, section, it->partial ? it->offset : 0,
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
		out_maybe_flush(op);
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
		out_maybe_flush(op);
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
	return send_item(op, section, 0, UINT64_MAX, BM_DECODE_OUT) == 0 ?
		1 : -1;
}

/* The current item's RPC ended (item_done or item_err). 1: another RPC
 * runs for it, 0: the item is done, 2: the message is gone (skip it),
 * < 0: the command failed. */
static int item_finished(fetch_op *op)
{
	int err = op->item_err;

	if (err != 0) {
		if (op->lit_started || op->mode == BM_DECODE_OUT) {
			fail_midstream(op, err);
			return -1;
		}
		if (err != ENG_ENOTFOUND) {
			finish_rpc_error(op, err);
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
static int preview_start(fetch_op *op)
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
	rc = send_item(op, sec.data, 0, FETCH_PREVIEW_BYTES, BM_BUFFER);
	eng_buf_free(&sec);
	return rc == 0 ? 1 : -1;
}

static void preview_finished(fetch_op *op)
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

/* ---- the message being written ---- */

/* A BINARY item whose encoding is unknown stops the command. */
static bool binary_ok(fetch_op *op)
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

static void next_message(fetch_op *op)
{
	if (op->hs != NULL)
		slot_reset(op->hs);
	op->hs = NULL;
	op->cur++;
	op->stage = HS_START;
	op->item = 0;
	free(op->preview);
	op->preview = NULL;
}

/* HS_START: 1 ready to go on, 0 wait, -1 finished/skipped handled. */
static int stage_start(fetch_op *op)
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
			next_message(op);    /* expunged meanwhile: skipped */
			return 1;
		}
		finish_rpc_error(op, sl->err);
		return -1;
	}
	op->stage = (op->spec.attrs & IMAP_FA_PREVIEW) ? HS_PREVIEW : HS_PREFIX;
	return 1;
}

/* Runs the message being written as far as it can go. 1: the message is
 * done, 0: waiting (an RPC, or the output), -1: the command ended. */
static int run_message(fetch_op *op)
{
	int rc;

	for (;;) {
		switch (op->stage) {
		case HS_START:
			rc = stage_start(op);
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
					next_message(op);    /* gone: skipped */
					return 1;
				}
				if (op->item_err == 0)
					preview_finished(op);
				op->item_err = 0;
				op->stage = HS_PREFIX;
				break;
			}
			if ((rc = preview_start(op)) < 0) {
				finish(op, IMAP_NO, "UNAVAILABLE", "FETCH failed");
				return -1;
			}
			if (rc == 0)
				op->stage = HS_PREFIX;
			break;
		case HS_PREFIX:
			if (!binary_ok(op)) {
				finish(op, IMAP_NO, "UNKNOWN-CTE",
				       "Unknown Content-Transfer-Encoding");
				return -1;
			}
			put_prefix(op, &op->msgs[op->cur], op->hs);
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
				rc = item_finished(op);
				op->item_err = 0;
				if (rc < 0)
					return -1;
				if (rc == 2) {
					out_drop_open(op);
					next_message(op);
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
				out_maybe_flush(op);
				op->stage = HS_DONE;
				break;
			}
			if (imap_write_blocked(op->s))
				return 0;
			rc = item_start(op);
			if (rc < 0) {
				finish(op, IMAP_NO, "UNAVAILABLE", "FETCH failed");
				return -1;
			}
			if (rc == 1)
				return 0;
			op->item++;
			break;
		case HS_DONE:
			next_message(op);
			return 1;
		}
	}
}

static void pump(fetch_op *op)
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
			stream_run(op);      /* after a drain, or bytes in hand */
		if (op->pend && !a_open(op) && (rc = send_pending(op)) != 0) {
			op->pumping = false;
			finish_rpc_error(op, rc);
			return;
		}
		if ((rc = fill_pipeline(op)) != 0 ||
		    (rc = fill_bodies(op)) != 0) {
			op->pumping = false;
			finish_rpc_error(op, rc);
			return;
		}
		if (op->cur == op->n) {
			out_flush(op);
			if (op->pre_ready && op->pre_err == 0) {
				if (chunk_install(op))
					continue;
				break;       /* STORE in flight */
			}
			op->pumping = false;
			if (op->pre_err != 0)
				finish_rpc_error(op, op->pre_err);
			else if (op->pre_busy)
				return;      /* on_meta_pre pumps */
			else if (op->meta_end ||
				 (rc = send_meta(op)) == 1)
				finish(op, IMAP_OK, NULL, "FETCH completed");
			else if (rc < 0)
				finish_rpc_error(op, rc);
			return;
		}
		if (op->held || (op->stage == HS_START &&
				 imap_write_blocked(op->s))) {
			if (op->repump)
				continue;
			break;
		}
		out_maybe_flush(op);
		if (op->stage == HS_START && op->msgs[op->cur].seq == 0) {
			next_message(op);
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
	pump(op);
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
		op_end(op);
}

/* ---- the start: CHANGES, FETCH_META, STORE ---- */

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

/* The session's view learns the flags this command set. */
static void view_update(fetch_op *op, const fmsg *m)
{
	imap_selected *sel = op->s->sel;

	if (m->seq > 0 && m->seq <= sel->n && sel->flags != NULL)
		sel->flags[m->seq - 1] = m->flags;
}

static void on_store(imap_cmd *cmd, int err, const rpc_view *resp)
{
	fetch_op *op = cmd->op;
	rpc_iter it;
	const rpc_field *f;
	uint64_t lo = 0, hi = 0;

	op->busy = false;
	if (!rpc_back(op))
		return;
	if (err != 0) {
		/* \Seen could not be set: the bodies are still served, as
		 * they would be on a read-only mailbox. */
		eng_log(ENG_LOG_INFO, "imap: FETCH: setting \\Seen failed: %s",
			rpc_strerror(err));
		pump(op);
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
		view_update(op, m);
		lo = lo == 0 || m->modseq < lo ? m->modseq : lo;
		hi = m->modseq > hi ? m->modseq : hi;
	}
	/* As STORE does (imap_cmd_message.c, store_advance): one MODSEQ
	 * just above the view's means nothing else changed meanwhile, so the
	 * view is current and the next sync does not repeat this change. */
	if (lo != 0 && lo == hi && hi == op->s->sel->highestmodseq + 1)
		op->s->sel->highestmodseq = hi;
	pump(op);
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
	payload_begin(op, &pl);
	rpc_put_uidset(&pl, RPC_T_UIDSET, &set);
	rpc_put_u64(&pl, RPC_T_MODE, RPC_MODE_ADD);
	rpc_put_u64(&pl, RPC_T_FLAGS, 1u);   /* \Seen */
	rc = call_once(op, RPC_OP_STORE, &pl, on_store);
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
static bool chunk_install(fetch_op *op)
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

	if (!once_back(op, err))
		return;
	meta_parse(op, resp, &op->pre);
	if (chunk_install(op))
		pump(op);
}

/* The answer of the FETCH_META asked ahead: kept until the chunk being
 * written is done (an error too: the messages before it go out first). */
static void on_meta_pre(imap_cmd *cmd, int err, const rpc_view *resp)
{
	fetch_op *op = cmd->op;

	op->pre_busy = false;
	if (!rpc_back(op))
		return;
	if (err != 0)
		op->pre_err = err;
	else {
		meta_parse(op, resp, &op->pre);
		op->pre_ready = true;
	}
	pump(op);
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
	payload_begin(op, &pl);
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
static int send_meta(fetch_op *op)
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

	if (!once_back(op, err))
		return;
	if (rpc_get_uidset(resp, RPC_T_VANISHED, 1u << 20, &gone) == 0)
		put_vanished(op, &gone);
	eng_uidset_free(&gone);
	if ((rc = send_meta(op)) == 1)
		finish(op, IMAP_OK, NULL, "FETCH completed");
	else if (rc < 0)
		finish_rpc_error(op, rc);
}

static int send_changes(fetch_op *op)
{
	eng_buf pl = ENG_BUF_INIT;

	payload_begin(op, &pl);
	rpc_put_u64(&pl, RPC_T_MODSEQ, op->spec.changedsince);
	return call_once(op, RPC_OP_CHANGES, &pl, on_changes);
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
	op->bodies = op->body_ahead && item_whole(&sp->items[0]);
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
	rc = op->spec.vanished ? send_changes(op) : send_meta(op);
	if (rc == 1)
		finish(op, IMAP_OK, NULL, "FETCH completed");
	else if (rc < 0)
		finish_rpc_error(op, rc);
}

const imap_cmd_def imap_fetch_cmds[] = {
	{ "FETCH", cmd_fetch, IMAP_CF_SELECTED | IMAP_CF_NO_EXPUNGE, true },
	{ NULL, NULL, 0, false },
};
