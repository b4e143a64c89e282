/*
 * Guarded pages of fixed-size secret slots (srv_keyslab.h).
 *
 * Rules: a page is an eng_secret_new (sodium_malloc) allocation sized to
 * fill exactly one page after libsodium's canary, so it costs one locked
 * page plus libsodium's read-only size page; a slot is wiped when given
 * back and zeroed when handed out; a page with no slot in use is freed at
 * once (sodium_free wipes and unlocks it). Slots are taken first-fit in
 * page order, so the oldest pages fill up and the newest empty first.
 */
#include "srv_keyslab.h"

#include "eng_error.h"
#include "keys.h"

#include <pthread.h>
#include <sodium.h>
#include <stdbool.h>
#include <stdlib.h>
#include <unistd.h>

/* libsodium's canary before a sodium_malloc'd block (CANARY_SIZE). */
#define SODIUM_CANARY_BYTES 16
#define SLOT_ALIGN 16
#define SLOTS_MAX 256

struct slab_page {
	struct slab_page *next;
	uint8_t *mem;                  /* eng_secret_new */
	unsigned used;
	uint64_t bits[SLOTS_MAX / 64]; /* 1 = slot in use */
};

struct srv_keyslab {
	pthread_mutex_t mu;
	size_t slot_bytes, per_page, mem_bytes;
	struct slab_page *head;
	size_t used, pages;
};

srv_keyslab *srv_keyslab_new(size_t slot_bytes)
{
	long page = sysconf(_SC_PAGESIZE);
	srv_keyslab *ks;
	size_t usable, per;

	if (page <= SODIUM_CANARY_BYTES || slot_bytes == 0)
		return NULL;
	slot_bytes = (slot_bytes + SLOT_ALIGN - 1) & ~(size_t)(SLOT_ALIGN - 1);
	usable = (size_t)page - SODIUM_CANARY_BYTES;
	if (slot_bytes > usable)
		return NULL;
	per = usable / slot_bytes;
	if (per > SLOTS_MAX)
		per = SLOTS_MAX;
	ks = eng_calloc(1, sizeof(*ks));
	pthread_mutex_init(&ks->mu, NULL);
	ks->slot_bytes = slot_bytes;
	ks->per_page = per;
	ks->mem_bytes = per * slot_bytes;
	return ks;
}

static struct slab_page *page_with_room(srv_keyslab *ks)
{
	struct slab_page **pp = &ks->head;

	for (; *pp != NULL; pp = &(*pp)->next) {
		if ((*pp)->used < ks->per_page)
			return *pp;
	}
	*pp = eng_calloc(1, sizeof(**pp));
	(*pp)->mem = eng_secret_new(ks->mem_bytes);
	ks->pages++;
	return *pp;
}

uint8_t *srv_keyslab_get(srv_keyslab *ks)
{
	struct slab_page *p;
	uint8_t *slot = NULL;

	pthread_mutex_lock(&ks->mu);
	p = page_with_room(ks);
	for (size_t i = 0; i < ks->per_page; i++) {
		uint64_t bit = (uint64_t)1 << (i % 64);

		if ((p->bits[i / 64] & bit) == 0) {
			p->bits[i / 64] |= bit;
			p->used++;
			ks->used++;
			slot = p->mem + i * ks->slot_bytes;
			break;
		}
	}
	pthread_mutex_unlock(&ks->mu);
	if (slot == NULL)
		abort();               /* page_with_room found room */
	sodium_memzero(slot, ks->slot_bytes);
	return slot;
}

void srv_keyslab_put(srv_keyslab *ks, uint8_t **slotp)
{
	uint8_t *slot = slotp != NULL ? *slotp : NULL;
	struct slab_page **pp, *p;
	bool found = false;

	if (slot == NULL)
		return;
	*slotp = NULL;
	sodium_memzero(slot, ks->slot_bytes);
	pthread_mutex_lock(&ks->mu);
	for (pp = &ks->head; (p = *pp) != NULL; pp = &p->next) {
		size_t off = (size_t)(slot - p->mem);

		if (slot < p->mem || off >= ks->mem_bytes)
			continue;
		if (off % ks->slot_bytes != 0 ||
		    (p->bits[off / ks->slot_bytes / 64] &
		     ((uint64_t)1 << (off / ks->slot_bytes % 64))) == 0)
			break;         /* not a slot handed out: abort below */
		p->bits[off / ks->slot_bytes / 64] &=
			~((uint64_t)1 << (off / ks->slot_bytes % 64));
		p->used--;
		ks->used--;
		found = true;
		if (p->used == 0) {
			*pp = p->next;
			eng_secret_free(&p->mem);
			free(p);
			ks->pages--;
		}
		break;
	}
	pthread_mutex_unlock(&ks->mu);
	if (!found)
		abort();
}

size_t srv_keyslab_used(srv_keyslab *ks)
{
	size_t n;

	pthread_mutex_lock(&ks->mu);
	n = ks->used;
	pthread_mutex_unlock(&ks->mu);
	return n;
}

size_t srv_keyslab_pages(srv_keyslab *ks)
{
	size_t n;

	pthread_mutex_lock(&ks->mu);
	n = ks->pages;
	pthread_mutex_unlock(&ks->mu);
	return n;
}

void srv_keyslab_free(srv_keyslab **ksp)
{
	srv_keyslab *ks = ksp != NULL ? *ksp : NULL;

	if (ks == NULL)
		return;
	*ksp = NULL;
	while (ks->head != NULL) {      /* only if slots were leaked */
		struct slab_page *p = ks->head;

		ks->head = p->next;
		eng_secret_free(&p->mem);
		free(p);
	}
	pthread_mutex_destroy(&ks->mu);
	free(ks);
}
