/*
 * A faster SQLCipher 3.4.1 crypto provider with the same on-disk format.
 *
 * SQLCipher 3.4.1's OpenSSL provider (Debian 12, OpenSSL 3) sets up a
 * fresh cipher context and a fresh HMAC context for every 4 KiB page, each
 * looking the algorithm up by name, and takes an IV from RAND_bytes under a
 * global mutex per page written. This provider keeps, per SQLCipher context,
 * an AES-256-CBC context per direction keyed once and run as one CBC
 * stream (each page's IV applied to its first block by hand), the HMAC-SHA1
 * key's inner and outer SHA-1 states (both re-keyed only when the key
 * bytes change), and draws the page's reserve
 * bytes (IV and filler) from a per-context libsodium generator. Cipher text
 * and HMAC are byte for byte those of the built-in provider; everything but
 * random, hmac and cipher is the built-in provider's own function.
 *
 * It is installed only on the layout verified against SQLCipher 3.4.1's
 * source (cipher_version "3.4.1", provider "openssl") and only when a
 * self-check (encrypt, decrypt and HMAC of a random page with both
 * providers) agrees; otherwise SQLCipher is left alone.
 */
#ifndef ENG_CIPHER_PROVIDER_H
#define ENG_CIPHER_PROVIDER_H

#include <stdbool.h>
#include <stdint.h>

/*
 * SQLCipher 3.4.1's sqlcipher_provider (src/sqlcipher.h), which the Debian
 * package does not install. Only valid for 3.4.1: install checks the
 * version before it touches one.
 */
typedef struct {
	int (*activate)(void *ctx);
	int (*deactivate)(void *ctx);
	const char *(*get_provider_name)(void *ctx);
	int (*add_random)(void *ctx, void *buffer, int length);
	int (*random)(void *ctx, void *buffer, int length);
	int (*hmac)(void *ctx, unsigned char *hmac_key, int key_sz,
		    unsigned char *in, int in_sz, unsigned char *in2, int in2_sz,
		    unsigned char *out);
	int (*kdf)(void *ctx, const unsigned char *pass, int pass_sz,
		   unsigned char *salt, int salt_sz, int workfactor, int key_sz,
		   unsigned char *key);
	int (*cipher)(void *ctx, int mode, unsigned char *key, int key_sz,
		      unsigned char *iv, unsigned char *in, int in_sz,
		      unsigned char *out);
	int (*set_cipher)(void *ctx, const char *cipher_name);
	const char *(*get_cipher)(void *ctx);
	int (*get_key_sz)(void *ctx);
	int (*get_iv_sz)(void *ctx);
	int (*get_block_sz)(void *ctx);
	int (*get_hmac_sz)(void *ctx);
	int (*ctx_copy)(void *target_ctx, void *source_ctx);
	int (*ctx_cmp)(void *c1, void *c2);
	int (*ctx_init)(void **ctx);
	int (*ctx_free)(void **ctx);
	int (*fips_status)(void *ctx);
	const char *(*get_provider_version)(void *ctx);
} eng_sqlcipher_provider;

/*
 * Registers the provider for every SQLCipher connection opened from now
 * on. Idempotent and thread-safe (one mutex, taken only until the
 * provider is in place); call before the first keyed connection
 * (eng_store_open does). Returns 0 when the provider is in place, ENG_EPERM
 * when SQLCipher was left with its own (other version or provider, failed
 * self-check, or the environment has SEALMAIL_SQLCIPHER_PROVIDER=builtin:
 * logged once, without key material).
 */
int eng_cipher_provider_install(void);

/* True while this provider is the registered one. */
bool eng_cipher_provider_active(void);

/*
 * Tests and benchmarks: true registers the built-in provider again (for
 * connections opened afterwards; open ones keep theirs) and makes install
 * a no-op answering ENG_EPERM; false puts this provider back. Never call
 * while another thread opens a connection.
 */
void eng_cipher_provider_use_builtin(bool builtin);

/*
 * Tests: pages the calling thread encrypted or decrypted through this
 * provider's cached contexts, and through the built-in cipher function
 * (by this provider's fallback), since the thread started.
 */
void eng_cipher_provider_thread_pages(uint64_t *fast_r, uint64_t *builtin_r);

/*
 * Tests: the built-in provider's functions and this provider's, as
 * registered (NULL before the first install / when it was refused).
 */
const eng_sqlcipher_provider *eng_cipher_provider_builtin(void);
const eng_sqlcipher_provider *eng_cipher_provider_fast(void);

#endif
