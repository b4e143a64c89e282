/*
 * APPEND (RFC 3501 6.3.11, RFC 9051 6.3.12) with MULTIAPPEND (RFC 3502),
 * BINARY's literal8 (RFC 3516: the bytes are stored as given), LITERAL+ /
 * LITERAL-, APPENDLIMIT (RFC 7889) and UIDPLUS's APPENDUID (RFC 4315).
 *
 * A message is never buffered whole. The session streams each message
 * literal to us (imap.h, "APPEND streaming"); we relay it to sqlited's
 * APPEND through an rpc_client source as it arrives:
 *
 *   client --literal bytes--> imap_append_data --> relay buffer (at most
 *   APPEND_BUF_MAX bytes for the whole command) --> append_source -->
 *   RPC APPEND (DATA frames under sqlited's window)
 *
 * When the buffer is full, imap_append_data takes fewer bytes than offered
 * and the session holds its input (TCP backpressure to the client) until
 * the source drained the buffer and calls imap_append_resume(). When the
 * buffer is empty and the message is not over, the source answers
 * RPC_CLIENT_WAIT and is restarted by rpc_client_source_ready() when bytes
 * come.
 *
 * The messages of a MULTIAPPEND are uploaded one RPC after the other (the
 * RPC callback has no per-call context, and sqlited commits each APPEND on
 * its own anyway); the next message's bytes wait in the buffer meanwhile.
 * The tagged OK [APPENDUID uidvalidity uids] comes only after sqlited
 * acknowledged every message (committed and synced), and after the
 * client's command line ended.
 *
 * Failure: the first error decides the answer (ENOTFOUND: NO [TRYCREATE];
 * ELIMIT: NO [TOOBIG]; others through imap_cmd_fail_rpc). Bytes the
 * client still sends for the command are read and dropped, a further
 * literal is refused. MULTIAPPEND is all or nothing as far as sqlited
 * allows: the messages already stored by this command are removed again
 * with one UID EXPUNGE before the NO, so another session may briefly see
 * them (sqlited has no transaction across requests). If the connection
 * drops mid-command, the upload in flight is cancelled (nothing of it is
 * stored) but messages already committed stay.
 *
 * An APPEND is not retried after a dropped sqlited connection (the
 * client's bytes are not kept to resend): the client gets NO [UNAVAILABLE]
 * and appends again, under a new command. So it carries no
 * IDEMPOTENCY_KEY: no retry could present it, and each one cost sqlited a
 * lookup and a row in its idempotency table (a page written per APPEND,
 * in a table nothing prunes).
 */
#include "imap_mailbox.h"

#include "eng_error.h"
#include "rpc_proto.h"

#include <stdlib.h>
#include <string.h>
#include <strings.h>

/* The relay buffer of one APPEND command (all its messages). */
#define APPEND_BUF_MAX (256u * 1024)
/* Messages in one MULTIAPPEND (the parser bounds literals too). */
#define APPEND_MSGS_MAX 1000

typedef struct append_msg {
	uint64_t size;               /* the literal's announced size */
	uint64_t received;           /* taken from the client */
	uint64_t sent;               /* handed to the RPC source */
	uint32_t flags;
	const char **kw;             /* into the command's arguments */
	size_t n_kw;
	char **kw_copy;              /* copies (args change per literal) */
	int64_t internal_date;       /* 0: now */
	uint32_t uid;                /* once stored */
	uint32_t uidvalidity;
	bool stored;
	bool ended;                  /* the source said "end": END went out */
} append_msg;

typedef struct append_op {
	imap_cmd *cmd;
	char *mailbox;
	append_msg **msgs;
	size_t n_msgs;
	size_t n_done;               /* messages whose RPC finished */
	bool rpc_running;            /* APPEND of msgs[n_done] in flight */
	uint32_t rpc_id;
	bool waiting;                /* the source answered RPC_CLIENT_WAIT */
	bool rolling_back;           /* UID EXPUNGE of the stored ones */
	/* The relay buffer: bytes [rd, wr) of msgs[owner]. */
	uint8_t *buf;
	size_t cap, rd, wr, owner;
	bool held;                   /* we took less than offered */
	bool command_seen;           /* the command line ended */
	bool refused;                /* a literal was refused: no COMMAND */
	bool in_cancel;              /* inside rpc_client_cancel */
	int err;                     /* first RPC error */
	/* A failure decided here (bad arguments, parser error). */
	bool failed;
	enum imap_result fail_r;
	const char *fail_code;
	const char *fail_text;
	eng_buf pl;
} append_op;

static void maybe_finish(imap_cmd *cmd);

static void msg_free(append_msg *m)
{
	for (size_t i = 0; i < m->n_kw; i++)
		free(m->kw_copy[i]);
	free(m->kw_copy);
	free(m->kw);
	free(m);
}

static void op_free(imap_cmd *cmd)
{
	append_op *op = cmd->op;

	if (op == NULL)
		return;
	for (size_t i = 0; i < op->n_msgs; i++)
		msg_free(op->msgs[i]);
	free(op->msgs);
	free(op->buf);
	free(op->mailbox);
	eng_buf_free(&op->pl);
	free(op);
	cmd->op = NULL;
}

static void fail_local(append_op *op, enum imap_result r, const char *code,
		       const char *text)
{
	if (op->failed || op->err != 0)
		return;
	op->failed = true;
	op->fail_r = r;
	op->fail_code = code;
	op->fail_text = text;
}

static bool op_failed(const append_op *op)
{
	return op->failed || op->err != 0;
}

/* Drops buffered bytes after a failure and lets held input flow again
 * (it is then read and dropped). */
static void drain_after_failure(append_op *op)
{
	op->rd = op->wr = 0;
	if (op->held) {
		op->held = false;
		imap_append_resume(op->cmd);
	}
}

/* ---- The source: the relay buffer into the RPC upload ---- */

static long append_source(void *ctx, uint8_t *buf, size_t len)
{
	append_op *op = ctx;
	append_msg *m = op->msgs[op->n_done];
	size_t n;

	if (op_failed(op))
		return ENG_EINVAL;
	if (op->owner == op->n_done && op->rd < op->wr) {
		n = op->wr - op->rd < len ? op->wr - op->rd : len;
		memcpy(buf, op->buf + op->rd, n);
		op->rd += n;
		m->sent += n;
		if (op->rd == op->wr) {
			op->rd = op->wr = 0;
			if (op->held) {
				op->held = false;
				imap_append_resume(op->cmd);
			}
		}
		return (long)n;
	}
	if (m->sent == m->size) {
		m->ended = true;
		return 0;
	}
	op->waiting = true;
	return RPC_CLIENT_WAIT;
}

/* At most what append_source gives now (the DATA frame's size); 0 when
 * it can only end or wait. */
static size_t append_source_size(void *ctx)
{
	append_op *op = ctx;

	return op->owner == op->n_done ? op->wr - op->rd : 0;
}

static void on_append_rpc(imap_cmd *cmd, int err, const rpc_view *resp);

/* Starts the RPC of msgs[n_done] once the previous one is finished. */
static void start_next(imap_cmd *cmd)
{
	append_op *op = cmd->op;
	append_msg *m;
	rpc_client_opts opts;
	int rc;

	if (op->rpc_running || op_failed(op) || op->n_done >= op->n_msgs)
		return;
	m = op->msgs[op->n_done];
	imap_rpc_begin(cmd->s, &op->pl);
	rpc_put_str(&op->pl, RPC_T_MAILBOX, op->mailbox);
	rpc_put_u64(&op->pl, RPC_T_SIZE, m->size);
	if (m->flags != 0)
		rpc_put_u64(&op->pl, RPC_T_FLAGS, m->flags);
	for (size_t i = 0; i < m->n_kw; i++)
		rpc_put_str(&op->pl, RPC_T_KEYWORD, m->kw[i]);
	if (m->internal_date > 0)
		rpc_put_s64(&op->pl, RPC_T_INTERNAL_DATE, m->internal_date);
	memset(&opts, 0, sizeof(opts));
	opts.has_body = true;
	opts.source = append_source;
	opts.source_size = append_source_size;
	opts.source_ctx = op;
	op->rpc_running = true;
	op->waiting = false;
	rc = imap_rpc_call(cmd, RPC_OP_APPEND, &op->pl, &opts, on_append_rpc);
	if (rc != 0) {
		op->rpc_running = false;
		op->err = rc;
		drain_after_failure(op);
		return;
	}
	op->rpc_id = cmd->rpc_id;
}

static void on_append_rpc(imap_cmd *cmd, int err, const rpc_view *resp)
{
	append_op *op = cmd->op;
	append_msg *m;

	if (op == NULL)
		return;
	op->rpc_running = false;
	if (cmd->aborted) {
		if (!op->in_cancel)
			op_free(cmd);
		return;
	}
	m = op->msgs[op->n_done++];
	if (err == 0 && (rpc_get_u32(resp, RPC_T_UID, &m->uid) != 0 ||
			 rpc_get_u32(resp, RPC_T_UIDVALIDITY,
				     &m->uidvalidity) != 0))
		err = ENG_EIO;
	if (err != 0) {
		if (op->err == 0 && !op->failed)
			op->err = err;
		drain_after_failure(op);
	} else {
		m->stored = true;
	}
	start_next(cmd);
	if (!op->in_cancel)
		maybe_finish(cmd);
}

/* Cancels the upload in flight; its callback runs before this returns. */
static void cancel_running(imap_cmd *cmd)
{
	append_op *op = cmd->op;

	if (op == NULL || !op->rpc_running)
		return;
	op->in_cancel = true;
	rpc_client_cancel(cmd->s->d->rpc, op->rpc_id);
	op->in_cancel = false;
}

/* ---- The answer ---- */

static void on_rollback(imap_cmd *cmd, int err, const rpc_view *resp)
{
	append_op *op = cmd->op;

	(void)resp;
	if (op == NULL)
		return;
	op->rolling_back = false;
	if (cmd->aborted) {
		op_free(cmd);
		return;
	}
	if (err != 0)
		eng_log(ENG_LOG_WARN, "imap: APPEND: cannot remove the messages "
			"of a failed MULTIAPPEND: %s", rpc_strerror(err));
	for (size_t i = 0; i < op->n_msgs; i++)
		op->msgs[i]->stored = false;
	maybe_finish(cmd);
}

/* The UIDs this command stored (and their UIDVALIDITY) into op->pl, for
 * the rollback's RPCs; false if there are none. */
static bool stored_payload(imap_cmd *cmd)
{
	append_op *op = cmd->op;
	eng_uidset set = { NULL, 0, 0 };
	uint32_t uidvalidity = 0;

	for (size_t i = 0; i < op->n_msgs; i++) {
		if (op->msgs[i]->stored) {
			eng_uidset_add(&set, op->msgs[i]->uid, op->msgs[i]->uid);
			uidvalidity = op->msgs[i]->uidvalidity;
		}
	}
	if (set.count == 0)
		return false;
	imap_rpc_begin(cmd->s, &op->pl);
	rpc_put_str(&op->pl, RPC_T_MAILBOX, op->mailbox);
	rpc_put_u64(&op->pl, RPC_T_UIDVALIDITY, uidvalidity);
	rpc_put_uidset(&op->pl, RPC_T_UIDSET, &set);
	eng_uidset_free(&set);
	return true;
}

/* The rollback could not be done: logged, and not tried again (the
 * command answers its failure; the messages stay). */
static void rollback_failed(imap_cmd *cmd)
{
	append_op *op = cmd->op;

	op->rolling_back = false;
	for (size_t i = 0; i < op->n_msgs; i++)
		op->msgs[i]->stored = false;
	eng_log(ENG_LOG_WARN, "imap: APPEND: cannot remove the messages of a "
		"failed MULTIAPPEND");
}

/* Step 2: EXPUNGE of the UID set removes only \Deleted messages (UID
 * EXPUNGE semantics), which step 1 made them. */
static void on_rollback_store(imap_cmd *cmd, int err, const rpc_view *resp)
{
	append_op *op = cmd->op;

	(void)resp;
	if (op == NULL)
		return;
	if (cmd->aborted) {
		op->rolling_back = false;
		op_free(cmd);
		return;
	}
	if (err == 0 && stored_payload(cmd) &&
	    imap_rpc_call(cmd, RPC_OP_EXPUNGE, &op->pl, NULL, on_rollback) == 0)
		return;
	rollback_failed(cmd);
	maybe_finish(cmd);
}

/* Removes what this command stored: STORE +\Deleted, then EXPUNGE of
 * those UIDs. True if an RPC was started. */
static bool rollback(imap_cmd *cmd)
{
	append_op *op = cmd->op;

	if (!stored_payload(cmd))
		return false;
	rpc_put_u64(&op->pl, RPC_T_MODE, RPC_MODE_ADD);
	rpc_put_u64(&op->pl, RPC_T_FLAGS, ENG_F_DELETED);
	op->rolling_back = true;
	if (imap_rpc_call(cmd, RPC_OP_STORE, &op->pl, NULL,
			  on_rollback_store) != 0) {
		rollback_failed(cmd);
		return false;
	}
	return true;
}

/* "uid" or "a:b,c" in message order. */
static void put_uids(eng_buf *b, const append_op *op)
{
	for (size_t i = 0; i < op->n_msgs; ) {
		size_t j = i;

		while (j + 1 < op->n_msgs &&
		       op->msgs[j + 1]->uid == op->msgs[j]->uid + 1)
			j++;
		eng_buf_printf(b, "%s%u", i > 0 ? "," : "", op->msgs[i]->uid);
		if (j > i)
			eng_buf_printf(b, ":%u", op->msgs[j]->uid);
		i = j + 1;
	}
}

static void answer_failure(imap_cmd *cmd)
{
	append_op *op = cmd->op;
	int err = op->err;

	if (op->failed) {
		enum imap_result r = op->fail_r;
		const char *code = op->fail_code, *text = op->fail_text;

		op_free(cmd);
		imap_cmd_done(cmd, r, code, "%s", text);
		return;
	}
	op_free(cmd);
	if (err == ENG_ENOTFOUND)
		imap_cmd_done(cmd, IMAP_NO, "TRYCREATE", "No such mailbox");
	else if (err == ENG_ELIMIT)
		imap_cmd_done(cmd, IMAP_NO, "TOOBIG", "Message too large");
	else
		imap_cmd_fail_rpc(cmd, err, "APPEND");
}

static void answer_success(imap_cmd *cmd)
{
	append_op *op = cmd->op;
	imap_selected *sel = cmd->s->sel;
	eng_buf code = ENG_BUF_INIT;

	/* Our own EXISTS comes with the answer (imap_sync). */
	if (sel != NULL && strcmp(sel->name, op->mailbox) == 0)
		sel->dirty = true;
	eng_buf_printf(&code, "APPENDUID %u ",
		       op->msgs[op->n_msgs - 1]->uidvalidity);
	put_uids(&code, op);
	op_free(cmd);
	imap_cmd_done(cmd, IMAP_OK, code.data, "APPEND completed");
	eng_buf_free(&code);
}

/* Answers once nothing is in flight and the command is over. */
static void maybe_finish(imap_cmd *cmd)
{
	append_op *op = cmd->op;

	if (op == NULL || op->rpc_running || op->rolling_back ||
	    (!op->command_seen && !op->refused))
		return;
	if (!op_failed(op) && op->n_done < op->n_msgs)
		return;      /* start_next runs the rest */
	if (op_failed(op)) {
		if (!rollback(cmd))
			answer_failure(cmd);
		return;
	}
	answer_success(cmd);
}

/* ---- The streaming contract (imap.h) ---- */

static void on_abort(imap_cmd *cmd)
{
	append_op *op = cmd->op;

	if (op == NULL)
		return;
	if (op->rpc_running) {
		cancel_running(cmd);
		/* The callback saw cmd->aborted; free now if it did not. */
	}
	if (!op->rpc_running && !op->rolling_back)
		op_free(cmd);
}

/* Flags and date-time before a literal: [flag-list] [date-time]. */
static int message_params(append_msg *m, const imap_arg *a, size_t n)
{
	size_t i = 0;

	if (i < n && a[i].kind == IMAP_ARG_LIST) {
		const char **kw = NULL;

		if (imap_parse_flags(&a[i], &m->flags, &kw, &m->n_kw) != 0)
			return ENG_EINVAL;
		m->kw = kw;
		m->kw_copy = eng_calloc(m->n_kw + 1, sizeof(*m->kw_copy));
		for (size_t k = 0; k < m->n_kw; k++) {
			m->kw_copy[k] = eng_strdup(kw[k]);
			m->kw[k] = m->kw_copy[k];
		}
		i++;
	}
	if (i < n && a[i].kind == IMAP_ARG_QUOTED) {
		if (imap_parse_datetime(a[i].s, &m->internal_date) != 0 ||
		    m->internal_date <= 0)
			return ENG_EINVAL;
		i++;
	}
	return i == n ? 0 : ENG_EINVAL;
}

/* Refuses a literal: answered now if nothing is in flight, else when the
 * last callback came (the session skips the rest of the command). */
static bool refuse(imap_cmd *cmd)
{
	append_op *op = cmd->op;

	op->refused = true;
	/* An upload whose END went out may be committed by sqlited whatever a
	 * CANCEL says now: wait for its answer instead, so that a stored
	 * message is known and taken back by the rollback. */
	if (!(op->rpc_running && op->n_done < op->n_msgs &&
	      op->msgs[op->n_done]->ended))
		cancel_running(cmd);
	maybe_finish(cmd);
	return false;
}

bool imap_append_literal(imap_cmd *cmd, const imap_event *ev)
{
	append_op *op = cmd->op;
	const imap_arg *args = cmd->args;
	size_t n_args = cmd->n_args;
	append_msg *m;

	(void)ev;
	if (op == NULL) {
		op = eng_calloc(1, sizeof(*op));
		op->cmd = cmd;
		cmd->op = op;
		cmd->on_abort = on_abort;
		if (n_args < 1 || imap_mailbox_from_client(cmd->s, &args[0],
							   &op->mailbox) != 0) {
			fail_local(op, IMAP_NO, "CANNOT", "Invalid mailbox name");
			return refuse(cmd);
		}
		args++;
		n_args--;
	}
	if (op_failed(op))
		return refuse(cmd);
	if (op->n_msgs >= APPEND_MSGS_MAX) {
		fail_local(op, IMAP_NO, "LIMIT", "Too many messages");
		return refuse(cmd);
	}
	if (ev->literal_size > cmd->s->d->append_max) {
		fail_local(op, IMAP_NO, "TOOBIG", "Message too large");
		return refuse(cmd);
	}
	m = eng_calloc(1, sizeof(*m));
	m->size = ev->literal_size;
	if (message_params(m, args, n_args) != 0) {
		msg_free(m);
		fail_local(op, IMAP_BAD, NULL, "Invalid APPEND arguments");
		return refuse(cmd);
	}
	op->msgs = eng_realloc(op->msgs, (op->n_msgs + 1) * sizeof(*op->msgs));
	op->msgs[op->n_msgs++] = m;
	start_next(cmd);
	if (op->err != 0)
		return refuse(cmd);
	return true;
}

size_t imap_append_data(imap_cmd *cmd, const uint8_t *data, size_t len)
{
	append_op *op = cmd->op;
	size_t cur, n, want;

	if (op == NULL || op_failed(op) || op->n_msgs == 0)
		return len;                  /* read and dropped */
	cur = op->n_msgs - 1;
	if (op->rd < op->wr && op->owner != cur) {
		op->held = true;             /* the previous message's tail */
		return 0;
	}
	op->owner = cur;
	want = op->msgs[cur]->size < APPEND_BUF_MAX ?
	       (size_t)op->msgs[cur]->size : APPEND_BUF_MAX;
	if (op->cap < want) {
		op->buf = eng_realloc(op->buf, want);
		op->cap = want;
	}
	if (op->rd > 0 && op->wr == op->cap) {
		memmove(op->buf, op->buf + op->rd, op->wr - op->rd);
		op->wr -= op->rd;
		op->rd = 0;
	}
	n = op->cap - op->wr < len ? op->cap - op->wr : len;
	memcpy(op->buf + op->wr, data, n);
	op->wr += n;
	op->msgs[cur]->received += n;
	if (n < len)
		op->held = true;
	if (op->waiting && op->rpc_running && op->n_done == cur) {
		op->waiting = false;
		rpc_client_source_ready(cmd->s->d->rpc, op->rpc_id);
	}
	return n;
}

void imap_append_literal_end(imap_cmd *cmd)
{
	append_op *op = cmd->op;

	/* An empty literal: the source answers 0 (the end) when asked. */
	if (op != NULL && op->waiting && op->rpc_running) {
		op->waiting = false;
		rpc_client_source_ready(cmd->s->d->rpc, op->rpc_id);
	}
}

void imap_append_error(imap_cmd *cmd, const imap_event *ev)
{
	append_op *op = cmd->op;

	if (op == NULL) {
		imap_cmd_done(cmd, IMAP_BAD, NULL, "%s",
			      ev->text != NULL ? ev->text : "Invalid APPEND");
		return;
	}
	if (ev->err == IMAP_ELITERAL)
		fail_local(op, IMAP_NO, "TOOBIG", "Message too large");
	else
		fail_local(op, IMAP_BAD, NULL, ev->text != NULL ? ev->text :
			   "Invalid APPEND");
	/* The parser skips the rest: no IMAP_EV_COMMAND will come. */
	refuse(cmd);
}

/* IMAP_EV_COMMAND: the command line ended after the last literal. */
void imap_cmd_append(imap_cmd *cmd)
{
	append_op *op = cmd->op;

	if (op == NULL) {
		imap_cmd_done(cmd, IMAP_BAD, NULL, "APPEND needs a message "
			      "literal");
		return;
	}
	if (cmd->n_args != 0)
		fail_local(op, IMAP_BAD, NULL, "Invalid APPEND arguments");
	op->command_seen = true;
	maybe_finish(cmd);
}
