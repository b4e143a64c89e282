/*
 * One POP3 session (RFC 1939, 2449, 2595, 5034) as a client of sqlited.
 *
 * States (RFC 1939 3.):
 *
 *   AUTHORIZATION --USER/PASS or AUTH PLAIN: UNLOCK, [IN-USE] lock,
 *        |          MAILBOX_STATUS + FETCH_META of INBOX--> TRANSACTION
 *        +--QUIT--> closed                                      |
 *                                           QUIT: STORE \Deleted and
 *                           UPDATE <---------------- UID EXPUNGE of exactly
 *                             |                      the marked UIDs, LOCK
 *                             +--> "+OK", closed
 *
 * A dropped connection in TRANSACTION deletes nothing: the session is
 * LOCKed and the [IN-USE] lock released. The maildrop (sequence numbers,
 * sizes, UIDs) is fixed at login; UIDL is "<UIDVALIDITY>.<UID>", stable
 * and never reused by the store.
 *
 * Commands run one at a time: while one waits for sqlited the session is
 * "busy", the connection holds its input (pipelined commands wait in the
 * net layer's bounded buffer) and the next command is parsed when the
 * answer is written. RETR/TOP stream FETCH_BODY's chunks through the
 * dot-stuffing encoder; when the client's output queue is over its bound
 * the chunks are HELD (no credit to sqlited) until it drains.
 *
 * Lifetime: a session has a reference for its connection and one per
 * outstanding RPC or lock request; it is freed when the last goes. Client
 * answers are fixed sentences; details (alias, error codes) go to the log,
 * never the password.
 */
#include "pop3_private.h"

#include "eng_error.h"
#include "pop3_parser.h"
#include "rpc_codec.h"
#include "rpc_proto.h"

#include <ctype.h>
#include <sodium.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

enum pop3_state {
	ST_AUTH = 1u << 0,
	ST_TRANS = 1u << 1,
	ST_UPDATE = 1u << 2,
	ST_ANY = ST_AUTH | ST_TRANS,
};

#define POP3_MAX_BAD_COMMANDS 10
#define POP3_MAX_AUTH_FAILURES 3
#define POP3_INBOX "INBOX"
/* An abort code for TOP's data callback once its lines are out. */
#define POP3_FETCH_ENOUGH (-1000)

#define ERR_TEMP "-ERR [SYS/TEMP] Temporary server failure, try again later\r\n"
#define ERR_AUTH "-ERR [AUTH] Authentication failed\r\n"
#define ERR_PLAIN "-ERR [AUTH] Plaintext authentication disallowed on non-secure " \
	"connections; use STLS\r\n"

typedef struct pop3_msg {
	uint32_t uid;
	uint64_t size;
	bool deleted;
} pop3_msg;

struct pop3_session {
	pop3d *d;
	pop3_session *prev, *next;
	sm_net_conn *c;              /* NULL once the connection is gone */
	unsigned refs;
	unsigned state;              /* enum pop3_state */
	pop3_parser *parser;
	bool busy;                   /* a command waits for sqlited */
	bool stls_done;              /* input after STLS must not be parsed */
	bool sasl_wait;              /* AUTH PLAIN waits for its response line */
	unsigned bad_commands;
	unsigned auth_failures;
	char *user;                  /* from USER */
	char *alias;                 /* logged-in alias (for the log) */
	uint8_t *handle;             /* sqlited session handle, sodium_malloc'd */
	size_t handle_len;
	char lock_id[POP3_LOCK_ID_CHARS + 1];
	bool lock_pending;
	bool lock_held;
	uint32_t uidvalidity;
	pop3_msg *msgs;
	uint32_t n_msgs;
	uint32_t n_deleted;
	/* RETR / TOP in progress */
	bool fetching;
	bool fetch_started;
	bool fetch_top;
	uint32_t fetch_id;
	size_t held_bytes;
	pop3_dotstuff ds;
	uint8_t *enc;
	size_t enc_cap;
};

typedef void pop3_cmd_fn(pop3_session *s, const pop3_command *cmd);

typedef struct pop3_cmd_def {
	pop3_verb verb;
	pop3_cmd_fn *fn;
	unsigned states;
} pop3_cmd_def;

/* ---- replies and lifetime ---- */

static void reply(pop3_session *s, const char *text)
{
	if (s->c != NULL)
		sm_net_write(s->c, text, strlen(text));
}

static void replyf(pop3_session *s, const char *fmt, ...)
	__attribute__((format(printf, 2, 3)));
static void replyf(pop3_session *s, const char *fmt, ...)
{
	eng_buf b = ENG_BUF_INIT;
	va_list ap;

	va_start(ap, fmt);
	eng_buf_vprintf(&b, fmt, ap);
	va_end(ap);
	if (s->c != NULL)
		sm_net_write(s->c, b.data, b.len);
	eng_buf_free(&b);
}

static void session_free(pop3_session *s)
{
	pop3d *d = s->d;

	if (s->prev != NULL)
		s->prev->next = s->next;
	else
		d->sessions = s->next;
	if (s->next != NULL)
		s->next->prev = s->prev;
	d->n_sessions--;
	pop3_parser_free(&s->parser);
	free(s->user);
	free(s->alias);
	if (s->handle != NULL)
		sodium_free(s->handle);
	free(s->msgs);
	free(s->enc);
	free(s);
	if (d->stopping && d->n_sessions == 0)
		pop3d_sessions_gone(d);
}

static void unref(pop3_session *s)
{
	if (--s->refs == 0)
		session_free(s);
}

/* A command finished: parse the next one (from a later loop turn). */
static void done(pop3_session *s)
{
	s->busy = false;
	if (s->c != NULL)
		sm_net_resume(s->c);
}

static void on_lock_answer(void *ctx, int err, const rpc_view *resp)
{
	pop3_session *s = ctx;

	(void)resp;
	if (err != 0 && err != RPC_ENOSESSION)
		eng_log(ENG_LOG_INFO, "pop3: LOCK failed: %s", rpc_strerror(err));
	unref(s);
}

/* Ends the sqlited session and the [IN-USE] lock; nothing is deleted. */
static void logout(pop3_session *s)
{
	if (s->handle != NULL) {
		eng_buf pl = ENG_BUF_INIT;

		rpc_put_bytes(&pl, RPC_T_SESSION, s->handle, s->handle_len);
		if (rpc_client_call(s->d->rpc, RPC_OP_LOCK, pl.data, pl.len, 0,
				    on_lock_answer, s, NULL) == 0)
			s->refs++;
		eng_buf_free_wipe(&pl);
		sodium_free(s->handle);
		s->handle = NULL;
		s->handle_len = 0;
	}
	if (s->lock_held) {
		pop3_lock_release(s->d, s->lock_id);
		s->lock_held = false;
	}
}

static bool err_temporary(int err)
{
	return err == ENG_EIO || err == ENG_ENOSPC || err == ENG_EBUSY ||
	       err == RPC_EUNAVAILABLE || err == RPC_ETIMEOUT ||
	       err == RPC_ENOTAUTH || err == RPC_ECANCELLED || err == RPC_ETOOMANY;
}

/* sqlited forgot the session (idle timeout, restart): the user logs in again. */
static void session_lost(pop3_session *s)
{
	eng_log(ENG_LOG_INFO, "pop3: %s: sqlited session of %s ended", 
		s->c != NULL ? sm_net_peer_addr(s->c) : "-", s->alias ? s->alias : "-");
	reply(s, "-ERR [SYS/TEMP] Session expired, please log in again\r\n");
	if (s->handle != NULL) {
		sodium_free(s->handle);
		s->handle = NULL;
	}
	logout(s);
	if (s->c != NULL)
		sm_net_close(s->c);
}

static void put_session(pop3_session *s, eng_buf *pl)
{
	rpc_put_bytes(pl, RPC_T_SESSION, s->handle, s->handle_len);
	rpc_put_str(pl, RPC_T_MAILBOX, POP3_INBOX);
}

/* Sends a request for this session (opts NULL: the client's defaults);
 * false if it could not even be queued (the caller answers). */
static bool call_opts(pop3_session *s, uint16_t op, eng_buf *pl,
		      const rpc_client_opts *opts, rpc_client_cb *cb)
{
	/* sqlited down: say so now rather than after the request timeout. */
	int rc = rpc_client_connected(s->d->rpc) ?
		 rpc_client_call_ex(s->d->rpc, op, pl->data, pl->len, opts, cb,
				    s, NULL) :
		 RPC_EUNAVAILABLE;

	eng_buf_free_wipe(pl);
	if (rc != 0) {
		eng_log(ENG_LOG_WARN, "pop3: cannot send %s to sqlited: %s",
			rpc_op_lookup(op) ? rpc_op_lookup(op)->name : "?",
			rpc_strerror(rc));
		return false;
	}
	s->refs++;
	return true;
}

static bool call(pop3_session *s, uint16_t op, eng_buf *pl, rpc_client_cb *cb)
{
	return call_opts(s, op, pl, NULL, cb);
}

/* ---- login: UNLOCK, lock, MAILBOX_STATUS, FETCH_META ---- */

static void on_meta(void *ctx, int err, const rpc_view *resp)
{
	pop3_session *s = ctx;
	rpc_iter it;
	const rpc_field *f;
	size_t n, i = 0;

	if (s->c == NULL) {
		logout(s);
		unref(s);
		return;
	}
	if (err != 0) {
		eng_log(ENG_LOG_WARN, "pop3: FETCH_META for %s failed: %s", s->alias,
			rpc_strerror(err));
		if (err == RPC_ENOSESSION) {
			session_lost(s);
		} else {
			reply(s, ERR_TEMP);
			logout(s);
		}
		done(s);
		unref(s);
		return;
	}
	n = rpc_count(resp, RPC_T_MESSAGE);
	s->msgs = eng_calloc(n > 0 ? n : 1, sizeof(*s->msgs));
	rpc_iter_init(&it, resp);
	while ((f = rpc_iter_next(&it, RPC_T_MESSAGE)) != NULL && i < n) {
		rpc_view g = rpc_field_group(f);
		uint32_t uid;
		uint64_t size = 0;

		if (rpc_get_u32(&g, RPC_T_UID, &uid) != 0)
			continue;
		rpc_get_u64(&g, RPC_T_SIZE, &size);
		s->msgs[i].uid = uid;
		s->msgs[i].size = size;
		i++;
	}
	s->n_msgs = (uint32_t)i;
	s->state = ST_TRANS;
	eng_log(ENG_LOG_INFO, "pop3: %s: %s logged in, %u messages",
		sm_net_peer_addr(s->c), s->alias, s->n_msgs);
	replyf(s, "+OK Logged in, %u messages\r\n", s->n_msgs);
	done(s);
	unref(s);
}

static void on_status(void *ctx, int err, const rpc_view *resp)
{
	pop3_session *s = ctx;
	rpc_view info;
	eng_buf pl = ENG_BUF_INIT;

	if (s->c == NULL) {
		logout(s);
		unref(s);
		return;
	}
	if (err == 0 && rpc_get_group(resp, RPC_T_MAILBOX_INFO, &info) == 0 &&
	    rpc_get_u32(&info, RPC_T_UIDVALIDITY, &s->uidvalidity) == 0) {
		put_session(s, &pl);
		rpc_put_u64(&pl, RPC_T_UIDVALIDITY, s->uidvalidity);
		if (!call(s, RPC_OP_FETCH_META, &pl, on_meta)) {
			reply(s, ERR_TEMP);
			logout(s);
			done(s);
		}
		unref(s);
		return;
	}
	eng_log(ENG_LOG_WARN, "pop3: MAILBOX_STATUS INBOX for %s failed: %s",
		s->alias, err != 0 ? rpc_strerror(err) : "no UIDVALIDITY");
	if (err == RPC_ENOSESSION)
		session_lost(s);
	else {
		reply(s, ERR_TEMP);
		logout(s);
	}
	done(s);
	unref(s);
}

static void on_lock_acquired(void *ctx, bool acquired)
{
	pop3_session *s = ctx;
	eng_buf pl = ENG_BUF_INIT;

	s->lock_pending = false;
	if (acquired)
		s->lock_held = true;
	if (s->c == NULL) {
		logout(s);
		unref(s);
		return;
	}
	if (!acquired) {
		eng_log(ENG_LOG_INFO, "pop3: %s: %s is in use by another POP3 session",
			sm_net_peer_addr(s->c), s->alias);
		reply(s, "-ERR [IN-USE] Mailbox is locked by another POP3 session\r\n");
		logout(s);
		free(s->alias);
		s->alias = NULL;
		done(s);
		unref(s);
		return;
	}
	put_session(s, &pl);
	if (!call(s, RPC_OP_MAILBOX_STATUS, &pl, on_status)) {
		reply(s, ERR_TEMP);
		logout(s);
		done(s);
	}
	unref(s);
}

static void lock_id_of(const char *alias, char out[POP3_LOCK_ID_CHARS + 1])
{
	uint8_t h[POP3_LOCK_ID_CHARS / 2];
	size_t n = strlen(alias);
	char *low = eng_malloc(n + 1);

	for (size_t i = 0; i < n; i++)
		low[i] = (char)tolower((unsigned char)alias[i]);
	low[n] = '\0';
	crypto_generichash(h, sizeof(h), (const uint8_t *)low, n, NULL, 0);
	free(low);
	sodium_bin2hex(out, POP3_LOCK_ID_CHARS + 1, h, sizeof(h));
}

static void auth_failed(pop3_session *s, int err)
{
	if (err_temporary(err)) {
		reply(s, ERR_TEMP);
		return;
	}
	reply(s, ERR_AUTH);
	if (++s->auth_failures >= POP3_MAX_AUTH_FAILURES) {
		reply(s, "-ERR Too many authentication failures\r\n");
		if (s->c != NULL)
			sm_net_close(s->c);
	}
}

static void on_unlock(void *ctx, int err, const rpc_view *resp)
{
	pop3_session *s = ctx;
	const uint8_t *h;
	size_t hlen;

	if (err == 0 && rpc_get_bytes(resp, RPC_T_SESSION, &h, &hlen) == 0 &&
	    hlen > 0 && hlen <= 64) {
		s->handle = sodium_malloc(hlen);
		if (s->handle == NULL)
			eng_oom(hlen);
		memcpy(s->handle, h, hlen);
		s->handle_len = hlen;
	} else if (err == 0) {
		err = ENG_EIO;
	}
	if (s->c == NULL) {
		logout(s);
		unref(s);
		return;
	}
	if (err != 0) {
		eng_log(ENG_LOG_INFO, "pop3: %s: login failed: %s",
			sm_net_peer_addr(s->c), rpc_strerror(err));
		free(s->alias);
		s->alias = NULL;
		auth_failed(s, err);
		done(s);
		unref(s);
		return;
	}
	lock_id_of(s->alias, s->lock_id);
	s->lock_pending = true;
	/* The reference of the UNLOCK call passes to the lock request. */
	pop3_lock_acquire(s->d, s->lock_id, on_lock_acquired, s);
}

/* Starts a login; the password is wiped by the caller. */
static void start_login(pop3_session *s, const char *user, size_t user_len,
			const char *pw, size_t pw_len)
{
	static const rpc_client_opts login_opts = RPC_CLIENT_LOGIN_OPTS;
	eng_buf pl = ENG_BUF_INIT;

	if (user_len == 0 || pw_len == 0 || pw_len > 4096 ||
	    memchr(user, '\0', user_len) != NULL) {
		auth_failed(s, ENG_EAUTH);
		return;
	}
	free(s->alias);
	s->alias = eng_strndup(user, user_len);
	rpc_put_bytes(&pl, RPC_T_ALIAS, user, user_len);
	rpc_put_bytes(&pl, RPC_T_PASSWORD, pw, pw_len);
	rpc_put_str(&pl, RPC_T_CLIENT_ADDR, sm_net_peer_addr(s->c));
	s->busy = true;
	/* A first login may wait minutes in sqlited's Argon2id queue; a full
	 * queue answers EBUSY at once ([SYS/TEMP]). */
	if (!call_opts(s, RPC_OP_UNLOCK, &pl, &login_opts, on_unlock)) {
		reply(s, ERR_TEMP);
		s->busy = false;
	}
}

static bool plaintext_ok(pop3_session *s)
{
	return sm_net_is_tls(s->c) || sm_net_is_loopback(s->c);
}

/* ---- AUTHORIZATION commands ---- */

static void cmd_user(pop3_session *s, const pop3_command *cmd)
{
	if (!plaintext_ok(s)) {
		reply(s, ERR_PLAIN);
		return;
	}
	free(s->user);
	s->user = eng_strndup(cmd->args[0], cmd->arg_lens[0]);
	reply(s, "+OK\r\n");
}

static void cmd_pass(pop3_session *s, const pop3_command *cmd)
{
	char *user = s->user;

	if (!plaintext_ok(s)) {
		reply(s, ERR_PLAIN);
		return;
	}
	if (user == NULL) {
		reply(s, "-ERR USER first\r\n");
		return;
	}
	s->user = NULL;
	start_login(s, user, strlen(user), cmd->args[0], cmd->arg_lens[0]);
	free(user);
}

/* RFC 4616: [authzid] NUL authcid NUL passwd, base64 (RFC 5034: "=" is empty). */
static void sasl_plain(pop3_session *s, const char *b64, size_t b64_len)
{
	size_t cap = b64_len / 4 * 3 + 3, n = 0;
	char *raw;
	const char *authz, *authc, *pw, *end;

	if (b64_len == 1 && b64[0] == '=')
		b64_len = 0;
	raw = sodium_malloc(cap + 1);
	if (raw == NULL)
		eng_oom(cap + 1);
	if (b64_len > 0 &&
	    sodium_base642bin((unsigned char *)raw, cap, b64, b64_len, NULL, &n,
			      NULL, sodium_base64_VARIANT_ORIGINAL) != 0) {
		sodium_free(raw);
		reply(s, "-ERR Invalid base64\r\n");
		return;
	}
	end = raw + n;
	authz = raw;
	authc = memchr(authz, '\0', n);
	pw = authc != NULL ? memchr(authc + 1, '\0', (size_t)(end - authc - 1)) : NULL;
	if (authc == NULL || pw == NULL ||
	    memchr(pw + 1, '\0', (size_t)(end - pw - 1)) != NULL) {
		sodium_free(raw);
		auth_failed(s, ENG_EAUTH);
		return;
	}
	authc++;
	pw++;
	/* Only one's own mailbox: an authorization identity must be the same. */
	if (authc - 1 > authz && strcmp(authz, authc) != 0) {
		sodium_free(raw);
		auth_failed(s, ENG_EAUTH);
		return;
	}
	start_login(s, authc, strlen(authc), pw, (size_t)(end - pw));
	sodium_free(raw);
}

static void cmd_auth(pop3_session *s, const pop3_command *cmd)
{
	if (cmd->argc == 0) {
		reply(s, "+OK\r\nPLAIN\r\n.\r\n");
		return;
	}
	if (cmd->arg_lens[0] != 5 || strcasecmp(cmd->args[0], "PLAIN") != 0) {
		reply(s, "-ERR Unsupported authentication mechanism\r\n");
		return;
	}
	if (!plaintext_ok(s)) {
		reply(s, ERR_PLAIN);
		return;
	}
	if (cmd->argc == 2) {
		sasl_plain(s, cmd->args[1], cmd->arg_lens[1]);
		return;
	}
	s->sasl_wait = true;
	pop3_parser_expect_sasl(s->parser);
	reply(s, "+ \r\n");
}

static void sasl_line(pop3_session *s, const pop3_command *cmd)
{
	s->sasl_wait = false;
	if (cmd->verb == POP3_VERB_SASL_CANCEL) {
		reply(s, "-ERR Authentication cancelled\r\n");
		return;
	}
	sasl_plain(s, cmd->args[0], cmd->arg_lens[0]);
}

static void cmd_stls(pop3_session *s, const pop3_command *cmd)
{
	(void)cmd;
	if (!sm_net_can_starttls(s->c)) {
		reply(s, sm_net_is_tls(s->c) ? "-ERR TLS already active\r\n" :
		      "-ERR TLS not available\r\n");
		return;
	}
	reply(s, "+OK Begin TLS negotiation\r\n");
	/* Whatever the client pipelined after STLS is dropped, not run. */
	pop3_parser_reset(s->parser);
	sm_net_starttls(s->c);
	s->stls_done = true;
	free(s->user);
	s->user = NULL;
}

static void cmd_capa(pop3_session *s, const pop3_command *cmd)
{
	eng_buf b = ENG_BUF_INIT;

	(void)cmd;
	eng_buf_puts(&b, "+OK Capability list follows\r\n"
		     "TOP\r\nUIDL\r\nUSER\r\nSASL PLAIN\r\nRESP-CODES\r\n"
		     "AUTH-RESP-CODE\r\nPIPELINING\r\n");
	if (s->state == ST_AUTH && sm_net_can_starttls(s->c))
		eng_buf_puts(&b, "STLS\r\n");
	eng_buf_puts(&b, "IMPLEMENTATION Sealmail\r\n.\r\n");
	sm_net_write(s->c, b.data, b.len);
	eng_buf_free(&b);
}

static void cmd_noop(pop3_session *s, const pop3_command *cmd)
{
	(void)cmd;
	reply(s, "+OK\r\n");
}

/* ---- TRANSACTION commands ---- */

/* The message numbered n, not deleted; NULL (answered) otherwise. */
static pop3_msg *msg_get(pop3_session *s, uint32_t n)
{
	if (n == 0 || n > s->n_msgs) {
		reply(s, "-ERR No such message\r\n");
		return NULL;
	}
	if (s->msgs[n - 1].deleted) {
		reply(s, "-ERR Message already deleted\r\n");
		return NULL;
	}
	return &s->msgs[n - 1];
}

static void cmd_stat(pop3_session *s, const pop3_command *cmd)
{
	uint64_t total = 0;

	(void)cmd;
	for (uint32_t i = 0; i < s->n_msgs; i++)
		if (!s->msgs[i].deleted)
			total += s->msgs[i].size;
	replyf(s, "+OK %u %llu\r\n", s->n_msgs - s->n_deleted,
	       (unsigned long long)total);
}

static void list_or_uidl(pop3_session *s, const pop3_command *cmd, bool uidl)
{
	eng_buf b = ENG_BUF_INIT;

	if (cmd->argc == 1) {
		pop3_msg *m = msg_get(s, cmd->nums[0]);

		if (m == NULL)
			return;
		if (uidl)
			replyf(s, "+OK %u %u.%u\r\n", cmd->nums[0], s->uidvalidity, m->uid);
		else
			replyf(s, "+OK %u %llu\r\n", cmd->nums[0],
			       (unsigned long long)m->size);
		return;
	}
	eng_buf_puts(&b, "+OK\r\n");
	for (uint32_t i = 0; i < s->n_msgs; i++) {
		if (s->msgs[i].deleted)
			continue;
		if (uidl)
			eng_buf_printf(&b, "%u %u.%u\r\n", i + 1, s->uidvalidity,
				       s->msgs[i].uid);
		else
			eng_buf_printf(&b, "%u %llu\r\n", i + 1,
				       (unsigned long long)s->msgs[i].size);
	}
	eng_buf_puts(&b, ".\r\n");
	sm_net_write(s->c, b.data, b.len);
	eng_buf_free(&b);
}

static void cmd_list(pop3_session *s, const pop3_command *cmd)
{
	list_or_uidl(s, cmd, false);
}

static void cmd_uidl(pop3_session *s, const pop3_command *cmd)
{
	list_or_uidl(s, cmd, true);
}

static void cmd_dele(pop3_session *s, const pop3_command *cmd)
{
	pop3_msg *m = msg_get(s, cmd->nums[0]);

	if (m == NULL)
		return;
	m->deleted = true;
	s->n_deleted++;
	replyf(s, "+OK Message %u deleted\r\n", cmd->nums[0]);
}

static void cmd_rset(pop3_session *s, const pop3_command *cmd)
{
	(void)cmd;
	for (uint32_t i = 0; i < s->n_msgs; i++)
		s->msgs[i].deleted = false;
	s->n_deleted = 0;
	replyf(s, "+OK %u messages\r\n", s->n_msgs);
}

static int on_body_data(void *ctx, uint32_t id, const rpc_view *head,
			const uint8_t *data, size_t len, bool end)
{
	pop3_session *s = ctx;
	size_t n;

	(void)id;
	(void)head;
	(void)end;
	if (s->c == NULL || sm_net_closing(s->c))
		return RPC_ECANCELLED;
	if (!s->fetch_started) {
		s->fetch_started = true;
		reply(s, "+OK Message follows\r\n");
	}
	if (s->fetch_top && pop3_dotstuff_done(&s->ds))
		return POP3_FETCH_ENOUGH;
	if (len == 0)
		return 0;
	if (s->enc_cap < POP3_DOTSTUFF_MAX_OUT(len)) {
		free(s->enc);
		s->enc_cap = POP3_DOTSTUFF_MAX_OUT(len);
		s->enc = eng_malloc(s->enc_cap);
	}
	n = pop3_dotstuff_feed(&s->ds, data, len, s->enc);
	sm_net_write(s->c, s->enc, n);
	if (s->fetch_top && pop3_dotstuff_done(&s->ds))
		return POP3_FETCH_ENOUGH;
	if (sm_net_write_blocked(s->c)) {
		/* No credit for these bytes until the client has read. */
		s->held_bytes += len;
		return RPC_CLIENT_HOLD;
	}
	return 0;
}

static void on_body_done(void *ctx, int err, const rpc_view *resp)
{
	pop3_session *s = ctx;

	(void)resp;
	s->fetching = false;
	s->held_bytes = 0;
	free(s->enc);
	s->enc = NULL;
	s->enc_cap = 0;
	if (s->c == NULL) {
		unref(s);
		return;
	}
	if (err == 0 || (err == POP3_FETCH_ENOUGH && s->fetch_top)) {
		uint8_t fin[POP3_DOTSTUFF_FINISH_MAX];
		size_t n;

		if (!s->fetch_started)
			reply(s, "+OK Message follows\r\n");
		n = pop3_dotstuff_finish(&s->ds, fin);
		sm_net_write(s->c, fin, n);
	} else if (!s->fetch_started) {
		eng_log(ENG_LOG_WARN, "pop3: FETCH_BODY for %s failed: %s", s->alias,
			rpc_strerror(err));
		if (err == RPC_ENOSESSION)
			session_lost(s);
		else if (err == ENG_ENOTFOUND)
			reply(s, "-ERR Message no longer exists\r\n");
		else
			reply(s, ERR_TEMP);
	} else {
		/* Half a message is out: the response cannot be finished. */
		eng_log(ENG_LOG_WARN, "pop3: %s: FETCH_BODY failed mid-stream: %s",
			sm_net_peer_addr(s->c), rpc_strerror(err));
		sm_net_abort(s->c);
	}
	done(s);
	unref(s);
}

static void start_fetch(pop3_session *s, pop3_msg *m, bool top, uint32_t lines)
{
	eng_buf pl = ENG_BUF_INIT;
	rpc_client_opts opts;
	int rc;

	if (top)
		pop3_dotstuff_init_top(&s->ds, lines);
	else
		pop3_dotstuff_init(&s->ds);
	put_session(s, &pl);
	rpc_put_u64(&pl, RPC_T_UID, m->uid);
	rpc_put_u64(&pl, RPC_T_WANT, RPC_WANT_BODY);
	rpc_put_u64(&pl, RPC_T_UIDVALIDITY, s->uidvalidity);
	memset(&opts, 0, sizeof(opts));
	opts.data = on_body_data;
	opts.data_ctx = s;
	s->fetch_top = top;
	s->fetch_started = false;
	s->held_bytes = 0;
	s->fetching = true;
	s->busy = true;
	s->refs++;
	rc = !rpc_client_connected(s->d->rpc) ? RPC_EUNAVAILABLE :
	     rpc_client_call_ex(s->d->rpc, RPC_OP_FETCH_BODY, pl.data, pl.len, &opts,
				on_body_done, s, &s->fetch_id);
	eng_buf_free_wipe(&pl);
	if (rc != 0) {
		s->refs--;
		s->fetching = false;
		s->busy = false;
		eng_log(ENG_LOG_WARN, "pop3: cannot send FETCH_BODY: %s", rpc_strerror(rc));
		reply(s, ERR_TEMP);
	}
}

static void cmd_retr(pop3_session *s, const pop3_command *cmd)
{
	pop3_msg *m = msg_get(s, cmd->nums[0]);

	if (m != NULL)
		start_fetch(s, m, false, 0);
}

static void cmd_top(pop3_session *s, const pop3_command *cmd)
{
	pop3_msg *m = msg_get(s, cmd->nums[0]);

	if (m != NULL)
		start_fetch(s, m, true, cmd->nums[1]);
}

/* ---- QUIT and UPDATE ---- */

static void finish_quit(pop3_session *s, const char *text)
{
	reply(s, text);
	logout(s);
	if (s->c != NULL)
		sm_net_close(s->c);
}

/* The marked UIDs as a packed UID set (msgs are in UID order). */
static void put_deleted(pop3_session *s, eng_buf *pl)
{
	eng_buf set = ENG_BUF_INIT;
	uint32_t i = 0;

	while (i < s->n_msgs) {
		uint32_t lo, hi;
		uint8_t r[8];

		if (!s->msgs[i].deleted) {
			i++;
			continue;
		}
		lo = hi = s->msgs[i].uid;
		while (i + 1 < s->n_msgs && s->msgs[i + 1].deleted &&
		       s->msgs[i + 1].uid == hi + 1)
			hi = s->msgs[++i].uid;
		i++;
		r[0] = (uint8_t)(lo >> 24); r[1] = (uint8_t)(lo >> 16);
		r[2] = (uint8_t)(lo >> 8); r[3] = (uint8_t)lo;
		r[4] = (uint8_t)(hi >> 24); r[5] = (uint8_t)(hi >> 16);
		r[6] = (uint8_t)(hi >> 8); r[7] = (uint8_t)hi;
		eng_buf_append(&set, r, sizeof(r));
	}
	rpc_put_bytes(pl, RPC_T_UIDSET, set.data, set.len);
	eng_buf_free(&set);
}

static void on_expunge(void *ctx, int err, const rpc_view *resp)
{
	pop3_session *s = ctx;
	const uint8_t *p;
	size_t n = 0;

	if (err == 0 && rpc_get_uids(resp, RPC_T_UIDS, &p, &n) != 0)
		n = 0;
	if (err != 0) {
		eng_log(ENG_LOG_WARN, "pop3: EXPUNGE for %s failed: %s", s->alias,
			rpc_strerror(err));
		finish_quit(s, "-ERR [SYS/TEMP] Some deleted messages were not removed\r\n");
	} else {
		eng_log(ENG_LOG_INFO, "pop3: %s logged out, %zu messages removed",
			s->alias, n);
		eng_buf b = ENG_BUF_INIT;

		eng_buf_printf(&b, "+OK Sealmail POP3 server signing off (%zu messages "
			       "deleted)\r\n", n);
		finish_quit(s, b.data);
		eng_buf_free(&b);
	}
	unref(s);
}

static void on_store_deleted(void *ctx, int err, const rpc_view *resp)
{
	pop3_session *s = ctx;
	eng_buf pl = ENG_BUF_INIT;

	(void)resp;
	if (err != 0) {
		eng_log(ENG_LOG_WARN, "pop3: STORE \\Deleted for %s failed: %s", s->alias,
			rpc_strerror(err));
		finish_quit(s, "-ERR [SYS/TEMP] Deleted messages were not removed\r\n");
		unref(s);
		return;
	}
	put_session(s, &pl);
	put_deleted(s, &pl);
	if (!call(s, RPC_OP_EXPUNGE, &pl, on_expunge))
		finish_quit(s, "-ERR [SYS/TEMP] Deleted messages were not removed\r\n");
	unref(s);
}

static void cmd_quit(pop3_session *s, const pop3_command *cmd)
{
	eng_buf pl = ENG_BUF_INIT;

	(void)cmd;
	if (s->state == ST_AUTH) {
		finish_quit(s, "+OK Sealmail POP3 server signing off\r\n");
		return;
	}
	s->state = ST_UPDATE;
	s->busy = true;
	if (s->n_deleted == 0) {
		finish_quit(s, "+OK Sealmail POP3 server signing off\r\n");
		return;
	}
	put_session(s, &pl);
	put_deleted(s, &pl);
	rpc_put_u64(&pl, RPC_T_MODE, RPC_MODE_ADD);
	rpc_put_u64(&pl, RPC_T_FLAGS, 8);   /* \Deleted */
	if (!call(s, RPC_OP_STORE, &pl, on_store_deleted))
		finish_quit(s, "-ERR [SYS/TEMP] Deleted messages were not removed\r\n");
}

/* ---- dispatch ---- */

static const pop3_cmd_def pop3_commands[] = {
	{ POP3_VERB_CAPA, cmd_capa, ST_ANY },
	{ POP3_VERB_NOOP, cmd_noop, ST_ANY },
	{ POP3_VERB_QUIT, cmd_quit, ST_ANY },
	{ POP3_VERB_USER, cmd_user, ST_AUTH },
	{ POP3_VERB_PASS, cmd_pass, ST_AUTH },
	{ POP3_VERB_AUTH, cmd_auth, ST_AUTH },
	{ POP3_VERB_STLS, cmd_stls, ST_AUTH },
	{ POP3_VERB_STAT, cmd_stat, ST_TRANS },
	{ POP3_VERB_LIST, cmd_list, ST_TRANS },
	{ POP3_VERB_UIDL, cmd_uidl, ST_TRANS },
	{ POP3_VERB_RETR, cmd_retr, ST_TRANS },
	{ POP3_VERB_TOP, cmd_top, ST_TRANS },
	{ POP3_VERB_DELE, cmd_dele, ST_TRANS },
	{ POP3_VERB_RSET, cmd_rset, ST_TRANS },
};

static void bad_command(pop3_session *s, const char *text)
{
	reply(s, text);
	if (++s->bad_commands >= POP3_MAX_BAD_COMMANDS) {
		eng_log(ENG_LOG_INFO, "pop3: %s: too many bad commands",
			sm_net_peer_addr(s->c));
		reply(s, "-ERR Too many bad commands, closing\r\n");
		sm_net_close(s->c);
	}
}

static void dispatch(pop3_session *s, int r, const pop3_command *cmd)
{
	const pop3_cmd_def *def = NULL;

	if (s->sasl_wait) {
		s->sasl_wait = false;
		if (r < 0) {
			bad_command(s, "-ERR Invalid SASL response\r\n");
			return;
		}
		sasl_line(s, cmd);
		return;
	}
	if (r < 0) {
		eng_buf b = ENG_BUF_INIT;

		eng_buf_printf(&b, "-ERR %s\r\n", pop3_strerror(r));
		bad_command(s, b.data);
		eng_buf_free(&b);
		return;
	}
	for (size_t i = 0; i < sizeof(pop3_commands) / sizeof(pop3_commands[0]); i++)
		if (pop3_commands[i].verb == cmd->verb)
			def = &pop3_commands[i];
	if (def == NULL) {
		bad_command(s, "-ERR Unknown command\r\n");
		return;
	}
	if ((def->states & s->state) == 0) {
		bad_command(s, "-ERR Command not valid in this state\r\n");
		return;
	}
	def->fn(s, cmd);
}

/* ---- net callbacks ---- */

static void on_accept(sm_net_conn *c, void *lctx)
{
	pop3d *d = lctx;
	pop3_session *s;

	if (d->stopping) {
		sm_net_abort(c);
		return;
	}
	s = eng_calloc(1, sizeof(*s));
	s->d = d;
	s->c = c;
	s->refs = 1;
	s->state = ST_AUTH;
	s->parser = pop3_parser_new(0, 0);
	if (s->parser == NULL)
		eng_oom(sizeof(void *));
	s->next = d->sessions;
	if (d->sessions != NULL)
		d->sessions->prev = s;
	d->sessions = s;
	d->n_sessions++;
	sm_net_set_ctx(c, s);
	reply(s, "+OK Sealmail POP3 ready\r\n");
}

static size_t on_data(sm_net_conn *c, void *ctx, const uint8_t *p, size_t len)
{
	pop3_session *s = ctx;
	size_t off = 0;

	if (s == NULL)
		return len;
	while (off < len && !s->busy && !sm_net_closing(c)) {
		pop3_command cmd;
		size_t used = 0;
		int r = pop3_parser_feed(s->parser, p + off, len - off, &used, &cmd);

		off += used;
		if (r == 0)
			break;
		dispatch(s, r, &cmd);
		if (s->stls_done) {
			/* net discards everything after the STLS line. */
			s->stls_done = false;
			return off;
		}
	}
	if (s->busy)
		sm_net_hold(c);
	return off;
}

static void on_drained(sm_net_conn *c, void *ctx)
{
	pop3_session *s = ctx;

	(void)c;
	if (s != NULL && s->fetching && s->held_bytes > 0) {
		size_t n = s->held_bytes;

		s->held_bytes = 0;
		rpc_client_consumed(s->d->rpc, s->fetch_id, n);
	}
}

static void on_close(sm_net_conn *c, void *ctx, enum sm_net_reason why)
{
	pop3_session *s = ctx;

	(void)c;
	(void)why;
	if (s == NULL)
		return;
	s->c = NULL;
	if (s->fetching) {
		/* on_body_done runs before this returns. */
		rpc_client_cancel(s->d->rpc, s->fetch_id);
		s->busy = false;
	}
	/* A dropped connection deletes nothing; UPDATE, once begun, finishes. */
	if (!s->busy && s->state != ST_UPDATE)
		logout(s);
	unref(s);
}

const sm_net_callbacks pop3_net_callbacks = {
	.on_accept = on_accept,
	.on_data = on_data,
	.on_drained = on_drained,
	.on_close = on_close,
};

void pop3_sessions_shutdown(pop3d *d)
{
	for (pop3_session *s = d->sessions; s != NULL; s = s->next) {
		if (s->c == NULL || sm_net_closing(s->c))
			continue;
		if (s->fetching) {
			sm_net_abort(s->c);
			continue;
		}
		if (s->state == ST_UPDATE)
			continue;        /* its QUIT finishes, then it closes */
		reply(s, "-ERR [SYS/TEMP] Server shutting down\r\n");
		sm_net_close(s->c);
	}
}
