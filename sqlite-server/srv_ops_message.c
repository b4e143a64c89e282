/*
 * The message opcodes: APPEND, FETCH_META, STORE, COPY, MOVE, EXPUNGE,
 * CHANGES (docs/rpc.md, Opcodes; FETCH_BODY and FETCH_BODIES are in
 * srv_ops_body.c). Each checks its fields on the loop thread, then runs on
 * the alias's queue through srv_ops_mbox.h.
 */
#include "srv_ops_mbox.h"
#include "eng_error.h"

#include <stdlib.h>
#include <string.h>

/* APPEND reads the sealed body in pieces of this size. */
#define APPEND_READ_BYTES (64u * 1024)

/* ---- APPEND ---- */

struct append_ctx {
	srv_body *body;              /* the core's; read on the pool only */
	uint32_t flags;
	char **keywords;
	size_t n_keywords;
	int64_t internal_date;
	char *idempotency_key;
};

static void append_ctx_free(void *p)
{
	struct append_ctx *c = p;

	srv_strv_free(&c->keywords);
	free(c->idempotency_key);
	free(c);
}

static int append_run(srv_mbop *op, eng_store *st, eng_mailbox *mb)
{
	struct append_ctx *c = op->ctx;
	eng_append_opts opts = {
		.flags = c->flags,
		.keywords = (const char *const *)c->keywords,
		.n_keywords = c->n_keywords,
		.internal_date = c->internal_date,
		.idempotency_key = c->idempotency_key,
	};
	srv_body_reader *r = NULL;
	eng_append *ap = NULL;
	uint32_t uid, uidvalidity = 0;
	uint64_t modseq;
	const void *p;
	eng_buf *b;
	long n;
	int err;

	(void)mb;
	if ((err = srv_body_open(c->body, &r)) != 0)
		return err;
	/* The mailbox is looked up by the append, in its transaction
	 * (op->lookup is off): a lookup ahead of it cost a read transaction
	 * of its own, ~2% of sqlited's CPU per APPEND. */
	err = eng_append_begin_name(st, op->mailbox, &opts, &ap, NULL,
				    &uidvalidity);
	if (err == 0 && op->check_uidvalidity &&
	    uidvalidity != op->uidvalidity) {
		eng_append_abort(&ap);
		err = ENG_EMODIFIED;
	}
	if (err != 0) {
		srv_body_reader_free(&r);
		return err;
	}
	/* A body held in memory is appended from where it is. */
	while ((n = srv_body_next(r, APPEND_READ_BYTES, &p)) > 0) {
		if ((err = eng_append_write(ap, p, (size_t)n)) != 0)
			break;
	}
	srv_body_reader_free(&r);
	if (err == 0 && n < 0)
		err = (int)n;
	if (err != 0) {
		eng_append_abort(&ap);
		return err;
	}
	if ((err = eng_append_commit(&ap, &uid, &modseq)) != 0)
		return err;
	b = srv_mbop_part(op, 3, 33);
	rpc_put_u64(b, RPC_T_UID, uid);
	rpc_put_u64(b, RPC_T_MODSEQ, modseq);
	rpc_put_u64(b, RPC_T_UIDVALIDITY, uidvalidity);
	srv_mbop_event(op, SRV_EV_EXISTS, op->mailbox, uid, modseq);
	return 0;
}

void srv_op_append(srv_req *req)
{
	struct append_ctx *c;
	uint64_t size = 0, flags = 0;
	srv_mbop *op;
	int err;

	NEW_OP(op, req, true);
	op->lookup = false;         /* append_run's */
	c = eng_calloc(1, sizeof(*c));
	op->ctx = c;
	op->free_fn = append_ctx_free;
	CHECK(op, srv_arg_u64(&req->args, RPC_T_SIZE, true, UINT64_MAX, &size));
	CHECK(op, srv_arg_u64(&req->args, RPC_T_FLAGS, false, ENG_F_ALL,
			      &flags));
	c->flags = (uint32_t)flags;
	CHECK(op, srv_arg_keywords(&req->args, &c->keywords, &c->n_keywords));
	err = rpc_get_s64(&req->args, RPC_T_INTERNAL_DATE, &c->internal_date);
	CHECK(op, err == RPC_EMISSING ? 0 : err);
	if (c->internal_date < 0)
		CHECK(op, ENG_EINVAL);
	CHECK(op, srv_arg_str(&req->args, RPC_T_IDEMPOTENCY_KEY, false, false,
			      128, &c->idempotency_key));
	/* The body is what is stored: without one there is nothing to do,
	 * and SIZE is the client's promise of its length. */
	if (req->body == NULL || srv_body_size(req->body) != size)
		CHECK(op, ENG_EINVAL);
	c->body = req->body;
	srv_mbop_submit(op, append_run);
}

/* ---- FETCH_META, CHANGES ---- */

/*
 * FETCH_META WANT: a blob (header or MIME structure) goes into a MESSAGE
 * group only up to SRV_META_BLOB_MAX bytes, so that one group (two blobs
 * and the metadata) always fits in one part, and only while the answer's
 * blobs stay within SRV_META_BLOB_BUDGET, so that the whole answer stays
 * far below the client's response limit (rpc_client.h, 64 MiB) whatever
 * the UID set. A blob left out is simply absent from its group: the
 * client asks FETCH_BODY for that message (docs/rpc.md).
 */
#define SRV_META_BLOB_MAX (256u * 1024)
#define SRV_META_BLOB_BUDGET (16u * 1024 * 1024)

struct meta_ctx {
	eng_uidset set;
	bool has_set;
	uint64_t since;
	uint64_t want;               /* RPC_WANT_MIME | RPC_WANT_HEADER */
	size_t blob_bytes;           /* of the answer so far */
};

static void meta_ctx_free(void *p)
{
	struct meta_ctx *c = p;

	eng_uidset_free(&c->set);
	free(c);
}

static int put_msg_cb(void *ctx, const eng_msg *msg)
{
	srv_mbop_put_msg(ctx, msg);
	return 0;
}

/* Keeps the blob if it is within the limits above, else drops it. */
static void blob_admit(struct meta_ctx *c, const void **data, size_t *len)
{
	if (*data == NULL)
		return;
	if (*len > SRV_META_BLOB_MAX ||
	    c->blob_bytes + *len > SRV_META_BLOB_BUDGET) {
		*data = NULL;
		*len = 0;
		return;
	}
	c->blob_bytes += *len;
}

static int put_msg_blobs_cb(void *ctx, const eng_msg *msg)
{
	srv_mbop *op = ctx;
	struct meta_ctx *c = op->ctx;
	eng_msg m = *msg;

	blob_admit(c, &m.mime, &m.mime_len);
	blob_admit(c, &m.header, &m.header_len);
	srv_mbop_put_msg(op, &m);
	return 0;
}

static int fetch_meta_run(srv_mbop *op, eng_store *st, eng_mailbox *mb)
{
	struct meta_ctx *c = op->ctx;
	unsigned want = ((c->want & RPC_WANT_MIME) ? ENG_FETCH_WANT_MIME : 0) |
		((c->want & RPC_WANT_HEADER) ? ENG_FETCH_WANT_HEADER : 0);

	return eng_fetch_meta_want(st, mb->id, c->has_set ? &c->set : NULL,
				   c->since, want,
				   want != 0 ? put_msg_blobs_cb : put_msg_cb, op);
}

void srv_op_fetch_meta(srv_req *req)
{
	struct meta_ctx *c;
	srv_mbop *op;

	NEW_OP(op, req, true);
	c = eng_calloc(1, sizeof(*c));
	op->ctx = c;
	op->free_fn = meta_ctx_free;
	CHECK(op, srv_arg_uidset(&req->args, RPC_T_UIDSET, false, &c->set,
				 &c->has_set));
	CHECK(op, srv_arg_u64(&req->args, RPC_T_CHANGEDSINCE, false,
			      UINT64_MAX, &c->since));
	CHECK(op, srv_arg_u64(&req->args, RPC_T_WANT, false,
			      RPC_WANT_MIME | RPC_WANT_HEADER, &c->want));
	if (c->want & RPC_WANT_BODY)
		CHECK(op, ENG_EINVAL);
	/* Reads only: one snapshot, and a SELECT after it stays on the
	 * loop (srv_ops_view.c). */
	op->read_only = true;
	srv_mbop_submit(op, fetch_meta_run);
}

static int changes_run(srv_mbop *op, eng_store *st, eng_mailbox *mb)
{
	struct meta_ctx *c = op->ctx;
	uint32_t *vanished = NULL;
	size_t n_vanished = 0;
	int err;

	/* The queue is held, so this is the MODSEQ the list below reaches. */
	rpc_put_u64(srv_mbop_part(op, 1, 11), RPC_T_HIGHESTMODSEQ,
		    mb->highestmodseq);
	if ((err = eng_changes_since(st, mb->id, c->since, put_msg_cb, op,
				     &vanished, &n_vanished)) != 0)
		return err;
	srv_mbop_put_uid_ranges(op, RPC_T_VANISHED, vanished, n_vanished);
	free(vanished);
	return 0;
}

void srv_op_changes(srv_req *req)
{
	struct meta_ctx *c;
	srv_mbop *op;

	NEW_OP(op, req, true);
	c = eng_calloc(1, sizeof(*c));
	op->ctx = c;
	op->free_fn = meta_ctx_free;
	CHECK(op, srv_arg_u64(&req->args, RPC_T_MODSEQ, true, UINT64_MAX,
			      &c->since));
	op->read_only = true;    /* as FETCH_META */
	srv_mbop_submit(op, changes_run);
}

/* ---- STORE ---- */

struct store_ctx {
	eng_uidset set;
	enum eng_store_mode mode;
	uint32_t flags;
	char **keywords;
	size_t n_keywords;
	uint64_t unchangedsince;
	uint32_t max_uid;            /* of the changed messages */
	uint64_t max_modseq;
};

static void store_ctx_free(void *p)
{
	struct store_ctx *c = p;

	eng_uidset_free(&c->set);
	srv_strv_free(&c->keywords);
	free(c);
}

static int store_changed_cb(void *ctx, const eng_msg *msg)
{
	srv_mbop *op = ctx;
	struct store_ctx *c = op->ctx;

	if (msg->uid > c->max_uid)
		c->max_uid = msg->uid;
	if (msg->modseq > c->max_modseq)
		c->max_modseq = msg->modseq;
	srv_mbop_put_msg(op, msg);
	return 0;
}

static int store_run(srv_mbop *op, eng_store *st, eng_mailbox *mb)
{
	struct store_ctx *c = op->ctx;
	eng_uidset failed = { 0 };
	int err;

	/* mb was read on the alias's queue, where no other write runs: the
	 * mailbox's HIGHESTMODSEQ just before this STORE (docs/rpc.md). */
	rpc_put_u64(srv_mbop_part(op, 1, 11), RPC_T_PRIOR_MODSEQ,
		    mb->highestmodseq);
	err = eng_store_flags(st, mb->id, &c->set, c->mode, c->flags,
			      (const char *const *)c->keywords, c->n_keywords,
			      c->unchangedsince, &failed, store_changed_cb, op);
	/* In fields of at most SRV_PART_MAX_UIDS ranges, like the lists. */
	for (size_t i = 0; err == 0 && i < failed.count;
	     i += SRV_PART_MAX_UIDS) {
		size_t k = failed.count - i < SRV_PART_MAX_UIDS ?
			failed.count - i : SRV_PART_MAX_UIDS;
		eng_uidset chunk = { failed.ranges + i, k, k };

		rpc_put_uidset(srv_mbop_part(op, 1, 8 * k + 16), RPC_T_FAILED,
			       &chunk);
	}
	eng_uidset_free(&failed);
	if (err == 0 && c->max_modseq > 0)
		srv_mbop_event(op, SRV_EV_FLAGS, mb->name, c->max_uid,
			       c->max_modseq);
	return err;
}

void srv_op_store(srv_req *req)
{
	struct store_ctx *c;
	uint64_t mode = 0, flags = 0;
	srv_mbop *op;

	NEW_OP(op, req, true);
	c = eng_calloc(1, sizeof(*c));
	op->ctx = c;
	op->free_fn = store_ctx_free;
	CHECK(op, srv_arg_uidset(&req->args, RPC_T_UIDSET, true, &c->set,
				 NULL));
	CHECK(op, srv_arg_u64(&req->args, RPC_T_MODE, true, RPC_MODE_REMOVE,
			      &mode));
	c->mode = mode == RPC_MODE_SET ? ENG_STORE_SET :
		mode == RPC_MODE_ADD ? ENG_STORE_ADD : ENG_STORE_REMOVE;
	CHECK(op, srv_arg_u64(&req->args, RPC_T_FLAGS, false, ENG_F_ALL,
			      &flags));
	c->flags = (uint32_t)flags;
	CHECK(op, srv_arg_keywords(&req->args, &c->keywords, &c->n_keywords));
	CHECK(op, srv_arg_u64(&req->args, RPC_T_UNCHANGEDSINCE, false,
			      UINT64_MAX, &c->unchangedsince));
	srv_mbop_submit(op, store_run);
}

/* ---- COPY, MOVE ---- */

struct copy_ctx {
	eng_uidset set;
	char *dest;
	bool move;
};

static void copy_ctx_free(void *p)
{
	struct copy_ctx *c = p;

	eng_uidset_free(&c->set);
	free(c->dest);
	free(c);
}

static int copy_run(srv_mbop *op, eng_store *st, eng_mailbox *mb)
{
	struct copy_ctx *c = op->ctx;
	uint32_t *src = NULL, *dst = NULL;
	eng_mailbox dest;
	size_t n = 0;
	int err;

	if ((err = eng_mailbox_get(st, c->dest, &dest)) != 0)
		return err;
	err = eng_message_copy(st, mb->id, &c->set, dest.id, c->move, &src,
			       &dst, &n);
	if (err == 0) {
		uint32_t max_dst = 0;
		eng_mailbox after;

		rpc_put_u64(srv_mbop_part(op, 1, 11), RPC_T_UIDVALIDITY,
			    dest.uidvalidity);
		srv_mbop_put_uids(op, RPC_T_UIDS, src, n);
		srv_mbop_put_uids(op, RPC_T_DEST_UIDS, dst, n);
		for (size_t i = 0; i < n; i++)
			max_dst = dst[i] > max_dst ? dst[i] : max_dst;
		/* The new MODSEQs, for the events; the change is committed
		 * already, so a failure here only makes the events vaguer. */
		if (n > 0 && eng_mailbox_get(st, dest.name, &after) == 0) {
			srv_mbop_event(op, SRV_EV_EXISTS, dest.name, max_dst,
				       after.highestmodseq);
			eng_mailbox_clear(&after);
		}
		if (n > 0 && c->move &&
		    eng_mailbox_get(st, mb->name, &after) == 0) {
			srv_mbop_event(op, SRV_EV_EXPUNGE, mb->name,
				       src[n - 1], after.highestmodseq);
			eng_mailbox_clear(&after);
		}
	}
	free(src);
	free(dst);
	eng_mailbox_clear(&dest);
	return err;
}

static void copy_or_move(srv_req *req, bool move)
{
	struct copy_ctx *c;
	srv_mbop *op;

	NEW_OP(op, req, true);
	c = eng_calloc(1, sizeof(*c));
	op->ctx = c;
	op->free_fn = copy_ctx_free;
	c->move = move;
	CHECK(op, srv_arg_uidset(&req->args, RPC_T_UIDSET, true, &c->set,
				 NULL));
	CHECK(op, srv_arg_mailbox(&req->args, RPC_T_DEST_MAILBOX, &c->dest));
	srv_mbop_submit(op, copy_run);
}

void srv_op_copy(srv_req *req)
{
	copy_or_move(req, false);
}

void srv_op_move(srv_req *req)
{
	copy_or_move(req, true);
}

/* ---- EXPUNGE ---- */

static int expunge_run(srv_mbop *op, eng_store *st, eng_mailbox *mb)
{
	struct meta_ctx *c = op->ctx;
	uint32_t *uids = NULL;
	eng_mailbox after;
	size_t n = 0;
	int err;

	/* mb was read on the alias's queue: the mailbox's HIGHESTMODSEQ just
	 * before this EXPUNGE, as for STORE (docs/rpc.md). */
	rpc_put_u64(srv_mbop_part(op, 1, 11), RPC_T_PRIOR_MODSEQ,
		    mb->highestmodseq);
	if ((err = eng_expunge(st, mb->id, c->has_set ? &c->set : NULL, &uids,
			       &n)) != 0)
		return err;
	/* Committed: report it even if the read-back fails. */
	if (eng_mailbox_get(st, mb->name, &after) == 0) {
		rpc_put_u64(srv_mbop_part(op, 1, 11), RPC_T_HIGHESTMODSEQ,
			    after.highestmodseq);
		if (n > 0)
			srv_mbop_event(op, SRV_EV_EXPUNGE, mb->name,
				       uids[n - 1], after.highestmodseq);
		eng_mailbox_clear(&after);
	} else {
		rpc_put_u64(srv_mbop_part(op, 1, 11), RPC_T_HIGHESTMODSEQ,
			    mb->highestmodseq);
		if (n > 0)
			srv_mbop_event(op, SRV_EV_EXPUNGE, mb->name,
				       uids[n - 1], 0);
	}
	srv_mbop_put_uids(op, RPC_T_UIDS, uids, n);
	free(uids);
	return 0;
}

void srv_op_expunge(srv_req *req)
{
	struct meta_ctx *c;
	srv_mbop *op;

	NEW_OP(op, req, true);
	c = eng_calloc(1, sizeof(*c));
	op->ctx = c;
	op->free_fn = meta_ctx_free;
	CHECK(op, srv_arg_uidset(&req->args, RPC_T_UIDSET, false, &c->set,
				 &c->has_set));
	srv_mbop_submit(op, expunge_run);
}
