/*
 * SQLite memory methods that unlock the page buffer SQLCipher frees
 * without munlock (see sqlite_mem.c). Engine-internal.
 */
#ifndef ENG_SQLITE_MEM_H
#define ENG_SQLITE_MEM_H

#include <stdbool.h>

/* Once per process, before SQLite's first use (eng_store_global_init);
 * false if SQLite was in use already (its defaults stay). */
bool eng_sqlite_mem_install(void);

#endif
