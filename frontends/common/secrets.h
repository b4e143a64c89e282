/*
 * The server's own secrets: the RPC shared secret (frontends authenticate to
 * sqlited with it) and the backup key (backups are encrypted with it). Each
 * is SM_SECRET_BYTES random bytes from libsodium, stored as lower-case hex
 * (64 characters and a newline) in a file of mode 0600.
 *
 * Secret bytes and their hex form live only in sodium_malloc'd memory
 * (guard pages, mlock, excluded from core dumps) and are wiped when freed.
 * Files are read and written with plain read()/write(), never through stdio,
 * whose buffers would keep a copy in ordinary heap memory.
 */
#ifndef SM_SECRETS_H
#define SM_SECRETS_H

#include <stdbool.h>
#include <stdint.h>

#define SM_SECRET_BYTES 32
#define SM_SECRET_HEX_CHARS (2 * SM_SECRET_BYTES)

/*
 * Makes sure the secret file at `path` exists and is well formed. If it is
 * missing, creates it (its directory must exist) and sets *created_r; then,
 * if hex_r is not NULL, *hex_r gets the new secret's hex form (sodium_malloc'd,
 * free with sm_secret_hex_free) so that the caller can show it once. If it
 * exists it is checked (content, mode; group/other access is removed) and
 * *hex_r stays NULL. Returns 0 or a negative eng_err code with a malloc'd
 * sentence in *err_r; the sentence never contains the secret.
 */
int sm_secret_ensure(const char *path, bool *created_r, char **hex_r, char **err_r);

/*
 * Reads the secret at `path` into *key_r (SM_SECRET_BYTES, sodium_malloc'd;
 * free with sm_secret_free). Fails if the file is malformed or readable by
 * group or others. Returns 0 or a negative eng_err code and a sentence.
 */
int sm_secret_load(const char *path, uint8_t **key_r, char **err_r);

/* Wipe and free; set the pointer to NULL; accept NULL. */
void sm_secret_free(uint8_t **key);
void sm_secret_hex_free(char **hex);

#endif
