/*
 * SELECT and EXAMINE, and the session's view of the selected mailbox that
 * they build: the sequence-number map (UIDs in order); the table and the
 * other mailbox commands are in imap_cmd_mailbox.c (imap_mailbox.h: what
 * they share). The view keeps no flags (FETCH, SEARCH and the syncs report
 * sqlited's): of the flag runs SELECT only checks that they cover every
 * message and finds the first without \Seen, for [UNSEEN n].
 *
 * SELECT / EXAMINE (RFC 9051 6.3.2, RFC 3501 6.3.1, RFC 7162):
 *   leave the selected mailbox first ("* OK [CLOSED]" under QRESYNC or
 *   IMAP4rev2), so a failed SELECT leaves the session unselected;
 *   MAILBOX_VIEW (the mailbox's MAILBOX_INFO, the sequence map and the
 *   flags as UID ranges and flag runs, and the mailbox's keywords: one
 *   request; from an older sqlited whose answer has no MAILBOX_INFO,
 *   MAILBOX_STATUS and then MAILBOX_VIEW again; from one without
 *   MAILBOX_VIEW, MAILBOX_STATUS and FETCH_META of every message) ->
 *   [CHANGES since the client's MODSEQ for QRESYNC] ->
 *   FLAGS, PERMANENTFLAGS, EXISTS, [0 RECENT, UNSEEN under IMAP4rev1],
 *   UIDVALIDITY, UIDNEXT, HIGHESTMODSEQ, [VANISHED (EARLIER), FETCH],
 *   tagged OK [READ-WRITE] / [READ-ONLY].
 *   HIGHESTMODSEQ is the one MAILBOX_INFO gave, read in the same request
 *   as the messages (or before them, from an older sqlited: a change in
 *   between is then reported again by the next sync rather than lost).
 *   "* OK [MAILBOXID (id)]" follows HIGHESTMODSEQ.
 *
 * A re-SELECT of a mailbox whose view the session has not changed since
 * it was built (imap_selected.held: no change was applied to it) sends
 * that view's MAILBOX_INFO row as VIEW_HELD; when the row sqlited answers
 * with is the same, it sends VIEW_UNCHANGED instead of the ranges and
 * runs (docs/rpc.md) and the UIDs are kept as they are: no expansion of
 * 100,000 UIDs. An older sqlited ignores the field and sends the whole
 * view.
 */
#include "imap_mailbox.h"

#include "eng_error.h"
#include "rpc_proto.h"

#include <stdlib.h>
#include <string.h>
#include <strings.h>

/* Distinct keywords listed in FLAGS / PERMANENTFLAGS at most. */
#define SELECT_KEYWORDS_MAX 1000
/* Messages in a selected mailbox at most (4 bytes each in the view). */
#define IMAP_SELECT_MAX_MESSAGES (1u << 24)

/* ---- SELECT, EXAMINE ---- */

typedef struct select_op {
	eng_buf pl;
	char *name;
	bool readonly;
	/* QRESYNC (uidvalidity modseq [known-uids ...]) */
	bool qresync;
	uint32_t q_uidvalidity;
	uint64_t q_modseq;
	eng_uidset q_known;
	bool q_has_known;
	imap_mbx_info info;
	imap_selected *sel;
	/* The UIDs array of the view the session left (reused, see
	 * select_new_view), NULL if none. */
	uint32_t *spare_uids;
	size_t spare_cap;
	/* The row of the view left, if it is still that state (held.valid),
	 * and its number of messages. */
	struct imap_view_held held;
	size_t held_n;
	/* Sequence number of the first message without \Seen, 0 if none. */
	size_t first_unseen;
	/* What follows MAILBOX_STATUS: MAILBOX_VIEW or FETCH_META (an older
	 * sqlited); 0 while the first MAILBOX_VIEW is out. */
	uint16_t after_status;
	/* Keywords seen in the mailbox, for FLAGS and PERMANENTFLAGS. */
	char **kw;
	size_t n_kw;
} select_op;

static void select_free(imap_cmd *cmd)
{
	select_op *op = cmd->op;

	if (op == NULL)
		return;
	eng_buf_free(&op->pl);
	free(op->name);
	eng_uidset_free(&op->q_known);
	imap_mbx_info_clear(&op->info);
	if (op->sel != NULL)
		imap_selected_free(op->sel);
	imap_view_uids_put(op->spare_uids, op->spare_cap);
	for (size_t i = 0; i < op->n_kw; i++)
		free(op->kw[i]);
	free(op->kw);
	free(op);
	cmd->op = NULL;
}

static void select_fail(imap_cmd *cmd, int err)
{
	select_free(cmd);
	imap_cmd_fail_rpc(cmd, err, cmd->name);
}

/* "(QRESYNC (uidvalidity modseq [known-uids [(seq-match-data)]]))" */
static int qresync_param(imap_session *s, const imap_arg *a, select_op *op)
{
	uint64_t v;

	if (a->kind != IMAP_ARG_LIST || a->n_list < 2 || a->n_list > 4 ||
	    (s->enabled & IMAP_EN_QRESYNC) == 0)
		return ENG_EINVAL;
	if (!imap_arg_number(&a->list[0], UINT32_MAX, &v) || v == 0)
		return ENG_EINVAL;
	op->q_uidvalidity = (uint32_t)v;
	if (!imap_arg_number(&a->list[1], UINT64_MAX, &op->q_modseq) ||
	    op->q_modseq == 0)
		return ENG_EINVAL;
	if (a->n_list >= 3) {
		if (a->list[2].kind == IMAP_ARG_LIST) {
			/* (seq-match-data) without known UIDs: ignored. */
			if (a->n_list != 3)
				return ENG_EINVAL;
		} else if (imap_seqset_to_uids(NULL, &a->list[2], true,
					       &op->q_known) != 0) {
			return ENG_EINVAL;
		} else {
			op->q_has_known = true;
		}
	}
	/* The sequence match data lets a server without a full expunge
	 * history narrow VANISHED; sqlited has it, so it is not needed. */
	if (a->n_list == 4 && a->list[3].kind != IMAP_ARG_LIST)
		return ENG_EINVAL;
	op->qresync = true;
	return 0;
}

static int select_params(imap_session *s, const imap_arg *a, select_op *op)
{
	if (a->kind != IMAP_ARG_LIST)
		return ENG_EINVAL;
	for (size_t i = 0; i < a->n_list; i++) {
		const char *p = imap_arg_atom(&a->list[i]);

		if (p != NULL && strcasecmp(p, "CONDSTORE") == 0) {
			s->enabled |= IMAP_EN_CONDSTORE;
		} else if (p != NULL && strcasecmp(p, "QRESYNC") == 0 &&
			   i + 1 < a->n_list && !op->qresync) {
			if (qresync_param(s, &a->list[++i], op) != 0)
				return ENG_EINVAL;
		} else {
			return ENG_EINVAL;
		}
	}
	return 0;
}

static void on_select_status(imap_cmd *cmd, int err, const rpc_view *resp);
static void on_select_view(imap_cmd *cmd, int err, const rpc_view *resp);

/*
 * Spare UIDs arrays, shared by the sessions of this imapd: the array of a
 * view that ends (imap_selected_free) waits here for the next SELECT, so
 * a session's first SELECT of a big mailbox writes into memory the
 * process has rather than faulting in fresh pages. The imapd runs on one
 * loop: no lock. At most SPARE_MAX arrays and SPARE_MAX_BYTES in all
 * (half a million UIDs); past that they are freed.
 */
#define SPARE_MAX 4
#define SPARE_MAX_BYTES (2u << 20)

static struct spare {
	uint32_t *uids;
	size_t cap;
} spares[SPARE_MAX];
static size_t n_spares, spare_bytes;

void imap_view_uids_put(uint32_t *uids, size_t cap)
{
	size_t bytes = cap * sizeof(uint32_t);

	if (uids == NULL || n_spares == SPARE_MAX ||
	    bytes > SPARE_MAX_BYTES - spare_bytes) {
		free(uids);
		return;
	}
	spares[n_spares].uids = uids;
	spares[n_spares].cap = cap;
	n_spares++;
	spare_bytes += bytes;
}

/* The spare array that best takes n messages into op (the smallest that
 * holds n, else the biggest), if there is one. */
static void spare_take(select_op *op, size_t n)
{
	size_t best = SPARE_MAX;

	for (size_t i = 0; i < n_spares; i++) {
		bool fits = spares[i].cap >= n;

		if (best == SPARE_MAX ||
		    (fits && (spares[best].cap < n ||
			      spares[i].cap < spares[best].cap)) ||
		    (!fits && spares[best].cap < n &&
		     spares[i].cap > spares[best].cap))
			best = i;
	}
	if (best == SPARE_MAX)
		return;
	op->spare_uids = spares[best].uids;
	op->spare_cap = spares[best].cap;
	spare_bytes -= spares[best].cap * sizeof(uint32_t);
	spares[best] = spares[--n_spares];
}

/* Leaves the selected mailbox, keeping its UIDs array in op for the new
 * view: a SELECT of 100,000 messages then writes into memory it already
 * has instead of faulting in 400 KB of fresh pages (and unmapping the
 * old). */
static void select_leave(imap_session *s, select_op *op)
{
	imap_selected *old = s->sel;

	if (old == NULL)
		return;
	op->spare_uids = old->uids;
	op->spare_cap = old->cap;
	op->held = old->held;
	op->held_n = old->n;
	old->uids = NULL;
	old->n = old->cap = 0;
	imap_select_clear(s);
	if (s->enabled & (IMAP_EN_QRESYNC | IMAP_EN_REV2))
		imap_printf(s, "* OK [CLOSED] Previous mailbox is now "
			    "closed\r\n");
}

/* VIEW_HELD: the row of the view whose UIDs op keeps. */
static void put_held(eng_buf *pl, const struct imap_view_held *h)
{
	size_t mark = rpc_group_begin(pl, RPC_T_VIEW_HELD);

	rpc_put_u64(pl, RPC_T_MAILBOX_ID, h->mailbox_id);
	rpc_put_u64(pl, RPC_T_UIDVALIDITY, h->uidvalidity);
	rpc_put_u64(pl, RPC_T_UIDNEXT, h->uidnext);
	rpc_put_u64(pl, RPC_T_HIGHESTMODSEQ, h->highestmodseq);
	rpc_put_u64(pl, RPC_T_MESSAGES, h->messages);
	rpc_group_end(pl, mark);
}

void imap_cmd_select(imap_cmd *cmd)
{
	imap_session *s = cmd->s;
	select_op *op = eng_calloc(1, sizeof(*op));
	char *name;

	select_leave(s, op);
	if (cmd->n_args < 1 || cmd->n_args > 2) {
		cmd->op = op;
		select_free(cmd);
		imap_cmd_done(cmd, IMAP_BAD, NULL, "Wrong number of arguments");
		return;
	}
	op->readonly = strcmp(cmd->name, "EXAMINE") == 0;
	if (cmd->n_args == 2 && select_params(s, &cmd->args[1], op) != 0) {
		cmd->op = op;
		select_free(cmd);
		imap_cmd_done(cmd, IMAP_BAD, NULL, "Invalid %s parameters",
			      cmd->name);
		return;
	}
	if ((name = imap_mbx_name_arg(cmd, &cmd->args[0])) == NULL) {
		/* Answered: cmd is gone, only op is left to free. */
		imap_view_uids_put(op->spare_uids, op->spare_cap);
		free(op);
		return;
	}
	op->name = name;
	cmd->op = op;
	imap_rpc_begin(s, &op->pl);
	rpc_put_str(&op->pl, RPC_T_MAILBOX, name);
	if (op->held.valid)
		put_held(&op->pl, &op->held);
	imap_mbx_call(cmd, RPC_OP_MAILBOX_VIEW, &op->pl, on_select_view,
		      select_free);
}

/* An older sqlited: MAILBOX_STATUS, then opcode (MAILBOX_VIEW again, or
 * FETCH_META). */
static void select_status(imap_cmd *cmd, uint16_t opcode)
{
	select_op *op = cmd->op;

	op->after_status = opcode;
	imap_rpc_begin(cmd->s, &op->pl);
	rpc_put_str(&op->pl, RPC_T_MAILBOX, op->name);
	imap_mbx_call(cmd, RPC_OP_MAILBOX_STATUS, &op->pl, on_select_status,
		      select_free);
}

static void on_select_meta(imap_cmd *cmd, int err, const rpc_view *resp);

/* opcode (MAILBOX_VIEW or FETCH_META) on the mailbox MAILBOX_STATUS named. */
static void select_call(imap_cmd *cmd, uint16_t opcode, imap_rpc_cb *cb)
{
	select_op *op = cmd->op;

	imap_rpc_begin(cmd->s, &op->pl);
	rpc_put_str(&op->pl, RPC_T_MAILBOX, op->info.name);
	rpc_put_u64(&op->pl, RPC_T_UIDVALIDITY, op->info.uidvalidity);
	imap_mbx_call(cmd, opcode, &op->pl, cb, select_free);
}

/* The MAILBOX_INFO group of resp into op->info; false after answering
 * (an error, or a \Noselect mailbox). */
static bool select_info(imap_cmd *cmd, int err, const rpc_view *resp)
{
	select_op *op = cmd->op;
	rpc_view g;

	if (err == 0 && (rpc_get_group(resp, RPC_T_MAILBOX_INFO, &g) != 0 ||
			 imap_mbx_info_read(&g, &op->info) != 0))
		err = ENG_EIO;
	if (err != 0) {
		select_fail(cmd, err);
		return false;
	}
	if (op->info.noselect) {
		select_free(cmd);
		imap_cmd_done(cmd, IMAP_NO, "NONEXISTENT",
			      "Mailbox is not selectable");
		return false;
	}
	return true;
}

static void on_select_status(imap_cmd *cmd, int err, const rpc_view *resp)
{
	select_op *op = cmd->op;

	if (cmd->aborted) {
		select_free(cmd);
		return;
	}
	if (!select_info(cmd, err, resp))
		return;
	if (op->after_status == RPC_OP_FETCH_META)
		select_call(cmd, RPC_OP_FETCH_META, on_select_meta);
	else
		select_call(cmd, RPC_OP_MAILBOX_VIEW, on_select_view);
}

static void keyword_note(select_op *op, const rpc_field *f)
{
	const char *k = (const char *)f->data;

	for (size_t i = 0; i < op->n_kw; i++) {
		if (strlen(op->kw[i]) == f->u && memcmp(op->kw[i], k, f->u) == 0)
			return;
	}
	if (op->n_kw >= SELECT_KEYWORDS_MAX || memchr(k, '\0', f->u) != NULL)
		return;
	op->kw = eng_realloc(op->kw, (op->n_kw + 1) * sizeof(*op->kw));
	op->kw[op->n_kw++] = eng_strndup(k, f->u);
}

/* The new view, before its messages are known (n: how many). The UIDs
 * array of the view the session left (else a spare one) is reused when
 * its size fits (at most twice what is needed, so a session does not keep
 * a big mailbox's memory for a small one), else resized: realloc keeps
 * the pages it can. A few spare places take the next messages without a
 * move. */
static imap_selected *select_new_view(select_op *op, size_t n)
{
	imap_selected *sel = eng_calloc(1, sizeof(*sel));
	size_t cap;

	if (op->spare_uids == NULL)
		spare_take(op, n);
	cap = op->spare_cap;
	if (op->spare_uids == NULL || cap < n || cap > 2 * n + 1024)
		cap = n + n / 64 + 16;
	sel->name = eng_strdup(op->info.name);
	sel->readonly = op->readonly;
	sel->uidvalidity = op->info.uidvalidity;
	sel->uidnext = op->info.uidnext;
	sel->highestmodseq = op->info.highestmodseq;
	sel->cap = cap;
	sel->uids = eng_realloc(op->spare_uids, cap * sizeof(*sel->uids));
	op->spare_uids = NULL;
	op->spare_cap = 0;
	return sel;
}

/* The view from FETCH_META's MESSAGE groups (UID order): from a sqlited
 * without MAILBOX_VIEW. */
static int select_build(select_op *op, const rpc_view *resp)
{
	size_t n = rpc_count(resp, RPC_T_MESSAGE);
	imap_selected *sel = select_new_view(op, n);
	const rpc_field *f;
	rpc_iter it;

	op->sel = sel;
	rpc_iter_init(&it, resp);
	while ((f = rpc_iter_next(&it, RPC_T_MESSAGE)) != NULL) {
		rpc_view g = rpc_field_group(f);
		uint32_t uid = 0, flags = 0;
		const rpc_field *k;
		rpc_iter ki;

		if (rpc_get_u32(&g, RPC_T_UID, &uid) != 0 || uid == 0 ||
		    (sel->n > 0 && uid <= sel->uids[sel->n - 1]))
			return ENG_EIO;
		rpc_get_u32(&g, RPC_T_FLAGS, &flags);
		sel->uids[sel->n++] = uid;
		if (op->first_unseen == 0 && (flags & ENG_F_SEEN) == 0)
			op->first_unseen = sel->n;
		rpc_iter_init(&ki, &g);
		while ((k = rpc_iter_next(&ki, RPC_T_KEYWORD)) != NULL)
			if (k->type == RPC_W_BYTES)
				keyword_note(op, k);
	}
	if (sel->n > 0 && sel->uidnext <= sel->uids[sel->n - 1])
		sel->uidnext = sel->uids[sel->n - 1] + 1;
	return 0;
}

/*
 * Expanding a view's UID ranges into the sequence map is what a SELECT of
 * a big mailbox costs the imapd (100,000 messages: 400 KB written), so
 * fill_seq writes several UIDs a step rather than one a loop turn.
 */

/* The i-th big-endian u32 of a packed field (rpc_uids_at, inlined). */
static inline uint32_t be32_at(const uint8_t *p, size_t i)
{
	p += 4 * i;
	return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 |
		(uint32_t)p[2] << 8 | p[3];
}

/* Four UIDs in one vector (a GCC/Clang extension; SSE2 on x86-64). */
typedef uint32_t uid_vec __attribute__((vector_size(16)));

/* out[k] = first + k for k < n: sixteen UIDs a turn from four vectors
 * (written with memcpy: out need not be 16-byte aligned). The scalar
 * loop of four stores a turn took 55 us for 100,000 UIDs, this 11. */
static void fill_seq(uint32_t *out, uint32_t first, size_t n)
{
	const uid_vec four = { 4, 4, 4, 4 };
	uid_vec v = { first, first + 1, first + 2, first + 3 };
	size_t k = 0;

	for (; n - k >= 16; k += 16) {
		uid_vec a = v, b = v + four, c = b + four, d = c + four;

		memcpy(out + k, &a, sizeof(a));
		memcpy(out + k + 4, &b, sizeof(b));
		memcpy(out + k + 8, &c, sizeof(c));
		memcpy(out + k + 12, &d, sizeof(d));
		v = d + four;
	}
	for (; k < n; k++)
		out[k] = first + (uint32_t)k;
}

/* The UIDs of MAILBOX_VIEW's UIDSET fields (ascending, disjoint ranges)
 * into sel->uids (room for *n_r of them, counted before) when sel is not
 * NULL; else only counted into *n_r (nothing written). */
static int view_uids(const rpc_view *resp, imap_selected *sel, uint64_t *n_r)
{
	uint64_t n = 0, last = 0;
	uint32_t *out = sel != NULL ? sel->uids : NULL;
	const rpc_field *f;
	rpc_iter it;

	rpc_iter_init(&it, resp);
	while ((f = rpc_iter_next(&it, RPC_T_UIDSET)) != NULL) {
		if (f->type != RPC_W_BYTES || f->u % 8 != 0)
			return ENG_EIO;
		const uint8_t *p = f->data, *end = f->data + f->u;

		for (; p < end; p += 8) {
			uint32_t lo = be32_at(p, 0), hi = be32_at(p, 1);

			if (lo == 0 || lo > hi || lo <= last ||
			    n + (hi - lo) + 1 > IMAP_SELECT_MAX_MESSAGES ||
			    (out != NULL && n + (hi - lo) + 1 > *n_r))
				return ENG_EIO;
			if (out != NULL)
				fill_seq(out + n, lo, (size_t)(hi - lo) + 1);
			n += (uint64_t)(hi - lo) + 1;
			last = hi;
		}
	}
	if (sel != NULL)
		sel->n = (size_t)n;
	*n_r = n;
	return 0;
}

/* The n messages of the UIDSET ranges into a new view, the FLAG_RUNS
 * checked and read for [UNSEEN n]. Its row is kept as held when the
 * answer is the first request's (the row and the messages of one state)
 * and MESSAGES agrees with it. */
static int select_fill_view(select_op *op, uint64_t n, const rpc_view *resp)
{
	const imap_mbx_info *in = &op->info;
	uint64_t counted = 0;
	int err;

	if (view_uids(resp, NULL, &counted) != 0 || counted != n)
		return ENG_EIO;
	op->sel = select_new_view(op, (size_t)n);
	if ((err = view_uids(resp, op->sel, &counted)) != 0 ||
	    (err = imap_flag_runs_first_unseen(resp, op->sel->n,
					       &op->first_unseen)) != 0)
		return err;
	if (op->after_status == 0 && in->mailbox_id != 0 && n == in->messages)
		op->sel->held = (struct imap_view_held){
			.valid = true, .mailbox_id = in->mailbox_id,
			.highestmodseq = in->highestmodseq,
			.uidvalidity = in->uidvalidity, .uidnext = in->uidnext,
			.messages = in->messages,
			.first_unseen = op->first_unseen,
		};
	return 0;
}

/* VIEW_UNCHANGED: the UIDs of the view left are the view; only if it was
 * asked for and the row is the one held. */
static int select_keep_view(select_op *op, uint64_t n)
{
	const struct imap_view_held *h = &op->held;
	const imap_mbx_info *in = &op->info;

	if (!h->valid || n != op->held_n || n != h->messages ||
	    in->mailbox_id != h->mailbox_id ||
	    in->uidvalidity != h->uidvalidity || in->uidnext != h->uidnext ||
	    in->highestmodseq != h->highestmodseq || in->messages != n)
		return ENG_EIO;
	op->sel = select_new_view(op, (size_t)n);
	op->sel->n = (size_t)n;
	op->sel->held = *h;
	op->first_unseen = h->first_unseen;
	return 0;
}

/* The view from MAILBOX_VIEW: MESSAGES, UIDSET ranges, FLAG_RUNS (or
 * VIEW_UNCHANGED), KEYWORD*; the counts must agree. */
static int select_build_view(select_op *op, const rpc_view *resp)
{
	uint64_t n = 0, unchanged = 0;
	const rpc_field *f;
	rpc_iter it;
	int err;

	if (rpc_get_u64(resp, RPC_T_MESSAGES, &n) != 0 ||
	    n > IMAP_SELECT_MAX_MESSAGES)
		return ENG_EIO;
	(void)rpc_get_u64(resp, RPC_T_VIEW_UNCHANGED, &unchanged);
	err = unchanged ? select_keep_view(op, n) :
		select_fill_view(op, n, resp);
	if (err != 0)
		return err;
	rpc_iter_init(&it, resp);
	while ((f = rpc_iter_next(&it, RPC_T_KEYWORD)) != NULL)
		if (f->type == RPC_W_BYTES)
			keyword_note(op, f);
	if (op->sel->n > 0 && op->sel->uidnext <= op->sel->uids[op->sel->n - 1])
		op->sel->uidnext = op->sel->uids[op->sel->n - 1] + 1;
	return 0;
}

static void put_flag_names(eng_buf *b, const select_op *op, bool star)
{
	imap_put_flags(b, ENG_F_ALL, (const char *const *)op->kw, op->n_kw);
	if (star) {
		b->len--;    /* before the ")" */
		eng_buf_puts(b, " \\*)");
	}
}

static void select_write(imap_cmd *cmd)
{
	select_op *op = cmd->op;
	imap_session *s = cmd->s;
	const imap_selected *sel = op->sel;
	bool rev2 = (s->enabled & IMAP_EN_REV2) != 0;
	char id[IMAP_MAILBOXID_MAX];
	eng_buf b = ENG_BUF_INIT;

	eng_buf_puts(&b, "* FLAGS ");
	put_flag_names(&b, op, false);
	eng_buf_puts(&b, "\r\n* OK [PERMANENTFLAGS ");
	if (op->readonly)
		eng_buf_puts(&b, "()");
	else
		put_flag_names(&b, op, true);
	eng_buf_puts(&b, "] Flags permitted\r\n");
	eng_buf_printf(&b, "* %zu EXISTS\r\n", sel->n);
	if (!rev2) {
		eng_buf_puts(&b, "* 0 RECENT\r\n");
		if (op->first_unseen > 0)
			eng_buf_printf(&b, "* OK [UNSEEN %zu] First unseen\r\n",
				       op->first_unseen);
	}
	eng_buf_printf(&b, "* OK [UIDVALIDITY %u] UIDs valid\r\n"
		       "* OK [UIDNEXT %u] Predicted next UID\r\n"
		       "* OK [HIGHESTMODSEQ %llu] Highest\r\n",
		       sel->uidvalidity, sel->uidnext,
		       (unsigned long long)sel->highestmodseq);
	if (imap_mailboxid_format(id, op->info.mailbox_id,
				  op->info.uidvalidity))
		eng_buf_printf(&b, "* OK [MAILBOXID (%s)] Mailbox id\r\n", id);
	imap_write_buf(s, &b);
	eng_buf_free(&b);
}

static void select_finish(imap_cmd *cmd)
{
	select_op *op = cmd->op;
	imap_session *s = cmd->s;
	bool readonly = op->readonly;

	imap_select_set(s, op->sel);
	op->sel = NULL;
	select_free(cmd);
	imap_cmd_done(cmd, IMAP_OK, readonly ? "READ-ONLY" : "READ-WRITE",
		      "%s completed", readonly ? "EXAMINE" : "SELECT");
}

static void on_select_changes(imap_cmd *cmd, int err, const rpc_view *resp);

static void select_built(imap_cmd *cmd, int err);

static void on_select_view(imap_cmd *cmd, int err, const rpc_view *resp)
{
	select_op *op = cmd->op;

	if (cmd->aborted) {
		select_free(cmd);
		return;
	}
	if (op->after_status == 0) {     /* the first request */
		if (err == RPC_EOPCODE) {    /* a sqlited without MAILBOX_VIEW */
			select_status(cmd, RPC_OP_FETCH_META);
			return;
		}
		if (err == 0 && rpc_count(resp, RPC_T_MAILBOX_INFO) == 0) {
			/* A sqlited whose MAILBOX_VIEW has no MAILBOX_INFO. */
			select_status(cmd, RPC_OP_MAILBOX_VIEW);
			return;
		}
		if (!select_info(cmd, err, resp))
			return;
	}
	select_built(cmd, err == 0 ? select_build_view(op, resp) : err);
}

static void on_select_meta(imap_cmd *cmd, int err, const rpc_view *resp)
{
	if (cmd->aborted) {
		select_free(cmd);
		return;
	}
	select_built(cmd, err == 0 ? select_build(cmd->op, resp) : err);
}

/* The view is built (err 0): the untagged answers, then QRESYNC's. */
static void select_built(imap_cmd *cmd, int err)
{
	select_op *op = cmd->op;

	if (err != 0) {
		select_fail(cmd, err);
		return;
	}
	select_write(cmd);
	/* RFC 7162 3.2.5.2: another UIDVALIDITY makes QRESYNC moot. */
	if (!op->qresync || op->q_uidvalidity != op->sel->uidvalidity ||
	    op->q_modseq >= op->sel->highestmodseq) {
		select_finish(cmd);
		return;
	}
	imap_rpc_begin(cmd->s, &op->pl);
	rpc_put_str(&op->pl, RPC_T_MAILBOX, op->sel->name);
	rpc_put_u64(&op->pl, RPC_T_UIDVALIDITY, op->sel->uidvalidity);
	rpc_put_u64(&op->pl, RPC_T_MODSEQ, op->q_modseq);
	imap_mbx_call(cmd, RPC_OP_CHANGES, &op->pl, on_select_changes,
		      select_free);
}

static void put_range(eng_buf *out, uint64_t lo, uint64_t hi)
{
	if (lo == hi)
		eng_buf_printf(out, "%llu,", (unsigned long long)lo);
	else
		eng_buf_printf(out, "%llu:%llu,", (unsigned long long)lo,
			       (unsigned long long)hi);
}

/* Appends "lo:hi," for the part of lo..hi not in the view. */
static void vanished_minus_view(const imap_selected *sel, uint32_t lo,
				uint32_t hi, eng_buf *out)
{
	size_t a = 0, z = sel->n;
	uint64_t cur = lo;

	while (a < z) {     /* the first view UID >= lo */
		size_t mid = a + (z - a) / 2;

		if (sel->uids[mid] < lo)
			a = mid + 1;
		else
			z = mid;
	}
	for (; a < sel->n && sel->uids[a] <= hi; a++) {
		if (sel->uids[a] > cur)
			put_range(out, cur, sel->uids[a] - 1);
		cur = (uint64_t)sel->uids[a] + 1;
	}
	if (cur <= hi)
		put_range(out, cur, hi);
}

static void vanished_range(const select_op *op, uint32_t lo, uint32_t hi,
			   eng_buf *out)
{
	if (!op->q_has_known) {
		vanished_minus_view(op->sel, lo, hi, out);
		return;
	}
	for (size_t i = 0; i < op->q_known.count; i++) {
		uint32_t a = op->q_known.ranges[i].lo, z = op->q_known.ranges[i].hi;

		if (a < lo)
			a = lo;
		if (z > hi)
			z = hi;
		if (a <= z)
			vanished_minus_view(op->sel, a, z, out);
	}
}

/* "* VANISHED (EARLIER) ..." of the UIDs expunged since the client's
 * MODSEQ that it knows of and that are not in the view. */
static int select_vanished(imap_cmd *cmd, const rpc_view *resp)
{
	select_op *op = cmd->op;
	eng_buf set = ENG_BUF_INIT, line = ENG_BUF_INIT;
	const rpc_field *f;
	rpc_iter it;

	rpc_iter_init(&it, resp);
	while ((f = rpc_iter_next(&it, RPC_T_VANISHED)) != NULL) {
		if (f->type != RPC_W_BYTES || f->u % 8 != 0) {
			eng_buf_free(&set);
			return ENG_EIO;
		}
		for (size_t i = 0; i < f->u; i += 8) {
			const uint8_t *p = f->data + i;
			uint32_t lo = rpc_uids_at(p, 0), hi = rpc_uids_at(p, 1);

			if (lo != 0 && lo <= hi)
				vanished_range(op, lo, hi, &set);
		}
	}
	if (set.len > 0) {
		set.data[--set.len] = '\0';  /* the last "," */
		eng_buf_printf(&line, "* VANISHED (EARLIER) %s\r\n", set.data);
		imap_write_buf(cmd->s, &line);
	}
	eng_buf_free(&set);
	eng_buf_free(&line);
	return 0;
}

/* "* n FETCH (UID u FLAGS (...) MODSEQ (m))" for changed messages still
 * in the view; a flag change ends the view's held row (its first_unseen). */
static void select_fetches(imap_cmd *cmd, const rpc_view *resp)
{
	select_op *op = cmd->op;
	imap_selected *sel = op->sel;
	eng_buf b = ENG_BUF_INIT;
	const rpc_field *f;
	rpc_iter it;

	rpc_iter_init(&it, resp);
	while ((f = rpc_iter_next(&it, RPC_T_MESSAGE)) != NULL) {
		rpc_view g = rpc_field_group(f);
		uint32_t uid = 0, flags = 0, seq;
		uint64_t modseq = 0;
		/* Keywords are copied: the field bytes have no NUL. */
		char *kwcopy[ENG_KEYWORDS_PER_MESSAGE];
		const char *kw[ENG_KEYWORDS_PER_MESSAGE];
		size_t n_kw = 0;
		const rpc_field *k;
		rpc_iter ki;

		if (rpc_get_u32(&g, RPC_T_UID, &uid) != 0 ||
		    (seq = imap_seq_of_uid(sel, uid)) == 0)
			continue;
		rpc_get_u32(&g, RPC_T_FLAGS, &flags);
		rpc_get_u64(&g, RPC_T_MODSEQ, &modseq);
		sel->held.valid = false;
		eng_buf_printf(&b, "* %u FETCH (UID %u FLAGS ", seq, uid);
		rpc_iter_init(&ki, &g);
		while ((k = rpc_iter_next(&ki, RPC_T_KEYWORD)) != NULL &&
		       n_kw < ENG_KEYWORDS_PER_MESSAGE) {
			if (k->type != RPC_W_BYTES)
				continue;
			kwcopy[n_kw] = eng_strndup((const char *)k->data, k->u);
			kw[n_kw] = kwcopy[n_kw];
			n_kw++;
		}
		imap_put_flags(&b, flags & ENG_F_ALL, kw, n_kw);
		for (size_t i = 0; i < n_kw; i++)
			free(kwcopy[i]);
		eng_buf_printf(&b, " MODSEQ (%llu))\r\n",
			       (unsigned long long)modseq);
		imap_write_buf(cmd->s, &b);
	}
	eng_buf_free(&b);
}

static void on_select_changes(imap_cmd *cmd, int err, const rpc_view *resp)
{
	if (cmd->aborted) {
		select_free(cmd);
		return;
	}
	if (err == 0)
		err = select_vanished(cmd, resp);
	if (err != 0) {
		select_fail(cmd, err);
		return;
	}
	select_fetches(cmd, resp);
	select_finish(cmd);
}
