/*
 * One IMAP connection (imap.h explains the model): output (imap_write and
 * COMPRESS's deflate side), the session's lifetime, the selected mailbox,
 * RPC calls on behalf of commands, the command lifecycle, STARTTLS and
 * COMPRESS set-up, the one sqlited session per alias, the net callbacks.
 * Feeding the parser, dispatching through the command tables and APPEND
 * streaming are imap_input.c; the untagged updates (imap_sync) and IDLE's
 * plumbing are imap_sync.c; what the three share is
 * imap_session_private.h.
 *
 * Rules kept here:
 *
 *  - One command at a time. While s->cmd is set, input is held (the net
 *    layer buffers what the client pipelines, bounded), except while the
 *    command reads raw lines (AUTHENTICATE, IDLE) or streams an APPEND
 *    literal. The parser's memory (the command's arguments) is therefore
 *    untouched until imap_cmd_done.
 *  - imap_cmd_done may need an RPC (CHANGES) before the tagged line, and a
 *    command may still have RPCs in flight when it calls it (IDLE's sync
 *    when DONE arrives): the tagged line is written once both are over.
 *  - Lifetime: a session has a reference for its connection and one per
 *    RPC in flight; it (and a command still attached to it) is freed when
 *    the last goes. After the connection closed, RPC callbacks see
 *    RPC_ECANCELLED and cmd->aborted.
 *  - COMPRESS (RFC 4978): raw deflate both ways (input: imap_input.c).
 *    Output goes through
 *    deflate without flushing and is flushed (Z_SYNC_FLUSH) once per loop
 *    turn: one flush per batch of writes.
 *  - Client-visible texts are fixed sentences; the log gets addresses and
 *    error names, never a password or a session handle.
 */
#include "imap_session_private.h"

#include "eng_error.h"
#include "rpc_proto.h"

#include <sodium.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <zlib.h>

#define IMAP_DEFLATE_CHUNK 16384
/* Our deflate window: 8 KiB and memLevel 6 cost ~48 KiB per compressed
 * connection instead of zlib's default ~256 KiB; the client inflates any
 * window. */
#define IMAP_DEFLATE_WBITS (-13)
#define IMAP_DEFLATE_MEMLEVEL 6

typedef struct rpc_call_ctx {
	cmd_full *cf;
	imap_rpc_cb *cb;
	uint16_t opcode;
} rpc_call_ctx;

static void send_lock(imapd *d, const uint8_t *handle, size_t len);

static session_full *g_kick_list;

/* ---- output ---- */

void kick(session_full *f)
{
	if (!f->kick_pending) {
		f->kick_pending = true;
		f->kick_next = g_kick_list;
		g_kick_list = f;
	}
	imapd_kick_later(f->s.d);
}

static void deflate_out(imap_session *s, const void *data, size_t len, int flush)
{
	z_stream *z = s->zout;
	uint8_t chunk[IMAP_DEFLATE_CHUNK];

	z->next_in = (Bytef *)(uintptr_t)data;
	z->avail_in = (uInt)len;
	do {
		z->next_out = chunk;
		z->avail_out = sizeof(chunk);
		if (deflate(z, flush) == Z_STREAM_ERROR) {
			sm_net_abort(s->c);
			return;
		}
		if (sizeof(chunk) - z->avail_out > 0)
			sm_net_write(s->c, chunk, sizeof(chunk) - z->avail_out);
	} while (z->avail_out == 0 || z->avail_in > 0);
}

void imap_write(imap_session *s, const void *data, size_t len)
{
	if (s->c == NULL || sm_net_closing(s->c) || len == 0)
		return;
	if (s->zout == NULL) {
		sm_net_write(s->c, data, len);
		return;
	}
	deflate_out(s, data, len, Z_NO_FLUSH);
	if (!full(s)->flush_pending) {
		full(s)->flush_pending = true;
		kick(full(s));
	}
}

void imap_write_direct(imap_session *s, const void *data, size_t len)
{
	if (s->zout != NULL || s->c == NULL) {
		imap_write(s, data, len);
		return;
	}
	if (!sm_net_closing(s->c) && len > 0)
		sm_net_write_direct(s->c, data, len);
}

void imap_write_buf(imap_session *s, eng_buf *b)
{
	imap_write(s, b->data, b->len);
	eng_buf_reset(b);
}

/* Formatted on the stack (a heap buffer for a long line): a session keeps
 * no formatting buffer between its lines. */
void imap_printf(imap_session *s, const char *fmt, ...)
{
	char line[512];
	eng_buf b = ENG_BUF_INIT;
	va_list ap;
	int n;

	va_start(ap, fmt);
	n = vsnprintf(line, sizeof(line), fmt, ap);
	va_end(ap);
	if (n < 0)
		return;
	if ((size_t)n < sizeof(line)) {
		imap_write(s, line, (size_t)n);
		return;
	}
	va_start(ap, fmt);
	eng_buf_vprintf(&b, fmt, ap);
	va_end(ap);
	imap_write_buf(s, &b);
	eng_buf_free(&b);
}

bool imap_write_blocked(const imap_session *s)
{
	return s->c == NULL || sm_net_closing(s->c) || sm_net_write_blocked(s->c);
}

static void flush_deflate(session_full *f)
{
	f->flush_pending = false;
	if (f->s.zout != NULL && f->s.c != NULL && !sm_net_closing(f->s.c))
		deflate_out(&f->s, "", 0, Z_SYNC_FLUSH);
}

void imap_sessions_kick(imapd *d)
{
	session_full *list = g_kick_list;

	(void)d;
	groups_flush();
	g_kick_list = NULL;
	while (list != NULL) {
		session_full *f = list;

		list = f->kick_next;
		f->kick_pending = false;
		f->kick_next = NULL;
		if (f->s.c == NULL)
			continue;
		feed_inflated(f);
		if (f->flush_pending)
			flush_deflate(f);
	}
}

/* ---- lifetime ---- */

static void cmd_free(cmd_full *cf)
{
	if (cf == NULL)
		return;
	free(cf->cmd.tag);
	free(cf->code);
	free(cf->text);
	free(cf);
}

static void zstreams_free(imap_session *s)
{
	if (s->zin != NULL) {
		inflateEnd(s->zin);
		free(s->zin);
		s->zin = NULL;
	}
	if (s->zout != NULL) {
		deflateEnd(s->zout);
		free(s->zout);
		s->zout = NULL;
	}
}

static void session_free(imap_session *s)
{
	imapd *d = s->d;
	session_full *f = full(s);

	if (f->kick_pending) {
		for (session_full **pp = &g_kick_list; *pp != NULL; pp = &(*pp)->kick_next)
			if (*pp == f) {
				*pp = f->kick_next;
				break;
			}
	}
	if (s->prev != NULL)
		s->prev->next = s->next;
	else
		d->sessions = s->next;
	if (s->next != NULL)
		s->next->prev = s->prev;
	d->n_sessions--;
	cmd_free(cfull(s->cmd));
	imap_parser_free(&s->parser);
	imap_selected_free(s->sel);
	zstreams_free(s);
	eng_buf_free(&s->inflated);
	sodium_memzero(s->handle, sizeof(s->handle));
	free(s->user);
	free(f);
	imapd_activity(d);
	if (d->stopping && d->n_sessions == 0)
		imapd_sessions_gone(d);
}

void unref(imap_session *s)
{
	if (--s->refs == 0)
		session_free(s);
}

void imap_session_bye(imap_session *s, const char *text)
{
	if (s->c == NULL)
		return;
	imap_printf(s, "* BYE %s\r\n", text);
	if (s->zout != NULL)
		flush_deflate(full(s));
	sm_net_close(s->c);
}

/* ---- the selected mailbox ---- */

void imap_selected_free(imap_selected *sel)
{
	if (sel == NULL)
		return;
	free(sel->name);
	imap_view_uids_put(sel->uids, sel->cap);
	free(sel->saved);
	free(sel);
}

void imap_select_set(imap_session *s, imap_selected *sel)
{
	imap_selected_free(s->sel);
	s->sel = sel;
	s->state = IMAP_S_SELECTED;
}

void imap_select_clear(imap_session *s)
{
	imap_selected_free(s->sel);
	s->sel = NULL;
	if (s->state == IMAP_S_SELECTED)
		s->state = IMAP_S_AUTH;
}

/* ---- RPC on behalf of commands ---- */

void imap_rpc_begin(imap_session *s, eng_buf *payload)
{
	eng_buf_reset(payload);
	if (s->handle_len > 0)
		rpc_put_bytes(payload, RPC_T_SESSION, s->handle, s->handle_len);
}

static void on_rpc_answer(void *ctx, int err, const rpc_view *resp)
{
	rpc_call_ctx *rc = ctx;
	cmd_full *cf = rc->cf;
	imap_session *s = cf->cmd.s;
	imap_rpc_cb *cb = rc->cb;
	uint16_t opcode = rc->opcode;

	free(rc);
	cf->rpcs--;
	if (cf->cmd.aborted || s->c == NULL) {
		const uint8_t *h;
		size_t hlen;

		cf->cmd.aborted = true;
		/* A LOGIN whose client has gone: nobody here uses the session
		 * sqlited opened for it; end it rather than leave the alias
		 * unlocked until sqlited's session idle timeout. */
		if (err == 0 && opcode == RPC_OP_UNLOCK &&
		    rpc_get_bytes(resp, RPC_T_SESSION, &h, &hlen) == 0)
			send_lock(s->d, h, hlen);
		cb(&cf->cmd, RPC_ECANCELLED, NULL);
	} else {
		cb(&cf->cmd, err, resp);
		/* cf is freed if the command finished inside cb. */
		if (s->cmd == &cf->cmd && cf->rpcs == 0 && cf->done_pending &&
		    !cf->finishing && !cf->syncing)
			continue_done(cf);
	}
	unref(s);
}

int imap_rpc_call(imap_cmd *cmd, uint16_t opcode, const eng_buf *payload,
		  const rpc_client_opts *opts, imap_rpc_cb *cb)
{
	imap_session *s = cmd->s;
	rpc_call_ctx *rc;
	int err;

	if (s->c == NULL || cmd->aborted)
		return RPC_ECANCELLED;
	/* sqlited down: say so now rather than after the request timeout. */
	if (s->d->rpc == NULL || !rpc_client_connected(s->d->rpc))
		return RPC_EUNAVAILABLE;
	rc = eng_malloc(sizeof(*rc));
	rc->cf = cfull(cmd);
	rc->cb = cb;
	rc->opcode = opcode;
	err = rpc_client_call_ex(s->d->rpc, opcode, payload->data, payload->len, opts,
				 on_rpc_answer, rc, &cmd->rpc_id);
	if (err != 0) {
		free(rc);
		eng_log(ENG_LOG_WARN, "imap: cannot send %s to sqlited: %s",
			rpc_op_lookup(opcode) ? rpc_op_lookup(opcode)->name : "?",
			rpc_strerror(err));
		return err;
	}
	cfull(cmd)->rpcs++;
	s->refs++;
	return 0;
}

static bool err_temporary(int err)
{
	return err == ENG_EIO || err == ENG_ENOSPC || err == ENG_EBUSY ||
	       err == RPC_EUNAVAILABLE || err == RPC_ETIMEOUT || err == RPC_ENOTAUTH ||
	       err == RPC_ECANCELLED || err == RPC_ETOOMANY;
}

void imap_cmd_fail_rpc(imap_cmd *cmd, int err, const char *what)
{
	imap_session *s = cmd->s;

	if (err == RPC_ENOSESSION) {
		imap_session_handle_dead(s);
		eng_log(ENG_LOG_INFO, "imap: %s: the sqlited session of %s ended",
			s->c != NULL ? sm_net_peer_addr(s->c) : "-", s->user ? s->user : "-");
		imap_printf(s, "* BYE Session expired, please log in again.\r\n");
		s->state = IMAP_S_LOGOUT;
		imap_cmd_done(cmd, IMAP_NO, "UNAVAILABLE", "%s failed: session expired.", what);
		return;
	}
	if (err_temporary(err))
		imap_cmd_done(cmd, IMAP_NO, "UNAVAILABLE", "%s failed: temporary server "
			      "failure, try again later.", what);
	else if (err == ENG_EQUOTA)
		imap_cmd_done(cmd, IMAP_NO, "OVERQUOTA", "%s failed: quota exceeded.", what);
	else if (err == ENG_ENOTFOUND)
		imap_cmd_done(cmd, IMAP_NO, "NONEXISTENT", "%s failed: no such mailbox or "
			      "message.", what);
	else if (err == ENG_EEXIST)
		imap_cmd_done(cmd, IMAP_NO, "ALREADYEXISTS", "%s failed: it already "
			      "exists.", what);
	else if (err == ENG_EPERM)
		imap_cmd_done(cmd, IMAP_NO, "NOPERM", "%s failed: not allowed.", what);
	else if (err == ENG_EMODIFIED)
		imap_cmd_done(cmd, IMAP_NO, NULL, "%s failed: the mailbox changed.", what);
	else if (err == ENG_ELIMIT)
		imap_cmd_done(cmd, IMAP_NO, "LIMIT", "%s failed: a limit was exceeded.", what);
	else if (err == ENG_EINVAL || err == ENG_EMALFORMED)
		imap_cmd_done(cmd, IMAP_BAD, NULL, "%s failed: invalid arguments.", what);
	else {
		eng_log(ENG_LOG_WARN, "imap: %s failed: %s", what, rpc_strerror(err));
		imap_cmd_done(cmd, IMAP_NO, "SERVERBUG", "%s failed: internal error.", what);
	}
}

/* ---- the command lifecycle ---- */

void resume_input(imap_session *s)
{
	if (s->c == NULL)
		return;
	sm_net_resume(s->c);
	if (s->zin != NULL && s->inflated.len > 0)
		kick(full(s));
}

static void write_tagged(imap_session *s, cmd_full *cf)
{
	static const char *const words[] = { "OK", "NO", "BAD" };

	imap_printf(s, "%s %s %s%s%s%s\r\n", cf->cmd.tag, words[cf->r],
		    cf->code != NULL ? "[" : "", cf->code != NULL ? cf->code : "",
		    cf->code != NULL ? "] " : "", cf->text != NULL ? cf->text : "");
}

/* The updates are out: the tagged line, then the next command. */
static void finish_done(imap_cmd *cmd)
{
	cmd_full *cf = cfull(cmd);
	imap_session *s = cmd->s;
	void (*after)(imap_session *) = cf->after;

	if (cmd->aborted)
		return;              /* session_free frees it */
	write_tagged(s, cf);
	if (cf->r == IMAP_BAD) {
		if (++s->bad_count >= IMAP_MAX_BAD) {
			imap_session_bye(s, "Too many invalid commands.");
			s->state = IMAP_S_LOGOUT;
		}
	} else {
		s->bad_count = 0;
	}
	s->cmd = NULL;
	cmd_free(cf);
	imapd_activity(s->d);
	if (after != NULL)
		after(s);
	if (s->state == IMAP_S_LOGOUT) {
		/* LOGOUT (or a dead sqlited session) wrote its BYE already. */
		if (s->c != NULL) {
			if (s->zout != NULL)
				flush_deflate(full(s));
			sm_net_close(s->c);
		}
		return;
	}
	resume_input(s);
}

void continue_done(cmd_full *cf)
{
	imap_session *s = cf->cmd.s;

	cf->finishing = true;
	if (s->sel != NULL && s->state != IMAP_S_LOGOUT && cf->r != IMAP_BAD &&
	    (s->sel->dirty || (cf->cmd.flags & IMAP_CF_FORCE_SYNC)))
		imap_sync(&cf->cmd, !(cf->cmd.flags & IMAP_CF_NO_EXPUNGE), finish_done);
	else
		finish_done(&cf->cmd);
}

void imap_cmd_done(imap_cmd *cmd, enum imap_result r, const char *code,
		   const char *fmt, ...)
{
	cmd_full *cf = cfull(cmd);
	imap_session *s = cmd->s;
	session_full *f = full(s);
	eng_buf b = ENG_BUF_INIT;
	va_list ap;

	if (cf->done_pending)
		return;              /* only once */
	va_start(ap, fmt);
	eng_buf_vprintf(&b, fmt, ap);
	va_end(ap);
	cf->done_pending = true;
	cf->r = r;
	cf->code = code != NULL ? eng_strdup(code) : NULL;
	cf->text = eng_buf_steal(&b, NULL);
	cf->line_fn = NULL;
	s->idling = false;
	if (f->streaming) {
		/* The APPEND answered before its literals ended: skip the rest. */
		f->streaming = false;
		f->discard_owed = true;
		if (s->parser != NULL)
			imap_parser_skip_command(s->parser);
	}
	if (cmd->aborted)
		return;
	if (cf->rpcs == 0 && !cf->syncing)
		continue_done(cf);
}

void imap_cmd_set_after(imap_cmd *cmd, void (*after)(imap_session *s))
{
	cfull(cmd)->after = after;
}

void imap_cmd_read_line(imap_cmd *cmd, imap_line_fn *fn)
{
	imap_session *s = cmd->s;

	cfull(cmd)->line_fn = fn;
	imap_parser_expect_line(s->parser);
	resume_input(s);
}

/* ---- STARTTLS, COMPRESS ---- */

void imap_session_starttls(imap_session *s)
{
	imap_parser_limits lim;

	if (s->c == NULL || sm_net_starttls(s->c) != 0)
		return;
	full(s)->mode_switch = true;
	/* Nothing the client sent in plaintext survives, parsed or not. */
	imap_parser_free(&s->parser);
	imap_parser_limits_default(&lim);
	lim.append_max = s->d->append_max;
	s->parser = imap_parser_new(&lim);
	if (s->parser == NULL)
		eng_oom(sizeof(lim));
}

int imap_session_compress(imap_session *s)
{
	z_stream *zi, *zo;

	if (s->zin != NULL)
		return ENG_EEXIST;
	zi = eng_calloc(1, sizeof(*zi));
	zo = eng_calloc(1, sizeof(*zo));
	if (inflateInit2(zi, -15) != Z_OK ||
	    deflateInit2(zo, Z_DEFAULT_COMPRESSION, Z_DEFLATED, IMAP_DEFLATE_WBITS,
			 IMAP_DEFLATE_MEMLEVEL, Z_DEFAULT_STRATEGY) != Z_OK)
		eng_oom(sizeof(*zi));
	s->zin = zi;
	s->zout = zo;
	full(s)->mode_switch = true;
	return 0;
}

/*
 * ---- one sqlited session per alias per process ----
 *
 * Every LOGIN still runs UNLOCK (the password is proven each time; a
 * repeated login takes sqlited's fast path). When this process already
 * holds a live session of that alias, the new handle is LOCKed at once
 * and the connection uses the held one; otherwise the new one becomes the
 * held one. The last connection of the alias to close LOCKs it, so no
 * session outlives its last user here. A handle that got ENOSESSION
 * (idle timeout, password change, alias removed) is "dead": its users
 * keep it until they close (their next request says BYE), new logins
 * start a fresh one. Sessions are never shared across alias ids; handles
 * never reach the log.
 */
static alias_sess *g_alias_sessions;

static void on_lock_answer(void *ctx, int err, const rpc_view *resp)
{
	(void)ctx;
	(void)resp;
	if (err != 0 && err != RPC_ENOSESSION && err != RPC_ECANCELLED)
		eng_log(ENG_LOG_INFO, "imap: LOCK of an unused sqlited session: %s",
			rpc_strerror(err));
}

/* Ends a sqlited session nobody here uses (best effort: if it cannot be
 * sent, sqlited's idle timeout ends it). */
static void send_lock(imapd *d, const uint8_t *handle, size_t len)
{
	eng_buf pl = ENG_BUF_INIT;

	if (d->rpc == NULL || !rpc_client_connected(d->rpc) || len == 0)
		return;
	rpc_put_bytes(&pl, RPC_T_SESSION, handle, len);
	if (rpc_client_call_ex(d->rpc, RPC_OP_LOCK, pl.data, pl.len, NULL,
			       on_lock_answer, NULL, NULL) != 0)
		eng_log(ENG_LOG_INFO, "imap: cannot LOCK an unused sqlited session");
	eng_buf_free_wipe(&pl);
}

static alias_sess *alias_sess_find(const char *alias_id)
{
	for (alias_sess *a = g_alias_sessions; a != NULL; a = a->next)
		if (!a->dead && strcmp(a->alias_id, alias_id) == 0)
			return a;
	return NULL;
}

/* s logged in with (handle, len): s->handle is the session it will use. */
static void alias_sess_acquire(imap_session *s, const uint8_t *handle, size_t len)
{
	alias_sess *a = s->alias_id[0] != '\0' ? alias_sess_find(s->alias_id) : NULL;

	if (a != NULL) {
		if (a->handle_len != len || sodium_memcmp(a->handle, handle, len) != 0)
			send_lock(s->d, handle, len);
	} else {
		a = eng_calloc(1, sizeof(*a));
		snprintf(a->alias_id, sizeof(a->alias_id), "%s", s->alias_id);
		memcpy(a->handle, handle, len);
		a->handle_len = len;
		a->next = g_alias_sessions;
		g_alias_sessions = a;
	}
	a->users++;
	full(s)->as = a;
	memcpy(s->handle, a->handle, a->handle_len);
	s->handle_len = a->handle_len;
}

/* s's connection ended: the last user of a live session LOCKs it. */
static void alias_sess_release(imap_session *s)
{
	alias_sess *a = full(s)->as;

	full(s)->as = NULL;
	if (a == NULL || --a->users > 0)
		return;
	if (!a->dead)
		send_lock(s->d, a->handle, a->handle_len);
	for (alias_sess **pp = &g_alias_sessions; *pp != NULL; pp = &(*pp)->next)
		if (*pp == a) {
			*pp = a->next;
			break;
		}
	sodium_memzero(a->handle, sizeof(a->handle));
	free(a);
}

void imap_session_handle_dead(imap_session *s)
{
	if (full(s)->as != NULL)
		full(s)->as->dead = true;
}

void imap_session_logged_in(imap_session *s, const uint8_t *handle,
			    size_t handle_len, const char *alias_id,
			    const char *user)
{
	if (handle_len > sizeof(s->handle))
		handle_len = sizeof(s->handle);
	snprintf(s->alias_id, sizeof(s->alias_id), "%s", alias_id);
	alias_sess_release(s);       /* a second LOGIN cannot happen; be safe */
	alias_sess_acquire(s, handle, handle_len);
	free(s->user);
	s->user = eng_strdup(user);
	s->state = IMAP_S_AUTH;
	s->auth_failures = 0;
	imap_parser_set_line_max(s->parser, IMAP_LINE_MAX_AUTH);
	imap_events_subscribe(s->d, s->alias_id);
}

/* ---- net callbacks ---- */

static void on_accept(sm_net_conn *c, void *lctx)
{
	imapd *d = lctx;
	session_full *f;
	imap_session *s;
	imap_parser_limits lim;
	eng_buf b = ENG_BUF_INIT;

	if (d->stopping) {
		sm_net_abort(c);
		return;
	}
	f = eng_calloc(1, sizeof(*f));
	s = &f->s;
	s->d = d;
	s->c = c;
	s->refs = 1;
	s->state = IMAP_S_NOTAUTH;
	imap_parser_limits_default(&lim);
	lim.append_max = d->append_max;
	s->parser = imap_parser_new(&lim);
	if (s->parser == NULL)
		eng_oom(sizeof(lim));
	s->next = d->sessions;
	if (d->sessions != NULL)
		d->sessions->prev = s;
	d->sessions = s;
	d->n_sessions++;
	sm_net_set_ctx(c, s);
	eng_buf_puts(&b, "* OK [CAPABILITY ");
	imap_capability(s, &b);
	eng_buf_puts(&b, "] Sealmail ready.\r\n");
	imap_write_buf(s, &b);
	eng_buf_free(&b);
}

static void on_drained(sm_net_conn *c, void *ctx)
{
	imap_session *s = ctx;

	(void)c;
	if (s != NULL && s->cmd != NULL && s->cmd->on_drained != NULL &&
	    !cfull(s->cmd)->done_pending)
		s->cmd->on_drained(s->cmd);
}

static void on_close(sm_net_conn *c, void *ctx, enum sm_net_reason why)
{
	imap_session *s = ctx;

	(void)c;
	(void)why;
	if (s == NULL)
		return;
	s->c = NULL;
	s->idling = false;
	if (s->cmd != NULL && !s->cmd->aborted) {
		s->cmd->aborted = true;
		if (s->cmd->on_abort != NULL && !cfull(s->cmd)->done_pending)
			s->cmd->on_abort(s->cmd);
	}
	if (s->state != IMAP_S_NOTAUTH && s->alias_id[0] != '\0')
		imap_events_unsubscribe(s->d, s->alias_id);
	alias_sess_release(s);
	unref(s);
}

const sm_net_callbacks imap_net_callbacks = {
	.on_accept = on_accept,
	.on_data = on_data,
	.on_drained = on_drained,
	.on_close = on_close,
};

void imap_sessions_shutdown(imapd *d)
{
	for (imap_session *s = d->sessions; s != NULL; s = s->next) {
		if (s->c == NULL || sm_net_closing(s->c))
			continue;
		imap_session_bye(s, "Server shutting down.");
	}
}
