/*
 * The mailbox commands: CREATE DELETE RENAME SUBSCRIBE UNSUBSCRIBE STATUS
 * UNSELECT CLOSE CHECK GETQUOTA GETQUOTAROOT here, SELECT and EXAMINE in
 * imap_cmd_select.c, LIST and LSUB in imap_cmd_list.c, APPEND in
 * imap_cmd_append.c; the table of all of them (imap_mailbox_cmds).
 *
 * Each handler checks its arguments, makes its RPC calls one after the
 * other (its state in cmd->op, freed before imap_cmd_done), and answers.
 * When the connection went away meanwhile the callback only frees the
 * state (cmd->aborted).
 *
 * MAILBOXID (RFC 8474): "M<row id>-<UIDVALIDITY>" from MAILBOX_STATUS /
 *   MAILBOX_LIST's MAILBOX_ID and UIDVALIDITY (imap_mailboxid_format);
 *   CREATE's tagged OK carries it from MAILBOX_CREATE's answer, STATUS
 *   (and LIST-STATUS) has a MAILBOXID item. RENAME keeps the row and its
 *   UIDVALIDITY; RENAME INBOX moves the row, so the renamed mailbox keeps
 *   INBOX's id and the new INBOX gets another; a re-created mailbox (and
 *   the \Noselect row DELETE leaves of a parent) gets a new UIDVALIDITY,
 *   so the id is never reused. From a sqlited without MAILBOX_ID there is
 *   no MAILBOXID at all (never a guessed one).
 */
#include "imap_mailbox.h"

#include "eng_error.h"
#include "rpc_proto.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

const imap_special_use imap_special_uses[] = {
	{ "\\Drafts", ENG_SU_DRAFTS },
	{ "\\Sent", ENG_SU_SENT },
	{ "\\Trash", ENG_SU_TRASH },
	{ "\\Junk", ENG_SU_JUNK },
	{ "\\Archive", ENG_SU_ARCHIVE },
	{ "\\All", ENG_SU_ALL },
	{ "\\Flagged", ENG_SU_FLAGGED },
};
const size_t imap_n_special_uses =
	sizeof(imap_special_uses) / sizeof(imap_special_uses[0]);

/* ---- Shared plumbing (imap_mailbox.h) ---- */

int imap_mbx_info_read(const rpc_view *g, imap_mbx_info *info)
{
	bool b;

	memset(info, 0, sizeof(*info));
	if (rpc_get_str(g, RPC_T_MAILBOX, &info->name) != 0 ||
	    rpc_get_u32(g, RPC_T_UIDVALIDITY, &info->uidvalidity) != 0) {
		imap_mbx_info_clear(info);
		return ENG_EMALFORMED;
	}
	rpc_get_u64(g, RPC_T_MAILBOX_ID, &info->mailbox_id);
	rpc_get_u32(g, RPC_T_UIDNEXT, &info->uidnext);
	rpc_get_u64(g, RPC_T_HIGHESTMODSEQ, &info->highestmodseq);
	rpc_get_u32(g, RPC_T_SPECIAL_USE, &info->special_use);
	if (rpc_get_bool(g, RPC_T_SUBSCRIBED, &b) == 0)
		info->subscribed = b;
	if (rpc_get_bool(g, RPC_T_NOSELECT, &b) == 0)
		info->noselect = b;
	rpc_get_u32(g, RPC_T_MESSAGES, &info->messages);
	rpc_get_u32(g, RPC_T_UNSEEN, &info->unseen);
	rpc_get_u32(g, RPC_T_DELETED, &info->deleted);
	rpc_get_u64(g, RPC_T_SIZE, &info->size);
	return 0;
}

void imap_mbx_info_clear(imap_mbx_info *info)
{
	free(info->name);
	memset(info, 0, sizeof(*info));
}

static const struct {
	const char *name;
	uint8_t item;
} status_names[] = {
	{ "MESSAGES", IMAP_ST_MESSAGES },
	{ "RECENT", IMAP_ST_RECENT },
	{ "UIDNEXT", IMAP_ST_UIDNEXT },
	{ "UIDVALIDITY", IMAP_ST_UIDVALIDITY },
	{ "UNSEEN", IMAP_ST_UNSEEN },
	{ "DELETED", IMAP_ST_DELETED },
	{ "SIZE", IMAP_ST_SIZE },
	{ "HIGHESTMODSEQ", IMAP_ST_HIGHESTMODSEQ },
	{ "APPENDLIMIT", IMAP_ST_APPENDLIMIT },
	{ "MAILBOXID", IMAP_ST_MAILBOXID },
};
#define N_STATUS_NAMES (sizeof(status_names) / sizeof(status_names[0]))

int imap_status_items_parse(imap_session *s, const imap_arg *list,
			    uint8_t *items, size_t *n_r)
{
	size_t n = 0;

	if (list == NULL || list->kind != IMAP_ARG_LIST || list->n_list == 0 ||
	    list->n_list > IMAP_ST_MAX)
		return ENG_EINVAL;
	for (size_t i = 0; i < list->n_list; i++) {
		const char *a = imap_arg_atom(&list->list[i]);
		size_t k;

		for (k = 0; a != NULL && k < N_STATUS_NAMES; k++) {
			if (strcasecmp(a, status_names[k].name) == 0)
				break;
		}
		if (a == NULL || k == N_STATUS_NAMES)
			return ENG_EINVAL;
		items[n++] = status_names[k].item;
		if (status_names[k].item == IMAP_ST_HIGHESTMODSEQ)
			s->enabled |= IMAP_EN_CONDSTORE;
	}
	*n_r = n;
	return 0;
}

static uint64_t status_value(const imap_session *s, const imap_mbx_info *m,
			     uint8_t item)
{
	switch (item) {
	case IMAP_ST_MESSAGES: return m->messages;
	case IMAP_ST_UIDNEXT: return m->uidnext;
	case IMAP_ST_UIDVALIDITY: return m->uidvalidity;
	case IMAP_ST_UNSEEN: return m->unseen;
	case IMAP_ST_DELETED: return m->deleted;
	case IMAP_ST_SIZE: return m->size;
	case IMAP_ST_HIGHESTMODSEQ: return m->highestmodseq;
	case IMAP_ST_APPENDLIMIT: return s->d != NULL ? s->d->append_max : 0;
	default: return 0;     /* RECENT: Sealmail has no \Recent */
	}
}

bool imap_mailboxid_format(char *out, uint64_t mailbox_id,
			   uint32_t uidvalidity)
{
	out[0] = '\0';
	if (mailbox_id == 0)
		return false;
	snprintf(out, IMAP_MAILBOXID_MAX, "M%llu-%u",
		 (unsigned long long)mailbox_id, uidvalidity);
	return true;
}

void imap_status_put(const imap_session *s, eng_buf *b,
		     const imap_mbx_info *info, const uint8_t *items, size_t n)
{
	char id[IMAP_MAILBOXID_MAX];
	bool have_id = imap_mailboxid_format(id, info->mailbox_id,
					     info->uidvalidity);
	const char *sep = "";

	eng_buf_puts(b, "* STATUS ");
	imap_put_mailbox(s, b, info->name);
	eng_buf_puts(b, " (");
	for (size_t i = 0; i < n; i++) {
		if (items[i] == IMAP_ST_MAILBOXID) {
			if (have_id) {
				eng_buf_printf(b, "%sMAILBOXID (%s)", sep, id);
				sep = " ";
			}
			continue;
		}
		for (size_t k = 0; k < N_STATUS_NAMES; k++) {
			if (status_names[k].item != items[i])
				continue;
			eng_buf_printf(b, "%s%s %llu", sep,
				       status_names[k].name,
				       (unsigned long long)status_value(
					       s, info, items[i]));
			sep = " ";
		}
	}
	eng_buf_puts(b, ")\r\n");
}

bool imap_mbx_call(imap_cmd *cmd, uint16_t opcode, const eng_buf *payload,
		   imap_rpc_cb *cb, void (*release)(imap_cmd *cmd))
{
	int rc = imap_rpc_call(cmd, opcode, payload, NULL, cb);

	if (rc == 0)
		return true;
	if (release != NULL)
		release(cmd);
	imap_cmd_fail_rpc(cmd, rc, cmd->name);
	return false;
}

char *imap_mbx_name_arg(imap_cmd *cmd, const imap_arg *a)
{
	char *name = NULL;

	if (imap_mailbox_from_client(cmd->s, a, &name) != 0) {
		imap_cmd_done(cmd, IMAP_NO, "CANNOT", "Invalid mailbox name");
		return NULL;
	}
	return name;
}

/* ---- Simple one-call commands: CREATE DELETE RENAME (UN)SUBSCRIBE ---- */

typedef struct simple_op {
	eng_buf pl;
	char *name;
	char *new_name;
} simple_op;

static void simple_free(imap_cmd *cmd)
{
	simple_op *op = cmd->op;

	if (op == NULL)
		return;
	eng_buf_free(&op->pl);
	free(op->name);
	free(op->new_name);
	free(op);
	cmd->op = NULL;
}

/* The op with its payload begun, or NULL after answering. */
static simple_op *simple_begin(imap_cmd *cmd, size_t n_args_min,
			       size_t n_args_max)
{
	simple_op *op;
	char *name;

	if (cmd->n_args < n_args_min || cmd->n_args > n_args_max) {
		imap_cmd_done(cmd, IMAP_BAD, NULL, "Wrong number of arguments");
		return NULL;
	}
	if ((name = imap_mbx_name_arg(cmd, &cmd->args[0])) == NULL)
		return NULL;
	op = eng_calloc(1, sizeof(*op));
	op->name = name;
	cmd->op = op;
	imap_rpc_begin(cmd->s, &op->pl);
	rpc_put_str(&op->pl, RPC_T_MAILBOX, name);
	return op;
}

static void selected_renamed(imap_session *s, const char *old_name,
			     const char *new_name)
{
	imap_selected *sel = s->sel;
	size_t len = strlen(old_name);
	eng_buf b = ENG_BUF_INIT;

	/* Renaming INBOX moves its messages; INBOX itself stays. */
	if (sel == NULL || strcmp(old_name, "INBOX") == 0 ||
	    strncmp(sel->name, old_name, len) != 0 ||
	    (sel->name[len] != '\0' && sel->name[len] != '/'))
		return;
	eng_buf_puts(&b, new_name);
	eng_buf_puts(&b, sel->name + len);
	free(sel->name);
	sel->name = eng_buf_steal(&b, NULL);
}

/* CREATE's tagged OK, with [MAILBOXID (id)] when sqlited gave the row id
 * (RFC 8474 4.1). */
static void create_done(imap_cmd *cmd, const rpc_view *resp)
{
	char id[IMAP_MAILBOXID_MAX], code[IMAP_MAILBOXID_MAX + 16];
	uint64_t mailbox_id = 0;
	uint32_t uidvalidity = 0;

	if (rpc_get_u64(resp, RPC_T_MAILBOX_ID, &mailbox_id) != 0 ||
	    rpc_get_u32(resp, RPC_T_UIDVALIDITY, &uidvalidity) != 0 ||
	    !imap_mailboxid_format(id, mailbox_id, uidvalidity)) {
		imap_cmd_done(cmd, IMAP_OK, NULL, "CREATE completed");
		return;
	}
	snprintf(code, sizeof(code), "MAILBOXID (%s)", id);
	imap_cmd_done(cmd, IMAP_OK, code, "CREATE completed");
}

static void on_simple(imap_cmd *cmd, int err, const rpc_view *resp)
{
	simple_op *op = cmd->op;
	imap_session *s = cmd->s;

	if (cmd->aborted) {
		simple_free(cmd);
		return;
	}
	if (err != 0) {
		simple_free(cmd);
		imap_cmd_fail_rpc(cmd, err, cmd->name);
		return;
	}
	if (strcmp(cmd->name, "CREATE") == 0) {
		simple_free(cmd);
		create_done(cmd, resp);
		return;
	}
	if (strcmp(cmd->name, "RENAME") == 0) {
		selected_renamed(s, op->name, op->new_name);
	} else if (strcmp(cmd->name, "DELETE") == 0 && s->sel != NULL &&
		   strcmp(s->sel->name, op->name) == 0) {
		imap_select_clear(s);
		imap_printf(s, "* OK [CLOSED] The selected mailbox was "
			    "deleted\r\n");
	}
	simple_free(cmd);
	imap_cmd_done(cmd, IMAP_OK, NULL, "%s completed", cmd->name);
}

/* "(USE (\Drafts ...))" of CREATE-SPECIAL-USE (RFC 6154 3). */
static int create_params(const imap_arg *a, uint32_t *use_r)
{
	const imap_arg *list;

	if (a->kind != IMAP_ARG_LIST || a->n_list != 2 ||
	    imap_arg_atom(&a->list[0]) == NULL ||
	    strcasecmp(a->list[0].s, "USE") != 0 ||
	    a->list[1].kind != IMAP_ARG_LIST)
		return ENG_EINVAL;
	list = &a->list[1];
	for (size_t i = 0; i < list->n_list; i++) {
		const char *u = imap_arg_atom(&list->list[i]);
		size_t k;

		for (k = 0; u != NULL && k < imap_n_special_uses; k++) {
			if (strcasecmp(u, imap_special_uses[k].name) == 0)
				break;
		}
		if (u == NULL || k == imap_n_special_uses)
			return ENG_ENOTFOUND;
		*use_r |= imap_special_uses[k].bit;
	}
	return 0;
}

static void cmd_create(imap_cmd *cmd)
{
	uint32_t use = 0;
	simple_op *op;
	int err;

	if ((op = simple_begin(cmd, 1, 2)) == NULL)
		return;
	if (cmd->n_args == 2 &&
	    (err = create_params(&cmd->args[1], &use)) != 0) {
		simple_free(cmd);
		if (err == ENG_ENOTFOUND)
			imap_cmd_done(cmd, IMAP_NO, "USEATTR",
				      "Unknown special-use attribute");
		else
			imap_cmd_done(cmd, IMAP_BAD, NULL,
				      "Invalid CREATE parameters");
		return;
	}
	if (strcmp(op->name, "INBOX") == 0) {
		simple_free(cmd);
		imap_cmd_done(cmd, IMAP_NO, "ALREADYEXISTS", "INBOX exists");
		return;
	}
	if (use != 0)
		rpc_put_u64(&op->pl, RPC_T_SPECIAL_USE, use);
	imap_mbx_call(cmd, RPC_OP_MAILBOX_CREATE, &op->pl, on_simple,
		      simple_free);
}

static void cmd_delete(imap_cmd *cmd)
{
	simple_op *op = simple_begin(cmd, 1, 1);

	if (op != NULL)
		imap_mbx_call(cmd, RPC_OP_MAILBOX_DELETE, &op->pl, on_simple,
			      simple_free);
}

static void cmd_rename(imap_cmd *cmd)
{
	simple_op *op = simple_begin(cmd, 2, 2);

	if (op == NULL)
		return;
	if ((op->new_name = imap_mbx_name_arg(cmd, &cmd->args[1])) == NULL) {
		/* imap_mbx_name_arg answered: only free. */
		eng_buf_free(&op->pl);
		free(op->name);
		free(op);
		return;
	}
	rpc_put_str(&op->pl, RPC_T_NEW_NAME, op->new_name);
	imap_mbx_call(cmd, RPC_OP_MAILBOX_RENAME, &op->pl, on_simple,
		      simple_free);
}

static void cmd_subscribe(imap_cmd *cmd)
{
	simple_op *op = simple_begin(cmd, 1, 1);

	if (op == NULL)
		return;
	rpc_put_bool(&op->pl, RPC_T_SUBSCRIBED,
		     strcmp(cmd->name, "SUBSCRIBE") == 0);
	imap_mbx_call(cmd, RPC_OP_MAILBOX_SUBSCRIBE, &op->pl, on_simple,
		      simple_free);
}

/* ---- STATUS ---- */

typedef struct status_op {
	eng_buf pl;
	uint8_t items[IMAP_ST_MAX];
	size_t n_items;
} status_op;

static void status_free(imap_cmd *cmd)
{
	status_op *op = cmd->op;

	if (op != NULL) {
		eng_buf_free(&op->pl);
		free(op);
		cmd->op = NULL;
	}
}

static void on_status(imap_cmd *cmd, int err, const rpc_view *resp)
{
	status_op *op = cmd->op;
	imap_mbx_info info;
	rpc_view g;
	eng_buf b = ENG_BUF_INIT;

	if (cmd->aborted) {
		status_free(cmd);
		return;
	}
	if (err == 0 && (rpc_get_group(resp, RPC_T_MAILBOX_INFO, &g) != 0 ||
			 imap_mbx_info_read(&g, &info) != 0))
		err = ENG_EIO;
	if (err != 0) {
		status_free(cmd);
		imap_cmd_fail_rpc(cmd, err, "STATUS");
		return;
	}
	if (info.noselect) {
		imap_mbx_info_clear(&info);
		status_free(cmd);
		imap_cmd_done(cmd, IMAP_NO, "NONEXISTENT",
			      "Mailbox is not selectable");
		return;
	}
	imap_status_put(cmd->s, &b, &info, op->items, op->n_items);
	imap_write_buf(cmd->s, &b);
	eng_buf_free(&b);
	imap_mbx_info_clear(&info);
	status_free(cmd);
	imap_cmd_done(cmd, IMAP_OK, NULL, "STATUS completed");
}

static void cmd_status(imap_cmd *cmd)
{
	status_op *op;
	char *name;

	if (cmd->n_args != 2) {
		imap_cmd_done(cmd, IMAP_BAD, NULL, "Wrong number of arguments");
		return;
	}
	op = eng_calloc(1, sizeof(*op));
	if (imap_status_items_parse(cmd->s, &cmd->args[1], op->items,
				    &op->n_items) != 0) {
		free(op);
		imap_cmd_done(cmd, IMAP_BAD, NULL, "Invalid STATUS items");
		return;
	}
	if ((name = imap_mbx_name_arg(cmd, &cmd->args[0])) == NULL) {
		free(op);
		return;
	}
	cmd->op = op;
	imap_rpc_begin(cmd->s, &op->pl);
	rpc_put_str(&op->pl, RPC_T_MAILBOX, name);
	free(name);
	imap_mbx_call(cmd, RPC_OP_MAILBOX_STATUS, &op->pl, on_status,
		      status_free);
}

/* ---- UNSELECT, CLOSE, CHECK ---- */

static void cmd_unselect(imap_cmd *cmd)
{
	imap_select_clear(cmd->s);
	imap_cmd_done(cmd, IMAP_OK, NULL, "%s completed", cmd->name);
}

static void on_close_expunge(imap_cmd *cmd, int err, const rpc_view *resp)
{
	eng_buf *pl = cmd->op;

	(void)resp;
	eng_buf_free(pl);
	free(pl);
	cmd->op = NULL;
	if (cmd->aborted)
		return;
	if (err != 0) {
		/* RFC 3501 6.4.2: the mailbox is closed all the same. */
		imap_select_clear(cmd->s);
		imap_cmd_fail_rpc(cmd, err, "CLOSE");
		return;
	}
	imap_select_clear(cmd->s);
	imap_cmd_done(cmd, IMAP_OK, NULL, "CLOSE completed");
}

static void close_free(imap_cmd *cmd)
{
	eng_buf *pl = cmd->op;

	eng_buf_free(pl);
	free(pl);
	cmd->op = NULL;
	imap_select_clear(cmd->s);
}

/* Expunges every \Deleted message silently (no EXPUNGE / VANISHED), unless
 * the mailbox was EXAMINEd. */
static void cmd_close(imap_cmd *cmd)
{
	imap_selected *sel = cmd->s->sel;
	eng_buf *pl;

	if (sel->readonly) {
		imap_select_clear(cmd->s);
		imap_cmd_done(cmd, IMAP_OK, NULL, "CLOSE completed");
		return;
	}
	pl = eng_calloc(1, sizeof(*pl));
	cmd->op = pl;
	imap_rpc_begin(cmd->s, pl);
	rpc_put_str(pl, RPC_T_MAILBOX, sel->name);
	rpc_put_u64(pl, RPC_T_UIDVALIDITY, sel->uidvalidity);
	imap_mbx_call(cmd, RPC_OP_EXPUNGE, pl, on_close_expunge, close_free);
}

static void cmd_check(imap_cmd *cmd)
{
	/* IMAP_CF_FORCE_SYNC: imap_cmd_done brings the view up to date. */
	imap_cmd_done(cmd, IMAP_OK, NULL, "CHECK completed");
}

/* ---- GETQUOTA, GETQUOTAROOT (RFC 9208; one root "" per account) ---- */

static void on_quota(imap_cmd *cmd, int err, const rpc_view *resp)
{
	eng_buf *pl = cmd->op;
	uint64_t used = 0, limit = 0;
	eng_buf b = ENG_BUF_INIT;

	eng_buf_free(pl);
	free(pl);
	cmd->op = NULL;
	if (cmd->aborted)
		return;
	if (err == 0 && (rpc_get_u64(resp, RPC_T_QUOTA_USED, &used) != 0 ||
			 rpc_get_u64(resp, RPC_T_QUOTA_LIMIT, &limit) != 0))
		err = ENG_EIO;
	if (err != 0) {
		imap_cmd_fail_rpc(cmd, err, cmd->name);
		return;
	}
	/* STORAGE is in units of 1024 octets; no limit: no resource. */
	if (limit == 0)
		eng_buf_puts(&b, "* QUOTA \"\" ()\r\n");
	else
		eng_buf_printf(&b, "* QUOTA \"\" (STORAGE %llu %llu)\r\n",
			       (unsigned long long)((used + 1023) / 1024),
			       (unsigned long long)(limit / 1024));
	imap_write_buf(cmd->s, &b);
	eng_buf_free(&b);
	imap_cmd_done(cmd, IMAP_OK, NULL, "%s completed", cmd->name);
}

static void quota_release(imap_cmd *cmd)
{
	eng_buf *pl = cmd->op;

	eng_buf_free(pl);
	free(pl);
	cmd->op = NULL;
}

static void quota_get(imap_cmd *cmd)
{
	eng_buf *pl = eng_calloc(1, sizeof(*pl));

	cmd->op = pl;
	imap_rpc_begin(cmd->s, pl);
	imap_mbx_call(cmd, RPC_OP_QUOTA_GET, pl, on_quota, quota_release);
}

static void cmd_getquota(imap_cmd *cmd)
{
	const char *root = cmd->n_args == 1 ? imap_arg_astring(&cmd->args[0]) :
			   NULL;

	if (root == NULL) {
		imap_cmd_done(cmd, IMAP_BAD, NULL, "Wrong arguments");
		return;
	}
	if (root[0] != '\0') {
		imap_cmd_done(cmd, IMAP_NO, "NONEXISTENT", "No such quota root");
		return;
	}
	quota_get(cmd);
}

/* GETQUOTAROOT checks that the mailbox exists first (MAILBOX_STATUS). */
static void on_quotaroot_status(imap_cmd *cmd, int err, const rpc_view *resp)
{
	simple_op *op = cmd->op;
	eng_buf b = ENG_BUF_INIT;

	(void)resp;
	if (cmd->aborted) {
		simple_free(cmd);
		return;
	}
	if (err != 0) {
		simple_free(cmd);
		imap_cmd_fail_rpc(cmd, err, "GETQUOTAROOT");
		return;
	}
	eng_buf_puts(&b, "* QUOTAROOT ");
	imap_put_mailbox(cmd->s, &b, op->name);
	eng_buf_puts(&b, " \"\"\r\n");
	imap_write_buf(cmd->s, &b);
	eng_buf_free(&b);
	simple_free(cmd);
	quota_get(cmd);
}

static void cmd_getquotaroot(imap_cmd *cmd)
{
	simple_op *op = simple_begin(cmd, 1, 1);

	if (op != NULL)
		imap_mbx_call(cmd, RPC_OP_MAILBOX_STATUS, &op->pl,
			      on_quotaroot_status, simple_free);
}

/* ---- The table ---- */

const imap_cmd_def imap_mailbox_cmds[] = {
	{ "SELECT", imap_cmd_select, IMAP_CF_LOGGEDIN, false },
	{ "EXAMINE", imap_cmd_select, IMAP_CF_LOGGEDIN, false },
	{ "CREATE", cmd_create, IMAP_CF_LOGGEDIN, false },
	{ "DELETE", cmd_delete, IMAP_CF_LOGGEDIN, false },
	{ "RENAME", cmd_rename, IMAP_CF_LOGGEDIN, false },
	{ "SUBSCRIBE", cmd_subscribe, IMAP_CF_LOGGEDIN, false },
	{ "UNSUBSCRIBE", cmd_subscribe, IMAP_CF_LOGGEDIN, false },
	{ "LIST", imap_cmd_list, IMAP_CF_LOGGEDIN, false },
	{ "LSUB", imap_cmd_lsub, IMAP_CF_LOGGEDIN, false },
	{ "STATUS", cmd_status, IMAP_CF_LOGGEDIN, false },
	{ "APPEND", imap_cmd_append, IMAP_CF_LOGGEDIN, false },
	{ "UNSELECT", cmd_unselect, IMAP_CF_SELECTED, false },
	{ "CLOSE", cmd_close, IMAP_CF_SELECTED, false },
	{ "CHECK", cmd_check, IMAP_CF_SELECTED | IMAP_CF_FORCE_SYNC, false },
	{ "GETQUOTA", cmd_getquota, IMAP_CF_LOGGEDIN, false },
	{ "GETQUOTAROOT", cmd_getquotaroot, IMAP_CF_LOGGEDIN, false },
	{ NULL, NULL, 0, false },
};
