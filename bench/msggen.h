/*
 * msggen.h: the benchmarks' realistic message generator (see msggen.c).
 */
#ifndef SEALMAIL_BENCH_MSGGEN_H
#define SEALMAIL_BENCH_MSGGEN_H

#include <stddef.h>
#include <stdint.h>

/* One generated message: buf[0..len) (the buffer is reused and grows). */
struct msggen {
	char *buf;
	size_t len, cap;
	uint64_t index;
};

/* Restarts the sequence: the same seed gives the same messages. */
void msggen_seed(uint64_t seed);
/* The next message of the sequence, numbered i (used in its headers). */
void msggen_message(struct msggen *g, uint64_t i);

#endif
