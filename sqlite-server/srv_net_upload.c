/*
 * Request bodies in sqlited's network core: the DATA frames of a REQUEST
 * with BODY are kept in memory while the body is small
 * (upload_keep_in_memory), else sealed into tmp_dir by pool threads with
 * a key pair that exists only in this process; and the srv_body_*
 * readers the handlers use (srv.h).
 *
 * Rules: DATA past the credit given closes the connection (RPC_EWINDOW);
 * credit is given back only for bytes on disk, so memory holds at most a
 * window per upload. An upload whose request went away while a write
 * runs is freed by that write's done. The handler runs once the whole
 * body is held in memory or committed to its file.
 */
#include "srv_net_private.h"

#include "eng_error.h"

#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

struct srv_body_reader {
	eng_spool_reader *r;
	const srv_body *mem;         /* or reading a body held in memory */
	size_t off;
	uint8_t *buf;                /* srv_body_next's, for a file */
	size_t buf_cap;
};

static void upload_kick(net_upload *up);

void net_body_free(srv_body **bp)
{
	srv_body *b = *bp;

	*bp = NULL;
	if (b == NULL)
		return;
	if (b->exists) {
		char *path = eng_malloc(strlen(b->dir) + ENG_SPOOL_ID_LEN + 8);

		sprintf(path, "%s/%s.msg", b->dir, b->id);
		unlink(path);
		free(path);
	}
	b->net->memory_bodies -= b->reserved;
	eng_buf_free_wipe(&b->mem);
	eng_secret_free(&b->sk);
	free(b->dir);
	free(b);
}

static void upload_free(net_upload *up)
{
	net_state *n = up->net;

	eng_spool_abort(&up->w);
	net_body_free(&up->body);
	eng_buf_free(&up->pending);
	eng_buf_free(&up->writing);
	sodium_memzero(up->pk, sizeof(up->pk));
	free(up);
	n->uploads--;
	net_stop_progress(n);
}

/* The request no longer wants its upload; a running write finishes first. */
void net_upload_drop(net_req *r)
{
	net_upload *up = r->up;

	r->up = NULL;
	if (up == NULL)
		return;
	up->req = NULL;
	if (!up->busy)
		upload_free(up);
}

/* ---- bodies ---- */

uint64_t srv_body_size(const srv_body *b)
{
	return b->size;
}

int srv_body_open(srv_body *b, srv_body_reader **r_r)
{
	srv_body_reader *br = eng_calloc(1, sizeof(*br));
	int rc;

	if (b->in_memory) {
		br->mem = b;
		*r_r = br;
		return 0;
	}
	rc = eng_spool_reader_open(b->dir, b->id, b->sk, &br->r);

	if (rc != 0) {
		free(br);
		*r_r = NULL;
		return rc;
	}
	*r_r = br;
	return 0;
}

long srv_body_read(srv_body_reader *r, void *buf, size_t len)
{
	if (r->mem != NULL) {
		size_t left = r->mem->mem.len - r->off;

		if (len > left)
			len = left;
		if (len > LONG_MAX)
			len = LONG_MAX;
		if (len > 0)
			memcpy(buf, r->mem->mem.data + r->off, len);
		r->off += len;
		return (long)len;
	}
	return eng_spool_read(r->r, buf, len);
}

long srv_body_next(srv_body_reader *r, size_t max, const void **p_r)
{
	size_t left;

	if (r->mem == NULL) {
		if (r->buf == NULL || r->buf_cap < max) {
			free(r->buf);
			r->buf = eng_malloc(max);
			r->buf_cap = max;
		}
		*p_r = r->buf;
		return eng_spool_read(r->r, r->buf, max);
	}
	left = r->mem->mem.len - r->off;
	if (max > left)
		max = left;
	if (max > LONG_MAX)
		max = LONG_MAX;
	*p_r = r->mem->mem.data + r->off;
	r->off += max;
	return (long)max;
}

void srv_body_reader_free(srv_body_reader **r)
{
	if (r == NULL || *r == NULL)
		return;
	eng_spool_reader_free(&(*r)->r);
	free((*r)->buf);
	free(*r);
	*r = NULL;
}

/* Pool thread: writes one batch, opening the file first and committing
 * after the last batch. */
static void upload_work(uv_work_t *w)
{
	net_upload *up = w->data;
	int rc = 0;

	if (up->w == NULL) {
		rc = eng_spool_writer_open(up->body->dir, up->pk, 0, 0, &up->w);
		/* A staging copy: every consumer (APPEND into the database,
		 * DELIVER into the database or the alias's spool, the outbound
		 * queue) makes its own durable copy before answering, and the
		 * file is deleted with the request. Its syncs buy nothing. */
		if (rc == 0)
			eng_spool_writer_no_sync(up->w);
	}
	if (rc == 0 && up->writing.len > 0)
		rc = eng_spool_write(up->w, up->writing.data, up->writing.len);
	if (rc == 0 && up->commit_now) {
		rc = eng_spool_commit(&up->w, up->body->id);
		if (rc == 0)
			up->body->exists = true;
	}
	up->err = rc;
}

static void upload_done(uv_work_t *w, int status)
{
	net_upload *up = w->data;
	net_req *r = up->req;
	uint64_t written = up->writing.len;

	up->busy = false;
	if (status != 0 && up->err == 0)
		up->err = ENG_EIO;
	if (up->commit_now && up->err == 0)
		up->committed = true;
	eng_buf_reset(&up->writing);
	if (r == NULL) {
		upload_free(up);
		return;
	}
	if (up->err != 0) {
		eng_log(ENG_LOG_WARN, "sqlited: sealing a request body failed: %s",
			eng_strerror(up->err));
		net_req_refuse(r, up->err, !up->end);
		return;
	}
	if (up->committed) {
		/* The whole body is sealed on disk: the handler takes over. */
		r->pub.body = up->body;
		up->body = NULL;
		r->up = NULL;
		up->req = NULL;
		upload_free(up);
		net_run_handler(r);
		return;
	}
	/* Credit for what is now on disk, so memory holds at most a window. */
	if (written > 0 && !up->end && net_req_live(r)) {
		eng_buf pl = ENG_BUF_INIT;

		rpc_put_u64(&pl, RPC_T_CREDIT, written);
		net_send_frame(r->pub.conn, RPC_K_WINDOW, 0, 0, r->pub.id, pl.data, pl.len);
		eng_buf_free_wipe(&pl);
		r->recv_window += written;
	}
	upload_kick(up);
}

/* Starts a write of what is pending (or the commit), unless one runs. */
static void upload_kick(net_upload *up)
{
	if (up->busy || (up->pending.len == 0 && !up->end) || up->committed)
		return;
	if (up->body->sk == NULL) {
		/* A key pair that exists only in this process: the sealed
		 * file is useless to anyone who reads the disk. */
		up->body->sk = eng_secret_new(crypto_box_SECRETKEYBYTES);
		crypto_box_keypair(up->pk, up->body->sk);
	}
	/* Swap: the pool writes `writing` while DATA fills `pending`. */
	eng_buf tmp = up->writing;

	up->writing = up->pending;
	up->pending = tmp;
	up->commit_now = up->end;
	up->body->size = up->received;
	up->work.data = up;
	if (uv_queue_work(up->net->srv->loop, &up->work, upload_work,
			  upload_done) != 0) {
		up->err = ENG_EIO;
		if (up->req != NULL)
			net_req_refuse(up->req, ENG_EIO, !up->end);
		return;
	}
	up->busy = true;
}

/*
 * A body of at most max_memory_body_bytes (no more than the initial
 * window: no credit is sent for it, so it must end within the window) is
 * kept in memory while
 * all bodies so kept stay within memory_bodies_budget: no staging file,
 * no key pair, no thread-pool round trip; the handler runs at its END.
 * A body that outgrows either limit goes to a staging file from then on
 * (what is pending is its first write), its reservation given back.
 * Returns true while the body stays in memory.
 */
static bool upload_keep_in_memory(net_req *r, size_t added)
{
	net_upload *up = r->up;
	net_state *n = up->net;
	srv_body *b = up->body;
	uint64_t max = n->opt.max_memory_body_bytes < RPC_INITIAL_WINDOW_BYTES ?
		n->opt.max_memory_body_bytes : RPC_INITIAL_WINDOW_BYTES;

	/* A body that used up the whole window without ending goes to a
	 * file now: only credit for written bytes lets the client go on. */
	if ((up->end ? up->received <= max : up->received < max) &&
	    n->memory_bodies + added <= n->opt.memory_bodies_budget) {
		n->memory_bodies += added;
		b->reserved += added;
		if (!up->end)
			return true;
		b->in_memory = true;
		b->size = up->received;
		b->mem = up->pending;
		up->pending = (eng_buf)ENG_BUF_INIT;
		r->pub.body = b;
		up->body = NULL;
		r->up = NULL;
		up->req = NULL;
		upload_free(up);
		net_run_handler(r);
		return true;
	}
	up->in_memory = false;
	n->memory_bodies -= b->reserved;
	b->reserved = 0;
	return false;
}

int net_upload_start(net_req *r)
{
	net_state *n = r->pub.srv->net;
	net_upload *up = eng_calloc(1, sizeof(*up));
	srv_body *b = eng_calloc(1, sizeof(*b));

	b->net = n;
	b->dir = eng_strdup(n->srv->tmp_dir);
	up->in_memory = true;
	up->net = n;
	up->req = r;
	up->body = b;
	r->up = up;
	r->recv_window = RPC_INITIAL_WINDOW_BYTES;
	r->phase = R_UPLOAD;
	n->uploads++;
	return 0;
}

void net_on_data(srv_conn *c, const rpc_frame *f)
{
	net_req *r = net_req_find(c, f->request_id);
	uint64_t max = c->net->srv->cfg->max_message_bytes;

	if (r == NULL || r->phase == R_HANDLER ||
	    f->payload_len > r->recv_window) {
		net_conn_fatal(c, RPC_EWINDOW);
		return;
	}
	r->recv_window -= f->payload_len;
	if (r->phase == R_DRAIN) {
		if (f->flags & RPC_F_END)
			net_req_free(r);
		return;
	}
	r->up->received += f->payload_len;
	if (r->up->received > max) {
		net_req_refuse(r, ENG_ELIMIT, !(f->flags & RPC_F_END));
		return;
	}
	eng_buf_append(&r->up->pending, f->payload, f->payload_len);
	if (f->flags & RPC_F_END)
		r->up->end = true;
	if (r->up->in_memory && upload_keep_in_memory(r, f->payload_len))
		return;
	upload_kick(r->up);
}
