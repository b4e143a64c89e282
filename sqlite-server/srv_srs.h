/*
 * The Sender Rewriting Scheme (Shevek's SRS paper, as libsrs2 and postsrsd
 * implement it, "guarded" mode): when sqlited queues a forward, the
 * envelope sender becomes an address of the forwarding domain, so that the
 * next hop's SPF check sees our domain, and a bounce comes back to us with
 * enough to find the original sender, protected by a keyed hash so that
 * nobody can use us as a bounce relay.
 *
 *   user@orig.example            -> SRS0=HHHH=TT=orig.example=user@fwd.example
 *   SRS0=HHHH=TT=orig=user@hop1  -> SRS1=GGGG=hop1==HHHH=TT=orig=user@fwd.example
 *   SRS1=GGGG=hop1==rest@hop2    -> SRS1=KKKK=hop1==rest@fwd.example
 *   ""  (the null sender)        -> ""  (bounces are never rewritten)
 *   x@fwd.example                -> unchanged (already our domain)
 *
 * HHHH: the first 4 characters of the base64 (RFC 4648, "+/") HMAC-SHA1,
 * keyed with the secret, of the lower-cased fields concatenated (SRS0:
 * TT, orig-domain, orig-local; SRS1: hop1, "=rest"). TT: days since the
 * epoch mod 1024 in two base32 characters ("A".."Z", "2".."7").
 * Reversal checks the hash (case-insensitively, as libsrs2 does: some
 * MTAs lower-case local parts) and, for SRS0, that TT is at most
 * SRV_SRS_MAX_AGE_DAYS old.
 *
 * The secret is the text of data_dir/secrets/srs_secret (64 hex digits):
 * postsrsd given the same file text as its secret produces and accepts the
 * same addresses. Pure functions: no I/O, no globals.
 */
#ifndef SRV_SRS_H
#define SRV_SRS_H

#include <stddef.h>
#include <stdint.h>

#define SRV_SRS_HASH_CHARS 4
#define SRV_SRS_MAX_AGE_DAYS 21

/*
 * Rewrites sender for a forward by alias_domain at time now (seconds
 * since the epoch). *out_r is malloc'd. ENG_EINVAL for a sender without
 * '@' or with an empty part, an empty alias_domain, or an SRS1 address
 * that does not parse.
 */
int srv_srs_forward(const uint8_t *secret, size_t secret_len, const char *sender,
		    const char *alias_domain, int64_t now, char **out_r);

/*
 * Undoes one rewrite: an SRS0 address gives the original sender, an SRS1
 * address gives the SRS0 address at the first hop. ENG_EINVAL if it is
 * not SRS or does not parse, ENG_EAUTH for a wrong hash, ENG_ELIMIT for
 * an SRS0 timestamp older than SRV_SRS_MAX_AGE_DAYS (or in the future).
 */
int srv_srs_reverse(const uint8_t *secret, size_t secret_len, const char *address,
		    int64_t now, char **out_r);

#endif
