/*
 * Inside the directory: the backend vtable. Only sqlite-server/dir_*.c
 * include this.
 *
 * dir_common.c does everything that does not depend on the store: it
 * validates and normalises every address, domain, id, keyring and forward
 * list, makes ids, takes the handle's mutex around each call, and builds
 * dir_resolve() from the primitive look-ups. A backend therefore receives
 * only valid, lower-cased names and checked blobs, and must make each
 * operation atomic against other handles and processes on the same store.
 */
#ifndef DIR_PRIVATE_H
#define DIR_PRIVATE_H

#include "dir.h"

#include <pthread.h>

struct dir_ops {
	const char *name;
	void (*close)(dir *d);

	/* ENG_EEXIST if present. */
	int (*domain_add)(dir *d, const char *domain, int64_t now);
	/* ENG_ENOTFOUND if absent; ENG_EPERM if it has aliases and !force;
	 * with force its aliases go too. */
	int (*domain_remove)(dir *d, const char *domain, bool force);
	/* 1, 0 or a negative code. */
	int (*domain_exists)(dir *d, const char *domain);
	/* Sorted. */
	int (*domain_list)(dir *d, char ***domains_r, size_t *n_r);

	/* a is complete and valid. ENG_ENOTFOUND if a->domain is not served
	 * (checked atomically with the insert where the store allows),
	 * ENG_EEXIST if the address (or, astronomically unlikely, the id) is
	 * taken. */
	int (*alias_insert)(dir *d, const dir_alias *a);
	int (*alias_get)(dir *d, const char *address, dir_alias *a_r);
	int (*alias_get_id)(dir *d, const char *id, dir_alias *a_r);
	/* domain NULL: all. Sorted by address. ENG_ENOTFOUND for an unknown
	 * domain. */
	int (*alias_list)(dir *d, const char *domain, dir_alias **v_r,
			  size_t *n_r);
	int (*alias_remove)(dir *d, const char *id);
	/* Stores keyring + public key and version expected + 1 iff the stored
	 * version is expected: ENG_EMODIFIED if not, ENG_ENOTFOUND if no such
	 * alias. */
	int (*alias_set_keyring)(dir *d, const char *id, uint64_t expected,
				 const uint8_t *keyring, size_t len,
				 const uint8_t *public_key);
	/* Sets kind and targets; if kind has DIR_MAILBOX the alias must have
	 * a keyring (checked atomically with the update): ENG_EINVAL if not. */
	int (*alias_set_forwards)(dir *d, const char *id, unsigned kind,
				  char *const *forwards, size_t n);
	int (*alias_set_quota)(dir *d, const char *id, uint64_t quota_bytes);
};

struct dir {
	const struct dir_ops *ops;
	void *impl;
	pthread_mutex_t lock;
};

/* Backend constructors: fill d->ops and d->impl, or return an error and
 * leave them NULL. dir_mongo_open is in the module sealmail-dir-mongo.so
 * (its descriptor's entry, dir_common.c loads it); the module calls back
 * only the dir_* and eng_* helpers listed in sqlite-server/CMakeLists.txt
 * (SM_DIR_MODULE_HOST_SYMBOLS), which executables export. */
typedef int dir_backend_open_fn(dir *d, const char *uri);
int dir_sqlite_open(dir *d, const char *path);
int dir_mongo_open(dir *d, const char *uri);

/* Splits a stored "\n"-joined forward list (SQLite) / checks one read
 * back from a store: ENG_ECORRUPT if a target is not a valid address. */
int dir_forwards_check(char *const *forwards, size_t n);

#endif
