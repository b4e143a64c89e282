/*
 * The RPC client's requests: the two lists (queue, active) and the id
 * hash they live in, the list of uploads, finishing and aborting a
 * request, sending queued requests as slots free up, and deadlines.
 *
 * Rules: a request is unlinked from every list before its callback runs,
 * so a cancel from inside the callback finds nothing; a request whose data
 * callback runs is pinned, and freeing it then only marks it dead
 * (rpcc_req_release). Only one timer serves every deadline: it is armed
 * for the earliest, and each expiry fires one callback at a time (each
 * may change the lists).
 */
#include "rpc_client_private.h"

#include <sodium.h>
#include <stdlib.h>
/*
 * Buffers that may hold a password (an UNLOCK request, an ALIAS_ADD
 * answer) are wiped before they go back to the allocator.
 */
void rpcc_buf_wipe_free(eng_buf *b)
{
	if (b->data != NULL)
		sodium_memzero(b->data, b->cap);
	eng_buf_free(b);
}

/* Keeps c->active_may_wait: r enters (d 1) or leaves (d -1) list l. */
static void count_may_wait(req_list *l, rpc_req *r, int d)
{
	if (r->may_wait && l == &r->c->active)
		r->c->active_may_wait = (uint32_t)((int)r->c->active_may_wait + d);
}

void rpcc_list_push_back(req_list *l, rpc_req *r)
{
	count_may_wait(l, r, 1);
	r->prev = l->tail;
	r->next = NULL;
	if (l->tail != NULL)
		l->tail->next = r;
	else
		l->head = r;
	l->tail = r;
	l->n++;
}

void rpcc_list_push_front(req_list *l, rpc_req *r)
{
	count_may_wait(l, r, 1);
	r->prev = NULL;
	r->next = l->head;
	if (l->head != NULL)
		l->head->prev = r;
	else
		l->tail = r;
	l->head = r;
	l->n++;
}

void rpcc_list_remove(req_list *l, rpc_req *r)
{
	count_may_wait(l, r, -1);
	if (r->prev != NULL)
		r->prev->next = r->next;
	else
		l->head = r->next;
	if (r->next != NULL)
		r->next->prev = r->prev;
	else
		l->tail = r->prev;
	r->prev = r->next = NULL;
	l->n--;
}

static req_list *list_of(rpc_req *r)
{
	return r->state == RQ_QUEUED ? &r->c->queue : &r->c->active;
}

static void uploads_add(rpc_req *r)
{
	rpc_client *c = r->c;

	if (r->on_uploads)
		return;
	r->up_prev = c->up_tail;
	r->up_next = NULL;
	if (c->up_tail != NULL)
		c->up_tail->up_next = r;
	else
		c->up_head = r;
	c->up_tail = r;
	r->on_uploads = true;
}

void rpcc_uploads_remove(rpc_req *r)
{
	rpc_client *c = r->c;

	if (!r->on_uploads)
		return;
	if (r->up_prev != NULL)
		r->up_prev->up_next = r->up_next;
	else
		c->up_head = r->up_next;
	if (r->up_next != NULL)
		r->up_next->up_prev = r->up_prev;
	else
		c->up_tail = r->up_prev;
	r->up_prev = r->up_next = NULL;
	r->on_uploads = false;
}

rpc_req *rpcc_req_lookup(rpc_client *c, uint32_t id)
{
	rpc_req *r = c->buckets[id % HASH_BUCKETS];

	while (r != NULL && r->id != id)
		r = r->hnext;
	return r;
}

static void hash_remove(rpc_req *r)
{
	rpc_req **pp = &r->c->buckets[r->id % HASH_BUCKETS];

	while (*pp != NULL && *pp != r)
		pp = &(*pp)->hnext;
	if (*pp == r)
		*pp = r->hnext;
	r->hnext = NULL;
}

void rpcc_req_reset_answer(rpc_req *r)
{
	eng_buf_reset(&r->resp);
	r->parts = 0;
	r->head.f = NULL;
	r->head.n = 0;
	r->in_body = false;
	r->recv_window = 0;
	r->unacked = 0;
}

/* Frees an unlinked request, or marks it dead while it is pinned. */
void rpcc_req_release(rpc_req *r)
{
	if (r->pinned) {
		r->dead = true;
		return;
	}
	rpcc_buf_wipe_free(&r->payload);
	rpcc_buf_wipe_free(&r->resp);
	rpc_msg_clear(&r->msg);
	free(r);
}

/* Takes r out of every list and the hash; frees it unless pinned. */
void rpcc_req_free(rpc_req *r)
{
	if (r->dead)
		return;
	rpcc_uploads_remove(r);
	rpcc_list_remove(list_of(r), r);
	hash_remove(r);
	rpcc_req_release(r);
}

/* Unlinks r, runs its callback, frees it. */
void rpcc_req_finish(rpc_req *r, int err, const rpc_view *resp)
{
	rpc_client_cb *cb = r->cb;
	void *ctx = r->ctx;

	rpcc_uploads_remove(r);
	rpcc_list_remove(list_of(r), r);
	hash_remove(r);
	/* Unlinked: a cancel of this id from inside cb finds nothing. */
	if (cb != NULL)
		cb(ctx, err, err == 0 ? resp : NULL);
	rpcc_req_release(r);
}

static uint32_t in_flight_limit(const rpc_client *c)
{
	uint32_t lim = c->server_in_flight;

	if (c->max_in_flight != 0 && c->max_in_flight < lim)
		lim = c->max_in_flight;
	return lim;
}

/*
 * The callback has fired (or is about to): the request now only waits for
 * the server to finish it. CANCEL tells the server to stop early.
 */
static void req_zombify(rpc_req *r)
{
	rpc_client *c = r->c;

	rpcc_uploads_remove(r);
	r->cb = NULL;
	r->data = NULL;
	r->state = RQ_ZOMBIE;
	if (rpcc_live(c))
		rpcc_conn_send_frame(c->conn, RPC_K_CANCEL, 0, 0, r->id, NULL, 0);
}

/* A sent request fails locally: cb(err) now, the id freed later. */
void rpcc_req_abort(rpc_req *r, int err)
{
	rpc_client_cb *cb = r->cb;
	void *ctx = r->ctx;

	req_zombify(r);
	if (cb != NULL)
		cb(ctx, err, NULL);
}

static void send_request(rpc_req *r)
{
	rpc_client *c = r->c;
	eng_buf b = ENG_BUF_INIT;
	size_t mark;

	rpcc_list_remove(&c->queue, r);
	r->state = RQ_SENT;
	rpcc_list_push_back(&c->active, r);
	rpcc_req_reset_answer(r);
	mark = rpc_frame_begin(&b, RPC_K_REQUEST, r->has_body ? RPC_F_BODY : 0,
			       r->opcode, r->id);
	eng_buf_append(&b, r->payload.data, r->payload.len);
	if (b.len > c->server_max_frame ||
	    rpc_frame_end(&b, mark, NULL) != 0) {
		/* The server's frame limit is below what the call accepted. */
		eng_buf_free(&b);
		r->state = RQ_ZOMBIE;
		rpcc_req_finish(r, RPC_EFRAMESIZE, NULL);
		return;
	}
	rpcc_conn_send(c->conn, &b);
	if (r->has_body) {
		r->send_window = RPC_INITIAL_WINDOW_BYTES;
		r->body_sent = false;
		r->body_off = 0;
		uploads_add(r);
	}
}

/*
 * The next queued request to send: the oldest, except that requests that
 * may wait long at the server (may_wait: logins in sqlited's Argon2id
 * queue) hold at most half of the in-flight slots (at least one), so a
 * burst of them never holds up the others; they keep their FIFO order
 * among themselves. NULL: nothing may go now.
 */
static rpc_req *next_to_send(const rpc_client *c)
{
	uint32_t lim = in_flight_limit(c);
	uint32_t wait_lim = lim > 1 ? lim / 2 : 1;
	rpc_req *r = c->queue.head;

	if (c->active_may_wait < wait_lim)
		return r;
	while (r != NULL && r->may_wait)
		r = r->next;
	return r;
}

void rpcc_flush_queue(rpc_client *c)
{
	rpc_req *r;

	/* The queue is read again after each send: a callback (a request
	 * that failed to send) may have changed it. */
	while (rpcc_live(c) && !c->closing && c->active.n < in_flight_limit(c) &&
	       (r = next_to_send(c)) != NULL)
		send_request(r);
	if (rpcc_live(c))
		rpcc_pump(c);
}

static rpc_req *first_expired(req_list *l, uint64_t now)
{
	for (rpc_req *r = l->head; r != NULL; r = r->next) {
		if (r->state != RQ_ZOMBIE && r->deadline_ms <= now)
			return r;
	}
	return NULL;
}

static void on_req_timer(uv_timer_t *t)
{
	rpc_client *c = t->data;
	uint64_t now = uv_now(c->loop);
	uint64_t due = 0;
	rpc_req *r;

	c->timer_due = 0;
	if (c->closing)
		return;
	/* One at a time: each callback may change the lists. */
	for (;;) {
		if ((r = first_expired(&c->queue, now)) != NULL) {
			rpcc_req_finish(r, RPC_ETIMEOUT, NULL);
		} else if ((r = first_expired(&c->active, now)) != NULL) {
			rpcc_req_abort(r, RPC_ETIMEOUT);
		} else {
			break;
		}
		if (c->closing)
			return;
	}
	for (r = c->queue.head; r != NULL; r = r->next) {
		if (due == 0 || r->deadline_ms < due)
			due = r->deadline_ms;
	}
	for (r = c->active.head; r != NULL; r = r->next) {
		if (r->state != RQ_ZOMBIE && (due == 0 || r->deadline_ms < due))
			due = r->deadline_ms;
	}
	if (due != 0)
		rpcc_arm_req_timer(c, due);
}

void rpcc_arm_req_timer(rpc_client *c, uint64_t due)
{
	uint64_t now = uv_now(c->loop);

	if (c->timer_due != 0 && c->timer_due <= due)
		return;
	c->timer_due = due;
	uv_timer_start(&c->req_timer, on_req_timer, due > now ? due - now : 0, 0);
}
