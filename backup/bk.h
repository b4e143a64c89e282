/*
 * Encrypted snapshots of a data directory (docs/backup.md is the format).
 *
 * A snapshot is a manifest plus objects at a bk_target:
 *
 *     objects/<64 hex>            one per distinct file content
 *     snapshots/<id>.manifest     one per snapshot, id = UTC "YYYYMMDD-HHMMSS"
 *
 * An object is a file's bytes in libsodium secretstream (XChaCha20-
 * Poly1305) under a subkey of the backup key, in 64 KiB chunks; its name is
 * BLAKE2b-256 keyed with another subkey over the file's SHA-256, so equal
 * contents share one object (incremental: a name already at the target is
 * not uploaded again) and a name says nothing about what it holds. The
 * manifest lists every file (path in the data dir, mode, size, SHA-256,
 * object) and is sealed whole with XChaCha20-Poly1305 under a third subkey.
 *
 * Files are read and written as streams (64 KiB at a time); nothing here
 * ever holds a whole data file in memory. The backup key is
 * BK_KEY_BYTES of sodium_malloc'd memory owned by the caller.
 */
#ifndef BK_H
#define BK_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>
#include <time.h>

#include "bk_target.h"

#define BK_KEY_BYTES 32
#define BK_FORMAT_VERSION 1
#define BK_SNAPSHOT_ID_MAX 32
#define BK_CHUNK_BYTES 65536

/* ---- what to back up ---- */

typedef struct bk_fileset bk_fileset;

bk_fileset *bk_fileset_new(void);
void bk_fileset_free(bk_fileset **fs);
/* rel: the path in the data dir ("mailboxes/ab.db"); src: where to read it now. */
void bk_fileset_add(bk_fileset *fs, const char *rel, const char *src,
		    mode_t mode);
/*
 * Adds every regular file under root/sub (recursively) as "sub/...", read
 * from root. Names starting "tmp-" or "." and "-shm" files are skipped.
 * A missing sub is fine.
 */
int bk_fileset_add_tree(bk_fileset *fs, const char *root, const char *sub);

/*
 * A consistent set of the data dir's files while NO process writes them
 * (sqlited not running): mailboxes/ (.db and any -wal), spool/ (sealed
 * entries), directory.db copied with SQLite's backup API into stage_dir,
 * and the configuration file as "sealmail.conf" (it holds no secrets;
 * secrets/, tls/, tmp/, redis/ and backups/ are left out).
 */
int bk_collect_offline(const char *data_dir, const char *config_path,
		       const char *stage_dir, bk_fileset **fs_r, char **err_r);
/*
 * The files of a staging copy that sqlited made (BACKUP_PREPARE:
 * stage_dir laid out as a data dir, every file consistent and no longer
 * written), plus the configuration as "sealmail.conf": the same paths as
 * bk_collect_offline(), so a restore cannot tell the two apart.
 */
int bk_collect_staged(const char *stage_dir, const char *config_path,
		      bk_fileset **fs_r, char **err_r);
/* Copies a SQLite database (not SQLCipher) consistently with the backup API. */
int bk_copy_sqlite(const char *src, const char *dst);

/* ---- progress ---- */

/* phase: "backup", "restore", "verify"; done/total in bytes. */
typedef void bk_progress_fn(void *ctx, const char *phase, uint64_t done,
			    uint64_t total);

typedef struct bk_stats {
	unsigned files;
	unsigned objects_uploaded;
	unsigned objects_present;    /* already at the target: not uploaded */
	uint64_t bytes_read;
	uint64_t bytes_uploaded;
	unsigned snapshots_pruned;
	unsigned objects_pruned;
} bk_stats;

/* ---- backup ---- */

/*
 * Uploads every file of fs that the target does not hold yet, then the
 * manifest. *id_r gets the snapshot id (BK_SNAPSHOT_ID_MAX + 1 bytes).
 * A file that changes while it is read fails the backup (ENG_EMODIFIED):
 * callers hand in files nothing writes. Nothing is listed in a manifest
 * before its object is stored whole.
 */
int bk_backup(bk_target *t, const uint8_t *key, const bk_fileset *fs,
	      time_t now, char *id_r, bk_stats *stats,
	      bk_progress_fn *progress, void *pctx);

/*
 * Retention: keeps the newest snapshot of each of the last keep_daily UTC
 * days that have one, the newest of each of the last keep_weekly ISO weeks,
 * and always `keep_id` (may be NULL). Deletes the other manifests, then the
 * objects that no kept manifest names. If a kept manifest cannot be read,
 * no object is deleted.
 */
int bk_prune(bk_target *t, const uint8_t *key, unsigned keep_daily,
	     unsigned keep_weekly, const char *keep_id, bk_stats *stats);

/* ---- snapshots and manifests ---- */

/* Snapshot ids at the target, oldest first. Free each and the array. */
int bk_snapshots(bk_target *t, char ***ids_r, size_t *n_r);
void bk_strv_free(char **v, size_t n);

typedef struct bk_file {
	char *path;
	uint32_t mode;
	uint64_t size;
	uint8_t sha256[32];
	char object[80];   /* "objects/<64 hex>" */
} bk_file;

typedef struct bk_manifest {
	unsigned version;
	int64_t created;
	char id[BK_SNAPSHOT_ID_MAX + 1];
	bk_file *files;
	size_t n_files;
} bk_manifest;

/*
 * Fetches and opens a manifest: ENG_ENOTFOUND (no such snapshot),
 * ENG_EAUTH (the backup key does not open it, or it was altered),
 * ENG_ENEWER (written by a newer format), ENG_ECORRUPT (damaged).
 * id NULL: the newest snapshot.
 */
int bk_manifest_load(bk_target *t, const uint8_t *key, const char *id,
		     bk_manifest **m_r);
void bk_manifest_free(bk_manifest **m);

/* ---- restore ---- */

/* Selects files for restore; NULL = all. */
typedef bool bk_select_fn(void *ctx, const bk_file *f);

/*
 * Downloads and verifies (every chunk's tag, the end, size and SHA-256)
 * each selected file into stage_dir/<path>. Any failure: ENG_ECORRUPT (or
 * ENG_ENOTFOUND for a missing object) and *bad_r (may be NULL) names the
 * file. stage_dir is made if missing; nothing outside it is touched.
 */
int bk_restore_fetch(bk_target *t, const uint8_t *key, const bk_manifest *m,
		     bk_select_fn *select, void *sctx, const char *stage_dir,
		     const char **bad_r, bk_progress_fn *progress, void *pctx);
/*
 * Moves the staged files into data_dir: each renamed over its place (same
 * file system as stage_dir), directories fsynced. "sealmail.conf" goes to
 * data_dir/sealmail.conf.from-backup, never over the live configuration.
 */
int bk_restore_install(const bk_manifest *m, bk_select_fn *select,
		       void *sctx, const char *stage_dir, const char *data_dir);

/* rm -rf of a stage directory. */
void bk_remove_tree(const char *path);

#endif
