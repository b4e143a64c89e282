/*
 * FETCH_BODIES' record stream: the head codec and the splitter
 * (rpc_bodies.h). No allocation; every length comes from a checked head.
 */
#include "rpc_bodies.h"

#include "eng_error.h"

#include <string.h>

static void put_be32(uint8_t *p, uint32_t v)
{
	p[0] = (uint8_t)(v >> 24);
	p[1] = (uint8_t)(v >> 16);
	p[2] = (uint8_t)(v >> 8);
	p[3] = (uint8_t)v;
}

static uint32_t get_be32(const uint8_t *p)
{
	return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 |
		(uint32_t)p[2] << 8 | p[3];
}

void rpc_bodies_head_put(uint8_t out[RPC_BODIES_HEAD_BYTES],
			 const rpc_bodies_head *h)
{
	uint64_t size = h->gone ? 0 : h->size;

	put_be32(out, h->uid);
	put_be32(out + 4, h->gone ? RPC_BODIES_GONE : RPC_BODIES_PRESENT);
	put_be32(out + 8, (uint32_t)(size >> 32));
	put_be32(out + 12, (uint32_t)size);
}

int rpc_bodies_head_parse(const uint8_t in[RPC_BODIES_HEAD_BYTES],
			  rpc_bodies_head *h)
{
	uint32_t status = get_be32(in + 4);

	h->uid = get_be32(in);
	h->size = (uint64_t)get_be32(in + 8) << 32 | get_be32(in + 12);
	h->gone = status == RPC_BODIES_GONE;
	if (h->uid == 0 ||
	    (status != RPC_BODIES_PRESENT && status != RPC_BODIES_GONE) ||
	    (h->gone && h->size != 0))
		return ENG_EMALFORMED;
	return 0;
}

void rpc_bodies_reader_init(rpc_bodies_reader *rd)
{
	memset(rd, 0, sizeof(*rd));
}

int rpc_bodies_step(rpc_bodies_reader *rd, const uint8_t *in, size_t n,
		    size_t max_data, uint32_t expect_uid, size_t *used_r,
		    rpc_bodies_ev *ev)
{
	size_t take;

	memset(ev, 0, sizeof(*ev));
	*used_r = 0;
	if (rd->in_body) {
		ev->head = rd->cur;
		if (n == 0)
			return 0;    /* NEED */
		take = n < rd->left ? n : (size_t)rd->left;
		if (max_data > 0 && take > max_data)
			take = max_data;
		rd->left -= take;
		ev->kind = RPC_BODIES_DATA;
		ev->data = in;
		ev->len = take;
		ev->rec_end = rd->left == 0;
		rd->in_body = rd->left > 0;
		*used_r = take;
		return 0;
	}
	take = RPC_BODIES_HEAD_BYTES - rd->head_len;
	if (take > n)
		take = n;
	memcpy(rd->head_buf + rd->head_len, in, take);
	rd->head_len += take;
	*used_r = take;
	if (rd->head_len < RPC_BODIES_HEAD_BYTES)
		return 0;            /* NEED */
	rd->head_len = 0;
	if (rpc_bodies_head_parse(rd->head_buf, &rd->cur) != 0 ||
	    rd->cur.uid != expect_uid)
		return ENG_EMALFORMED;
	rd->records++;
	rd->left = rd->cur.size;
	rd->in_body = rd->left > 0;
	ev->kind = RPC_BODIES_HEAD;
	ev->head = rd->cur;
	ev->rec_end = !rd->in_body;
	return 0;
}

bool rpc_bodies_at_boundary(const rpc_bodies_reader *rd)
{
	return !rd->in_body && rd->head_len == 0;
}
