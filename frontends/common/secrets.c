#include "secrets.h"

#include <errno.h>
#include <fcntl.h>
#include <sodium.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "eng_error.h"
#include "fsutil.h"

/* 64 hex characters, an optional newline, and one byte to see overflow. */
#define FILE_MAX_BYTES (SM_SECRET_HEX_CHARS + 2)

static void *secure_alloc(size_t len)
{
	void *p;

	if (sodium_init() < 0)
		abort();
	if ((p = sodium_malloc(len)) == NULL)
		eng_oom(len);
	return p;
}

void sm_secret_free(uint8_t **key)
{
	if (key == NULL || *key == NULL)
		return;
	sodium_free(*key);  /* wipes before it frees */
	*key = NULL;
}

void sm_secret_hex_free(char **hex)
{
	if (hex == NULL || *hex == NULL)
		return;
	sodium_free(*hex);
	*hex = NULL;
}

/* Reads and decodes the file; checks the mode when fix_mode is false. */
static int read_secret(const char *path, uint8_t *key, bool fix_mode, char **err_r)
{
	char *text = secure_alloc(FILE_MAX_BYTES);
	struct stat st;
	size_t len = 0, bin_len = 0;
	int fd, ret = 0;

	fd = open(path, O_RDONLY | O_CLOEXEC | O_NOFOLLOW);
	if (fd < 0) {
		int e = errno;

		sodium_free(text);
		return sm_set_err(err_r, e == ENOENT ? ENG_ENOTFOUND : ENG_EIO,
			       "%s: cannot open the secret file: %s.", path, strerror(e));
	}
	if (fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
		ret = sm_set_err(err_r, ENG_EIO, "%s: is not a regular file.", path);
		goto out;
	}
	if ((st.st_mode & 077) != 0) {
		if (!fix_mode) {
			ret = sm_set_err(err_r, ENG_EPERM,
				      "%s: group or others may read this secret; "
				      "run: chmod 600 %s", path, path);
			goto out;
		}
		if (fchmod(fd, 0600) != 0) {
			ret = sm_set_err(err_r, ENG_EIO, "%s: cannot chmod 600: %s.", path,
				      strerror(errno));
			goto out;
		}
		fprintf(stderr, "sealmail: %s was readable by others; its mode is now 0600.\n",
			path);
	}
	while (len < FILE_MAX_BYTES) {
		ssize_t n = read(fd, text + len, FILE_MAX_BYTES - len);

		if (n < 0 && errno == EINTR)
			continue;
		if (n < 0) {
			ret = sm_set_err(err_r, ENG_EIO, "%s: cannot read: %s.", path,
				      strerror(errno));
			goto out;
		}
		if (n == 0)
			break;
		len += (size_t)n;
	}
	if (len > 0 && text[len - 1] == '\n')
		len--;
	if (len != SM_SECRET_HEX_CHARS ||
	    sodium_hex2bin(key, SM_SECRET_BYTES, text, len, NULL, &bin_len, NULL) != 0 ||
	    bin_len != SM_SECRET_BYTES) {
		ret = sm_set_err(err_r, ENG_ECORRUPT,
			      "%s: is not a secret of %d hexadecimal characters; "
			      "restore it from your copy (a new one would not open old data).",
			      path, SM_SECRET_HEX_CHARS);
	}
out:
	close(fd);
	sodium_free(text);
	return ret;
}

int sm_secret_load(const char *path, uint8_t **key_r, char **err_r)
{
	uint8_t *key = secure_alloc(SM_SECRET_BYTES);
	int ret;

	*key_r = NULL;
	if ((ret = read_secret(path, key, false, err_r)) != 0) {
		sodium_free(key);
		return ret;
	}
	*key_r = key;
	return 0;
}

int sm_secret_ensure(const char *path, bool *created_r, char **hex_r, char **err_r)
{
	uint8_t *key = secure_alloc(SM_SECRET_BYTES);
	char *hex;
	int ret;

	*created_r = false;
	if (hex_r != NULL)
		*hex_r = NULL;
	ret = read_secret(path, key, true, err_r);
	if (ret != ENG_ENOTFOUND) {
		sodium_free(key);
		return ret;
	}
	if (err_r != NULL) {
		free(*err_r);
		*err_r = NULL;
	}

	hex = secure_alloc(SM_SECRET_HEX_CHARS + 2);
	randombytes_buf(key, SM_SECRET_BYTES);
	sodium_bin2hex(hex, SM_SECRET_HEX_CHARS + 1, key, SM_SECRET_BYTES);
	sodium_free(key);
	hex[SM_SECRET_HEX_CHARS] = '\n';
	ret = sm_fs_create_file(path, hex, SM_SECRET_HEX_CHARS + 1, 0600, err_r);
	hex[SM_SECRET_HEX_CHARS] = '\0';
	if (ret != 0) {
		sodium_free(hex);
		return ret;
	}
	*created_r = true;
	if (hex_r != NULL)
		*hex_r = hex;
	else
		sodium_free(hex);
	return 0;
}
