/*
 * Piece buffers kept for reuse while body streams run.
 *
 * A FETCH_BODIES or FETCH_BODY stream (srv_ops_body.c) reads its pieces
 * (up to RPC_MAX_CHUNK_BYTES each) on pool threads and sends each as one
 * DATA frame built in place in front of it (a FETCH_BODY's first piece
 * with its RESPONSE frame too): the buffer itself goes to the socket and
 * comes back here when written (srv_net_write.c). With sqlited's
 * malloc tuning (srv_malloc.h: arena tops given back past 256 KiB) a
 * fresh 256 KiB block per piece made an arena give its top back and fault
 * it in again for every piece; kept buffers are not.
 *
 * Rules:
 *  - a buffer is SRV_BUFPOOL_BYTES: an RPC frame header and a chunk;
 *  - srv_bufpool_put wipes the bytes the buffer was used for (used), so
 *    a kept buffer holds no message bytes, and neither does one freed;
 *  - buffers are kept only while a stream holds the pool (hold/unhold):
 *    at most SRV_BUFPOOL_KEEP_PER_HOLD per holder and SRV_BUFPOOL_KEEP in
 *    all; when the last holder lets go every kept buffer is freed, and a
 *    buffer given back with no holder is freed at once, so nothing is
 *    kept at rest (bench/imap.sh's idle memory);
 *  - thread-safe: pool threads take, the loop gives back.
 */
#ifndef SRV_BUFPOOL_H
#define SRV_BUFPOOL_H

#include "rpc_codec.h"

#include <pthread.h>
#include <stddef.h>
#include <stdint.h>

#define SRV_BUFPOOL_BYTES ((size_t)RPC_HEADER_BYTES + RPC_MAX_CHUNK_BYTES)
/* A stream has two pieces read (its slots) and up to two (its window,
 * 512 KiB for the imapd) on their way to the socket. */
#define SRV_BUFPOOL_KEEP_PER_HOLD 4
#define SRV_BUFPOOL_KEEP 16

typedef struct srv_bufpool {
	pthread_mutex_t mu;
	uint8_t *kept[SRV_BUFPOOL_KEEP];
	size_t n_kept;
	size_t holders;
	size_t out;                  /* taken and not given back */
} srv_bufpool;

/* The process's pool of piece buffers (the body streams and srv_net). */
extern srv_bufpool srv_pieces;

void srv_bufpool_init(srv_bufpool *p);
/* Frees what is kept; the buffers out must have come back. */
void srv_bufpool_destroy(srv_bufpool *p);

/* A stream that will take buffers begins / ends. */
void srv_bufpool_hold(srv_bufpool *p);
void srv_bufpool_unhold(srv_bufpool *p);

/* A buffer of SRV_BUFPOOL_BYTES: a kept one or a new one. */
uint8_t *srv_bufpool_get(srv_bufpool *p);
/* Gives buf back (NULL: nothing): its first used bytes are wiped, then
 * it is kept or freed. */
void srv_bufpool_put(srv_bufpool *p, uint8_t *buf, size_t used);

/* Buffers kept, and taken and not given back (tests). */
void srv_bufpool_counts(srv_bufpool *p, size_t *kept_r, size_t *out_r);

#endif
