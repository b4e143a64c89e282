/*
 * One IMAP connection (imap.h explains the model): the net callbacks,
 * feeding the parser, dispatching through the command tables, the command
 * lifecycle, RPC calls on behalf of commands, the untagged updates
 * (imap_sync), COMPRESS=DEFLATE, STARTTLS and IDLE's plumbing.
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
 *  - Updates (imap_sync): EXPUNGE/VANISHED only where the command allows
 *    them; expunges held back leave the messages in the sequence map and
 *    HIGHESTMODSEQ where it was, so the next sync that may report them
 *    finds them again (RFC 3501 7.4.1, RFC 7162 3.2.10).
 *  - COMPRESS (RFC 4978): raw deflate both ways. Input is inflated at most
 *    IMAP_INFLATE_CHUNK at a time and only when the previous inflated bytes
 *    were parsed, so it is bounded like plain input (and freed once
 *    parsed). Output goes through
 *    deflate without flushing and is flushed (Z_SYNC_FLUSH) once per loop
 *    turn: one flush per batch of writes.
 *  - Client-visible texts are fixed sentences; the log gets addresses and
 *    error names, never a password or a session handle.
 */
#include "imap_daemon.h"

#include "eng_error.h"
#include "rpc_proto.h"

#include <sodium.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <zlib.h>

#define IMAP_INFLATE_CHUNK 16384
#define IMAP_DEFLATE_CHUNK 16384
/* Our deflate window: 8 KiB and memLevel 6 cost ~48 KiB per compressed
 * connection instead of zlib's default ~256 KiB; the client inflates any
 * window. */
#define IMAP_DEFLATE_WBITS (-13)
#define IMAP_DEFLATE_MEMLEVEL 6

typedef struct session_full session_full;

/* One sqlited session per alias per process, shared by the connections of
 * that alias while any uses it (imap_session_logged_in). */
typedef struct alias_sess {
	struct alias_sess *next;
	char alias_id[sizeof(((imap_session *)0)->alias_id)];
	uint8_t handle[sizeof(((imap_session *)0)->handle)];
	size_t handle_len;
	unsigned users;
	bool dead;                   /* ENOSESSION seen: not for new logins */
} alias_sess;

/* A command as the session layer keeps it. */
typedef struct cmd_full {
	imap_cmd cmd;                /* first: imap_cmd * converts */
	unsigned rpcs;               /* RPC callbacks still to come */
	bool done_pending;           /* imap_cmd_done was called */
	bool finishing;              /* the tagged line is on its way */
	enum imap_result r;
	char *code;
	char *text;
	imap_cmd_fn *fn;             /* the handler (APPEND: called again) */
	imap_line_fn *line_fn;       /* reading a raw line */
	void (*after)(imap_session *s);
	/* imap_sync */
	bool syncing;
	bool resync;                 /* an event came during an IDLE sync */
	bool allow_expunge;
	void (*sync_done)(imap_cmd *cmd);
	int sync_err;
} cmd_full;

struct session_full {
	imap_session s;              /* first: imap_session * converts */
	bool streaming;              /* inside a streamed APPEND */
	bool discard_owed;           /* the APPEND ended: drop append_owed */
	bool owed_hold;              /* until imap_append_resume */
	uint64_t append_owed;        /* literal bytes reported but not taken */
	bool mode_switch;            /* STARTTLS / COMPRESS: stop this feed */
	bool kick_pending;
	bool flush_pending;          /* deflated output waits for a flush */
	session_full *kick_next;
	alias_sess *as;              /* logged in: the shared sqlited session */
};

typedef struct rpc_call_ctx {
	cmd_full *cf;
	imap_rpc_cb *cb;
	uint16_t opcode;
} rpc_call_ctx;

static void send_lock(imapd *d, const uint8_t *handle, size_t len);

static session_full *g_kick_list;

static session_full *full(imap_session *s)
{
	return (session_full *)s;
}

static cmd_full *cfull(imap_cmd *cmd)
{
	return (cmd_full *)cmd;
}

static void feed_inflated(session_full *f);
static void continue_done(cmd_full *cf);
static void idle_synced(imap_cmd *cmd);
static void groups_flush(void);

/* ---- output ---- */

static void kick(session_full *f)
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
	if (d->stopping && d->n_sessions == 0)
		imapd_sessions_gone(d);
}

static void unref(imap_session *s)
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
	imap_view_arrays_put(sel->uids, sel->flags, sel->cap);
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

/* ---- imap_sync ---- */

/* "lo" or "lo:hi" onto a comma-separated set. */
static void put_range(eng_buf *b, uint32_t lo, uint32_t hi)
{
	if (b->len > 0)
		eng_buf_putc(b, ',');
	if (lo == hi)
		eng_buf_printf(b, "%u", lo);
	else
		eng_buf_printf(b, "%u:%u", lo, hi);
}

/* Writes "* VANISHED set" (QRESYNC) or "* n EXPUNGE" (descending, so the
 * numbers stay right) for the map's UIDs in vanished and removes them. */
static void report_expunges(imap_session *s, imap_selected *sel, const eng_uidset *vanished)
{
	eng_buf b = ENG_BUF_INIT;
	size_t w = 0;

	if (s->enabled & IMAP_EN_QRESYNC) {
		uint32_t lo = 0, hi = 0;

		for (size_t i = 0; i < sel->n; i++) {
			uint32_t u = sel->uids[i];

			if (!eng_uidset_contains(vanished, u))
				continue;
			if (lo != 0 && u == hi + 1) {
				hi = u;
				continue;
			}
			if (lo != 0)
				put_range(&b, lo, hi);
			lo = hi = u;
		}
		if (lo != 0)
			put_range(&b, lo, hi);
		if (b.len > 0)
			imap_printf(s, "* VANISHED %s\r\n", b.data);
	} else {
		for (size_t i = sel->n; i-- > 0;)
			if (eng_uidset_contains(vanished, sel->uids[i]))
				eng_buf_printf(&b, "* %zu EXPUNGE\r\n", i + 1);
		imap_write_buf(s, &b);
	}
	eng_buf_free(&b);
	for (size_t i = 0; i < sel->n; i++) {
		if (eng_uidset_contains(vanished, sel->uids[i]))
			continue;
		sel->uids[w] = sel->uids[i];
		sel->flags[w] = sel->flags[i];
		w++;
	}
	sel->n = w;
}

/* Index of the first UID >= uid in the map. */
static size_t map_lower_bound(const imap_selected *sel, uint32_t uid)
{
	size_t a = 0, z = sel->n;

	while (a < z) {
		size_t m = a + (z - a) / 2;

		if (sel->uids[m] < uid)
			a = m + 1;
		else
			z = m;
	}
	return a;
}

static bool map_has_any(const imap_selected *sel, const eng_uidset *set)
{
	for (size_t i = 0; i < set->count; i++) {
		size_t a = map_lower_bound(sel, set->ranges[i].lo);

		if (a < sel->n && sel->uids[a] <= set->ranges[i].hi)
			return true;
	}
	return false;
}

static void map_append(imap_selected *sel, uint32_t uid, uint32_t flags)
{
	if (sel->n == sel->cap) {
		sel->cap = sel->cap ? sel->cap * 2 : 64;
		sel->uids = eng_realloc(sel->uids, sel->cap * sizeof(*sel->uids));
		sel->flags = eng_realloc(sel->flags, sel->cap * sizeof(*sel->flags));
	}
	sel->uids[sel->n] = uid;
	sel->flags[sel->n] = flags;
	sel->n++;
}

static int cmp_u32(const void *a, const void *b)
{
	uint32_t x = *(const uint32_t *)a, y = *(const uint32_t *)b;

	return x < y ? -1 : x > y;
}

/* New messages (UIDs above the map's last): appended, then one EXISTS. */
static void report_new(imap_session *s, imap_selected *sel, const rpc_view *resp)
{
	size_t n = rpc_count(resp, RPC_T_MESSAGE), k = 0;
	uint32_t last = sel->n > 0 ? sel->uids[sel->n - 1] : 0;
	uint32_t *fresh;
	rpc_iter it;
	const rpc_field *fl;

	if (n == 0)
		return;
	fresh = eng_calloc(n * 2, sizeof(*fresh));
	rpc_iter_init(&it, resp);
	while ((fl = rpc_iter_next(&it, RPC_T_MESSAGE)) != NULL && k < n) {
		rpc_view g = rpc_field_group(fl);
		uint32_t uid, flags = 0;

		if (rpc_get_u32(&g, RPC_T_UID, &uid) != 0 || uid <= last)
			continue;
		rpc_get_u32(&g, RPC_T_FLAGS, &flags);
		fresh[2 * k] = uid;
		fresh[2 * k + 1] = flags;
		k++;
	}
	qsort(fresh, k, 2 * sizeof(*fresh), cmp_u32);
	for (size_t i = 0; i < k; i++)
		if (i == 0 || fresh[2 * i] != fresh[2 * (i - 1)])
			map_append(sel, fresh[2 * i], fresh[2 * i + 1]);
	if (k > 0) {
		if (sel->uidnext <= sel->uids[sel->n - 1])
			sel->uidnext = sel->uids[sel->n - 1] + 1;
		imap_printf(s, "* %zu EXISTS\r\n", sel->n);
	}
	free(fresh);
}

/* Changed flags of messages in the map: FETCH (UID FLAGS [MODSEQ]). */
static void report_flags(imap_session *s, imap_selected *sel, const rpc_view *resp,
			 uint32_t last_before)
{
	bool condstore = (s->enabled & (IMAP_EN_CONDSTORE | IMAP_EN_QRESYNC)) != 0;
	rpc_iter it;
	const rpc_field *fl;
	eng_buf b = ENG_BUF_INIT;

	rpc_iter_init(&it, resp);
	while ((fl = rpc_iter_next(&it, RPC_T_MESSAGE)) != NULL) {
		rpc_view g = rpc_field_group(fl);
		uint32_t uid, flags = 0, seq;
		uint64_t modseq = 0;
		size_t nk = rpc_count(&g, RPC_T_KEYWORD), i = 0;
		char **kw;
		rpc_iter ki;
		const rpc_field *kf;

		if (rpc_get_u32(&g, RPC_T_UID, &uid) != 0 || uid > last_before ||
		    (seq = imap_seq_of_uid(sel, uid)) == 0)
			continue;
		rpc_get_u32(&g, RPC_T_FLAGS, &flags);
		rpc_get_u64(&g, RPC_T_MODSEQ, &modseq);
		/* A coalesced sync asked from a lower MODSEQ than this view's:
		 * what the view has reported already is not repeated. */
		if (modseq != 0 && modseq <= sel->highestmodseq)
			continue;
		kw = eng_calloc(nk + 1, sizeof(*kw));
		rpc_iter_init(&ki, &g);
		while ((kf = rpc_iter_next(&ki, RPC_T_KEYWORD)) != NULL && i < nk)
			kw[i++] = eng_strndup((const char *)kf->data, (size_t)kf->u);
		sel->flags[seq - 1] = flags;
		eng_buf_printf(&b, "* %u FETCH (UID %u FLAGS ", seq, uid);
		imap_put_flags(&b, flags, (const char *const *)kw, i);
		if (condstore)
			eng_buf_printf(&b, " MODSEQ (%llu)", (unsigned long long)modseq);
		eng_buf_puts(&b, ")\r\n");
		imap_write_buf(s, &b);
		while (i > 0)
			free(kw[--i]);
		free(kw);
	}
	eng_buf_free(&b);
}

static void sync_finish(cmd_full *cf)
{
	void (*done)(imap_cmd *) = cf->sync_done;

	cf->syncing = false;
	cf->sync_done = NULL;
	if (done != NULL)
		done(&cf->cmd);
}

static void on_changes(imap_cmd *cmd, int err, const rpc_view *resp)
{
	cmd_full *cf = cfull(cmd);
	imap_session *s = cmd->s;
	imap_selected *sel = s->sel;
	eng_uidset vanished = { NULL, 0, 0 };
	uint64_t hms = 0;
	uint32_t last_before;
	bool held = false;

	if (err == RPC_ECANCELLED && cmd->aborted) {
		cf->syncing = false;
		return;
	}
	cf->sync_err = err;
	if (sel == NULL) {
		sync_finish(cf);
		return;
	}
	if (err != 0) {
		sel->dirty = true;
		if (err == RPC_ENOSESSION)
			imap_session_handle_dead(s);
		if (err == RPC_ENOSESSION || err == ENG_EMODIFIED || err == ENG_ENOTFOUND) {
			/* The session ended, or the mailbox is not the one selected
			 * any more (deleted, recreated): the view cannot be kept. */
			eng_log(ENG_LOG_INFO, "imap: %s: sync of the selected mailbox: %s",
				sm_net_peer_addr(s->c), rpc_strerror(err));
			imap_session_bye(s, err == RPC_ENOSESSION ? "Session expired, please "
					 "log in again." : "The selected mailbox was removed.");
		} else {
			eng_log(ENG_LOG_WARN, "imap: CHANGES failed: %s", rpc_strerror(err));
		}
		sync_finish(cf);
		return;
	}
	rpc_get_uidset(resp, RPC_T_VANISHED, 1u << 20, &vanished);
	rpc_get_u64(resp, RPC_T_HIGHESTMODSEQ, &hms);
	if (vanished.count > 0 && map_has_any(sel, &vanished)) {
		if (cf->allow_expunge)
			report_expunges(s, sel, &vanished);
		else
			held = true;
	}
	last_before = sel->n > 0 ? sel->uids[sel->n - 1] : 0;
	report_new(s, sel, resp);
	report_flags(s, sel, resp, last_before);
	if (held)
		sel->dirty = true;     /* reported by the next command allowing it */
	else if (hms > sel->highestmodseq)
		sel->highestmodseq = hms;
	eng_uidset_free(&vanished);
	sync_finish(cf);
}

void imap_sync(imap_cmd *cmd, bool allow_expunge, void (*done)(imap_cmd *cmd))
{
	cmd_full *cf = cfull(cmd);
	imap_session *s = cmd->s;
	eng_buf pl = ENG_BUF_INIT;
	int err;

	cf->sync_err = 0;
	if (s->sel == NULL || s->c == NULL || cmd->aborted || cf->syncing) {
		if (cf->syncing)
			cf->resync = true;
		done(cmd);
		return;
	}
	s->sel->dirty = false;       /* events during the call set it again */
	cf->syncing = true;
	cf->allow_expunge = allow_expunge;
	cf->sync_done = done;
	imap_rpc_begin(s, &pl);
	rpc_put_str(&pl, RPC_T_MAILBOX, s->sel->name);
	rpc_put_u64(&pl, RPC_T_MODSEQ, s->sel->highestmodseq);
	rpc_put_u64(&pl, RPC_T_UIDVALIDITY, s->sel->uidvalidity);
	err = imap_rpc_call(cmd, RPC_OP_CHANGES, &pl, NULL, on_changes);
	eng_buf_free_wipe(&pl);
	if (err != 0) {
		cf->syncing = false;
		cf->sync_done = NULL;
		cf->sync_err = err;
		s->sel->dirty = true;
		done(cmd);
	}
}

int imap_cmd_sync_error(const imap_cmd *cmd)
{
	return ((const cmd_full *)cmd)->sync_err;
}

/*
 * ---- coalesced syncs of idling sessions ----
 *
 * An event for (alias, mailbox) makes every idling session of that
 * mailbox want a sync. Instead of one CHANGES each, they join a group
 * keyed by (alias id, mailbox, UIDVALIDITY); from a later loop turn (so
 * that every session an event reaches has joined) the group sends ONE
 * CHANGES from the lowest HIGHESTMODSEQ of its members, and its answer
 * goes through each member's own on_changes (which skips what that view
 * has reported already: report_flags' MODSEQ test, report_new's UID test,
 * report_expunges' map test). One call per group is in flight; sessions
 * that join meanwhile wait for the next. Each member holds a session
 * reference until the answer. Commands other than IDLE keep imap_sync.
 * Errors that concern one view (ENOSESSION, EMODIFIED, ENOTFOUND) send
 * each member to its own imap_sync, which decides for it.
 */
typedef struct sync_group {
	struct sync_group *next;
	imapd *d;
	char alias_id[sizeof(((imap_session *)0)->alias_id)];
	char *mailbox;
	uint32_t uidvalidity;
	bool in_flight;
	imap_session **call;         /* answered by the call in flight */
	size_t n_call;
	imap_session **wait;         /* for the next call */
	size_t n_wait, cap_wait;
} sync_group;

static sync_group *g_groups;

static sync_group *group_get(imap_session *s)
{
	sync_group *g;

	for (g = g_groups; g != NULL; g = g->next)
		if (g->d == s->d && g->uidvalidity == s->sel->uidvalidity &&
		    strcmp(g->alias_id, s->alias_id) == 0 &&
		    strcmp(g->mailbox, s->sel->name) == 0)
			return g;
	g = eng_calloc(1, sizeof(*g));
	g->d = s->d;
	snprintf(g->alias_id, sizeof(g->alias_id), "%s", s->alias_id);
	g->mailbox = eng_strdup(s->sel->name);
	g->uidvalidity = s->sel->uidvalidity;
	g->next = g_groups;
	g_groups = g;
	return g;
}

static void group_free_if_idle(sync_group *g)
{
	if (g->in_flight || g->n_wait > 0)
		return;
	for (sync_group **pp = &g_groups; *pp != NULL; pp = &(*pp)->next)
		if (*pp == g) {
			*pp = g->next;
			break;
		}
	free(g->mailbox);
	free(g->call);
	free(g->wait);
	free(g);
}

/* s (idling, its command not syncing) waits for its group's next call. */
static void group_join(imap_session *s, cmd_full *cf)
{
	sync_group *g = group_get(s);

	cf->sync_err = 0;
	s->sel->dirty = false;       /* events during the call set it again */
	cf->syncing = true;
	cf->allow_expunge = true;
	cf->sync_done = idle_synced;
	s->refs++;
	if (g->n_wait == g->cap_wait) {
		g->cap_wait = g->cap_wait ? g->cap_wait * 2 : 8;
		g->wait = eng_realloc(g->wait, g->cap_wait * sizeof(*g->wait));
	}
	g->wait[g->n_wait++] = s;
	imapd_kick_later(s->d);
}

/* The call's answer (or its failure) to each member, then drop them. */
static void group_fan_out(sync_group *g, int err, const rpc_view *resp)
{
	imap_session **call = g->call;
	size_t n = g->n_call;
	bool own = err == RPC_ENOSESSION || err == ENG_EMODIFIED || err == ENG_ENOTFOUND;

	g->call = NULL;
	g->n_call = 0;
	if (err != 0 && !own)
		eng_log(ENG_LOG_WARN, "imap: CHANGES for %zu idling sessions failed: %s", n,
			rpc_strerror(err));
	for (size_t i = 0; i < n; i++) {
		imap_session *s = call[i];
		cmd_full *cf = cfull(s->cmd);

		if (cf == NULL) {
			unref(s);
			continue;
		}
		if (s->c == NULL || cf->cmd.aborted || s->sel == NULL) {
			cf->syncing = false;
			cf->sync_done = NULL;
		} else if (own) {
			cf->syncing = false;
			imap_sync(&cf->cmd, true, idle_synced);
		} else if (err != 0) {
			cf->sync_err = err;
			s->sel->dirty = true;
			cf->syncing = false;
			cf->sync_done = NULL;
			idle_synced(&cf->cmd);
		} else {
			on_changes(&cf->cmd, 0, resp);
		}
		unref(s);
	}
	free(call);
}

static void on_group_changes(void *ctx, int err, const rpc_view *resp)
{
	sync_group *g = ctx;

	g->in_flight = false;
	group_fan_out(g, err, resp);
	/* Sessions that joined meanwhile (or again, from the fan-out) go
	 * together from the next loop turn. */
	if (g->n_wait > 0)
		imapd_kick_later(g->d);
	group_free_if_idle(g);
}

/* The waiting members become the call's; one CHANGES for them all. */
static void group_send(sync_group *g)
{
	imap_session *h = NULL;
	uint64_t from = UINT64_MAX;
	eng_buf pl = ENG_BUF_INIT;
	uint32_t id;
	int err = RPC_EUNAVAILABLE;

	g->call = g->wait;
	g->n_call = g->n_wait;
	g->wait = NULL;
	g->n_wait = g->cap_wait = 0;
	for (size_t i = 0; i < g->n_call; i++) {
		imap_session *s = g->call[i];

		if (s->c == NULL || s->sel == NULL || s->handle_len == 0)
			continue;
		/* A handle sqlited still knows, if any member has one. */
		if (h == NULL || (full(h)->as != NULL && full(h)->as->dead &&
				  full(s)->as != NULL && !full(s)->as->dead))
			h = s;
		if (s->sel->highestmodseq < from)
			from = s->sel->highestmodseq;
	}
	if (h == NULL) {
		group_fan_out(g, RPC_ECANCELLED, NULL);
		return;
	}
	imap_rpc_begin(h, &pl);
	rpc_put_str(&pl, RPC_T_MAILBOX, g->mailbox);
	rpc_put_u64(&pl, RPC_T_MODSEQ, from);
	rpc_put_u64(&pl, RPC_T_UIDVALIDITY, g->uidvalidity);
	if (g->d->rpc != NULL && rpc_client_connected(g->d->rpc))
		err = rpc_client_call_ex(g->d->rpc, RPC_OP_CHANGES, pl.data, pl.len, NULL,
					 on_group_changes, g, &id);
	eng_buf_free_wipe(&pl);
	if (err != 0) {
		group_fan_out(g, err, NULL);
		return;
	}
	g->in_flight = true;
}

/* From imap_sessions_kick's loop turn: send what waits. */
static void groups_flush(void)
{
	sync_group *g = g_groups, *next;

	for (; g != NULL; g = next) {
		next = g->next;
		if (!g->in_flight && g->n_wait > 0)
			group_send(g);
		group_free_if_idle(g);
	}
}

/* ---- the command lifecycle ---- */

static void resume_input(imap_session *s)
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

static void continue_done(cmd_full *cf)
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

/* ---- dispatch ---- */

static const imap_cmd_def *const *tables(void)
{
	static const imap_cmd_def *const t[] = {
		imap_auth_cmds, imap_mailbox_cmds, imap_fetch_cmds, imap_message_cmds, NULL,
	};

	return t;
}

static const imap_cmd_def *cmd_lookup(const char *name)
{
	for (const imap_cmd_def *const *t = tables(); *t != NULL; t++)
		for (const imap_cmd_def *d = *t; d->name != NULL; d++)
			if (strcasecmp(d->name, name) == 0)
				return d;
	return NULL;
}

static void untagged_bad(imap_session *s, const char *tag, const char *text)
{
	if (tag != NULL)
		imap_printf(s, "%s BAD %s\r\n", tag, text);
	else
		imap_printf(s, "* BAD %s\r\n", text);
	if (++s->bad_count >= IMAP_MAX_BAD) {
		eng_log(ENG_LOG_INFO, "imap: %s: too many invalid commands",
			sm_net_peer_addr(s->c));
		imap_session_bye(s, "Too many invalid commands.");
	}
}

static const uint32_t state_bits[] = {
	[IMAP_S_NOTAUTH] = IMAP_CF_NOTAUTH,
	[IMAP_S_AUTH] = IMAP_CF_AUTH,
	[IMAP_S_SELECTED] = IMAP_CF_SELECTED,
	[IMAP_S_LOGOUT] = 0,
};

/* The definition for a command in this state, or NULL (answered). */
static const imap_cmd_def *check_command(imap_session *s, const char *tag,
					 const char *name, bool uid)
{
	const imap_cmd_def *def = cmd_lookup(name);

	if (def == NULL || (uid && !def->uid_ok)) {
		untagged_bad(s, tag, "Unknown command.");
		return NULL;
	}
	if ((def->flags & state_bits[s->state]) == 0) {
		untagged_bad(s, tag, s->state == IMAP_S_NOTAUTH ? "Command not allowed now: "
			     "log in first." : (def->flags & IMAP_CF_LOGGEDIN) ==
			     IMAP_CF_SELECTED ? "Command not allowed now: no mailbox selected." :
			     "Command not allowed now.");
		return NULL;
	}
	return def;
}

static cmd_full *cmd_new(imap_session *s, const imap_cmd_def *def, const char *tag,
			 bool uid, const imap_arg *args, size_t n_args)
{
	cmd_full *cf = eng_calloc(1, sizeof(*cf));

	cf->cmd.s = s;
	cf->cmd.tag = eng_strdup(tag);
	cf->cmd.name = def->name;
	cf->cmd.uid = uid;
	cf->cmd.flags = def->flags & ~(uid ? (uint32_t)IMAP_CF_NO_EXPUNGE : 0u);
	cf->cmd.args = args;
	cf->cmd.n_args = n_args;
	cf->fn = def->fn;
	s->cmd = &cf->cmd;
	return cf;
}

static void dispatch(imap_session *s, const imap_command *c)
{
	const imap_arg *args = c->args;
	size_t n = c->n_args;
	const char *name = c->name;
	const imap_cmd_def *def;
	bool uid = false;
	cmd_full *cf;

	if (strcmp(name, "UID") == 0) {
		if (n == 0 || args[0].kind != IMAP_ARG_ATOM) {
			untagged_bad(s, c->tag, "UID needs a command.");
			return;
		}
		name = args[0].s;
		args++;
		n--;
		uid = true;
	}
	def = check_command(s, c->tag, name, uid);
	if (def == NULL)
		return;
	cf = cmd_new(s, def, c->tag, uid, args, n);
	def->fn(&cf->cmd);
}

/* ---- APPEND streaming ---- */

static void on_literal(imap_session *s, const imap_event *ev)
{
	session_full *f = full(s);
	imap_cmd *cmd = s->cmd;

	if (cmd == NULL) {
		const imap_cmd_def *def = check_command(s, ev->cmd.tag, ev->cmd.name, false);

		if (def == NULL) {
			imap_parser_skip_command(s->parser);
			return;
		}
		cmd = &cmd_new(s, def, ev->cmd.tag, false, ev->cmd.args, ev->cmd.n_args)->cmd;
	} else {
		cmd->args = ev->cmd.args;
		cmd->n_args = ev->cmd.n_args;
	}
	f->streaming = true;
	f->discard_owed = false;
	if (!imap_append_literal(cmd, ev)) {
		/* Refused: nothing more of the command comes from the parser, so
		 * the handler answers now (imap_append_command) unless it did. */
		if (f->streaming) {
			f->streaming = false;
			imap_parser_skip_command(s->parser);
		}
		if (s->cmd == cmd && !cfull(cmd)->done_pending)
			cfull(cmd)->fn(cmd);
		return;
	}
	if (ev->literal_sync)
		imap_write(s, "+ OK\r\n", 6);
}

/* Literal bytes for the APPEND; returns how many were taken. */
static size_t give_append(imap_session *s, const uint8_t *p, size_t len)
{
	if (s->cmd == NULL || !full(s)->streaming)
		return len;          /* answered already: dropped */
	return imap_append_data(s->cmd, p, len);
}

void imap_append_resume(imap_cmd *cmd)
{
	full(cmd->s)->owed_hold = false;
	resume_input(cmd->s);
	if (cmd->s->zin != NULL)
		kick(full(cmd->s));
}

/* ---- feeding the parser ---- */

static bool session_wants_input(imap_session *s)
{
	session_full *f = full(s);
	cmd_full *cf = cfull(s->cmd);

	if (s->c == NULL || sm_net_closing(s->c) || f->mode_switch || f->owed_hold)
		return false;
	if (cf == NULL)
		return true;
	if (cf->done_pending)
		return false;
	return cf->line_fn != NULL || f->streaming;
}

static void on_line(imap_session *s, const char *line, size_t len)
{
	cmd_full *cf = cfull(s->cmd);
	imap_line_fn *fn = cf != NULL ? cf->line_fn : NULL;

	if (fn == NULL) {
		untagged_bad(s, NULL, "Unexpected line.");
		return;
	}
	cf->line_fn = NULL;
	fn(&cf->cmd, line, len);
}

static void on_error(imap_session *s, const imap_event *ev)
{
	cmd_full *cf = cfull(s->cmd);

	if (cf != NULL && cf->line_fn != NULL && !ev->fatal) {
		on_line(s, NULL, 0);
		return;
	}
	if (cf != NULL && full(s)->streaming) {
		if (ev->fatal) {
			/* The parser cannot resynchronise: the connection ends
			 * and the command is aborted (nothing is reported as
			 * stored). */
			imap_printf(s, "%s %s\r\n", cf->cmd.tag,
				    ev->err == IMAP_ELITERAL ?
				    "NO [TOOBIG] Message too large" : "BAD Invalid APPEND");
			imap_session_bye(s, "Invalid APPEND.");
			return;
		}
		/* A NUL in a literal, a further MULTIAPPEND message over
		 * APPENDLIMIT, bad syntax after a literal: the APPEND takes
		 * back what it stored and answers; the connection goes on. */
		full(s)->streaming = false;
		imap_append_error(s->cmd, ev);
		return;
	}
	if (ev->err == IMAP_ELITERAL && ev->cmd.tag != NULL &&
	    ev->cmd.name != NULL && strcmp(ev->cmd.name, "APPEND") == 0) {
		/* RFC 7889: a message over APPENDLIMIT, refused before the
		 * client sent it (or skipped, for a non-synchronising one). */
		imap_printf(s, "%s NO [TOOBIG] Message too large\r\n",
			    ev->cmd.tag);
		if (ev->fatal)
			imap_session_bye(s, "Message too large.");
		return;
	}
	if (ev->fatal) {
		if (ev->cmd.tag != NULL)
			imap_printf(s, "%s BAD %s\r\n", ev->cmd.tag, ev->text);
		imap_session_bye(s, ev->text);
		return;
	}
	untagged_bad(s, ev->cmd.tag, ev->text);
}

/* One parser event. Returns false to stop feeding (held or closing). */
static bool handle_event(imap_session *s, const imap_event *ev)
{
	switch (ev->kind) {
	case IMAP_EV_NEED_MORE:
		return false;
	case IMAP_EV_COMMAND:
		if (s->cmd != NULL && full(s)->streaming) {
			full(s)->streaming = false;
			s->cmd->args = ev->cmd.args;
			s->cmd->n_args = ev->cmd.n_args;
			cfull(s->cmd)->fn(s->cmd);
		} else {
			dispatch(s, &ev->cmd);
		}
		break;
	case IMAP_EV_CONTINUE:
		imap_write(s, "+ OK\r\n", 6);
		break;
	case IMAP_EV_LITERAL:
		on_literal(s, ev);
		break;
	case IMAP_EV_LITERAL_END:
		if (s->cmd != NULL && full(s)->streaming)
			imap_append_literal_end(s->cmd);
		break;
	case IMAP_EV_LINE:
		on_line(s, (const char *)ev->data, ev->len);
		break;
	case IMAP_EV_ERROR:
		on_error(s, ev);
		break;
	case IMAP_EV_LITERAL_DATA:
		break;               /* handled by feed() */
	}
	return true;
}

/*
 * Feeds p[0..len) to the parser while the session takes input; returns
 * the bytes consumed. Literal data the APPEND did not take stays
 * unconsumed (append_owed): it is offered to the APPEND again first.
 */
static size_t feed(imap_session *s, const uint8_t *p, size_t len)
{
	session_full *f = full(s);
	size_t off = 0;

	while (session_wants_input(s)) {
		imap_event ev;
		size_t n;

		if (f->append_owed > 0) {
			size_t want = len - off < f->append_owed ? len - off : (size_t)f->append_owed;
			size_t took = f->discard_owed ? want : give_append(s, p + off, want);

			off += took;
			f->append_owed -= took;
			if (f->append_owed > 0) {
				f->owed_hold = true;
				break;
			}
			if (off == len)
				break;
			continue;
		}
		if (off == len)
			break;
		memset(&ev, 0, sizeof(ev));
		n = imap_parser_feed(s->parser, p + off, len - off, &ev);
		if (ev.kind == IMAP_EV_LITERAL_DATA) {
			size_t took = give_append(s, ev.data, ev.len);

			if (took < ev.len) {
				f->append_owed = ev.len - took;
				f->discard_owed = false;
				f->owed_hold = true;
				off = (size_t)(ev.data + took - p);
				break;
			}
			off += n;
			continue;
		}
		off += n;
		if (!handle_event(s, &ev))
			break;
	}
	return off;
}

/* Parses inflated input that waits (COMPRESS). */
static void feed_inflated(session_full *f)
{
	imap_session *s = &f->s;
	size_t n;

	if (s->inflated.len == 0 || s->c == NULL)
		return;
	n = feed(s, (const uint8_t *)s->inflated.data, s->inflated.len);
	if (n > 0) {
		memmove(s->inflated.data, s->inflated.data + n, s->inflated.len - n);
		s->inflated.len -= n;
	}
	/* All parsed: an idle compressed session keeps no 16 KiB chunk. */
	if (s->inflated.len == 0)
		eng_buf_free_wipe(&s->inflated);
}

static size_t on_data_compressed(imap_session *s, const uint8_t *p, size_t len)
{
	z_stream *z = s->zin;
	size_t used = 0;

	for (;;) {
		int rc;

		feed_inflated(full(s));
		if (s->inflated.len > 0 || used == len || !session_wants_input(s))
			break;
		eng_buf_reserve(&s->inflated, IMAP_INFLATE_CHUNK);
		z->next_in = (Bytef *)(uintptr_t)(p + used);
		z->avail_in = (uInt)(len - used);
		z->next_out = (Bytef *)s->inflated.data;
		z->avail_out = IMAP_INFLATE_CHUNK;
		rc = inflate(z, Z_SYNC_FLUSH);
		used = len - z->avail_in;
		s->inflated.len = IMAP_INFLATE_CHUNK - z->avail_out;
		if (rc == Z_STREAM_END || (rc != Z_OK && rc != Z_BUF_ERROR)) {
			eng_log(ENG_LOG_INFO, "imap: %s: invalid compressed input",
				sm_net_peer_addr(s->c));
			s->inflated.len = 0;
			imap_session_bye(s, "Invalid compressed data.");
			used = len;
			break;
		}
		if (s->inflated.len == 0 && used == len)
			break;
	}
	return used;
}

static size_t on_data(sm_net_conn *c, void *ctx, const uint8_t *p, size_t len)
{
	imap_session *s = ctx;
	size_t n;

	(void)c;
	if (s == NULL)
		return len;
	/* mode_switch (STARTTLS, COMPRESS) stops a feed at the command's end:
	 * the bytes after it are for the new layer, from the next call. */
	full(s)->mode_switch = false;
	if (s->zin != NULL)
		n = on_data_compressed(s, p, len);
	else
		n = feed(s, p, len);
	full(s)->mode_switch = false;
	if (s->c != NULL && s->cmd != NULL && !session_wants_input(s))
		sm_net_hold(s->c);
	return n;
}

/* ---- STARTTLS, COMPRESS, IDLE ---- */

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

/* Entering IDLE, the session may wait for minutes: the parser frees what
 * it kept of earlier commands (IDLE has no arguments to keep). */
void imap_session_set_idling(imap_session *s, bool on)
{
	s->idling = on;
	if (on && s->cmd != NULL && s->cmd->n_args == 0 && s->parser != NULL) {
		s->cmd->args = NULL;
		imap_parser_trim(s->parser);
	}
}

static void idle_synced(imap_cmd *cmd)
{
	cmd_full *cf = cfull(cmd);
	imap_session *s = cmd->s;

	if (cf->done_pending) {
		if (cf->rpcs == 0 && !cf->finishing)
			continue_done(cf);
		return;
	}
	if (cf->resync && s->idling && s->sel != NULL) {
		cf->resync = false;
		imap_session_sync_now(s);
	}
}

void imap_session_sync_now(imap_session *s)
{
	cmd_full *cf = cfull(s->cmd);

	if (cf == NULL || s->sel == NULL || cf->done_pending)
		return;
	if (cf->syncing) {
		cf->resync = true;
		return;
	}
	if (s->alias_id[0] != '\0' && s->c != NULL && !cf->cmd.aborted)
		group_join(s, cf);
	else
		imap_sync(&cf->cmd, true, idle_synced);
}

void imap_session_event(imap_session *s, enum imap_evt_kind kind,
			const char *mailbox, uint32_t uid, uint64_t modseq)
{
	imap_selected *sel = s->sel;

	(void)kind;
	(void)uid;
	(void)modseq;
	if (sel == NULL)
		return;
	if (mailbox != NULL && strcmp(mailbox, sel->name) != 0 &&
	    !(strcasecmp(mailbox, "INBOX") == 0 && strcasecmp(sel->name, "INBOX") == 0))
		return;
	if (uid != 0 && kind != IMAP_EVT_EXISTS && imap_seq_of_uid(sel, uid) == 0)
		return;              /* not a message of this view */
	sel->dirty = true;
	if (s->idling)
		imap_session_sync_now(s);
}

void imap_sessions_idle_tick(imapd *d)
{
	imap_idle_keepalive(d);
	for (imap_session *s = d->sessions; s != NULL; s = s->next)
		if (s->idling && s->sel != NULL && s->c != NULL) {
			s->sel->dirty = true;
			imap_session_sync_now(s);
		}
}

void imap_sessions_all_dirty(imapd *d)
{
	for (imap_session *s = d->sessions; s != NULL; s = s->next)
		if (s->sel != NULL && s->c != NULL)
			imap_session_event(s, IMAP_EVT_MAILBOX, NULL, 0, 0);
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
