/*
 * Guarded memory for many small secrets of one size: sqlited's per-alias
 * keys (MK and the X25519 secret key, 64 bytes).
 *
 * A sodium_malloc of its own costs every alias two resident pages (its
 * read-only size page and a locked data page) and four mappings: 8 KiB
 * per unlocked alias, 4 MB for 500 (bench/README.md, "Memory at 1,000
 * IDLE connections over 500 users"). Here one sodium_malloc'd page (guard
 * pages around it, mlocked, out of core dumps, as eng_secret_new) holds
 * as many slots as fit; a page is freed (sodium_free: wiped, unlocked)
 * when its last slot is given back, and a slot given back is wiped at
 * once. What is lost against one allocation each: no guard page between
 * two aliases' keys of the same page (only fixed-size copies ever touch
 * them).
 *
 * Threads: every call may come from any thread (a pool thread opens and
 * closes aliases); one mutex.
 */
#ifndef SRV_KEYSLAB_H
#define SRV_KEYSLAB_H

#include <stddef.h>
#include <stdint.h>

typedef struct srv_keyslab srv_keyslab;

/* Slots of slot_bytes (rounded up to 16). NULL if slot_bytes is 0 or
 * more than fits in a page. */
srv_keyslab *srv_keyslab_new(size_t slot_bytes);
/* A zeroed slot; never NULL (out of memory aborts, as eng_secret_new). */
uint8_t *srv_keyslab_get(srv_keyslab *ks);
/* Wipes *slot and gives it back; *slot = NULL. NULL is a no-op. */
void srv_keyslab_put(srv_keyslab *ks, uint8_t **slot);
/* Slots in use and pages held (tests, statistics). */
size_t srv_keyslab_used(srv_keyslab *ks);
size_t srv_keyslab_pages(srv_keyslab *ks);
/* All slots must have been given back. */
void srv_keyslab_free(srv_keyslab **ks);

#endif
