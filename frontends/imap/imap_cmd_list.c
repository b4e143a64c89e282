/*
 * LIST and LSUB (RFC 3501 6.3.8-9, RFC 9051 6.3.9, LIST-EXTENDED RFC 5258,
 * SPECIAL-USE RFC 6154, LIST-STATUS RFC 5819).
 *
 *   LIST [(selection options)] reference pattern|(patterns)
 *        [RETURN (return options)]
 *
 * One MAILBOX_LIST call gives every mailbox with its STATUS numbers, so
 * LIST-STATUS costs nothing more. Names are matched in UTF-8 (the pattern
 * is decoded from modified UTF-7 unless UTF8=ACCEPT is on): "*" matches
 * anything, "%" anything but the separator "/"; reference and pattern are
 * concatenated; an INBOX first level matches in any case.
 *
 * Attributes: \Noselect (a kept parent), \HasChildren / \HasNoChildren
 * always (CHILDREN), the special-use ones always (RFC 6154 allows it
 * without the return option, and clients look for them in plain LIST),
 * \Subscribed when SUBSCRIBED is a selection or return option.
 * Selection options: SUBSCRIBED, REMOTE (nothing is remote),
 * RECURSIVEMATCH (with SUBSCRIBED: a parent of a subscribed mailbox is
 * listed with CHILDINFO ("SUBSCRIBED")), SPECIAL-USE.
 *
 * Not done: sqlited lists subscriptions of existing mailboxes only, so a
 * subscription to a name that does not exist is never shown (no
 * \NonExistent entries); LSUB does not list unsubscribed parents of "%"
 * matches as \Noselect (RFC 3501's LSUB quirk).
 *
 * Bounds: at most LIST_PATTERNS_MAX patterns of LIST_PATTERN_MAX bytes;
 * matching is a dynamic program (pattern x name), never backtracking.
 */
#include "imap_mailbox.h"

#include "eng_error.h"
#include "rpc_proto.h"

#include <stdlib.h>
#include <string.h>
#include <strings.h>

#define LIST_PATTERNS_MAX 32
#define LIST_PATTERN_MAX 4096

enum list_sel {
	SEL_SUBSCRIBED = 1u << 0,
	SEL_RECURSIVEMATCH = 1u << 1,
	SEL_SPECIAL_USE = 1u << 2,
};

enum list_ret {
	RET_SUBSCRIBED = 1u << 0,
	RET_STATUS = 1u << 1,
};

typedef struct list_op {
	eng_buf pl;
	bool lsub;
	unsigned sel;                /* enum list_sel */
	unsigned ret;                /* enum list_ret */
	char *patterns[LIST_PATTERNS_MAX];
	size_t n_patterns;
	uint8_t items[IMAP_ST_MAX];
	size_t n_items;
	imap_mbx_info *boxes;
	size_t n_boxes;
} list_op;

static void list_free(imap_cmd *cmd)
{
	list_op *op = cmd->op;

	if (op == NULL)
		return;
	eng_buf_free(&op->pl);
	for (size_t i = 0; i < op->n_patterns; i++)
		free(op->patterns[i]);
	for (size_t i = 0; i < op->n_boxes; i++)
		imap_mbx_info_clear(&op->boxes[i]);
	free(op->boxes);
	free(op);
	cmd->op = NULL;
}

/* ---- Matching ---- */

/* p matches name: "*" any run, "%" any run without "/". */
static bool pattern_match(const char *p, const char *name)
{
	size_t m = strlen(p), n = strlen(name);
	bool *prev = eng_calloc(n + 1, sizeof(bool));
	bool *cur = eng_calloc(n + 1, sizeof(bool));
	bool match;

	prev[0] = true;
	for (size_t i = 1; i <= m; i++) {
		char c = p[i - 1];
		bool any = false;

		cur[0] = (c == '*' || c == '%') && prev[0];
		for (size_t j = 1; j <= n; j++) {
			if (c == '*')
				cur[j] = prev[j] || cur[j - 1];
			else if (c == '%')
				cur[j] = prev[j] ||
					 (name[j - 1] != '/' && cur[j - 1]);
			else
				cur[j] = prev[j - 1] && name[j - 1] == c;
			any |= cur[j];
		}
		any |= cur[0];
		bool *t = prev;

		prev = cur;
		cur = t;
		if (!any)
			break;
	}
	match = prev[n];
	free(prev);
	free(cur);
	return match;
}

static bool any_pattern(const list_op *op, const char *name)
{
	for (size_t i = 0; i < op->n_patterns; i++) {
		if (pattern_match(op->patterns[i], name))
			return true;
	}
	return false;
}

/* ---- Arguments ---- */

/* reference + pattern as UTF-8, INBOX upper-cased; NULL if not valid. */
static char *pattern_decode(const imap_session *s, const imap_arg *ref,
			    const imap_arg *pat)
{
	const char *r = imap_arg_astring(ref), *p = imap_arg_astring(pat);
	bool utf8 = (s->enabled & IMAP_EN_UTF8) != 0;
	eng_buf raw = ENG_BUF_INIT;
	char *out = NULL;

	if (r == NULL || p == NULL ||
	    ref->len + pat->len > LIST_PATTERN_MAX)
		return NULL;
	eng_buf_append(&raw, r, ref->len);
	eng_buf_append(&raw, p, pat->len);
	if (utf8 ? !imap_utf8_valid(raw.data, raw.len) :
	    imap_mutf7_decode(raw.data, raw.len, &out) != 0) {
		eng_buf_free(&raw);
		return NULL;
	}
	if (utf8)
		out = eng_buf_steal(&raw, NULL);
	eng_buf_free(&raw);
	if (strncasecmp(out, "INBOX", 5) == 0 &&
	    (out[5] == '\0' || out[5] == '/'))
		memcpy(out, "INBOX", 5);
	return out;
}

static int selection_options(list_op *op, const imap_arg *a)
{
	bool base = false;

	for (size_t i = 0; i < a->n_list; i++) {
		const char *o = imap_arg_atom(&a->list[i]);

		if (o == NULL)
			return ENG_EINVAL;
		if (strcasecmp(o, "SUBSCRIBED") == 0) {
			op->sel |= SEL_SUBSCRIBED;
			op->ret |= RET_SUBSCRIBED;
			base = true;
		} else if (strcasecmp(o, "SPECIAL-USE") == 0) {
			op->sel |= SEL_SPECIAL_USE;
			base = true;
		} else if (strcasecmp(o, "RECURSIVEMATCH") == 0) {
			op->sel |= SEL_RECURSIVEMATCH;
		} else if (strcasecmp(o, "REMOTE") != 0) {
			return ENG_EINVAL;
		}
	}
	/* RFC 5258 3.1: RECURSIVEMATCH needs a base option. */
	return (op->sel & SEL_RECURSIVEMATCH) && !base ? ENG_EINVAL : 0;
}

static int return_options(imap_session *s, list_op *op, const imap_arg *a)
{
	if (a->kind != IMAP_ARG_LIST)
		return ENG_EINVAL;
	for (size_t i = 0; i < a->n_list; i++) {
		const char *o = imap_arg_atom(&a->list[i]);

		if (o == NULL)
			return ENG_EINVAL;
		if (strcasecmp(o, "SUBSCRIBED") == 0) {
			op->ret |= RET_SUBSCRIBED;
		} else if (strcasecmp(o, "STATUS") == 0 && i + 1 < a->n_list &&
			   !(op->ret & RET_STATUS)) {
			if (imap_status_items_parse(s, &a->list[++i], op->items,
						    &op->n_items) != 0)
				return ENG_EINVAL;
			op->ret |= RET_STATUS;
		} else if (strcasecmp(o, "CHILDREN") != 0 &&
			   strcasecmp(o, "SPECIAL-USE") != 0) {
			return ENG_EINVAL;
		}
	}
	return 0;
}

static int add_pattern(imap_session *s, list_op *op, const imap_arg *ref,
		       const imap_arg *pat)
{
	char *p;

	if (op->n_patterns == LIST_PATTERNS_MAX ||
	    (p = pattern_decode(s, ref, pat)) == NULL)
		return ENG_EINVAL;
	op->patterns[op->n_patterns++] = p;
	return 0;
}

static int list_args(imap_cmd *cmd, list_op *op, bool *empty_r)
{
	const imap_arg *a = cmd->args;
	size_t n = cmd->n_args, i = 0;

	*empty_r = false;
	if (!op->lsub && n > 0 && a[0].kind == IMAP_ARG_LIST) {
		if (selection_options(op, &a[0]) != 0)
			return ENG_EINVAL;
		i++;
	}
	if (n < i + 2)
		return ENG_EINVAL;
	if (a[i + 1].kind == IMAP_ARG_LIST && !op->lsub) {
		if (a[i + 1].n_list == 0)
			return ENG_EINVAL;
		for (size_t k = 0; k < a[i + 1].n_list; k++) {
			if (add_pattern(cmd->s, op, &a[i], &a[i + 1].list[k]) != 0)
				return ENG_EINVAL;
		}
	} else {
		if (add_pattern(cmd->s, op, &a[i], &a[i + 1]) != 0)
			return ENG_EINVAL;
		/* LIST "" "": the hierarchy separator. */
		*empty_r = a[i + 1].len == 0 && i == 0 && !op->lsub;
	}
	i += 2;
	if (i < n) {
		const char *r = imap_arg_atom(&a[i]);

		if (op->lsub || r == NULL || strcasecmp(r, "RETURN") != 0 ||
		    i + 2 != n || return_options(cmd->s, op, &a[i + 1]) != 0)
			return ENG_EINVAL;
	}
	return 0;
}

/* ---- The answer ---- */

static int box_cmp(const void *a, const void *b)
{
	return strcmp(((const imap_mbx_info *)a)->name,
		      ((const imap_mbx_info *)b)->name);
}

/* Index of the first box whose name is >= key. */
static size_t lower_bound(const list_op *op, const char *key)
{
	size_t lo = 0, hi = op->n_boxes;

	while (lo < hi) {
		size_t mid = lo + (hi - lo) / 2;

		if (strcmp(op->boxes[mid].name, key) < 0)
			lo = mid + 1;
		else
			hi = mid;
	}
	return lo;
}

/* Whether box i has children, and whether one of them is subscribed. */
static void children_of(const list_op *op, size_t i, bool *has_r,
			bool *subscribed_r)
{
	eng_buf prefix = ENG_BUF_INIT;
	size_t k;

	*has_r = *subscribed_r = false;
	eng_buf_puts(&prefix, op->boxes[i].name);
	eng_buf_putc(&prefix, '/');
	for (k = lower_bound(op, prefix.data); k < op->n_boxes &&
	     strncmp(op->boxes[k].name, prefix.data, prefix.len) == 0; k++) {
		*has_r = true;
		if (op->boxes[k].subscribed) {
			*subscribed_r = true;
			break;
		}
		if ((op->sel & SEL_RECURSIVEMATCH) == 0)
			break;
	}
	eng_buf_free(&prefix);
}

static void put_attrs(const list_op *op, const imap_mbx_info *m,
		      bool children, eng_buf *b)
{
	size_t len0 = b->len;

	eng_buf_putc(b, '(');
	if (m->noselect)
		eng_buf_puts(b, "\\Noselect ");
	eng_buf_puts(b, children ? "\\HasChildren " : "\\HasNoChildren ");
	if (!op->lsub && (op->ret & RET_SUBSCRIBED) && m->subscribed)
		eng_buf_puts(b, "\\Subscribed ");
	for (size_t k = 0; !op->lsub && k < imap_n_special_uses; k++) {
		if (m->special_use & imap_special_uses[k].bit) {
			eng_buf_puts(b, imap_special_uses[k].name);
			eng_buf_putc(b, ' ');
		}
	}
	if (b->len > len0 + 1)
		b->data[--b->len] = '\0';   /* the last space */
	eng_buf_putc(b, ')');
}

/* One mailbox's LIST (and STATUS) lines, if it is selected. */
static void list_one(imap_cmd *cmd, const list_op *op, size_t i, eng_buf *b)
{
	const imap_mbx_info *m = &op->boxes[i];
	bool children, sub_child, childinfo = false;

	if (!any_pattern(op, m->name))
		return;
	children_of(op, i, &children, &sub_child);
	if (op->sel & SEL_SPECIAL_USE && m->special_use == 0)
		return;
	if (op->lsub || (op->sel & SEL_SUBSCRIBED)) {
		childinfo = (op->sel & SEL_RECURSIVEMATCH) && sub_child;
		if (!m->subscribed && !childinfo)
			return;
	}
	eng_buf_puts(b, op->lsub ? "* LSUB " : "* LIST ");
	put_attrs(op, m, children, b);
	eng_buf_puts(b, " \"/\" ");
	imap_put_mailbox(cmd->s, b, m->name);
	if (childinfo)
		eng_buf_puts(b, " (\"CHILDINFO\" (\"SUBSCRIBED\"))");
	eng_buf_puts(b, "\r\n");
	if ((op->ret & RET_STATUS) && !m->noselect)
		imap_status_put(cmd->s, b, m, op->items, op->n_items);
	imap_write_buf(cmd->s, b);
}

static int read_boxes(list_op *op, const rpc_view *resp)
{
	size_t n = rpc_count(resp, RPC_T_MAILBOX_INFO);
	const rpc_field *f;
	rpc_iter it;

	op->boxes = eng_calloc(n > 0 ? n : 1, sizeof(*op->boxes));
	rpc_iter_init(&it, resp);
	while ((f = rpc_iter_next(&it, RPC_T_MAILBOX_INFO)) != NULL &&
	       op->n_boxes < n) {
		rpc_view g = rpc_field_group(f);

		if (f->type != RPC_W_GROUP ||
		    imap_mbx_info_read(&g, &op->boxes[op->n_boxes]) != 0)
			return ENG_EIO;
		op->n_boxes++;
	}
	qsort(op->boxes, op->n_boxes, sizeof(*op->boxes), box_cmp);
	return 0;
}

static void on_list(imap_cmd *cmd, int err, const rpc_view *resp)
{
	list_op *op = cmd->op;
	eng_buf b = ENG_BUF_INIT;
	const char *what = op->lsub ? "LSUB" : "LIST";

	if (cmd->aborted) {
		list_free(cmd);
		return;
	}
	if (err == 0)
		err = read_boxes(op, resp);
	if (err != 0) {
		list_free(cmd);
		imap_cmd_fail_rpc(cmd, err, what);
		return;
	}
	for (size_t i = 0; i < op->n_boxes; i++)
		list_one(cmd, op, i, &b);
	eng_buf_free(&b);
	list_free(cmd);
	imap_cmd_done(cmd, IMAP_OK, NULL, "%s completed", what);
}

static void list_start(imap_cmd *cmd, bool lsub)
{
	list_op *op = eng_calloc(1, sizeof(*op));
	bool empty;

	op->lsub = lsub;
	cmd->op = op;
	if (list_args(cmd, op, &empty) != 0) {
		list_free(cmd);
		imap_cmd_done(cmd, IMAP_BAD, NULL, "Invalid %s arguments",
			      lsub ? "LSUB" : "LIST");
		return;
	}
	if (empty) {
		list_free(cmd);
		imap_printf(cmd->s, "* LIST (\\Noselect) \"/\" \"\"\r\n");
		imap_cmd_done(cmd, IMAP_OK, NULL, "LIST completed");
		return;
	}
	imap_rpc_begin(cmd->s, &op->pl);
	imap_mbx_call(cmd, RPC_OP_MAILBOX_LIST, &op->pl, on_list, list_free);
}

void imap_cmd_list(imap_cmd *cmd)
{
	list_start(cmd, false);
}

void imap_cmd_lsub(imap_cmd *cmd)
{
	list_start(cmd, true);
}
