/*
 * FETCH_BODY and FETCH_BODIES (docs/rpc.md, Opcodes), the body streams.
 * Each checks its fields on the loop thread, then runs on the alias's
 * queue through srv_ops_mbox.h.
 *
 * FETCH_BODY never holds a message in memory: the first work item
 * resolves the section and reads the first piece (a body within the
 * initial window costs that one work item); the rest goes out in pieces
 * of at most the client's window and RPC_MAX_CHUNK_BYTES, each read by its
 * own work item with the message handle kept open between them (memory
 * only, no statement), so that other requests of the alias run between
 * the pieces and a slow reader holds no database state. First work items
 * of FETCH_BODY requests pipelined for one alias share one work item
 * (body batches, below). FETCH_BODIES streams the whole bodies of many
 * messages, one record after the other, in pieces read the same way.
 *
 * Pieces are read into buffers of the piece pool (srv_bufpool.h), which
 * a FETCH_BODY holds while it runs: the first piece after room for the
 * RESPONSE and DATA frame heads, so that a body within the first window
 * goes to the socket in its own buffer, both frames built in front of it
 * (srv_reply_body_end_buf), and a later piece that the window lets go
 * whole goes as one DATA frame built in place (srv_send_data_buf). No
 * per-message allocation or copy of the bytes on the loop: a fresh
 * buffer per message refaulted its pages (the arena's top is given back,
 * srv_malloc.h) and its copy cost the loop a memmove.
 *
 * Expunge between pieces: a message still open when a work item ends
 * (a piece ended inside it) has its content pinned (store.h,
 * eng_message_pin): an EXPUNGE that runs between the pieces leaves its
 * bytes in the file, so the stream ends with the bytes it promised; the
 * pin goes when the message is read to its end (or the request ends) and
 * the content with it if nothing references it any more. The pin
 * outlives a release of the store: the handle reads on through the
 * reopened one (eng_message_rebind).
 */
#include "srv_ops_mbox.h"
#include "eng_error.h"
#include "rpc_bodies.h"
#include "sqlite_mem.h"
#include "srv_bufpool.h"

#include <pthread.h>
#include <sodium.h>
#include <stdlib.h>
#include <string.h>

/* ---- FETCH_BODY ---- */

/*
 * The download. The first work item opens the message, sends nothing
 * itself but leaves SIZE (and MIME, HEADER) in the answer and, with BODY,
 * reads the first piece (up to the initial window): a body that fits is
 * answered, RESPONSE and DATA, from that one work item. A longer body
 * keeps its eng_message handle in the context (memory only: the handle
 * holds no statement between calls) and each later piece is one work
 * item reading with it. The handle is used only while the alias's store is
 * the one it was opened on: after a close (idle, LRU, ALIAS_REMOVE, an
 * I/O error) the store is another one or none, and the next piece
 * reopens the message or fails with ENOSESSION. Every piece is sent as
 * far as the window allows; the rest waits in the buffer for CREDIT, and
 * the next read is queued as soon as the buffer is empty and the window
 * open, so reading overlaps with the socket writing the previous piece.
 */
struct body_ctx {
	uint32_t uid;
	uint32_t want;
	char *section;
	uint64_t offset;
	uint64_t length;             /* UINT64_MAX: to the end */
	/* Set by the first work item. */
	int64_t mailbox_id;
	uint64_t pos;                /* next byte of the message to read */
	uint64_t left;               /* bytes still to read */
	/* The open message and the store it belongs to (pool thread only);
	 * its content pinned while it stays open between work items. */
	eng_message *m;
	eng_store *m_store;
	eng_content_pin *pin;
	/* Where the pin goes when the request ends with it (body_ctx_free). */
	srv_aliases *aliases;
	char alias_id[SRV_ALIAS_ID_MAX + 1];
	/* The piece read (pool) and not yet all sent (loop): piece_len bytes
	 * at buf + at, buf a srv_pieces buffer or NULL; dirty: the bytes of
	 * buf that may hold data (wiped when it goes back). */
	uint8_t *buf;
	size_t at;
	size_t dirty;
	bool held;                   /* holds srv_pieces */
	size_t piece_len;
	size_t piece_sent;
	size_t piece_want;
};

/* ---- pins of the message a stream has open (both opcodes) ---- */

/*
 * At the end of a work item (pool, outside its read snapshot: an unpin
 * may delete; a is NULL only where there is no pin yet): *pin follows the open message m: the pin of a message no
 * longer open goes (with the content, if it was expunged meanwhile), and
 * a message left open is pinned. An unpin that fails to delete leaves the
 * orphan to the next open of the store (logged).
 */
static void stream_pin_sync(srv_alias *a, eng_message *m,
			    eng_content_pin **pin)
{
	if (*pin != NULL && (m == NULL || eng_content_pin_id(*pin) !=
				  eng_message_content_id(m))) {
		int err = eng_content_unpin(pin, srv_alias_store(a));

		if (err != 0)
			eng_log(ENG_LOG_WARN, "unpin: %s", eng_strerror(err));
	}
	if (m != NULL && *pin == NULL)
		*pin = eng_message_pin(m);
}

/* The message was opened on another store (the alias was released and
 * reopened since): the pinned handle reads on through st. Pool. */
static void stream_rebind(eng_message *m, eng_store **m_store, eng_store *st)
{
	if (m != NULL && *m_store != st) {
		eng_message_rebind(m, st);
		*m_store = st;
	}
}

static int unpin_work(srv_alias *a, void *ctx)
{
	eng_content_pin *pin = ctx;

	return eng_content_unpin(&pin, srv_alias_store(a));
}

static void unpin_done(void *ctx, int result)
{
	(void)ctx;
	(void)result;
}

/*
 * A request that ends with a pin (cancelled, failed, its connection gone):
 * the unpin runs on the alias's queue, which can delete; if it cannot be
 * queued, the registry drops the pin and the next open deletes an orphan.
 */
static void stream_unpin_later(srv_aliases *aliases, const char *alias_id,
			       eng_content_pin **pin)
{
	if (*pin == NULL)
		return;
	if (aliases != NULL && srv_alias_submit(aliases, alias_id, unpin_work,
						unpin_done, *pin) == 0)
		*pin = NULL;
	else
		(void)eng_content_unpin(pin, NULL);
}

static void body_ctx_free(void *p)
{
	struct body_ctx *c = p;

	eng_message_close(&c->m);
	stream_unpin_later(c->aliases, c->alias_id, &c->pin);
	free(c->section);
	srv_bufpool_put(&srv_pieces, c->buf, c->dirty);
	if (c->held)
		srv_bufpool_unhold(&srv_pieces);
	free(c);
}

/* Reads c->piece_want bytes at c->pos with the open message to c->at
 * of a piece buffer; the handle is closed once the last byte is read.
 * Pool. */
static int body_read_piece(struct body_ctx *c)
{
	uint8_t *piece;
	int err = 0;

	if (c->buf == NULL) {
		c->buf = srv_bufpool_get(&srv_pieces);
		c->dirty = 0;
	}
	piece = c->buf + c->at;
	c->piece_len = 0;
	c->piece_sent = 0;
	while (c->piece_len < c->piece_want) {
		long n = eng_message_read(c->m, c->pos + c->piece_len,
					  piece + c->piece_len,
					  c->piece_want - c->piece_len);

		if (n < 0) {
			err = (int)n;
			break;
		}
		/* Shorter than the SIZE promised: the store changed under
		 * us (it cannot: messages are immutable) or is damaged. */
		if (n == 0) {
			err = ENG_ECORRUPT;
			break;
		}
		c->piece_len += (size_t)n;
	}
	if (err == 0) {
		c->pos += c->piece_len;
		c->left -= c->piece_len;
		/* Only this piece's bytes stay (a buffer kept after a send
		 * by copy held a longer one): the wipe of what goes to the
		 * socket covers them all. */
		if (c->dirty > c->at + c->piece_len)
			sodium_memzero(piece + c->piece_len,
				       c->dirty - c->at - c->piece_len);
		c->dirty = c->at + c->piece_len;
	} else if (c->dirty < c->at + c->piece_want) {
		c->dirty = c->at + c->piece_want;
	}
	if (err != 0 || c->left == 0)
		eng_message_close(&c->m);
	return err;
}

/* The piece size for a window: within the buffer (after c->at) and what
 * is left. */
static size_t body_piece_size(const struct body_ctx *c, size_t window)
{
	size_t n = window < RPC_MAX_CHUNK_BYTES ? window : RPC_MAX_CHUNK_BYTES;

	if (n > SRV_BUFPOOL_BYTES - c->at)
		n = SRV_BUFPOOL_BYTES - c->at;
	return n > c->left ? (size_t)c->left : n;
}

/* The RESPONSE payloads that go in front of the first piece. */
#define BODY_REPLY_IN_PLACE 4096u

static int fetch_body_run(srv_mbop *op, eng_store *st, eng_mailbox *mb)
{
	struct body_ctx *c = op->ctx;
	uint64_t sec_off = 0, sec_len, size = 0;
	eng_message *m = NULL;
	eng_buf *b;
	int err;

	if ((err = eng_message_open(st, mb->id, c->uid, &m)) != 0)
		return err;
	c->m = m;
	c->m_store = st;
	c->mailbox_id = mb->id;
	sec_len = eng_message_size(m);
	err = c->section != NULL && c->section[0] != '\0' ?
		eng_message_section(m, c->section, &sec_off, &sec_len) : 0;
	if (err == ENG_ENOTFOUND) {
		/* A part the message does not have: IMAP answers "". */
		sec_len = 0;
		err = 0;
	}
	if (err != 0)
		return err;
	if (c->offset < sec_len)
		size = sec_len - c->offset < c->length ?
			sec_len - c->offset : c->length;
	c->pos = sec_off + c->offset;
	c->left = (c->want & RPC_WANT_BODY) ? size : 0;
	b = srv_mbop_part(op, 1, 11);
	rpc_put_u64(b, RPC_T_SIZE, size);
	if (c->want & RPC_WANT_MIME) {
		const eng_mime_part *root;
		eng_buf blob = ENG_BUF_INIT;

		if ((err = eng_message_mime(m, &root)) != 0)
			return err;
		eng_mime_encode(root, &blob);
		rpc_put_bytes(srv_mbop_part(op, 1, blob.len + 16), RPC_T_MIME,
			      blob.data, blob.len);
		eng_buf_free(&blob);
	}
	if (c->want & RPC_WANT_HEADER) {
		const void *hdr;
		size_t hdr_len;

		if ((err = eng_message_header(m, &hdr, &hdr_len)) != 0)
			return err;
		rpc_put_bytes(srv_mbop_part(op, 1, hdr_len + 16), RPC_T_HEADER,
			      hdr, hdr_len);
	}
	/* Everything in one RESPONSE: the body's frame is not multi. */
	if (op->n_parts > 1)
		return ENG_ELIMIT;
	/* The first piece, in the window every stream starts with, after
	 * room for the RESPONSE (a small one: SIZE alone, or with a small
	 * MIME and HEADER) and the DATA head. */
	c->at = op->parts[0].len <= BODY_REPLY_IN_PLACE ?
		2 * RPC_HEADER_BYTES + op->parts[0].len : RPC_HEADER_BYTES;
	c->piece_want = body_piece_size(c, RPC_INITIAL_WINDOW_BYTES);
	if (c->piece_want > 0 && (err = body_read_piece(c)) != 0)
		return err;
	if (c->left == 0)
		eng_message_close(&c->m);
	/* No pin yet: this only pins (inside the snapshot is fine). */
	stream_pin_sync(NULL, c->m, &c->pin);
	return 0;
}

/*
 * The pool half of a later piece, FETCH_BODY's and FETCH_BODIES': fill
 * reads it inside one read snapshot; without a store (the alias was
 * closed) the open message *m is closed and the request ends.
 */
static int piece_work(srv_alias *a, eng_message **m,
		      int (*fill)(void *c, eng_store *st), void *c)
{
	eng_store *st = srv_alias_store(a);
	int err;

	if (st == NULL) {
		eng_message_close(m);
		return RPC_ENOSESSION;
	}
	if ((err = eng_store_read_begin(st)) != 0)
		return err;
	err = fill(c, st);
	eng_store_read_end(st);
	return err;
}

/* Its loop half: the error, or pump (which sends the piece). */
static void piece_done(srv_mbop *op, int result, void (*pump)(srv_req *req))
{
	if (result != 0)
		srv_mbop_fail(op, result);
	else
		pump(op->req);
}

/* The next piece of FETCH_BODY. The alias was closed (and maybe
 * reopened) since the last piece: the handle's store is gone; open the
 * message again. */
static int body_fill(void *ctx, eng_store *st)
{
	struct body_ctx *c = ctx;
	int err = 0;

	stream_rebind(c->m, &c->m_store, st);
	if (c->m == NULL) {
		if ((err = eng_message_open(st, c->mailbox_id, c->uid,
					    &c->m)) == 0)
			c->m_store = st;
	}
	return err != 0 ? err : body_read_piece(c);
}

static void body_pump(srv_req *req);

static int body_piece_work(srv_alias *a, void *ctx)
{
	struct body_ctx *c = ((srv_mbop *)ctx)->ctx;
	int err = piece_work(a, &c->m, body_fill, c);

	stream_pin_sync(a, c->m, &c->pin);
	return err;
}

static void body_piece_done(void *ctx, int result)
{
	piece_done(ctx, result, body_pump);
}

/*
 * The loop half of FETCH_BODY and FETCH_BODIES (req->data is the mbop):
 * sends what the window allows of the piece read, buf[*sent, len), the
 * last bytes with END when last (nothing is left to read), which ends the
 * request; or waits for window credit (req->on_window = again). True when
 * the next piece is to be read, of at most *window_r bytes. No work of the
 * request is queued or running when it is called.
 */
static bool piece_pump(srv_req *req, const uint8_t *buf, size_t len,
		       size_t *sent, bool last, void (*again)(srv_req *),
		       size_t *window_r)
{
	srv_mbop *op = req->data;
	size_t window, n;

	req->on_window = NULL;
	if (req->cancelled) {
		srv_mbop_fail(op, RPC_ECANCELLED);
		return false;
	}
	window = srv_window(req);
	if (*sent < len) {
		bool end;

		if (window == 0) {
			req->on_window = again;
			return false;
		}
		n = len - *sent < window ? len - *sent : window;
		end = last && *sent + n == len;
		srv_send_data(req, buf + *sent, n, end);
		if (end) {
			srv_mbop_free(&op);
			return false;
		}
		*sent += n;
		window -= n;
		if (*sent < len) {
			req->on_window = again;
			return false;
		}
	}
	if (last) {
		srv_send_data(req, NULL, 0, true);
		srv_mbop_free(&op);
		return false;
	}
	if (window == 0) {
		req->on_window = again;
		return false;
	}
	*window_r = window;
	return true;
}

/*
 * Sends the piece read, then queues the next read (into the buffer's
 * DATA frame place) or waits for credit. A piece at that place that the
 * window lets go whole goes in its buffer; the rest by copy.
 */
static void body_pump(srv_req *req)
{
	srv_mbop *op = req->data;
	struct body_ctx *c = op->ctx;
	size_t window;
	int err;

	if (c->at == RPC_HEADER_BYTES && c->piece_sent == 0 &&
	    c->piece_len > 0 && !req->cancelled &&
	    c->piece_len <= srv_window(req)) {
		uint8_t *whole = c->buf;
		bool end = c->left == 0;

		c->buf = NULL;               /* the socket's now */
		c->dirty = 0;
		c->piece_sent = c->piece_len;
		srv_send_data_buf(req, whole, c->piece_len, end);
		if (end) {
			srv_mbop_free(&op);
			return;
		}
	}
	if (!piece_pump(req, c->buf != NULL ? c->buf + c->at : NULL,
			c->piece_len, &c->piece_sent, c->left == 0, body_pump,
			&window))
		return;
	c->at = RPC_HEADER_BYTES;
	c->piece_want = body_piece_size(c, window);
	if ((err = srv_alias_submit(op->srv->aliases, op->alias_id,
				    body_piece_work, body_piece_done, op)) != 0)
		srv_mbop_fail(op, err);
}

static void fetch_body_done(srv_mbop *op)
{
	struct body_ctx *c = op->ctx;
	srv_req *req = op->req;

	/* The one part is the reply (a request's reply is empty till now). */
	if (op->n_parts > 0) {
		eng_buf tmp = req->reply;

		req->reply = op->parts[0];
		op->parts[0] = tmp;
	}
	if (!(c->want & RPC_WANT_BODY)) {
		srv_reply(req);
		srv_mbop_free(&op);
		return;
	}
	/* The whole body in hand: RESPONSE and DATA in one write, from the
	 * piece's buffer. */
	if (c->left == 0 && !req->cancelled) {
		bool sent = c->buf == NULL ? srv_reply_body_end(req, NULL, 0) :
			srv_reply_body_end_buf(req, c->buf, c->at,
					       c->piece_len);

		if (sent) {
			c->buf = NULL;
			c->dirty = 0;
			srv_mbop_free(&op);
			return;
		}
	} else {
		srv_reply_body(req);
	}
	req->data = op;
	body_pump(req);
}

/*
 * Body batches. A client that pipelines body FETCHes (the imapd asks for
 * the next messages while it writes one) has several FETCH_BODY of one
 * alias waiting at once; each would cost a pool hand-off both ways and
 * its own read snapshot. A FETCH_BODY that arrives while an earlier one
 * of the same alias still waits for the pool joins it instead: one work
 * item runs the first work of all (one snapshot), and each request is
 * then answered on its own, in order. A batch is open until the pool
 * starts it, for at most BODY_BATCH_MAX requests; each holds at most its
 * first piece (the initial window), as it would alone.
 *
 * Joining runs a FETCH_BODY before requests of the alias queued after the
 * batch (and before it arrived). It reads only immutable content, so the
 * only difference is that a message expunged by one of those is still
 * served, as by a request that came first; a request sent after another
 * one's answer never joins a batch queued before that one (the queue is
 * in order: the batch had started).
 */
#define BODY_BATCH_MAX 16

struct body_batch {
	struct body_batch *next;     /* open_batches (under batches_mu) */
	srv *srv;
	char alias_id[SRV_ALIAS_ID_MAX + 1];
	pthread_mutex_t mu;
	bool started;                /* under mu: no more joins */
	size_t n;                    /* under mu until started */
	srv_mbop *ops[BODY_BATCH_MAX];
	int results[BODY_BATCH_MAX];
};

/* Batches queued and not yet done, of every srv of the process. */
static pthread_mutex_t batches_mu = PTHREAD_MUTEX_INITIALIZER;
static struct body_batch *open_batches;

static void batch_unlink(struct body_batch *b)
{
	struct body_batch **pp;

	pthread_mutex_lock(&batches_mu);
	for (pp = &open_batches; *pp != NULL; pp = &(*pp)->next) {
		if (*pp == b) {
			*pp = b->next;
			break;
		}
	}
	pthread_mutex_unlock(&batches_mu);
}

static int body_batch_work(srv_alias *a, void *ctx)
{
	struct body_batch *b = ctx;
	eng_store *st = srv_alias_store(a);
	bool snapshot;
	size_t n;

	pthread_mutex_lock(&b->mu);
	b->started = true;
	n = b->n;
	pthread_mutex_unlock(&b->mu);
	/* FETCH_BODY only reads (its pins are in memory): the generation
	 * stays, and with it the mailbox looked up (srv_alias.h). */
	srv_alias_work_read_only(a);
	snapshot = st != NULL && eng_store_read_begin(st) == 0;
	for (size_t i = 0; i < n; i++) {
		/* After an I/O error the store must be reopened first (the
		 * queue does it after this item): fail the rest. */
		if (st != NULL && eng_store_needs_reopen(st))
			b->results[i] = ENG_EIO;
		else
			b->results[i] = srv_mbop_work(a, b->ops[i]);
	}
	if (snapshot)
		eng_store_read_end(st);
	return 0;
}

static void body_batch_done(void *ctx, int result)
{
	struct body_batch *b = ctx;

	batch_unlink(b);
	for (size_t i = 0; i < b->n; i++)
		srv_mbop_done(b->ops[i], result != 0 ? result : b->results[i]);
	pthread_mutex_destroy(&b->mu);
	free(b);
}

/* Queues op's first work, in an open batch of its alias if there is one. */
static void body_batch_add(srv_mbop *op)
{
	struct body_batch *b;
	bool joined = false;
	int err;

	pthread_mutex_lock(&batches_mu);
	for (b = open_batches; b != NULL && !joined; b = b->next) {
		if (b->srv != op->srv || strcmp(b->alias_id, op->alias_id) != 0)
			continue;
		pthread_mutex_lock(&b->mu);
		if (!b->started && b->n < BODY_BATCH_MAX) {
			b->ops[b->n++] = op;
			joined = true;
		}
		pthread_mutex_unlock(&b->mu);
	}
	pthread_mutex_unlock(&batches_mu);
	if (joined)
		return;
	b = eng_calloc(1, sizeof(*b));
	b->srv = op->srv;
	memcpy(b->alias_id, op->alias_id, sizeof(b->alias_id));
	pthread_mutex_init(&b->mu, NULL);
	b->ops[b->n++] = op;
	pthread_mutex_lock(&batches_mu);
	b->next = open_batches;
	open_batches = b;
	pthread_mutex_unlock(&batches_mu);
	if ((err = srv_alias_submit(op->srv->aliases, op->alias_id,
				    body_batch_work, body_batch_done, b)) != 0) {
		batch_unlink(b);
		pthread_mutex_destroy(&b->mu);
		free(b);
		srv_mbop_fail(op, err);
	}
}

void srv_op_fetch_body(srv_req *req)
{
	struct body_ctx *c;
	uint64_t uid = 0, want = 0;
	srv_mbop *op;

	NEW_OP(op, req, true);
	c = eng_calloc(1, sizeof(*c));
	op->ctx = c;
	op->free_fn = body_ctx_free;
	op->done_fn = fetch_body_done;
	srv_bufpool_hold(&srv_pieces);
	c->held = true;
	c->aliases = op->srv->aliases;
	memcpy(c->alias_id, op->alias_id, sizeof(c->alias_id));
	op->read_only = true;
	CHECK(op, srv_arg_u64(&req->args, RPC_T_UID, true, UINT32_MAX, &uid));
	if (uid == 0)
		CHECK(op, ENG_EINVAL);
	c->uid = (uint32_t)uid;
	CHECK(op, srv_arg_u64(&req->args, RPC_T_WANT, true,
			      RPC_WANT_BODY | RPC_WANT_MIME | RPC_WANT_HEADER,
			      &want));
	c->want = (uint32_t)want;
	CHECK(op, srv_arg_str(&req->args, RPC_T_SECTION, false, true, 256,
			      &c->section));
	CHECK(op, srv_arg_u64(&req->args, RPC_T_OFFSET, false, UINT64_MAX,
			      &c->offset));
	c->length = UINT64_MAX;
	CHECK(op, srv_arg_u64(&req->args, RPC_T_LENGTH, false, UINT64_MAX,
			      &c->length));
	op->run = fetch_body_run;
	body_batch_add(op);
}

/* ---- FETCH_BODIES ---- */

/*
 * Whole bodies of many messages in one body stream (docs/rpc.md): for
 * each UID of the request, in its order, a record head (rpc_bodies.h) and
 * the message's bytes, or a GONE head for a UID that has no message. The
 * stream is cut into pieces regardless of where records begin, so a piece
 * holds many small messages and a 50 MB one takes many pieces. Each read
 * is one work item under one read snapshot (the first also looks the
 * mailbox up); a message begun in one piece keeps its handle (memory
 * only) for the next.
 *
 * Read-ahead: the stream has BODIES_SLOTS piece slots, a ring. The loop
 * sends the ready pieces, oldest first, as the window allows; whenever a
 * slot is free and no read runs, one work item reads the free slots
 * (BODIES_PIECE_BYTES each), while the pieces before them wait for credit
 * or go to the socket. So credit that arrives finds a piece already read
 * (no pool hand-off between WINDOW and DATA), and reading overlaps with
 * sending. The first piece is the initial window (so that a stream that
 * fits in it is one write with the RESPONSE); later ones are half of it:
 * a client that grants credit by halves of the window (rpc_client.c) gets
 * whole pieces, and a whole piece goes as one DATA frame built in place in
 * its srv_pieces buffer (srv_bufpool.h): the buffer goes to the socket and
 * the slot takes another for its next read. A piece the window cuts is
 * sent in parts by copy.
 *
 * Threads: while a read runs (reading), it owns the reader state below
 * and its fill slots (fill_at .. + n_fill, after the ready ones); the loop
 * owns the ready slots (first .. + n_ready) and the rest. The loop reads
 * read_all only while no read runs. A request cancelled (or whose
 * connection went) while a read runs ends when the read is done.
 */
#define BODIES_SLOTS 2
#define BODIES_FIRST_BYTES (RPC_INITIAL_WINDOW_BYTES < RPC_MAX_CHUNK_BYTES ? \
			    RPC_INITIAL_WINDOW_BYTES : RPC_MAX_CHUNK_BYTES)
/* Later pieces: the client's credit (see bodies_piece_size), within
 * these; half the initial window before any credit came. */
#define BODIES_PIECE_MIN (64u * 1024)
#define BODIES_PIECE_BYTES (BODIES_FIRST_BYTES / 2)

struct bodies_piece {
	uint8_t *buf;                /* srv_pieces buffer, or NULL */
	size_t dirty;                /* bytes of buf that may hold data */
	size_t len;                  /* the piece, at buf + RPC_HEADER_BYTES */
	size_t sent;
};

struct bodies_ctx {
	uint32_t *uids;
	size_t n;
	size_t next;                 /* next UID to begin a record for */
	int64_t mailbox_id;
	/* The record in progress: its head not all in pieces yet, then its
	 * bytes with the open message (the read's). */
	uint8_t head[RPC_BODIES_HEAD_BYTES];
	size_t head_off, head_len;
	uint32_t uid;
	eng_message *m;
	eng_store *m_store;
	uint64_t pos, left;
	/* m's content, pinned while m stays open between reads. */
	eng_content_pin *pin;
	srv_aliases *aliases;
	char alias_id[SRV_ALIAS_ID_MAX + 1];
	/* Opens the records' messages during one read (bodies_fill). */
	eng_message_cursor *cur;
	bool read_all;               /* every record is in the pieces read */
	bool held;                   /* holds srv_pieces */
	struct bodies_piece slot[BODIES_SLOTS];
	size_t first, n_ready;       /* the loop's: ready pieces */
	size_t fill_at, n_fill;      /* the read's: slots to fill */
	size_t fill_want;            /* bytes per piece */
	size_t filled;               /* pieces the read filled */
	bool reading;                /* a read is queued or running */
};

static void bodies_ctx_free(void *p)
{
	struct bodies_ctx *c = p;

	eng_message_close(&c->m);
	stream_unpin_later(c->aliases, c->alias_id, &c->pin);
	eng_message_cursor_close(&c->cur);
	free(c->uids);
	for (size_t i = 0; i < BODIES_SLOTS; i++)
		srv_bufpool_put(&srv_pieces, c->slot[i].buf, c->slot[i].dirty);
	if (c->held) {
		srv_bufpool_unhold(&srv_pieces);
		eng_sqlite_mem_keep_big(false);
	}
	free(c);
}

/* Begins the record of the next UID: its head, and the message open
 * (the read's cursor: the imapd asks in ascending order; any other
 * order is searched for UID by UID). */
static int bodies_begin(struct bodies_ctx *c, eng_store *st)
{
	rpc_bodies_head h = { .uid = c->uids[c->next++] };
	int err;

	if (c->cur == NULL)
		c->cur = eng_message_cursor_new(st, c->mailbox_id);
	err = eng_message_cursor_open_uid(c->cur, h.uid, &c->m);
	if (err == ENG_ENOTFOUND) {
		h.gone = true;       /* expunged, or never was */
		err = 0;
	}
	if (err != 0)
		return err;
	c->uid = h.uid;
	c->m_store = st;
	c->pos = 0;
	c->left = h.gone ? 0 : eng_message_size(c->m);
	h.size = c->left;
	if (c->left == 0)
		eng_message_close(&c->m);
	rpc_bodies_head_put(c->head, &h);
	c->head_off = 0;
	c->head_len = sizeof(c->head);
	return 0;
}

/* Reads up to want bytes of the stream into piece (*len_r of them: fewer
 * at its end). Pool. */
static int bodies_fill_piece(struct bodies_ctx *c, eng_store *st,
			     uint8_t *piece, size_t want, size_t *len_r)
{
	size_t len = 0;
	int err = 0;

	/* The store was closed and reopened since the last piece. */
	stream_rebind(c->m, &c->m_store, st);
	while (len < want) {
		size_t room = want - len;

		if (c->head_off < c->head_len) {
			size_t k = c->head_len - c->head_off;

			k = k < room ? k : room;
			memcpy(piece + len, c->head + c->head_off, k);
			c->head_off += k;
			len += k;
			*len_r = len;
			continue;
		}
		if (c->left > 0) {
			long got = eng_message_read(c->m, c->pos, piece + len,
						    room < c->left ? room :
						    (size_t)c->left);

			if (got <= 0)
				return got < 0 ? (int)got : ENG_ECORRUPT;
			c->pos += (uint64_t)got;
			c->left -= (uint64_t)got;
			len += (size_t)got;
			*len_r = len;
			if (c->left == 0)
				eng_message_close(&c->m);
			continue;
		}
		if (c->next == c->n)
			break;
		if ((err = bodies_begin(c, st)) != 0)
			return err;
	}
	if (c->next == c->n && c->left == 0 && c->head_off == c->head_len)
		c->read_all = true;
	return 0;
}

/* Fills slot p with up to want bytes of the stream. Pool. */
static int bodies_fill_slot(struct bodies_ctx *c, eng_store *st,
			    struct bodies_piece *p, size_t want)
{
	uint8_t *piece;
	int err;

	if (p->buf == NULL) {
		p->buf = srv_bufpool_get(&srv_pieces);
		p->dirty = 0;
	}
	piece = p->buf + RPC_HEADER_BYTES;
	p->len = 0;
	p->sent = 0;
	if ((err = bodies_fill_piece(c, st, piece, want, &p->len)) != 0) {
		/* A read that failed may have written anywhere in it. */
		if (p->dirty < RPC_HEADER_BYTES + want)
			p->dirty = RPC_HEADER_BYTES + want;
		return err;
	}
	/* Only the piece's bytes stay: what an earlier, longer piece left in
	 * a buffer reused after a partial send is wiped, so the pool's wipe
	 * of a frame's length covers everything. */
	if (p->dirty > RPC_HEADER_BYTES + p->len)
		sodium_memzero(piece + p->len, p->dirty - RPC_HEADER_BYTES -
			       p->len);
	p->dirty = RPC_HEADER_BYTES + p->len;
	return 0;
}

/* Fills the read's slots, fill_want bytes each, until the stream is all
 * read. Pool, inside a read snapshot. */
static int bodies_fill(void *ctx, eng_store *st)
{
	struct bodies_ctx *c = ctx;
	int err = 0;

	c->filled = 0;
	while (c->filled < c->n_fill && !c->read_all) {
		size_t i = (c->fill_at + c->filled) % BODIES_SLOTS;

		if ((err = bodies_fill_slot(c, st, &c->slot[i],
					    c->fill_want)) != 0)
			break;
		c->filled++;
	}
	eng_message_cursor_close(&c->cur);      /* before the snapshot ends */
	return err;
}

static int fetch_bodies_run(srv_mbop *op, eng_store *st, eng_mailbox *mb)
{
	struct bodies_ctx *c = op->ctx;
	int err;

	c->mailbox_id = mb->id;
	rpc_put_u64(srv_mbop_part(op, 1, 11), RPC_T_MESSAGES, c->n);
	err = bodies_fill(c, st);
	stream_pin_sync(NULL, c->m, &c->pin);   /* no pin yet: pins only */
	return err;
}

static void bodies_pump(srv_req *req);

static int bodies_piece_work(srv_alias *a, void *ctx)
{
	struct bodies_ctx *c = ((srv_mbop *)ctx)->ctx;
	int err = piece_work(a, &c->m, bodies_fill, c);

	stream_pin_sync(a, c->m, &c->pin);
	return err;
}

/* The read is done: its pieces are ready (loop). */
static void bodies_piece_done(void *ctx, int result)
{
	srv_mbop *op = ctx;
	struct bodies_ctx *c = op->ctx;

	c->reading = false;
	c->n_ready += c->filled;
	c->n_fill = c->filled = 0;
	if (result != 0) {
		op->req->on_window = NULL;
		srv_mbop_fail(op, result);
		return;
	}
	bodies_pump(op->req);
}

/* The size of the pieces read next: what the client grants at a time
 * (its smallest credit), so that each grant lets whole pieces go without a
 * copy: half the initial window with rpc_client's default, a whole chunk
 * when it keeps a larger window (the imapd's FETCH_BODIES); within
 * BODIES_PIECE_MIN and RPC_MAX_CHUNK_BYTES. */
static size_t bodies_piece_size(const srv_req *req)
{
	size_t credit = srv_credit_min(req);

	if (credit == 0)
		return BODIES_PIECE_BYTES;
	if (credit < BODIES_PIECE_MIN)
		return BODIES_PIECE_MIN;
	return credit < RPC_MAX_CHUNK_BYTES ? credit : RPC_MAX_CHUNK_BYTES;
}

/* Queues a read of the free slots, unless one runs or all is read. False
 * when the request failed (and op is gone). */
static bool bodies_read_ahead(srv_mbop *op)
{
	struct bodies_ctx *c = op->ctx;
	int err;

	if (c->reading || c->read_all || c->n_ready == BODIES_SLOTS)
		return true;
	c->fill_at = (c->first + c->n_ready) % BODIES_SLOTS;
	c->n_fill = BODIES_SLOTS - c->n_ready;
	c->fill_want = bodies_piece_size(op->req);
	c->reading = true;
	if ((err = srv_alias_submit(op->srv->aliases, op->alias_id,
				    bodies_piece_work, bodies_piece_done,
				    op)) != 0) {
		c->reading = false;
		c->n_fill = 0;
		op->req->on_window = NULL;
		srv_mbop_fail(op, err);
		return false;
	}
	return true;
}

/* Sends what the window allows of the oldest ready piece: false when the
 * window is shut, or the stream ended (*ended: op is gone). */
static bool bodies_send(srv_req *req, struct bodies_ctx *c, bool *ended)
{
	struct bodies_piece *p = &c->slot[c->first];
	size_t window = srv_window(req), n;
	bool last, end;

	if (window == 0)
		return false;
	last = !c->reading && c->read_all && c->n_ready == 1;
	n = p->len - p->sent < window ? p->len - p->sent : window;
	end = last && p->sent + n == p->len;
	if (p->sent == 0 && n == p->len && n > 0) {
		uint8_t *whole = p->buf;

		p->buf = NULL;       /* the socket's now */
		p->dirty = 0;
		srv_send_data_buf(req, whole, n, end);
	} else if (n > 0 || end) {
		srv_send_data(req, p->buf + RPC_HEADER_BYTES + p->sent, n,
			      end);
	}
	if (end) {
		*ended = true;
		return false;
	}
	p->sent += n;
	if (p->sent == p->len) {
		c->first = (c->first + 1) % BODIES_SLOTS;
		c->n_ready--;
	}
	return true;
}

/*
 * The loop half (req->data is the mbop), run when a read is done and when
 * credit comes: sends the ready pieces as the window allows (the last
 * one's last bytes with END, which ends the request), waits for credit
 * while one is left (req->on_window), and reads ahead into free slots.
 */
static void bodies_pump(srv_req *req)
{
	srv_mbop *op = req->data;
	struct bodies_ctx *c = op->ctx;
	bool ended = false;

	req->on_window = NULL;
	if (req->cancelled) {
		/* A running read writes into c: its done ends the request. */
		if (!c->reading)
			srv_mbop_fail(op, RPC_ECANCELLED);
		return;
	}
	while (c->n_ready > 0 && bodies_send(req, c, &ended))
		;
	if (ended) {
		srv_mbop_free(&op);
		return;
	}
	if (c->n_ready > 0)
		req->on_window = bodies_pump;
	bodies_read_ahead(op);
}

static void fetch_bodies_done(srv_mbop *op)
{
	struct bodies_ctx *c = op->ctx;
	srv_req *req = op->req;

	c->n_ready = c->filled;
	c->n_fill = c->filled = 0;
	if (op->n_parts > 0)
		eng_buf_append(&req->reply, op->parts[0].data,
			       op->parts[0].len);
	/* The whole stream in the first piece: RESPONSE and DATA in one
	 * write. */
	if (c->read_all && c->n_ready == 1 && !req->cancelled) {
		if (srv_reply_body_end(req, c->slot[0].buf + RPC_HEADER_BYTES,
				       c->slot[0].len)) {
			srv_mbop_free(&op);
			return;
		}
	} else {
		srv_reply_body(req);
	}
	req->data = op;
	bodies_pump(req);
}

void srv_op_fetch_bodies(srv_req *req)
{
	struct bodies_ctx *c;
	const uint8_t *p;
	size_t n;
	srv_mbop *op;

	NEW_OP(op, req, true);
	c = eng_calloc(1, sizeof(*c));
	/* Piece buffers, and SQLite's blocks of the chunks' blobs, are
	 * reused while the stream runs (srv_bufpool.h, sqlite_mem.h). */
	srv_bufpool_hold(&srv_pieces);
	eng_sqlite_mem_keep_big(true);
	c->held = true;
	/* The first read: one piece of the initial window. */
	c->n_fill = 1;
	c->fill_want = BODIES_FIRST_BYTES;
	op->ctx = c;
	op->free_fn = bodies_ctx_free;
	op->done_fn = fetch_bodies_done;
	c->aliases = op->srv->aliases;
	memcpy(c->alias_id, op->alias_id, sizeof(c->alias_id));
	op->read_only = true;
	/* The count is checked before anything is allocated for it. */
	CHECK(op, rpc_get_uids(&req->args, RPC_T_UIDS, &p, &n));
	if (n == 0 || n > RPC_BODIES_MAX_UIDS)
		CHECK(op, ENG_EINVAL);
	c->uids = eng_malloc(n * sizeof(*c->uids));
	for (size_t i = 0; i < n; i++) {
		c->uids[i] = rpc_uids_at(p, i);
		if (c->uids[i] == 0)
			CHECK(op, ENG_EINVAL);
	}
	c->n = n;
	srv_mbop_submit(op, fetch_bodies_run);
}
