/*
 * The MongoDB directory backend (mongo-c-driver), for installations where
 * several machines share one directory.
 *
 * Collections in the URI's database (default "sealmail"):
 *   domains  { _id: name, created }
 *   aliases  { _id: id, address (unique index), domain (index), kind,
 *              forwards: [..], keyring: binData | null,
 *              keyring_version: int64, public_key: binData | null,
 *              quota_bytes: int64, created, updated }
 *   meta     { _id: "schema", version }   (refused if > DIR_SCHEMA_VERSION)
 *
 * Atomicity: each call is one single-document operation where it can be
 * (MongoDB makes those atomic): the keyring compare-and-swap is an
 * update_one whose filter holds the expected version, the "mailbox needs a
 * keyring" rule is in set_forwards' filter, and address uniqueness is the
 * unique index. Two operations are not atomic across documents, because
 * multi-document transactions need a replica set: alias insert checks the
 * domain and then inserts, and domain remove deletes aliases and then the
 * domain. A race between the two can leave an alias of a removed domain;
 * dir_resolve() never returns one (it checks the domain first), and
 * removing the domain again with force clears it.
 *
 * Durability: writes use write concern {w: "majority", j: true}, so an
 * acknowledged change is journaled on a majority of the replica set.
 *
 * The client is not thread-safe; dir_common.c's per-handle mutex
 * serialises every call.
 *
 * Built as the module sealmail-dir-mongo.so (sm_module.h): its one export
 * is the descriptor at the end, whose entry is dir_mongo_open; it links
 * libmongoc, and calls the process back only for the helpers listed in
 * sqlite-server/CMakeLists.txt (SM_DIR_MODULE_HOST_SYMBOLS).
 */
#include "dir_private.h"
#include "eng_error.h"
#include "sm_module.h"

#include <mongoc/mongoc.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define DUPLICATE_KEY 11000
#define WRITE_TIMEOUT_MS 10000

typedef struct dmongo {
	mongoc_client_t *client;
	char *db_name;
	mongoc_collection_t *domains;
	mongoc_collection_t *aliases;
	mongoc_collection_t *meta;
} dmongo;

static pthread_once_t init_once = PTHREAD_ONCE_INIT;

static void init_driver(void)
{
	/* Never undone: mongoc_cleanup() at exit would race other
	 * handles. */
	mongoc_init();
}

static inline dmongo *impl(dir *d)
{
	return d->impl;
}

/* Maps a driver error to an eng code; the details go to the log. */
static int mongo_err(const bson_error_t *error, const char *what)
{
	eng_log(ENG_LOG_WARN, "directory (mongodb): %s: %s (%u.%u)", what,
		error->message, error->domain, error->code);
	if (error->code == DUPLICATE_KEY)
		return ENG_EEXIST;
	switch (error->domain) {
	case MONGOC_ERROR_BSON:
		return ENG_EINVAL;
	case MONGOC_ERROR_SERVER_SELECTION:
	case MONGOC_ERROR_STREAM:
		return ENG_EIO;
	default:
		return ENG_EIO;
	}
}

/* An int64 field of a reply ("matchedCount", "deletedCount"); 0 if absent. */
static int64_t reply_count(const bson_t *reply, const char *field)
{
	bson_iter_t it;

	if (bson_iter_init_find(&it, reply, field) &&
	    BSON_ITER_HOLDS_NUMBER(&it))
		return bson_iter_as_int64(&it);
	return 0;
}

static int count(dmongo *m, mongoc_collection_t *coll, const bson_t *filter,
		 int64_t *n_r)
{
	bson_error_t error;
	int64_t n = mongoc_collection_count_documents(coll, filter, NULL, NULL,
						      NULL, &error);

	if (n < 0)
		return mongo_err(&error, "count");
	(void)m;
	*n_r = n;
	return 0;
}

/* ---- open / close ---- */

static void dmongo_free(dmongo *m)
{
	if (m == NULL)
		return;
	if (m->domains != NULL)
		mongoc_collection_destroy(m->domains);
	if (m->aliases != NULL)
		mongoc_collection_destroy(m->aliases);
	if (m->meta != NULL)
		mongoc_collection_destroy(m->meta);
	if (m->client != NULL)
		mongoc_client_destroy(m->client);
	free(m->db_name);
	free(m);
}

static void dmongo_close(dir *d)
{
	dmongo_free(impl(d));
	d->impl = NULL;
}

static int ensure_indexes(dmongo *m)
{
	bson_t *cmd;
	bson_t reply;
	bson_error_t error;
	bool ok;

	cmd = BCON_NEW("createIndexes", BCON_UTF8("aliases"),
		       "indexes", "[",
		       "{", "key", "{", "address", BCON_INT32(1), "}",
		       "name", BCON_UTF8("address_unique"),
		       "unique", BCON_BOOL(true), "}",
		       "{", "key", "{", "domain", BCON_INT32(1),
		       "address", BCON_INT32(1), "}",
		       "name", BCON_UTF8("domain_address"), "}",
		       "]");
	ok = mongoc_client_write_command_with_opts(m->client, m->db_name, cmd,
						   NULL, &reply, &error);
	bson_destroy(cmd);
	bson_destroy(&reply);
	return ok ? 0 : mongo_err(&error, "create indexes");
}

/* Reads the schema version; a fresh database gets the current one. */
static int check_schema(dmongo *m)
{
	bson_t *filter = BCON_NEW("_id", BCON_UTF8("schema"));
	mongoc_cursor_t *cur;
	const bson_t *doc;
	bson_error_t error;
	bson_iter_t it;
	int64_t version = -1;
	int err = 0;

	cur = mongoc_collection_find_with_opts(m->meta, filter, NULL, NULL);
	if (mongoc_cursor_next(cur, &doc)) {
		if (bson_iter_init_find(&it, doc, "version") &&
		    BSON_ITER_HOLDS_NUMBER(&it))
			version = bson_iter_as_int64(&it);
		else
			err = ENG_ECORRUPT;
	} else if (mongoc_cursor_error(cur, &error)) {
		err = mongo_err(&error, "read schema");
	} else {
		version = 0;
	}
	mongoc_cursor_destroy(cur);
	if (err == 0 && version > DIR_SCHEMA_VERSION) {
		eng_log(ENG_LOG_ERROR, "directory (mongodb): schema version "
			"%lld is newer than %d", (long long)version,
			DIR_SCHEMA_VERSION);
		err = ENG_ENEWER;
	}
	if (err == 0)
		err = ensure_indexes(m);
	if (err == 0 && version < DIR_SCHEMA_VERSION) {
		/* Version 1 needs nothing but the indexes above; later
		 * versions migrate here, then record themselves. */
		bson_t *doc_new = BCON_NEW("_id", BCON_UTF8("schema"),
					   "version",
					   BCON_INT64(DIR_SCHEMA_VERSION));
		bson_t *opts = BCON_NEW("upsert", BCON_BOOL(true));
		bson_t reply;

		if (!mongoc_collection_replace_one(m->meta, filter, doc_new,
						   opts, &reply, &error))
			err = mongo_err(&error, "write schema");
		bson_destroy(&reply);
		bson_destroy(opts);
		bson_destroy(doc_new);
	}
	bson_destroy(filter);
	return err;
}

/* ---- domains ---- */

static int dmongo_domain_add(dir *d, const char *domain, int64_t now)
{
	dmongo *m = impl(d);
	bson_t *doc = BCON_NEW("_id", BCON_UTF8(domain),
			       "created", BCON_INT64(now));
	bson_error_t error;
	bool ok;

	ok = mongoc_collection_insert_one(m->domains, doc, NULL, NULL, &error);
	bson_destroy(doc);
	return ok ? 0 : mongo_err(&error, "add domain");
}

static int dmongo_domain_exists(dir *d, const char *domain)
{
	dmongo *m = impl(d);
	bson_t *filter = BCON_NEW("_id", BCON_UTF8(domain));
	int64_t n = 0;
	int err = count(m, m->domains, filter, &n);

	bson_destroy(filter);
	return err != 0 ? err : n > 0;
}

static int dmongo_domain_remove(dir *d, const char *domain, bool force)
{
	dmongo *m = impl(d);
	bson_t *by_domain = BCON_NEW("domain", BCON_UTF8(domain));
	bson_t *by_id = BCON_NEW("_id", BCON_UTF8(domain));
	bson_error_t error;
	bson_t reply;
	int64_t n = 0;
	int err;

	err = dmongo_domain_exists(d, domain);
	if (err == 0)
		err = ENG_ENOTFOUND;
	if (err < 0)
		goto out;
	err = 0;
	if ((err = count(m, m->aliases, by_domain, &n)) != 0)
		goto out;
	if (n > 0 && !force) {
		err = ENG_EPERM;
		goto out;
	}
	if (n > 0) {
		if (!mongoc_collection_delete_many(m->aliases, by_domain, NULL,
						   &reply, &error))
			err = mongo_err(&error, "remove aliases");
		bson_destroy(&reply);
		if (err != 0)
			goto out;
	}
	if (!mongoc_collection_delete_one(m->domains, by_id, NULL, &reply,
					  &error))
		err = mongo_err(&error, "remove domain");
	else if (reply_count(&reply, "deletedCount") == 0)
		err = ENG_ENOTFOUND;
	bson_destroy(&reply);
out:
	bson_destroy(by_domain);
	bson_destroy(by_id);
	return err;
}

static int dmongo_domain_list(dir *d, char ***domains_r, size_t *n_r)
{
	dmongo *m = impl(d);
	bson_t filter = BSON_INITIALIZER;
	bson_t *opts = BCON_NEW("sort", "{", "_id", BCON_INT32(1), "}");
	mongoc_cursor_t *cur;
	const bson_t *doc;
	bson_error_t error;
	bson_iter_t it;
	char **v = NULL;
	size_t n = 0;
	int err = 0;

	cur = mongoc_collection_find_with_opts(m->domains, &filter, opts, NULL);
	while (mongoc_cursor_next(cur, &doc)) {
		if (!bson_iter_init_find(&it, doc, "_id") ||
		    !BSON_ITER_HOLDS_UTF8(&it)) {
			err = ENG_ECORRUPT;
			break;
		}
		v = eng_realloc(v, (n + 1) * sizeof(*v));
		v[n++] = eng_strdup(bson_iter_utf8(&it, NULL));
	}
	if (err == 0 && mongoc_cursor_error(cur, &error))
		err = mongo_err(&error, "list domains");
	mongoc_cursor_destroy(cur);
	bson_destroy(opts);
	bson_destroy(&filter);
	if (err != 0) {
		dir_strv_free(&v, n);
		return err;
	}
	*domains_r = v;
	*n_r = n;
	return 0;
}

/* ---- aliases ---- */

static void append_forwards(bson_t *doc, char *const *forwards, size_t n)
{
	bson_t arr;
	char key[16];
	const char *k;

	bson_append_array_begin(doc, "forwards", -1, &arr);
	for (size_t i = 0; i < n; i++) {
		bson_uint32_to_string((uint32_t)i, &k, key, sizeof(key));
		bson_append_utf8(&arr, k, -1, forwards[i], -1);
	}
	bson_append_array_end(doc, &arr);
}

static int read_forwards(bson_iter_t *it, dir_alias *a)
{
	bson_iter_t child;

	if (!BSON_ITER_HOLDS_ARRAY(it) || !bson_iter_recurse(it, &child))
		return ENG_ECORRUPT;
	while (bson_iter_next(&child)) {
		if (!BSON_ITER_HOLDS_UTF8(&child) ||
		    a->n_forwards == DIR_MAX_FORWARDS)
			return ENG_ECORRUPT;
		a->forwards = eng_realloc(a->forwards, (a->n_forwards + 1) *
					  sizeof(*a->forwards));
		a->forwards[a->n_forwards++] =
			eng_strdup(bson_iter_utf8(&child, NULL));
	}
	return dir_forwards_check(a->forwards, a->n_forwards);
}

static int read_alias(const bson_t *doc, dir_alias *a)
{
	bson_iter_t it;
	bson_subtype_t subtype;
	const uint8_t *bin;
	uint32_t bin_len;
	int err = 0;

	memset(a, 0, sizeof(*a));
	if (!bson_iter_init(&it, doc))
		return ENG_ECORRUPT;
	while (err == 0 && bson_iter_next(&it)) {
		const char *key = bson_iter_key(&it);

		if (strcmp(key, "_id") == 0) {
			const char *id = BSON_ITER_HOLDS_UTF8(&it) ?
					 bson_iter_utf8(&it, NULL) : NULL;

			if (!dir_valid_id(id))
				err = ENG_ECORRUPT;
			else
				memcpy(a->id, id, DIR_ID_HEX_LEN + 1);
		} else if (strcmp(key, "address") == 0 ||
			   strcmp(key, "domain") == 0) {
			char **dst = key[0] == 'a' ? &a->address : &a->domain;

			if (!BSON_ITER_HOLDS_UTF8(&it) || *dst != NULL)
				err = ENG_ECORRUPT;
			else
				*dst = eng_strdup(bson_iter_utf8(&it, NULL));
		} else if (strcmp(key, "kind") == 0) {
			a->kind = BSON_ITER_HOLDS_NUMBER(&it) ?
				  (unsigned)bson_iter_as_int64(&it) : 0;
		} else if (strcmp(key, "forwards") == 0) {
			if (a->forwards != NULL)
				err = ENG_ECORRUPT;
			else
				err = read_forwards(&it, a);
		} else if (strcmp(key, "keyring") == 0 ||
			   strcmp(key, "public_key") == 0) {
			if (BSON_ITER_HOLDS_NULL(&it))
				continue;
			if (!BSON_ITER_HOLDS_BINARY(&it)) {
				err = ENG_ECORRUPT;
				continue;
			}
			bson_iter_binary(&it, &subtype, &bin_len, &bin);
			if (key[0] == 'k') {
				if (a->keyring != NULL || bin_len == 0 ||
				    bin_len > DIR_KEYRING_MAX_BYTES) {
					err = ENG_ECORRUPT;
					continue;
				}
				a->keyring = eng_malloc(bin_len);
				memcpy(a->keyring, bin, bin_len);
				a->keyring_len = bin_len;
			} else if (bin_len != ENG_PK_BYTES) {
				err = ENG_ECORRUPT;
			} else {
				memcpy(a->public_key, bin, ENG_PK_BYTES);
				a->has_public_key = true;
			}
		} else if (strcmp(key, "keyring_version") == 0 ||
			   strcmp(key, "quota_bytes") == 0 ||
			   strcmp(key, "created") == 0) {
			int64_t v = BSON_ITER_HOLDS_NUMBER(&it) ?
				    bson_iter_as_int64(&it) : -1;

			if (v < 0)
				err = ENG_ECORRUPT;
			else if (key[0] == 'k')
				a->keyring_version = (uint64_t)v;
			else if (key[0] == 'q')
				a->quota_bytes = (uint64_t)v;
			else
				a->created = v;
		}
	}
	if (err == 0 && (a->id[0] == '\0' || a->address == NULL ||
			 a->domain == NULL || a->kind == 0 ||
			 (a->kind & ~(DIR_MAILBOX | DIR_FORWARD)) != 0 ||
			 ((a->kind & DIR_MAILBOX) && a->keyring == NULL)))
		err = ENG_ECORRUPT;
	if (err != 0) {
		eng_log(ENG_LOG_ERROR, "directory (mongodb): malformed alias "
			"document");
		dir_alias_clear(a);
	}
	return err;
}

static int find_aliases(dmongo *m, const bson_t *filter, const bson_t *opts,
			dir_alias **v_r, size_t *n_r)
{
	mongoc_cursor_t *cur;
	const bson_t *doc;
	bson_error_t error;
	dir_alias *v = NULL;
	size_t n = 0;
	int err = 0;

	cur = mongoc_collection_find_with_opts(m->aliases, filter, opts, NULL);
	while (mongoc_cursor_next(cur, &doc)) {
		v = eng_realloc(v, (n + 1) * sizeof(*v));
		if ((err = read_alias(doc, &v[n])) != 0)
			break;
		n++;
	}
	if (err == 0 && mongoc_cursor_error(cur, &error))
		err = mongo_err(&error, "find aliases");
	mongoc_cursor_destroy(cur);
	if (err != 0) {
		dir_alias_array_free(&v, n);
		return err;
	}
	*v_r = v;
	*n_r = n;
	return 0;
}

static int get_one(dmongo *m, const char *field, const char *value,
		   dir_alias *a_r)
{
	bson_t *filter = BCON_NEW(field, BCON_UTF8(value));
	bson_t *opts = BCON_NEW("limit", BCON_INT64(1));
	dir_alias *v = NULL;
	size_t n = 0;
	int err;

	err = find_aliases(m, filter, opts, &v, &n);
	bson_destroy(filter);
	bson_destroy(opts);
	if (err != 0)
		return err;
	if (n == 0) {
		free(v);
		return ENG_ENOTFOUND;
	}
	*a_r = v[0];
	free(v);
	return 0;
}

static int dmongo_alias_get(dir *d, const char *address, dir_alias *a_r)
{
	return get_one(impl(d), "address", address, a_r);
}

static int dmongo_alias_get_id(dir *d, const char *id, dir_alias *a_r)
{
	return get_one(impl(d), "_id", id, a_r);
}

static int dmongo_alias_insert(dir *d, const dir_alias *a)
{
	dmongo *m = impl(d);
	bson_t doc = BSON_INITIALIZER;
	bson_error_t error;
	int err;

	err = dmongo_domain_exists(d, a->domain);
	if (err <= 0)
		return err == 0 ? ENG_ENOTFOUND : err;
	err = 0;
	BSON_APPEND_UTF8(&doc, "_id", a->id);
	BSON_APPEND_UTF8(&doc, "address", a->address);
	BSON_APPEND_UTF8(&doc, "domain", a->domain);
	BSON_APPEND_INT32(&doc, "kind", (int32_t)a->kind);
	append_forwards(&doc, a->forwards, a->n_forwards);
	if (a->keyring != NULL)
		BSON_APPEND_BINARY(&doc, "keyring", BSON_SUBTYPE_BINARY,
				   a->keyring, (uint32_t)a->keyring_len);
	else
		BSON_APPEND_NULL(&doc, "keyring");
	BSON_APPEND_INT64(&doc, "keyring_version", (int64_t)a->keyring_version);
	if (a->has_public_key)
		BSON_APPEND_BINARY(&doc, "public_key", BSON_SUBTYPE_BINARY,
				   a->public_key, ENG_PK_BYTES);
	else
		BSON_APPEND_NULL(&doc, "public_key");
	BSON_APPEND_INT64(&doc, "quota_bytes", (int64_t)a->quota_bytes);
	BSON_APPEND_INT64(&doc, "created", a->created);
	BSON_APPEND_INT64(&doc, "updated", a->created);
	if (!mongoc_collection_insert_one(m->aliases, &doc, NULL, NULL, &error))
		err = mongo_err(&error, "add alias");
	bson_destroy(&doc);
	return err;
}

static int dmongo_alias_list(dir *d, const char *domain, dir_alias **v_r,
			     size_t *n_r)
{
	dmongo *m = impl(d);
	bson_t *filter;
	bson_t *opts = BCON_NEW("sort", "{", "address", BCON_INT32(1), "}");
	int err;

	if (domain != NULL) {
		err = dmongo_domain_exists(d, domain);
		if (err <= 0) {
			bson_destroy(opts);
			return err == 0 ? ENG_ENOTFOUND : err;
		}
		filter = BCON_NEW("domain", BCON_UTF8(domain));
	} else {
		filter = bson_new();
	}
	err = find_aliases(m, filter, opts, v_r, n_r);
	bson_destroy(filter);
	bson_destroy(opts);
	return err;
}

static int dmongo_alias_remove(dir *d, const char *id)
{
	dmongo *m = impl(d);
	bson_t *filter = BCON_NEW("_id", BCON_UTF8(id));
	bson_error_t error;
	bson_t reply;
	int err = 0;

	if (!mongoc_collection_delete_one(m->aliases, filter, NULL, &reply,
					  &error))
		err = mongo_err(&error, "remove alias");
	else if (reply_count(&reply, "deletedCount") == 0)
		err = ENG_ENOTFOUND;
	bson_destroy(&reply);
	bson_destroy(filter);
	return err;
}

/*
 * update_one; if nothing matched, ENG_ENOTFOUND when the id does not exist
 * and `unmatched` when it does (the filter's condition failed).
 */
static int update_alias(dmongo *m, const char *id, bson_t *filter,
			bson_t *update, int unmatched)
{
	bson_error_t error;
	bson_t reply;
	int err = 0;

	if (!mongoc_collection_update_one(m->aliases, filter, update, NULL,
					  &reply, &error))
		err = mongo_err(&error, "update alias");
	else if (reply_count(&reply, "matchedCount") == 0)
		err = ENG_ENOTFOUND;
	bson_destroy(&reply);
	bson_destroy(filter);
	bson_destroy(update);
	if (err == ENG_ENOTFOUND && unmatched != ENG_ENOTFOUND) {
		bson_t *by_id = BCON_NEW("_id", BCON_UTF8(id));
		int64_t n = 0;

		err = count(m, m->aliases, by_id, &n);
		bson_destroy(by_id);
		if (err == 0)
			err = n > 0 ? unmatched : ENG_ENOTFOUND;
	}
	return err;
}

static int dmongo_alias_set_keyring(dir *d, const char *id, uint64_t expected,
				    const uint8_t *keyring, size_t len,
				    const uint8_t *public_key)
{
	bson_t *filter = BCON_NEW("_id", BCON_UTF8(id), "keyring_version",
				  BCON_INT64((int64_t)expected));
	bson_t *update = BCON_NEW(
		"$set", "{",
		"keyring", BCON_BIN(BSON_SUBTYPE_BINARY, keyring, (uint32_t)len),
		"public_key", BCON_BIN(BSON_SUBTYPE_BINARY, public_key,
				       ENG_PK_BYTES),
		"updated", BCON_INT64((int64_t)time(NULL)), "}",
		"$inc", "{", "keyring_version", BCON_INT64(1), "}");

	return update_alias(impl(d), id, filter, update, ENG_EMODIFIED);
}

static int dmongo_alias_set_forwards(dir *d, const char *id, unsigned kind,
				     char *const *forwards, size_t n)
{
	bson_t *filter;
	bson_t *update = bson_new();
	bson_t set;

	if (kind & DIR_MAILBOX)
		filter = BCON_NEW("_id", BCON_UTF8(id), "keyring", "{",
				  "$type", BCON_UTF8("binData"), "}");
	else
		filter = BCON_NEW("_id", BCON_UTF8(id));
	bson_append_document_begin(update, "$set", -1, &set);
	BSON_APPEND_INT32(&set, "kind", (int32_t)kind);
	append_forwards(&set, forwards, n);
	BSON_APPEND_INT64(&set, "updated", (int64_t)time(NULL));
	bson_append_document_end(update, &set);
	return update_alias(impl(d), id, filter, update, ENG_EINVAL);
}

static int dmongo_alias_set_quota(dir *d, const char *id,
				  uint64_t quota_bytes)
{
	bson_t *filter = BCON_NEW("_id", BCON_UTF8(id));
	bson_t *update = BCON_NEW("$set", "{", "quota_bytes",
				  BCON_INT64((int64_t)quota_bytes), "updated",
				  BCON_INT64((int64_t)time(NULL)), "}");

	return update_alias(impl(d), id, filter, update, ENG_ENOTFOUND);
}

static const struct dir_ops dmongo_ops = {
	.name = "mongodb",
	.close = dmongo_close,
	.domain_add = dmongo_domain_add,
	.domain_remove = dmongo_domain_remove,
	.domain_exists = dmongo_domain_exists,
	.domain_list = dmongo_domain_list,
	.alias_insert = dmongo_alias_insert,
	.alias_get = dmongo_alias_get,
	.alias_get_id = dmongo_alias_get_id,
	.alias_list = dmongo_alias_list,
	.alias_remove = dmongo_alias_remove,
	.alias_set_keyring = dmongo_alias_set_keyring,
	.alias_set_forwards = dmongo_alias_set_forwards,
	.alias_set_quota = dmongo_alias_set_quota,
};

int dir_mongo_open(dir *d, const char *uri_string)
{
	mongoc_uri_t *uri;
	mongoc_write_concern_t *wc;
	bson_error_t error;
	bson_t *ping;
	bson_t reply;
	dmongo *m;
	const char *db;
	int err;

	pthread_once(&init_once, init_driver);
	uri = mongoc_uri_new_with_error(uri_string, &error);
	if (uri == NULL) {
		/* The URI may hold a password: log the driver's reason
		 * only. */
		eng_log(ENG_LOG_ERROR, "directory (mongodb): bad URI: %s",
			error.message);
		return ENG_EINVAL;
	}
	m = eng_calloc(1, sizeof(*m));
	db = mongoc_uri_get_database(uri);
	m->db_name = eng_strdup(db != NULL && *db != '\0' ? db : "sealmail");
	m->client = mongoc_client_new_from_uri(uri);
	mongoc_uri_destroy(uri);
	if (m->client == NULL) {
		dmongo_free(m);
		return ENG_EINVAL;
	}
	mongoc_client_set_error_api(m->client, MONGOC_ERROR_API_VERSION_2);
	mongoc_client_set_appname(m->client, "sealmail-sqlited");
	wc = mongoc_write_concern_new();
	mongoc_write_concern_set_wmajority(wc, WRITE_TIMEOUT_MS);
	mongoc_write_concern_set_journal(wc, true);
	mongoc_client_set_write_concern(m->client, wc);
	mongoc_write_concern_destroy(wc);

	ping = BCON_NEW("ping", BCON_INT32(1));
	if (!mongoc_client_command_simple(m->client, "admin", ping, NULL,
					  &reply, &error)) {
		err = mongo_err(&error, "ping");
		bson_destroy(&reply);
		bson_destroy(ping);
		dmongo_free(m);
		return err == ENG_EEXIST ? ENG_EIO : err;
	}
	bson_destroy(&reply);
	bson_destroy(ping);

	m->domains = mongoc_client_get_collection(m->client, m->db_name,
						  "domains");
	m->aliases = mongoc_client_get_collection(m->client, m->db_name,
						  "aliases");
	m->meta = mongoc_client_get_collection(m->client, m->db_name, "meta");
	if ((err = check_schema(m)) != 0) {
		dmongo_free(m);
		return err;
	}
	d->ops = &dmongo_ops;
	d->impl = m;
	return 0;
}

/* The module's one entry point (sm_module.h). */
SM_MODULE_EXPORT const sm_module_desc sealmail_dir_mongo_module = {
	.abi = SM_MODULE_ABI,
	.name = "dir-mongo",
	.entry = (void *)dir_mongo_open,
};
