/*
 * The directory: which domains this installation serves, which aliases
 * exist in them, and what each alias is (a mailbox, a forward to other
 * addresses, or both), with its keyring (engine/keys.h), X25519 public key
 * and quota.
 *
 * sqlited owns the directory; frontends reach it only through sqlited's
 * RPC. Two backends sit behind this one interface:
 *  - embedded (the default): a SQLite file `directory.db` in the data
 *    directory, mode 0600, WAL, synchronous=FULL, with a schema version
 *    table and forward migrations;
 *  - MongoDB (mongo-c-driver), for several machines sharing one directory.
 *
 * Addresses. Every address given to these functions is validated and
 * normalised the same way by both backends (dir_common.c):
 *  - local part: an RFC 5321 dot-atom (no quoted local parts), 1..64
 *    bytes, none of '%' '!' '@' (the percent hack and bang paths), no
 *    control characters, spaces or 8-bit bytes (SMTPUTF8 is out of scope);
 *  - domain: ASCII letter-digit-hyphen labels of 1..63 bytes, no label
 *    starting or ending with '-', 1..253 bytes in all, no trailing dot, no
 *    IP literal, and a top-level label that is not all digits (so that
 *    "1.2.3.4" is not a domain). IDNA is out of scope: give A-labels.
 *  - the whole address is at most DIR_ADDRESS_MAX bytes;
 *  - the whole address is compared case-insensitively and stored
 *    lower-case. (Forward targets are remote addresses: their domain is
 *    lower-cased but their local part is kept as given, since only the
 *    target's own server may fold it.)
 *  - a catch-all is written "@domain" or "*@domain" and stored as
 *    "*@domain". "*" is therefore not an ordinary local part.
 *
 * Alias ids are 16 random bytes written as 32 lower-case hex digits. An id
 * never changes, and sqlited names the alias's mailbox file and spool after
 * it, so that no address ever becomes a file name.
 *
 * Errors: 0 on success or a negative code from engine/eng_error.h. Details
 * go to the log (eng_log), never into the code.
 *
 * Thread safety: a dir handle may be used from any number of threads at
 * once. Each handle holds one backend connection and one mutex; every
 * call takes the mutex for its whole duration, so calls on one handle are
 * serialised (a directory look-up is a few index probes, so this costs
 * little next to mailbox work; open a handle per worker thread if it ever
 * shows up in a profile). Several handles or processes on one directory
 * are safe too: SQLite's file locks (writes run in BEGIN IMMEDIATE
 * transactions, with a busy timeout) or MongoDB's per-document atomicity
 * keep each call atomic, and dir_alias_set_keyring() is a compare-and-swap
 * so that two concurrent keyring changes cannot lose one.
 */
#ifndef DIR_H
#define DIR_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "keys.h"

typedef struct dir dir;

/* Alias kinds: flags, DIR_MAILBOX | DIR_FORWARD means both. */
#define DIR_MAILBOX 1u
#define DIR_FORWARD 2u

#define DIR_ID_HEX_LEN 32            /* 16 random bytes as hex */
#define DIR_LOCAL_MAX 64             /* RFC 5321 4.5.3.1.1 */
#define DIR_DOMAIN_MAX 253
#define DIR_LABEL_MAX 63
#define DIR_ADDRESS_MAX 254          /* RFC 5321's 256-byte path less <> */
#define DIR_MAX_FORWARDS 100         /* targets per alias */
#define DIR_KEYRING_MAX_BYTES 65536  /* an encoded keyring, ample for 64 slots */

/* The current schema version of the embedded backend's directory.db. */
#define DIR_SCHEMA_VERSION 1

/*
 * Opens a directory.
 *  - uri NULL, "" or "embedded": SQLite at data_dir/directory.db (created
 *    mode 0600 if missing; data_dir must exist).
 *  - "sqlite:PATH": SQLite at PATH (data_dir is ignored and may be NULL).
 *  - "mongodb://..." or "mongodb+srv://...": MongoDB; the database is the
 *    one named in the URI, else "sealmail". Writes use journaled majority
 *    write concern; open pings the server and fails if it does not answer.
 *    The backend is the module sealmail-dir-mongo.so (frontends/common/
 *    sm_module.h), loaded at the first such open: a process that never
 *    opens one never maps libmongoc. ENG_ENOTFOUND (logged) if the module
 *    is not installed, ENG_EINVAL if it cannot be loaded.
 * A directory written by a newer Sealmail is refused with ENG_ENEWER; an
 * older one is migrated forward in one transaction. ENG_EINVAL for an
 * unknown scheme or a malformed URI, ENG_EIO if the store cannot be
 * reached, ENG_ECORRUPT if the file is not a directory database.
 * *d_r is NULL on failure.
 */
int dir_open(const char *uri, const char *data_dir, dir **d_r);
/* Closes the directory; sets *d to NULL; accepts NULL and a NULL *d. */
void dir_close(dir **d);
/* "embedded" or "mongodb": which backend the handle uses. */
const char *dir_backend_name(const dir *d);

/*
 * Domains. Names are validated as above and stored lower-case.
 * dir_domain_add: ENG_EEXIST if already served.
 * dir_domain_remove: ENG_ENOTFOUND if not served; ENG_EPERM while the
 * domain still has aliases, unless force is true, in which case its
 * aliases are removed with it (in one transaction on SQLite).
 * dir_domain_exists: 1 if served, 0 if not (or if the name is not a valid
 * domain), negative on a storage error.
 * dir_domain_list: all domains, sorted; free with dir_strv_free().
 */
int dir_domain_add(dir *d, const char *domain);
int dir_domain_remove(dir *d, const char *domain, bool force);
int dir_domain_exists(dir *d, const char *domain);
int dir_domain_list(dir *d, char ***domains_r, size_t *n_r);
/* Frees n strings and the array; sets *v to NULL; accepts NULL. */
void dir_strv_free(char ***v, size_t n);

/* One alias, as stored. Every pointer is owned; see dir_alias_clear(). */
typedef struct dir_alias {
	char id[DIR_ID_HEX_LEN + 1];
	char *address;           /* canonical: "user@domain" or "*@domain" */
	char *domain;
	unsigned kind;           /* DIR_MAILBOX and/or DIR_FORWARD */
	char **forwards;         /* forward targets, in the order given */
	size_t n_forwards;
	uint8_t *keyring;        /* eng_keyring_encode() blob, or NULL */
	size_t keyring_len;
	/* 0 while there is no keyring; 1 when the first one is stored; +1 at
	 * every dir_alias_set_keyring(). */
	uint64_t keyring_version;
	bool has_public_key;
	uint8_t public_key[ENG_PK_BYTES];
	uint64_t quota_bytes;    /* 0 = no limit */
	int64_t created;         /* unix seconds */
} dir_alias;

/* Frees what a dir_alias holds and zeroes it; accepts a zeroed struct. */
void dir_alias_clear(dir_alias *a);
/* Clears n aliases and frees the array; sets *v to NULL; accepts NULL. */
void dir_alias_array_free(dir_alias **v, size_t n);

/* What dir_alias_add() needs besides the address. */
typedef struct dir_alias_spec {
	unsigned kind;                  /* DIR_MAILBOX and/or DIR_FORWARD */
	const char *const *forwards;    /* required (n >= 1) iff DIR_FORWARD */
	size_t n_forwards;
	const uint8_t *keyring;         /* required iff DIR_MAILBOX; may be given
					 * for a pure forward (a login that only
					 * sends) */
	size_t keyring_len;
	const uint8_t *public_key;      /* ENG_PK_BYTES, or NULL: taken from the
					 * keyring; if given it must match it */
	uint64_t quota_bytes;           /* 0 = no limit */
} dir_alias_spec;

/*
 * Adds an alias and writes its new id to id_r.
 * Rules (ENG_EINVAL unless said otherwise):
 *  - address: as above; its domain must be served (ENG_ENOTFOUND if not);
 *  - kind: DIR_MAILBOX, DIR_FORWARD or both;
 *  - a mailbox needs a keyring; a keyring must decode
 *    (eng_keyring_decode: ENG_EMALFORMED / ENG_ENEWER) and be at most
 *    DIR_KEYRING_MAX_BYTES (ENG_ELIMIT); a given public key must equal the
 *    keyring's;
 *  - DIR_FORWARD needs 1..DIR_MAX_FORWARDS targets (more: ENG_ELIMIT),
 *    each a valid address (any domain, no catch-all), not the alias itself;
 *    duplicates are dropped; without DIR_FORWARD no targets may be given;
 *  - quota_bytes at most INT64_MAX.
 * ENG_EEXIST if the address is taken (case-insensitively).
 */
int dir_alias_add(dir *d, const char *address, const dir_alias_spec *spec,
		  char id_r[DIR_ID_HEX_LEN + 1]);

/*
 * Looks an alias up by its address (normalised as above; "@domain" and
 * "*@domain" name the catch-all) or by its id. ENG_ENOTFOUND if there is
 * none, ENG_EINVAL for an invalid address or id. *a_r is zeroed first and
 * filled on success; clear it with dir_alias_clear().
 */
int dir_alias_get(dir *d, const char *address, dir_alias *a_r);
int dir_alias_get_id(dir *d, const char *id, dir_alias *a_r);

/*
 * Lists the aliases of one domain, or of every domain if domain is NULL,
 * sorted by address. A served domain without aliases gives n = 0; an
 * unknown domain ENG_ENOTFOUND. Free with dir_alias_array_free().
 */
int dir_alias_list(dir *d, const char *domain, dir_alias **aliases_r,
		   size_t *n_r);

/* Removes an alias by id. ENG_ENOTFOUND if there is none. The caller
 * (sqlited) removes the mailbox file and spool named after the id. */
int dir_alias_remove(dir *d, const char *id);

/*
 * Replaces the keyring (after a password change, an app password added or
 * revoked): a compare-and-swap on keyring_version. The keyring is stored
 * only if the alias's keyring_version still equals expected_version (the
 * version the caller read before changing its copy); the new version,
 * expected_version + 1, goes to *version_r (may be NULL). A stale version
 * is ENG_EMODIFIED and changes nothing: re-read, re-apply, retry. The blob
 * is checked as in dir_alias_add() and the stored public key is set from
 * it. ENG_ENOTFOUND for an unknown id.
 */
int dir_alias_set_keyring(dir *d, const char *id, uint64_t expected_version,
			  const uint8_t *keyring, size_t keyring_len,
			  uint64_t *version_r);

/*
 * Sets how an alias delivers: its kind and its forward targets together,
 * so that the two always agree. The rules of dir_alias_add() apply
 * (DIR_MAILBOX needs a stored keyring; DIR_FORWARD needs 1..100 targets;
 * without DIR_FORWARD, n must be 0). ENG_ENOTFOUND for an unknown id.
 */
int dir_alias_set_forwards(dir *d, const char *id, unsigned kind,
			   const char *const *forwards, size_t n);

/* Sets the quota in bytes (0 = no limit; at most INT64_MAX).
 * ENG_ENOTFOUND for an unknown id. */
int dir_alias_set_quota(dir *d, const char *id, uint64_t quota_bytes);

/* How dir_resolve() found the alias. */
enum dir_match {
	DIR_MATCH_EXACT = 1,     /* the address is an alias */
	DIR_MATCH_PLUS = 2,      /* user+tag@domain → user@domain */
	DIR_MATCH_CATCHALL = 3,  /* the domain's catch-all */
};

/* The answer to "who receives mail for this recipient?". */
typedef struct dir_resolved {
	enum dir_match match;
	char id[DIR_ID_HEX_LEN + 1];
	char *address;           /* the alias's canonical address */
	char *recipient;         /* the recipient, normalised (lower-case) */
	char *detail;            /* the "+tag" part without '+', or NULL */
	unsigned kind;
	char **forwards;
	size_t n_forwards;
	bool has_public_key;     /* true for a mailbox: seal spool mail to it */
	uint8_t public_key[ENG_PK_BYTES];
	uint64_t quota_bytes;
} dir_resolved;

/*
 * Recipient look-up for MX and delivery. rcpt is a bare address (the
 * frontend has removed the angle brackets of RCPT TO).
 *  1. an alias with exactly this address → it;
 *  2. else, if the local part is "user+tag" with a non-empty user, the
 *     alias user@domain if it exists (the split is at the first '+');
 *  3. else the domain's catch-all if it has one;
 *  4. else ENG_ENOTFOUND.
 * ENG_EINVAL, without any look-up of a user, for every form that is not a
 * plain local address: a domain this directory does not serve (the
 * caller answers "relay denied", not "no such user"), the percent hack
 * (u%h@d), source routes (@a:u@b), bang paths (h!u@d), quoted local parts,
 * IP literals (u@[1.2.3.4]), a trailing dot, empty local part or domain,
 * consecutive or edge dots, the catch-all notation itself, over-long
 * parts, spaces, control characters and 8-bit bytes.
 * *r is zeroed first; clear it with dir_resolved_clear().
 */
int dir_resolve(dir *d, const char *rcpt, dir_resolved *r);
/* Frees what a dir_resolved holds and zeroes it. */
void dir_resolved_clear(dir_resolved *r);

/*
 * Address helpers shared by the backends and usable by frontends that
 * want to reject a malformed address before a round trip.
 * dir_normalize_domain: validates and lower-cases a domain into out
 * (DIR_DOMAIN_MAX + 1 bytes). ENG_EINVAL if invalid.
 * dir_normalize_address: validates "local@domain" and writes it lower-case
 * into out (DIR_ADDRESS_MAX + 1 bytes); *at_r (may be NULL) gets the
 * offset of the '@' in out. With allow_catchall, "@domain" and
 * "*@domain" are accepted and written as "*@domain"; otherwise both are
 * ENG_EINVAL. The domain is not checked against the directory.
 * dir_valid_id: true if s is 32 lower-case hex digits.
 */
int dir_normalize_domain(const char *domain, char *out);
int dir_normalize_address(const char *address, bool allow_catchall,
			  char *out, size_t *at_r);
bool dir_valid_id(const char *s);

#endif
