/*
 * SQLite's memory methods, wrapped once per process to undo a page lock
 * that SQLCipher leaks.
 *
 * SQLCipher mlock()s every block it allocates (sqlcipher_malloc: keys,
 * salts, its codec context, its page buffer) and munlock()s it when it
 * frees it with its size; but it frees the codec's page buffer
 * (cipher_page_size bytes, a sqlite3_malloc block) with size 0, so the one
 * or two memory pages under it stay locked after the database is closed
 * (sqlcipher_codec_ctx_free in 3.4.1 and 4.x). Those pages then sit inside
 * free malloc memory, and madvise(MADV_DONTNEED) refuses any range that
 * holds a locked page (EINVAL): malloc_trim() could give back nothing of
 * the free chunks around them. In sqlited every closed or released alias
 * (srv_alias.h, Release) left its ~250 KiB of freed SQLite memory
 * resident that way (bench/README.md, "Memory per released alias").
 *
 * Rule: when a block of exactly the codec buffer's size is freed, it is
 * wiped and the pages it spans are unlocked: the very call SQLCipher makes
 * (sqlcipher_munlock) for every block it frees with a size, so no page is
 * left unlocked that SQLCipher's own frees would have kept locked. Any
 * other block goes straight to SQLite's default methods. Installed by
 * eng_store_global_init, before SQLite's first use; if SQLite is in use
 * already, the defaults stay.
 *
 * Big blocks, while asked (eng_sqlite_mem_keep_big): SQLite materialises
 * each message chunk's compressed blob (up to about ENG_CHUNK_BYTES) in a
 * block of its size and frees it at the statement's reset; under sqlited's
 * malloc tuning (srv_malloc.h) freeing such a block at an arena's top gave
 * the top back and the next chunk faulted it in again (4,700 page faults
 * per body FETCH of 3,000 messages). While at least one caller keeps them,
 * a request of BIG_MIN_BYTES..BIG_BYTES gets a block of BIG_BYTES, and up
 * to BIG_KEEP freed ones are kept for the next; when the last caller lets
 * go they are wiped and freed. Not keeping: nothing changes.
 */
#include "sqlite_mem.h"

#include <pthread.h>
#include <sodium.h>
#include <sqlite3.h>
#include <stdint.h>
#include <sys/mman.h>
#include <unistd.h>

/* store.c's PRAGMA cipher_page_size: SQLCipher's codec buffer. */
#define CODEC_BUFFER_BYTES 4096

#define BIG_MIN_BYTES ENG_SQLITE_BIG_MIN_BYTES
#define BIG_BYTES ENG_SQLITE_BIG_BYTES
#define BIG_KEEP ENG_SQLITE_BIG_KEEP

static sqlite3_mem_methods base;
static uintptr_t page_mask;
static pthread_mutex_t big_mu = PTHREAD_MUTEX_INITIALIZER;
static void *big_kept[BIG_KEEP];
static unsigned big_n, big_keepers;

static void *mem_malloc(int n)
{
	void *p = NULL;
	bool keeping;

	if (n < BIG_MIN_BYTES || n > BIG_BYTES)
		return base.xMalloc(n);
	pthread_mutex_lock(&big_mu);
	keeping = big_keepers > 0;
	if (keeping && big_n > 0)
		p = big_kept[--big_n];
	pthread_mutex_unlock(&big_mu);
	if (p != NULL)
		return p;
	return base.xMalloc(keeping ? BIG_BYTES : n);
}

/* Keeps p (a big block) while keeping and there is room: true. */
static bool big_keep(void *p)
{
	bool kept = false;

	pthread_mutex_lock(&big_mu);
	if (big_keepers > 0 && big_n < BIG_KEEP) {
		big_kept[big_n++] = p;
		kept = true;
	}
	pthread_mutex_unlock(&big_mu);
	return kept;
}

static void mem_free(void *p)
{
	int size = p != NULL ? base.xSize(p) : 0;

	if (size == CODEC_BUFFER_BYTES) {
		uintptr_t start = (uintptr_t)p & ~page_mask;

		sodium_memzero(p, CODEC_BUFFER_BYTES);
		(void)munlock((void *)start,
			      (uintptr_t)p + CODEC_BUFFER_BYTES - start);
	}
	if (size == BIG_BYTES && big_keep(p))
		return;
	base.xFree(p);
}

void eng_sqlite_mem_keep_big(bool on)
{
	void *drop[BIG_KEEP];
	unsigned n = 0;

	pthread_mutex_lock(&big_mu);
	if (on) {
		big_keepers++;
	} else if (big_keepers > 0 && --big_keepers == 0) {
		while (big_n > 0)
			drop[n++] = big_kept[--big_n];
	}
	pthread_mutex_unlock(&big_mu);
	while (n > 0) {
		n--;
		sodium_memzero(drop[n], BIG_BYTES);
		base.xFree(drop[n]);
	}
}

unsigned eng_sqlite_mem_big_kept(void)
{
	unsigned n;

	pthread_mutex_lock(&big_mu);
	n = big_n;
	pthread_mutex_unlock(&big_mu);
	return n;
}

bool eng_sqlite_mem_install(void)
{
	sqlite3_mem_methods m;
	long page = sysconf(_SC_PAGESIZE);

	if (page <= 0 || (page & (page - 1)) != 0)
		return false;
	if (sqlite3_config(SQLITE_CONFIG_GETMALLOC, &base) != SQLITE_OK ||
	    base.xFree == NULL || base.xSize == NULL)
		return false;
	page_mask = (uintptr_t)page - 1;
	m = base;
	m.xMalloc = mem_malloc;
	m.xFree = mem_free;
	return sqlite3_config(SQLITE_CONFIG_MALLOC, &m) == SQLITE_OK;
}
