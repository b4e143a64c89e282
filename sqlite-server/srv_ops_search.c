/*
 * SEARCH, SORT and THREAD (docs/rpc.md, The search program).
 *
 * The QUERY group tree is decoded on the loop thread into an eng_query
 * (engine/search.h), with its own bounds checked before the engine sees
 * it: at most SRV_QUERY_MAX_DEPTH levels (the top QUERY is level 1; the
 * codec's group nesting limit already enforces as much, this keeps the
 * recursion bounded whatever limits the core uses) and at most
 * ENG_QUERY_MAX_NODES nodes, counted as they are decoded so a wide tree
 * costs no more than the bound. The engine enforces its own limits again.
 */
#include "srv_ops_mbox.h"
#include "eng_error.h"
#include "search.h"

#include <stdlib.h>
#include <string.h>

#define SRV_QUERY_MAX_DEPTH 16
#define SRV_SORT_MAX_KEYS 16
/* A THREAD_TREE goes in one bytes field of one frame. */
#define SRV_THREAD_TREE_MAX_BYTES (SRV_PART_MAX_BYTES)

/* Wire numbers (enum rpc_query_kind, pinned by docs/rpc.md) to the
 * engine's enum, which may be reordered. */
static const enum eng_query_kind query_kinds[] = {
	[RPC_Q_ALL] = ENG_Q_ALL, [RPC_Q_AND] = ENG_Q_AND,
	[RPC_Q_OR] = ENG_Q_OR, [RPC_Q_NOT] = ENG_Q_NOT,
	[RPC_Q_FLAG] = ENG_Q_FLAG, [RPC_Q_UNFLAG] = ENG_Q_UNFLAG,
	[RPC_Q_KEYWORD] = ENG_Q_KEYWORD, [RPC_Q_UNKEYWORD] = ENG_Q_UNKEYWORD,
	[RPC_Q_UID] = ENG_Q_UID, [RPC_Q_SEQ] = ENG_Q_SEQ,
	[RPC_Q_BEFORE] = ENG_Q_BEFORE, [RPC_Q_ON] = ENG_Q_ON,
	[RPC_Q_SINCE] = ENG_Q_SINCE, [RPC_Q_SENTBEFORE] = ENG_Q_SENTBEFORE,
	[RPC_Q_SENTON] = ENG_Q_SENTON, [RPC_Q_SENTSINCE] = ENG_Q_SENTSINCE,
	[RPC_Q_SAVEDBEFORE] = ENG_Q_SAVEDBEFORE,
	[RPC_Q_SAVEDON] = ENG_Q_SAVEDON, [RPC_Q_SAVEDSINCE] = ENG_Q_SAVEDSINCE,
	[RPC_Q_SAVEDATESUPPORTED] = ENG_Q_SAVEDATESUPPORTED,
	[RPC_Q_LARGER] = ENG_Q_LARGER, [RPC_Q_SMALLER] = ENG_Q_SMALLER,
	[RPC_Q_HEADER] = ENG_Q_HEADER, [RPC_Q_BODY] = ENG_Q_BODY,
	[RPC_Q_TEXT] = ENG_Q_TEXT, [RPC_Q_MODSEQ] = ENG_Q_MODSEQ,
	[RPC_Q_OLDER] = ENG_Q_OLDER, [RPC_Q_YOUNGER] = ENG_Q_YOUNGER,
	[RPC_Q_EMAILID] = ENG_Q_EMAILID, [RPC_Q_THREADID] = ENG_Q_THREADID,
};

static const enum eng_sort_field sort_fields[] = {
	[RPC_SORT_ARRIVAL] = ENG_SORT_ARRIVAL, [RPC_SORT_CC] = ENG_SORT_CC,
	[RPC_SORT_DATE] = ENG_SORT_DATE, [RPC_SORT_FROM] = ENG_SORT_FROM,
	[RPC_SORT_SIZE] = ENG_SORT_SIZE, [RPC_SORT_SUBJECT] = ENG_SORT_SUBJECT,
	[RPC_SORT_TO] = ENG_SORT_TO, [RPC_SORT_DISPLAYFROM] = ENG_SORT_DISPLAYFROM,
	[RPC_SORT_DISPLAYTO] = ENG_SORT_DISPLAYTO,
};

struct qdecode {
	size_t nodes;
	bool has_seq_map;
};

static int query_decode(struct qdecode *d, const rpc_view *v, unsigned depth,
			eng_query **q_r);

/* A text field of a node (may be empty: "" matches every message that
 * has the header, RFC 3501). */
static int node_text(const rpc_view *v, uint32_t tag, char **s_r)
{
	return srv_arg_str(v, tag, true, true, RPC_MAX_FRAME_BYTES, s_r);
}

static int node_number(const rpc_view *v, bool nonnegative, int64_t *n_r)
{
	int err = rpc_get_s64(v, RPC_T_NUMBER, n_r);

	if (err == 0 && nonnegative && *n_r < 0)
		return ENG_EINVAL;
	return err;
}

static int decode_children(struct qdecode *d, const rpc_view *v,
			   unsigned depth, eng_query *parent)
{
	const rpc_field *f;
	rpc_iter it;
	int err;

	rpc_iter_init(&it, v);
	while ((f = rpc_iter_next(&it, RPC_T_QUERY)) != NULL) {
		rpc_view sub;
		eng_query *child;

		if (f->type != RPC_W_GROUP)
			return RPC_EFIELDTYPE;
		sub = rpc_field_group(f);
		if ((err = query_decode(d, &sub, depth + 1, &child)) != 0)
			return err;
		eng_query_add(parent, child);
	}
	return 0;
}

static int query_decode(struct qdecode *d, const rpc_view *v, unsigned depth,
			eng_query **q_r)
{
	eng_query *q = NULL;
	eng_uidset set = { 0 };
	char *field = NULL, *text = NULL;
	uint64_t kind_wire, flag;
	int64_t number;
	int err;

	*q_r = NULL;
	if (depth > SRV_QUERY_MAX_DEPTH || ++d->nodes > ENG_QUERY_MAX_NODES)
		return ENG_ELIMIT;
	if ((err = rpc_get_u64(v, RPC_T_Q_KIND, &kind_wire)) != 0)
		return err;
	if (kind_wire >= sizeof(query_kinds) / sizeof(query_kinds[0]))
		return ENG_EINVAL;
	switch (kind_wire) {
	case RPC_Q_ALL:
	case RPC_Q_SAVEDATESUPPORTED:
		q = eng_query_new(query_kinds[kind_wire]);
		break;
	case RPC_Q_AND:
	case RPC_Q_OR:
		q = eng_query_new(query_kinds[kind_wire]);
		err = decode_children(d, v, depth, q);
		break;
	case RPC_Q_NOT: {
		rpc_view sub;
		eng_query *child;

		if (rpc_count(v, RPC_T_QUERY) != 1)
			return rpc_count(v, RPC_T_QUERY) == 0 ? RPC_EMISSING :
				ENG_EINVAL;
		if ((err = rpc_get_group(v, RPC_T_QUERY, &sub)) != 0)
			return err;
		if ((err = query_decode(d, &sub, depth + 1, &child)) != 0)
			return err;
		q = eng_query_new_not(child);
		break;
	}
	case RPC_Q_FLAG:
	case RPC_Q_UNFLAG:
		if ((err = rpc_get_u64(v, RPC_T_FLAGS, &flag)) != 0)
			return err;
		/* Exactly one flag bit. */
		if (flag == 0 || (flag & (flag - 1)) != 0 || flag > ENG_F_ALL)
			return ENG_EINVAL;
		q = eng_query_new_flag((uint32_t)flag, kind_wire == RPC_Q_FLAG);
		break;
	case RPC_Q_KEYWORD:
	case RPC_Q_UNKEYWORD:
		if ((err = srv_arg_str(v, RPC_T_TEXT, true, false,
				       ENG_KEYWORD_MAX, &text)) != 0)
			return err;
		q = eng_query_new_keyword(text, kind_wire == RPC_Q_KEYWORD);
		break;
	case RPC_Q_SEQ:
		if (!d->has_seq_map)
			return RPC_EMISSING;
		/* fall through */
	case RPC_Q_UID:
		err = srv_arg_uidset(v, RPC_T_UIDSET, true, &set, NULL);
		if (err == 0)
			q = eng_query_new_set(query_kinds[kind_wire], &set);
		eng_uidset_free(&set);
		break;
	case RPC_Q_HEADER:
		if ((err = srv_arg_str(v, RPC_T_FIELD, true, false, 256,
				       &field)) != 0)
			return err;
		if (strchr(field, ':') != NULL) {
			free(field);
			return ENG_EINVAL;
		}
		if ((err = node_text(v, RPC_T_TEXT, &text)) == 0)
			q = eng_query_new_header(field, text);
		break;
	case RPC_Q_BODY:
	case RPC_Q_TEXT:
		if ((err = node_text(v, RPC_T_TEXT, &text)) == 0)
			q = eng_query_new_text(query_kinds[kind_wire], text);
		break;
	default: {
		/* The number keys: dates may be before 1970, the rest not. */
		bool nonnegative = kind_wire == RPC_Q_LARGER ||
			kind_wire == RPC_Q_SMALLER ||
			kind_wire == RPC_Q_MODSEQ ||
			kind_wire == RPC_Q_OLDER || kind_wire == RPC_Q_YOUNGER;

		if ((err = node_number(v, nonnegative, &number)) == 0)
			q = eng_query_new_number(query_kinds[kind_wire],
						 number);
		break;
	}
	}
	free(field);
	free(text);
	if (err != 0) {
		eng_query_free(&q);
		return err;
	}
	*q_r = q;
	return 0;
}

/* ---- the requests ---- */

struct search_ctx {
	eng_query *query;            /* NULL = ALL */
	uint32_t *seq_map;
	size_t n_seq_map;
	eng_sort_key sort[SRV_SORT_MAX_KEYS];
	size_t n_sort;
	enum eng_thread_algorithm algorithm;
};

static void search_ctx_free(void *p)
{
	struct search_ctx *c = p;

	eng_query_free(&c->query);
	free(c->seq_map);
	free(c);
}

/* The fields SEARCH, SORT and THREAD share: QUERY?, SEQ_MAP?. */
static int search_args(const rpc_view *args, struct search_ctx *c)
{
	struct qdecode d = { 0 };
	const uint8_t *p;
	rpc_view sub;
	size_t n;
	int err;

	err = rpc_get_uids(args, RPC_T_SEQ_MAP, &p, &n);
	if (err == 0) {
		c->seq_map = eng_malloc((n > 0 ? n : 1) * sizeof(uint32_t));
		c->n_seq_map = n;
		for (size_t i = 0; i < n; i++) {
			c->seq_map[i] = rpc_uids_at(p, i);
			/* A view of a mailbox: UIDs strictly increasing. */
			if (c->seq_map[i] == 0 ||
			    (i > 0 && c->seq_map[i] <= c->seq_map[i - 1]))
				return ENG_EINVAL;
		}
		d.has_seq_map = true;
	} else if (err != RPC_EMISSING) {
		return err;
	}
	err = rpc_get_group(args, RPC_T_QUERY, &sub);
	if (err == RPC_EMISSING)
		return 0;
	if (err != 0)
		return err;
	return query_decode(&d, &sub, 1, &c->query);
}

static int search_run(srv_mbop *op, eng_store *st, eng_mailbox *mb)
{
	struct search_ctx *c = op->ctx;
	uint32_t *uids = NULL;
	uint64_t modseq = 0;
	size_t n = 0;
	int err;

	err = eng_search(st, mb->id, c->query, c->sort, c->n_sort, c->seq_map,
			 c->n_seq_map, &uids, &n, &modseq);
	if (err != 0)
		return err;
	if (modseq > 0)
		rpc_put_u64(srv_mbop_part(op, 1, 11), RPC_T_MODSEQ, modseq);
	srv_mbop_put_uids(op, RPC_T_UIDS, uids, n);
	free(uids);
	return 0;
}

static srv_mbop *search_new(srv_req *req)
{
	struct search_ctx *c;
	srv_mbop *op;
	int err;

	if ((op = srv_mbop_new(req, true, &err)) == NULL) {
		srv_fail(req, err);
		return NULL;
	}
	c = eng_calloc(1, sizeof(*c));
	op->ctx = c;
	op->free_fn = search_ctx_free;
	if ((err = search_args(&req->args, c)) != 0) {
		srv_mbop_fail(op, err);
		return NULL;
	}
	return op;
}

void srv_op_search(srv_req *req)
{
	srv_mbop *op = search_new(req);

	if (op != NULL)
		srv_mbop_submit(op, search_run);
}

void srv_op_sort(srv_req *req)
{
	srv_mbop *op = search_new(req);
	struct search_ctx *c;
	const rpc_field *f;
	rpc_iter it;

	if (op == NULL)
		return;
	c = op->ctx;
	rpc_iter_init(&it, &req->args);
	while ((f = rpc_iter_next(&it, RPC_T_SORT_KEY)) != NULL) {
		uint64_t field = f->u & ~(uint64_t)RPC_SORT_REVERSE;

		if (f->type != RPC_W_VARINT)
			CHECK(op, RPC_EFIELDTYPE);
		if (field >= sizeof(sort_fields) / sizeof(sort_fields[0]) ||
		    f->u > (RPC_SORT_REVERSE | field))
			CHECK(op, ENG_EINVAL);
		if (c->n_sort == SRV_SORT_MAX_KEYS)
			CHECK(op, ENG_ELIMIT);
		c->sort[c->n_sort].field = sort_fields[field];
		c->sort[c->n_sort].reverse = (f->u & RPC_SORT_REVERSE) != 0;
		c->n_sort++;
	}
	if (c->n_sort == 0)
		CHECK(op, RPC_EMISSING);
	srv_mbop_submit(op, search_run);
}

/* Writes the tree in preorder without recursion: a reply chain may be
 * as deep as the mailbox is large. */
static void thread_tree_write(const eng_thread_node *root, eng_buf *out)
{
	const eng_thread_node **stack;
	size_t n = 0, cap = 64;

	if (root == NULL) {
		rpc_thread_tree_put(out, 0, 0);
		return;
	}
	stack = eng_malloc(cap * sizeof(*stack));
	stack[n++] = root;
	while (n > 0) {
		const eng_thread_node *node = stack[--n];

		rpc_thread_tree_put(out, node->uid, (uint32_t)node->n_children);
		if (n + node->n_children > cap) {
			while (n + node->n_children > cap)
				cap *= 2;
			stack = eng_realloc(stack, cap * sizeof(*stack));
		}
		/* Children pushed last-first so the first comes out next. */
		for (size_t i = node->n_children; i > 0; i--)
			stack[n++] = node->children[i - 1];
	}
	free(stack);
}

static int thread_run(srv_mbop *op, eng_store *st, eng_mailbox *mb)
{
	struct search_ctx *c = op->ctx;
	eng_thread_node *tree = NULL;
	eng_buf out = ENG_BUF_INIT;
	int err;

	err = eng_thread(st, mb->id, c->algorithm, c->query, c->seq_map,
			 c->n_seq_map, &tree);
	if (err != 0)
		return err;
	thread_tree_write(tree, &out);
	eng_thread_free(&tree);
	if (out.len > SRV_THREAD_TREE_MAX_BYTES)
		err = ENG_ELIMIT;
	else
		rpc_put_bytes(srv_mbop_part(op, 1, out.len + 16),
			      RPC_T_THREAD_TREE, out.data, out.len);
	eng_buf_free(&out);
	return err;
}

void srv_op_thread(srv_req *req)
{
	srv_mbop *op = search_new(req);
	uint64_t algorithm = 0;

	if (op == NULL)
		return;
	CHECK(op, srv_arg_u64(&req->args, RPC_T_ALGORITHM, true,
			      RPC_THREAD_REFERENCES, &algorithm));
	((struct search_ctx *)op->ctx)->algorithm =
		algorithm == RPC_THREAD_ORDEREDSUBJECT ?
		ENG_THREAD_ORDEREDSUBJECT : ENG_THREAD_REFERENCES;
	srv_mbop_submit(op, thread_run);
}
