/*
 * One received message (mx_private.h): sender authentication on the
 * thread pool, then one DELIVER per recipient, then ONE reply.
 *
 * Rules:
 *  - 250 only when sqlited answered every DELIVER (it answers once the
 *    copy is durable); any failure is a 4xx/5xx for the whole message
 *    (RFC 5321 has one reply for DATA). A partial success is 451: the
 *    sender retries the whole message (see docs/mx.md, "Exactly once").
 *  - Each DELIVER carries IDEMPOTENCY_KEY "<queue id>:<recipient>" and is
 *    resent after a dropped sqlited connection (rpc_client retries): a
 *    copy stored just before the drop is not stored again.
 *  - The body is streamed from memory: the recipient's own header prefix
 *    (Received ... for <rcpt>, Authentication-Results) then the message,
 *    which is held once for every recipient.
 *  - Nothing of the message goes to the log; addresses do (as every MTA's
 *    log does), never a password.
 */
#include "mx_private.h"

#include "eng_error.h"
#include "rpc_codec.h"
#include "rpc_proto.h"

#include <sodium.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

/* sqlited's bound on IDEMPOTENCY_KEY (docs/rpc.md). */
#define MX_IDEM_KEY_MAX 128

typedef struct deliver_job deliver_job;

typedef struct deliver_part {
	deliver_job *job;
	size_t index;
	eng_buf prefix;              /* Received + Authentication-Results */
	size_t off;                  /* bytes of prefix + message sent */
	int err;
} deliver_part;

struct deliver_job {
	mxd *d;
	mx_envelope env;             /* pointers into the session (alive until cb) */
	mx_deliver_cb *cb;
	void *ctx;
	mx_auth_result *auth;
	deliver_part *parts;
	size_t pending;
};

/* ---- the reply ---- */

static void finish(deliver_job *j, const char *reply)
{
	mx_deliver_cb *cb = j->cb;
	void *ctx = j->ctx;

	for (size_t i = 0; j->parts != NULL && i < j->env.n_rcpts; i++)
		eng_buf_free(&j->parts[i].prefix);
	free(j->parts);
	mx_auth_result_free(&j->auth);
	free(j);
	cb(ctx, reply);
}

static bool err_permanent(int err)
{
	return err == ENG_ENOTFOUND || err == ENG_EINVAL || err == ENG_ELIMIT ||
	       err == ENG_EPERM || err == ENG_EMALFORMED;
}

/* Every DELIVER has answered: one reply for the message. */
static void conclude(deliver_job *j)
{
	size_t n = j->env.n_rcpts, ok = 0, perm = 0, nospc = 0, quota = 0;
	eng_buf b = ENG_BUF_INIT;

	for (size_t i = 0; i < n; i++) {
		int err = j->parts[i].err;

		if (err == 0)
			ok++;
		else if (err == ENG_ENOSPC)
			nospc++;
		else if (err == ENG_EQUOTA)
			quota++;
		else if (err_permanent(err))
			perm++;
	}
	if (ok == n) {
		eng_log(ENG_LOG_INFO, "mx: %s: delivered to %zu recipient%s",
			j->env.queue_id, n, n == 1 ? "" : "s");
		eng_buf_printf(&b, "250 2.0.0 Ok: queued as %s\r\n", j->env.queue_id);
	} else if (nospc > 0) {
		eng_buf_puts(&b, "452 4.3.1 Insufficient system storage, try again later\r\n");
	} else if (quota > 0 && quota + ok == n) {
		eng_buf_puts(&b, "452 4.2.2 Mailbox full, try again later\r\n");
	} else if (perm == n) {
		eng_buf_puts(&b, "554 5.1.1 Delivery failed: recipient no longer exists\r\n");
	} else {
		eng_buf_puts(&b, "451 4.3.0 Temporary failure, try again later\r\n");
	}
	if (ok != n)
		eng_log(ENG_LOG_WARN, "mx: %s: %zu of %zu deliveries failed (%zu "
			"temporary); answered %.3s", j->env.queue_id, n - ok, n,
			n - ok - perm, b.data);
	finish(j, b.data);
	eng_buf_free(&b);
}

/* ---- DELIVER ---- */

static long part_source(void *ctx, uint8_t *buf, size_t len)
{
	deliver_part *p = ctx;
	const mx_envelope *env = &p->job->env;
	size_t total = p->prefix.len + env->len, n = 0;

	while (n < len && p->off < total) {
		size_t k;

		if (p->off < p->prefix.len) {
			k = p->prefix.len - p->off;
			if (k > len - n)
				k = len - n;
			memcpy(buf + n, p->prefix.data + p->off, k);
		} else {
			size_t mo = p->off - p->prefix.len;

			k = env->len - mo;
			if (k > len - n)
				k = len - n;
			memcpy(buf + n, env->message + mo, k);
		}
		n += k;
		p->off += k;
	}
	return (long)n;
}

static int part_rewind(void *ctx)
{
	deliver_part *p = ctx;

	p->off = 0;
	return 0;
}

static void on_delivered(void *ctx, int err, const rpc_view *resp)
{
	deliver_part *p = ctx;
	deliver_job *j = p->job;

	(void)resp;
	p->err = err;
	if (err != 0)
		eng_log(ENG_LOG_WARN, "mx: %s: DELIVER to %s failed: %s",
			j->env.queue_id, j->env.rcpts[p->index], rpc_strerror(err));
	if (--j->pending == 0)
		conclude(j);
}

/* RFC 5321 4.4 time stamp line, with RFC 3848 / RFC 6531 protocol names. */
static void put_received(deliver_job *j, eng_buf *b, const char *rcpt)
{
	const mx_envelope *e = &j->env;
	const char *with = e->smtputf8 ? (e->tls ? "UTF8SMTPS" : "UTF8SMTP") :
			   !e->esmtp ? "SMTP" : e->tls ? "ESMTPS" : "ESMTP";
	char date[64];
	time_t now = time(NULL);
	struct tm tm;

	gmtime_r(&now, &tm);
	strftime(date, sizeof(date), "%a, %d %b %Y %H:%M:%S +0000", &tm);
	eng_buf_printf(b, "Received: from %s ([%s])\r\n", e->helo, e->client_ip);
	/* The cipher as a comment, as Postfix and Exim write it. */
	if (e->tls_info != NULL && e->tls_info[0] != '\0')
		eng_buf_printf(b, "\t(using %s)\r\n", e->tls_info);
	eng_buf_printf(b, "\tby %s (Sealmail) with %s id %s\r\n\tfor <%s>; %s\r\n",
		       j->d->cfg->hostname, with, e->queue_id, rcpt, date);
}

/* "<queue id>:<rcpt>", or the queue id and a hash when that is too long. */
static void idem_key(const deliver_job *j, const char *rcpt, eng_buf *out)
{
	eng_buf_printf(out, "%s:%s", j->env.queue_id, rcpt);
	if (out->len > MX_IDEM_KEY_MAX) {
		uint8_t h[32];
		char hex[65];

		crypto_generichash(h, sizeof(h), (const uint8_t *)rcpt, strlen(rcpt),
				   NULL, 0);
		sodium_bin2hex(hex, sizeof(hex), h, sizeof(h));
		eng_buf_reset(out);
		eng_buf_printf(out, "%s:#%s", j->env.queue_id, hex);
	}
}

static int send_one(deliver_job *j, deliver_part *p)
{
	const char *rcpt = j->env.rcpts[p->index];
	eng_buf pl = ENG_BUF_INIT, key = ENG_BUF_INIT;
	rpc_client_opts opts;
	int rc;

	put_received(j, &p->prefix, rcpt);
	if (j->auth != NULL && j->auth->header != NULL)
		eng_buf_puts(&p->prefix, j->auth->header);
	idem_key(j, rcpt, &key);
	rpc_put_str(&pl, RPC_T_ADDRESS, rcpt);
	rpc_put_u64(&pl, RPC_T_SIZE, p->prefix.len + j->env.len);
	rpc_put_str(&pl, RPC_T_SENDER, j->env.sender);
	rpc_put_bytes(&pl, RPC_T_IDEMPOTENCY_KEY, key.data, key.len);
	memset(&opts, 0, sizeof(opts));
	opts.timeout_ms = MX_DELIVER_TIMEOUT_MS;
	opts.has_body = true;
	opts.source = part_source;
	opts.rewind = part_rewind;
	opts.source_ctx = p;
	opts.retries = MX_DELIVER_RETRIES;
	rc = rpc_client_call_ex(j->d->rpc, RPC_OP_DELIVER, pl.data, pl.len, &opts,
				on_delivered, p, NULL);
	eng_buf_free(&pl);
	eng_buf_free(&key);
	return rc;
}

static void start_delivers(deliver_job *j)
{
	size_t n = j->env.n_rcpts;

	j->parts = eng_calloc(n, sizeof(*j->parts));
	/* One reference for this loop, so no answer concludes before it ends. */
	j->pending = 1;
	for (size_t i = 0; i < n; i++) {
		deliver_part *p = &j->parts[i];

		p->job = j;
		p->index = i;
		p->err = !rpc_client_connected(j->d->rpc) ? RPC_EUNAVAILABLE :
			 send_one(j, p);
		if (p->err == 0) {
			j->pending++;
			p->err = ENG_EIO;        /* until on_delivered says otherwise */
		} else {
			eng_log(ENG_LOG_WARN, "mx: %s: cannot send DELIVER: %s",
				j->env.queue_id, rpc_strerror(p->err));
		}
	}
	if (--j->pending == 0)
		conclude(j);
}

/* ---- sender authentication ---- */

static void on_auth(void *ctx, mx_auth_result *res)
{
	deliver_job *j = ctx;
	eng_buf b = ENG_BUF_INIT;

	j->auth = res;
	if (res->verdict == MX_AUTH_ACCEPT) {
		start_delivers(j);
		return;
	}
	eng_log(ENG_LOG_INFO, "mx: %s: refused by sender authentication (%s)",
		j->env.queue_id, res->verdict == MX_AUTH_REJECT ? "DMARC reject" :
		"temporary DNS error");
	if (res->verdict == MX_AUTH_REJECT)
		eng_buf_printf(&b, "550 5.7.1 %s\r\n", res->reason != NULL ? res->reason :
			       "Message rejected by the sender domain's DMARC policy");
	else
		eng_buf_printf(&b, "451 4.7.0 %s\r\n", res->reason != NULL ? res->reason :
			       "Temporary DNS failure checking the sender, try again later");
	finish(j, b.data);
	eng_buf_free(&b);
}

void mx_deliver(mxd *d, const mx_envelope *env, mx_deliver_cb *cb, void *ctx)
{
	deliver_job *j = eng_calloc(1, sizeof(*j));
	mx_auth_input in;
	int rc;

	j->d = d;
	j->env = *env;
	j->cb = cb;
	j->ctx = ctx;
	memset(&in, 0, sizeof(in));
	in.client_ip = env->client_ip;
	in.helo = env->helo;
	in.mail_from = env->sender;
	in.message = env->message;
	in.len = env->len;
	rc = mx_auth_check(d->auth, &in, on_auth, j);
	if (rc != 0) {
		eng_log(ENG_LOG_ERROR, "mx: %s: cannot start sender authentication: %s",
			env->queue_id, eng_strerror(rc));
		finish(j, "451 4.3.0 Temporary failure, try again later\r\n");
	}
}
