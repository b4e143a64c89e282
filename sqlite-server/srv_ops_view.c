/*
 * MAILBOX_VIEW: what an IMAP SELECT needs of every message, and nothing
 * more: the UIDs as packed ranges (a mailbox whose UIDs run without gaps
 * is one range whatever its size), the flags as runs of equal flags, the
 * message count, and the keywords set in the mailbox (docs/rpc.md). For
 * 100,000 messages that is a few bytes where FETCH_META sends a MESSAGE
 * group of nine fields each; the imapd expands it into its sequence map.
 *
 * Rules: read only; runs on the alias's queue like every mailbox opcode
 * (srv_ops_mbox.h), so the count, the ranges and the runs are of one
 * state. Packed fields are split so that none passes SRV_PART_MAX_UIDS
 * entries and every part stays under the frame limits.
 */
#include "srv_ops_mbox.h"

#include "eng_error.h"
#include "rpc_codec.h"
#include "rpc_proto.h"

#include <stdlib.h>
#include <string.h>

srv_handler_fn srv_op_mailbox_view;

/* Keywords listed at most (the imapd's FLAGS list has the same bound). */
#define VIEW_KEYWORDS_MAX 1000

struct view_ctx {
	eng_buf ranges;              /* packed (lo, hi) big-endian u32 pairs */
	eng_buf runs;                /* packed (count, flags) pairs */
	uint64_t n;                  /* messages */
	uint32_t lo, hi;             /* the range being built (n > 0) */
	uint32_t run_flags, run_len; /* the run being built (n > 0) */
	srv_mbop *op;
};

static void put_pair(eng_buf *b, uint32_t a, uint32_t z)
{
	uint8_t p[8] = {
		(uint8_t)(a >> 24), (uint8_t)(a >> 16), (uint8_t)(a >> 8), (uint8_t)a,
		(uint8_t)(z >> 24), (uint8_t)(z >> 16), (uint8_t)(z >> 8), (uint8_t)z,
	};

	eng_buf_append(b, p, sizeof(p));
}

static int view_cb(void *ctx, uint32_t uid, uint32_t flags)
{
	struct view_ctx *c = ctx;

	if (c->n > 0 && uid == c->hi + 1) {
		c->hi = uid;
	} else {
		if (c->n > 0)
			put_pair(&c->ranges, c->lo, c->hi);
		c->lo = c->hi = uid;
	}
	if (c->n > 0 && flags == c->run_flags && c->run_len < UINT32_MAX) {
		c->run_len++;
	} else {
		if (c->n > 0)
			put_pair(&c->runs, c->run_len, c->run_flags);
		c->run_flags = flags;
		c->run_len = 1;
	}
	c->n++;
	return 0;
}

static int keyword_cb(void *ctx, const char *name)
{
	struct view_ctx *c = ctx;

	rpc_put_str(srv_mbop_part(c->op, 1, strlen(name) + 8), RPC_T_KEYWORD,
		    name);
	return 0;
}

/* The packed pairs of b as fields of tag, SRV_PART_MAX_UIDS pairs each. */
static void put_packed(srv_mbop *op, uint32_t tag, const eng_buf *b)
{
	size_t max = 8 * (size_t)SRV_PART_MAX_UIDS;

	for (size_t off = 0; off < b->len; off += max) {
		size_t k = b->len - off < max ? b->len - off : max;

		rpc_put_bytes(srv_mbop_part(op, 1, k + 16), tag,
			      (const uint8_t *)b->data + off, k);
	}
}

static int view_run(srv_mbop *op, eng_store *st, eng_mailbox *mb)
{
	struct view_ctx c = { .ranges = ENG_BUF_INIT, .runs = ENG_BUF_INIT,
			      .op = op };
	int err = eng_mailbox_view(st, mb->id, view_cb, &c);

	if (err == 0 && c.n > 0) {
		put_pair(&c.ranges, c.lo, c.hi);
		put_pair(&c.runs, c.run_len, c.run_flags);
	}
	if (err == 0) {
		/* The scalars first: they belong in the first part. */
		rpc_put_u64(srv_mbop_part(op, 1, 11), RPC_T_MESSAGES, c.n);
		err = eng_mailbox_keywords(st, mb->id, VIEW_KEYWORDS_MAX,
					   keyword_cb, &c);
	}
	if (err == 0) {
		put_packed(op, RPC_T_UIDSET, &c.ranges);
		put_packed(op, RPC_T_FLAG_RUNS, &c.runs);
	}
	eng_buf_free(&c.ranges);
	eng_buf_free(&c.runs);
	return err;
}

void srv_op_mailbox_view(srv_req *req)
{
	srv_mbop *op;
	int err;

	if ((op = srv_mbop_new(req, true, &err)) == NULL) {
		srv_fail(req, err);
		return;
	}
	srv_mbop_submit(op, view_run);
}
