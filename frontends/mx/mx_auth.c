/*
 * Sender authentication (mx_auth.h): SPF with libspf2, DKIM verification
 * with libopendkim, DMARC with libopendmarc, run on libuv's thread pool.
 *
 * Threads and the libraries (from their documentation and sources):
 *  - libspf2: an SPF_server_t is not meant to be shared while its DNS layer
 *    keeps state, so each check creates its own server (cheap) over our own
 *    DNS layer (spf_dns_lookup below), and frees it before returning.
 *  - libopendkim: "the DKIM_LIB handle can be used by several threads at
 *    once" and per-message DKIM handles share no memory (dkim_lib.html,
 *    overview.html). One DKIM_LIB per mx_auth, created on the loop thread,
 *    one dkim_verify handle per check on its pool thread. Its DNS hooks
 *    (dkim_dns_set_query_start/waitreply/cancel) are ours, stateless.
 *  - libopendmarc: opendmarc_policy_library_init and the Public Suffix
 *    List (a global hash behind a mutex) are process-wide and "must be
 *    called once, before multi-threading": done once under uv_once, never
 *    shut down (other mx_auth objects may still use it). A DMARC_POLICY_T
 *    is created per check. We do not let opendmarc query DNS (its resolver
 *    folds SERVFAIL, timeouts and "no record" together): we fetch the
 *    _dmarc TXT record ourselves and hand it over with
 *    opendmarc_policy_store_dmarc; opendmarc parses it and decides
 *    alignment and the policy.
 *
 * DNS: every query (SPF, DKIM key, DMARC record) goes through dns_send(),
 * the system resolver (res_nsend, /etc/resolv.conf: the test namespace
 * points it at dnsmasq) on a per-call res_state with our timeout (whole
 * seconds: the resolver's unit, rounded up) and one retry. A timeout or
 * SERVFAIL is a temporary error (temperror); NXDOMAIN or no data is "none".
 *
 * Organizational domain: Debian's Public Suffix List
 * (/usr/share/publicsuffix/public_suffix_list.dat, package publicsuffix)
 * through opendmarc_get_tld; without the file, the last two labels.
 *
 * TEMPFAIL rule: the verdict is TEMPFAIL, never REJECT, when DMARC would
 * fail under p=reject but an SPF or DKIM temperror could have produced an
 * aligned pass, or when the DMARC record itself could not be fetched and
 * nothing strictly aligned passed (the record might say p=reject).
 *
 * Nothing of the message (headers, addresses, body) is logged; the reason
 * texts are fixed strings. Domain names reach only the header, filtered to
 * LDH characters (anything else is left out).
 */
#include "mx_auth.h"

#include <arpa/inet.h>
#include <arpa/nameser.h>
#include <ctype.h>
#include <netdb.h>
#include <netinet/in.h>
#include <resolv.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/types.h>

#include <opendkim/dkim.h>
#include <opendmarc/dmarc.h>
#include <spf2/spf.h>

#include "eng_error.h"

/* Exported by libopendmarc but not declared in dmarc.h: the
 * organizational domain of domain per the loaded suffix list. */
int opendmarc_get_tld(u_char *domain, u_char *tld, size_t tld_len);

#define PSL_PATH "/usr/share/publicsuffix/public_suffix_list.dat"
#define DNS_ANSWER_BYTES 65536
#define MAX_FROM_DOMAINS 8
#define DOMAIN_BYTES 256
#define DMARC_RECORD_BYTES 2048

/* RFC 8601 method results. */
typedef enum ar_res {
	AR_NONE, AR_PASS, AR_FAIL, AR_SOFTFAIL, AR_NEUTRAL, AR_TEMPERROR,
	AR_PERMERROR, AR_POLICY
} ar_res;

static const char *const ar_names[] = {
	"none", "pass", "fail", "softfail", "neutral", "temperror",
	"permerror", "policy"
};

struct mx_auth {
	uv_loop_t *loop;
	char *authserv_id;
	unsigned dns_timeout_ms;
	DKIM_LIB *dkim;
};

/* ---- Output buffer (bounded by what we put in: a few short lines) ---- */

typedef struct sbuf {
	char *p;
	size_t len, cap;
} sbuf;

static void sb_add(sbuf *b, const char *fmt, ...)
	__attribute__((format(printf, 2, 3)));

static void sb_add(sbuf *b, const char *fmt, ...)
{
	va_list ap;
	for (;;) {
		va_start(ap, fmt);
		int n = vsnprintf(b->p ? b->p + b->len : NULL,
				  b->p ? b->cap - b->len : 0, fmt, ap);
		va_end(ap);
		if (n < 0)
			return;
		if (b->p && b->len + (size_t)n < b->cap) {
			b->len += (size_t)n;
			return;
		}
		b->cap = (b->cap + (size_t)n + 1) * 2;
		b->p = eng_realloc(b->p, b->cap);
	}
}

/* A domain safe for the header (letters, digits, '-', '.', '_'), else "". */
static const char *hdr_domain(const char *d)
{
	size_t n = d ? strlen(d) : 0;
	if (n == 0 || n >= DOMAIN_BYTES)
		return "";
	for (size_t i = 0; i < n; i++) {
		unsigned char c = (unsigned char)d[i];
		if (!isalnum(c) && c != '-' && c != '.' && c != '_')
			return "";
	}
	return d;
}

/* ---- DNS ---- */

/*
 * One query through the system resolver with our timeout. Returns the
 * answer length (whatever its rcode: NXDOMAIN comes back as an answer) or
 * -1 for a temporary failure (timeout, SERVFAIL, REFUSED, no server).
 */
static int dns_send(unsigned timeout_ms, const char *name, int type,
		    uint8_t *ans, int anslen)
{
	struct __res_state st;
	uint8_t q[NS_PACKETSZ + NS_MAXDNAME];
	memset(&st, 0, sizeof st);
	if (res_ninit(&st) != 0)
		return -1;
	st.retrans = (int)((timeout_ms + 999) / 1000);
	st.retry = 1;
	int n = res_nmkquery(&st, ns_o_query, name, ns_c_in, type, NULL, 0,
			     NULL, q, sizeof q);
	if (n > 0)
		n = res_nsend(&st, q, n, ans, anslen);
	res_nclose(&st);
	if (n > anslen)
		n = anslen; /* truncated to the buffer; parsing stays inside */
	return n < (int)NS_HFIXEDSZ ? -1 : n;
}

typedef enum dns_status { DNS_OK, DNS_NONE, DNS_TEMP } dns_status;

/* Parses an answer; DNS_NONE for NXDOMAIN or NOERROR without answers. */
static dns_status dns_parse(const uint8_t *ans, int len, ns_msg *msg)
{
	if (len < 0)
		return DNS_TEMP;
	if (ns_initparse(ans, len, msg) < 0)
		return DNS_TEMP;
	switch (ns_msg_getflag(*msg, ns_f_rcode)) {
	case ns_r_noerror:
		return ns_msg_count(*msg, ns_s_an) > 0 ? DNS_OK : DNS_NONE;
	case ns_r_nxdomain:
		return DNS_NONE;
	default:
		return DNS_TEMP;
	}
}

/* Joins the character-strings of a TXT rdata into out (NUL-terminated). */
static void txt_join(const uint8_t *rd, size_t rdlen, char *out, size_t cap)
{
	size_t o = 0;
	while (rdlen > 0 && o + 1 < cap) {
		size_t l = rd[0];
		rd++, rdlen--;
		if (l > rdlen)
			l = rdlen;
		if (l > cap - 1 - o)
			l = cap - 1 - o;
		memcpy(out + o, rd, l);
		o += l, rd += l, rdlen -= l;
	}
	out[o] = '\0';
}

/* ---- SPF: a libspf2 DNS layer over dns_send ---- */

static void spf_dns_destroy(SPF_dns_server_t *s)
{
	(void)s; /* owned by the check that created it */
}

static int spf_herrno(dns_status s, const ns_msg *msg)
{
	if (s == DNS_TEMP)
		return TRY_AGAIN;
	if (s == DNS_NONE)
		return ns_msg_getflag(*msg, ns_f_rcode) == ns_r_nxdomain
			       ? HOST_NOT_FOUND : NO_DATA;
	return NETDB_SUCCESS;
}

/* Copies one answer record into rr slot cnt; false if it is not wanted. */
static bool spf_rr_add(SPF_dns_rr_t *rr, int cnt, const ns_msg *msg,
		       const ns_rr *r, ns_type type)
{
	const uint8_t *rd = ns_rr_rdata(*r);
	size_t rdlen = ns_rr_rdlen(*r);
	char name[NS_MAXDNAME];
	if (ns_rr_type(*r) != type)
		return false;
	switch (type) {
	case ns_t_a:
		if (rdlen != 4 || SPF_dns_rr_buf_realloc(rr, cnt, 4))
			return false;
		memcpy(&rr->rr[cnt]->a, rd, 4);
		return true;
	case ns_t_aaaa:
		if (rdlen != 16 || SPF_dns_rr_buf_realloc(rr, cnt, 16))
			return false;
		memcpy(&rr->rr[cnt]->aaaa, rd, 16);
		return true;
	case ns_t_mx:
	case ns_t_ptr: {
		const uint8_t *p = type == ns_t_mx ? rd + NS_INT16SZ : rd;
		if ((type == ns_t_mx && rdlen < NS_INT16SZ) ||
		    ns_name_uncompress(ns_msg_base(*msg), ns_msg_end(*msg), p,
				       name, sizeof name) < 0)
			return false;
		if (SPF_dns_rr_buf_realloc(rr, cnt, strlen(name) + 1))
			return false;
		strcpy(type == ns_t_mx ? rr->rr[cnt]->mx : rr->rr[cnt]->ptr,
		       name);
		return true;
	}
	case ns_t_txt:
	default: /* type 99 (SPF) has TXT's format */
		if (SPF_dns_rr_buf_realloc(rr, cnt, rdlen + 1))
			return false;
		txt_join(rd, rdlen, rr->rr[cnt]->txt, rdlen + 1);
		return true;
	}
}

/*
 * The layer's state for one check. libspf2 turns a temporary DNS error
 * into "none" (no record) or a non-matching mechanism; we count them and
 * make any result but pass a temperror (RFC 7208 4.4, 5: the evaluation
 * would have stopped there).
 */
typedef struct spf_dns_ctx {
	const mx_auth *a;
	int temp_errors;
} spf_dns_ctx;

static SPF_dns_rr_t *spf_dns_lookup(SPF_dns_server_t *s, const char *domain,
				    ns_type type, int should_cache)
{
	(void)should_cache;
	spf_dns_ctx *c = s->hook;
	uint8_t *ans = eng_malloc(DNS_ANSWER_BYTES);
	ns_msg msg;
	int n = dns_send(c->a->dns_timeout_ms, domain, type, ans,
			 DNS_ANSWER_BYTES);
	dns_status st = dns_parse(ans, n, &msg);
	if (st == DNS_TEMP)
		c->temp_errors++;
	SPF_dns_rr_t *rr = SPF_dns_rr_new_init(s, domain, type, 0,
					       spf_herrno(st, &msg));
	if (rr == NULL)
		eng_oom(sizeof *rr);
	int cnt = 0;
	for (int i = 0; st == DNS_OK && i < ns_msg_count(msg, ns_s_an); i++) {
		ns_rr r;
		if (ns_parserr(&msg, ns_s_an, i, &r) < 0)
			break;
		if (spf_rr_add(rr, cnt, &msg, &r, type))
			cnt++;
	}
	rr->num_rr = cnt;
	if (st == DNS_OK && cnt == 0)
		rr->herrno = NO_DATA;
	free(ans);
	return rr;
}

typedef struct spf_out {
	ar_res res;
	int dmarc_outcome; /* DMARC_POLICY_SPF_OUTCOME_* */
	char domain[DOMAIN_BYTES];
	bool helo; /* checked the HELO identity (null sender) */
} spf_out;

static ar_res spf_map(SPF_result_t r)
{
	switch (r) {
	case SPF_RESULT_PASS: return AR_PASS;
	case SPF_RESULT_FAIL: return AR_FAIL;
	case SPF_RESULT_SOFTFAIL: return AR_SOFTFAIL;
	case SPF_RESULT_NEUTRAL: return AR_NEUTRAL;
	case SPF_RESULT_TEMPERROR: return AR_TEMPERROR;
	case SPF_RESULT_PERMERROR: return AR_PERMERROR;
	default: return AR_NONE;
	}
}

static int spf_dmarc_outcome(ar_res r)
{
	switch (r) {
	case AR_PASS: return DMARC_POLICY_SPF_OUTCOME_PASS;
	case AR_TEMPERROR: return DMARC_POLICY_SPF_OUTCOME_TMPFAIL;
	case AR_NONE: return DMARC_POLICY_SPF_OUTCOME_NONE;
	default: return DMARC_POLICY_SPF_OUTCOME_FAIL;
	}
}

static void lower_copy(char *dst, const char *src, size_t cap)
{
	size_t i = 0;
	for (; src[i] && i + 1 < cap; i++)
		dst[i] = (char)tolower((unsigned char)src[i]);
	dst[i] = '\0';
	if (i > 0 && dst[i - 1] == '.')
		dst[i - 1] = '\0';
}

/*
 * libspf2 reports a record it cannot compile as "none" (no SPF record);
 * RFC 7208 4.6 makes it permerror. The compiler's own errors tell them
 * apart: anything but "no record" and DNS errors.
 */
static bool spf_record_broken(SPF_response_t *resp)
{
	for (int i = 0; i < SPF_response_messages(resp); i++) {
		SPF_error_t *e = SPF_response_message(resp, i);
		SPF_errcode_t c = SPF_error_code(e);
		if (SPF_error_errorp(e) && c != SPF_E_NOT_SPF &&
		    c != SPF_E_DNS_ERROR && c != SPF_E_SUCCESS)
			return true;
	}
	return false;
}

static void spf_check(const mx_auth *a, const mx_auth_input *in, spf_out *o)
{
	const char *at = strrchr(in->mail_from, '@');
	o->helo = in->mail_from[0] == '\0' || at == NULL;
	lower_copy(o->domain, o->helo ? in->helo : at + 1, sizeof o->domain);
	o->res = AR_NONE;
	if (o->domain[0] == '\0')
		goto out;
	spf_dns_ctx ctx = { .a = a };
	SPF_dns_server_t dns = {
		.destroy = spf_dns_destroy, .lookup = spf_dns_lookup,
		.name = "mx_auth", .hook = &ctx,
	};
	SPF_server_t *srv = SPF_server_new_dns(&dns, 0);
	if (srv == NULL)
		eng_oom(0);
	SPF_request_t *req = SPF_request_new(srv);
	int bad = strchr(in->client_ip, ':')
			  ? SPF_request_set_ipv6_str(req, in->client_ip)
			  : SPF_request_set_ipv4_str(req, in->client_ip);
	char from[DOMAIN_BYTES + 16];
	snprintf(from, sizeof from, "postmaster@%s", o->domain);
	if (!bad)
		bad = SPF_request_set_helo_dom(req, in->helo[0] ? in->helo
								: o->domain) ||
		      SPF_request_set_env_from(req, o->helo ? from
							    : in->mail_from);
	SPF_response_t *resp = NULL;
	if (!bad) {
		SPF_request_query_mailfrom(req, &resp);
		o->res = resp ? spf_map(SPF_response_result(resp)) : AR_NONE;
		if (o->res == AR_NONE && resp && spf_record_broken(resp))
			o->res = AR_PERMERROR;
		if (ctx.temp_errors > 0 && o->res != AR_PASS)
			o->res = AR_TEMPERROR;
	} else {
		o->res = AR_PERMERROR;
	}
	if (resp)
		SPF_response_free(resp);
	SPF_request_free(req);
	SPF_server_free(srv);
out:
	o->dmarc_outcome = spf_dmarc_outcome(o->res);
}

/* ---- DKIM ---- */

typedef struct dkim_qh {
	int len;
} dkim_qh;

static int dkim_q_start(void *srv, int type, unsigned char *query,
			unsigned char *buf, size_t buflen, void **qh)
{
	const mx_auth *a = srv;
	int n = dns_send(a->dns_timeout_ms, (const char *)query, type, buf,
			 buflen > INT32_MAX ? INT32_MAX : (int)buflen);
	if (n < 0)
		return DKIM_DNS_ERROR;
	dkim_qh *h = eng_malloc(sizeof *h);
	h->len = n;
	*qh = h;
	return DKIM_DNS_SUCCESS;
}

static int dkim_q_wait(void *srv, void *qh, struct timeval *to,
		       size_t *bytes, int *error, int *dnssec)
{
	(void)srv, (void)to;
	if (bytes)
		*bytes = (size_t)((dkim_qh *)qh)->len;
	if (error)
		*error = 0;
	if (dnssec)
		*dnssec = DKIM_DNSSEC_UNKNOWN;
	return DKIM_DNS_SUCCESS;
}

static int dkim_q_cancel(void *srv, void *qh)
{
	(void)srv;
	free(qh);
	return 0;
}

static void dkim_q_close(void *srv)
{
	(void)srv; /* the service is the mx_auth itself */
}

static int dkim_q_init(void **srv)
{
	(void)srv; /* never needed: the service is set at mx_auth_new */
	return DKIM_DNS_ERROR;
}

/* Only the first MX_AUTH_MAX_SIGNATURES signatures are verified. */
static DKIM_CBSTAT dkim_prescreen(DKIM *d, DKIM_SIGINFO **sigs, int nsigs)
{
	(void)d;
	for (int i = MX_AUTH_MAX_SIGNATURES; i < nsigs; i++)
		dkim_sig_ignore(sigs[i]);
	return DKIM_CBSTAT_CONTINUE;
}

typedef struct dkim_sig_out {
	ar_res res;
	char domain[DOMAIN_BYTES];
	char selector[64];
} dkim_sig_out;

typedef struct dkim_out {
	int n;
	dkim_sig_out sig[MX_AUTH_MAX_SIGNATURES];
} dkim_out;

static ar_res dkim_sig_result(DKIM_SIGINFO *s)
{
	if ((dkim_sig_getflags(s) & DKIM_SIGFLAG_PASSED) &&
	    dkim_sig_getbh(s) == DKIM_SIGBH_MATCH)
		return AR_PASS;
	switch (dkim_sig_geterror(s)) {
	case DKIM_SIGERROR_KEYFAIL:
		return AR_TEMPERROR;
	case DKIM_SIGERROR_OK:
	case DKIM_SIGERROR_BADSIG:
	case DKIM_SIGERROR_EXPIRED:
	case DKIM_SIGERROR_FUTURE:
	case DKIM_SIGERROR_KEYREVOKED:
		return AR_FAIL;
	case DKIM_SIGERROR_NOKEY:
	case DKIM_SIGERROR_DNSSYNTAX:
	case DKIM_SIGERROR_MULTIREPLY:
	case DKIM_SIGERROR_KEYDECODE:
	case DKIM_SIGERROR_KEYTOOSMALL:
	case DKIM_SIGERROR_KEYVERSION:
	case DKIM_SIGERROR_KEYUNKNOWNHASH:
	case DKIM_SIGERROR_KEYHASHMISMATCH:
	case DKIM_SIGERROR_NOTEMAILKEY:
	case DKIM_SIGERROR_KEYTYPEMISSING:
	case DKIM_SIGERROR_KEYTYPEUNKNOWN:
		return AR_PERMERROR;
	default:
		return AR_NEUTRAL; /* the signature itself is malformed */
	}
}

static void dkim_check(const mx_auth *a, const mx_auth_input *in,
		       dkim_out *o)
{
	DKIM_STAT st;
	o->n = 0;
	DKIM *d = dkim_verify(a->dkim, (const unsigned char *)"mx", NULL, &st);
	if (d == NULL)
		return;
	/* dkim_chunk takes a non-const pointer but does not write to it. */
	dkim_chunk(d, (unsigned char *)(uintptr_t)in->message, in->len);
	dkim_chunk(d, NULL, 0);
	dkim_eom(d, NULL);
	DKIM_SIGINFO **sigs = NULL;
	int nsigs = 0;
	if (dkim_getsiglist(d, &sigs, &nsigs) != DKIM_STAT_OK)
		nsigs = 0;
	for (int i = 0; i < nsigs && o->n < MX_AUTH_MAX_SIGNATURES; i++) {
		if (dkim_sig_getflags(sigs[i]) & DKIM_SIGFLAG_IGNORE)
			continue;
		dkim_sig_out *s = &o->sig[o->n++];
		const unsigned char *dom = dkim_sig_getdomain(sigs[i]);
		const unsigned char *sel = dkim_sig_getselector(sigs[i]);
		lower_copy(s->domain, dom ? (const char *)dom : "",
			   sizeof s->domain);
		snprintf(s->selector, sizeof s->selector, "%s",
			 sel ? (const char *)sel : "");
		s->res = dkim_sig_result(sigs[i]);
	}
	dkim_free(d);
}

/* ---- The From header's domains ---- */

/* Length of the header block including its blank line, or len. */
static size_t header_end(const uint8_t *m, size_t len)
{
	for (size_t i = 0; i + 1 < len; i++)
		if (m[i] == '\n' && (m[i + 1] == '\n' ||
				     (m[i + 1] == '\r' && i + 2 < len &&
				      m[i + 2] == '\n')))
			return i + 1;
	return len;
}

static void add_domain(char doms[][DOMAIN_BYTES], int *n, const char *d,
		       size_t dl)
{
	char buf[DOMAIN_BYTES];
	if (dl == 0 || dl >= sizeof buf || *n >= MAX_FROM_DOMAINS)
		return;
	memcpy(buf, d, dl);
	buf[dl] = '\0';
	lower_copy(buf, buf, sizeof buf);
	for (int i = 0; i < *n; i++)
		if (strcmp(doms[i], buf) == 0)
			return;
	strcpy(doms[(*n)++], buf);
}

/*
 * Collects the domains of the addresses in one From field value
 * [v, e): after each '@' outside quotes and comments, up to the next
 * delimiter. Good enough for DMARC, which only needs the domains.
 */
static void from_domains(const uint8_t *v, const uint8_t *e,
			 char doms[][DOMAIN_BYTES], int *n)
{
	int comment = 0;
	bool quoted = false;
	for (const uint8_t *p = v; p < e; p++) {
		if (*p == '\\' && (quoted || comment) && p + 1 < e) {
			p++;
		} else if (quoted) {
			quoted = *p != '"';
		} else if (*p == '"' && comment == 0) {
			quoted = true;
		} else if (*p == '(') {
			comment++;
		} else if (*p == ')' && comment > 0) {
			comment--;
		} else if (*p == '@' && comment == 0) {
			const uint8_t *d = ++p;
			while (p < e && (isalnum(*p) || *p == '.' || *p == '-' ||
					 *p == '_' || *p >= 0x80))
				p++;
			add_domain(doms, n, (const char *)d, (size_t)(p - d));
			p--;
		}
	}
}

/* Every From field's domains; returns the number of From fields. */
static int find_from(const mx_auth_input *in, char doms[][DOMAIN_BYTES],
		     int *ndoms)
{
	const uint8_t *m = in->message;
	size_t end = header_end(m, in->len), i = 0;
	int fields = 0;
	*ndoms = 0;
	while (i < end) {
		size_t ls = i;
		/* a field runs to a line end not followed by a fold */
		while (i < end && !(m[i] == '\n' &&
				    (i + 1 >= end || (m[i + 1] != ' ' &&
						      m[i + 1] != '\t'))))
			i++;
		if (i - ls > 5 && strncasecmp((const char *)m + ls, "from", 4) == 0) {
			size_t c = ls + 4;
			while (c < i && (m[c] == ' ' || m[c] == '\t'))
				c++;
			if (c < i && m[c] == ':') {
				fields++;
				from_domains(m + c + 1, m + i, doms, ndoms);
			}
		}
		i++;
	}
	return fields;
}

/* ---- DMARC ---- */

static void org_domain(const char *d, char *out, size_t cap, bool psl)
{
	/* opendmarc_get_tld leaves out untouched when no suffix matches. */
	out[0] = '\0';
	if (psl && opendmarc_get_tld((u_char *)(uintptr_t)d, (u_char *)out,
				     cap) == 0 && out[0]) {
		return;
	}
	/* No suffix list: the last two labels. */
	const char *p = d + strlen(d), *dot = NULL;
	int dots = 0;
	while (p > d) {
		p--;
		if (*p == '.' && ++dots == 2) {
			dot = p;
			break;
		}
	}
	snprintf(out, cap, "%s", dot ? dot + 1 : d);
}

/* _dmarc.<domain>: DNS_OK with the one DMARC record, DNS_NONE, DNS_TEMP. */
static dns_status dmarc_fetch(const mx_auth *a, const char *domain,
			      char *rec, size_t cap)
{
	char name[DOMAIN_BYTES + 16];
	uint8_t *ans = eng_malloc(DNS_ANSWER_BYTES);
	ns_msg msg;
	snprintf(name, sizeof name, "_dmarc.%s", domain);
	int n = dns_send(a->dns_timeout_ms, name, ns_t_txt, ans,
			 DNS_ANSWER_BYTES);
	dns_status st = dns_parse(ans, n, &msg);
	int found = 0;
	for (int i = 0; st == DNS_OK && i < ns_msg_count(msg, ns_s_an); i++) {
		ns_rr r;
		char txt[DMARC_RECORD_BYTES];
		if (ns_parserr(&msg, ns_s_an, i, &r) < 0)
			break;
		if (ns_rr_type(r) != ns_t_txt)
			continue;
		txt_join(ns_rr_rdata(r), ns_rr_rdlen(r), txt, sizeof txt);
		if (strncasecmp(txt, "v=DMARC1", 8) == 0 &&
		    (txt[8] == ';' || txt[8] == ' ' || txt[8] == '\0')) {
			found++;
			snprintf(rec, cap, "%s", txt);
		}
	}
	free(ans);
	if (st != DNS_OK)
		return st;
	return found == 1 ? DNS_OK : DNS_NONE; /* RFC 7489 6.6.3: exactly one */
}

typedef struct dmarc_out {
	ar_res res;
	char from[DOMAIN_BYTES];  /* the (first) From domain */
	char policy;              /* DMARC_RECORD_P_* that applied, or 0 */
	char disposition;         /* after pct: DMARC_RECORD_P_* */
	int pct;
	bool temp_could_pass;     /* an SPF/DKIM temperror could have passed */
	bool record_temp;         /* the record could not be fetched */
	bool multi;               /* several From domains */
} dmarc_out;

typedef struct dmarc_record {
	char rec[DMARC_RECORD_BYTES];
	char org[DOMAIN_BYTES];
	bool via_org; /* found at the organizational domain */
} dmarc_record;

/* The record for domain d, at d or at its organizational domain. */
static dns_status dmarc_lookup(const mx_auth *a, const char *d, bool psl,
			       dmarc_record *r)
{
	org_domain(d, r->org, sizeof r->org, psl);
	r->via_org = false;
	dns_status st = dmarc_fetch(a, d, r->rec, sizeof r->rec);
	if (st == DNS_NONE && strcmp(r->org, d) != 0) {
		st = dmarc_fetch(a, r->org, r->rec, sizeof r->rec);
		r->via_org = true;
	}
	return st;
}

static int dkim_dmarc_outcome(ar_res r)
{
	switch (r) {
	case AR_PASS: return DMARC_POLICY_DKIM_OUTCOME_PASS;
	case AR_TEMPERROR: return DMARC_POLICY_DKIM_OUTCOME_TMPFAIL;
	case AR_NONE: return DMARC_POLICY_DKIM_OUTCOME_NONE;
	default: return DMARC_POLICY_DKIM_OUTCOME_FAIL;
	}
}

/* Would a pass of domain d align with from under mode ('s' or 'r')? */
static bool aligned(const char *d, const char *from, int mode, bool psl)
{
	if (strcmp(d, from) == 0)
		return true;
	if (mode == DMARC_RECORD_A_STRICT)
		return false;
	char o1[DOMAIN_BYTES], o2[DOMAIN_BYTES];
	org_domain(d, o1, sizeof o1, psl);
	org_domain(from, o2, sizeof o2, psl);
	return strcmp(o1, o2) == 0;
}

/* Applies one record to the From domain with opendmarc. */
static void dmarc_apply(const mx_auth_input *in, const spf_out *spf,
			const dkim_out *dk, const dmarc_record *r,
			dmarc_out *o, bool psl)
{
	DMARC_POLICY_T *p = opendmarc_policy_connect_init(
		(u_char *)(uintptr_t)in->client_ip,
		strchr(in->client_ip, ':') != NULL);
	if (p == NULL)
		eng_oom(0);
	opendmarc_policy_store_from_domain(p, (u_char *)o->from);
	if (spf->domain[0])
		opendmarc_policy_store_spf(p, (u_char *)(uintptr_t)spf->domain,
					   spf->dmarc_outcome,
					   spf->helo ? DMARC_POLICY_SPF_ORIGIN_HELO
						     : DMARC_POLICY_SPF_ORIGIN_MAILFROM,
					   NULL);
	for (int i = 0; i < dk->n; i++)
		if (dk->sig[i].domain[0])
			opendmarc_policy_store_dkim(
				p, (u_char *)(uintptr_t)dk->sig[i].domain,
				(u_char *)(uintptr_t)dk->sig[i].selector,
				dkim_dmarc_outcome(dk->sig[i].res), NULL);
	if (opendmarc_policy_store_dmarc(p, (u_char *)(uintptr_t)r->rec,
					 (u_char *)o->from,
					 r->via_org ? (u_char *)(uintptr_t)r->org
						    : NULL) != DMARC_PARSE_OKAY) {
		o->res = AR_PERMERROR; /* RFC 7489 6.6.3: an invalid record */
		opendmarc_policy_connect_shutdown(p);
		return;
	}
	int pol = opendmarc_get_policy_to_enforce(p);
	int pv = 0, spv = 0, pct = 100, adkim = 0, aspf = 0;
	opendmarc_policy_fetch_p(p, &pv);
	opendmarc_policy_fetch_sp(p, &spv);
	opendmarc_policy_fetch_pct(p, &pct);
	opendmarc_policy_fetch_adkim(p, &adkim);
	opendmarc_policy_fetch_aspf(p, &aspf);
	bool sub = r->via_org && spv != DMARC_RECORD_P_UNSPECIFIED;
	o->policy = (char)(sub ? spv : pv);
	o->pct = pct;
	o->res = pol == DMARC_POLICY_PASS ? AR_PASS : AR_FAIL;
	if (pol == DMARC_POLICY_ABSENT || pol == DMARC_FROM_DOMAIN_ABSENT)
		o->res = AR_NONE;
	/* Could a temperror have turned into an aligned pass? */
	if (spf->res == AR_TEMPERROR &&
	    aligned(spf->domain, o->from, aspf, psl))
		o->temp_could_pass = true;
	for (int i = 0; i < dk->n; i++)
		if (dk->sig[i].res == AR_TEMPERROR &&
		    aligned(dk->sig[i].domain, o->from, adkim, psl))
			o->temp_could_pass = true;
	opendmarc_policy_connect_shutdown(p);
}

/* pct (RFC 7489 6.6.4): not selected, the policy steps down one level. */
static char dmarc_disposition(char policy, int pct)
{
	if (pct >= 100 || policy == DMARC_RECORD_P_NONE)
		return policy;
	if ((int)arc4random_uniform(100) < pct)
		return policy;
	return policy == DMARC_RECORD_P_REJECT ? DMARC_RECORD_P_QUARANTINE
					       : DMARC_RECORD_P_NONE;
}

static int policy_rank(char p)
{
	return p == DMARC_RECORD_P_REJECT ? 3
	       : p == DMARC_RECORD_P_QUARANTINE ? 2
	       : p == DMARC_RECORD_P_NONE ? 1 : 0;
}

/* Did anything pass with exactly the From domain (aligned in any mode)? */
static bool strict_pass(const spf_out *spf, const dkim_out *dk,
			const char *from)
{
	if (spf->res == AR_PASS && strcmp(spf->domain, from) == 0)
		return true;
	for (int i = 0; i < dk->n; i++)
		if (dk->sig[i].res == AR_PASS &&
		    strcmp(dk->sig[i].domain, from) == 0)
			return true;
	return false;
}

static void dmarc_check(const mx_auth *a, const mx_auth_input *in,
			const spf_out *spf, const dkim_out *dk, bool psl,
			dmarc_out *o)
{
	char doms[MAX_FROM_DOMAINS][DOMAIN_BYTES];
	int ndoms = 0;
	int fields = find_from(in, doms, &ndoms);
	memset(o, 0, sizeof *o);
	o->pct = 100;
	if (ndoms == 0) {
		o->res = fields ? AR_PERMERROR : AR_NONE;
		return;
	}
	snprintf(o->from, sizeof o->from, "%s", doms[0]);
	if (ndoms > 1) {
		/* RFC 7489 6.6.1: fail, under the strictest published policy. */
		o->multi = true;
		o->res = AR_FAIL;
		for (int i = 0; i < ndoms; i++) {
			dmarc_record r;
			dmarc_out one = { .pct = 100 };
			dns_status st = dmarc_lookup(a, doms[i], psl, &r);
			if (st == DNS_TEMP)
				o->record_temp = true;
			if (st != DNS_OK)
				continue;
			snprintf(one.from, sizeof one.from, "%.*s", DOMAIN_BYTES - 1,
				 doms[i]);
			dmarc_apply(in, spf, dk, &r, &one, psl);
			if (policy_rank(one.policy) > policy_rank(o->policy)) {
				o->policy = one.policy;
				o->pct = one.pct;
			}
		}
	} else {
		dmarc_record r;
		dns_status st = dmarc_lookup(a, o->from, psl, &r);
		if (st == DNS_TEMP) {
			o->res = AR_TEMPERROR;
			o->record_temp = !strict_pass(spf, dk, o->from);
			return;
		}
		if (st == DNS_NONE) {
			o->res = AR_NONE;
			return;
		}
		dmarc_apply(in, spf, dk, &r, o, psl);
	}
	o->disposition = o->res == AR_FAIL
				 ? dmarc_disposition(o->policy, o->pct)
				 : DMARC_RECORD_P_NONE;
}

/* ---- Result ---- */

static const char *policy_name(char p)
{
	switch (p) {
	case DMARC_RECORD_P_REJECT: return "reject";
	case DMARC_RECORD_P_QUARANTINE: return "quarantine";
	case DMARC_RECORD_P_NONE: return "none";
	default: return NULL;
	}
}

static char *build_header(const mx_auth *a, const spf_out *spf,
			  const dkim_out *dk, const dmarc_out *dm)
{
	sbuf b = { 0 };
	sb_add(&b, "Authentication-Results: %s;\r\n\tspf=%s",
	       hdr_domain(a->authserv_id), ar_names[spf->res]);
	if (hdr_domain(spf->domain)[0])
		sb_add(&b, " smtp.%s=%s", spf->helo ? "helo" : "mailfrom",
		       spf->domain);
	if (dk->n == 0)
		sb_add(&b, ";\r\n\tdkim=none");
	for (int i = 0; i < dk->n; i++) {
		sb_add(&b, ";\r\n\tdkim=%s", ar_names[dk->sig[i].res]);
		if (hdr_domain(dk->sig[i].domain)[0])
			sb_add(&b, " header.d=%s", dk->sig[i].domain);
		if (hdr_domain(dk->sig[i].selector)[0])
			sb_add(&b, " header.s=%s", dk->sig[i].selector);
	}
	sb_add(&b, ";\r\n\tdmarc=%s", ar_names[dm->res]);
	const char *pn = policy_name(dm->policy);
	if (pn && (dm->res == AR_PASS || dm->res == AR_FAIL)) {
		sb_add(&b, " (p=%s", pn);
		if (dm->res == AR_FAIL)
			sb_add(&b, " dis=%s", policy_name(dm->disposition));
		if (dm->multi)
			sb_add(&b, " multiple-from");
		sb_add(&b, ")");
	} else if (dm->multi) {
		sb_add(&b, " (multiple-from)");
	}
	if (hdr_domain(dm->from)[0])
		sb_add(&b, " header.from=%s", dm->from);
	sb_add(&b, "\r\n");
	return b.p;
}

static mx_auth_verdict decide(const dmarc_out *dm)
{
	if (dm->res == AR_TEMPERROR)
		return dm->record_temp ? MX_AUTH_TEMPFAIL : MX_AUTH_ACCEPT;
	if (dm->res != AR_FAIL || dm->disposition != DMARC_RECORD_P_REJECT)
		return dm->record_temp && dm->multi ? MX_AUTH_TEMPFAIL
						     : MX_AUTH_ACCEPT;
	return dm->temp_could_pass ? MX_AUTH_TEMPFAIL : MX_AUTH_REJECT;
}

static const char *const reasons[] = {
	[MX_AUTH_ACCEPT] = "Sender authentication checked",
	[MX_AUTH_REJECT] = "Message rejected by the sender domain's DMARC policy",
	[MX_AUTH_TEMPFAIL] = "Temporary DNS failure while authenticating the sender, try again later",
};

/* ---- The check on the pool ---- */

typedef struct mx_auth_job {
	uv_work_t req;
	mx_auth *a;
	mx_auth_input in;
	mx_auth_cb *cb;
	void *ctx;
	mx_auth_result *res;
} mx_auth_job;

static bool psl_loaded;

static void job_work(uv_work_t *req)
{
	mx_auth_job *j = req->data;
	spf_out spf;
	dkim_out dk;
	dmarc_out dm;
	spf_check(j->a, &j->in, &spf);
	dkim_check(j->a, &j->in, &dk);
	dmarc_check(j->a, &j->in, &spf, &dk, psl_loaded, &dm);
	j->res = eng_calloc(1, sizeof *j->res);
	j->res->verdict = decide(&dm);
	j->res->header = build_header(j->a, &spf, &dk, &dm);
	j->res->reason = eng_strdup(reasons[j->res->verdict]);
}

static void job_done(uv_work_t *req, int status)
{
	mx_auth_job *j = req->data;
	(void)status; /* never cancelled: uv_cancel is not used */
	mx_auth_result *res = j->res;
	mx_auth_cb *cb = j->cb;
	void *ctx = j->ctx;
	free(j);
	cb(ctx, res);
}

int mx_auth_check(mx_auth *a, const mx_auth_input *in, mx_auth_cb *cb,
		  void *ctx)
{
	if (a == NULL || in == NULL || cb == NULL || in->client_ip == NULL ||
	    in->helo == NULL || in->mail_from == NULL ||
	    (in->message == NULL && in->len > 0))
		return ENG_EINVAL;
	mx_auth_job *j = eng_calloc(1, sizeof *j);
	j->a = a;
	j->in = *in;
	j->cb = cb;
	j->ctx = ctx;
	j->req.data = j;
	if (uv_queue_work(a->loop, &j->req, job_work, job_done) != 0) {
		free(j);
		return ENG_EIO;
	}
	return 0;
}

void mx_auth_result_free(mx_auth_result **r)
{
	if (r == NULL || *r == NULL)
		return;
	free((*r)->header);
	free((*r)->reason);
	free(*r);
	*r = NULL;
}

/* ---- Setup ---- */

static uv_once_t dmarc_once = UV_ONCE_INIT;

static void dmarc_init_once(void)
{
	OPENDMARC_LIB_T lib;
	memset(&lib, 0, sizeof lib);
	lib.tld_type = OPENDMARC_TLD_TYPE_NONE;
	opendmarc_policy_library_init(&lib);
	psl_loaded = opendmarc_tld_read_file((char *)(uintptr_t)PSL_PATH,
					     (char *)(uintptr_t)"//",
					     (char *)(uintptr_t)"*.",
					     (char *)(uintptr_t)"!") == 0;
	if (!psl_loaded)
		eng_log(ENG_LOG_WARN, "mx_auth: %s not loaded (package "
			"publicsuffix); organizational domains are the last "
			"two labels", PSL_PATH);
}

int mx_auth_new(uv_loop_t *loop, const mx_auth_config *cfg, mx_auth **a_r)
{
	if (loop == NULL || cfg == NULL || a_r == NULL)
		return ENG_EINVAL;
	uv_once(&dmarc_once, dmarc_init_once);
	mx_auth *a = eng_calloc(1, sizeof *a);
	a->loop = loop;
	a->authserv_id = eng_strdup(cfg->authserv_id && cfg->authserv_id[0]
					    ? cfg->authserv_id : "localhost");
	a->dns_timeout_ms = cfg->dns_timeout_ms ? cfg->dns_timeout_ms : 5000;
	a->dkim = dkim_init(NULL, NULL);
	if (a->dkim == NULL) {
		free(a->authserv_id);
		free(a);
		return ENG_EIO;
	}
	/* Replace the default resolver service (a res_state of its own) with
	 * ours: close it, and make closing ours a no-op. */
	dkim_dns_close(a->dkim);
	dkim_dns_set_close(a->dkim, dkim_q_close);
	dkim_dns_set_init(a->dkim, dkim_q_init);
	dkim_dns_set_query_service(a->dkim, a);
	dkim_dns_set_query_start(a->dkim, dkim_q_start);
	dkim_dns_set_query_waitreply(a->dkim, dkim_q_wait);
	dkim_dns_set_query_cancel(a->dkim, dkim_q_cancel);
	dkim_set_prescreen(a->dkim, dkim_prescreen);
	*a_r = a;
	return 0;
}

void mx_auth_free(mx_auth **a)
{
	if (a == NULL || *a == NULL)
		return;
	dkim_close((*a)->dkim);
	free((*a)->authserv_id);
	free(*a);
	*a = NULL;
}
