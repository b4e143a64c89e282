/*
 * The sealed outbound queue's entries: one file per queued message and
 * target set, in data_dir/outbound/ (docs/storage.md), written by sqlited
 * when a DELIVER reaches a forwarding alias, read by `sealmail queue` and
 * (later) by the sender that relays it.
 *
 * An entry is a spool file (spool.h: "SMSPOOL1", crypto_box_seal of a
 * file key to the queue's public key, secretstream, tmp + fsync + rename
 * + directory fsync) whose plaintext is an envelope followed by the
 * message:
 *
 *   "SMOUTQ1\n"
 *   "sender <SRS-rewritten envelope sender, empty for the null sender>\n"
 *   "orig-sender <the envelope sender as received>\n"
 *   "recipient <the address DELIVER was for>\n"
 *   "alias <alias id>\n"
 *   "size <message bytes>\n"
 *   "target <address>\n"          (1 to 100 times)
 *   "\n"
 *   <the message, size bytes>
 *
 * So the envelope (who wrote to whom) is sealed at rest like the body.
 * Values hold no CR, LF or NUL and are at most ENG_OUTBOUND_VALUE_MAX bytes.
 */
#ifndef ENG_OUTBOUND_H
#define ENG_OUTBOUND_H

#include <stddef.h>
#include <stdint.h>

#include "spool.h"

#define ENG_OUTBOUND_VALUE_MAX 1024
#define ENG_OUTBOUND_TARGETS_MAX 100

typedef struct eng_outbound_env {
	char *sender;
	char *orig_sender;
	char *recipient;
	char *alias_id;
	uint64_t size;
	char **targets;
	size_t n_targets;
} eng_outbound_env;

/*
 * Opens a spool writer in dir sealed to pk (id: NULL = random, else a
 * fixed id for an idempotent writer, see eng_spool_writer_open_id) and
 * writes env's envelope; the caller writes env->size message bytes and
 * commits. ENG_EINVAL for a value with CR/LF/NUL or too long, or a target
 * count outside 1..ENG_OUTBOUND_TARGETS_MAX.
 */
int eng_outbound_writer_open(const char *dir, const uint8_t *pk, int64_t date,
			     const char *id, const eng_outbound_env *env,
			     eng_spool_writer **w_r);

/*
 * Reads the envelope from an open entry; the reader is then at the first
 * message byte. ENG_ECORRUPT for anything malformed.
 */
int eng_outbound_read_env(eng_spool_reader *r, eng_outbound_env *env);
/* Frees what env holds and zeroes it. */
void eng_outbound_env_clear(eng_outbound_env *env);

#endif
