/*
 * Mailbox keys and key slots (docs/crypto.md has the exact construction).
 *
 * Every alias has a random 32-byte mailbox key MK. MK never touches disk in
 * the clear: it is kept wrapped in one or more key slots, each opened by a
 * password (the main password, or an app password):
 *
 *     slot key = Argon2id(password, keyring salt, opslimit, memlimit)
 *     slot     = XChaCha20-Poly1305(slot key, nonce, MK,
 *                                   ad = "sealmail slot v1" | keyring id | slot id
 *                                        | slot cost | created | label)
 *
 * (The AD also binds the slot's cost, creation time and label, so that no
 * byte of a slot can be changed without the slot failing to open.)
 * A wrong password fails the AEAD tag, so no password hash is stored
 * anywhere. The salt belongs to the keyring, not to the slot: one Argon2id
 * run per unlock then tests every slot, however many app passwords exist. Changing a password rewraps MK; the database is not touched.
 * The keyring also holds the alias's X25519 key pair: the public key in the
 * clear (mail for a locked mailbox is sealed to it) and the secret key
 * wrapped under crypto_kdf_derive_from_key(32, 1, "sm-boxsk", MK), with the
 * keyring id and the public key as associated data. Unlock checks that the
 * opened MK unwraps that secret key and that it matches the public key, so
 * a keyring whose public key was swapped does not unlock (ENG_ECORRUPT).
 *
 * A keyring is a value: the caller (sqlited's directory) stores its encoded
 * form wherever it likes. The engine only creates, changes and opens it.
 *
 * Key material (MK, slot keys, derived keys, the X25519 secret key) lives
 * only in memory from eng_secret_new() (sodium_malloc: guard pages, mlock,
 * never in a core dump) and is wiped when freed.
 */
#ifndef ENG_KEYS_H
#define ENG_KEYS_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define ENG_MK_BYTES 32
#define ENG_DBKEY_BYTES 32
#define ENG_PK_BYTES 32           /* crypto_box_PUBLICKEYBYTES */
#define ENG_SK_BYTES 32           /* crypto_box_SECRETKEYBYTES */
#define ENG_KEYRING_MAX_SLOTS 64
#define ENG_SLOT_LABEL_MAX 64

/* Initialises libsodium; call once at start (idempotent). 0 or ENG_EIO. */
int eng_crypto_init(void);

/* Guarded secret memory (sodium_malloc). Aborts on allocation failure. */
uint8_t *eng_secret_new(size_t len);
/* Wipes and frees; sets *p to NULL; accepts NULL. */
void eng_secret_free(uint8_t **p);

/*
 * Argon2id cost. The default is OWASP's minimum for Argon2id (19 MiB,
 * t=2) raised to 64 MiB, t=3; opslimit >= 1 and memlimit >= 8 KiB are
 * accepted so that tests can run fast, but never use those in production.
 */
typedef struct eng_kdf_params {
	uint64_t opslimit;
	uint64_t memlimit_bytes;
} eng_kdf_params;

#define ENG_KDF_DEFAULT_OPSLIMIT 3
#define ENG_KDF_DEFAULT_MEMLIMIT (64u * 1024 * 1024)
/*
 * Bounds on any cost, checked on create and on decode, so that a keyring
 * from elsewhere cannot make unlock run for hours or ask for terabytes.
 */
#define ENG_KDF_MIN_OPSLIMIT 1
#define ENG_KDF_MAX_OPSLIMIT 64
#define ENG_KDF_MIN_MEMLIMIT (8u * 1024)
#define ENG_KDF_MAX_MEMLIMIT (4ull * 1024 * 1024 * 1024)
eng_kdf_params eng_kdf_default(void);

typedef struct eng_keyring eng_keyring;

typedef struct eng_slot_info {
	uint32_t id;
	char label[ENG_SLOT_LABEL_MAX + 1];  /* "main", or an app password's name */
	int64_t created;                     /* unix seconds */
} eng_slot_info;

/*
 * Passwords are any bytes, 1..ENG_PASSWORD_MAX long (else ENG_EINVAL).
 * Labels are 1..ENG_SLOT_LABEL_MAX printable ASCII characters.
 */
#define ENG_PASSWORD_MAX 4096

/*
 * Creates a keyring with a new random MK and X25519 key pair, and one slot
 * ("main", id 1) opened by password. On success *mk_r is MK in secret
 * memory (free with eng_secret_free).
 */
int eng_keyring_create(const char *password, size_t password_len,
		       eng_kdf_params params, eng_keyring **keyring_r,
		       uint8_t **mk_r);

/*
 * Opens MK with a password. Runs Argon2id once per distinct salt/cost among
 * the slots (normally once) and tries each slot's tag. Returns ENG_EAUTH if
 * no slot opens; *slot_id_r (may be NULL) says which slot did. ENG_ECORRUPT
 * if a slot opened but the key pair does not check out.
 */
int eng_keyring_unlock(const eng_keyring *keyring, const char *password,
		       size_t password_len, uint8_t **mk_r,
		       uint32_t *slot_id_r);

/*
 * Adds a slot for another password (an app password). mk must be the
 * keyring's MK (checked against the wrapped secret key: ENG_EAUTH if not).
 * ENG_ELIMIT past ENG_KEYRING_MAX_SLOTS. Slot ids are the highest id in
 * use plus one.
 */
int eng_keyring_add_slot(eng_keyring *keyring, const uint8_t *mk,
			 const char *password, size_t password_len,
			 const char *label, uint32_t *slot_id_r);
/*
 * Rewraps MK in an existing slot under a new password (with the keyring's
 * current cost and a fresh nonce). ENG_ENOTFOUND for an unknown slot,
 * ENG_EAUTH if mk is not the keyring's MK.
 */
int eng_keyring_change_password(eng_keyring *keyring, const uint8_t *mk,
				uint32_t slot_id, const char *password,
				size_t password_len);
/* Removes a slot; removing the last slot is ENG_EPERM, an unknown one
 * ENG_ENOTFOUND. */
int eng_keyring_remove_slot(eng_keyring *keyring, uint32_t slot_id);
/* Lists slots (no key material). *slots_r is freed with free(). */
int eng_keyring_slots(const eng_keyring *keyring, eng_slot_info **slots_r,
		      size_t *n_r);
/*
 * The cost that new slots get; the next password change uses it. A cost
 * outside the bounds above is clamped into them. After decode() it is the
 * highest cost among the slots; sqlited sets it from its configuration.
 */
void eng_keyring_set_params(eng_keyring *keyring, eng_kdf_params params);

/* The X25519 public key (to seal spool entries to). */
const uint8_t *eng_keyring_public_key(const eng_keyring *keyring);
/* Unwraps the X25519 secret key; *sk_r is secret memory. */
int eng_keyring_secret_key(const eng_keyring *keyring, const uint8_t *mk,
			   uint8_t **sk_r);

/*
 * Versioned binary encoding with a magic and bounds on every field.
 * decode() returns ENG_EMALFORMED for garbage, ENG_ENEWER for a newer
 * format version.
 */
int eng_keyring_encode(const eng_keyring *keyring, uint8_t **blob_r,
		       size_t *len_r);
int eng_keyring_decode(const uint8_t *blob, size_t len,
		       eng_keyring **keyring_r);
void eng_keyring_free(eng_keyring **keyring);

/*
 * The SQLCipher raw key for the alias's database:
 * crypto_kdf_derive_from_key(32, 1, "sm-dbkey", MK) (BLAKE2b).
 * *key_r is secret memory.
 */
int eng_derive_db_key(const uint8_t *mk, uint8_t **key_r);

#endif
