/*
 * Key slots: the construction in keys.h, byte formats in docs/crypto.md.
 *
 * Invariants of an eng_keyring in memory (decode() establishes them for
 * input it did not create, every mutator keeps them):
 *  - 1 <= n_slots <= ENG_KEYRING_MAX_SLOTS, slots sorted by strictly
 *    increasing id, every id >= 1;
 *  - every slot's cost is within the ENG_KDF_* bounds, its label is
 *    1..ENG_SLOT_LABEL_MAX printable ASCII characters, NUL-terminated;
 *  - params is within the bounds.
 * No key material is ever stored in the struct: it only holds the public
 * key and ciphertexts, so it lives in ordinary memory.
 */
#include "keys.h"
#include "eng_error.h"
#include "store.h"

#include <sodium.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define KR_MAGIC "SMKR"
#define KR_VERSION 1
#define KR_ID_BYTES 16
#define KR_SALT_BYTES crypto_pwhash_SALTBYTES
#define KR_NONCE_BYTES crypto_aead_xchacha20poly1305_ietf_NPUBBYTES
#define KR_ABYTES crypto_aead_xchacha20poly1305_ietf_ABYTES
#define KR_WRAPPED_BYTES (32 + KR_ABYTES)
#define KR_ALG_ARGON2ID13 2
#define KR_SLOT_AD_PREFIX "sealmail slot v1"
#define KR_BOXSK_AD_PREFIX "sealmail boxsk v1"
#define KR_CTX_BOXSK "sm-boxsk"
#define KR_CTX_DBKEY "sm-dbkey"

/* Fixed part of the encoding, then each slot's fixed part plus its label. */
#define KR_HEADER_BYTES (4 + 1 + KR_ID_BYTES + KR_SALT_BYTES + ENG_PK_BYTES + \
			 KR_NONCE_BYTES + KR_WRAPPED_BYTES + 1)
#define KR_SLOT_FIXED_BYTES (4 + 1 + 4 + 8 + 8 + 1 + KR_NONCE_BYTES + \
			     KR_WRAPPED_BYTES)
#define KR_MAX_BYTES (KR_HEADER_BYTES + ENG_KEYRING_MAX_SLOTS * \
		      (KR_SLOT_FIXED_BYTES + ENG_SLOT_LABEL_MAX))

_Static_assert(crypto_pwhash_ALG_ARGON2ID13 == KR_ALG_ARGON2ID13,
	       "the format stores libsodium's Argon2id13 id");
_Static_assert(ENG_PK_BYTES == crypto_box_PUBLICKEYBYTES, "pk size");
_Static_assert(ENG_SK_BYTES == crypto_box_SECRETKEYBYTES, "sk size");
_Static_assert(ENG_MK_BYTES == crypto_kdf_KEYBYTES, "MK is a kdf key");
_Static_assert(ENG_KDF_MIN_MEMLIMIT >= crypto_pwhash_argon2id_MEMLIMIT_MIN,
	       "libsodium minimum memlimit");
_Static_assert(ENG_KDF_MIN_OPSLIMIT >= crypto_pwhash_argon2id_OPSLIMIT_MIN,
	       "libsodium minimum opslimit");

struct kr_slot {
	uint32_t id;
	uint32_t opslimit;
	uint64_t memlimit;
	int64_t created;
	uint8_t label_len;
	char label[ENG_SLOT_LABEL_MAX + 1];
	uint8_t nonce[KR_NONCE_BYTES];
	uint8_t wrapped[KR_WRAPPED_BYTES];
};

struct eng_keyring {
	uint8_t id[KR_ID_BYTES];
	uint8_t salt[KR_SALT_BYTES];
	uint8_t pk[ENG_PK_BYTES];
	uint8_t sk_nonce[KR_NONCE_BYTES];
	uint8_t sk_wrapped[KR_WRAPPED_BYTES];
	eng_kdf_params params;
	size_t n_slots;
	struct kr_slot slots[ENG_KEYRING_MAX_SLOTS];
};

int eng_crypto_init(void)
{
	/* Every daemon calls this first, before any SQLite use. */
	eng_store_global_init();
	if (sodium_init() < 0) {
		eng_log(ENG_LOG_ERROR, "libsodium initialisation failed");
		return ENG_EIO;
	}
	return 0;
}

uint8_t *eng_secret_new(size_t len)
{
	uint8_t *p;

	/* sodium_malloc needs an initialised library (page size, canary). */
	if (eng_crypto_init() != 0)
		abort();
	p = sodium_malloc(len != 0 ? len : 1);
	if (p == NULL)
		eng_oom(len);
	return p;
}

void eng_secret_free(uint8_t **p)
{
	if (p == NULL || *p == NULL)
		return;
	/* sodium_free() wipes the region too; this says it at the call site. */
	sodium_free(*p);
	*p = NULL;
}

eng_kdf_params eng_kdf_default(void)
{
	eng_kdf_params p = { ENG_KDF_DEFAULT_OPSLIMIT, ENG_KDF_DEFAULT_MEMLIMIT };

	return p;
}

static bool params_valid(eng_kdf_params p)
{
	return p.opslimit >= ENG_KDF_MIN_OPSLIMIT &&
	       p.opslimit <= ENG_KDF_MAX_OPSLIMIT &&
	       p.memlimit_bytes >= ENG_KDF_MIN_MEMLIMIT &&
	       p.memlimit_bytes <= ENG_KDF_MAX_MEMLIMIT;
}

static bool password_valid(const char *password, size_t len)
{
	return password != NULL && len >= 1 && len <= ENG_PASSWORD_MAX;
}

static bool label_valid(const char *label, size_t len)
{
	if (len < 1 || len > ENG_SLOT_LABEL_MAX)
		return false;
	for (size_t i = 0; i < len; i++) {
		if (label[i] < 0x20 || label[i] > 0x7e)
			return false;
	}
	return true;
}

/* Little-endian helpers: the format is fixed-endian on every machine. */
static void put_u32(uint8_t *p, uint32_t v)
{
	for (int i = 0; i < 4; i++)
		p[i] = (uint8_t)(v >> (8 * i));
}

static void put_u64(uint8_t *p, uint64_t v)
{
	for (int i = 0; i < 8; i++)
		p[i] = (uint8_t)(v >> (8 * i));
}

static uint32_t get_u32(const uint8_t *p)
{
	uint32_t v = 0;

	for (int i = 3; i >= 0; i--)
		v = (v << 8) | p[i];
	return v;
}

static uint64_t get_u64(const uint8_t *p)
{
	uint64_t v = 0;

	for (int i = 7; i >= 0; i--)
		v = (v << 8) | p[i];
	return v;
}

/*
 * The slot's associated data: everything about the slot except the nonce
 * and ciphertext, so that changing any stored byte of it breaks the tag.
 */
#define KR_SLOT_AD_MAX (sizeof(KR_SLOT_AD_PREFIX) - 1 + KR_ID_BYTES + 4 + 1 + \
			4 + 8 + 8 + 1 + ENG_SLOT_LABEL_MAX)

static size_t slot_ad(const eng_keyring *kr, const struct kr_slot *s,
		      uint8_t ad[KR_SLOT_AD_MAX])
{
	size_t n = sizeof(KR_SLOT_AD_PREFIX) - 1;

	memcpy(ad, KR_SLOT_AD_PREFIX, n);
	memcpy(ad + n, kr->id, KR_ID_BYTES);
	n += KR_ID_BYTES;
	put_u32(ad + n, s->id);
	n += 4;
	ad[n++] = KR_ALG_ARGON2ID13;
	put_u32(ad + n, s->opslimit);
	n += 4;
	put_u64(ad + n, s->memlimit);
	n += 8;
	put_u64(ad + n, (uint64_t)s->created);
	n += 8;
	ad[n++] = s->label_len;
	memcpy(ad + n, s->label, s->label_len);
	n += s->label_len;
	return n;
}

#define KR_BOXSK_AD_BYTES (sizeof(KR_BOXSK_AD_PREFIX) - 1 + KR_ID_BYTES + \
			   ENG_PK_BYTES)

static void boxsk_ad(const eng_keyring *kr, uint8_t ad[KR_BOXSK_AD_BYTES])
{
	size_t n = sizeof(KR_BOXSK_AD_PREFIX) - 1;

	memcpy(ad, KR_BOXSK_AD_PREFIX, n);
	memcpy(ad + n, kr->id, KR_ID_BYTES);
	memcpy(ad + n + KR_ID_BYTES, kr->pk, ENG_PK_BYTES);
}

/* Argon2id of the password with the keyring salt at the given cost. */
static int derive_slot_key(const eng_keyring *kr, const char *password,
			   size_t password_len, uint32_t opslimit,
			   uint64_t memlimit, uint8_t **key_r)
{
	uint8_t *key = eng_secret_new(crypto_aead_xchacha20poly1305_ietf_KEYBYTES);

	if (crypto_pwhash(key, crypto_aead_xchacha20poly1305_ietf_KEYBYTES,
			  password, password_len, kr->salt, opslimit,
			  (size_t)memlimit, crypto_pwhash_ALG_ARGON2ID13) != 0) {
		/* Only fails when it cannot get its memory. */
		eng_log(ENG_LOG_WARN, "argon2id with t=%u m=%llu bytes failed "
			"(out of memory?)", opslimit,
			(unsigned long long)memlimit);
		eng_secret_free(&key);
		return ENG_EIO;
	}
	*key_r = key;
	return 0;
}

static uint8_t *derive_boxsk_key(const uint8_t *mk)
{
	uint8_t *key = eng_secret_new(crypto_aead_xchacha20poly1305_ietf_KEYBYTES);

	crypto_kdf_derive_from_key(key, crypto_aead_xchacha20poly1305_ietf_KEYBYTES,
				   1, KR_CTX_BOXSK, mk);
	return key;
}

/* Wraps MK into slot s (whose metadata is set) under slot_key. */
static void slot_wrap(const eng_keyring *kr, struct kr_slot *s,
		      const uint8_t *slot_key, const uint8_t *mk)
{
	uint8_t ad[KR_SLOT_AD_MAX];
	size_t ad_len = slot_ad(kr, s, ad);

	randombytes_buf(s->nonce, sizeof(s->nonce));
	crypto_aead_xchacha20poly1305_ietf_encrypt(s->wrapped, NULL, mk,
						   ENG_MK_BYTES, ad, ad_len,
						   NULL, s->nonce, slot_key);
}

/* 0 and MK in mk_out, or -1 if the tag does not verify. */
static int slot_unwrap(const eng_keyring *kr, const struct kr_slot *s,
		       const uint8_t *slot_key, uint8_t *mk_out)
{
	uint8_t ad[KR_SLOT_AD_MAX];
	size_t ad_len = slot_ad(kr, s, ad);

	return crypto_aead_xchacha20poly1305_ietf_decrypt(mk_out, NULL, NULL,
							  s->wrapped,
							  sizeof(s->wrapped),
							  ad, ad_len, s->nonce,
							  slot_key);
}

static int unwrap_sk(const eng_keyring *kr, const uint8_t *mk, uint8_t **sk_r)
{
	uint8_t ad[KR_BOXSK_AD_BYTES];
	uint8_t *key = derive_boxsk_key(mk);
	uint8_t *sk = eng_secret_new(ENG_SK_BYTES);
	uint8_t pk[ENG_PK_BYTES];
	int ret;

	boxsk_ad(kr, ad);
	ret = crypto_aead_xchacha20poly1305_ietf_decrypt(sk, NULL, NULL,
							 kr->sk_wrapped,
							 sizeof(kr->sk_wrapped),
							 ad, sizeof(ad),
							 kr->sk_nonce, key);
	eng_secret_free(&key);
	if (ret != 0) {
		eng_secret_free(&sk);
		return ENG_EAUTH;
	}
	/* The public key in the clear must be this secret key's. */
	if (crypto_scalarmult_base(pk, sk) != 0 ||
	    sodium_memcmp(pk, kr->pk, ENG_PK_BYTES) != 0) {
		eng_secret_free(&sk);
		return ENG_ECORRUPT;
	}
	*sk_r = sk;
	return 0;
}

/* Is mk this keyring's MK? 0, ENG_EAUTH or ENG_ECORRUPT. */
static int check_mk(const eng_keyring *kr, const uint8_t *mk)
{
	uint8_t *sk = NULL;
	int ret = unwrap_sk(kr, mk, &sk);

	eng_secret_free(&sk);
	return ret;
}

static void slot_set_meta(struct kr_slot *s, uint32_t id, eng_kdf_params p,
			  const char *label, size_t label_len)
{
	s->id = id;
	s->opslimit = (uint32_t)p.opslimit;
	s->memlimit = p.memlimit_bytes;
	s->created = (int64_t)time(NULL);
	s->label_len = (uint8_t)label_len;
	memcpy(s->label, label, label_len);
	s->label[label_len] = '\0';
}

/* Fills slot s (metadata set) with MK wrapped under password. */
static int slot_seal(const eng_keyring *kr, struct kr_slot *s,
		     const char *password, size_t password_len,
		     const uint8_t *mk)
{
	uint8_t *key = NULL;
	int ret;

	ret = derive_slot_key(kr, password, password_len, s->opslimit,
			      s->memlimit, &key);
	if (ret != 0)
		return ret;
	slot_wrap(kr, s, key, mk);
	eng_secret_free(&key);
	return 0;
}

int eng_keyring_create(const char *password, size_t password_len,
		       eng_kdf_params params, eng_keyring **keyring_r,
		       uint8_t **mk_r)
{
	eng_keyring *kr;
	uint8_t *mk, *sk, *key;
	uint8_t ad[KR_BOXSK_AD_BYTES];
	int ret;

	if (!password_valid(password, password_len) || !params_valid(params) ||
	    keyring_r == NULL || mk_r == NULL)
		return ENG_EINVAL;
	if ((ret = eng_crypto_init()) != 0)
		return ret;

	kr = eng_calloc(1, sizeof(*kr));
	randombytes_buf(kr->id, sizeof(kr->id));
	randombytes_buf(kr->salt, sizeof(kr->salt));
	kr->params = params;

	mk = eng_secret_new(ENG_MK_BYTES);
	crypto_kdf_keygen(mk);

	sk = eng_secret_new(ENG_SK_BYTES);
	crypto_box_keypair(kr->pk, sk);
	key = derive_boxsk_key(mk);
	boxsk_ad(kr, ad);
	randombytes_buf(kr->sk_nonce, sizeof(kr->sk_nonce));
	crypto_aead_xchacha20poly1305_ietf_encrypt(kr->sk_wrapped, NULL, sk,
						   ENG_SK_BYTES, ad, sizeof(ad),
						   NULL, kr->sk_nonce, key);
	eng_secret_free(&key);
	eng_secret_free(&sk);

	slot_set_meta(&kr->slots[0], 1, params, "main", 4);
	ret = slot_seal(kr, &kr->slots[0], password, password_len, mk);
	if (ret != 0) {
		eng_secret_free(&mk);
		free(kr);
		return ret;
	}
	kr->n_slots = 1;
	*keyring_r = kr;
	*mk_r = mk;
	return 0;
}

int eng_keyring_unlock(const eng_keyring *kr, const char *password,
		       size_t password_len, uint8_t **mk_r,
		       uint32_t *slot_id_r)
{
	/*
	 * One derived key per distinct cost among the slots (the salt is the
	 * keyring's), derived when a slot first needs it and kept until the
	 * end, so Argon2id runs once per cost however many slots there are.
	 */
	struct {
		uint32_t opslimit;
		uint64_t memlimit;
		uint8_t *key;   /* NULL if the derivation failed */
	} cache[ENG_KEYRING_MAX_SLOTS];
	size_t n_cache = 0;
	uint8_t *mk;
	int ret = ENG_EAUTH;

	if (kr == NULL || mk_r == NULL || !password_valid(password, password_len))
		return ENG_EINVAL;
	if (eng_crypto_init() != 0)
		return ENG_EIO;

	mk = eng_secret_new(ENG_MK_BYTES);
	for (size_t i = 0; i < kr->n_slots; i++) {
		const struct kr_slot *s = &kr->slots[i];
		size_t c;

		for (c = 0; c < n_cache; c++) {
			if (cache[c].opslimit == s->opslimit &&
			    cache[c].memlimit == s->memlimit)
				break;
		}
		if (c == n_cache) {
			cache[c].opslimit = s->opslimit;
			cache[c].memlimit = s->memlimit;
			cache[c].key = NULL;
			/* A failed derivation just means this slot cannot open. */
			(void)derive_slot_key(kr, password, password_len,
					      s->opslimit, s->memlimit,
					      &cache[c].key);
			n_cache++;
		}
		if (cache[c].key == NULL)
			continue;
		if (slot_unwrap(kr, s, cache[c].key, mk) == 0) {
			ret = check_mk(kr, mk);
			if (ret == 0 && slot_id_r != NULL)
				*slot_id_r = s->id;
			if (ret != 0) {
				eng_log(ENG_LOG_ERROR, "keyring: slot %u opened "
					"but the key pair does not match it",
					s->id);
				ret = ENG_ECORRUPT;
			}
			break;
		}
	}
	for (size_t c = 0; c < n_cache; c++)
		eng_secret_free(&cache[c].key);
	if (ret != 0) {
		eng_secret_free(&mk);
		return ret;
	}
	*mk_r = mk;
	return 0;
}

static struct kr_slot *find_slot(eng_keyring *kr, uint32_t id, size_t *idx_r)
{
	for (size_t i = 0; i < kr->n_slots; i++) {
		if (kr->slots[i].id == id) {
			if (idx_r != NULL)
				*idx_r = i;
			return &kr->slots[i];
		}
	}
	return NULL;
}

int eng_keyring_add_slot(eng_keyring *kr, const uint8_t *mk,
			 const char *password, size_t password_len,
			 const char *label, uint32_t *slot_id_r)
{
	struct kr_slot s;
	uint32_t id;
	size_t label_len;
	int ret;

	if (kr == NULL || mk == NULL || label == NULL ||
	    !password_valid(password, password_len))
		return ENG_EINVAL;
	label_len = strnlen(label, ENG_SLOT_LABEL_MAX + 1);
	if (!label_valid(label, label_len))
		return ENG_EINVAL;
	if (kr->n_slots >= ENG_KEYRING_MAX_SLOTS)
		return ENG_ELIMIT;
	/* Slots are sorted by id, so the last one has the highest. */
	id = kr->slots[kr->n_slots - 1].id;
	if (id == UINT32_MAX)
		return ENG_ELIMIT;
	id++;
	if ((ret = check_mk(kr, mk)) != 0)
		return ret;

	memset(&s, 0, sizeof(s));
	slot_set_meta(&s, id, kr->params, label, label_len);
	if ((ret = slot_seal(kr, &s, password, password_len, mk)) != 0)
		return ret;
	kr->slots[kr->n_slots++] = s;
	if (slot_id_r != NULL)
		*slot_id_r = id;
	return 0;
}

int eng_keyring_change_password(eng_keyring *kr, const uint8_t *mk,
				uint32_t slot_id, const char *password,
				size_t password_len)
{
	struct kr_slot *s, tmp;
	int ret;

	if (kr == NULL || mk == NULL || !password_valid(password, password_len))
		return ENG_EINVAL;
	if ((s = find_slot(kr, slot_id, NULL)) == NULL)
		return ENG_ENOTFOUND;
	if ((ret = check_mk(kr, mk)) != 0)
		return ret;
	/* Seal into a copy so that a failure leaves the old slot intact. */
	tmp = *s;
	tmp.opslimit = (uint32_t)kr->params.opslimit;
	tmp.memlimit = kr->params.memlimit_bytes;
	if ((ret = slot_seal(kr, &tmp, password, password_len, mk)) != 0)
		return ret;
	*s = tmp;
	return 0;
}

int eng_keyring_remove_slot(eng_keyring *kr, uint32_t slot_id)
{
	size_t i;

	if (kr == NULL)
		return ENG_EINVAL;
	if (find_slot(kr, slot_id, &i) == NULL)
		return ENG_ENOTFOUND;
	if (kr->n_slots == 1)
		return ENG_EPERM;
	memmove(&kr->slots[i], &kr->slots[i + 1],
		(kr->n_slots - i - 1) * sizeof(kr->slots[0]));
	kr->n_slots--;
	memset(&kr->slots[kr->n_slots], 0, sizeof(kr->slots[0]));
	return 0;
}

int eng_keyring_slots(const eng_keyring *kr, eng_slot_info **slots_r,
		      size_t *n_r)
{
	eng_slot_info *info;

	if (kr == NULL || slots_r == NULL || n_r == NULL)
		return ENG_EINVAL;
	info = eng_calloc(kr->n_slots, sizeof(*info));
	for (size_t i = 0; i < kr->n_slots; i++) {
		info[i].id = kr->slots[i].id;
		memcpy(info[i].label, kr->slots[i].label,
		       kr->slots[i].label_len + 1);
		info[i].created = kr->slots[i].created;
	}
	*slots_r = info;
	*n_r = kr->n_slots;
	return 0;
}

void eng_keyring_set_params(eng_keyring *kr, eng_kdf_params p)
{
	if (kr == NULL)
		return;
	if (!params_valid(p))
		eng_log(ENG_LOG_WARN, "keyring: Argon2id cost out of bounds, "
			"clamped");
	if (p.opslimit < ENG_KDF_MIN_OPSLIMIT)
		p.opslimit = ENG_KDF_MIN_OPSLIMIT;
	if (p.opslimit > ENG_KDF_MAX_OPSLIMIT)
		p.opslimit = ENG_KDF_MAX_OPSLIMIT;
	if (p.memlimit_bytes < ENG_KDF_MIN_MEMLIMIT)
		p.memlimit_bytes = ENG_KDF_MIN_MEMLIMIT;
	if (p.memlimit_bytes > ENG_KDF_MAX_MEMLIMIT)
		p.memlimit_bytes = ENG_KDF_MAX_MEMLIMIT;
	kr->params = p;
}

const uint8_t *eng_keyring_public_key(const eng_keyring *kr)
{
	return kr->pk;
}

int eng_keyring_secret_key(const eng_keyring *kr, const uint8_t *mk,
			   uint8_t **sk_r)
{
	if (kr == NULL || mk == NULL || sk_r == NULL)
		return ENG_EINVAL;
	return unwrap_sk(kr, mk, sk_r);
}

int eng_keyring_encode(const eng_keyring *kr, uint8_t **blob_r, size_t *len_r)
{
	uint8_t *b, *p;

	if (kr == NULL || blob_r == NULL || len_r == NULL)
		return ENG_EINVAL;
	b = eng_malloc(KR_MAX_BYTES);
	p = b;
	memcpy(p, KR_MAGIC, 4);
	p += 4;
	*p++ = KR_VERSION;
	memcpy(p, kr->id, KR_ID_BYTES);
	p += KR_ID_BYTES;
	memcpy(p, kr->salt, KR_SALT_BYTES);
	p += KR_SALT_BYTES;
	memcpy(p, kr->pk, ENG_PK_BYTES);
	p += ENG_PK_BYTES;
	memcpy(p, kr->sk_nonce, KR_NONCE_BYTES);
	p += KR_NONCE_BYTES;
	memcpy(p, kr->sk_wrapped, KR_WRAPPED_BYTES);
	p += KR_WRAPPED_BYTES;
	*p++ = (uint8_t)kr->n_slots;
	for (size_t i = 0; i < kr->n_slots; i++) {
		const struct kr_slot *s = &kr->slots[i];

		put_u32(p, s->id);
		p += 4;
		*p++ = KR_ALG_ARGON2ID13;
		put_u32(p, s->opslimit);
		p += 4;
		put_u64(p, s->memlimit);
		p += 8;
		put_u64(p, (uint64_t)s->created);
		p += 8;
		*p++ = s->label_len;
		memcpy(p, s->label, s->label_len);
		p += s->label_len;
		memcpy(p, s->nonce, KR_NONCE_BYTES);
		p += KR_NONCE_BYTES;
		memcpy(p, s->wrapped, KR_WRAPPED_BYTES);
		p += KR_WRAPPED_BYTES;
	}
	*len_r = (size_t)(p - b);
	*blob_r = b;
	return 0;
}

/* A bounds-checked cursor over untrusted input. */
struct kr_cursor {
	const uint8_t *p;
	size_t left;
};

static const uint8_t *take(struct kr_cursor *c, size_t n)
{
	const uint8_t *p = c->p;

	if (c->left < n)
		return NULL;
	c->p += n;
	c->left -= n;
	return p;
}

static int decode_slot(struct kr_cursor *c, struct kr_slot *s)
{
	const uint8_t *p;

	if ((p = take(c, 4 + 1 + 4 + 8 + 8 + 1)) == NULL)
		return ENG_EMALFORMED;
	s->id = get_u32(p);
	if (p[4] != KR_ALG_ARGON2ID13)
		return ENG_EMALFORMED;
	s->opslimit = get_u32(p + 5);
	s->memlimit = get_u64(p + 9);
	s->created = (int64_t)get_u64(p + 17);
	s->label_len = p[25];
	if (s->id == 0 ||
	    !params_valid((eng_kdf_params){ s->opslimit, s->memlimit }))
		return ENG_EMALFORMED;
	if ((p = take(c, s->label_len)) == NULL ||
	    !label_valid((const char *)p, s->label_len))
		return ENG_EMALFORMED;
	memcpy(s->label, p, s->label_len);
	s->label[s->label_len] = '\0';
	if ((p = take(c, KR_NONCE_BYTES)) == NULL)
		return ENG_EMALFORMED;
	memcpy(s->nonce, p, KR_NONCE_BYTES);
	if ((p = take(c, KR_WRAPPED_BYTES)) == NULL)
		return ENG_EMALFORMED;
	memcpy(s->wrapped, p, KR_WRAPPED_BYTES);
	return 0;
}

int eng_keyring_decode(const uint8_t *blob, size_t len,
		       eng_keyring **keyring_r)
{
	struct kr_cursor c = { blob, len };
	const uint8_t *p;
	eng_keyring *kr;
	size_t n;
	int ret;

	if ((blob == NULL && len != 0) || keyring_r == NULL)
		return ENG_EINVAL;
	if (len < 5 || memcmp(blob, KR_MAGIC, 4) != 0)
		return ENG_EMALFORMED;
	if (blob[4] > KR_VERSION)
		return ENG_ENEWER;
	if (blob[4] != KR_VERSION || len > KR_MAX_BYTES)
		return ENG_EMALFORMED;
	(void)take(&c, 5);

	kr = eng_calloc(1, sizeof(*kr));
	ret = ENG_EMALFORMED;
	if ((p = take(&c, KR_ID_BYTES)) == NULL)
		goto fail;
	memcpy(kr->id, p, KR_ID_BYTES);
	if ((p = take(&c, KR_SALT_BYTES)) == NULL)
		goto fail;
	memcpy(kr->salt, p, KR_SALT_BYTES);
	if ((p = take(&c, ENG_PK_BYTES)) == NULL)
		goto fail;
	memcpy(kr->pk, p, ENG_PK_BYTES);
	if ((p = take(&c, KR_NONCE_BYTES)) == NULL)
		goto fail;
	memcpy(kr->sk_nonce, p, KR_NONCE_BYTES);
	if ((p = take(&c, KR_WRAPPED_BYTES)) == NULL)
		goto fail;
	memcpy(kr->sk_wrapped, p, KR_WRAPPED_BYTES);
	if ((p = take(&c, 1)) == NULL)
		goto fail;
	n = p[0];
	if (n < 1 || n > ENG_KEYRING_MAX_SLOTS)
		goto fail;
	for (size_t i = 0; i < n; i++) {
		struct kr_slot *s = &kr->slots[i];

		if ((ret = decode_slot(&c, s)) != 0)
			goto fail;
		ret = ENG_EMALFORMED;
		/* Sorted and unique: one canonical encoding per keyring. */
		if (i > 0 && s->id <= kr->slots[i - 1].id)
			goto fail;
		/* New slots get the strongest cost already in use. */
		if (i == 0 || s->memlimit > kr->params.memlimit_bytes ||
		    (s->memlimit == kr->params.memlimit_bytes &&
		     s->opslimit > kr->params.opslimit)) {
			kr->params.opslimit = s->opslimit;
			kr->params.memlimit_bytes = s->memlimit;
		}
	}
	if (c.left != 0)
		goto fail;
	kr->n_slots = n;
	*keyring_r = kr;
	return 0;
fail:
	free(kr);
	return ret;
}

void eng_keyring_free(eng_keyring **kr)
{
	if (kr == NULL || *kr == NULL)
		return;
	free(*kr);
	*kr = NULL;
}

int eng_derive_db_key(const uint8_t *mk, uint8_t **key_r)
{
	uint8_t *key;

	if (mk == NULL || key_r == NULL)
		return ENG_EINVAL;
	if (eng_crypto_init() != 0)
		return ENG_EIO;
	key = eng_secret_new(ENG_DBKEY_BYTES);
	if (crypto_kdf_derive_from_key(key, ENG_DBKEY_BYTES, 1, KR_CTX_DBKEY,
				       mk) != 0) {
		eng_secret_free(&key);
		return ENG_EIO;
	}
	*key_r = key;
	return 0;
}
