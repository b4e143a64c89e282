/*
 * The directory's front half, shared by both backends: dir_open()'s
 * dispatch, address and domain validation, argument checks, the handle's
 * mutex, and dir_resolve().
 *
 * Invariant: a backend only ever sees names that passed the checks here,
 * lower-cased (forward targets: domain lower-cased, local part as given),
 * keyrings that decode and whose public key is the one stored beside them.
 */
#include "dir_private.h"
#include "eng_error.h"
#include "keys.h"
#include "sm_module.h"

#include <sodium.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

/* ---- names ---- */

static bool is_alpha(unsigned char c)
{
	return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z');
}

static bool is_digit(unsigned char c)
{
	return c >= '0' && c <= '9';
}

/*
 * RFC 5322 atext, less '%' and '!' so that neither the percent hack nor a
 * bang path can ever be a local part here, whatever a relay downstream
 * makes of them.
 */
static bool is_local_char(unsigned char c)
{
	return is_alpha(c) || is_digit(c) ||
	       (c != '\0' && strchr("#$&'*+-/=?^_`{|}~", c) != NULL);
}

static unsigned char lower(unsigned char c)
{
	return (c >= 'A' && c <= 'Z') ? (unsigned char)(c - 'A' + 'a') : c;
}

/* A dot-atom of 1..DIR_LOCAL_MAX bytes. */
static bool valid_local(const char *s, size_t len)
{
	if (len == 0 || len > DIR_LOCAL_MAX || s[0] == '.' || s[len - 1] == '.')
		return false;
	for (size_t i = 0; i < len; i++) {
		unsigned char c = (unsigned char)s[i];

		if (c == '.') {
			if (s[i + 1] == '.')
				return false;
		} else if (!is_local_char(c)) {
			return false;
		}
	}
	return true;
}

/*
 * LDH labels; writes the lower-cased domain to out (len + 1 bytes).
 * A top-level label of digits only is refused: it is an IPv4 address in
 * disguise, not a domain anyone can serve.
 */
static bool valid_domain(const char *s, size_t len, char *out)
{
	size_t label_start = 0;
	bool all_digits = true;

	if (len == 0 || len > DIR_DOMAIN_MAX)
		return false;
	for (size_t i = 0; i <= len; i++) {
		unsigned char c = i < len ? (unsigned char)s[i] : '.';

		if (c == '.') {
			size_t llen = i - label_start;

			if (llen == 0 || llen > DIR_LABEL_MAX ||
			    s[label_start] == '-' || s[i - 1] == '-')
				return false;
			if (i == len && all_digits)
				return false;
			label_start = i + 1;
			all_digits = true;
			if (i < len)
				out[i] = '.';
			continue;
		}
		if (!is_alpha(c) && !is_digit(c) && c != '-')
			return false;
		if (!is_digit(c))
			all_digits = false;
		out[i] = (char)lower(c);
	}
	out[len] = '\0';
	return true;
}

int dir_normalize_domain(const char *domain, char *out)
{
	if (domain == NULL || out == NULL)
		return ENG_EINVAL;
	return valid_domain(domain, strlen(domain), out) ? 0 : ENG_EINVAL;
}

/*
 * The one address parser. fold_local: lower-case the local part (local
 * aliases) or keep it (remote forward targets).
 */
static int normalize_address(const char *address, bool allow_catchall,
			     bool fold_local, char *out, size_t *at_r)
{
	const char *at;
	size_t len, local_len;
	bool catchall = false;

	if (address == NULL || out == NULL)
		return ENG_EINVAL;
	len = strlen(address);
	if (len > DIR_ADDRESS_MAX + 1)  /* +1: "@domain" becomes "*@domain" */
		return ENG_EINVAL;
	at = strchr(address, '@');
	if (at == NULL)
		return ENG_EINVAL;
	local_len = (size_t)(at - address);
	if (local_len == 0 || (local_len == 1 && address[0] == '*')) {
		/* "@a:u@b" (a source route) lands here too and fails on
		 * its domain. */
		if (!allow_catchall)
			return ENG_EINVAL;
		catchall = true;
		out[0] = '*';
	} else {
		if (!valid_local(address, local_len))
			return ENG_EINVAL;
		for (size_t i = 0; i < local_len; i++)
			out[i] = fold_local ? (char)lower((unsigned char)address[i])
					    : address[i];
	}
	if (catchall)
		local_len = 1;
	if (local_len + 1 + strlen(at + 1) > DIR_ADDRESS_MAX)
		return ENG_EINVAL;
	out[local_len] = '@';
	if (!valid_domain(at + 1, strlen(at + 1), out + local_len + 1))
		return ENG_EINVAL;
	if (at_r != NULL)
		*at_r = local_len;
	return 0;
}

int dir_normalize_address(const char *address, bool allow_catchall,
			  char *out, size_t *at_r)
{
	return normalize_address(address, allow_catchall, true, out, at_r);
}

bool dir_valid_id(const char *s)
{
	if (s == NULL || strlen(s) != DIR_ID_HEX_LEN)
		return false;
	for (size_t i = 0; i < DIR_ID_HEX_LEN; i++) {
		if (!is_digit((unsigned char)s[i]) && !(s[i] >= 'a' && s[i] <= 'f'))
			return false;
	}
	return true;
}

int dir_forwards_check(char *const *forwards, size_t n)
{
	char buf[DIR_ADDRESS_MAX + 1];

	if (n > DIR_MAX_FORWARDS)
		return ENG_ECORRUPT;
	for (size_t i = 0; i < n; i++) {
		if (normalize_address(forwards[i], false, false, buf, NULL) != 0)
			return ENG_ECORRUPT;
	}
	return 0;
}

/* ---- owned values ---- */

void dir_strv_free(char ***v, size_t n)
{
	if (v == NULL || *v == NULL)
		return;
	for (size_t i = 0; i < n; i++)
		free((*v)[i]);
	free(*v);
	*v = NULL;
}

void dir_alias_clear(dir_alias *a)
{
	if (a == NULL)
		return;
	free(a->address);
	free(a->domain);
	dir_strv_free(&a->forwards, a->n_forwards);
	free(a->keyring);
	memset(a, 0, sizeof(*a));
}

void dir_alias_array_free(dir_alias **v, size_t n)
{
	if (v == NULL || *v == NULL)
		return;
	for (size_t i = 0; i < n; i++)
		dir_alias_clear(&(*v)[i]);
	free(*v);
	*v = NULL;
}

void dir_resolved_clear(dir_resolved *r)
{
	if (r == NULL)
		return;
	free(r->address);
	free(r->recipient);
	free(r->detail);
	dir_strv_free(&r->forwards, r->n_forwards);
	memset(r, 0, sizeof(*r));
}

/* ---- open / close ---- */

/* The MongoDB backend is a module (libmongoc and its ~20 libraries are
 * mapped only by a process that opens such a directory). */
static int mongo_open(dir *d, const char *uri)
{
	void *entry;
	int err = sm_module_load(SM_MODULE_DIR_MONGO, SM_MODULE_DIR_MONGO_SYM,
				 "the MongoDB directory", &entry);

	if (err != 0)
		return err;
	return ((dir_backend_open_fn *)entry)(d, uri);
}

static bool has_prefix(const char *s, const char *prefix)
{
	return strncmp(s, prefix, strlen(prefix)) == 0;
}

int dir_open(const char *uri, const char *data_dir, dir **d_r)
{
	dir *d;
	char *path = NULL;
	int err;

	if (d_r == NULL)
		return ENG_EINVAL;
	*d_r = NULL;
	if (eng_crypto_init() != 0)
		return ENG_EIO;
	d = eng_calloc(1, sizeof(*d));
	if (uri == NULL || *uri == '\0' || strcmp(uri, "embedded") == 0) {
		if (data_dir == NULL || *data_dir == '\0') {
			free(d);
			return ENG_EINVAL;
		}
		if (asprintf(&path, "%s/directory.db", data_dir) < 0)
			eng_oom(strlen(data_dir) + 16);
		err = dir_sqlite_open(d, path);
		free(path);
	} else if (has_prefix(uri, "sqlite:")) {
		if (uri[7] == '\0') {
			free(d);
			return ENG_EINVAL;
		}
		err = dir_sqlite_open(d, uri + 7);
	} else if (has_prefix(uri, "mongodb://") ||
		   has_prefix(uri, "mongodb+srv://")) {
		err = mongo_open(d, uri);
	} else {
		eng_log(ENG_LOG_ERROR, "directory: unknown URI scheme");
		err = ENG_EINVAL;
	}
	if (err != 0) {
		free(d);
		return err;
	}
	if (pthread_mutex_init(&d->lock, NULL) != 0) {
		d->ops->close(d);
		free(d);
		return ENG_EIO;
	}
	*d_r = d;
	return 0;
}

void dir_close(dir **dp)
{
	dir *d;

	if (dp == NULL || *dp == NULL)
		return;
	d = *dp;
	*dp = NULL;
	d->ops->close(d);
	pthread_mutex_destroy(&d->lock);
	free(d);
}

const char *dir_backend_name(const dir *d)
{
	return d->ops->name;
}

/* Every call below runs its backend operation under the handle's mutex. */
#define LOCKED(d, expr) ({ \
	int locked_rc_; \
	pthread_mutex_lock(&(d)->lock); \
	locked_rc_ = (expr); \
	pthread_mutex_unlock(&(d)->lock); \
	locked_rc_; })

/* ---- domains ---- */

int dir_domain_add(dir *d, const char *domain)
{
	char norm[DIR_DOMAIN_MAX + 1];

	if (d == NULL || dir_normalize_domain(domain, norm) != 0)
		return ENG_EINVAL;
	return LOCKED(d, d->ops->domain_add(d, norm, (int64_t)time(NULL)));
}

int dir_domain_remove(dir *d, const char *domain, bool force)
{
	char norm[DIR_DOMAIN_MAX + 1];

	if (d == NULL || dir_normalize_domain(domain, norm) != 0)
		return ENG_EINVAL;
	return LOCKED(d, d->ops->domain_remove(d, norm, force));
}

int dir_domain_exists(dir *d, const char *domain)
{
	char norm[DIR_DOMAIN_MAX + 1];

	if (d == NULL)
		return ENG_EINVAL;
	if (dir_normalize_domain(domain, norm) != 0)
		return 0;
	return LOCKED(d, d->ops->domain_exists(d, norm));
}

int dir_domain_list(dir *d, char ***domains_r, size_t *n_r)
{
	if (d == NULL || domains_r == NULL || n_r == NULL)
		return ENG_EINVAL;
	*domains_r = NULL;
	*n_r = 0;
	return LOCKED(d, d->ops->domain_list(d, domains_r, n_r));
}

/* ---- aliases ---- */

/* Checks a keyring blob and gives its public key. */
static int check_keyring(const uint8_t *blob, size_t len,
			 uint8_t pk_r[ENG_PK_BYTES])
{
	eng_keyring *kr = NULL;
	int err;

	if (blob == NULL || len == 0)
		return ENG_EINVAL;
	if (len > DIR_KEYRING_MAX_BYTES)
		return ENG_ELIMIT;
	if ((err = eng_keyring_decode(blob, len, &kr)) != 0)
		return err;
	memcpy(pk_r, eng_keyring_public_key(kr), ENG_PK_BYTES);
	eng_keyring_free(&kr);
	return 0;
}

static bool valid_kind(unsigned kind)
{
	return kind != 0 && (kind & ~(DIR_MAILBOX | DIR_FORWARD)) == 0;
}

/*
 * Validates and normalises a forward list for the alias `self`; drops
 * duplicates (case-insensitively on the domain only, like the store).
 * *out_r is NULL when n is 0.
 */
static int build_forwards(const char *self, unsigned kind,
			  const char *const *forwards, size_t n,
			  char ***out_r, size_t *n_r)
{
	char buf[DIR_ADDRESS_MAX + 1];
	char **out;
	size_t m = 0;
	int err;

	*out_r = NULL;
	*n_r = 0;
	if (!(kind & DIR_FORWARD))
		return n == 0 ? 0 : ENG_EINVAL;
	if (n == 0 || forwards == NULL)
		return ENG_EINVAL;
	if (n > DIR_MAX_FORWARDS)
		return ENG_ELIMIT;
	out = eng_calloc(n, sizeof(*out));
	for (size_t i = 0; i < n; i++) {
		bool dup = false;

		err = normalize_address(forwards[i], false, false, buf, NULL);
		if (err != 0 || strcasecmp(buf, self) == 0) {
			dir_strv_free(&out, m);
			return ENG_EINVAL;
		}
		for (size_t j = 0; j < m && !dup; j++)
			dup = strcmp(out[j], buf) == 0;
		if (!dup)
			out[m++] = eng_strdup(buf);
	}
	*out_r = out;
	*n_r = m;
	return 0;
}

static void new_id(char id[DIR_ID_HEX_LEN + 1])
{
	uint8_t raw[DIR_ID_HEX_LEN / 2];

	randombytes_buf(raw, sizeof(raw));
	sodium_bin2hex(id, DIR_ID_HEX_LEN + 1, raw, sizeof(raw));
}

int dir_alias_add(dir *d, const char *address, const dir_alias_spec *spec,
		  char id_r[DIR_ID_HEX_LEN + 1])
{
	char norm[DIR_ADDRESS_MAX + 1];
	dir_alias a;
	size_t at;
	int err;

	if (d == NULL || spec == NULL || id_r == NULL)
		return ENG_EINVAL;
	id_r[0] = '\0';
	if (dir_normalize_address(address, true, norm, &at) != 0 ||
	    !valid_kind(spec->kind) || spec->quota_bytes > INT64_MAX)
		return ENG_EINVAL;
	memset(&a, 0, sizeof(a));
	a.kind = spec->kind;
	a.quota_bytes = spec->quota_bytes;
	a.created = (int64_t)time(NULL);
	if (spec->keyring != NULL) {
		if ((err = check_keyring(spec->keyring, spec->keyring_len,
					 a.public_key)) != 0)
			return err;
		if (spec->public_key != NULL &&
		    sodium_memcmp(spec->public_key, a.public_key,
				  ENG_PK_BYTES) != 0)
			return ENG_EINVAL;
		a.has_public_key = true;
		a.keyring_version = 1;
	} else if ((spec->kind & DIR_MAILBOX) || spec->public_key != NULL) {
		/* A mailbox needs its keyring; a lone public key is
		 * something nobody could ever unlock. */
		return ENG_EINVAL;
	}
	err = build_forwards(norm, spec->kind, spec->forwards, spec->n_forwards,
			     &a.forwards, &a.n_forwards);
	if (err != 0)
		return err;
	a.address = eng_strdup(norm);
	a.domain = eng_strdup(norm + at + 1);
	if (spec->keyring != NULL) {
		a.keyring = eng_malloc(spec->keyring_len);
		memcpy(a.keyring, spec->keyring, spec->keyring_len);
		a.keyring_len = spec->keyring_len;
	}
	new_id(a.id);
	err = LOCKED(d, d->ops->alias_insert(d, &a));
	if (err == 0)
		memcpy(id_r, a.id, DIR_ID_HEX_LEN + 1);
	dir_alias_clear(&a);
	return err;
}

int dir_alias_get(dir *d, const char *address, dir_alias *a_r)
{
	char norm[DIR_ADDRESS_MAX + 1];

	if (a_r != NULL)
		memset(a_r, 0, sizeof(*a_r));
	if (d == NULL || a_r == NULL ||
	    dir_normalize_address(address, true, norm, NULL) != 0)
		return ENG_EINVAL;
	return LOCKED(d, d->ops->alias_get(d, norm, a_r));
}

int dir_alias_get_id(dir *d, const char *id, dir_alias *a_r)
{
	if (a_r != NULL)
		memset(a_r, 0, sizeof(*a_r));
	if (d == NULL || a_r == NULL || !dir_valid_id(id))
		return ENG_EINVAL;
	return LOCKED(d, d->ops->alias_get_id(d, id, a_r));
}

int dir_alias_list(dir *d, const char *domain, dir_alias **aliases_r,
		   size_t *n_r)
{
	char norm[DIR_DOMAIN_MAX + 1];

	if (aliases_r != NULL)
		*aliases_r = NULL;
	if (n_r != NULL)
		*n_r = 0;
	if (d == NULL || aliases_r == NULL || n_r == NULL)
		return ENG_EINVAL;
	if (domain != NULL && dir_normalize_domain(domain, norm) != 0)
		return ENG_EINVAL;
	return LOCKED(d, d->ops->alias_list(d, domain != NULL ? norm : NULL,
					    aliases_r, n_r));
}

int dir_alias_remove(dir *d, const char *id)
{
	if (d == NULL || !dir_valid_id(id))
		return ENG_EINVAL;
	return LOCKED(d, d->ops->alias_remove(d, id));
}

int dir_alias_set_keyring(dir *d, const char *id, uint64_t expected_version,
			  const uint8_t *keyring, size_t keyring_len,
			  uint64_t *version_r)
{
	uint8_t pk[ENG_PK_BYTES];
	int err;

	if (d == NULL || !dir_valid_id(id) || expected_version == UINT64_MAX ||
	    expected_version > INT64_MAX - 1)
		return ENG_EINVAL;
	if ((err = check_keyring(keyring, keyring_len, pk)) != 0)
		return err;
	err = LOCKED(d, d->ops->alias_set_keyring(d, id, expected_version,
						  keyring, keyring_len, pk));
	if (err == 0 && version_r != NULL)
		*version_r = expected_version + 1;
	return err;
}

int dir_alias_set_forwards(dir *d, const char *id, unsigned kind,
			   const char *const *forwards, size_t n)
{
	dir_alias cur;
	char **fw = NULL;
	size_t m = 0;
	int err;

	if (d == NULL || !dir_valid_id(id) || !valid_kind(kind))
		return ENG_EINVAL;
	/* The address never changes, so reading it before the update is
	 * safe; the keyring condition is checked inside the update. */
	if ((err = dir_alias_get_id(d, id, &cur)) != 0)
		return err;
	err = build_forwards(cur.address, kind, forwards, n, &fw, &m);
	dir_alias_clear(&cur);
	if (err != 0)
		return err;
	err = LOCKED(d, d->ops->alias_set_forwards(d, id, kind, fw, m));
	dir_strv_free(&fw, m);
	return err;
}

int dir_alias_set_quota(dir *d, const char *id, uint64_t quota_bytes)
{
	if (d == NULL || !dir_valid_id(id) || quota_bytes > INT64_MAX)
		return ENG_EINVAL;
	return LOCKED(d, d->ops->alias_set_quota(d, id, quota_bytes));
}

/* ---- resolve ---- */

static void fill_resolved(dir_resolved *r, enum dir_match match,
			  dir_alias *a, const char *recipient,
			  const char *detail)
{
	r->match = match;
	memcpy(r->id, a->id, sizeof(r->id));
	r->address = a->address;
	a->address = NULL;
	r->recipient = eng_strdup(recipient);
	r->detail = detail != NULL ? eng_strdup(detail) : NULL;
	r->kind = a->kind;
	r->forwards = a->forwards;
	r->n_forwards = a->n_forwards;
	a->forwards = NULL;
	a->n_forwards = 0;
	r->has_public_key = a->has_public_key;
	memcpy(r->public_key, a->public_key, ENG_PK_BYTES);
	r->quota_bytes = a->quota_bytes;
	dir_alias_clear(a);
}

static int resolve_locked(dir *d, const char *norm, size_t at,
			  dir_resolved *r)
{
	char base[DIR_ADDRESS_MAX + 1];
	const char *domain = norm + at + 1;
	const char *plus;
	dir_alias a;
	int err;

	memset(&a, 0, sizeof(a));
	err = d->ops->domain_exists(d, domain);
	if (err < 0)
		return err;
	if (err == 0)
		return ENG_EINVAL;

	err = d->ops->alias_get(d, norm, &a);
	if (err == 0) {
		fill_resolved(r, DIR_MATCH_EXACT, &a, norm, NULL);
		return 0;
	}
	if (err != ENG_ENOTFOUND)
		return err;

	plus = memchr(norm, '+', at);
	if (plus != NULL && plus > norm &&
	    valid_local(norm, (size_t)(plus - norm))) {
		size_t ulen = (size_t)(plus - norm);

		memcpy(base, norm, ulen);
		snprintf(base + ulen, sizeof(base) - ulen, "@%s", domain);
		err = d->ops->alias_get(d, base, &a);
		if (err == 0) {
			char detail[DIR_LOCAL_MAX + 1];
			size_t dlen = at - ulen - 1;

			memcpy(detail, plus + 1, dlen);
			detail[dlen] = '\0';
			fill_resolved(r, DIR_MATCH_PLUS, &a, norm, detail);
			return 0;
		}
		if (err != ENG_ENOTFOUND)
			return err;
	}

	snprintf(base, sizeof(base), "*@%s", domain);
	err = d->ops->alias_get(d, base, &a);
	if (err == 0) {
		fill_resolved(r, DIR_MATCH_CATCHALL, &a, norm, NULL);
		return 0;
	}
	return err;
}

int dir_resolve(dir *d, const char *rcpt, dir_resolved *r)
{
	char norm[DIR_ADDRESS_MAX + 1];
	size_t at;

	if (r != NULL)
		memset(r, 0, sizeof(*r));
	if (d == NULL || r == NULL)
		return ENG_EINVAL;
	/* No catch-all notation: "@d" and "*@d" are not recipients. */
	if (dir_normalize_address(rcpt, false, norm, &at) != 0)
		return ENG_EINVAL;
	return LOCKED(d, resolve_locked(d, norm, at, r));
}
