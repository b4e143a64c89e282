/*
 * One inbound SMTP session (RFC 5321 with PIPELINING, SIZE, 8BITMIME,
 * SMTPUTF8, ENHANCEDSTATUSCODES, STARTTLS, CHUNKING, DSN) as a client of
 * sqlited. docs/mx.md is the reference for replies and limits.
 *
 *   accept --connection rate ok--> 220 --EHLO/HELO--> ready
 *   ready --MAIL (sender rate ok)--> mail --RCPT (DIR_LOOKUP, rate)-->
 *   rcpt --DATA 354 / BDAT--> reading --end--> delivering (mx_deliver.c)
 *   --one reply--> ready (RSET, EHLO, STARTTLS also go back to ready)
 *
 * Rules:
 *  - Commands run one at a time. While one waits (rate limit, DIR_LOOKUP,
 *    delivery) the session is "busy": the connection holds its input and
 *    pipelined commands wait, so replies keep their order.
 *  - The parser (smtp_parser.h) consumes only what one event needs; only
 *    CRLF.CRLF ends DATA, and a message with a bare CR or LF is refused
 *    (550 5.6.0) and not delivered (SMTP smuggling).
 *  - STARTTLS: after "220 2.0.0", the parser is reset and net discards
 *    every plaintext byte that followed the command; the session forgets
 *    EHLO and the transaction (RFC 3207 4.2).
 *  - RCPT is checked at once (DIR_LOOKUP): sqlited refuses every
 *    non-local form with EINVAL (relay denied); source routes, quoted
 *    local parts, address literals, '%' and '!' are refused here first.
 *  - The message is held in memory (sender authentication needs it whole
 *    before the headers are prepended), bounded per message by
 *    max_message_bytes and per process by mx_max_buffered_mib.
 *  - Every 4xx/5xx reply to a command counts as an error; at mx_max_errors
 *    the session ends with 421. So do too many commands outside a mail
 *    transaction.
 *
 * Lifetime: one reference for the connection and one per outstanding
 * request (rate limit, DIR_LOOKUP, delivery); freed with the last.
 */
#include "mx_private.h"

#include "eng_error.h"
#include "rpc_codec.h"
#include "rpc_proto.h"

#include <ctype.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

enum mx_reading {
	READ_NONE = 0,
	READ_DATA,
	READ_BDAT,
};

struct mx_session {
	mxd *d;
	mx_session *prev, *next;
	sm_net_conn *c;              /* NULL once the connection is gone */
	unsigned refs;
	smtp_parser *parser;
	bool greeted;
	bool busy;                   /* a command waits for an answer */
	bool tls_started;            /* input after STARTTLS must not be parsed */
	bool delivering;
	char *helo;                  /* NULL before EHLO/HELO */
	bool esmtp;
	uint64_t errors;
	uint64_t idle_commands;      /* outside a mail transaction */
	/* the mail transaction */
	bool in_mail;
	char *sender;                /* "" for <> */
	bool smtputf8;
	smtp_ret ret;                /* DSN parameters, kept for the outbound */
	char *envid;                 /* queue (docs/mx.md) */
	char **rcpts;
	unsigned *notify;
	size_t n_rcpts;
	char *pending_rcpt;          /* while its DIR_LOOKUP runs */
	unsigned pending_notify;
	unsigned postmaster_try;     /* RCPT TO:<Postmaster>: candidates tried */
	char queue_id[MX_QUEUE_ID_CHARS + 1];
	char tls_info[160];          /* for the Received header */
	/* the message */
	enum mx_reading reading;
	bool used_bdat;
	bool bdat_last;
	const char *bdat_refusal;    /* reply for a refused chunk, or NULL */
	bool msg_over_budget;
	bool msg_too_big;
	eng_buf msg;
};

/* ---- replies, errors and lifetime ---- */

static void write_text(mx_session *s, const char *text)
{
	if (s->c != NULL)
		sm_net_write(s->c, text, strlen(text));
}

/* Sends a reply; a 4xx/5xx counts as an error, and too many end the session. */
static void reply(mx_session *s, const char *text)
{
	write_text(s, text);
	if (text[0] != '4' && text[0] != '5')
		return;
	if (++s->errors >= s->d->cfg->mx_max_errors && s->c != NULL &&
	    !sm_net_closing(s->c)) {
		eng_log(ENG_LOG_INFO, "mx: %s: too many errors, closing",
			sm_net_peer_addr(s->c));
		write_text(s, "421 4.7.0 Too many errors, closing connection\r\n");
		sm_net_close(s->c);
	}
}

static void replyf(mx_session *s, const char *fmt, ...)
	__attribute__((format(printf, 2, 3)));
static void replyf(mx_session *s, const char *fmt, ...)
{
	eng_buf b = ENG_BUF_INIT;
	va_list ap;

	va_start(ap, fmt);
	eng_buf_vprintf(&b, fmt, ap);
	va_end(ap);
	reply(s, b.data);
	eng_buf_free(&b);
}

static void msg_release(mx_session *s)
{
	s->d->buffered -= s->msg.len;
	eng_buf_free(&s->msg);
	s->msg_over_budget = false;
	s->msg_too_big = false;
}

/* Forgets the mail transaction (RSET, EHLO, STARTTLS, after a message). */
static void tx_reset(mx_session *s)
{
	for (size_t i = 0; i < s->n_rcpts; i++)
		free(s->rcpts[i]);
	free(s->rcpts);
	free(s->notify);
	s->rcpts = NULL;
	s->notify = NULL;
	s->n_rcpts = 0;
	free(s->sender);
	free(s->envid);
	s->sender = s->envid = NULL;
	s->in_mail = false;
	s->smtputf8 = false;
	s->ret = SMTP_RET_NONE;
	s->used_bdat = false;
	s->bdat_refusal = NULL;
	s->queue_id[0] = '\0';
	msg_release(s);
}

static void session_free(mx_session *s)
{
	mxd *d = s->d;

	if (s->prev != NULL)
		s->prev->next = s->next;
	else
		d->sessions = s->next;
	if (s->next != NULL)
		s->next->prev = s->prev;
	d->n_sessions--;
	tx_reset(s);
	smtp_parser_free(&s->parser);
	free(s->helo);
	free(s->pending_rcpt);
	free(s);
	if (d->stopping && d->n_sessions == 0)
		mxd_sessions_gone(d);
}

static void unref(mx_session *s)
{
	if (--s->refs == 0)
		session_free(s);
}

/* A command finished: the next is parsed (from a later loop turn). */
static void done(mx_session *s)
{
	s->busy = false;
	if (s->c == NULL)
		return;
	if (s->d->stopping && !sm_net_closing(s->c)) {
		write_text(s, "421 4.3.2 Server shutting down\r\n");
		sm_net_close(s->c);
		return;
	}
	sm_net_resume(s->c);
}

/* The session waits for a callback that holds a reference. */
static void wait_for(mx_session *s)
{
	s->busy = true;
	s->refs++;
}

static bool gone(mx_session *s)
{
	return s->c == NULL || sm_net_closing(s->c);
}

/* ---- EHLO, HELO and the simple commands ---- */

static void set_helo(mx_session *s, const smtp_command *cmd, bool esmtp)
{
	free(s->helo);
	s->helo = eng_strndup(cmd->arg, cmd->arg_len);
	/* It goes into a Received header: printable ASCII only. */
	for (char *p = s->helo; *p != '\0'; p++)
		if ((unsigned char)*p < 0x21 || (unsigned char)*p > 0x7e)
			*p = '?';
	s->esmtp = esmtp;
	tx_reset(s);
}

static void cmd_ehlo(mx_session *s, const smtp_command *cmd)
{
	eng_buf b = ENG_BUF_INIT;

	set_helo(s, cmd, true);
	eng_buf_printf(&b, "250-%s\r\n250-PIPELINING\r\n250-SIZE %llu\r\n"
		       "250-8BITMIME\r\n250-SMTPUTF8\r\n250-ENHANCEDSTATUSCODES\r\n",
		       s->d->cfg->hostname,
		       (unsigned long long)s->d->cfg->max_message_bytes);
	if (sm_net_can_starttls(s->c))
		eng_buf_puts(&b, "250-STARTTLS\r\n");
	eng_buf_puts(&b, "250-CHUNKING\r\n250 DSN\r\n");
	write_text(s, b.data);
	eng_buf_free(&b);
}

static void cmd_helo(mx_session *s, const smtp_command *cmd)
{
	set_helo(s, cmd, false);
	replyf(s, "250 %s\r\n", s->d->cfg->hostname);
}

static void cmd_rset(mx_session *s, const smtp_command *cmd)
{
	(void)cmd;
	tx_reset(s);
	reply(s, "250 2.0.0 Ok\r\n");
}

static void cmd_noop(mx_session *s, const smtp_command *cmd)
{
	(void)cmd;
	reply(s, "250 2.0.0 Ok\r\n");
}

static void cmd_quit(mx_session *s, const smtp_command *cmd)
{
	(void)cmd;
	write_text(s, "221 2.0.0 Bye\r\n");
	sm_net_close(s->c);
}

static void cmd_vrfy(mx_session *s, const smtp_command *cmd)
{
	(void)cmd;
	reply(s, "252 2.5.0 Cannot VRFY user, but will accept message and attempt "
	      "delivery\r\n");
}

static void cmd_expn(mx_session *s, const smtp_command *cmd)
{
	(void)cmd;
	reply(s, "502 5.5.1 EXPN not available\r\n");
}

static void cmd_help(mx_session *s, const smtp_command *cmd)
{
	(void)cmd;
	reply(s, "214 2.0.0 Sealmail MX: see RFC 5321\r\n");
}

static void cmd_auth(mx_session *s, const smtp_command *cmd)
{
	(void)cmd;
	reply(s, "502 5.5.1 AUTH is not available on the MX port; use submission\r\n");
}

static void cmd_unknown(mx_session *s, const smtp_command *cmd)
{
	(void)cmd;
	reply(s, "500 5.5.1 Command unrecognized\r\n");
}

static void cmd_starttls(mx_session *s, const smtp_command *cmd)
{
	(void)cmd;
	if (sm_net_is_tls(s->c)) {
		reply(s, "503 5.5.1 TLS already active\r\n");
		return;
	}
	if (!sm_net_can_starttls(s->c)) {
		reply(s, "454 4.7.0 TLS not available\r\n");
		return;
	}
	write_text(s, "220 2.0.0 Ready to start TLS\r\n");
	/* What the client pipelined after STARTTLS is dropped, never run. */
	smtp_parser_reset(s->parser);
	sm_net_starttls(s->c);
	s->tls_started = true;
	free(s->helo);
	s->helo = NULL;
	s->esmtp = false;
	tx_reset(s);
}

/* ---- MAIL ---- */

static void on_mail_rate(void *ctx, bool allowed)
{
	mx_session *s = ctx;

	if (!gone(s)) {
		if (allowed) {
			s->in_mail = true;
			s->idle_commands = 0;
			mxd_queue_id(s->d, s->queue_id);
			reply(s, "250 2.1.0 Ok\r\n");
		} else {
			eng_log(ENG_LOG_INFO, "mx: %s: sender domain over its daily "
				"message limit", sm_net_peer_addr(s->c));
			tx_reset(s);
			reply(s, "451 4.7.1 Too many messages from this sender domain, "
			      "try again later\r\n");
		}
	}
	done(s);
	unref(s);
}

static void cmd_mail(mx_session *s, const smtp_command *cmd)
{
	const smtp_path *p = &cmd->path;
	const char *domain;

	if (s->helo == NULL) {
		reply(s, "503 5.5.1 Send EHLO or HELO first\r\n");
		return;
	}
	if (s->in_mail) {
		reply(s, "503 5.5.1 Nested MAIL command\r\n");
		return;
	}
	if (!s->esmtp && cmd->nparams > 0) {
		reply(s, "555 5.5.4 MAIL parameters need EHLO\r\n");
		return;
	}
	if (cmd->has_size && cmd->size > s->d->cfg->max_message_bytes) {
		reply(s, "552 5.3.4 Message size exceeds fixed maximum message size\r\n");
		return;
	}
	if (cmd->body == SMTP_BODY_BINARYMIME) {
		reply(s, "555 5.5.4 BODY=BINARYMIME is not supported\r\n");
		return;
	}
	if (p->utf8 && !cmd->smtputf8) {
		reply(s, "553 5.6.7 Non-ASCII address needs SMTPUTF8\r\n");
		return;
	}
	s->sender = p->null_path ? eng_strdup("") :
		    eng_strndup(p->mailbox, p->mailbox_len);
	s->smtputf8 = cmd->smtputf8;
	s->ret = cmd->ret;
	s->envid = cmd->envid != NULL ? eng_strndup(cmd->envid, cmd->envid_len) : NULL;
	domain = p->null_path || p->domain_len == 0 ? s->helo : p->domain;
	wait_for(s);
	mx_rate_hit(s->d, MX_RATE_MSG_DOMAIN, domain,
		    s->d->cfg->mx_rate_msgs_per_domain_day, on_mail_rate, s);
}

/* ---- RCPT ---- */

static void add_rcpt(mx_session *s)
{
	for (size_t i = 0; i < s->n_rcpts; i++)
		if (strcasecmp(s->rcpts[i], s->pending_rcpt) == 0) {
			/* The same recipient twice gets one copy. */
			free(s->pending_rcpt);
			s->pending_rcpt = NULL;
			return;
		}
	s->rcpts = realloc(s->rcpts, (s->n_rcpts + 1) * sizeof(*s->rcpts));
	s->notify = realloc(s->notify, (s->n_rcpts + 1) * sizeof(*s->notify));
	if (s->rcpts == NULL || s->notify == NULL)
		eng_oom((s->n_rcpts + 1) * sizeof(*s->rcpts));
	s->rcpts[s->n_rcpts] = s->pending_rcpt;
	s->notify[s->n_rcpts] = s->pending_notify;
	s->n_rcpts++;
	s->pending_rcpt = NULL;
}

static void on_rcpt_rate(void *ctx, bool allowed)
{
	mx_session *s = ctx;

	if (!gone(s) && s->in_mail) {
		if (allowed) {
			add_rcpt(s);
			reply(s, "250 2.1.5 Ok\r\n");
		} else {
			reply(s, "451 4.7.1 Too many recipients from this sender, try "
			      "again later\r\n");
		}
	}
	free(s->pending_rcpt);
	s->pending_rcpt = NULL;
	done(s);
	unref(s);
}

static void on_lookup(void *ctx, int err, const rpc_view *resp);

/* Sends DIR_LOOKUP for pending_rcpt; 0 or an RPC error (nothing sent). */
static int send_lookup(mx_session *s)
{
	eng_buf pl = ENG_BUF_INIT;
	int rc;

	rpc_put_str(&pl, RPC_T_ADDRESS, s->pending_rcpt);
	rc = !rpc_client_connected(s->d->rpc) ? RPC_EUNAVAILABLE :
	     rpc_client_call(s->d->rpc, RPC_OP_DIR_LOOKUP, pl.data, pl.len, 0,
			     on_lookup, s, NULL);
	eng_buf_free(&pl);
	if (rc != 0)
		eng_log(ENG_LOG_WARN, "mx: cannot send DIR_LOOKUP: %s", rpc_strerror(rc));
	return rc;
}

/*
 * RCPT TO:<Postmaster> (RFC 5321 4.5.1, no domain) goes to the first of
 * postmaster@<hostname> and postmaster@<hostname without its first label>
 * (when that still has a dot) that DIR_LOOKUP accepts, as Postfix's
 * $myhostname and $mydomain: the operator's choice, not an accident of
 * which domain was added first. The i-th candidate domain, or NULL.
 */
static const char *postmaster_domain(const mx_session *s, unsigned i)
{
	const char *h = s->d->cfg->hostname;
	const char *dot = h != NULL ? strchr(h, '.') : NULL;

	if (i == 0)
		return h;
	if (i == 1 && dot != NULL && strchr(dot + 1, '.') != NULL)
		return dot + 1;
	return NULL;
}

/* Looks up the next Postmaster candidate: 0, ENG_ENOTFOUND when none
 * is left, or an RPC error. */
static int postmaster_next(mx_session *s)
{
	const char *dom = postmaster_domain(s, s->postmaster_try);
	eng_buf a = ENG_BUF_INIT;

	if (dom == NULL)
		return ENG_ENOTFOUND;
	s->postmaster_try++;
	eng_buf_printf(&a, "postmaster@%s", dom);
	free(s->pending_rcpt);
	s->pending_rcpt = eng_strndup((const char *)a.data, a.len);
	eng_buf_free(&a);
	return send_lookup(s);
}

/* No candidate took <Postmaster>: refused, and the operator is told how
 * to fix it (RFC 5321 says this address MUST work). */
static void postmaster_missing(mx_session *s)
{
	const char *second = postmaster_domain(s, 1);

	eng_log(ENG_LOG_WARN, "mx: %s: RCPT TO:<Postmaster> refused: no alias "
		"postmaster@%s%s%s; create one (RFC 5321 4.5.1 requires it)",
		sm_net_peer_addr(s->c), s->d->cfg->hostname != NULL ?
		s->d->cfg->hostname : "(no hostname)",
		second != NULL ? " or postmaster@" : "", second != NULL ? second : "");
	reply(s, "550 5.1.1 Postmaster unknown\r\n");
}

static void on_lookup(void *ctx, int err, const rpc_view *resp)
{
	mx_session *s = ctx;
	uint64_t exists = 0;

	if (gone(s)) {
		done(s);
		unref(s);
		return;
	}
	if (err == 0 && rpc_get_u64(resp, RPC_T_EXISTS, &exists) != 0)
		err = ENG_EIO;
	if (s->postmaster_try > 0 && (err == ENG_EINVAL || (err == 0 && exists == 0))) {
		/* Not served, or nobody there: the next candidate (the
		 * reference passes to its request). */
		err = postmaster_next(s);
		if (err == 0)
			return;
		if (err == ENG_ENOTFOUND) {
			postmaster_missing(s);
			err = 0;
		}
		if (err != 0)
			reply(s, "451 4.3.0 Temporary lookup failure, try again later\r\n");
	} else if (err == ENG_EINVAL) {
		eng_log(ENG_LOG_INFO, "mx: %s: relay denied for <%s>",
			sm_net_peer_addr(s->c), s->pending_rcpt);
		reply(s, "550 5.7.1 Relay access denied\r\n");
	} else if (err != 0) {
		eng_log(ENG_LOG_WARN, "mx: DIR_LOOKUP failed: %s", rpc_strerror(err));
		reply(s, "451 4.3.0 Temporary lookup failure, try again later\r\n");
	} else if (exists == 0) {
		reply(s, "550 5.1.1 User unknown\r\n");
	} else {
		/* The reference passes to the rate-limit request. */
		mx_rate_hit(s->d, MX_RATE_RCPT_SENDER,
			    s->sender[0] != '\0' ? s->sender : s->helo,
			    s->d->cfg->mx_rate_rcpts_per_sender_hour, on_rcpt_rate, s);
		return;
	}
	free(s->pending_rcpt);
	s->pending_rcpt = NULL;
	done(s);
	unref(s);
}

/* Forms refused without asking the directory (which refuses them too). */
static bool rcpt_is_nonlocal(const smtp_path *p)
{
	return p->route_len > 0 || p->quoted_local || p->domain_literal ||
	       p->domain_len == 0 || memchr(p->local, '%', p->local_len) != NULL ||
	       memchr(p->local, '!', p->local_len) != NULL ||
	       p->domain[p->domain_len - 1] == '.';
}

/* RCPT TO:<Postmaster>: the parser gives it (and only it) no domain. */
static bool rcpt_is_postmaster(const smtp_path *p)
{
	return p->domain_len == 0 && p->route_len == 0 && !p->quoted_local &&
	       p->local_len == 10 && strncasecmp(p->local, "postmaster", 10) == 0;
}

static void cmd_rcpt(mx_session *s, const smtp_command *cmd)
{
	const smtp_path *p = &cmd->path;
	int rc;

	if (!s->in_mail) {
		reply(s, "503 5.5.1 Need MAIL before RCPT\r\n");
		return;
	}
	if (s->n_rcpts >= s->d->cfg->mx_max_recipients) {
		reply(s, "452 4.5.3 Too many recipients\r\n");
		return;
	}
	if (p->utf8 && !s->smtputf8) {
		reply(s, "553 5.6.7 Non-ASCII address needs SMTPUTF8\r\n");
		return;
	}
	s->pending_notify = cmd->notify;
	s->postmaster_try = 0;
	if (rcpt_is_postmaster(p)) {
		rc = postmaster_next(s);
	} else if (rcpt_is_nonlocal(p)) {
		eng_log(ENG_LOG_INFO, "mx: %s: relay denied (non-local form)",
			sm_net_peer_addr(s->c));
		reply(s, "550 5.7.1 Relay access denied\r\n");
		return;
	} else {
		free(s->pending_rcpt);
		s->pending_rcpt = eng_strndup(p->mailbox, p->mailbox_len);
		rc = send_lookup(s);
	}
	if (rc == ENG_ENOTFOUND) {          /* no hostname to route <Postmaster> */
		postmaster_missing(s);
		return;
	}
	if (rc != 0) {
		free(s->pending_rcpt);
		s->pending_rcpt = NULL;
		reply(s, "451 4.3.0 Temporary lookup failure, try again later\r\n");
		return;
	}
	wait_for(s);
}

/* ---- DATA, BDAT and delivery ---- */

static void on_delivered(void *ctx, const char *text)
{
	mx_session *s = ctx;

	s->delivering = false;
	if (!gone(s))
		reply(s, text);
	tx_reset(s);
	done(s);
	unref(s);
}

static void deliver(mx_session *s)
{
	mx_envelope env;

	memset(&env, 0, sizeof(env));
	env.queue_id = s->queue_id;
	env.client_ip = sm_net_peer_addr(s->c);
	env.helo = s->helo;
	env.sender = s->sender;
	env.rcpts = s->rcpts;
	env.n_rcpts = s->n_rcpts;
	env.esmtp = s->esmtp;
	env.tls = sm_net_is_tls(s->c);
	env.tls_info = sm_net_tls_describe(s->c, s->tls_info,
					    sizeof(s->tls_info));
	env.smtputf8 = s->smtputf8;
	env.message = (const uint8_t *)s->msg.data;
	env.len = s->msg.len;
	eng_log(ENG_LOG_INFO, "mx: %s: from=<%s> client=%s size=%zu rcpts=%zu",
		s->queue_id, s->sender, env.client_ip, s->msg.len, s->n_rcpts);
	s->delivering = true;
	wait_for(s);
	mx_deliver(s->d, &env, on_delivered, s);
}

/* Keeps message bytes, within the message's and the process's bounds. */
static void msg_append(mx_session *s, const uint8_t *p, size_t len)
{
	mxd *d = s->d;

	if (s->msg_over_budget || s->msg_too_big || s->bdat_refusal != NULL)
		return;
	if (s->msg.len + len > d->cfg->max_message_bytes) {
		msg_release(s);
		s->msg_too_big = true;
		return;
	}
	if (d->buffered + len > d->max_buffered) {
		eng_log(ENG_LOG_WARN, "mx: %s: mx_max_buffered_mib reached, message "
			"refused for now", s->queue_id);
		msg_release(s);
		s->msg_over_budget = true;
		return;
	}
	eng_buf_append(&s->msg, p, len);
	d->buffered += len;
}

static void cmd_data(mx_session *s, const smtp_command *cmd)
{
	(void)cmd;
	if (!s->in_mail) {
		reply(s, "503 5.5.1 Need MAIL command\r\n");
		return;
	}
	if (s->n_rcpts == 0) {
		reply(s, "554 5.5.1 No valid recipients\r\n");
		return;
	}
	if (s->used_bdat) {
		reply(s, "503 5.5.1 DATA after BDAT\r\n");
		return;
	}
	write_text(s, "354 End data with <CR><LF>.<CR><LF>\r\n");
	smtp_parser_begin_data(s->parser);
	s->reading = READ_DATA;
}

static void data_end(mx_session *s, const smtp_event *ev)
{
	int code;
	const char *status, *text;

	s->reading = READ_NONE;
	if (smtp_data_err_reply(ev->data_err, &code, &status, &text)) {
		eng_log(ENG_LOG_INFO, "mx: %s: message refused (%s)", s->queue_id, text);
		tx_reset(s);
		replyf(s, "%d %s %s\r\n", code, status, text);
		return;
	}
	if (s->msg_too_big) {
		tx_reset(s);
		reply(s, "552 5.3.4 Message size exceeds fixed maximum message size\r\n");
		return;
	}
	if (s->msg_over_budget) {
		tx_reset(s);
		reply(s, "452 4.3.1 Insufficient system storage, try again later\r\n");
		return;
	}
	deliver(s);
}

static void cmd_bdat(mx_session *s, const smtp_command *cmd)
{
	/* The chunk is read whatever the answer (RFC 3030 2.). */
	smtp_parser_begin_bdat(s->parser, cmd->bdat_size);
	s->reading = READ_BDAT;
	s->bdat_last = cmd->bdat_last;
	if (s->bdat_refusal != NULL)
		return;
	if (!s->in_mail)
		s->bdat_refusal = "503 5.5.1 Need MAIL command\r\n";
	else if (s->n_rcpts == 0)
		s->bdat_refusal = "554 5.5.1 No valid recipients\r\n";
	else if (s->msg.len + cmd->bdat_size > s->d->cfg->max_message_bytes)
		s->msg_too_big = true;
	s->used_bdat = true;
}

static void bdat_end(mx_session *s)
{
	const char *refusal = s->bdat_refusal;

	s->reading = READ_NONE;
	if (refusal == NULL && s->msg_too_big)
		refusal = "552 5.3.4 Message size exceeds fixed maximum message size\r\n";
	if (refusal == NULL && s->msg_over_budget)
		refusal = "452 4.3.1 Insufficient system storage, try again later\r\n";
	if (refusal != NULL) {
		/* Every later chunk of this message is refused as well, up to LAST. */
		if (s->bdat_last || !s->in_mail)
			tx_reset(s);
		else
			s->bdat_refusal = refusal;
		reply(s, refusal);
		return;
	}
	if (!s->bdat_last) {
		replyf(s, "250 2.0.0 %zu octets received\r\n", s->msg.len);
		return;
	}
	deliver(s);
}

/* ---- dispatch ---- */

typedef void mx_cmd_fn(mx_session *s, const smtp_command *cmd);

static mx_cmd_fn *const mx_commands[SMTP_VERB_COUNT] = {
	[SMTP_UNKNOWN] = cmd_unknown,
	[SMTP_HELO] = cmd_helo,
	[SMTP_EHLO] = cmd_ehlo,
	[SMTP_MAIL] = cmd_mail,
	[SMTP_RCPT] = cmd_rcpt,
	[SMTP_DATA] = cmd_data,
	[SMTP_BDAT] = cmd_bdat,
	[SMTP_RSET] = cmd_rset,
	[SMTP_NOOP] = cmd_noop,
	[SMTP_QUIT] = cmd_quit,
	[SMTP_VRFY] = cmd_vrfy,
	[SMTP_EXPN] = cmd_expn,
	[SMTP_HELP] = cmd_help,
	[SMTP_STARTTLS] = cmd_starttls,
	[SMTP_AUTH] = cmd_auth,
};

/* Counts commands outside a mail transaction; false when over the limit. */
static bool count_idle(mx_session *s, smtp_verb verb)
{
	if (s->in_mail || verb == SMTP_MAIL || verb == SMTP_QUIT)
		return true;
	if (++s->idle_commands <= s->d->cfg->mx_max_commands_before_mail)
		return true;
	eng_log(ENG_LOG_INFO, "mx: %s: too many commands without mail, closing",
		sm_net_peer_addr(s->c));
	write_text(s, "421 4.7.0 Too many commands without a mail transaction, "
		   "closing connection\r\n");
	sm_net_close(s->c);
	return false;
}

static void handle(mx_session *s, const smtp_event *ev)
{
	switch (ev->type) {
	case SMTP_EV_COMMAND:
		if (count_idle(s, ev->cmd.verb) && ev->cmd.verb < SMTP_VERB_COUNT)
			mx_commands[ev->cmd.verb](s, &ev->cmd);
		break;
	case SMTP_EV_ERROR:
		if (count_idle(s, ev->cmd.verb))
			replyf(s, "%d %s %s\r\n", ev->reply_code, ev->reply_status,
			       ev->reply_text);
		break;
	case SMTP_EV_DATA:
		if (ev->data_err & SMTP_DATA_TOO_BIG) {
			msg_release(s);
			s->msg_too_big = true;
		} else if (ev->data_err == 0) {
			msg_append(s, ev->data, ev->len);
		}
		break;
	case SMTP_EV_DATA_END:
		data_end(s, ev);
		break;
	case SMTP_EV_BDAT:
		msg_append(s, ev->data, ev->len);
		break;
	case SMTP_EV_BDAT_END:
		bdat_end(s);
		break;
	default:
		break;
	}
}

/* ---- net callbacks ---- */

static void on_conn_rate(void *ctx, bool allowed)
{
	mx_session *s = ctx;

	if (!gone(s)) {
		s->greeted = true;
		if (allowed) {
			replyf(s, "220 %s ESMTP Sealmail\r\n", s->d->cfg->hostname);
		} else {
			eng_log(ENG_LOG_INFO, "mx: %s: over the connection rate limit",
				sm_net_peer_addr(s->c));
			write_text(s, "421 4.7.0 Too many connections, try again later\r\n");
			sm_net_close(s->c);
		}
	}
	done(s);
	unref(s);
}

static void on_accept(sm_net_conn *c, void *lctx)
{
	mxd *d = lctx;
	mx_session *s;
	smtp_limits lim;

	if (d->stopping) {
		sm_net_abort(c);
		return;
	}
	smtp_limits_default(&lim);
	lim.line_max = d->cfg->mx_max_line_bytes;
	lim.data_line_max = d->cfg->mx_max_line_bytes;
	lim.message_max = d->cfg->max_message_bytes;
	s = eng_calloc(1, sizeof(*s));
	s->d = d;
	s->c = c;
	s->refs = 1;
	s->parser = smtp_parser_new(&lim);
	s->next = d->sessions;
	if (d->sessions != NULL)
		d->sessions->prev = s;
	d->sessions = s;
	d->n_sessions++;
	sm_net_set_ctx(c, s);
	wait_for(s);
	sm_net_hold(c);
	mx_rate_hit(d, MX_RATE_CONN_IP, sm_net_peer_addr(c),
		    d->cfg->mx_rate_conns_per_ip_minute, on_conn_rate, s);
}

static size_t on_data(sm_net_conn *c, void *ctx, const uint8_t *p, size_t len)
{
	mx_session *s = ctx;
	size_t off = 0;

	if (s == NULL)
		return len;
	while (!s->busy && !sm_net_closing(c)) {
		smtp_event ev;
		size_t n = smtp_parser_feed(s->parser, p + off, len - off, &ev);

		off += n;
		if (ev.type == SMTP_EV_NEED_MORE)
			break;
		handle(s, &ev);
		if (s->tls_started) {
			/* net discards everything after the STARTTLS line. */
			s->tls_started = false;
			return off;
		}
	}
	if (s->busy)
		sm_net_hold(c);
	return off;
}

static void on_close(sm_net_conn *c, void *ctx, enum sm_net_reason why)
{
	mx_session *s = ctx;

	(void)c;
	(void)why;
	if (s == NULL)
		return;
	s->c = NULL;
	/* A delivery in progress finishes (the client will not see its reply). */
	unref(s);
}

const sm_net_callbacks mx_net_callbacks = {
	.on_accept = on_accept,
	.on_data = on_data,
	.on_close = on_close,
};

void mx_sessions_shutdown(mxd *d)
{
	for (mx_session *s = d->sessions; s != NULL; s = s->next) {
		if (gone(s) || s->busy)
			continue;        /* done() says goodbye when it finishes */
		write_text(s, "421 4.3.2 Server shutting down\r\n");
		sm_net_close(s->c);
	}
}
