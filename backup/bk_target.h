/*
 * Where backup objects go: a local directory or an S3-compatible bucket.
 *
 * A target is a flat namespace of objects under a prefix. Object names are
 * chosen by the backup module (hex hashes and snapshot ids: [0-9a-z._/-]),
 * never derived from mailbox or alias names, so listing a bucket reveals
 * nothing but counts and sizes. Every object is already encrypted and
 * authenticated when it reaches the target; a target only stores bytes.
 *
 * Durability: put returns 0 only when the object is stored whole (local:
 * written to a temporary name, fsynced, renamed, directory fsynced; S3:
 * the PUT or the multipart completion answered 200). A failed put leaves
 * no object of that name behind (or the old one).
 *
 * Objects stream both ways: put reads from a callback, get writes to a
 * callback, so a 50 MB mailbox never sits whole in memory.
 */
#ifndef BK_TARGET_H
#define BK_TARGET_H

#include <stddef.h>
#include <stdint.h>

#include "config.h"

typedef struct bk_target bk_target;

/*
 * Opens "s3://bucket/prefix" (endpoint, region, keys from the config:
 * s3_endpoint, s3_region, s3_access_key_file, s3_secret_key_file), a path
 * "/abs/dir" or "file:///abs/dir", or NULL for the config's backup_target
 * (default "<data_dir>/backups", which snapshots leave out). ENG_EINVAL for
 * a URI it cannot use, with a sentence in *why_r (static string) for the
 * operator.
 */
int bk_target_open(const char *uri, const sm_config *cfg, bk_target **t_r,
		   const char **why_r);
void bk_target_close(bk_target **t);

/* Supplies the next bytes of an object: count, 0 at the end, <0 error. */
typedef long bk_read_fn(void *ctx, void *buf, size_t len);
/* Takes the next bytes of an object: 0 or <0 to stop. */
typedef int bk_write_fn(void *ctx, const void *data, size_t len);

/* size is the exact object size (needed for S3 and progress). */
int bk_target_put(bk_target *t, const char *name, uint64_t size,
		  bk_read_fn *read, void *ctx);
/* ENG_ENOTFOUND if there is no such object. */
int bk_target_get(bk_target *t, const char *name, bk_write_fn *write,
		  void *ctx);
/* 0 if it exists (and *size_r, may be NULL), ENG_ENOTFOUND if not. */
int bk_target_stat(bk_target *t, const char *name, uint64_t *size_r);
/* Missing is fine. */
int bk_target_delete(bk_target *t, const char *name);
/* Names under prefix (may be ""), sorted; free each and the array. */
int bk_target_list(bk_target *t, const char *prefix, char ***names_r,
		   size_t *n_r);

/*
 * The backends behind bk_target (bk_target.c dispatches on the URI). Each
 * implements the five operations; S3 in bk_s3.c (libcurl, SigV4,
 * multipart above 16 MiB, retries with backoff), local in bk_local.c.
 */
struct bk_target_ops {
	int (*put)(void *impl, const char *name, uint64_t size,
		   bk_read_fn *read, void *ctx);
	int (*get)(void *impl, const char *name, bk_write_fn *write, void *ctx);
	int (*stat)(void *impl, const char *name, uint64_t *size_r);
	int (*del)(void *impl, const char *name);
	int (*list)(void *impl, const char *prefix, char ***names_r,
		    size_t *n_r);
	void (*close)(void *impl);
};

/* Constructors used by bk_target_open(). */
int bk_local_open(const char *dir, void **impl_r,
		  const struct bk_target_ops **ops_r);
typedef struct bk_s3_params {
	const char *endpoint;    /* "http://127.0.0.1:4568" or "https://s3.eu-west-1.amazonaws.com" */
	const char *region;      /* "us-east-1" */
	const char *bucket;
	const char *prefix;      /* "" or "host1/" */
	const char *access_key;
	const char *secret_key;  /* secret: never logged */
	int path_style;          /* 1: endpoint/bucket/key (s3rver, MinIO) */
	unsigned max_retries;    /* default 5 */
} bk_s3_params;
/* In the module sealmail-bk-s3.so (libcurl, libxml2): bk_target_open()
 * loads it at the first s3:// target; bk_s3_load() gives its constructor
 * to a caller that wants it directly (ENG_ENOTFOUND if it is not
 * installed, logged). */
typedef int bk_s3_open_fn(const bk_s3_params *p, void **impl_r,
			  const struct bk_target_ops **ops_r);
bk_s3_open_fn bk_s3_open;
int bk_s3_load(bk_s3_open_fn **open_r);

#endif
