/*
 * The body stream of FETCH_BODIES (docs/rpc.md): one record per UID asked,
 * in the request's order, each a 16-byte head and then the message's
 * bytes. I/O-free: sqlited writes heads with rpc_bodies_head_put, a
 * frontend splits the DATA it receives with an rpc_bodies_reader, fed any
 * split of the stream (a head may straddle two DATA frames, a DATA frame
 * may hold many records).
 *
 * Head (big-endian): UID u32 (not 0), status u32 (enum rpc_bodies_status;
 * anything else is ENG_EMALFORMED), size u64 (the bytes that follow; 0 for
 * GONE, else ENG_EMALFORMED). The reader checks each head against the UID
 * the caller expects (the request's list) before it passes any byte on,
 * and never allocates: it holds at most one head.
 */
#ifndef RPC_BODIES_H
#define RPC_BODIES_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "rpc_proto.h"

typedef struct rpc_bodies_head {
	uint32_t uid;
	bool gone;                   /* RPC_BODIES_GONE: no bytes follow */
	uint64_t size;
} rpc_bodies_head;

void rpc_bodies_head_put(uint8_t out[RPC_BODIES_HEAD_BYTES],
			 const rpc_bodies_head *h);
/* 0, or ENG_EMALFORMED for a UID 0, an unknown status, a GONE with bytes. */
int rpc_bodies_head_parse(const uint8_t in[RPC_BODIES_HEAD_BYTES],
			  rpc_bodies_head *h);

enum rpc_bodies_event {
	RPC_BODIES_NEED = 0,         /* every byte given was taken: feed more */
	RPC_BODIES_HEAD,             /* a record begins: ev->head */
	RPC_BODIES_DATA,             /* ev->data, ev->len of the record's bytes */
};

typedef struct rpc_bodies_ev {
	enum rpc_bodies_event kind;
	rpc_bodies_head head;        /* HEAD: the record's (DATA: too) */
	const uint8_t *data;         /* DATA: points into the input */
	size_t len;
	bool rec_end;                /* HEAD or DATA: the record is complete */
} rpc_bodies_ev;

typedef struct rpc_bodies_reader {
	uint8_t head_buf[RPC_BODIES_HEAD_BYTES];
	size_t head_len;
	bool in_body;
	rpc_bodies_head cur;
	uint64_t left;               /* bytes of cur still to come */
	size_t records;              /* records begun */
} rpc_bodies_reader;

void rpc_bodies_reader_init(rpc_bodies_reader *rd);

/*
 * Takes at most one event from in[0..n): *used_r bytes are consumed (the
 * caller passes in + *used_r next time). A DATA event gives at most
 * max_data bytes (0: no bound). expect_uid is the UID the next record
 * must have (used only when a head completes). Returns 0 with ev filled
 * (NEED once everything given is consumed and no event is complete), or
 * ENG_EMALFORMED for a bad head or a head of another UID.
 */
int rpc_bodies_step(rpc_bodies_reader *rd, const uint8_t *in, size_t n,
		    size_t max_data, uint32_t expect_uid, size_t *used_r,
		    rpc_bodies_ev *ev);

/* No record is half read (where the stream may end). */
bool rpc_bodies_at_boundary(const rpc_bodies_reader *rd);

#endif
