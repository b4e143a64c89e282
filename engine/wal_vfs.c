/*
 * Two SQLite VFSes over the default one (unix):
 *
 * "sealmail-wal" gathers the WAL file's writes (bench/README.md, "APPEND
 * CPU (2026-11-26 session 6)"). SQLite writes each WAL frame with two
 * xWrite calls (the 24-byte frame header, then the page), each one
 * pwrite(): ~56 system calls for an APPEND of ~28 frames. Here the
 * contiguous writes to a WAL file are copied into a buffer of the file and
 * written with one xWrite of the underlying VFS (one pwrite) when SQLite
 * syncs the WAL, reads it, asks its size, truncates it, closes it, or when
 * the next write is not contiguous or would pass WAL_BUF_MAX (< 128 KiB).
 *
 * "sealmail-sealed", for encrypted stores only, does the same and also
 * refuses all-zero pages (docs/storage.md, "Damaged pages under raw
 * bytes"). SQLCipher 3.4.1 takes a page that is all zeroes for a short
 * read and decrypts it to zeroes without checking its HMAC, so a page
 * zeroed on disk read silently as zeroes. Below the codec every page of an
 * encrypted database is ciphertext, and an all-zero one has probability
 * 2^-32768: a whole-page read of the database file (a power of two of
 * 512..65536 bytes at a multiple of it) or of a WAL frame's page (the
 * bytes after its 24-byte header) that succeeds with nothing but zeroes
 * fails with SQLITE_CORRUPT, an error of the statement (ENG_ECORRUPT).
 * A read past the end (SQLITE_IOERR_SHORT_READ, zero-filled) stays what
 * it is: SQLite reads such pages legitimately. Plaintext stores must not
 * use it: a plain page of zeroes is legal (the last overflow page of a
 * blob of zeroes). WAL recovery reads whole frames (header and page): a
 * zeroed frame fails its checksum there and ends the WAL, as before.
 * The check stops at the first non-zero byte, byte 0 of almost every page.
 *
 * "sealmail-sealed" also reads the main database file through a read-only
 * map of it, the unix VFS's own (SQLITE_FCNTL_MMAP_SIZE on the underlying
 * file, then its xFetch): a page read is a memcpy from the map instead of
 * a pread(), ~10% of sqlited's CPU in a body FETCH (bench/README.md,
 * "Database pages read through a map"). The map holds ciphertext only, as
 * the file does. It covers the file as it was when mapped; a read past
 * that maps again if the file has grown since (a checkpoint's writes go
 * into the file, so the map and pread() read the same bytes). The risk of
 * a map is SIGBUS: an I/O error under a mapped page, or a file shrunk
 * under the map, faults the copy. A SIGBUS handler, armed only around the
 * read on the reading thread (map_jmp), jumps back out of the copy; the
 * map of that file is dropped and the read goes again through pread(),
 * which answers with the error (or the short read) as before. A SIGBUS
 * anywhere else goes to the handler there was before ours (or kills the
 * process, the default). The handler is checked (and installed again if
 * another replaced it) before each map; without it nothing is mapped.
 *
 * Rules:
 *  - only the WAL file and, on "sealmail-sealed", the main database file
 *    are wrapped, and every io method of a wrapped file goes to the
 *    underlying file (one the underlying VFS opened), so locks and the
 *    wal-index (xShm*, which SQLite calls on the database file) stay the
 *    underlying VFS's, shared with connections opened on the default VFS;
 *    journals and temporary files are the underlying VFS's own objects;
 *  - SQLite itself maps nothing (our xFetch maps nothing; SQLCipher turns
 *    mmap off for an encrypted database anyway): every page comes through
 *    xRead, and SQLCipher decrypts it into its cache;
 *  - gathering is safe only with synchronous = FULL (or EXTRA), which
 *    eng_store_open always sets: then every commit syncs the WAL (xSync,
 *    which writes the buffer first) before SQLite publishes the commit in
 *    the wal-index, so no other connection can look for a frame that is
 *    still buffered. With NORMAL or OFF a commit is published without a
 *    sync: never open such a connection on these VFSes;
 *  - durability is the same: a write is on disk no later than before (the
 *    fdatasync of the commit follows the one gathered write); a failed
 *    gathered write fails the sync, so the COMMIT fails;
 *  - memory: the buffer (WAL_BUF_MAX) exists only while a transaction
 *    writes frames and is freed when it is written; without memory the
 *    write goes straight through.
 */
#include "wal_vfs.h"
#include "eng_error.h"

#include <pthread.h>
#include <setjmp.h>
#include <signal.h>
#include <stdbool.h>
#include <sqlite3.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>

#define WAL_VFS_NAME "sealmail-wal"
#define SEALED_VFS_NAME "sealmail-sealed"
#define WAL_HDR 32          /* the WAL file's header */
#define WAL_FRAME_HDR 24    /* each frame's header, before its page */
/* The unix VFS writes at most 0x1ffff bytes per pwrite() (it masks the
 * length: a longer xWrite is split, and one of a multiple of 128 KiB fails
 * with SQLITE_FULL), so a gathered write stays below 128 KiB: 31 frames of
 * 4 KiB pages, a whole APPEND of a ~27 KB message. */
#define WAL_BUF_MAX 0x1ffffu
/* The most of a database file mapped: SQLite's default mmap limit. A
 * larger file reads its pages past that with pread(). */
#define DB_MAP_MAX ((sqlite3_int64)0x7fff0000)

struct wal_file {
	sqlite3_file base;      /* pMethods = &wal_methods */
	sqlite3_file *real;     /* the underlying VFS's file, after this struct */
	unsigned char *buf;     /* bytes for [off, off + len) of the file */
	size_t len;
	sqlite3_int64 off;
	bool sealed;            /* opened on "sealmail-sealed" */
	/* The main database file's map (see the top): the limit set on the
	 * underlying file (0: never mapped or dropped), the bytes mapped, and
	 * the pointer xFetch gave while a copy from it runs. */
	sqlite3_int64 map_limit;
	sqlite3_int64 mapped;
	void *fetched;
};

static sqlite3_vfs wal_vfs, sealed_vfs;
static sqlite3_vfs *orig_vfs;
static const sqlite3_io_methods wal_methods, db_methods;
static _Atomic unsigned long long n_writes, n_syscalls;
static _Atomic unsigned long long n_map_reads, n_map_faults;
/* Where the SIGBUS handler jumps to: set only while this thread reads a
 * mapped database file. */
static _Thread_local sigjmp_buf *map_jmp;
static struct sigaction prev_sigbus;

static size_t real_offset(void)
{
	/* The underlying file is placed after ours, 16-byte aligned. */
	return (sizeof(struct wal_file) + 15u) & ~(size_t)15u;
}

/* Writes the buffered bytes (one call to the underlying xWrite). */
static int wal_flush(struct wal_file *w)
{
	int rc;

	if (w->len == 0)
		return SQLITE_OK;
	rc = w->real->pMethods->xWrite(w->real, w->buf, (int)w->len, w->off);
	atomic_fetch_add_explicit(&n_syscalls, 1, memory_order_relaxed);
	w->len = 0;
	free(w->buf);
	w->buf = NULL;
	return rc;
}

static int wal_close(sqlite3_file *f)
{
	struct wal_file *w = (struct wal_file *)f;
	int rc = wal_flush(w);
	int rc2 = w->real->pMethods->xClose(w->real);

	return rc != SQLITE_OK ? rc : rc2;
}

/* A page size SQLite could use: a power of two, 512 to 65536. */
static bool page_sized(int amt)
{
	return amt >= 512 && amt <= 65536 && (amt & (amt - 1)) == 0;
}

/* An encrypted page is never all zeroes (see the top of the file). */
static int zero_page_check(const unsigned char *p, int amt)
{
	for (int i = 0; i < amt; i++)
		if (p[i] != 0)
			return SQLITE_OK;
	eng_log(ENG_LOG_ERROR, "sqlite: a page of zeroes in an encrypted "
		"database");
	return SQLITE_CORRUPT;
}

static int wal_read(sqlite3_file *f, void *p, int amt, sqlite3_int64 off)
{
	struct wal_file *w = (struct wal_file *)f;
	int rc = wal_flush(w);

	if (rc != SQLITE_OK)
		return rc;
	rc = w->real->pMethods->xRead(w->real, p, amt, off);
	/* A frame's page: at 32 + k * (24 + amt) + 24. */
	if (rc == SQLITE_OK && w->sealed && page_sized(amt) &&
	    off >= WAL_HDR + WAL_FRAME_HDR &&
	    (off - WAL_HDR - WAL_FRAME_HDR) % (amt + WAL_FRAME_HDR) == 0)
		rc = zero_page_check(p, amt);
	return rc;
}

/* Room for n more bytes in the buffer (one allocation of WAL_BUF_MAX). */
static bool wal_reserve(struct wal_file *w, size_t n)
{
	if (n > WAL_BUF_MAX - w->len)
		return false;
	if (w->buf == NULL && (w->buf = malloc(WAL_BUF_MAX)) == NULL)
		return false;
	return true;
}

static int wal_write(sqlite3_file *f, const void *p, int amt,
		     sqlite3_int64 off)
{
	struct wal_file *w = (struct wal_file *)f;
	int rc;

	atomic_fetch_add_explicit(&n_writes, 1, memory_order_relaxed);
	if (amt <= 0)
		return w->real->pMethods->xWrite(w->real, p, amt, off);
	if (w->len > 0 && off == w->off + (sqlite3_int64)w->len &&
	    wal_reserve(w, (size_t)amt)) {
		memcpy(w->buf + w->len, p, (size_t)amt);
		w->len += (size_t)amt;
		return SQLITE_OK;
	}
	/* Not contiguous, or no room: what is buffered goes first. */
	if ((rc = wal_flush(w)) != SQLITE_OK)
		return rc;
	if (wal_reserve(w, (size_t)amt)) {
		memcpy(w->buf, p, (size_t)amt);
		w->len = (size_t)amt;
		w->off = off;
		return SQLITE_OK;
	}
	atomic_fetch_add_explicit(&n_syscalls, 1, memory_order_relaxed);
	return w->real->pMethods->xWrite(w->real, p, amt, off);
}

static int wal_truncate(sqlite3_file *f, sqlite3_int64 size)
{
	struct wal_file *w = (struct wal_file *)f;
	int rc = wal_flush(w);

	if (rc != SQLITE_OK)
		return rc;
	return w->real->pMethods->xTruncate(w->real, size);
}

static int wal_sync(sqlite3_file *f, int flags)
{
	struct wal_file *w = (struct wal_file *)f;
	int rc = wal_flush(w);

	if (rc != SQLITE_OK)
		return rc;
	return w->real->pMethods->xSync(w->real, flags);
}

static int wal_file_size(sqlite3_file *f, sqlite3_int64 *size)
{
	struct wal_file *w = (struct wal_file *)f;
	int rc = wal_flush(w);

	if (rc != SQLITE_OK)
		return rc;
	return w->real->pMethods->xFileSize(w->real, size);
}

/* The main database file on "sealmail-sealed": reads checked, the rest
 * the underlying file's. */
static int db_close(sqlite3_file *f)
{
	struct wal_file *w = (struct wal_file *)f;

	return w->real->pMethods->xClose(w->real);
}

/* ---- the main database file's map ---- */

static void on_sigbus(int sig, siginfo_t *si, void *uc)
{
	static struct sigaction dfl; /* SIG_DFL */

	if (map_jmp != NULL)
		siglongjmp(*map_jmp, 1);
	/* Not a read of ours: the handler before ours, or the default (the
	 * faulting instruction runs again and the fault kills the process). */
	if ((prev_sigbus.sa_flags & SA_SIGINFO) &&
	    prev_sigbus.sa_sigaction != NULL)
		prev_sigbus.sa_sigaction(sig, si, uc);
	else if (!(prev_sigbus.sa_flags & SA_SIGINFO) &&
		 prev_sigbus.sa_handler != SIG_DFL &&
		 prev_sigbus.sa_handler != SIG_IGN)
		prev_sigbus.sa_handler(sig);
	else
		(void)sigaction(sig, &dfl, NULL);
}

/* Our handler is SIGBUS's: installed (again, chained to the one that
 * replaced it, a test framework's say) if it is not. Before each map. */
static bool sigbus_ready(void)
{
	static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;
	struct sigaction cur, sa;
	bool ok;

	memset(&sa, 0, sizeof(sa));
	sa.sa_sigaction = on_sigbus;
	/* SA_NODEFER: siglongjmp leaves the handler without restoring the
	 * mask, so SIGBUS must not be blocked in it. */
	sa.sa_flags = SA_SIGINFO | SA_NODEFER;
	sigemptyset(&sa.sa_mask);
	pthread_mutex_lock(&lock);
	if (sigaction(SIGBUS, NULL, &cur) != 0)
		ok = false;
	else if ((cur.sa_flags & SA_SIGINFO) && cur.sa_sigaction == on_sigbus)
		ok = true;
	else
		ok = sigaction(SIGBUS, &sa, &prev_sigbus) == 0;
	pthread_mutex_unlock(&lock);
	return ok;
}

/* Sets the underlying file's mmap limit: the unix VFS maps its file again
 * at its size now if it is mapped (it does nothing when the limit is the
 * one set already, so a remap alternates two limits). */
static void db_map_limit(struct wal_file *w, sqlite3_int64 limit)
{
	sqlite3_int64 arg = limit;

	if (w->real->pMethods->xFileControl(w->real, SQLITE_FCNTL_MMAP_SIZE,
					    &arg) == SQLITE_OK)
		w->map_limit = limit;
}

/* Maps the file if it has grown past the map (or was never mapped). */
static void db_map(struct wal_file *w)
{
	const sqlite3_io_methods *m = w->real->pMethods;
	sqlite3_int64 size;
	void *p = NULL;

	if (m->iVersion < 3 || m->xFileSize(w->real, &size) != SQLITE_OK ||
	    size <= w->mapped || !sigbus_ready())
		return;
	db_map_limit(w, w->map_limit == DB_MAP_MAX ? DB_MAP_MAX - 65536 :
						      DB_MAP_MAX);
	if (w->map_limit == 0)
		return;
	/* The first xFetch maps a file not mapped yet. */
	if (m->xFetch(w->real, 0, 1, &p) == SQLITE_OK && p != NULL)
		m->xUnfetch(w->real, 0, p);
	w->mapped = size < w->map_limit ? size : w->map_limit;
}

/* After a fault: the map goes; the next read past it maps again. */
static void db_unmap(struct wal_file *w, sqlite3_int64 off)
{
	if (w->fetched != NULL) {
		w->real->pMethods->xUnfetch(w->real, off, w->fetched);
		w->fetched = NULL;
	}
	db_map_limit(w, 0);
	w->map_limit = 0;
	w->mapped = 0;
	if (atomic_fetch_add(&n_map_faults, 1) == 0)
		eng_log(ENG_LOG_WARN, "sqlite: a mapped database page could "
			"not be read (an I/O error, or the file shrank): "
			"reading with pread");
}

/* The read: a copy from the map when it covers the bytes, else the
 * underlying xRead (which copies what its map covers, so that is guarded
 * too while the file is mapped). */
static int db_read_bytes(struct wal_file *w, void *p, int amt,
			 sqlite3_int64 off)
{
	const sqlite3_io_methods *m = w->real->pMethods;
	sigjmp_buf env;
	int rc;

	if (off + amt > w->mapped && off + amt <= DB_MAP_MAX)
		db_map(w);
	if (w->map_limit == 0)
		return m->xRead(w->real, p, amt, off);
	if (sigsetjmp(env, 0) != 0) {
		map_jmp = NULL;
		db_unmap(w, off);
		return m->xRead(w->real, p, amt, off);
	}
	map_jmp = &env;
	if (off + amt <= w->mapped &&
	    m->xFetch(w->real, off, amt, &w->fetched) == SQLITE_OK &&
	    w->fetched != NULL) {
		memcpy(p, w->fetched, (size_t)amt);
		map_jmp = NULL;
		m->xUnfetch(w->real, off, w->fetched);
		w->fetched = NULL;
		atomic_fetch_add_explicit(&n_map_reads, 1,
					  memory_order_relaxed);
		return SQLITE_OK;
	}
	w->fetched = NULL;
	rc = m->xRead(w->real, p, amt, off);
	map_jmp = NULL;
	return rc;
}

static int db_read(sqlite3_file *f, void *p, int amt, sqlite3_int64 off)
{
	struct wal_file *w = (struct wal_file *)f;
	int rc = db_read_bytes(w, p, amt, off);

	if (rc == SQLITE_OK && page_sized(amt) && off % amt == 0)
		rc = zero_page_check(p, amt);
	return rc;
}

static int db_write(sqlite3_file *f, const void *p, int amt,
		    sqlite3_int64 off)
{
	struct wal_file *w = (struct wal_file *)f;

	return w->real->pMethods->xWrite(w->real, p, amt, off);
}

static int db_truncate(sqlite3_file *f, sqlite3_int64 size)
{
	struct wal_file *w = (struct wal_file *)f;

	int rc = w->real->pMethods->xTruncate(w->real, size);

	if (w->mapped > size)
		w->mapped = size;   /* the unix VFS shortens its map too */
	return rc;
}

static int db_sync(sqlite3_file *f, int flags)
{
	struct wal_file *w = (struct wal_file *)f;

	return w->real->pMethods->xSync(w->real, flags);
}

static int db_file_size(sqlite3_file *f, sqlite3_int64 *size)
{
	struct wal_file *w = (struct wal_file *)f;

	return w->real->pMethods->xFileSize(w->real, size);
}

static int db_file_control(sqlite3_file *f, int op, void *arg)
{
	struct wal_file *w = (struct wal_file *)f;

	/* The pager's mmap limit is for its own xFetch (ours maps nothing);
	 * passed on, it would unmap the file's map. */
	if (op == SQLITE_FCNTL_MMAP_SIZE) {
		*(sqlite3_int64 *)arg = 0;
		return SQLITE_OK;
	}

	return w->real->pMethods->xFileControl(w->real, op, arg);
}

static int wal_lock(sqlite3_file *f, int level)
{
	struct wal_file *w = (struct wal_file *)f;

	return w->real->pMethods->xLock(w->real, level);
}

static int wal_unlock(sqlite3_file *f, int level)
{
	struct wal_file *w = (struct wal_file *)f;

	return w->real->pMethods->xUnlock(w->real, level);
}

static int wal_check_lock(sqlite3_file *f, int *out)
{
	struct wal_file *w = (struct wal_file *)f;

	return w->real->pMethods->xCheckReservedLock(w->real, out);
}

static int wal_file_control(sqlite3_file *f, int op, void *arg)
{
	struct wal_file *w = (struct wal_file *)f;
	int rc = wal_flush(w);

	if (rc != SQLITE_OK)
		return rc;
	return w->real->pMethods->xFileControl(w->real, op, arg);
}

static int wal_sector_size(sqlite3_file *f)
{
	struct wal_file *w = (struct wal_file *)f;

	return w->real->pMethods->xSectorSize(w->real);
}

static int wal_device_chars(sqlite3_file *f)
{
	struct wal_file *w = (struct wal_file *)f;

	return w->real->pMethods->xDeviceCharacteristics(w->real);
}

static int wal_shm_map(sqlite3_file *f, int pg, int pgsz, int extend,
		       void volatile **pp)
{
	struct wal_file *w = (struct wal_file *)f;

	return w->real->pMethods->xShmMap(w->real, pg, pgsz, extend, pp);
}

static int wal_shm_lock(sqlite3_file *f, int offset, int n, int flags)
{
	struct wal_file *w = (struct wal_file *)f;

	return w->real->pMethods->xShmLock(w->real, offset, n, flags);
}

static void wal_shm_barrier(sqlite3_file *f)
{
	struct wal_file *w = (struct wal_file *)f;

	w->real->pMethods->xShmBarrier(w->real);
}

static int wal_shm_unmap(sqlite3_file *f, int del)
{
	struct wal_file *w = (struct wal_file *)f;

	return w->real->pMethods->xShmUnmap(w->real, del);
}

/* No memory-mapped reads: SQLite falls back to xRead. */
static int wal_fetch(sqlite3_file *f, sqlite3_int64 off, int amt, void **pp)
{
	(void)f;
	(void)off;
	(void)amt;
	*pp = NULL;
	return SQLITE_OK;
}

static int wal_unfetch(sqlite3_file *f, sqlite3_int64 off, void *p)
{
	(void)f;
	(void)off;
	(void)p;
	return SQLITE_OK;
}

static const sqlite3_io_methods wal_methods = {
	3, wal_close, wal_read, wal_write, wal_truncate, wal_sync,
	wal_file_size, wal_lock, wal_unlock, wal_check_lock, wal_file_control,
	wal_sector_size, wal_device_chars, wal_shm_map, wal_shm_lock,
	wal_shm_barrier, wal_shm_unmap, wal_fetch, wal_unfetch,
};

static const sqlite3_io_methods db_methods = {
	3, db_close, db_read, db_write, db_truncate, db_sync,
	db_file_size, wal_lock, wal_unlock, wal_check_lock, db_file_control,
	wal_sector_size, wal_device_chars, wal_shm_map, wal_shm_lock,
	wal_shm_barrier, wal_shm_unmap, wal_fetch, wal_unfetch,
};

static int wal_open(sqlite3_vfs *vfs, const char *name, sqlite3_file *f,
		    int flags, int *out_flags)
{
	struct wal_file *w = (struct wal_file *)f;
	bool sealed = vfs == &sealed_vfs;
	int rc;

	if ((flags & SQLITE_OPEN_WAL) == 0 &&
	    (!sealed || (flags & SQLITE_OPEN_MAIN_DB) == 0))
		return orig_vfs->xOpen(orig_vfs, name, f, flags, out_flags);
	memset(w, 0, sizeof(*w));
	w->sealed = sealed;
	w->real = (sqlite3_file *)((char *)f + real_offset());
	rc = orig_vfs->xOpen(orig_vfs, name, w->real, flags, out_flags);
	if (rc != SQLITE_OK) {
		if (w->real->pMethods != NULL)
			w->real->pMethods->xClose(w->real);
		w->base.pMethods = NULL;
		return rc;
	}
	w->base.pMethods = (flags & SQLITE_OPEN_WAL) ? &wal_methods :
						       &db_methods;
	return SQLITE_OK;
}

/* The rest of the VFS is the underlying one's. */
static int v_delete(sqlite3_vfs *v, const char *n, int sync)
{
	(void)v;
	return orig_vfs->xDelete(orig_vfs, n, sync);
}

static int v_access(sqlite3_vfs *v, const char *n, int flags, int *out)
{
	(void)v;
	return orig_vfs->xAccess(orig_vfs, n, flags, out);
}

static int v_full_pathname(sqlite3_vfs *v, const char *n, int len, char *out)
{
	(void)v;
	return orig_vfs->xFullPathname(orig_vfs, n, len, out);
}

static void *v_dlopen(sqlite3_vfs *v, const char *n)
{
	(void)v;
	return orig_vfs->xDlOpen(orig_vfs, n);
}

static void v_dlerror(sqlite3_vfs *v, int n, char *msg)
{
	(void)v;
	orig_vfs->xDlError(orig_vfs, n, msg);
}

static void (*v_dlsym(sqlite3_vfs *v, void *h, const char *s))(void)
{
	(void)v;
	return orig_vfs->xDlSym(orig_vfs, h, s);
}

static void v_dlclose(sqlite3_vfs *v, void *h)
{
	(void)v;
	orig_vfs->xDlClose(orig_vfs, h);
}

static int v_randomness(sqlite3_vfs *v, int n, char *out)
{
	(void)v;
	return orig_vfs->xRandomness(orig_vfs, n, out);
}

static int v_sleep(sqlite3_vfs *v, int us)
{
	(void)v;
	return orig_vfs->xSleep(orig_vfs, us);
}

static int v_current_time(sqlite3_vfs *v, double *t)
{
	(void)v;
	return orig_vfs->xCurrentTime(orig_vfs, t);
}

static int v_last_error(sqlite3_vfs *v, int n, char *s)
{
	(void)v;
	return orig_vfs->xGetLastError(orig_vfs, n, s);
}

static int v_current_time64(sqlite3_vfs *v, sqlite3_int64 *t)
{
	(void)v;
	return orig_vfs->xCurrentTimeInt64(orig_vfs, t);
}

static pthread_once_t wal_vfs_once = PTHREAD_ONCE_INIT;
static bool wal_vfs_ok, sealed_vfs_ok;

static bool vfs_register(sqlite3_vfs *v, const char *name)
{
	v->iVersion = 2;
	v->szOsFile = (int)real_offset() + orig_vfs->szOsFile;
	v->mxPathname = orig_vfs->mxPathname;
	v->zName = name;
	v->xOpen = wal_open;
	v->xDelete = v_delete;
	v->xAccess = v_access;
	v->xFullPathname = v_full_pathname;
	v->xDlOpen = v_dlopen;
	v->xDlError = v_dlerror;
	v->xDlSym = v_dlsym;
	v->xDlClose = v_dlclose;
	v->xRandomness = v_randomness;
	v->xSleep = v_sleep;
	v->xCurrentTime = v_current_time;
	v->xGetLastError = v_last_error;
	v->xCurrentTimeInt64 = v_current_time64;
	if (sqlite3_vfs_register(v, 0) != SQLITE_OK) {
		eng_log(ENG_LOG_ERROR, "sqlite: cannot register the %s VFS",
			name);
		return false;
	}
	return true;
}

static void wal_vfs_register(void)
{
	if ((orig_vfs = sqlite3_vfs_find(NULL)) == NULL ||
	    orig_vfs->iVersion < 2 || orig_vfs->xCurrentTimeInt64 == NULL)
		return;
	wal_vfs_ok = vfs_register(&wal_vfs, WAL_VFS_NAME);
	sealed_vfs_ok = vfs_register(&sealed_vfs, SEALED_VFS_NAME);
}

const char *eng_wal_vfs_name(void)
{
	(void)pthread_once(&wal_vfs_once, wal_vfs_register);
	return wal_vfs_ok ? WAL_VFS_NAME : NULL;
}

const char *eng_sealed_vfs_name(void)
{
	(void)pthread_once(&wal_vfs_once, wal_vfs_register);
	return sealed_vfs_ok ? SEALED_VFS_NAME : NULL;
}

void eng_wal_vfs_counts(unsigned long long *writes_r,
			unsigned long long *syscalls_r)
{
	*writes_r = atomic_load(&n_writes);
	*syscalls_r = atomic_load(&n_syscalls);
}

void eng_wal_vfs_map_counts(unsigned long long *reads_r,
			    unsigned long long *faults_r)
{
	*reads_r = atomic_load(&n_map_reads);
	*faults_r = atomic_load(&n_map_faults);
}
