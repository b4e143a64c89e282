/*
 * What the pieces of a snapshot share (private to backup/; bk.h is the API).
 *
 * bk_fileset.c  the files to back up (file sets, the offline/staged collect)
 * bk_backup.c   a backup: hash, name, encrypt and upload each file (objects)
 * bk_manifest.c the sealed manifest: write, read, parse
 * bk_snapshot.c listing snapshots, retention (bk_prune), the subkeys
 * bk_restore.c  download, decrypt and verify objects; install them
 *
 * The format:
 *
 * Object (plaintext of size S, k = max(1, ceil(S / 65536)) chunks):
 *
 *     "SMBKOBJ1" | secretstream header (24) | k records
 *
 * each record crypto_secretstream_xchacha20poly1305_push(chunk) with
 * TAG_MESSAGE, the last with TAG_FINAL; every chunk but the last holds
 * exactly 65536 bytes, so the manifest's size gives every record's length.
 * Key: crypto_kdf_derive_from_key(id 1, "sm-bkobj", backup key).
 * Name: "objects/" | hex(BLAKE2b-256 keyed with subkey (2, "sm-bknam") over
 * the file's SHA-256).
 *
 * Manifest: "SMBKMAN1" | version (1 byte) | nonce (24) |
 * XChaCha20-Poly1305-IETF(subkey (3, "sm-bkman"), nonce, text,
 * ad = the first 9 bytes | snapshot id), text being lines
 *
 *     sealmail-backup 1
 *     id <snapshot id>
 *     created <unix seconds>
 *     file <mode octal> <size> <sha256 hex> <object> <path>
 *
 * The version byte is outside the AEAD so that a newer format is refused
 * as newer, not reported as a wrong key; it is in the AD, so it cannot be
 * altered either.
 */
#ifndef SM_BK_PRIVATE_H
#define SM_BK_PRIVATE_H

#include <sodium.h>
#include <stdint.h>
#include <sys/types.h>

#include "bk.h"
#include "buf.h"

#define OBJ_MAGIC "SMBKOBJ1"
#define MAN_MAGIC "SMBKMAN1"
#define MAGIC_BYTES 8
#define SS_HEADER crypto_secretstream_xchacha20poly1305_HEADERBYTES
#define SS_ABYTES crypto_secretstream_xchacha20poly1305_ABYTES
#define OBJ_HEAD_BYTES (MAGIC_BYTES + SS_HEADER)
#define REC_MAX (BK_CHUNK_BYTES + SS_ABYTES)
#define MANIFEST_MAX_BYTES (256u * 1024 * 1024)

enum { SUB_OBJ = 1, SUB_NAME = 2, SUB_MAN = 3 };

struct bk_fileset {
	struct fs_entry {
		char *rel, *src;
		mode_t mode;
	} *v;
	size_t n, cap;
};

/* The subkey which (SUB_*) of the backup key into out. */
void bk_subkey(uint8_t out[32], const uint8_t *key, int which);
/* n bytes of secret memory (sodium_malloc); aborts when out of memory. */
uint8_t *bk_secret_new(size_t n);
/* The number of chunks (records) of an object of plaintext size. */
uint64_t bk_n_chunks(uint64_t size);
/* "snapshots/<id>.manifest" into out. */
void bk_manifest_name(char *out, size_t n, const char *id);
/* Seals text as snapshot id's manifest and uploads it. */
int bk_manifest_put(bk_target *t, const uint8_t *key, const char *id,
		    const eng_buf *text);

#endif
