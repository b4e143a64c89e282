/*
 * Small file-system helpers for the operator's command and the daemons:
 * directories with a given mode, and files created whole or not at all.
 */
#ifndef SM_FSUTIL_H
#define SM_FSUTIL_H

#include <stddef.h>
#include <sys/types.h>

/*
 * Creates `path` and any missing parents (parents get 0755, the last
 * component `mode`). An existing directory is left as it is (it may be an
 * operator's, such as /etc/ssl/private); a non-directory in the way is
 * ENG_EEXIST. Returns 0 or a negative eng_err code with a malloc'd sentence
 * in *err_r.
 */
int sm_fs_mkdir_p(const char *path, mode_t mode, char **err_r);

/*
 * The error-reporting convention of frontends/common: when err_r is not
 * NULL, *err_r gets a malloc'd sentence (any earlier one freed); returns
 * code, so that `return sm_set_err(err_r, ENG_EIO, "...", ...);` reads.
 */
int sm_set_err(char **err_r, int code, const char *fmt, ...)
	__attribute__((format(printf, 3, 4)));

/*
 * Creates `path` holding exactly data[0..len) with `mode`, durably and
 * atomically: the bytes go to a temporary file in the same directory, which
 * is fsync'd and then linked to `path`, so a crash leaves either no file or
 * the whole file. An existing file is never replaced: that is ENG_EEXIST.
 * Returns 0 or a negative eng_err code with a malloc'd sentence in *err_r.
 */
int sm_fs_create_file(const char *path, const void *data, size_t len, mode_t mode,
		      char **err_r);

/* 1 if path exists (any type), 0 if it does not, negative on other errors. */
int sm_fs_exists(const char *path);

/*
 * The directory of the running executable (/proc/self/exe without its last
 * component) into out[0..size); "" when it cannot be read or does not fit.
 */
void sm_fs_exe_dir(char *out, size_t size);

#endif
