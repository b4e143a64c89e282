/*
 * sqlited's malloc settings: memory given back at rest.
 *
 * sqlited's work runs on 32 pool threads (sqlited.c). With glibc's
 * defaults, what a released alias's SQLite connection had used (srv_alias.h,
 * Release) stayed resident in the pool threads' arenas even after
 * malloc_trim: each thread's cache (tcache: up to 7 freed chunks of each
 * of 64 sizes, held as "in use") kept ~450 chunks scattered over the
 * arena, one or more per page; fastbin chunks merged into an arena's top
 * only later, where malloc_trim does not reach (it trims the tops of the
 * main arena only). 20 MB of sqlited's 25 MB at rest, 1,000 IDLE
 * connections over 500 users (bench/README.md, "Memory at 1,000 IDLE
 * connections over 500 users").
 *
 * srv_malloc_tune, first thing in main():
 *  - the thread cache off: only a glibc tunable can do that, and glibc
 *    reads tunables at exec, so when GLIBC_TUNABLES does not mention
 *    glibc.malloc.tcache_count the process re-executes itself
 *    (/proc/self/exe, same pid, same arguments) once with
 *    glibc.malloc.tcache_count=0 added; an administrator's own setting of
 *    it is kept as it is; if the exec fails, it runs on with the cache;
 *  - two arenas per online CPU (M_ARENA_MAX; glibc's default is eight,
 *    16 here for 32 pool threads): malloc_trim does not trim the top of
 *    any arena but the main one, and each top may stay resident up to the
 *    trim threshold (+ pad); after body FETCHes sqlited's anonymous memory
 *    at rest was 9.1-9.4 MB with 16 arenas, 7.0 MB with 4 (and 7.4 MB
 *    before the body path stopped freeing 512 KiB blocks per piece, which
 *    kept trimming the tops), body FETCH CPU the same (bench/README.md,
 *    "IMAP body FETCH CPU (session 5)");
 *  - no fastbins (M_MXFAST 0): a freed chunk merges with its neighbours
 *    and the top at once;
 *  - an arena's top is given back past 256 KiB (M_TRIM_THRESHOLD), 64
 *    KiB kept (M_TOP_PAD); blocks of 1 MiB or more are mmapped
 *    (M_MMAP_THRESHOLD). Both fixed, so that glibc does not raise them to
 *    the size of the largest mmapped block freed (Argon2id's). 128 KiB
 *    cost body FETCH ~15% more sqlited CPU (a FETCH's buffers refaulted
 *    after each trim), 1 MiB left up to 1 MiB per arena (16) at rest.
 * Not glibc (or under a sanitizer's allocator): nothing of the above
 * changes. In every build:
 *  - SQLite's page caches take their pages one by one as they fill
 *    (SQLITE_CONFIG_PAGECACHE with no buffer and 0 pages: pcache1's
 *    nInitPage 0). By default each database connection's cache allocated
 *    a bulk block of 100 pages at its first page (436,808 bytes here) and
 *    wrote a header into every one of its pages, so all of it was
 *    resident however few pages the database had: the directory
 *    database's 408 KiB were the largest block of sqlited at rest, and
 *    each open alias database held one too (bench/README.md, "sqlited
 *    memory after the loads, part 2"). Must run before SQLite's first use
 *    (sqlite3_config refuses afterwards: the default then stays).
 */
#ifndef SRV_MALLOC_H
#define SRV_MALLOC_H

#include <stdbool.h>

/* May not return (re-exec). argv as main's. */
void srv_malloc_tune(char **argv);
/* Whether this process runs without glibc's thread cache (tests). */
bool srv_malloc_tcache_off(void);
/* Whether srv_malloc_tune changes anything in this build: glibc, and not
 * under a sanitizer's allocator (tests skip what it cannot show). */
bool srv_malloc_tunes(void);

#endif
