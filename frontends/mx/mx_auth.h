/*
 * Sender authentication for the MX: SPF (RFC 7208, libspf2), DKIM
 * verification (RFC 6376, libopendkim) and DMARC (RFC 7489, libopendmarc)
 * for one received message, with the verdict the MX acts on and the
 * Authentication-Results header (RFC 8601) it prepends.
 *
 * The library calls block on DNS, so mx_auth_check runs them on libuv's
 * thread pool (uv_queue_work) and calls back on the loop thread. Several
 * checks may run at once (one per pool thread); every per-message object is
 * per call, see the top of mx_auth.c for the libraries' thread rules.
 *
 * What is checked:
 *  - SPF on the MAIL FROM domain, or on the HELO name for the null sender.
 *  - DKIM: every DKIM-Signature, at most MX_AUTH_MAX_SIGNATURES of them,
 *    body hash over the whole message (which the MX holds in memory,
 *    bounded by its message size limit).
 *  - DMARC on the RFC 5322.From domain (several From domains: fail, RFC
 *    7489 6.6.1), relaxed/strict alignment per the record, the
 *    organizational domain from Debian's Public Suffix List
 *    (/usr/share/publicsuffix/public_suffix_list.dat; without it the last
 *    two labels), p/sp, and pct applied with a random draw.
 *
 * Verdict: MX_AUTH_REJECT when DMARC fails and the policy that applies is
 * p=reject (and the pct draw selects the message); MX_AUTH_TEMPFAIL when a
 * temporary DNS error in SPF, DKIM or DMARC could have changed a reject
 * outcome; MX_AUTH_ACCEPT otherwise (quarantine is accepted: the header
 * says dmarc=fail and the mailbox may file it). The header is always set.
 *
 * Nothing of the message reaches the logs or the reason text.
 */
#ifndef MX_AUTH_H
#define MX_AUTH_H

#include <stddef.h>
#include <stdint.h>
#include <uv.h>

/* DKIM signatures verified per message; more are reported as not checked. */
#define MX_AUTH_MAX_SIGNATURES 5

typedef struct mx_auth mx_auth;

typedef struct mx_auth_config {
	const char *authserv_id; /* our host name in Authentication-Results */
	unsigned dns_timeout_ms; /* per query, 0 = 5000 */
} mx_auth_config;

/*
 * Creates the checker for one loop (the DKIM library handle and the
 * Public Suffix List are loaded once here). cfg is copied. 0 or ENG_E*.
 */
int mx_auth_new(uv_loop_t *loop, const mx_auth_config *cfg, mx_auth **a_r);

/*
 * Frees the checker and sets *a to NULL; accepts NULL. No mx_auth_check may
 * be in flight (their callbacks must have run).
 */
void mx_auth_free(mx_auth **a);

typedef struct mx_auth_input {
	const char *client_ip;  /* "192.0.2.1" or "2001:db8::1" */
	const char *helo;       /* the EHLO/HELO argument */
	const char *mail_from;  /* the envelope sender address; "" = null sender */
	const uint8_t *message; /* the whole received message, headers + body, */
	size_t len;             /* CRLF line ends */
} mx_auth_input;

typedef enum mx_auth_verdict {
	MX_AUTH_ACCEPT = 0,
	MX_AUTH_REJECT = 1,   /* DMARC fail under p=reject: 550 5.7.1 */
	MX_AUTH_TEMPFAIL = 2, /* a temporary DNS error decided it: 451 4.7.0 */
} mx_auth_verdict;

typedef struct mx_auth_result {
	mx_auth_verdict verdict;
	/*
	 * "Authentication-Results: <authserv-id>;\r\n spf=pass
	 * smtp.mailfrom=example.org;\r\n dkim=pass header.d=example.org
	 * header.s=sel;\r\n dmarc=pass (p=reject) header.from=example.org\r\n",
	 * folded, CRLF-terminated, malloc'd; ready to prepend to the message.
	 */
	char *header;
	/* A short fixed text for the SMTP reply, no detail from the message. */
	char *reason;
} mx_auth_result;

/* res is owned by the callee: free it with mx_auth_result_free. */
typedef void mx_auth_cb(void *ctx, mx_auth_result *res);

/*
 * Starts the checks of one message on libuv's thread pool; cb runs on the
 * loop thread with the result (a check always completes: DNS timeouts
 * become temperror). The input (strings and message) must stay valid
 * until cb. 0, or ENG_E* (then cb never runs).
 */
int mx_auth_check(mx_auth *a, const mx_auth_input *in, mx_auth_cb *cb,
		  void *ctx);

/* Frees a result and sets *r to NULL; accepts NULL. */
void mx_auth_result_free(mx_auth_result **r);

#endif
