/*
 * File sets: the files a snapshot is made of (bk.h), and collecting them
 * from a stopped installation (bk_collect_offline: the directory copied
 * with SQLite's backup API) or from sqlited's staging copy
 * (bk_collect_staged). Paths in a set are relative to data_dir; "tmp-*",
 * dot files and SQLite "-shm" files are never listed.
 */
#include <dirent.h>
#include <errno.h>
#include <sqlite3.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "bk_private.h"
#include "eng_error.h"
#include "fsutil.h"

/* ---- file sets ---- */


bk_fileset *bk_fileset_new(void)
{
	bk_fileset *fs = calloc(1, sizeof(*fs));

	if (fs == NULL)
		abort();
	return fs;
}

void bk_fileset_free(bk_fileset **fsp)
{
	bk_fileset *fs = fsp != NULL ? *fsp : NULL;

	if (fs == NULL)
		return;
	for (size_t i = 0; i < fs->n; i++) {
		free(fs->v[i].rel);
		free(fs->v[i].src);
	}
	free(fs->v);
	free(fs);
	*fsp = NULL;
}

void bk_fileset_add(bk_fileset *fs, const char *rel, const char *src,
		    mode_t mode)
{
	if (fs->n == fs->cap) {
		fs->cap = fs->cap ? 2 * fs->cap : 64;
		fs->v = realloc(fs->v, fs->cap * sizeof(*fs->v));
		if (fs->v == NULL)
			abort();
	}
	fs->v[fs->n].rel = strdup(rel);
	fs->v[fs->n].src = strdup(src);
	if (fs->v[fs->n].rel == NULL || fs->v[fs->n].src == NULL)
		abort();
	fs->v[fs->n].mode = mode & 07777;
	fs->n++;
}

static int add_tree(bk_fileset *fs, const char *root, const char *sub,
		    int depth)
{
	char path[4096];
	DIR *d;
	struct dirent *e;
	int r = 0;

	if (depth > 4)
		return 0;
	snprintf(path, sizeof(path), "%s/%s", root, sub);
	d = opendir(path);
	if (d == NULL)
		return errno == ENOENT ? 0 : ENG_EIO;
	while (r == 0 && (e = readdir(d)) != NULL) {
		char rel[2048], src[4096];
		struct stat st;
		size_t nl = strlen(e->d_name);

		if (e->d_name[0] == '.' || strncmp(e->d_name, "tmp-", 4) == 0 ||
		    (nl > 4 && strcmp(e->d_name + nl - 4, "-shm") == 0))
			continue;
		if ((size_t)snprintf(rel, sizeof(rel), "%s/%s", sub, e->d_name) >=
		    sizeof(rel))
			continue;
		snprintf(src, sizeof(src), "%s/%s", root, rel);
		if (lstat(src, &st) != 0)
			continue;  /* gone meanwhile (a drained spool entry) */
		if (S_ISDIR(st.st_mode))
			r = add_tree(fs, root, rel, depth + 1);
		else if (S_ISREG(st.st_mode))
			bk_fileset_add(fs, rel, src, st.st_mode);
	}
	closedir(d);
	return r;
}

int bk_fileset_add_tree(bk_fileset *fs, const char *root, const char *sub)
{
	return add_tree(fs, root, sub, 0);
}

int bk_copy_sqlite(const char *src, const char *dst)
{
	sqlite3 *from = NULL, *to = NULL;
	sqlite3_backup *b;
	int rc;

	unlink(dst);
	rc = sqlite3_open_v2(src, &from, SQLITE_OPEN_READONLY, NULL);
	if (rc == SQLITE_OK)
		rc = sqlite3_open_v2(dst, &to, SQLITE_OPEN_READWRITE |
				     SQLITE_OPEN_CREATE, NULL);
	if (rc == SQLITE_OK) {
		sqlite3_busy_timeout(from, 5000);
		b = sqlite3_backup_init(to, "main", from, "main");
		if (b == NULL) {
			rc = SQLITE_ERROR;
		} else {
			/* One step: one read transaction, one consistent copy. */
			rc = sqlite3_backup_step(b, -1);
			sqlite3_backup_finish(b);
			rc = rc == SQLITE_DONE ? SQLITE_OK : rc;
		}
	}
	sqlite3_close(from);
	if (sqlite3_close(to) != SQLITE_OK && rc == SQLITE_OK)
		rc = SQLITE_ERROR;
	if (rc != SQLITE_OK) {
		unlink(dst);
		return rc == SQLITE_BUSY ? ENG_EBUSY : ENG_EIO;
	}
	return 0;
}

int bk_collect_offline(const char *data_dir, const char *config_path,
		       const char *stage_dir, bk_fileset **fs_r, char **err_r)
{
	bk_fileset *fs = bk_fileset_new();
	char src[4096], dst[4096];
	struct stat st;
	int r;

	*err_r = NULL;
	if ((r = sm_fs_mkdir_p(stage_dir, 0700, err_r)) < 0)
		goto fail;
	r = bk_fileset_add_tree(fs, data_dir, "mailboxes");
	if (r == 0)
		r = bk_fileset_add_tree(fs, data_dir, "spool");
	if (r < 0) {
		if (asprintf(err_r, "%s: cannot read mailboxes/ or spool/",
			     data_dir) < 0)
			abort();
		goto fail;
	}
	snprintf(src, sizeof(src), "%s/directory.db", data_dir);
	if (stat(src, &st) == 0) {
		snprintf(dst, sizeof(dst), "%s/directory.db", stage_dir);
		if ((r = bk_copy_sqlite(src, dst)) < 0) {
			if (asprintf(err_r, "%s: cannot copy the directory", src) < 0)
				abort();
			goto fail;
		}
		bk_fileset_add(fs, "directory.db", dst, 0600);
	}
	if (config_path != NULL && stat(config_path, &st) == 0)
		bk_fileset_add(fs, "sealmail.conf", config_path, st.st_mode);
	*fs_r = fs;
	return 0;
fail:
	bk_fileset_free(&fs);
	return r;
}

int bk_collect_staged(const char *stage_dir, const char *config_path,
		      bk_fileset **fs_r, char **err_r)
{
	bk_fileset *fs = bk_fileset_new();
	char src[4096];
	struct stat st;
	int r;

	*err_r = NULL;
	r = bk_fileset_add_tree(fs, stage_dir, "mailboxes");
	if (r == 0)
		r = bk_fileset_add_tree(fs, stage_dir, "spool");
	if (r < 0) {
		if (asprintf(err_r, "%s: cannot read the staging copy",
			     stage_dir) < 0)
			abort();
		bk_fileset_free(&fs);
		return r;
	}
	snprintf(src, sizeof(src), "%s/directory.db", stage_dir);
	if (stat(src, &st) == 0)
		bk_fileset_add(fs, "directory.db", src, 0600);
	if (config_path != NULL && stat(config_path, &st) == 0)
		bk_fileset_add(fs, "sealmail.conf", config_path, st.st_mode);
	*fs_r = fs;
	return 0;
}
