/*
 * SQLite memory methods that unlock the page buffer SQLCipher frees
 * without munlock, and keep big blocks for reuse while asked (see
 * sqlite_mem.c). Engine-internal but for eng_sqlite_mem_keep_big.
 */
#ifndef ENG_SQLITE_MEM_H
#define ENG_SQLITE_MEM_H

#include <stdbool.h>

/* Once per process, before SQLite's first use (eng_store_global_init);
 * false if SQLite was in use already (its defaults stay). */
bool eng_sqlite_mem_install(void);
/* Big blocks: requests of MIN..BYTES get BYTES while kept; at most KEEP
 * freed ones are kept. BYTES holds a chunk's blob however badly it
 * compressed. MIN: with 128 KiB half the refaults stayed (blobs of 64-128
 * KiB freed on a top already holding as much); a connection opened while
 * blocks are kept gets BYTES for its page cache's first block (about 90
 * KiB) until it closes. */
#define ENG_SQLITE_BIG_MIN_BYTES (64 * 1024)
#define ENG_SQLITE_BIG_BYTES (320 * 1024)
#define ENG_SQLITE_BIG_KEEP 4

/* While calls with true outnumber those with false, SQLite's big blocks
 * (a chunk's blob) are kept for reuse (sqlite_mem.c); the last false wipes
 * and frees them. sqlited keeps them while a FETCH_BODIES stream runs. */
void eng_sqlite_mem_keep_big(bool on);
/* Big blocks kept now (tests). */
unsigned eng_sqlite_mem_big_kept(void);

#endif
