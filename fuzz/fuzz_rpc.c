/*
 * The RPC codec (sqlite-server/rpc_codec.h) under arbitrary bytes.
 *
 * The first input byte chooses a split point and the limits; the rest is a
 * byte stream from a peer. It goes through two frame readers, one fed the
 * whole stream and one fed it in two pieces: both must yield the same
 * frames and stop with the same error (a reader's result does not depend
 * on how the input was cut). Every frame must write back to its own bytes,
 * every payload that decodes must re-encode to the very same bytes (the
 * encoding is canonical), and the getters must run over it without reading
 * out of bounds. The whole input is also decoded as a bare payload. Any
 * broken property abort()s.
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "eng_error.h"
#include "rpc_codec.h"
#include "rpc_proto.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define MAX_FRAMES 256

typedef struct seen {
	rpc_frame f;                 /* payload points into a private copy */
} seen;

typedef struct run {
	seen frames[MAX_FRAMES];
	size_t n;
	int err;
} run;

static void check(int cond)
{
	if (!cond)
		abort();
}

static void roundtrip_payload(const uint8_t *p, size_t len,
			      const rpc_limits *lim)
{
	rpc_msg msg = RPC_MSG_INIT;
	rpc_view root, sub;
	eng_buf out = ENG_BUF_INIT;
	eng_uidset set = { 0 };
	rpc_iter it;
	const rpc_field *f;
	const uint8_t *bp;
	size_t bl, total = 0;
	uint64_t u;
	char *s = NULL;

	if (rpc_decode(p, len, lim, &msg, &root) != 0) {
		rpc_msg_clear(&msg);
		return;
	}
	check(msg.n <= lim->max_fields);
	rpc_encode_view(&out, &root);
	check(out.len == len && (len == 0 || memcmp(out.data, p, len) == 0));

	/* Walk every level; spans must tile each level exactly. */
	rpc_iter_init(&it, &root);
	while ((f = rpc_iter_next(&it, 0)) != NULL) {
		total += f->span;
		check(f->tag != 0 && f->type <= RPC_W_GROUP);
		if (f->type == RPC_W_GROUP) {
			rpc_view g = rpc_field_group(f);
			rpc_iter gi;
			size_t gt = 0;
			const rpc_field *gf;

			rpc_iter_init(&gi, &g);
			while ((gf = rpc_iter_next(&gi, 0)) != NULL)
				gt += gf->span;
			check(gt == g.n);
		}
	}
	check(total == root.n);

	/* Getters over whatever is there. */
	(void)rpc_get_u64(&root, RPC_T_UID, &u);
	(void)rpc_get_bytes(&root, RPC_T_MAILBOX, &bp, &bl);
	if (rpc_get_str(&root, RPC_T_ALIAS, &s) == 0)
		free(s);
	(void)rpc_get_uidset(&root, RPC_T_UIDSET, 1024, &set);
	eng_uidset_free(&set);
	if (rpc_get_uids(&root, RPC_T_UIDS, &bp, &bl) == 0) {
		for (size_t i = 0; i < bl; i++)
			u += rpc_uids_at(bp, i);
	}
	if (rpc_get_bytes(&root, RPC_T_THREAD_TREE, &bp, &bl) == 0) {
		rpc_tnode *nodes;
		size_t nn;

		if (rpc_thread_tree_parse(bp, bl, &nodes, &nn) == 0) {
			eng_buf tree = ENG_BUF_INIT;

			for (size_t i = 0; i < nn; i++)
				rpc_thread_tree_put(&tree, nodes[i].uid,
						    nodes[i].n_children);
			check(tree.len == bl && memcmp(tree.data, bp, bl) == 0);
			eng_buf_free(&tree);
			free(nodes);
		}
	}
	if (rpc_get_group(&root, RPC_T_QUERY, &sub) == 0)
		(void)rpc_count(&sub, RPC_T_QUERY);

	eng_buf_free(&out);
	rpc_msg_clear(&msg);
}

/* Feeds the pieces; keeps copies of the frames and the final result. */
static void read_all(const uint8_t *a, size_t alen, const uint8_t *b,
		     size_t blen, const rpc_limits *lim, run *out)
{
	rpc_reader *r = rpc_reader_new(lim);
	const uint8_t *piece[2] = { a, b };
	size_t plen[2] = { alen, blen };

	out->n = 0;
	out->err = 0;
	for (int k = 0; k < 2 && out->err == 0; k++) {
		size_t off = 0;

		while (off < plen[k]) {
			rpc_frame f;
			size_t used = 0;
			int ret = rpc_reader_feed(r, piece[k] + off,
						  plen[k] - off, &used, &f);

			check(used <= plen[k] - off);
			off += used;
			if (ret < 0) {
				check(ret >= RPC_ERR_MIN);
				out->err = ret;
				break;
			}
			if (ret == 0) {
				check(off == plen[k]);
				break;
			}
			if (out->n < MAX_FRAMES) {
				uint8_t *copy = malloc(f.payload_len + 1);

				check(copy != NULL);
				memcpy(copy, f.payload, f.payload_len);
				out->frames[out->n].f = f;
				out->frames[out->n].f.payload = copy;
				out->n++;
			}
		}
	}
	rpc_reader_free(&r);
}

static void free_run(run *r)
{
	for (size_t i = 0; i < r->n; i++)
		free((void *)r->frames[i].f.payload);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	static run whole, split;
	rpc_limits lim;
	size_t cut;

	if (size < 1)
		return 0;
	if (data[0] & 0x80)
		rpc_limits_preauth(&lim);
	else
		rpc_limits_default(&lim);
	/* Small field and depth limits now and then, to reach those paths. */
	if ((data[0] & 0x60) == 0x60) {
		lim.max_fields = 8;
		lim.max_depth = 3;
		lim.max_bytes_field = 16;
	}
	data++;
	size--;
	cut = size == 0 ? 0 : ((size_t)(data[-1] & 0x1f) * size) / 31;

	read_all(data, size, NULL, 0, &lim, &whole);
	read_all(data, cut, data + cut, size - cut, &lim, &split);
	check(whole.n == split.n && whole.err == split.err);
	for (size_t i = 0; i < whole.n; i++) {
		const rpc_frame *a = &whole.frames[i].f, *b = &split.frames[i].f;
		eng_buf out = ENG_BUF_INIT;

		check(a->kind == b->kind && a->flags == b->flags &&
		      a->opcode == b->opcode && a->request_id == b->request_id &&
		      a->payload_len == b->payload_len &&
		      memcmp(a->payload, b->payload, a->payload_len) == 0);
		/* A frame writes back to the bytes it was read from. */
		check(rpc_frame_write(&out, a, &lim) == 0);
		check(out.len == RPC_HEADER_BYTES + a->payload_len);
		eng_buf_free(&out);
		if (a->kind != RPC_K_DATA)
			roundtrip_payload(a->payload, a->payload_len, &lim);
	}
	/* Frames are consecutive: what they cover is a prefix of the input. */
	{
		size_t off = 0;

		for (size_t i = 0; i < whole.n && i < MAX_FRAMES; i++) {
			eng_buf out = ENG_BUF_INIT;

			rpc_frame_write(&out, &whole.frames[i].f, &lim);
			check(off + out.len <= size &&
			      memcmp(data + off, out.data, out.len) == 0);
			off += out.len;
			eng_buf_free(&out);
		}
	}
	free_run(&whole);
	free_run(&split);

	roundtrip_payload(data, size, &lim);
	return 0;
}
