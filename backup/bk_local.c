/*
 * The local-directory target: one file per object under the target
 * directory, object names mapped to paths as they are ("objects/ab12...",
 * "snapshots/20240101T000000Z.manifest"), sub-directories made on demand.
 *
 * Durability: put writes "<name>.tmp-<pid>-<n>" (O_EXCL, 0600), fsyncs it,
 * renames it over the name and fsyncs the directory, so an object is whole
 * or absent. A failed put unlinks its temporary file; list skips temporary
 * names. Names are checked ([0-9a-z._/-], no "..", no leading '/') so a
 * name can never leave the directory.
 */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "bk_target.h"
#include "eng_error.h"
#include "fsutil.h"

#define BK_LOCAL_BUF_BYTES (64 * 1024)

struct bk_local {
	char *dir;
};

static atomic_uint tmp_counter;

static int io_err(int e)
{
	return e == ENOSPC || e == EDQUOT ? ENG_ENOSPC : ENG_EIO;
}

static int name_ok(const char *name)
{
	size_t n = strlen(name);

	if (n == 0 || n > 512 || name[0] == '/' || name[n - 1] == '/')
		return 0;
	for (size_t i = 0; i < n; i++) {
		char c = name[i];

		if (!((c >= '0' && c <= '9') || (c >= 'a' && c <= 'z') ||
		      c == '.' || c == '_' || c == '/' || c == '-'))
			return 0;
	}
	if (strstr(name, "..") != NULL || strstr(name, "//") != NULL ||
	    strstr(name, ".tmp-") != NULL)
		return 0;
	return 1;
}

static char *path_of(const struct bk_local *l, const char *name)
{
	size_t n = strlen(l->dir) + strlen(name) + 2;
	char *p = malloc(n);

	if (p == NULL)
		abort();
	snprintf(p, n, "%s/%s", l->dir, name);
	return p;
}

static int fsync_dir_of(const char *path)
{
	char *copy = strdup(path);
	char *slash;
	int fd, r = 0;

	if (copy == NULL)
		abort();
	slash = strrchr(copy, '/');
	if (slash == copy)
		slash[1] = '\0';
	else if (slash != NULL)
		*slash = '\0';
	fd = open(slash != NULL ? copy : ".", O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	if (fd < 0 || fsync(fd) != 0)
		r = io_err(errno);
	if (fd >= 0)
		close(fd);
	free(copy);
	return r;
}

static int mkparents(const struct bk_local *l, const char *path)
{
	char *copy = strdup(path);
	char *slash;
	char *err = NULL;
	int r = 0;

	if (copy == NULL)
		abort();
	slash = strrchr(copy, '/');
	if (slash != NULL && (size_t)(slash - copy) > strlen(l->dir)) {
		*slash = '\0';
		r = sm_fs_mkdir_p(copy, 0700, &err);
		free(err);
	}
	free(copy);
	return r < 0 ? ENG_EIO : 0;
}

static int local_put(void *impl, const char *name, uint64_t size,
		     bk_read_fn *read_cb, void *ctx)
{
	struct bk_local *l = impl;
	char *path, *tmp;
	size_t tlen;
	uint64_t total = 0;
	unsigned char *buf;
	int fd, r = 0;

	if (!name_ok(name))
		return ENG_EINVAL;
	path = path_of(l, name);
	if (mkparents(l, path) < 0) {
		free(path);
		return ENG_EIO;
	}
	tlen = strlen(path) + 48;
	tmp = malloc(tlen);
	buf = malloc(BK_LOCAL_BUF_BYTES);
	if (tmp == NULL || buf == NULL)
		abort();
	snprintf(tmp, tlen, "%s.tmp-%ld-%u", path, (long)getpid(),
		 atomic_fetch_add(&tmp_counter, 1));
	fd = open(tmp, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
	if (fd < 0) {
		r = io_err(errno);
		goto out;
	}
	for (;;) {
		long n = read_cb(ctx, buf, BK_LOCAL_BUF_BYTES);

		if (n < 0) {
			r = (int)n;
			break;
		}
		if (n == 0)
			break;
		total += (uint64_t)n;
		for (long off = 0; off < n;) {
			ssize_t w = write(fd, buf + off, (size_t)(n - off));

			if (w < 0) {
				if (errno == EINTR)
					continue;
				r = io_err(errno);
				goto fail;
			}
			off += w;
		}
	}
	if (r == 0 && total != size)
		r = ENG_EINVAL;
	if (r == 0 && fsync(fd) != 0)
		r = io_err(errno);
fail:
	if (close(fd) != 0 && r == 0)
		r = io_err(errno);
	if (r == 0 && rename(tmp, path) != 0)
		r = io_err(errno);
	if (r == 0) {
		r = fsync_dir_of(path);
		if (r < 0)
			unlink(path);
	} else {
		unlink(tmp);
	}
out:
	free(buf);
	free(tmp);
	free(path);
	return r;
}

static int local_get(void *impl, const char *name, bk_write_fn *write_cb,
		     void *ctx)
{
	struct bk_local *l = impl;
	unsigned char *buf;
	char *path;
	int fd, r = 0;

	if (!name_ok(name))
		return ENG_EINVAL;
	path = path_of(l, name);
	fd = open(path, O_RDONLY | O_CLOEXEC);
	free(path);
	if (fd < 0)
		return errno == ENOENT ? ENG_ENOTFOUND : ENG_EIO;
	buf = malloc(BK_LOCAL_BUF_BYTES);
	if (buf == NULL)
		abort();
	for (;;) {
		ssize_t n = read(fd, buf, BK_LOCAL_BUF_BYTES);

		if (n < 0) {
			if (errno == EINTR)
				continue;
			r = ENG_EIO;
			break;
		}
		if (n == 0)
			break;
		r = write_cb(ctx, buf, (size_t)n);
		if (r < 0)
			break;
	}
	free(buf);
	close(fd);
	return r < 0 ? r : 0;
}

static int local_stat(void *impl, const char *name, uint64_t *size_r)
{
	struct bk_local *l = impl;
	struct stat st;
	char *path;
	int r;

	if (!name_ok(name))
		return ENG_EINVAL;
	path = path_of(l, name);
	r = stat(path, &st);
	free(path);
	if (r != 0)
		return errno == ENOENT ? ENG_ENOTFOUND : ENG_EIO;
	if (!S_ISREG(st.st_mode))
		return ENG_ENOTFOUND;
	if (size_r != NULL)
		*size_r = (uint64_t)st.st_size;
	return 0;
}

static int local_del(void *impl, const char *name)
{
	struct bk_local *l = impl;
	char *path;
	int r = 0;

	if (!name_ok(name))
		return ENG_EINVAL;
	path = path_of(l, name);
	if (unlink(path) != 0 && errno != ENOENT)
		r = ENG_EIO;
	else if (fsync_dir_of(path) < 0)
		r = ENG_EIO;
	free(path);
	return r;
}

struct name_list {
	char **v;
	size_t n, cap;
};

static void list_add(struct name_list *nl, const char *name)
{
	if (nl->n == nl->cap) {
		nl->cap = nl->cap ? nl->cap * 2 : 64;
		nl->v = realloc(nl->v, nl->cap * sizeof(*nl->v));
		if (nl->v == NULL)
			abort();
	}
	nl->v[nl->n] = strdup(name);
	if (nl->v[nl->n] == NULL)
		abort();
	nl->n++;
}

/* Walks dir/rel recursively, adding regular files whose names match. */
static int walk(const struct bk_local *l, const char *rel, const char *prefix,
		struct name_list *nl, int depth)
{
	char *path = rel[0] ? path_of(l, rel) : strdup(l->dir);
	DIR *d;
	struct dirent *e;
	int r = 0;

	if (path == NULL)
		abort();
	if (depth > 8) {
		free(path);
		return 0;
	}
	d = opendir(path);
	free(path);
	if (d == NULL)
		return errno == ENOENT || errno == ENOTDIR ? 0 : ENG_EIO;
	while (r == 0 && (e = readdir(d)) != NULL) {
		char child[1024];
		struct stat st;
		char *cpath;

		if (e->d_name[0] == '.')
			continue;
		if ((size_t)snprintf(child, sizeof(child), "%s%s%s", rel,
				     rel[0] ? "/" : "", e->d_name) >= sizeof(child))
			continue;
		cpath = path_of(l, child);
		if (lstat(cpath, &st) != 0) {
			free(cpath);
			continue;
		}
		free(cpath);
		if (S_ISDIR(st.st_mode)) {
			size_t cl = strlen(child), pl = strlen(prefix);

			/* Descend only where the prefix can still match. */
			if (strncmp(child, prefix, cl < pl ? cl : pl) == 0)
				r = walk(l, child, prefix, nl, depth + 1);
		} else if (S_ISREG(st.st_mode) && name_ok(child) &&
			   strncmp(child, prefix, strlen(prefix)) == 0) {
			list_add(nl, child);
		}
	}
	closedir(d);
	return r;
}

static int cmp_names(const void *a, const void *b)
{
	return strcmp(*(char *const *)a, *(char *const *)b);
}

static int local_list(void *impl, const char *prefix, char ***names_r,
		      size_t *n_r)
{
	struct bk_local *l = impl;
	struct name_list nl = { 0 };
	int r = walk(l, "", prefix != NULL ? prefix : "", &nl, 0);

	if (r < 0) {
		for (size_t i = 0; i < nl.n; i++)
			free(nl.v[i]);
		free(nl.v);
		return r;
	}
	if (nl.n > 1)
		qsort(nl.v, nl.n, sizeof(*nl.v), cmp_names);
	*names_r = nl.v;
	*n_r = nl.n;
	return 0;
}

static void local_close(void *impl)
{
	struct bk_local *l = impl;

	if (l == NULL)
		return;
	free(l->dir);
	free(l);
}

static const struct bk_target_ops local_ops = {
	.put = local_put,
	.get = local_get,
	.stat = local_stat,
	.del = local_del,
	.list = local_list,
	.close = local_close,
};

int bk_local_open(const char *dir, void **impl_r,
		  const struct bk_target_ops **ops_r)
{
	struct bk_local *l;
	char *err = NULL;
	size_t n;

	if (dir == NULL || dir[0] != '/')
		return ENG_EINVAL;
	if (sm_fs_mkdir_p(dir, 0700, &err) < 0) {
		free(err);
		return ENG_EIO;
	}
	l = calloc(1, sizeof(*l));
	if (l == NULL || (l->dir = strdup(dir)) == NULL)
		abort();
	n = strlen(l->dir);
	while (n > 1 && l->dir[n - 1] == '/')
		l->dir[--n] = '\0';
	*impl_r = l;
	*ops_r = &local_ops;
	return 0;
}
