/*
 * sqlited's outbound queue: forward copies of delivered mail, sealed at
 * rest in data_dir/outbound/ (entry format: engine/outbound.h), with the
 * envelope sender rewritten by SRS (srv_srs.h). Written before DELIVER is
 * answered; nothing sends them yet (the submission issue will).
 *
 * Keys, made at first use in data_dir/secrets/ (mode 0700, files 0600,
 * 64 hex digits each, frontends/common/secrets.h):
 *  - outbound_key: the X25519 secret key of the queue; sqlited keeps only
 *    its public key (entries are sealed to it, as the spool is to an
 *    alias's key), and whoever relays the queue later reads the file;
 *  - srs_secret: the SRS HMAC key (its hex text, as postsrsd reads one).
 *
 * Thread-safe: srv_outbound_queue runs on the pool.
 */
#ifndef SRV_OUTBOUND_H
#define SRV_OUTBOUND_H

#include <stddef.h>
#include <stdint.h>

#include "spool.h"

typedef struct srv_outbound srv_outbound;
struct srv_body;

typedef struct srv_outbound_req {
	const char *sender;          /* envelope sender as received; "" = <> */
	const char *recipient;       /* the DELIVER address */
	const char *alias_id;
	const char *alias_domain;    /* the SRS forwarding domain */
	const char *const *targets;
	size_t n_targets;
	int64_t internal_date;
	const uint8_t *key;          /* IDEMPOTENCY_KEY or NULL */
	size_t key_len;
} srv_outbound_req;

/* Counts the entries already queued (and removes tmp-* leftovers). */
int srv_outbound_new(const char *data_dir, srv_outbound **ob_r);
void srv_outbound_free(srv_outbound **ob);
/* Entries in data_dir/outbound/ (for STATS / SERVER_STATUS). */
uint64_t srv_outbound_queued(const srv_outbound *ob);

/*
 * Queues one entry for q's targets with body's bytes, durably (tmp +
 * fsync + rename + directory fsync) before returning 0. With a key the
 * entry's id is derived from the alias id and the key, so writing it
 * again replaces it (queued once). ENG_EINVAL for a bad sender;
 * ENG_ENOSPC / ENG_EIO: nothing was queued.
 */
int srv_outbound_queue(srv_outbound *ob, const srv_outbound_req *q,
		       struct srv_body *body);

/*
 * Copies a received request body into a spool writer (the mailbox spool
 * and the outbound queue both use it). 0, or ENG_EIO if the body failed
 * its check, or the writer's error.
 */
int srv_body_copy(struct srv_body *body, eng_spool_writer *w);

/*
 * The entry id of a keyed delivery: BLAKE2b-128 of label, the alias id and
 * the key, as ENG_SPOOL_ID_LEN hex digits, so that a retry after a crash
 * names the same entry (the mailbox spool and the outbound queue each use
 * their own label).
 */
void srv_key_id(const char *label, const char *alias_id, const uint8_t *key,
		size_t key_len, char id_r[ENG_SPOOL_ID_LEN + 1]);

#endif
