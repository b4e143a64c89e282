#include "fsutil.h"

#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "eng_error.h"

int sm_set_err(char **err_r, int code, const char *fmt, ...)
{
	va_list ap;

	if (err_r != NULL) {
		free(*err_r);
		*err_r = NULL;
		va_start(ap, fmt);
		if (vasprintf(err_r, fmt, ap) < 0)
			eng_oom(strlen(fmt));
		va_end(ap);
	}
	return code;
}

static int errno_code(int e)
{
	return e == ENOSPC || e == EDQUOT ? ENG_ENOSPC : e == EEXIST ? ENG_EEXIST : ENG_EIO;
}

int sm_fs_mkdir_p(const char *path, mode_t mode, char **err_r)
{
	char *copy = eng_strdup(path);
	struct stat st;
	size_t len = strlen(copy);

	while (len > 1 && copy[len - 1] == '/')
		copy[--len] = '\0';
	for (char *p = copy + 1; *p != '\0'; p++) {
		if (*p != '/')
			continue;
		*p = '\0';
		if (mkdir(copy, 0755) != 0 && errno != EEXIST) {
			int e = errno;

			*p = '/';
			free(copy);
			return sm_set_err(err_r, errno_code(e), "%s: cannot create the directory: %s.",
				       path, strerror(e));
		}
		*p = '/';
	}
	if (mkdir(copy, mode) != 0 && errno != EEXIST) {
		int e = errno;

		free(copy);
		return sm_set_err(err_r, errno_code(e), "%s: cannot create the directory: %s.",
			       path, strerror(e));
	}
	free(copy);
	if (stat(path, &st) != 0)
		return sm_set_err(err_r, ENG_EIO, "%s: %s.", path, strerror(errno));
	if (!S_ISDIR(st.st_mode))
		return sm_set_err(err_r, ENG_EEXIST, "%s: exists and is not a directory.", path);
	return 0;
}

static int fsync_dir_of(const char *path)
{
	char *dir = eng_strdup(path);
	char *slash = strrchr(dir, '/');
	int fd, ret = 0;

	if (slash == NULL)
		strcpy(dir, ".");
	else if (slash == dir)
		dir[1] = '\0';
	else
		*slash = '\0';
	fd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	if (fd < 0 || fsync(fd) != 0)
		ret = -1;
	if (fd >= 0)
		close(fd);
	free(dir);
	return ret;
}

int sm_fs_create_file(const char *path, const void *data, size_t len, mode_t mode,
		      char **err_r)
{
	char *tmp;
	const char *p = data;
	int fd, e;

	if (asprintf(&tmp, "%s.tmp.%ld", path, (long)getpid()) < 0)
		eng_oom(strlen(path) + 32);
	unlink(tmp);  /* a leftover of a crashed run with the same pid */
	fd = open(tmp, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, mode);
	if (fd < 0) {
		e = errno;
		free(tmp);
		return sm_set_err(err_r, errno_code(e), "%s: cannot create the file: %s.",
			       path, strerror(e));
	}
	/* the mode passed to open() is filtered by the umask; state it exactly */
	if (fchmod(fd, mode) != 0)
		goto fail;
	while (len > 0) {
		ssize_t n = write(fd, p, len);

		if (n < 0 && errno == EINTR)
			continue;
		if (n <= 0)
			goto fail;
		p += n;
		len -= (size_t)n;
	}
	if (fsync(fd) != 0)
		goto fail;
	if (close(fd) != 0) {
		fd = -1;
		goto fail;
	}
	fd = -1;
	/* link() rather than rename(): it refuses to replace an existing file */
	if (link(tmp, path) != 0)
		goto fail;
	unlink(tmp);
	free(tmp);
	if (fsync_dir_of(path) != 0)
		return sm_set_err(err_r, ENG_EIO, "%s: cannot sync its directory: %s.",
			       path, strerror(errno));
	return 0;
fail:
	e = errno;
	if (fd >= 0)
		close(fd);
	unlink(tmp);
	free(tmp);
	return sm_set_err(err_r, errno_code(e), "%s: cannot write the file: %s.", path, strerror(e));
}

int sm_fs_exists(const char *path)
{
	struct stat st;

	if (lstat(path, &st) == 0)
		return 1;
	return errno == ENOENT ? 0 : ENG_EIO;
}

void sm_fs_exe_dir(char *out, size_t size)
{
	ssize_t n = readlink("/proc/self/exe", out, size - 1);
	char *slash;

	if (n <= 0 || (size_t)n >= size - 1) {
		out[0] = '\0';
		return;
	}
	out[n] = '\0';
	slash = strrchr(out, '/');
	if (slash != NULL)
		*slash = '\0';
	else
		out[0] = '\0';
}
