/*
 * The mailbox opcodes (MAILBOX_LIST/CREATE/RENAME/DELETE/SUBSCRIBE/STATUS,
 * QUOTA_GET) and the machinery every mailbox handler shares
 * (srv_ops_mbox.h): field checks on the loop thread, work on the alias's
 * queue, answers split into parts under the frame limits, change events.
 *
 * Invariants:
 *  - every field is checked before any work is queued, so a work item
 *    only meets errors the store gives;
 *  - a work item never reads req (the core owns it) and the loop thread
 *    never touches the store: the work copies in what it needs and
 *    writes its answer into the mbop's own parts, which the done callback
 *    moves into req->reply on the loop;
 *  - an event is published only after the change it reports has been
 *    committed, and never for a request that fails.
 */
#include "srv_ops_mbox.h"
#include "srv_ops_view.h"
#include "eng_error.h"

#include <stdlib.h>
#include <string.h>

/* ---- field checks ---- */

int srv_arg_str(const rpc_view *v, uint32_t tag, bool required,
		bool allow_empty, size_t max_len, char **s_r)
{
	const uint8_t *p;
	size_t len;
	int err = rpc_get_bytes(v, tag, &p, &len);

	if (err == RPC_EMISSING && !required)
		return 0;
	if (err != 0)
		return err;
	if (memchr(p, '\0', len) != NULL)
		return RPC_EFIELDTYPE;
	if ((len == 0 && !allow_empty) || len > max_len)
		return ENG_EINVAL;
	*s_r = eng_strndup((const char *)p, len);
	return 0;
}

int srv_arg_mailbox(const rpc_view *v, uint32_t tag, char **name_r)
{
	char *name = NULL;
	int err;

	if ((err = srv_arg_str(v, tag, true, false, ENG_MAILBOX_NAME_MAX,
			       &name)) != 0)
		return err;
	err = eng_mailbox_name_check(name, name_r);
	free(name);
	return err != 0 ? ENG_EINVAL : 0;
}

int srv_arg_u64(const rpc_view *v, uint32_t tag, bool required, uint64_t max,
		uint64_t *val_r)
{
	uint64_t val;
	int err = rpc_get_u64(v, tag, &val);

	if (err == RPC_EMISSING && !required)
		return 0;
	if (err != 0)
		return err;
	if (val > max)
		return ENG_EINVAL;
	*val_r = val;
	return 0;
}

/* IMAP atom characters less '\' (a keyword is not a system flag). */
static bool keyword_ok(const uint8_t *p, size_t len)
{
	if (len == 0 || len > ENG_KEYWORD_MAX)
		return false;
	for (size_t i = 0; i < len; i++) {
		if (p[i] <= 0x20 || p[i] >= 0x7f || strchr("(){%*\"\\]", p[i]))
			return false;
	}
	return true;
}

void srv_strv_free(char ***v)
{
	if (*v == NULL)
		return;
	for (char **p = *v; *p != NULL; p++)
		free(*p);
	free(*v);
	*v = NULL;
}

int srv_arg_keywords(const rpc_view *v, char ***kw_r, size_t *n_r)
{
	size_t n = rpc_count(v, RPC_T_KEYWORD), i = 0;
	const rpc_field *f;
	rpc_iter it;
	char **kw;

	*kw_r = NULL;
	*n_r = 0;
	if (n > ENG_KEYWORDS_PER_MESSAGE)
		return ENG_EINVAL;
	rpc_iter_init(&it, v);
	while ((f = rpc_iter_next(&it, RPC_T_KEYWORD)) != NULL) {
		if (f->type != RPC_W_BYTES)
			return RPC_EFIELDTYPE;
		if (!keyword_ok(f->data, f->u))
			return ENG_EINVAL;
	}
	kw = eng_calloc(n + 1, sizeof(*kw));
	rpc_iter_init(&it, v);
	while ((f = rpc_iter_next(&it, RPC_T_KEYWORD)) != NULL)
		kw[i++] = eng_strndup((const char *)f->data, f->u);
	*kw_r = kw;
	*n_r = n;
	return 0;
}

int srv_arg_uidset(const rpc_view *v, uint32_t tag, bool required,
		   eng_uidset *set, bool *present_r)
{
	int err = rpc_get_uidset(v, tag, SRV_UIDSET_MAX_RANGES, set);

	if (present_r != NULL)
		*present_r = err == 0;
	if (err == RPC_EMISSING && !required)
		return 0;
	return err;
}

/* ---- the work of one request ---- */

srv_mbop *srv_mbop_new(srv_req *req, bool with_mailbox, int *err_r)
{
	srv_mbop *op = eng_calloc(1, sizeof(*op));
	uint64_t uidvalidity = 0;
	int err;

	op->req = req;
	op->srv = req->srv;
	memcpy(op->alias_id, req->alias_id, sizeof(op->alias_id));
	if (with_mailbox) {
		op->lookup = true;
		if ((err = srv_arg_mailbox(&req->args, RPC_T_MAILBOX,
					   &op->mailbox)) != 0 ||
		    (err = srv_arg_u64(&req->args, RPC_T_UIDVALIDITY, false,
				       UINT32_MAX, &uidvalidity)) != 0) {
			srv_mbop_free(&op);
			*err_r = err;
			return NULL;
		}
		op->check_uidvalidity = rpc_count(&req->args,
						  RPC_T_UIDVALIDITY) > 0;
		op->uidvalidity = (uint32_t)uidvalidity;
	}
	*err_r = 0;
	return op;
}

void srv_mbop_free(srv_mbop **opp)
{
	srv_mbop *op = *opp;

	if (op == NULL)
		return;
	if (op->free_fn != NULL && op->ctx != NULL)
		op->free_fn(op->ctx);
	for (size_t i = 0; i < op->n_parts; i++)
		eng_buf_free(&op->parts[i]);
	free(op->parts);
	for (size_t i = 0; i < op->n_events; i++)
		free(op->events[i].mailbox);
	free(op->events);
	free(op->mailbox);
	free(op);
	*opp = NULL;
}

void srv_mbop_fail(srv_mbop *op, int err)
{
	srv_fail(op->req, err);
	srv_mbop_free(&op);
}

eng_buf *srv_mbop_part(srv_mbop *op, size_t n_fields, size_t n_bytes)
{
	eng_buf *last = op->n_parts > 0 ? &op->parts[op->n_parts - 1] : NULL;

	if (last == NULL ||
	    (last->len > 0 &&
	     (op->part_fields + n_fields > SRV_PART_MAX_FIELDS ||
	      last->len + n_bytes > SRV_PART_MAX_BYTES))) {
		op->parts = eng_realloc(op->parts, (op->n_parts + 1) *
					sizeof(*op->parts));
		last = &op->parts[op->n_parts++];
		memset(last, 0, sizeof(*last));
		op->part_fields = 0;
	}
	op->part_fields += n_fields;
	return last;
}

void srv_mbop_event(srv_mbop *op, enum srv_event_kind kind,
		    const char *mailbox, uint32_t uid, uint64_t modseq)
{
	struct srv_mbop_event *ev;

	op->events = eng_realloc(op->events, (op->n_events + 1) *
				 sizeof(*op->events));
	ev = &op->events[op->n_events++];
	ev->kind = kind;
	ev->mailbox = eng_strdup(mailbox);
	ev->uid = uid;
	ev->modseq = modseq;
}

void srv_mbop_put_msg(srv_mbop *op, const eng_msg *msg)
{
	size_t n_kw = 0, kw_bytes = 0;
	size_t mark;
	eng_buf *b;

	for (char **k = msg->keywords; k != NULL && *k != NULL; k++) {
		n_kw++;
		kw_bytes += strlen(*k) + 4;
	}
	/* The group, 9 scalars of at most 11 bytes each, the keywords, and
	 * the blobs FETCH_META WANT asked for (8 bytes of field header each). */
	b = srv_mbop_part(op, 12 + n_kw, 8 + 9 * 11 + kw_bytes +
			  msg->header_len + msg->mime_len + 16);
	mark = rpc_group_begin(b, RPC_T_MESSAGE);
	rpc_put_u64(b, RPC_T_UID, msg->uid);
	rpc_put_u64(b, RPC_T_MODSEQ, msg->modseq);
	rpc_put_u64(b, RPC_T_FLAGS, msg->flags);
	for (char **k = msg->keywords; k != NULL && *k != NULL; k++)
		rpc_put_str(b, RPC_T_KEYWORD, *k);
	rpc_put_s64(b, RPC_T_INTERNAL_DATE, msg->internal_date);
	rpc_put_s64(b, RPC_T_SAVE_DATE, msg->save_date);
	rpc_put_u64(b, RPC_T_SIZE, msg->size);
	rpc_put_s64(b, RPC_T_CONTENT_ID, msg->content_id);
	rpc_put_s64(b, RPC_T_THREAD_ID, msg->thread_id);
	if (msg->mime != NULL)
		rpc_put_bytes(b, RPC_T_MIME, msg->mime, msg->mime_len);
	if (msg->header != NULL)
		rpc_put_bytes(b, RPC_T_HEADER, msg->header, msg->header_len);
	rpc_group_end(b, mark);
}

void srv_mbop_put_uids(srv_mbop *op, uint32_t tag, const uint32_t *uids,
		       size_t n)
{
	size_t i = 0;

	do {
		size_t k = n - i < SRV_PART_MAX_UIDS ? n - i : SRV_PART_MAX_UIDS;
		eng_buf *b = srv_mbop_part(op, 1, 4 * k + 16);

		rpc_put_uids(b, tag, uids + i, k);
		i += k;
	} while (i < n);
}

static void put_be32(uint8_t *p, uint32_t v)
{
	p[0] = (uint8_t)(v >> 24);
	p[1] = (uint8_t)(v >> 16);
	p[2] = (uint8_t)(v >> 8);
	p[3] = (uint8_t)v;
}

void srv_mbop_put_uid_ranges(srv_mbop *op, uint32_t tag,
			     const uint32_t *uids, size_t n)
{
	/* 8 bytes a range; at most SRV_PART_MAX_UIDS ranges a field. */
	uint8_t *packed = eng_malloc(8 * (size_t)SRV_PART_MAX_UIDS);
	size_t i = 0;

	do {
		size_t k = 0;

		while (i < n && k < SRV_PART_MAX_UIDS) {
			uint32_t lo = uids[i], hi = uids[i];

			while (i + 1 < n && uids[i + 1] == hi + 1)
				hi = uids[++i];
			i++;
			put_be32(packed + 8 * k, lo);
			put_be32(packed + 8 * k + 4, hi);
			k++;
		}
		rpc_put_bytes(srv_mbop_part(op, 1, 8 * k + 16), tag, packed,
			      8 * k);
	} while (i < n);
	free(packed);
}

int srv_mbop_work(srv_alias *a, srv_mbop *op)
{
	eng_store *st = srv_alias_store(a);
	eng_mailbox mb;
	int err;

	/* The alias was closed (every session ended) after the core
	 * resolved the session. */
	if (st == NULL)
		return RPC_ENOSESSION;
	op->alias_gen = srv_alias_work_gen(a);
	if (!op->lookup)
		return op->run(op, st, NULL);
	if (op->read_only && (err = eng_store_read_begin(st)) != 0)
		return err;
	/* A read looks up as the item before it did (srv_alias.h). */
	err = op->read_only ? srv_alias_mailbox_get(a, op->mailbox, &mb) :
		eng_mailbox_get(st, op->mailbox, &mb);
	if (err == 0) {
		if (op->check_uidvalidity && mb.uidvalidity != op->uidvalidity)
			err = ENG_EMODIFIED;
		else
			err = op->run(op, st, &mb);
		eng_mailbox_clear(&mb);
	}
	if (op->read_only)
		eng_store_read_end(st);
	return err;
}

static int mbop_work(srv_alias *a, void *ctx)
{
	srv_mbop *op = ctx;

	/* The item is this one mbop: if it only reads, the alias's write
	 * generation stays (srv_alias_quiet_gen). */
	if (op->read_only)
		srv_alias_work_read_only(a);
	return srv_mbop_work(a, op);
}

/* A part into req's reply: the buffers swapped when the reply is empty
 * (a big answer is not copied once more on the loop), else appended. */
static void part_to_reply(srv_req *req, eng_buf *part)
{
	eng_buf tmp;

	if (req->reply.len > 0) {
		eng_buf_append(&req->reply, part->data, part->len);
		return;
	}
	tmp = req->reply;
	req->reply = *part;
	*part = tmp;
}

void srv_mbop_done(srv_mbop *op, int result)
{
	srv_req *req = op->req;

	if (result != 0) {
		srv_mbop_fail(op, result);
		return;
	}
	for (size_t i = 0; i < op->n_events; i++)
		srv_event_publish(op->srv, op->alias_id, op->events[i].kind,
				  op->events[i].mailbox, op->events[i].uid,
				  op->events[i].modseq);
	if (op->done_fn != NULL) {
		op->done_fn(op);
		return;
	}
	for (size_t i = 0; i + 1 < op->n_parts; i++) {
		part_to_reply(req, &op->parts[i]);
		srv_reply_more(req);
	}
	if (op->n_parts > 0)
		part_to_reply(req, &op->parts[op->n_parts - 1]);
	srv_reply(req);
	srv_mbop_free(&op);
}

static void mbop_done(void *ctx, int result)
{
	srv_mbop_done(ctx, result);
}

void srv_mbop_submit(srv_mbop *op, srv_mbop_run_fn *run)
{
	int err;

	op->run = run;
	if ((err = srv_alias_submit(op->srv->aliases, op->alias_id, mbop_work,
				    mbop_done, op)) != 0)
		srv_mbop_fail(op, err);
}

/* ---- MAILBOX_* and QUOTA_GET ---- */

void srv_mbop_put_mailbox_info(srv_mbop *op, const eng_mailbox *mb)
{
	eng_buf *b = srv_mbop_part(op, 13, strlen(mb->name) + 16 + 12 * 11);
	size_t mark = rpc_group_begin(b, RPC_T_MAILBOX_INFO);

	rpc_put_str(b, RPC_T_MAILBOX, mb->name);
	rpc_put_u64(b, RPC_T_MAILBOX_ID, (uint64_t)mb->id);
	rpc_put_u64(b, RPC_T_UIDVALIDITY, mb->uidvalidity);
	rpc_put_u64(b, RPC_T_UIDNEXT, mb->uidnext);
	rpc_put_u64(b, RPC_T_HIGHESTMODSEQ, mb->highestmodseq);
	rpc_put_u64(b, RPC_T_SPECIAL_USE, mb->special_use);
	rpc_put_bool(b, RPC_T_SUBSCRIBED, mb->subscribed);
	rpc_put_bool(b, RPC_T_NOSELECT, mb->noselect);
	rpc_put_u64(b, RPC_T_MESSAGES, mb->messages);
	rpc_put_u64(b, RPC_T_UNSEEN, mb->unseen);
	rpc_put_u64(b, RPC_T_DELETED, mb->deleted);
	rpc_put_u64(b, RPC_T_SIZE, mb->size_bytes);
	rpc_group_end(b, mark);
}

static int list_run(srv_mbop *op, eng_store *st, eng_mailbox *mb)
{
	bool subscribed_only = op->ctx != NULL;
	eng_mailbox *list;
	size_t n;
	int err;

	(void)mb;
	if ((err = eng_mailbox_list(st, &list, &n)) != 0)
		return err;
	for (size_t i = 0; i < n; i++) {
		if (!subscribed_only || list[i].subscribed)
			srv_mbop_put_mailbox_info(op, &list[i]);
	}
	eng_mailbox_list_free(&list, n);
	return 0;
}

void srv_op_mailbox_list(srv_req *req)
{
	srv_mbop *op;
	bool subscribed = false;
	int err;

	if ((op = srv_mbop_new(req, false, &err)) == NULL) {
		srv_fail(req, err);
		return;
	}
	err = rpc_get_bool(&req->args, RPC_T_SUBSCRIBED, &subscribed);
	CHECK(op, err == RPC_EMISSING ? 0 : err);
	/* A non-NULL ctx is the flag; nothing to free. */
	op->ctx = subscribed ? (void *)op : NULL;
	op->read_only = true;     /* a SELECT after it stays on the loop */
	srv_mbop_submit(op, list_run);
}

static int create_run(srv_mbop *op, eng_store *st, eng_mailbox *unused)
{
	uint32_t special_use = (uint32_t)(uintptr_t)op->ctx;
	eng_mailbox mb;
	int64_t id;
	int err;

	(void)unused;
	if ((err = eng_mailbox_create(st, op->mailbox, special_use, &id)) != 0)
		return err;
	/* Committed: a failure to read it back does not undo it. */
	if (eng_mailbox_get(st, op->mailbox, &mb) == 0) {
		eng_buf *b = srv_mbop_part(op, 2, 2 * 11);

		rpc_put_u64(b, RPC_T_UIDVALIDITY, mb.uidvalidity);
		rpc_put_u64(b, RPC_T_MAILBOX_ID, (uint64_t)mb.id);
		srv_mbop_event(op, SRV_EV_MAILBOX, mb.name, 0,
			       mb.highestmodseq);
		eng_mailbox_clear(&mb);
		return 0;
	}
	return ENG_EIO;
}

void srv_op_mailbox_create(srv_req *req)
{
	uint64_t special_use = 0;
	srv_mbop *op;
	int err;

	if ((op = srv_mbop_new(req, true, &err)) == NULL) {
		srv_fail(req, err);
		return;
	}
	op->lookup = false;
	CHECK(op, srv_arg_u64(&req->args, RPC_T_SPECIAL_USE, false, 0x7f,
			      &special_use));
	op->ctx = (void *)(uintptr_t)special_use;
	srv_mbop_submit(op, create_run);
}

static int rename_run(srv_mbop *op, eng_store *st, eng_mailbox *mb)
{
	const char *new_name = op->ctx;
	int err;

	if ((err = eng_mailbox_rename(st, mb->name, new_name)) != 0)
		return err;
	srv_mbop_event(op, SRV_EV_MAILBOX, mb->name, 0, 0);
	srv_mbop_event(op, SRV_EV_MAILBOX, new_name, 0, 0);
	return 0;
}

void srv_op_mailbox_rename(srv_req *req)
{
	char *new_name = NULL;
	srv_mbop *op;
	int err;

	if ((op = srv_mbop_new(req, true, &err)) == NULL) {
		srv_fail(req, err);
		return;
	}
	CHECK(op, srv_arg_mailbox(&req->args, RPC_T_NEW_NAME, &new_name));
	op->ctx = new_name;
	op->free_fn = free;
	srv_mbop_submit(op, rename_run);
}

static int delete_run(srv_mbop *op, eng_store *st, eng_mailbox *mb)
{
	int err;

	if ((err = eng_mailbox_delete(st, mb->name)) != 0)
		return err;
	srv_mbop_event(op, SRV_EV_MAILBOX, mb->name, 0, 0);
	return 0;
}

void srv_op_mailbox_delete(srv_req *req)
{
	srv_mbop *op;
	int err;

	if ((op = srv_mbop_new(req, true, &err)) == NULL) {
		srv_fail(req, err);
		return;
	}
	srv_mbop_submit(op, delete_run);
}

static int subscribe_run(srv_mbop *op, eng_store *st, eng_mailbox *unused)
{
	(void)unused;
	return eng_mailbox_subscribe(st, op->mailbox, op->ctx != NULL);
}

void srv_op_mailbox_subscribe(srv_req *req)
{
	bool subscribed;
	srv_mbop *op;
	int err;

	if ((op = srv_mbop_new(req, true, &err)) == NULL) {
		srv_fail(req, err);
		return;
	}
	/* Subscriptions are names, which need not exist (RFC 3501 6.3.6). */
	op->lookup = false;
	CHECK(op, rpc_get_bool(&req->args, RPC_T_SUBSCRIBED, &subscribed));
	op->ctx = subscribed ? (void *)op : NULL;
	srv_mbop_submit(op, subscribe_run);
}

static int status_run(srv_mbop *op, eng_store *st, eng_mailbox *mb)
{
	(void)st;
	srv_mbop_put_mailbox_info(op, mb);
	return 0;
}

void srv_op_mailbox_status(srv_req *req)
{
	srv_mbop *op;
	int err;

	if ((op = srv_mbop_new(req, true, &err)) == NULL) {
		srv_fail(req, err);
		return;
	}
	op->read_only = true;
	srv_mbop_submit(op, status_run);
}

static int quota_run(srv_mbop *op, eng_store *st, eng_mailbox *unused)
{
	uint64_t used, limit, messages;
	eng_buf *b;
	int err;

	(void)unused;
	if ((err = eng_quota_get(st, &used, &limit, &messages)) != 0)
		return err;
	b = srv_mbop_part(op, 3, 33);
	rpc_put_u64(b, RPC_T_QUOTA_USED, used);
	rpc_put_u64(b, RPC_T_QUOTA_LIMIT, limit);
	rpc_put_u64(b, RPC_T_MESSAGES, messages);
	return 0;
}

void srv_op_quota_get(srv_req *req)
{
	srv_mbop *op;
	int err;

	if ((op = srv_mbop_new(req, false, &err)) == NULL) {
		srv_fail(req, err);
		return;
	}
	op->read_only = true;
	srv_mbop_submit(op, quota_run);
}
