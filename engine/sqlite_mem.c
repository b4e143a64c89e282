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
 */
#include "sqlite_mem.h"

#include <sodium.h>
#include <sqlite3.h>
#include <stdint.h>
#include <sys/mman.h>
#include <unistd.h>

/* store.c's PRAGMA cipher_page_size: SQLCipher's codec buffer. */
#define CODEC_BUFFER_BYTES 4096

static sqlite3_mem_methods base;
static uintptr_t page_mask;

static void mem_free(void *p)
{
	if (p != NULL && base.xSize(p) == CODEC_BUFFER_BYTES) {
		uintptr_t start = (uintptr_t)p & ~page_mask;

		sodium_memzero(p, CODEC_BUFFER_BYTES);
		(void)munlock((void *)start,
			      (uintptr_t)p + CODEC_BUFFER_BYTES - start);
	}
	base.xFree(p);
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
	m.xFree = mem_free;
	return sqlite3_config(SQLITE_CONFIG_MALLOC, &m) == SQLITE_OK;
}
