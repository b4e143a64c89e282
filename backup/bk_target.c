/*
 * bk_target: the URI decides the backend (bk_local.c or bk_s3.c); every
 * operation is a call through its ops table. The S3 backend is the module
 * sealmail-bk-s3.so, loaded here at the first s3:// target, so that a
 * process backing up to a directory (or not at all) never maps libcurl
 * and libxml2.
 *
 * "s3://bucket/prefix" takes endpoint, region and the two key files from
 * the configuration; the secret key is read into guarded memory, handed to
 * bk_s3_open() (which keeps its own copy) and wiped here at once.
 */
#include <errno.h>
#include <fcntl.h>
#include <sodium.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "bk_target.h"
#include "eng_error.h"
#include "sm_module.h"

int bk_s3_load(bk_s3_open_fn **open_r)
{
	void *entry;
	int r = sm_module_load(SM_MODULE_BK_S3, SM_MODULE_BK_S3_SYM,
			       "the S3 backup target", &entry);

	*open_r = r == 0 ? (bk_s3_open_fn *)entry : NULL;
	return r;
}

struct bk_target {
	void *impl;
	const struct bk_target_ops *ops;
};

#define KEY_FILE_MAX_BYTES 256

/* One line of a small key file into sodium_malloc'd memory, trimmed. */
static char *read_key_file(const char *path)
{
	char *buf;
	ssize_t n;
	size_t len = 0;
	int fd;

	if (path == NULL)
		return NULL;
	fd = open(path, O_RDONLY | O_CLOEXEC);
	if (fd < 0)
		return NULL;
	buf = sodium_malloc(KEY_FILE_MAX_BYTES + 1);
	if (buf == NULL)
		abort();
	while (len < KEY_FILE_MAX_BYTES &&
	       (n = read(fd, buf + len, KEY_FILE_MAX_BYTES - len)) != 0) {
		if (n < 0) {
			if (errno == EINTR)
				continue;
			break;
		}
		len += (size_t)n;
	}
	close(fd);
	buf[len] = '\0';
	buf[strcspn(buf, "\r\n")] = '\0';
	while (buf[0] == ' ' || buf[0] == '\t')
		memmove(buf, buf + 1, strlen(buf));
	if (buf[0] == '\0') {
		sodium_free(buf);
		return NULL;
	}
	return buf;
}

static int open_s3(const char *uri, const sm_config *cfg, bk_target *t,
		   const char **why_r)
{
	const char *rest = uri + 5;  /* after "s3://" */
	const char *slash = strchr(rest, '/');
	char *bucket, *prefix, *endpoint = NULL;
	char *access = NULL, *secret = NULL;
	bk_s3_params p = { 0 };
	bk_s3_open_fn *s3_open;
	int r;

	if (bk_s3_load(&s3_open) != 0) {
		*why_r = "the S3 module (sealmail-bk-s3.so) is missing or cannot "
			 "be loaded: see the log";
		return ENG_EINVAL;
	}
	if (cfg == NULL) {
		*why_r = "an s3:// target needs the configuration (s3_* keys)";
		return ENG_EINVAL;
	}
	bucket = slash ? strndup(rest, (size_t)(slash - rest)) : strdup(rest);
	if (bucket == NULL)
		abort();
	if (bucket[0] == '\0') {
		free(bucket);
		*why_r = "an s3:// target needs a bucket: s3://BUCKET/PREFIX";
		return ENG_EINVAL;
	}
	/* The prefix is a folder: "a/b" becomes "a/b/". */
	if (slash == NULL || slash[1] == '\0') {
		prefix = strdup("");
	} else {
		size_t n = strlen(slash + 1);

		prefix = malloc(n + 2);
		if (prefix != NULL) {
			memcpy(prefix, slash + 1, n + 1);
			if (prefix[n - 1] != '/')
				strcat(prefix, "/");
		}
	}
	if (prefix == NULL)
		abort();
	if (cfg->s3_endpoint != NULL && cfg->s3_endpoint[0] != '\0') {
		endpoint = strdup(cfg->s3_endpoint);
		p.path_style = 1;
	} else if (asprintf(&endpoint, "https://s3.%s.amazonaws.com",
			    cfg->s3_region) < 0) {
		endpoint = NULL;
	}
	if (endpoint == NULL)
		abort();
	access = read_key_file(cfg->s3_access_key_file);
	secret = read_key_file(cfg->s3_secret_key_file);
	if (access == NULL || secret == NULL) {
		*why_r = "s3_access_key_file and s3_secret_key_file must name "
			 "readable files holding the S3 keys";
		r = ENG_EINVAL;
		goto out;
	}
	p.endpoint = endpoint;
	p.region = cfg->s3_region;
	p.bucket = bucket;
	p.prefix = prefix;
	p.access_key = access;
	p.secret_key = secret;
	p.max_retries = 5;
	r = s3_open(&p, &t->impl, &t->ops);
	if (r < 0)
		*why_r = "the S3 target could not be opened";
out:
	if (access != NULL)
		sodium_free(access);
	if (secret != NULL)
		sodium_free(secret);
	free(endpoint);
	free(bucket);
	free(prefix);
	return r;
}

int bk_target_open(const char *uri, const sm_config *cfg, bk_target **t_r,
		   const char **why_r)
{
	static const char *unused;
	bk_target *t;
	char *def = NULL;
	int r;

	if (why_r == NULL)
		why_r = &unused;
	*t_r = NULL;
	*why_r = NULL;
	if (uri == NULL || uri[0] == '\0') {
		if (cfg == NULL) {
			*why_r = "no target given and no configuration";
			return ENG_EINVAL;
		}
		if (cfg->backup_target != NULL && cfg->backup_target[0] != '\0') {
			uri = cfg->backup_target;
		} else {
			if (asprintf(&def, "%s/backups", cfg->data_dir) < 0)
				abort();
			uri = def;
		}
	}
	t = calloc(1, sizeof(*t));
	if (t == NULL)
		abort();
	if (strncmp(uri, "s3://", 5) == 0) {
		r = open_s3(uri, cfg, t, why_r);
	} else {
		const char *path = uri;

		if (strncmp(uri, "file://", 7) == 0)
			path = uri + 7;
		if (path[0] != '/') {
			*why_r = "a backup target is an absolute path, file:///PATH "
				 "or s3://BUCKET/PREFIX";
			r = ENG_EINVAL;
		} else {
			r = bk_local_open(path, &t->impl, &t->ops);
			if (r < 0)
				*why_r = "the target directory cannot be created";
		}
	}
	free(def);
	if (r < 0) {
		free(t);
		return r;
	}
	*t_r = t;
	return 0;
}

void bk_target_close(bk_target **tp)
{
	bk_target *t = tp != NULL ? *tp : NULL;

	if (t == NULL)
		return;
	t->ops->close(t->impl);
	free(t);
	*tp = NULL;
}

int bk_target_put(bk_target *t, const char *name, uint64_t size,
		  bk_read_fn *read, void *ctx)
{
	return t->ops->put(t->impl, name, size, read, ctx);
}

int bk_target_get(bk_target *t, const char *name, bk_write_fn *write,
		  void *ctx)
{
	return t->ops->get(t->impl, name, write, ctx);
}

int bk_target_stat(bk_target *t, const char *name, uint64_t *size_r)
{
	return t->ops->stat(t->impl, name, size_r);
}

int bk_target_delete(bk_target *t, const char *name)
{
	return t->ops->del(t->impl, name);
}

int bk_target_list(bk_target *t, const char *prefix, char ***names_r,
		   size_t *n_r)
{
	*names_r = NULL;
	*n_r = 0;
	return t->ops->list(t->impl, prefix != NULL ? prefix : "", names_r, n_r);
}
