/*
 * SQLCipher 3.4.1 page cipher with cached contexts (see cipher_provider.h).
 *
 * Rules:
 * - Same bytes on disk: AES-256-CBC without padding, HMAC-SHA1 over the
 *   cipher text, IV and page number, exactly as SQLCipher's OpenSSL
 *   provider computes them; anything outside that fast path (another
 *   cipher, key size or length) goes to the built-in function.
 * - Only random, hmac and cipher are new. The per-connection state lives
 *   in the provider context (one per SQLCipher cipher_ctx, used by one
 *   thread at a time), which wraps the built-in context; the provider
 *   tables are process-wide and immutable once registered.
 * - SQLCipher frees the registered table on re-registration and when its
 *   last keyed connection closes (the default comes back with the next
 *   one); so a private keyed in-memory connection ("anchor") stays open
 *   for the life of the process, and every table handed to SQLCipher is
 *   its own sqlcipher_malloc'd copy.
 * - Keys, the HMAC key's SHA-1 states and random state are wiped when a
 *   context is freed (sqlcipher_free wipes, OpenSSL's context frees
 *   cleanse); per-page copies of the SHA-1 states are wiped after use;
 *   nothing about keys is logged.
 */
/* SHA1_Init/Update/Final (cp_hmac): deprecated in OpenSSL 3, still built. */
#define OPENSSL_SUPPRESS_DEPRECATED
#include "cipher_provider.h"

#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/sha.h>
#include <pthread.h>
#include <sodium.h>
#include <sqlite3.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "eng_error.h"

/* SQLCipher exports that its Debian package declares in no header. */
int sqlcipher_register_provider(eng_sqlcipher_provider *p);
eng_sqlcipher_provider *sqlcipher_get_provider(void);
void *sqlcipher_malloc(int sz);
void sqlcipher_free(void *ptr, int sz);

#define CP_DECRYPT 0 /* SQLCipher's CIPHER_DECRYPT */
#define CP_ENCRYPT 1 /* SQLCipher's CIPHER_ENCRYPT */
#define CP_KEY_SZ 32
#define CP_BLOCK 16
#define CP_MAX_HMAC_KEY 64 /* SQLCipher's CIPHER_MAX_KEY_SZ */
#define CP_HMAC_SZ 20
#define CP_SHA1_BLOCK 64
/* Random pool per context: 32 bytes of next seed, then 480 of output
 * (10 pages' reserve at 48 bytes each) per generator call. */
#define CP_RNG_POOL 512
#define CP_RNG_SEED 32

struct cp_ctx {
	void *inner;                  /* the built-in provider's context */
	int aes_cbc;                  /* inner cipher is AES-256-CBC */
	EVP_CIPHER_CTX *evp[2];       /* [CP_DECRYPT], [CP_ENCRYPT] */
	int evp_keyed[2];
	unsigned char evp_key[2][CP_KEY_SZ];
	unsigned char evp_chain[2][CP_BLOCK]; /* CBC state: see cp_cbc */
	int mac_key_sz;               /* 0: not keyed */
	unsigned char mac_key[CP_MAX_HMAC_KEY];
	SHA_CTX mac_state[2];         /* after K ^ ipad, after K ^ opad */
	unsigned int rng_gen;         /* fork generation of the seed; 0 none */
	int rng_pos;
	unsigned char rng_seed[CP_RNG_SEED];
	unsigned char rng_pool[CP_RNG_POOL];
};

static pthread_mutex_t cp_lock = PTHREAD_MUTEX_INITIALIZER;
static bool cp_tried, cp_ok, cp_held;
static atomic_bool cp_active;
static sqlite3 *cp_anchor;
static eng_sqlcipher_provider cp_builtin, cp_fast;
static EVP_CIPHER *cp_aes;
static atomic_uint cp_fork_gen = 1;
/* Pages this thread ran through the cached contexts / the built-in
 * functions (eng_cipher_provider_thread_pages). */
static _Thread_local uint64_t cp_pages_fast, cp_pages_builtin;

static void cp_after_fork_child(void)
{
	atomic_fetch_add(&cp_fork_gen, 1);
}

/* ---- random: libsodium's ChaCha20 generator with fast key erasure ---- */

static void cp_rng_refill(struct cp_ctx *c)
{
	randombytes_buf_deterministic(c->rng_pool, CP_RNG_POOL, c->rng_seed);
	memcpy(c->rng_seed, c->rng_pool, CP_RNG_SEED);
	sodium_memzero(c->rng_pool, CP_RNG_SEED);
	c->rng_pos = CP_RNG_SEED;
}

/*
 * Each context seeds from randombytes_buf (the kernel) on first use and
 * after a fork; each pool fill takes its next seed from the stream and
 * hands out the rest once: no output is ever given twice.
 */
static int cp_random(void *ctx, void *buffer, int length)
{
	struct cp_ctx *c = ctx;
	unsigned char *out = buffer;
	unsigned int gen = atomic_load_explicit(&cp_fork_gen,
						memory_order_relaxed);

	if (length < 0)
		return SQLITE_ERROR;
	if (c->rng_gen != gen) {
		randombytes_buf(c->rng_seed, CP_RNG_SEED);
		c->rng_gen = gen;
		c->rng_pos = CP_RNG_POOL;
	}
	while (length > 0) {
		int n;

		if (c->rng_pos == CP_RNG_POOL)
			cp_rng_refill(c);
		n = CP_RNG_POOL - c->rng_pos;
		if (n > length)
			n = length;
		memcpy(out, c->rng_pool + c->rng_pos, (size_t)n);
		sodium_memzero(c->rng_pool + c->rng_pos, (size_t)n);
		c->rng_pos += n;
		out += n;
		length -= n;
	}
	return SQLITE_OK;
}

/*
 * ---- hmac: HMAC-SHA1 from the key's two padded blocks hashed once ----
 *
 * HMAC(K, m) = SHA1((K ^ opad) || SHA1((K ^ ipad) || m)), K zero-padded
 * to SHA-1's 64-byte block (SQLCipher's keys are at most 64 bytes, so never
 * hashed first). The SHA-1 states after the two padded blocks are kept per
 * context and copied per page: a plain struct copy, where EVP_MAC_init
 * copied an EVP_MD_CTX (a provider context allocated and freed) twice per
 * page, ~0.35 us of 2.9 (bench/README.md, "Storage read path CPU"). The
 * low-level SHA1_* functions are deprecated in OpenSSL 3 but are the same
 * SHA-NI code; their states hold key material and are wiped after use.
 */
static void cp_hmac_rekey(struct cp_ctx *c, const unsigned char *key,
			  int key_sz)
{
	unsigned char pad[CP_SHA1_BLOCK];

	for (int which = 0; which < 2; which++) {
		memset(pad, which == 0 ? 0x36 : 0x5c, sizeof(pad));
		for (int i = 0; i < key_sz; i++)
			pad[i] ^= key[i];
		SHA1_Init(&c->mac_state[which]);
		SHA1_Update(&c->mac_state[which], pad, sizeof(pad));
	}
	OPENSSL_cleanse(pad, sizeof(pad));
	memcpy(c->mac_key, key, (size_t)key_sz);
	c->mac_key_sz = key_sz;
}

static int cp_hmac(void *ctx, unsigned char *hmac_key, int key_sz,
		   unsigned char *in, int in_sz, unsigned char *in2, int in2_sz,
		   unsigned char *out)
{
	struct cp_ctx *c = ctx;
	unsigned char inner[CP_HMAC_SZ];
	SHA_CTX h;

	if (key_sz <= 0 || key_sz > CP_MAX_HMAC_KEY || in_sz < 0 ||
	    in2_sz < 0)
		return cp_builtin.hmac(c->inner, hmac_key, key_sz, in, in_sz,
				       in2, in2_sz, out);
	if (c->mac_key_sz != key_sz ||
	    memcmp(c->mac_key, hmac_key, (size_t)key_sz) != 0)
		cp_hmac_rekey(c, hmac_key, key_sz);
	h = c->mac_state[0];
	SHA1_Update(&h, in, (size_t)in_sz);
	SHA1_Update(&h, in2, (size_t)in2_sz);
	SHA1_Final(inner, &h);
	h = c->mac_state[1];
	SHA1_Update(&h, inner, sizeof(inner));
	SHA1_Final(out, &h);
	OPENSSL_cleanse(&h, sizeof(h));
	OPENSSL_cleanse(inner, sizeof(inner));
	return SQLITE_OK;
}

/*
 * ---- cipher: AES-256-CBC contexts keyed once per direction ----
 *
 * A context is keyed once and then never re-initialised for a page's IV
 * (EVP_CipherInit_ex2 + EVP_CipherFinal_ex per page cost ~0.3 us of a 0.95
 * us page decryption): it runs on as one CBC stream whose state (chain) is
 * the last cipher text block it went through, and the page's own IV is
 * put in by hand. Decrypting, the first plain block comes out XORed with
 * chain instead of the IV, so chain ^ IV is XORed onto it; encrypting, the
 * first plain block goes in XORed with IV ^ chain, so the context's XOR
 * with chain leaves block ^ IV, as CBC with the IV would. Whole blocks
 * only, no padding: nothing is ever held back in the context.
 */
static EVP_CIPHER_CTX *cp_evp_ready(struct cp_ctx *c, int mode,
				    const unsigned char *key)
{
	EVP_CIPHER_CTX *e = c->evp[mode];

	if (e == NULL && (e = c->evp[mode] = EVP_CIPHER_CTX_new()) == NULL)
		return NULL;
	if (c->evp_keyed[mode] &&
	    memcmp(c->evp_key[mode], key, CP_KEY_SZ) == 0)
		return e;
	c->evp_keyed[mode] = 0;
	memset(c->evp_chain[mode], 0, CP_BLOCK);
	if (!EVP_CipherInit_ex2(e, cp_aes, key, c->evp_chain[mode], mode,
				NULL) ||
	    !EVP_CIPHER_CTX_set_padding(e, 0))
		return NULL;
	memcpy(c->evp_key[mode], key, CP_KEY_SZ);
	c->evp_keyed[mode] = 1;
	return e;
}

static void cp_xor_block(unsigned char *dst, const unsigned char *a,
			 const unsigned char *b)
{
	for (int i = 0; i < CP_BLOCK; i++)
		dst[i] = a[i] ^ b[i];
}

/* in_sz bytes (whole blocks, > 0) through the keyed stream with iv. */
static bool cp_cbc(struct cp_ctx *c, EVP_CIPHER_CTX *e, int mode,
		   const unsigned char *iv, const unsigned char *in, int in_sz,
		   unsigned char *out)
{
	unsigned char *chain = c->evp_chain[mode];
	unsigned char fix[CP_BLOCK], last[CP_BLOCK];
	int n1 = 0, n2 = 0;
	bool ok;

	cp_xor_block(fix, chain, iv);
	if (mode == CP_DECRYPT) {
		memcpy(last, in + in_sz - CP_BLOCK, CP_BLOCK); /* out may be in */
		ok = EVP_CipherUpdate(e, out, &n1, in, in_sz) && n1 == in_sz;
		if (ok)
			cp_xor_block(out, out, fix);
		memcpy(chain, last, CP_BLOCK);
	} else {
		cp_xor_block(fix, fix, in);
		ok = EVP_CipherUpdate(e, out, &n1, fix, CP_BLOCK) &&
		     n1 == CP_BLOCK &&
		     EVP_CipherUpdate(e, out + CP_BLOCK, &n2, in + CP_BLOCK,
				      in_sz - CP_BLOCK) &&
		     n2 == in_sz - CP_BLOCK;
		memcpy(chain, out + in_sz - CP_BLOCK, CP_BLOCK);
	}
	OPENSSL_cleanse(fix, sizeof(fix));
	return ok;
}

static int cp_cipher(void *ctx, int mode, unsigned char *key, int key_sz,
		     unsigned char *iv, unsigned char *in, int in_sz,
		     unsigned char *out)
{
	struct cp_ctx *c = ctx;
	EVP_CIPHER_CTX *e;

	if (!c->aes_cbc || key_sz != CP_KEY_SZ ||
	    (mode != CP_DECRYPT && mode != CP_ENCRYPT) || in_sz <= 0 ||
	    in_sz % CP_BLOCK != 0)
		goto builtin;
	if ((e = cp_evp_ready(c, mode, key)) != NULL &&
	    cp_cbc(c, e, mode, iv, in, in_sz, out)) {
		cp_pages_fast++;
		return SQLITE_OK;
	}
	c->evp_keyed[mode] = 0;
builtin:
	cp_pages_builtin++;
	return cp_builtin.cipher(c->inner, mode, key, key_sz, iv, in, in_sz,
				 out);
}

/* ---- context life and the functions that only unwrap it ---- */

static int cp_ctx_init(void **ctx)
{
	struct cp_ctx *c = sqlcipher_malloc(sizeof(*c));
	int rc;

	*ctx = NULL;
	if (c == NULL)
		return SQLITE_NOMEM;
	if ((rc = cp_builtin.ctx_init(&c->inner)) != SQLITE_OK) {
		sqlcipher_free(c, sizeof(*c));
		return rc;
	}
	*ctx = c;
	return SQLITE_OK;
}

static int cp_ctx_free(void **ctx)
{
	struct cp_ctx *c = *ctx;

	if (c == NULL)
		return SQLITE_OK;
	EVP_CIPHER_CTX_free(c->evp[CP_DECRYPT]);
	EVP_CIPHER_CTX_free(c->evp[CP_ENCRYPT]);
	cp_builtin.ctx_free(&c->inner);
	sqlcipher_free(c, sizeof(*c));
	*ctx = NULL;
	return SQLITE_OK;
}

/* The cipher SQLCipher chose is AES-256-CBC with its usual sizes. */
static int cp_is_aes256cbc(void *inner)
{
	const char *name = cp_builtin.get_cipher(inner);

	return name != NULL && strcasecmp(name, "AES-256-CBC") == 0 &&
	       cp_builtin.get_key_sz(inner) == CP_KEY_SZ &&
	       cp_builtin.get_iv_sz(inner) == CP_BLOCK &&
	       cp_builtin.get_block_sz(inner) == CP_BLOCK;
}

static int cp_set_cipher(void *ctx, const char *cipher_name)
{
	struct cp_ctx *c = ctx;
	int rc = cp_builtin.set_cipher(c->inner, cipher_name);

	if (rc == SQLITE_OK)
		c->aes_cbc = cp_is_aes256cbc(c->inner);
	return rc;
}

/* The random state is never copied: two contexts must not share IVs. The
 * keyed OpenSSL contexts check their key on every call, so they need not
 * follow either. */
static int cp_ctx_copy(void *target_ctx, void *source_ctx)
{
	struct cp_ctx *t = target_ctx;
	const struct cp_ctx *s = source_ctx;

	t->aes_cbc = s->aes_cbc;
	return cp_builtin.ctx_copy(t->inner, s->inner);
}

static int cp_ctx_cmp(void *c1, void *c2)
{
	return cp_builtin.ctx_cmp(((struct cp_ctx *)c1)->inner,
				  ((struct cp_ctx *)c2)->inner);
}

static int cp_add_random(void *ctx, void *buffer, int length)
{
	return cp_builtin.add_random(((struct cp_ctx *)ctx)->inner, buffer,
				     length);
}

static int cp_kdf(void *ctx, const unsigned char *pass, int pass_sz,
		  unsigned char *salt, int salt_sz, int workfactor, int key_sz,
		  unsigned char *key)
{
	return cp_builtin.kdf(((struct cp_ctx *)ctx)->inner, pass, pass_sz,
			      salt, salt_sz, workfactor, key_sz, key);
}

static const char *cp_get_cipher(void *ctx)
{
	return cp_builtin.get_cipher(((struct cp_ctx *)ctx)->inner);
}

static int cp_get_key_sz(void *ctx)
{
	return cp_builtin.get_key_sz(((struct cp_ctx *)ctx)->inner);
}

static int cp_get_iv_sz(void *ctx)
{
	return cp_builtin.get_iv_sz(((struct cp_ctx *)ctx)->inner);
}

static int cp_get_block_sz(void *ctx)
{
	return cp_builtin.get_block_sz(((struct cp_ctx *)ctx)->inner);
}

static int cp_get_hmac_sz(void *ctx)
{
	return cp_builtin.get_hmac_sz(((struct cp_ctx *)ctx)->inner);
}

/*
 * The built-in table with the context wrapped. activate, deactivate,
 * get_provider_name, fips_status and get_provider_version stay the
 * built-in ones: 3.4.1 calls the last three with its cipher_ctx rather
 * than the provider context, and the OpenSSL ones ignore it.
 */
static void cp_build_fast(void)
{
	cp_fast = cp_builtin;
	cp_fast.add_random = cp_add_random;
	cp_fast.random = cp_random;
	cp_fast.hmac = cp_hmac;
	cp_fast.kdf = cp_kdf;
	cp_fast.cipher = cp_cipher;
	cp_fast.set_cipher = cp_set_cipher;
	cp_fast.get_cipher = cp_get_cipher;
	cp_fast.get_key_sz = cp_get_key_sz;
	cp_fast.get_iv_sz = cp_get_iv_sz;
	cp_fast.get_block_sz = cp_get_block_sz;
	cp_fast.get_hmac_sz = cp_get_hmac_sz;
	cp_fast.ctx_copy = cp_ctx_copy;
	cp_fast.ctx_cmp = cp_ctx_cmp;
	cp_fast.ctx_init = cp_ctx_init;
	cp_fast.ctx_free = cp_ctx_free;
}

/* ---- install ---- */

/* One page through both providers, twice per key (the second call takes
 * the cached context), with two keys: cipher text, plain text and HMAC
 * must be equal. */
static bool cp_same_page(void *b, void *f, const unsigned char *key,
			 const unsigned char *hkey)
{
	enum { SZ = 4096 - 48 };
	static unsigned char page[SZ], o1[SZ], o2[SZ];
	unsigned char iv[CP_BLOCK], h1[CP_HMAC_SZ], h2[CP_HMAC_SZ];
	unsigned char pgno[4];
	bool same = true;

	for (int round = 0; round < 2 && same; round++) {
		randombytes_buf(page, sizeof(page));
		randombytes_buf(iv, sizeof(iv));
		randombytes_buf(pgno, sizeof(pgno));
		for (int mode = CP_DECRYPT; mode <= CP_ENCRYPT; mode++) {
			cp_builtin.cipher(b, mode, (unsigned char *)key,
					  CP_KEY_SZ, iv, page, SZ, o1);
			cp_fast.cipher(f, mode, (unsigned char *)key,
				       CP_KEY_SZ, iv, page, SZ, o2);
			same = same && memcmp(o1, o2, SZ) == 0;
		}
		cp_builtin.hmac(b, (unsigned char *)hkey, CP_KEY_SZ, page, SZ,
				pgno, 4, h1);
		cp_fast.hmac(f, (unsigned char *)hkey, CP_KEY_SZ, page, SZ,
			     pgno, 4, h2);
		same = same && memcmp(h1, h2, sizeof(h1)) == 0;
	}
	return same;
}

static bool cp_self_check(void)
{
	unsigned char keys[2][2][CP_KEY_SZ];
	void *b = NULL, *f = NULL;
	bool same = false;

	if (cp_builtin.ctx_init(&b) != SQLITE_OK ||
	    cp_fast.ctx_init(&f) != SQLITE_OK ||
	    cp_builtin.set_cipher(b, "aes-256-cbc") != SQLITE_OK ||
	    cp_fast.set_cipher(f, "aes-256-cbc") != SQLITE_OK ||
	    !((struct cp_ctx *)f)->aes_cbc)
		goto out;
	randombytes_buf(keys, sizeof(keys));
	same = cp_same_page(b, f, keys[0][0], keys[0][1]) &&
	       cp_same_page(b, f, keys[1][0], keys[1][1]);
out:
	sodium_memzero(keys, sizeof(keys));
	if (b != NULL)
		cp_builtin.ctx_free(&b);
	if (f != NULL)
		cp_fast.ctx_free(&f);
	return same;
}

static bool cp_pragma_is(const char *sql, const char *want)
{
	sqlite3_stmt *stmt = NULL;
	bool is = false;

	if (sqlite3_prepare_v2(cp_anchor, sql, -1, &stmt, NULL) == SQLITE_OK &&
	    sqlite3_step(stmt) == SQLITE_ROW) {
		const unsigned char *v = sqlite3_column_text(stmt, 0);

		is = v != NULL && strcmp((const char *)v, want) == 0;
	}
	sqlite3_finalize(stmt);
	return is;
}

/* A keyed in-memory connection: SQLCipher is active from now on. */
static bool cp_open_anchor(void)
{
	static const char sql[] = "PRAGMA key = \"x'%s'\"";
	unsigned char key[CP_KEY_SZ];
	char hex[CP_KEY_SZ * 2 + 1], buf[sizeof(sql) + sizeof(hex)];
	int rc;

	if (sqlite3_open(":memory:", &cp_anchor) != SQLITE_OK)
		return false;
	randombytes_buf(key, sizeof(key));
	sodium_bin2hex(hex, sizeof(hex), key, sizeof(key));
	snprintf(buf, sizeof(buf), sql, hex);
	rc = sqlite3_exec(cp_anchor, buf, NULL, NULL, NULL);
	sodium_memzero(key, sizeof(key));
	sodium_memzero(hex, sizeof(hex));
	sodium_memzero(buf, sizeof(buf));
	return rc == SQLITE_OK;
}

static const char *cp_setup(void)
{
	eng_sqlcipher_provider *p;
	const char *env = getenv("SEALMAIL_SQLCIPHER_PROVIDER");

	if (env != NULL && strcmp(env, "builtin") == 0)
		return "SEALMAIL_SQLCIPHER_PROVIDER=builtin";
	if (sodium_init() < 0)
		return "libsodium did not initialise";
	if (!cp_open_anchor())
		return "no keyed in-memory connection";
	if (!cp_pragma_is("PRAGMA cipher_version", "3.4.1"))
		return "SQLCipher is not 3.4.1";
	if (!cp_pragma_is("PRAGMA cipher_provider", "openssl"))
		return "SQLCipher's provider is not openssl";
	if ((p = sqlcipher_get_provider()) == NULL)
		return "no provider registered";
	cp_builtin = *p;
	cp_aes = EVP_CIPHER_fetch(NULL, "AES-256-CBC", NULL);
	if (cp_aes == NULL)
		return "OpenSSL has no AES-256-CBC";
	cp_build_fast();
	if (!cp_self_check())
		return "self-check differs from the built-in provider";
	if (pthread_atfork(NULL, NULL, cp_after_fork_child) != 0)
		return "pthread_atfork failed";
	return NULL;
}

/* Hands SQLCipher its own copy of a table (it frees the previous one). */
static bool cp_register(const eng_sqlcipher_provider *table)
{
	eng_sqlcipher_provider *p = sqlcipher_malloc(sizeof(*p));

	if (p == NULL)
		return false;
	*p = *table;
	return sqlcipher_register_provider(p) == SQLITE_OK;
}

int eng_cipher_provider_install(void)
{
	if (atomic_load(&cp_active))
		return 0;
	pthread_mutex_lock(&cp_lock);
	if (!cp_tried) {
		const char *why = cp_setup();

		cp_tried = true;
		cp_ok = why == NULL;
		if (!cp_ok) {
			eng_log(ENG_LOG_WARN, "SQLCipher: keeping the built-in "
				"page cipher provider: %s", why);
			EVP_CIPHER_free(cp_aes);
			cp_aes = NULL;
			sqlite3_close(cp_anchor);
			cp_anchor = NULL;
		}
	}
	if (cp_ok && !cp_held && !atomic_load(&cp_active) &&
	    cp_register(&cp_fast))
		atomic_store(&cp_active, true);
	pthread_mutex_unlock(&cp_lock);
	return atomic_load(&cp_active) ? 0 : ENG_EPERM;
}

void eng_cipher_provider_use_builtin(bool builtin)
{
	pthread_mutex_lock(&cp_lock);
	cp_held = builtin;
	if (builtin && atomic_load(&cp_active) && cp_register(&cp_builtin))
		atomic_store(&cp_active, false);
	pthread_mutex_unlock(&cp_lock);
	if (!builtin)
		(void)eng_cipher_provider_install();
}

bool eng_cipher_provider_active(void)
{
	return atomic_load(&cp_active);
}

void eng_cipher_provider_thread_pages(uint64_t *fast_r, uint64_t *builtin_r)
{
	*fast_r = cp_pages_fast;
	*builtin_r = cp_pages_builtin;
}

const eng_sqlcipher_provider *eng_cipher_provider_builtin(void)
{
	return cp_ok ? &cp_builtin : NULL;
}

const eng_sqlcipher_provider *eng_cipher_provider_fast(void)
{
	return cp_ok ? &cp_fast : NULL;
}
