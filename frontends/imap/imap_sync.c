/*
 * The untagged updates of an IMAP connection (imap_sync: RPC CHANGES since
 * the view's HIGHESTMODSEQ, written as EXISTS, EXPUNGE/VANISHED and FETCH
 * FLAGS), the coalesced syncs of idling sessions (one CHANGES per
 * mailbox), and IDLE's plumbing (events, the idle tick). Part of the
 * session (imap_session.c; imap_session_private.h is what the files
 * share).
 *
 * Rules kept here:
 *
 *  - Updates (imap_sync): EXPUNGE/VANISHED only where the command allows
 *    them; expunges held back leave the messages in the sequence map and
 *    HIGHESTMODSEQ where it was, so the next sync that may report them
 *    finds them again (RFC 3501 7.4.1, RFC 7162 3.2.10).
 *  - One sync per command at a time (cf->syncing); an event during it
 *    asks for another (cf->resync). A group member holds a session
 *    reference until its answer.
 */
#include "imap_session_private.h"

#include "eng_error.h"
#include "rpc_proto.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

static void idle_synced(imap_cmd *cmd);

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
		sel->uids[w++] = sel->uids[i];
	}
	sel->n = w;
	sel->held.valid = false;
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

static void map_append(imap_selected *sel, uint32_t uid)
{
	if (sel->n == sel->cap) {
		sel->cap = sel->cap ? sel->cap * 2 : 64;
		sel->uids = eng_realloc(sel->uids, sel->cap * sizeof(*sel->uids));
	}
	sel->uids[sel->n++] = uid;
	sel->held.valid = false;
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
	fresh = eng_calloc(n, sizeof(*fresh));
	rpc_iter_init(&it, resp);
	while ((fl = rpc_iter_next(&it, RPC_T_MESSAGE)) != NULL && k < n) {
		rpc_view g = rpc_field_group(fl);
		uint32_t uid;

		if (rpc_get_u32(&g, RPC_T_UID, &uid) != 0 || uid <= last)
			continue;
		fresh[k++] = uid;
	}
	qsort(fresh, k, sizeof(*fresh), cmp_u32);
	for (size_t i = 0; i < k; i++)
		if (i == 0 || fresh[i] != fresh[i - 1])
			map_append(sel, fresh[i]);
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
		sel->held.valid = false;    /* first_unseen may change */
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

/*
 * sqlited answers a STORE with PRIOR_MODSEQ, the mailbox's HIGHESTMODSEQ
 * just before it (read on the alias's queue: no other write between).
 * When that is the view's, the view is current once the STORE's own
 * changes are applied. An older sqlited sends none: then only a STORE
 * whose MODSEQ is the view's + 1 proves it (MODSEQs come from one counter
 * per alias, so that fails as soon as another mailbox changed). Otherwise
 * the sync repeats the FETCH (harmless, RFC 3501 7.4.1 allows it) rather
 * than risk skipping another session's change.
 */
void imap_view_advance(imap_selected *sel, const rpc_view *resp,
		       uint64_t lo, uint64_t hi)
{
	uint64_t prior;

	if (sel == NULL || lo == 0 || hi <= sel->highestmodseq)
		return;
	if (rpc_get_u64(resp, RPC_T_PRIOR_MODSEQ, &prior) == 0) {
		if (prior == sel->highestmodseq)
			sel->highestmodseq = hi;
	} else if (lo == hi && hi == sel->highestmodseq + 1) {
		sel->highestmodseq = hi;
	}
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
void groups_flush(void)
{
	sync_group *g = g_groups, *next;

	for (; g != NULL; g = next) {
		next = g->next;
		if (!g->in_flight && g->n_wait > 0)
			group_send(g);
		group_free_if_idle(g);
	}
}

/* ---- IDLE ---- */

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
