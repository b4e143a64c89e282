/*
 * FETCH_BODIES' record splitter (sqlite-server/rpc_bodies.h) under
 * arbitrary bytes. The first byte picks a cut point and a bound on the
 * bytes per DATA event; the rest is the stream, whose records must have
 * UIDs 1, 2, 3... It is fed once whole and once in two pieces: both runs
 * must give the same records, the same bytes and the same error, every
 * event must consume input (no loop), and no DATA may pass a head's size.
 * Any broken property abort()s.
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "eng_error.h"
#include "rpc_bodies.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

typedef struct result {
	size_t records;
	uint64_t bytes;
	uint32_t sum;                /* of the bytes passed on, position-weighted */
	int err;
	bool boundary;
} result;

static void check(int cond)
{
	if (!cond)
		abort();
}

static void feed(rpc_bodies_reader *rd, const uint8_t *p, size_t n,
		 size_t max_data, result *r)
{
	size_t off = 0;

	while (off < n && r->err == 0) {
		rpc_bodies_ev ev;
		size_t used;
		int err = rpc_bodies_step(rd, p + off, n - off, max_data,
					  (uint32_t)rd->records + 1, &used, &ev);

		if (err != 0) {
			r->err = err;
			return;
		}
		check(used > 0 && used <= n - off);
		off += used;
		if (ev.kind == RPC_BODIES_DATA) {
			check(ev.len > 0 && ev.len == used);
			check(max_data == 0 || ev.len <= max_data);
			for (size_t k = 0; k < ev.len; k++)
				r->sum = r->sum * 31u + ev.data[k];
			r->bytes += ev.len;
			check(ev.head.size >= ev.len);
		} else if (ev.kind == RPC_BODIES_HEAD) {
			check(ev.head.uid == rd->records);
			check(!ev.head.gone || ev.head.size == 0);
		}
	}
	r->records = rd->records;
	r->boundary = rpc_bodies_at_boundary(rd);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	rpc_bodies_reader a, b;
	result ra, rb;
	size_t cut, max_data;

	if (size < 1)
		return 0;
	cut = size > 1 ? (data[0] * 7u) % size : 0;
	max_data = data[0] & 0x80 ? (data[0] & 0x0f) + 1u : 0;
	data++;
	size--;
	if (cut > size)
		cut = size;
	memset(&ra, 0, sizeof(ra));
	memset(&rb, 0, sizeof(rb));
	rpc_bodies_reader_init(&a);
	rpc_bodies_reader_init(&b);
	feed(&a, data, size, max_data, &ra);
	feed(&b, data, cut, max_data, &rb);
	feed(&b, data + cut, size - cut, max_data, &rb);
	check(ra.err == rb.err);
	if (ra.err == 0) {
		check(ra.records == rb.records && ra.bytes == rb.bytes &&
		      ra.sum == rb.sum && ra.boundary == rb.boundary);
	}
	return 0;
}
