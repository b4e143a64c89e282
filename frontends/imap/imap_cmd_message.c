/*
 * STORE, COPY, MOVE, EXPUNGE, SEARCH, SORT, THREAD and their UID forms:
 * the commands that act on the messages of the selected mailbox, each one
 * RPC to sqlited (docs/rpc.md STORE, COPY, MOVE, EXPUNGE, SEARCH, SORT,
 * THREAD).
 *
 * Rules:
 *  - Every set of messages is clipped to the session's view before it
 *    goes to sqlited (imap_seqset_to_uids, then view_clip): a message the
 *    client has not been told of (EXISTS not yet sent) is never stored,
 *    copied or expunged by UID, and never appears in a SEARCH, SORT or
 *    THREAD answer (a UID outside the view is dropped, or in THREAD
 *    written as a dummy).
 *  - The view is updated with what this session did and reported: EXPUNGE
 *    and MOVE remove the UIDs they reported as EXPUNGE/VANISHED (imap_sync
 *    ignores VANISHED UIDs that are not in the view), STORE ends the
 *    view's held row (a flag change does: imap.h); STORE and EXPUNGE move
 *    sel->highestmodseq when that is provably safe (imap_view_advance:
 *    the answer's PRIOR_MODSEQ is the view's). Otherwise sel->highestmodseq
 *    is left to imap_sync, which alone learns what else changed in
 *    between; sqlited's event for our own write marks the view dirty.
 *  - EXPUNGE answers are written in ascending order with the numbers as
 *    they are at that moment ("* 3 EXPUNGE" twice for messages 3 and 4,
 *    RFC 3501 7.4.1), or as one "* VANISHED" under QRESYNC (RFC 7162).
 *  - The sequence-number forms of STORE, SEARCH, SORT, THREAD and COPY
 *    carry IMAP_CF_NO_EXPUNGE (RFC 3501 7.4.1); MOVE and EXPUNGE report
 *    their own expunges.
 *  - SEARCHRES (RFC 5182): SAVE stores the matching UIDs in sel->saved
 *    (only the MIN/MAX ones when those are the only other options); a
 *    SEARCH with SAVE that fails empties it.
 *  - Answers to the client are fixed sentences; RPC errors go through
 *    imap_cmd_fail_rpc.
 */
#include "imap.h"
#include "imap_search_parse.h"

#include "eng_error.h"
#include "rpc_codec.h"
#include "rpc_proto.h"

#include <stdlib.h>
#include <string.h>
#include <strings.h>

/* Untagged output is handed to the session in pieces of about this. */
#define OUT_FLUSH_BYTES (64u * 1024)
/* Room left in a request frame for everything but the program. */
#define PAYLOAD_MAX (RPC_MAX_FRAME_BYTES - 1024)

typedef struct msg_op {
	eng_buf payload;
	imap_search_prog prog;
	bool esearch;                /* answer ESEARCH (RETURN or rev2) */
	uint32_t ret;                /* enum imap_search_return */
	/* STORE */
	bool silent;
	bool has_unchangedsince;
	/* COPY / MOVE: the destination, malloc'd */
	char *dest;
} msg_op;

/* ---- small helpers ---- */

static msg_op *op_new(imap_cmd *cmd)
{
	msg_op *op = eng_calloc(1, sizeof(*op));

	cmd->op = op;
	return op;
}

static void op_free(imap_cmd *cmd)
{
	msg_op *op = cmd->op;

	if (op == NULL)
		return;
	eng_buf_free_wipe(&op->payload);
	imap_search_prog_free(&op->prog);
	free(op->dest);
	free(op);
	cmd->op = NULL;
}

/* Frees the op and answers. */
static void finish(imap_cmd *cmd, enum imap_result r, const char *code,
		   const char *text)
{
	op_free(cmd);
	imap_cmd_done(cmd, r, code, "%s", text);
}

static void fail_rpc(imap_cmd *cmd, int err, const char *what)
{
	op_free(cmd);
	imap_cmd_fail_rpc(cmd, err, what);
}

/* True when the callback only has to free (the connection went away). */
static bool aborted(imap_cmd *cmd)
{
	if (!cmd->aborted)
		return false;
	op_free(cmd);
	return true;
}

static void flush_if_big(imap_session *s, eng_buf *b)
{
	if (b->len >= OUT_FLUSH_BYTES)
		imap_write_buf(s, b);
}

/* First index of view with view[i] >= x. */
static size_t lower_bound(const uint32_t *v, size_t n, uint32_t x)
{
	size_t lo = 0, hi = n;

	while (lo < hi) {
		size_t mid = lo + (hi - lo) / 2;

		if (v[mid] < x)
			lo = mid + 1;
		else
			hi = mid;
	}
	return lo;
}

/*
 * in, clipped to the UIDs of the view: each range becomes the UID range
 * from its first to its last message in the view (what lies between is
 * expunged, never unannounced: new messages get higher UIDs).
 */
static void view_clip(const imap_selected *sel, const eng_uidset *in,
		      eng_uidset *out)
{
	memset(out, 0, sizeof(*out));
	for (size_t i = 0; i < in->count; i++) {
		size_t a = lower_bound(sel->uids, sel->n, in->ranges[i].lo);
		size_t b = in->ranges[i].hi == UINT32_MAX ? sel->n :
			lower_bound(sel->uids, sel->n, in->ranges[i].hi + 1);

		if (a >= b)
			continue;
		if (out->count > 0 &&
		    out->ranges[out->count - 1].hi >= sel->uids[a]) {
			if (sel->uids[b - 1] > out->ranges[out->count - 1].hi)
				out->ranges[out->count - 1].hi = sel->uids[b - 1];
			continue;
		}
		eng_uidset_add(out, sel->uids[a], sel->uids[b - 1]);
	}
}

static int uidset_cmp(const void *a, const void *b)
{
	const eng_uid_range *x = a, *y = b;

	return x->lo < y->lo ? -1 : x->lo > y->lo;
}

/* The messages a set argument names, in the view (BAD when invalid). */
static int target_set(imap_cmd *cmd, const imap_arg *arg, eng_uidset *set_r)
{
	eng_uidset raw;
	int err;

	memset(set_r, 0, sizeof(*set_r));
	if ((err = imap_seqset_to_uids(cmd->s, arg, cmd->uid, &raw)) != 0)
		return err;
	if (raw.count > 1)
		qsort(raw.ranges, raw.count, sizeof(raw.ranges[0]), uidset_cmp);
	view_clip(cmd->s->sel, &raw, set_r);
	eng_uidset_free(&raw);
	return 0;
}

/* Every packed UID list with tag (MORE parts give several fields). */
static int collect_uids(const rpc_view *v, uint32_t tag, uint32_t **uids_r,
			size_t *n_r)
{
	const rpc_field *f;
	uint32_t *uids = NULL;
	size_t n = 0, total = 0;
	rpc_iter it;

	rpc_iter_init(&it, v);
	while ((f = rpc_iter_next(&it, tag)) != NULL) {
		if (f->type != RPC_W_BYTES || f->u % 4 != 0)
			return RPC_EFIELDTYPE;
		total += (size_t)f->u / 4;
	}
	uids = eng_malloc((total > 0 ? total : 1) * sizeof(uint32_t));
	rpc_iter_init(&it, v);
	while ((f = rpc_iter_next(&it, tag)) != NULL) {
		for (size_t i = 0; i < f->u / 4; i++)
			uids[n++] = rpc_uids_at(f->data, i);
	}
	*uids_r = uids;
	*n_r = n;
	return 0;
}

/* SESSION, MAILBOX (the selected one) and its UIDVALIDITY. */
static void begin_mailbox_rpc(imap_cmd *cmd, msg_op *op)
{
	imap_session *s = cmd->s;

	imap_rpc_begin(s, &op->payload);
	rpc_put_str(&op->payload, RPC_T_MAILBOX, s->sel->name);
	rpc_put_u64(&op->payload, RPC_T_UIDVALIDITY, s->sel->uidvalidity);
}

static void call(imap_cmd *cmd, uint16_t opcode, imap_rpc_cb *cb,
		 const char *what)
{
	msg_op *op = cmd->op;
	eng_buf pl = op->payload;    /* op belongs to the callback now */
	int err;

	if (pl.len > PAYLOAD_MAX) {
		finish(cmd, IMAP_NO, "LIMIT", "Request too large");
		return;
	}
	memset(&op->payload, 0, sizeof(op->payload));
	err = imap_rpc_call(cmd, opcode, &pl, NULL, cb);
	eng_buf_free_wipe(&pl);
	if (err != 0)
		fail_rpc(cmd, err, what);
}

/* RFC 7162 3.1: a CONDSTORE-enabling command on a selected mailbox. */
static void enable_condstore(imap_session *s)
{
	if ((s->enabled & IMAP_EN_CONDSTORE) != 0)
		return;
	s->enabled |= IMAP_EN_CONDSTORE;
	imap_printf(s, "* OK [HIGHESTMODSEQ %llu] Highest\r\n",
		    (unsigned long long)s->sel->highestmodseq);
}

/* Sequence numbers (or UIDs) of a set of UIDs in the view, ascending. */
static uint32_t *set_numbers(const imap_selected *sel, const eng_uidset *set,
			     bool uid, size_t *n_r)
{
	uint32_t *nums = NULL;
	size_t n = 0, cap = 0;

	for (size_t i = 0; i < set->count; i++) {
		size_t a = lower_bound(sel->uids, sel->n, set->ranges[i].lo);

		for (; a < sel->n && sel->uids[a] <= set->ranges[i].hi; a++) {
			if (n == cap) {
				cap = cap != 0 ? cap * 2 : 64;
				nums = eng_realloc(nums, cap * sizeof(*nums));
			}
			nums[n++] = uid ? sel->uids[a] : (uint32_t)(a + 1);
		}
	}
	*n_r = n;
	return nums;
}

static int u32_cmp(const void *a, const void *b)
{
	uint32_t x = *(const uint32_t *)a, y = *(const uint32_t *)b;

	return x < y ? -1 : x > y;
}

/* ---- expunges reported by EXPUNGE and MOVE ---- */

/*
 * Writes the expunge of uids (ascending) that are in the view and removes
 * them from it: "* n EXPUNGE" each, numbered as they are at that moment,
 * or one "* VANISHED" under QRESYNC.
 */
static void report_expunged(imap_session *s, const uint32_t *uids, size_t n)
{
	imap_selected *sel = s->sel;
	bool qresync = (s->enabled & IMAP_EN_QRESYNC) != 0;
	uint32_t *gone = eng_malloc((n > 0 ? n : 1) * sizeof(uint32_t));
	size_t n_gone = 0, w = 0, k = 0;
	eng_buf b = ENG_BUF_INIT;

	for (size_t i = 0; i < n; i++) {
		size_t at = imap_view_find(sel->uids, sel->n, uids[i]);

		if (at != SIZE_MAX)
			gone[n_gone++] = (uint32_t)at;
	}
	if (n_gone > 1)
		qsort(gone, n_gone, sizeof(*gone), u32_cmp);
	if (qresync && n_gone > 0) {
		uint32_t *u = eng_malloc(n_gone * sizeof(uint32_t));

		for (size_t i = 0; i < n_gone; i++)
			u[i] = sel->uids[gone[i]];
		eng_buf_puts(&b, "* VANISHED ");
		imap_put_numset(&b, u, n_gone);
		eng_buf_puts(&b, "\r\n");
		free(u);
	}
	/* Compact the view; the k-th removed index i is number i + 1 - k. */
	for (size_t i = 0; i < sel->n; i++) {
		if (k < n_gone && gone[k] == i) {
			if (!qresync) {
				eng_buf_printf(&b, "* %zu EXPUNGE\r\n",
					       i + 1 - k);
				flush_if_big(s, &b);
			}
			k++;
			continue;
		}
		sel->uids[w++] = sel->uids[i];
	}
	sel->n = w;
	sel->held.valid = false;
	imap_write_buf(s, &b);
	eng_buf_free(&b);
	free(gone);
}

/* ---- the search program in a request ---- */

static const uint8_t query_wire[] = {
	[ENG_Q_ALL] = RPC_Q_ALL, [ENG_Q_AND] = RPC_Q_AND,
	[ENG_Q_OR] = RPC_Q_OR, [ENG_Q_NOT] = RPC_Q_NOT,
	[ENG_Q_FLAG] = RPC_Q_FLAG, [ENG_Q_UNFLAG] = RPC_Q_UNFLAG,
	[ENG_Q_KEYWORD] = RPC_Q_KEYWORD, [ENG_Q_UNKEYWORD] = RPC_Q_UNKEYWORD,
	[ENG_Q_UID] = RPC_Q_UID, [ENG_Q_SEQ] = RPC_Q_SEQ,
	[ENG_Q_BEFORE] = RPC_Q_BEFORE, [ENG_Q_ON] = RPC_Q_ON,
	[ENG_Q_SINCE] = RPC_Q_SINCE, [ENG_Q_SENTBEFORE] = RPC_Q_SENTBEFORE,
	[ENG_Q_SENTON] = RPC_Q_SENTON, [ENG_Q_SENTSINCE] = RPC_Q_SENTSINCE,
	[ENG_Q_SAVEDBEFORE] = RPC_Q_SAVEDBEFORE,
	[ENG_Q_SAVEDON] = RPC_Q_SAVEDON, [ENG_Q_SAVEDSINCE] = RPC_Q_SAVEDSINCE,
	[ENG_Q_SAVEDATESUPPORTED] = RPC_Q_SAVEDATESUPPORTED,
	[ENG_Q_LARGER] = RPC_Q_LARGER, [ENG_Q_SMALLER] = RPC_Q_SMALLER,
	[ENG_Q_HEADER] = RPC_Q_HEADER, [ENG_Q_BODY] = RPC_Q_BODY,
	[ENG_Q_TEXT] = RPC_Q_TEXT, [ENG_Q_MODSEQ] = RPC_Q_MODSEQ,
	[ENG_Q_OLDER] = RPC_Q_OLDER, [ENG_Q_YOUNGER] = RPC_Q_YOUNGER,
	[ENG_Q_EMAILID] = RPC_Q_EMAILID, [ENG_Q_THREADID] = RPC_Q_THREADID,
};

/* One QUERY group; recursion bounded by IMAP_SEARCH_MAX_DEPTH (checked
 * by the parser). */
static void put_query(eng_buf *b, const eng_query *q)
{
	size_t mark = rpc_group_begin(b, RPC_T_QUERY);

	rpc_put_u64(b, RPC_T_Q_KIND, query_wire[q->kind]);
	switch (q->kind) {
	case ENG_Q_ALL:
	case ENG_Q_SAVEDATESUPPORTED:
		break;
	case ENG_Q_AND:
	case ENG_Q_OR:
	case ENG_Q_NOT:
		for (size_t i = 0; i < q->n_children; i++)
			put_query(b, q->children[i]);
		break;
	case ENG_Q_FLAG:
	case ENG_Q_UNFLAG:
		rpc_put_u64(b, RPC_T_FLAGS, q->flag);
		break;
	case ENG_Q_KEYWORD:
	case ENG_Q_UNKEYWORD:
	case ENG_Q_BODY:
	case ENG_Q_TEXT:
		rpc_put_str(b, RPC_T_TEXT, q->text);
		break;
	case ENG_Q_HEADER:
		rpc_put_str(b, RPC_T_FIELD, q->field);
		rpc_put_str(b, RPC_T_TEXT, q->text);
		break;
	case ENG_Q_UID:
	case ENG_Q_SEQ:
		rpc_put_uidset(b, RPC_T_UIDSET, &q->set);
		break;
	default:
		rpc_put_s64(b, RPC_T_NUMBER, q->number);
		break;
	}
	rpc_group_end(b, mark);
}

/* QUERY and, when the program names sequence numbers, SEQ_MAP. */
static void put_program(imap_cmd *cmd, msg_op *op)
{
	const imap_selected *sel = cmd->s->sel;

	put_query(&op->payload, op->prog.query);
	if (op->prog.uses_seq)
		rpc_put_uids(&op->payload, RPC_T_SEQ_MAP, sel->uids, sel->n);
}

/* RFC 5182: a SEARCH with SAVE that fails leaves "$" empty. */
static void saved_clear(imap_session *s)
{
	if (s->sel == NULL)
		return;
	free(s->sel->saved);
	s->sel->saved = NULL;
	s->sel->n_saved = 0;
	s->sel->has_saved = true;
}

static void saved_set(imap_session *s, const uint32_t *uids, size_t n)
{
	imap_selected *sel = s->sel;

	saved_clear(s);
	if (n == 0)
		return;
	sel->saved = eng_malloc(n * sizeof(uint32_t));
	memcpy(sel->saved, uids, n * sizeof(uint32_t));
	if (n > 1)
		qsort(sel->saved, n, sizeof(uint32_t), u32_cmp);
	sel->n_saved = n;
}

/*
 * Parses a program; on failure answers (BAD, NO [BADCHARSET], NO [LIMIT])
 * and returns false.
 */
static bool parse_program(imap_cmd *cmd, msg_op *op, const imap_arg *args,
			  size_t n, enum imap_search_syntax syntax)
{
	imap_session *s = cmd->s;
	imap_search_in in = { syntax, NULL, 0 };
	int st;

	if (s->sel->has_saved) {
		in.saved = s->sel->saved;
		in.n_saved = s->sel->n_saved;
	}
	st = imap_search_parse(args, n, &in, &op->prog);
	if (st == IMAP_SEARCH_OK)
		return true;
	/* RFC 5182: a SEARCH (or SORT) with SAVE that fails empties "$". */
	if (op->prog.has_return)
		op->ret = op->prog.ret;
	if ((op->ret & IMAP_RET_SAVE) != 0)
		saved_clear(s);
	if (st == IMAP_SEARCH_BADCHARSET)
		finish(cmd, IMAP_NO, "BADCHARSET (UTF-8 US-ASCII)",
		       op->prog.error);
	else if (st == IMAP_SEARCH_TOO_COMPLEX)
		finish(cmd, IMAP_NO, "LIMIT", op->prog.error);
	else
		finish(cmd, IMAP_BAD, NULL, op->prog.error != NULL ?
		       op->prog.error : "Invalid search program");
	return false;
}

/* ---- SEARCH and SORT answers ---- */

/*
 * The matches in the view, in the order given: nums_r gets what the
 * client sees (sequence numbers, or UIDs for the UID form), uids_r the
 * UIDs.
 */
static size_t view_filter(const imap_cmd *cmd, const uint32_t *in, size_t n,
			  uint32_t *nums_r, uint32_t *uids_r)
{
	const imap_selected *sel = cmd->s->sel;
	size_t k = 0;

	for (size_t i = 0; i < n; i++) {
		size_t at = imap_view_find(sel->uids, sel->n, in[i]);

		if (at == SIZE_MAX)
			continue;
		nums_r[k] = cmd->uid ? in[i] : (uint32_t)(at + 1);
		uids_r[k] = in[i];
		k++;
	}
	return k;
}

/* "* ESEARCH (TAG "t") [UID] MIN MAX ALL COUNT [MODSEQ]" (RFC 4731,
 * RFC 5267 for SORT: MIN/MAX are the first and last in sort order). */
static void put_esearch(imap_cmd *cmd, msg_op *op, eng_buf *b,
			const uint32_t *nums, size_t n, uint64_t modseq)
{
	if ((op->ret & (IMAP_RET_MIN | IMAP_RET_MAX | IMAP_RET_ALL |
			IMAP_RET_COUNT)) == 0)
		return;
	eng_buf_puts(b, "* ESEARCH (TAG ");
	imap_put_string(b, cmd->tag, strlen(cmd->tag));
	eng_buf_putc(b, ')');
	if (cmd->uid)
		eng_buf_puts(b, " UID");
	if (n > 0 && (op->ret & IMAP_RET_MIN) != 0)
		eng_buf_printf(b, " MIN %u", nums[0]);
	if (n > 0 && (op->ret & IMAP_RET_MAX) != 0)
		eng_buf_printf(b, " MAX %u", nums[n - 1]);
	if (n > 0 && (op->ret & IMAP_RET_ALL) != 0) {
		eng_buf_puts(b, " ALL ");
		imap_put_numset(b, nums, n);
	}
	if ((op->ret & IMAP_RET_COUNT) != 0)
		eng_buf_printf(b, " COUNT %zu", n);
	if (n > 0 && op->prog.uses_modseq && modseq > 0)
		eng_buf_printf(b, " MODSEQ %llu", (unsigned long long)modseq);
	eng_buf_puts(b, "\r\n");
}

/* "* SEARCH 1 2 3 [(MODSEQ m)]" or "* SORT ...". */
static void put_plain(imap_session *s, msg_op *op, eng_buf *b,
		      const char *what, const uint32_t *nums, size_t n,
		      uint64_t modseq)
{
	eng_buf_printf(b, "* %s", what);
	for (size_t i = 0; i < n; i++) {
		eng_buf_printf(b, " %u", nums[i]);
		flush_if_big(s, b);
	}
	if (n > 0 && op->prog.uses_modseq && modseq > 0)
		eng_buf_printf(b, " (MODSEQ %llu)", (unsigned long long)modseq);
	eng_buf_puts(b, "\r\n");
}

/* SAVE with only MIN/MAX keeps those (RFC 5182 2.4), else every match. */
static void save_result(imap_cmd *cmd, msg_op *op, const uint32_t *uids,
			size_t n)
{
	uint32_t pick[2];
	size_t k = 0;

	if ((op->ret & IMAP_RET_SAVE) == 0)
		return;
	if ((op->ret & (IMAP_RET_ALL | IMAP_RET_COUNT)) != 0 ||
	    (op->ret & (IMAP_RET_MIN | IMAP_RET_MAX)) == 0 || n == 0) {
		saved_set(cmd->s, uids, n);
		return;
	}
	if ((op->ret & IMAP_RET_MIN) != 0)
		pick[k++] = uids[0];
	if ((op->ret & IMAP_RET_MAX) != 0 && (k == 0 || n > 1))
		pick[k++] = uids[n - 1];
	saved_set(cmd->s, pick, k);
}

/* SEARCH and SORT: UIDS (and MODSEQ) to the answer. */
static void on_search_answer(imap_cmd *cmd, int err, const rpc_view *resp,
			     const char *what, bool sort)
{
	msg_op *op = cmd->op;
	uint32_t *uids = NULL, *nums, *vuids;
	uint64_t modseq = 0;
	eng_buf b = ENG_BUF_INIT;
	size_t n = 0;

	if (aborted(cmd))
		return;
	if (err == 0)
		err = collect_uids(resp, RPC_T_UIDS, &uids, &n);
	if (err != 0) {
		if ((op->ret & IMAP_RET_SAVE) != 0)
			saved_clear(cmd->s);
		fail_rpc(cmd, err, what);
		return;
	}
	(void)rpc_get_u64(resp, RPC_T_MODSEQ, &modseq);
	nums = eng_malloc((n > 0 ? n : 1) * sizeof(uint32_t));
	vuids = eng_malloc((n > 0 ? n : 1) * sizeof(uint32_t));
	n = view_filter(cmd, uids, n, nums, vuids);
	save_result(cmd, op, vuids, n);
	if (op->esearch)
		put_esearch(cmd, op, &b, nums, n, modseq);
	else
		put_plain(cmd->s, op, &b, sort ? "SORT" : "SEARCH", nums, n,
			  modseq);
	imap_write_buf(cmd->s, &b);
	eng_buf_free(&b);
	free(uids);
	free(nums);
	free(vuids);
	finish(cmd, IMAP_OK, NULL, sort ? "Sort completed" :
	       "Search completed");
}

static void on_search(imap_cmd *cmd, int err, const rpc_view *resp)
{
	on_search_answer(cmd, err, resp, "SEARCH", false);
}

static void on_sort(imap_cmd *cmd, int err, const rpc_view *resp)
{
	on_search_answer(cmd, err, resp, "SORT", true);
}

/* After a program parsed: CONDSTORE, the request, the call. */
static void run_program(imap_cmd *cmd, msg_op *op, uint16_t opcode,
			const uint32_t *sort_keys, size_t n_sort,
			uint32_t algorithm, imap_rpc_cb *cb, const char *what)
{
	if (op->prog.uses_modseq)
		enable_condstore(cmd->s);
	begin_mailbox_rpc(cmd, op);
	for (size_t i = 0; i < n_sort; i++)
		rpc_put_u64(&op->payload, RPC_T_SORT_KEY, sort_keys[i]);
	if (opcode == RPC_OP_THREAD)
		rpc_put_u64(&op->payload, RPC_T_ALGORITHM, algorithm);
	put_program(cmd, op);
	call(cmd, opcode, cb, what);
}

static void cmd_search(imap_cmd *cmd)
{
	msg_op *op = op_new(cmd);
	imap_session *s = cmd->s;

	if (!parse_program(cmd, op, cmd->args, cmd->n_args,
			   IMAP_SYNTAX_SEARCH))
		return;
	op->ret = op->prog.has_return ? op->prog.ret : IMAP_RET_ALL;
	op->esearch = op->prog.has_return || (s->enabled & IMAP_EN_REV2) != 0;
	run_program(cmd, op, RPC_OP_SEARCH, NULL, 0, 0, on_search, "SEARCH");
}

/* SORT [RETURN (opts)] (criteria) charset keys (RFC 5256, RFC 5267). */
static void cmd_sort(imap_cmd *cmd)
{
	msg_op *op = op_new(cmd);
	const imap_arg *a = cmd->args;
	size_t n = cmd->n_args, i = 0;
	uint32_t keys[IMAP_SORT_MAX_KEYS];
	size_t n_keys = 0;
	const char *t;

	t = n > 0 ? imap_arg_atom(&a[0]) : NULL;
	if (t != NULL && strcasecmp(t, "RETURN") == 0) {
		if (n < 2 || imap_search_parse_return(&a[1], &op->ret) != 0) {
			finish(cmd, IMAP_BAD, NULL, "Invalid RETURN options");
			return;
		}
		op->esearch = true;
		i = 2;
	}
	if (i >= n || imap_sort_parse_criteria(&a[i], keys, &n_keys) != 0) {
		if ((op->ret & IMAP_RET_SAVE) != 0)
			saved_clear(cmd->s);
		finish(cmd, IMAP_BAD, NULL, "Invalid sort criteria");
		return;
	}
	i++;
	if (!parse_program(cmd, op, a + i, n - i,
			   IMAP_SYNTAX_CHARSET_FIRST))
		return;
	run_program(cmd, op, RPC_OP_SORT, keys, n_keys, 0, on_sort, "SORT");
}

/* ---- THREAD ---- */

static void on_thread(imap_cmd *cmd, int err, const rpc_view *resp)
{
	const imap_selected *sel;
	rpc_tnode *nodes = NULL;
	imap_tnode *tn;
	const uint8_t *p;
	eng_buf b = ENG_BUF_INIT;
	size_t len, n = 0;

	if (aborted(cmd))
		return;
	if (err == 0)
		err = rpc_get_bytes(resp, RPC_T_THREAD_TREE, &p, &len);
	if (err == 0)
		err = rpc_thread_tree_parse(p, len, &nodes, &n);
	if (err != 0) {
		fail_rpc(cmd, err, "THREAD");
		return;
	}
	sel = cmd->s->sel;
	tn = eng_malloc((n > 0 ? n : 1) * sizeof(*tn));
	for (size_t i = 0; i < n; i++) {
		tn[i].uid = nodes[i].uid;
		tn[i].n_children = nodes[i].n_children;
	}
	free(nodes);
	eng_buf_puts(&b, "* THREAD");
	if (n > 1)
		eng_buf_putc(&b, ' ');
	imap_thread_render(tn, n, sel->uids, sel->n, cmd->uid, &b);
	/* Nothing visible: "* THREAD " would have a stray space. */
	if (b.len == 9)
		b.len = 8;
	eng_buf_puts(&b, "\r\n");
	imap_write_buf(cmd->s, &b);
	eng_buf_free(&b);
	free(tn);
	finish(cmd, IMAP_OK, NULL, "Thread completed");
}

/* THREAD algorithm charset keys (RFC 5256). */
static void cmd_thread(imap_cmd *cmd)
{
	msg_op *op = op_new(cmd);
	uint32_t alg;

	if (cmd->n_args < 1 ||
	    imap_thread_parse_algorithm(&cmd->args[0], &alg) != 0) {
		finish(cmd, IMAP_BAD, NULL, "Unknown thread algorithm");
		return;
	}
	if (!parse_program(cmd, op, cmd->args + 1, cmd->n_args - 1,
			   IMAP_SYNTAX_CHARSET_FIRST))
		return;
	run_program(cmd, op, RPC_OP_THREAD, NULL, 0, alg, on_thread,
		    "THREAD");
}

/* ---- STORE ---- */

/* Keywords of a MESSAGE group (copies; free with free_strv). */
static char **message_keywords(const rpc_view *g, size_t *n_r)
{
	size_t n = rpc_count(g, RPC_T_KEYWORD), k = 0;
	char **kw = eng_malloc((n > 0 ? n : 1) * sizeof(char *));
	const rpc_field *f;
	rpc_iter it;

	rpc_iter_init(&it, g);
	while ((f = rpc_iter_next(&it, RPC_T_KEYWORD)) != NULL && k < n) {
		if (f->type != RPC_W_BYTES)
			continue;
		kw[k++] = eng_strndup((const char *)f->data, (size_t)f->u);
	}
	*n_r = k;
	return kw;
}

static void free_strv(char **v, size_t n)
{
	for (size_t i = 0; i < n; i++)
		free(v[i]);
	free(v);
}

/* One changed message: the FETCH unless silent. Returns its new MODSEQ
 * (0 when it is not in the view). */
static uint64_t store_report(imap_cmd *cmd, const rpc_view *g, eng_buf *b)
{
	msg_op *op = cmd->op;
	imap_session *s = cmd->s;
	bool condstore = (s->enabled & IMAP_EN_CONDSTORE) != 0;
	uint32_t uid = 0, flags = 0, seq;
	uint64_t modseq = 0;
	char **kw;
	size_t n_kw;

	if (rpc_get_u32(g, RPC_T_UID, &uid) != 0 ||
	    (seq = imap_seq_of_uid(s->sel, uid)) == 0)
		return 0;
	(void)rpc_get_u32(g, RPC_T_FLAGS, &flags);
	(void)rpc_get_u64(g, RPC_T_MODSEQ, &modseq);
	s->sel->held.valid = false;      /* first_unseen may change */
	/* RFC 7162 3.1.3: under CONDSTORE even .SILENT reports the MODSEQ. */
	if (op->silent && !condstore)
		return modseq;
	eng_buf_printf(b, "* %u FETCH (", seq);
	if (!op->silent) {
		kw = message_keywords(g, &n_kw);
		eng_buf_puts(b, "FLAGS ");
		imap_put_flags(b, flags, (const char *const *)kw, n_kw);
		free_strv(kw, n_kw);
		eng_buf_putc(b, ' ');
	}
	if (cmd->uid)
		eng_buf_printf(b, "UID %u ", uid);
	if (condstore)
		eng_buf_printf(b, "MODSEQ (%llu) ", (unsigned long long)modseq);
	b->len--;                    /* the last space */
	eng_buf_puts(b, ")\r\n");
	flush_if_big(s, b);
	return modseq;
}

/* "[MODIFIED set]" for the UIDs refused by UNCHANGEDSINCE, or NULL. */
static char *modified_code(imap_cmd *cmd, const eng_uidset *failed)
{
	eng_buf b = ENG_BUF_INIT;
	uint32_t *nums;
	size_t n;

	nums = set_numbers(cmd->s->sel, failed, cmd->uid, &n);
	if (n == 0) {
		free(nums);
		return NULL;
	}
	qsort(nums, n, sizeof(*nums), u32_cmp);
	eng_buf_puts(&b, "MODIFIED ");
	imap_put_numset(&b, nums, n);
	eng_buf_putc(&b, '\0');
	free(nums);
	return eng_buf_steal(&b, NULL);
}

static void store_answer(imap_cmd *cmd, const eng_uidset *failed)
{
	char *code = failed != NULL ? modified_code(cmd, failed) : NULL;

	if (code != NULL) {
		op_free(cmd);
		imap_cmd_done(cmd, IMAP_OK, code, "Conditional STORE failed");
		free(code);
		return;
	}
	finish(cmd, IMAP_OK, NULL, "Store completed");
}

static void on_store(imap_cmd *cmd, int err, const rpc_view *resp)
{
	eng_uidset failed = { 0 };
	eng_buf b = ENG_BUF_INIT;
	uint64_t lo = UINT64_MAX, hi = 0;
	const rpc_field *f;
	rpc_iter it;

	if (aborted(cmd))
		return;
	if (err != 0) {
		fail_rpc(cmd, err, "STORE");
		return;
	}
	rpc_iter_init(&it, resp);
	while ((f = rpc_iter_next(&it, 0)) != NULL) {
		if (f->tag == RPC_T_MESSAGE && f->type == RPC_W_GROUP) {
			rpc_view g = rpc_field_group(f);
			uint64_t m = store_report(cmd, &g, &b);

			lo = m < lo ? m : lo;
			hi = m > hi ? m : hi;
		} else if (f->tag == RPC_T_FAILED) {
			rpc_view one = { f, 1 };

			(void)rpc_get_uidset(&one, RPC_T_FAILED, SIZE_MAX,
					     &failed);
		}
	}
	imap_write_buf(cmd->s, &b);
	eng_buf_free(&b);
	if (hi > 0)
		imap_view_advance(cmd->s->sel, resp, lo, hi);
	store_answer(cmd, failed.count > 0 ? &failed : NULL);
	eng_uidset_free(&failed);
}

/* "FLAGS", "+FLAGS.SILENT"...: the RPC mode, or -1. */
static int store_item(const char *t, bool *silent_r)
{
	int mode = RPC_MODE_SET;
	size_t len;

	if (t == NULL)
		return -1;
	if (*t == '+' || *t == '-')
		mode = *t++ == '+' ? RPC_MODE_ADD : RPC_MODE_REMOVE;
	len = strlen(t);
	*silent_r = len == 12 && strcasecmp(t + 5, ".SILENT") == 0;
	if ((len != 5 && !*silent_r) || strncasecmp(t, "FLAGS", 5) != 0)
		return -1;
	return mode;
}

/* "(UNCHANGEDSINCE n)" (RFC 7162 3.1.3). */
static bool store_modifiers(const imap_arg *list, uint64_t *since_r,
			    bool *has_r)
{
	for (size_t i = 0; i < list->n_list; i += 2) {
		const char *name = imap_arg_atom(&list->list[i]);

		if (name == NULL || strcasecmp(name, "UNCHANGEDSINCE") != 0 ||
		    i + 1 >= list->n_list || *has_r ||
		    !imap_arg_number(&list->list[i + 1], INT64_MAX, since_r))
			return false;
		*has_r = true;
	}
	return true;
}

/* Flags after the item: one list, or one or more flags. */
static int store_flags(const imap_arg *args, size_t n, uint32_t *flags_r,
		       const char ***kw_r, size_t *n_kw_r)
{
	imap_arg list = { 0 };

	if (n == 0)
		return ENG_EINVAL;
	if (n == 1)
		return imap_parse_flags(&args[0], flags_r, kw_r, n_kw_r);
	for (size_t i = 0; i < n; i++) {
		if (args[i].kind == IMAP_ARG_LIST)
			return ENG_EINVAL;
	}
	list.kind = IMAP_ARG_LIST;
	list.list = args;
	list.n_list = n;
	return imap_parse_flags(&list, flags_r, kw_r, n_kw_r);
}

static void store_request(imap_cmd *cmd, const eng_uidset *set, int mode,
			  uint32_t flags, const char **kw, size_t n_kw,
			  uint64_t since)
{
	msg_op *op = cmd->op;

	begin_mailbox_rpc(cmd, op);
	rpc_put_uidset(&op->payload, RPC_T_UIDSET, set);
	rpc_put_u64(&op->payload, RPC_T_MODE, (uint64_t)mode);
	rpc_put_u64(&op->payload, RPC_T_FLAGS, flags);
	for (size_t i = 0; i < n_kw; i++)
		rpc_put_str(&op->payload, RPC_T_KEYWORD, kw[i]);
	if (op->has_unchangedsince)
		rpc_put_u64(&op->payload, RPC_T_UNCHANGEDSINCE, since);
	call(cmd, RPC_OP_STORE, on_store, "STORE");
}

/* STORE set [(UNCHANGEDSINCE n)] item flags (RFC 3501 6.4.6, RFC 7162). */
static void cmd_store(imap_cmd *cmd)
{
	msg_op *op = op_new(cmd);
	const imap_arg *a = cmd->args;
	size_t n = cmd->n_args, i = 1;
	const char **kw = NULL;
	eng_uidset set;
	uint64_t since = 0;
	uint32_t flags = 0;
	size_t n_kw = 0;
	int mode;

	if (n < 3 || target_set(cmd, &a[0], &set) != 0) {
		finish(cmd, IMAP_BAD, NULL, "Invalid arguments");
		return;
	}
	if (a[1].kind == IMAP_ARG_LIST) {
		if (!store_modifiers(&a[1], &since, &op->has_unchangedsince)) {
			eng_uidset_free(&set);
			finish(cmd, IMAP_BAD, NULL, "Invalid STORE modifier");
			return;
		}
		i = 2;
	}
	mode = i < n ? store_item(imap_arg_atom(&a[i]), &op->silent) : -1;
	if (mode < 0 || store_flags(a + i + 1, n - i - 1, &flags, &kw,
				    &n_kw) != 0) {
		eng_uidset_free(&set);
		finish(cmd, IMAP_BAD, NULL, "Invalid flags");
		return;
	}
	if (cmd->s->sel->readonly) {
		finish(cmd, IMAP_NO, NULL, "Mailbox is read-only");
	} else {
		if (op->has_unchangedsince)
			enable_condstore(cmd->s);
		if (set.count == 0)
			finish(cmd, IMAP_OK, NULL, "Store completed");
		else if (op->has_unchangedsince && since == 0)
			/* RFC 7162 3.1.3: UNCHANGEDSINCE 0 always fails. */
			store_answer(cmd, &set);
		else
			store_request(cmd, &set, mode, flags, kw, n_kw, since);
	}
	free(kw);
	eng_uidset_free(&set);
}

/* ---- COPY and MOVE ---- */

static void put_copyuid(eng_buf *b, uint32_t uidvalidity, const uint32_t *src,
			const uint32_t *dst, size_t n)
{
	eng_buf_printf(b, "COPYUID %u ", uidvalidity);
	imap_put_numset(b, src, n);
	eng_buf_putc(b, ' ');
	imap_put_numset(b, dst, n);
}

static void on_copy_answer(imap_cmd *cmd, int err, const rpc_view *resp,
			   bool move)
{
	uint32_t *src = NULL, *dst = NULL, uidvalidity = 0;
	size_t n = 0, n_dst = 0;
	eng_buf code = ENG_BUF_INIT;

	if (aborted(cmd))
		return;
	if (err == ENG_ENOTFOUND) {
		finish(cmd, IMAP_NO, "TRYCREATE", "No such mailbox");
		return;
	}
	if (err == 0)
		err = collect_uids(resp, RPC_T_UIDS, &src, &n);
	if (err == 0)
		err = collect_uids(resp, RPC_T_DEST_UIDS, &dst, &n_dst);
	if (err == 0 && (n != n_dst ||
			 rpc_get_u32(resp, RPC_T_UIDVALIDITY, &uidvalidity)))
		err = n == 0 && n_dst == 0 ? 0 : RPC_EFIELDTYPE;
	if (err != 0) {
		free(src);
		free(dst);
		fail_rpc(cmd, err, move ? "MOVE" : "COPY");
		return;
	}
	/* Copies into the selected mailbox itself: EXISTS from the sync. */
	if (n > 0 && strcmp(((msg_op *)cmd->op)->dest, cmd->s->sel->name) == 0)
		cmd->s->sel->dirty = true;
	if (n > 0)
		put_copyuid(&code, uidvalidity, src, dst, n);
	eng_buf_putc(&code, '\0');
	if (move) {
		if (n > 0)
			imap_printf(cmd->s, "* OK [%s] Moved\r\n", code.data);
		report_expunged(cmd->s, src, n);
		op_free(cmd);
		imap_cmd_done(cmd, IMAP_OK, NULL, "Move completed");
	} else {
		op_free(cmd);
		imap_cmd_done(cmd, IMAP_OK, n > 0 ? code.data : NULL,
			      "Copy completed");
	}
	eng_buf_free(&code);
	free(src);
	free(dst);
}

static void on_copy(imap_cmd *cmd, int err, const rpc_view *resp)
{
	on_copy_answer(cmd, err, resp, false);
}

static void on_move(imap_cmd *cmd, int err, const rpc_view *resp)
{
	on_copy_answer(cmd, err, resp, true);
}

/* COPY/MOVE set mailbox (RFC 3501 6.4.7, RFC 6851, RFC 4315 COPYUID). */
static void copy_or_move(imap_cmd *cmd, bool move)
{
	msg_op *op = op_new(cmd);
	eng_uidset set;

	if (cmd->n_args != 2 || target_set(cmd, &cmd->args[0], &set) != 0) {
		finish(cmd, IMAP_BAD, NULL, "Invalid arguments");
		return;
	}
	if (imap_mailbox_from_client(cmd->s, &cmd->args[1], &op->dest) != 0) {
		eng_uidset_free(&set);
		finish(cmd, IMAP_NO, NULL, "Invalid mailbox name");
		return;
	}
	if (move && cmd->s->sel->readonly) {
		eng_uidset_free(&set);
		finish(cmd, IMAP_NO, NULL, "Mailbox is read-only");
		return;
	}
	if (set.count == 0) {
		finish(cmd, IMAP_OK, NULL, move ? "No messages moved" :
		       "No messages copied");
		return;
	}
	begin_mailbox_rpc(cmd, op);
	rpc_put_uidset(&op->payload, RPC_T_UIDSET, &set);
	rpc_put_str(&op->payload, RPC_T_DEST_MAILBOX, op->dest);
	eng_uidset_free(&set);
	call(cmd, move ? RPC_OP_MOVE : RPC_OP_COPY, move ? on_move : on_copy,
	     move ? "MOVE" : "COPY");
}

static void cmd_copy(imap_cmd *cmd)
{
	copy_or_move(cmd, false);
}

static void cmd_move(imap_cmd *cmd)
{
	copy_or_move(cmd, true);
}

/* ---- EXPUNGE ---- */

static void on_expunge(imap_cmd *cmd, int err, const rpc_view *resp)
{
	uint32_t *uids = NULL;
	size_t n = 0;
	uint64_t hms;

	if (aborted(cmd))
		return;
	if (err == 0)
		err = collect_uids(resp, RPC_T_UIDS, &uids, &n);
	if (err != 0) {
		fail_rpc(cmd, err, "EXPUNGE");
		return;
	}
	report_expunged(cmd->s, uids, n);
	free(uids);
	/* Every message the EXPUNGE removed existed at PRIOR_MODSEQ, so if
	 * that was the view's it is in the view and was just reported: the
	 * view is current at the answer's HIGHESTMODSEQ. Without this the
	 * sync after the next command told our own later STORE again
	 * whenever the EXPUNGE's event came in after that STORE. */
	if (rpc_get_u64(resp, RPC_T_HIGHESTMODSEQ, &hms) == 0)
		imap_view_advance(cmd->s->sel, resp, hms, hms);
	finish(cmd, IMAP_OK, NULL, "Expunge completed");
}

/* EXPUNGE, and UID EXPUNGE set (RFC 4315). */
static void cmd_expunge(imap_cmd *cmd)
{
	msg_op *op = op_new(cmd);
	eng_uidset set = { 0 };

	if (cmd->n_args != (cmd->uid ? 1u : 0u) ||
	    (cmd->uid && target_set(cmd, &cmd->args[0], &set) != 0)) {
		finish(cmd, IMAP_BAD, NULL, "Invalid arguments");
		return;
	}
	if (cmd->s->sel->readonly) {
		eng_uidset_free(&set);
		finish(cmd, IMAP_NO, NULL, "Mailbox is read-only");
		return;
	}
	if (cmd->uid && set.count == 0) {
		finish(cmd, IMAP_OK, NULL, "Expunge completed");
		return;
	}
	begin_mailbox_rpc(cmd, op);
	if (cmd->uid)
		rpc_put_uidset(&op->payload, RPC_T_UIDSET, &set);
	eng_uidset_free(&set);
	call(cmd, RPC_OP_EXPUNGE, on_expunge, "EXPUNGE");
}

/* ---- the table ---- */

#define SEL IMAP_CF_SELECTED
#define NOEXP IMAP_CF_NO_EXPUNGE

const imap_cmd_def imap_message_cmds[] = {
	{ "STORE", cmd_store, SEL | NOEXP, true },
	{ "COPY", cmd_copy, SEL | NOEXP, true },
	{ "MOVE", cmd_move, SEL, true },
	{ "EXPUNGE", cmd_expunge, SEL, true },
	{ "SEARCH", cmd_search, SEL | NOEXP, true },
	{ "SORT", cmd_sort, SEL | NOEXP, true },
	{ "THREAD", cmd_thread, SEL | NOEXP, true },
	{ NULL, NULL, 0, false },
};
