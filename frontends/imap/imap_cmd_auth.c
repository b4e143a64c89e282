/*
 * The commands of any state and of logging in (imap_auth_cmds):
 * CAPABILITY NOOP LOGOUT STARTTLS LOGIN AUTHENTICATE ENABLE ID NAMESPACE
 * IDLE COMPRESS.
 *
 * Logging in: UNLOCK with ALIAS, PASSWORD and CLIENT_ADDR (sqlited
 * throttles failures per address and alias across processes). Every
 * failure that is not a temporary one is the same "NO
 * [AUTHENTICATIONFAILED] Authentication failed." whether the alias exists
 * or not; a temporary one is NO [UNAVAILABLE]; the third failure ends the
 * connection. The UNLOCK has the long login timeout (rpc_client.h): after
 * a restart of sqlited a burst of first logins waits in its Argon2id
 * queue, and sqlited itself says EBUSY (NO [UNAVAILABLE], at once) when
 * that queue is full. Before TLS, LOGIN and AUTHENTICATE are refused (CAPABILITY
 * says LOGINDISABLED) except from loopback. The sqlited session is one
 * per alias per process, shared by the alias's connections here
 * (imap_session_logged_in): a LOGIN whose alias already has one LOCKs
 * its own new handle, and the last connection to close LOCKs the shared
 * one.
 *
 * Passwords: they pass from the parser's buffer into the UNLOCK payload,
 * which is wiped; SASL buffers are sodium_malloc'd and freed (wiped). No
 * password, handle or SASL blob reaches the log.
 */
#include "imap_daemon.h"

#include "eng_error.h"
#include "rpc_proto.h"

#include <sodium.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#define SASL_MAX_BYTES 8192
#define ID_MAX_PAIRS 30
#define ID_MAX_FIELD 30
#define ID_MAX_VALUE 1024
/* "* OK Still here" every this many idle ticks (keeps NAT state alive). */
#define IDLE_KEEPALIVE_TICKS 4

/* ---- CAPABILITY ---- */

static bool tls_on(const imap_session *s)
{
	/* An implicit-TLS connection is not "is_tls" before its handshake ends,
	 * but it can no longer STARTTLS either. */
	return sm_net_is_tls(s->c) || (s->d->tls != NULL && !sm_net_can_starttls(s->c));
}

static bool login_allowed(const imap_session *s)
{
	return tls_on(s) || sm_net_is_loopback(s->c);
}

void imap_capability(const imap_session *s, eng_buf *b)
{
	eng_buf_puts(b, "IMAP4rev1 IMAP4rev2");
	if (s->state == IMAP_S_NOTAUTH && s->c != NULL) {
		if (login_allowed(s))
			eng_buf_puts(b, " SASL-IR AUTH=PLAIN AUTH=LOGIN");
		else
			eng_buf_puts(b, " LOGINDISABLED");
		if (sm_net_can_starttls(s->c))
			eng_buf_puts(b, " STARTTLS");
	}
	eng_buf_printf(b, " LITERAL+ ENABLE ID IDLE NAMESPACE UNSELECT CHILDREN UIDPLUS "
		       "MOVE SPECIAL-USE LIST-EXTENDED LIST-STATUS CONDSTORE QRESYNC "
		       "ESEARCH SEARCHRES SORT ESORT THREAD=REFERENCES THREAD=ORDEREDSUBJECT "
		       "COMPRESS=DEFLATE QUOTA QUOTA=RES-STORAGE APPENDLIMIT=%llu "
		       "STATUS=SIZE UTF8=ACCEPT MULTIAPPEND BINARY WITHIN SAVEDATE "
		       "OBJECTID PREVIEW", (unsigned long long)s->d->append_max);
}

static void cmd_capability(imap_cmd *cmd)
{
	eng_buf b = ENG_BUF_INIT;

	if (cmd->n_args != 0) {
		imap_cmd_done(cmd, IMAP_BAD, NULL, "CAPABILITY takes no arguments.");
		return;
	}
	eng_buf_puts(&b, "* CAPABILITY ");
	imap_capability(cmd->s, &b);
	eng_buf_puts(&b, "\r\n");
	imap_write_buf(cmd->s, &b);
	eng_buf_free(&b);
	imap_cmd_done(cmd, IMAP_OK, NULL, "Capability completed.");
}

/* ---- NOOP, LOGOUT, NAMESPACE ---- */

static void noop_synced(imap_cmd *cmd)
{
	int err = imap_cmd_sync_error(cmd);

	/* This sync was the forced one: imap_cmd_done need not repeat it. */
	cmd->flags &= ~(uint32_t)IMAP_CF_FORCE_SYNC;
	if (err != 0 && err != RPC_ENOSESSION && err != ENG_EMODIFIED &&
	    err != ENG_ENOTFOUND)
		imap_cmd_done(cmd, IMAP_NO, "UNAVAILABLE", "NOOP failed: temporary server "
			      "failure, try again later.");
	else
		imap_cmd_done(cmd, IMAP_OK, NULL, "NOOP completed.");
}

static void cmd_noop(imap_cmd *cmd)
{
	if (cmd->n_args != 0) {
		imap_cmd_done(cmd, IMAP_BAD, NULL, "NOOP takes no arguments.");
		return;
	}
	if (cmd->s->sel != NULL)
		imap_sync(cmd, true, noop_synced);
	else
		imap_cmd_done(cmd, IMAP_OK, NULL, "NOOP completed.");
}

static void cmd_logout(imap_cmd *cmd)
{
	imap_session *s = cmd->s;

	imap_printf(s, "* BYE Logging out\r\n");
	s->state = IMAP_S_LOGOUT;
	imap_cmd_done(cmd, IMAP_OK, NULL, "Logout completed.");
}

static void cmd_namespace(imap_cmd *cmd)
{
	imap_printf(cmd->s, "* NAMESPACE ((\"\" \"/\")) NIL NIL\r\n");
	imap_cmd_done(cmd, IMAP_OK, NULL, "Namespace completed.");
}

/* ---- STARTTLS, COMPRESS ---- */

static void cmd_starttls(imap_cmd *cmd)
{
	imap_session *s = cmd->s;

	if (sm_net_is_tls(s->c) || tls_on(s)) {
		imap_cmd_done(cmd, IMAP_BAD, NULL, "TLS is already active.");
		return;
	}
	if (!sm_net_can_starttls(s->c)) {
		imap_cmd_done(cmd, IMAP_NO, NULL, "TLS is not available.");
		return;
	}
	imap_cmd_set_after(cmd, imap_session_starttls);
	imap_cmd_done(cmd, IMAP_OK, NULL, "Begin TLS negotiation now.");
}

static void compress_on(imap_session *s)
{
	imap_session_compress(s);
}

static void cmd_compress(imap_cmd *cmd)
{
	const char *mech = cmd->n_args == 1 ? imap_arg_atom(&cmd->args[0]) : NULL;

	if (mech == NULL || strcasecmp(mech, "DEFLATE") != 0) {
		imap_cmd_done(cmd, IMAP_BAD, NULL, "Unknown compression mechanism.");
		return;
	}
	if (cmd->s->zin != NULL) {
		imap_cmd_done(cmd, IMAP_NO, "COMPRESSIONACTIVE", "DEFLATE is already "
			      "active.");
		return;
	}
	imap_cmd_set_after(cmd, compress_on);
	imap_cmd_done(cmd, IMAP_OK, NULL, "DEFLATE active.");
}

/* ---- logging in ---- */

static void too_many_failures(imap_session *s)
{
	imap_session_bye(s, "Too many authentication failures.");
}

static void login_failed(imap_cmd *cmd, int err)
{
	imap_session *s = cmd->s;

	if (err == RPC_EUNAVAILABLE || err == RPC_ETIMEOUT || err == RPC_ENOTAUTH ||
	    err == RPC_ETOOMANY || err == ENG_EIO || err == ENG_ENOSPC || err == ENG_EBUSY) {
		imap_cmd_done(cmd, IMAP_NO, "UNAVAILABLE", "Temporary server failure, try "
			      "again later.");
		return;
	}
	if (++s->auth_failures >= IMAP_MAX_AUTH_FAILURES)
		imap_cmd_set_after(cmd, too_many_failures);
	imap_cmd_done(cmd, IMAP_NO, "AUTHENTICATIONFAILED", "Authentication failed.");
}

static void on_unlock(imap_cmd *cmd, int err, const rpc_view *resp)
{
	imap_session *s = cmd->s;
	char *user = cmd->op, *alias_id = NULL;
	const uint8_t *h = NULL;
	size_t hlen = 0;
	eng_buf b = ENG_BUF_INIT;

	cmd->op = NULL;
	if (cmd->aborted) {
		free(user);
		return;
	}
	if (err == 0 && (rpc_get_bytes(resp, RPC_T_SESSION, &h, &hlen) != 0 ||
			 hlen == 0 || hlen > sizeof(s->handle)))
		err = ENG_EIO;
	if (err != 0) {
		eng_log(ENG_LOG_INFO, "imap: %s: login failed: %s", sm_net_peer_addr(s->c),
			rpc_strerror(err));
		free(user);
		login_failed(cmd, err);
		return;
	}
	if (rpc_get_str(resp, RPC_T_ALIAS_ID, &alias_id) != 0 ||
	    strlen(alias_id) >= sizeof(s->alias_id)) {
		eng_log(ENG_LOG_WARN, "imap: UNLOCK gave no usable ALIAS_ID: IDLE relies "
			"on its periodic sync for this session");
		free(alias_id);
		alias_id = NULL;
	}
	imap_session_logged_in(s, h, hlen, alias_id != NULL ? alias_id : "", user);
	eng_log(ENG_LOG_INFO, "imap: %s: %s logged in", sm_net_peer_addr(s->c), user);
	free(alias_id);
	free(user);
	eng_buf_puts(&b, "CAPABILITY ");
	imap_capability(s, &b);
	imap_cmd_done(cmd, IMAP_OK, b.data, "Logged in.");
	eng_buf_free(&b);
}

/* Starts UNLOCK; answers at once when it cannot be sent. It may wait
 * minutes in sqlited's Argon2id queue (rpc_client.h, the login timeout). */
static const rpc_client_opts login_opts = RPC_CLIENT_LOGIN_OPTS;

static void start_login(imap_cmd *cmd, const char *user, size_t user_len,
			const char *pw, size_t pw_len)
{
	imap_session *s = cmd->s;
	eng_buf pl = ENG_BUF_INIT;
	int err;

	if (user_len == 0 || user_len > 320 || pw_len == 0 || pw_len > 4096 ||
	    memchr(user, '\0', user_len) != NULL) {
		login_failed(cmd, ENG_EAUTH);
		return;
	}
	rpc_put_bytes(&pl, RPC_T_ALIAS, user, user_len);
	rpc_put_bytes(&pl, RPC_T_PASSWORD, pw, pw_len);
	rpc_put_str(&pl, RPC_T_CLIENT_ADDR, sm_net_peer_addr(s->c));
	cmd->op = eng_strndup(user, user_len);
	err = imap_rpc_call(cmd, RPC_OP_UNLOCK, &pl, &login_opts, on_unlock);
	eng_buf_free_wipe(&pl);
	if (err != 0) {
		free(cmd->op);
		cmd->op = NULL;
		login_failed(cmd, err);
	}
}

static bool refuse_plaintext(imap_cmd *cmd)
{
	if (login_allowed(cmd->s))
		return false;
	imap_cmd_done(cmd, IMAP_NO, "PRIVACYREQUIRED", "Plaintext authentication is "
		      "disabled; use STARTTLS or the implicit TLS port.");
	return true;
}

static void cmd_login(imap_cmd *cmd)
{
	const char *user, *pw;

	if (cmd->n_args != 2 || (user = imap_arg_astring(&cmd->args[0])) == NULL ||
	    (pw = imap_arg_astring(&cmd->args[1])) == NULL) {
		imap_cmd_done(cmd, IMAP_BAD, NULL, "LOGIN needs a user name and a password.");
		return;
	}
	if (refuse_plaintext(cmd))
		return;
	start_login(cmd, user, cmd->args[0].len, pw, cmd->args[1].len);
}

/* ---- AUTHENTICATE (RFC 3501 6.2.2, SASL-IR RFC 4959) ---- */

typedef struct sasl_login {
	char *user;                  /* AUTH=LOGIN: the user name, once given */
} sasl_login;

static void sasl_free(imap_cmd *cmd)
{
	sasl_login *st = cmd->op;

	if (st != NULL) {
		free(st->user);
		free(st);
	}
	cmd->op = NULL;
}

/* Base64 to a sodium_malloc'd buffer (NUL-terminated); "=" is empty. NULL
 * for invalid base64. */
static char *b64_decode(const char *in, size_t len, size_t *out_len)
{
	size_t cap = len / 4 * 3 + 3;
	char *out;

	if (len == 1 && in[0] == '=')
		len = 0;
	out = sodium_malloc(cap + 1);
	if (out == NULL)
		eng_oom(cap + 1);
	*out_len = 0;
	if (len > 0 && sodium_base642bin((unsigned char *)out, cap, in, len, NULL, out_len,
					 NULL, sodium_base64_VARIANT_ORIGINAL) != 0) {
		sodium_free(out);
		return NULL;
	}
	out[*out_len] = '\0';
	return out;
}

/* [authzid] NUL authcid NUL passwd (RFC 4616); an authzid must be the
 * authcid (nobody logs in as someone else). */
static void sasl_plain(imap_cmd *cmd, const char *b64, size_t b64_len)
{
	size_t n;
	char *raw = b64_decode(b64, b64_len, &n);
	const char *authc, *pw, *end;

	if (raw == NULL) {
		imap_cmd_done(cmd, IMAP_BAD, NULL, "Invalid base64.");
		return;
	}
	end = raw + n;
	authc = memchr(raw, '\0', n);
	pw = authc != NULL ? memchr(authc + 1, '\0', (size_t)(end - authc - 1)) : NULL;
	if (authc == NULL || pw == NULL ||
	    memchr(pw + 1, '\0', (size_t)(end - pw - 1)) != NULL ||
	    (authc > raw && strcmp(raw, authc + 1) != 0)) {
		sodium_free(raw);
		login_failed(cmd, ENG_EAUTH);
		return;
	}
	authc++;
	pw++;
	start_login(cmd, authc, strlen(authc), pw, (size_t)(end - pw));
	sodium_free(raw);
}

static void sasl_login_step(imap_cmd *cmd, const char *b64, size_t len);

static void on_sasl_line(imap_cmd *cmd, const char *line, size_t len)
{
	sasl_login *st = cmd->op;

	if (line == NULL) {
		sasl_free(cmd);
		imap_cmd_done(cmd, IMAP_BAD, NULL, "Invalid authentication response.");
		return;
	}
	if (len == 1 && line[0] == '*') {
		sasl_free(cmd);
		imap_cmd_done(cmd, IMAP_BAD, NULL, "Authentication cancelled.");
		return;
	}
	if (st == NULL)
		sasl_plain(cmd, line, len);
	else
		sasl_login_step(cmd, line, len);
}

/* AUTH=LOGIN: the user name, then the password, each base64. */
static void sasl_login_step(imap_cmd *cmd, const char *b64, size_t len)
{
	sasl_login *st = cmd->op;
	size_t n;
	char *raw = b64_decode(b64, len, &n);

	if (raw == NULL) {
		sasl_free(cmd);
		imap_cmd_done(cmd, IMAP_BAD, NULL, "Invalid base64.");
		return;
	}
	if (st->user == NULL) {
		st->user = eng_strndup(raw, n);
		sodium_free(raw);
		imap_printf(cmd->s, "+ UGFzc3dvcmQ6\r\n");      /* "Password:" */
		imap_cmd_read_line(cmd, on_sasl_line);
		return;
	}
	{
		char *user = st->user;

		st->user = NULL;
		sasl_free(cmd);
		cmd->on_abort = NULL;
		start_login(cmd, user, strlen(user), raw, n);
		free(user);
	}
	sodium_free(raw);
}

static void cmd_authenticate(imap_cmd *cmd)
{
	const char *mech = cmd->n_args >= 1 ? imap_arg_atom(&cmd->args[0]) : NULL;
	const char *ir = NULL;
	bool plain;

	if (mech == NULL || cmd->n_args > 2 ||
	    (cmd->n_args == 2 && (cmd->args[1].kind != IMAP_ARG_ATOM ||
				  cmd->args[1].len > SASL_MAX_BYTES))) {
		imap_cmd_done(cmd, IMAP_BAD, NULL, "AUTHENTICATE needs a mechanism.");
		return;
	}
	if (strcasecmp(mech, "PLAIN") != 0 && strcasecmp(mech, "LOGIN") != 0) {
		imap_cmd_done(cmd, IMAP_NO, NULL, "Unsupported authentication mechanism.");
		return;
	}
	if (refuse_plaintext(cmd))
		return;
	plain = strcasecmp(mech, "PLAIN") == 0;
	if (cmd->n_args == 2)
		ir = cmd->args[1].s;
	if (!plain) {
		cmd->op = eng_calloc(1, sizeof(sasl_login));
		cmd->on_abort = sasl_free;
	}
	if (ir != NULL) {
		if (plain)
			sasl_plain(cmd, ir, cmd->args[1].len);
		else
			sasl_login_step(cmd, ir, cmd->args[1].len);
		return;
	}
	imap_printf(cmd->s, plain ? "+ \r\n" : "+ VXNlcm5hbWU6\r\n");  /* "Username:" */
	imap_cmd_read_line(cmd, on_sasl_line);
}

/* ---- ENABLE (RFC 5161), ID (RFC 2971) ---- */

static void cmd_enable(imap_cmd *cmd)
{
	static const struct { const char *name; uint32_t bits; } exts[] = {
		{ "CONDSTORE", IMAP_EN_CONDSTORE },
		{ "QRESYNC", IMAP_EN_QRESYNC | IMAP_EN_CONDSTORE },
		{ "UTF8=ACCEPT", IMAP_EN_UTF8 },
		{ "IMAP4rev2", IMAP_EN_REV2 },
	};
	imap_session *s = cmd->s;
	eng_buf b = ENG_BUF_INIT;

	if (cmd->n_args == 0) {
		imap_cmd_done(cmd, IMAP_BAD, NULL, "ENABLE needs an extension.");
		return;
	}
	eng_buf_puts(&b, "* ENABLED");
	for (size_t i = 0; i < cmd->n_args; i++) {
		const char *a = imap_arg_atom(&cmd->args[i]);

		if (a == NULL) {
			eng_buf_free(&b);
			imap_cmd_done(cmd, IMAP_BAD, NULL, "ENABLE takes atoms.");
			return;
		}
		for (size_t k = 0; k < sizeof(exts) / sizeof(exts[0]); k++) {
			if (strcasecmp(a, exts[k].name) != 0 || (s->enabled & exts[k].bits) ==
			    exts[k].bits)
				continue;
			s->enabled |= exts[k].bits;
			eng_buf_printf(&b, " %s", exts[k].name);
		}
	}
	eng_buf_puts(&b, "\r\n");
	imap_write_buf(s, &b);
	eng_buf_free(&b);
	imap_cmd_done(cmd, IMAP_OK, NULL, "Enabled.");
}

static bool id_string(const imap_arg *a, size_t max)
{
	return a->kind == IMAP_ARG_NIL ||
	       ((a->kind == IMAP_ARG_QUOTED || a->kind == IMAP_ARG_LITERAL) &&
		a->len <= max && memchr(a->s, '\0', a->len) == NULL);
}

static void cmd_id(imap_cmd *cmd)
{
	const imap_arg *a = cmd->n_args == 1 ? &cmd->args[0] : NULL;

	if (a == NULL || (a->kind != IMAP_ARG_NIL && a->kind != IMAP_ARG_LIST)) {
		imap_cmd_done(cmd, IMAP_BAD, NULL, "ID needs a list or NIL.");
		return;
	}
	if (a->kind == IMAP_ARG_LIST) {
		if (a->n_list % 2 != 0 || a->n_list > 2 * ID_MAX_PAIRS) {
			imap_cmd_done(cmd, IMAP_BAD, NULL, "Invalid ID list.");
			return;
		}
		for (size_t i = 0; i < a->n_list; i += 2) {
			const imap_arg *k = &a->list[i], *v = &a->list[i + 1];

			if (k->kind == IMAP_ARG_NIL || !id_string(k, ID_MAX_FIELD) ||
			    !id_string(v, ID_MAX_VALUE)) {
				imap_cmd_done(cmd, IMAP_BAD, NULL, "Invalid ID list.");
				return;
			}
		}
	}
	imap_printf(cmd->s, "* ID (\"name\" \"Sealmail\" \"vendor\" \"Sealmail\" "
		    "\"support-url\" \"https://github.com/sealmail\")\r\n");
	imap_cmd_done(cmd, IMAP_OK, NULL, "ID completed.");
}

/* ---- IDLE (RFC 2177) ---- */

static unsigned idle_ticks;

static void on_idle_line(imap_cmd *cmd, const char *line, size_t len)
{
	imap_session_set_idling(cmd->s, false);
	if (line != NULL && len == 4 && strncasecmp(line, "DONE", 4) == 0)
		imap_cmd_done(cmd, IMAP_OK, NULL, "Idle completed.");
	else
		imap_cmd_done(cmd, IMAP_BAD, NULL, "Expected DONE.");
}

static void cmd_idle(imap_cmd *cmd)
{
	imap_session *s = cmd->s;

	if (cmd->n_args != 0) {
		imap_cmd_done(cmd, IMAP_BAD, NULL, "IDLE takes no arguments.");
		return;
	}
	imap_printf(s, "+ idling\r\n");
	imap_session_set_idling(s, true);
	imap_cmd_read_line(cmd, on_idle_line);
	if (s->sel != NULL)
		s->sel->dirty = true;
	imap_session_sync_now(s);
}

void imap_idle_keepalive(imapd *d)
{
	if (++idle_ticks % IDLE_KEEPALIVE_TICKS != 0)
		return;
	for (imap_session *s = d->sessions; s != NULL; s = s->next)
		if (s->idling && s->c != NULL)
			imap_printf(s, "* OK Still here\r\n");
}

const imap_cmd_def imap_auth_cmds[] = {
	{ "CAPABILITY", cmd_capability, IMAP_CF_ANY, false },
	{ "NOOP", cmd_noop, IMAP_CF_ANY | IMAP_CF_FORCE_SYNC, false },
	{ "LOGOUT", cmd_logout, IMAP_CF_ANY, false },
	{ "ID", cmd_id, IMAP_CF_ANY, false },
	{ "STARTTLS", cmd_starttls, IMAP_CF_NOTAUTH, false },
	{ "LOGIN", cmd_login, IMAP_CF_NOTAUTH, false },
	{ "AUTHENTICATE", cmd_authenticate, IMAP_CF_NOTAUTH, false },
	{ "ENABLE", cmd_enable, IMAP_CF_LOGGEDIN, false },
	{ "NAMESPACE", cmd_namespace, IMAP_CF_LOGGEDIN, false },
	{ "IDLE", cmd_idle, IMAP_CF_LOGGEDIN, false },
	{ "COMPRESS", cmd_compress, IMAP_CF_LOGGEDIN, false },
	{ NULL, NULL, 0, false },
};
