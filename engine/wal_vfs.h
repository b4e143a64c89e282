/*
 * wal_vfs.h: the "sealmail-wal" SQLite VFS, the default one (unix) with
 * the WAL file's writes gathered: SQLite writes each WAL frame as two
 * pwrite()s (its 24-byte header, then the page); this layer collects the
 * contiguous writes of a transaction and hands them to the kernel in one
 * pwritev() before the WAL's sync (and before anything that reads or sizes
 * the file). Nothing is synced later than before: xSync writes first.
 * "sealmail-sealed" is the same VFS for encrypted stores, which also fails
 * a read of an all-zero page (SQLCipher 3.4.1 would decrypt it to zeroes
 * without an error) with SQLITE_CORRUPT.
 * See engine/wal_vfs.c for the rules.
 */
#ifndef SEALMAIL_ENGINE_WAL_VFS_H
#define SEALMAIL_ENGINE_WAL_VFS_H

#include <stddef.h>

/*
 * Registers the VFS once (not as the default) and returns its name for
 * sqlite3_open_v2(); NULL if it could not be registered (the caller then
 * opens with the default VFS, the same files).
 */
const char *eng_wal_vfs_name(void);

/* The same for "sealmail-sealed": never for a plaintext database. */
const char *eng_sealed_vfs_name(void);

/* Counters of this process, for tests and benchmarks: write calls SQLite
 * made on WAL files, and write system calls this layer issued for them. */
void eng_wal_vfs_counts(unsigned long long *writes_r,
			unsigned long long *syscalls_r);

/* Pages of main database files read from their map (see wal_vfs.c), and
 * reads whose copy from the map faulted and went to pread() instead. */
void eng_wal_vfs_map_counts(unsigned long long *reads_r,
			    unsigned long long *faults_r);

#endif
