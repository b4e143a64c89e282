/*
 * Message metadata: FETCH of flags and dates, the sequence map of a
 * SELECT (UIDs and flags only, and the mailbox's keywords), STORE,
 * COPY/MOVE, EXPUNGE and the CONDSTORE/QRESYNC change log.
 *
 * Every change of a message row gives it the transaction's MODSEQ and
 * raises its mailbox's HIGHESTMODSEQ; every removed row leaves (uid,
 * modseq) in `expunged`, so "what changed since MODSEQ n" is two index
 * range scans.
 */
#include "store_private.h"
#include "eng_error.h"

#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>

#define META_COLUMNS \
	"m.id, m.uid, m.modseq, m.flags, m.internal_date, m.save_date, " \
	"m.size, m.content_id, m.thread_id, (SELECT group_concat(k.name, ' ') " \
	"FROM message_keyword mk JOIN keyword k ON k.id = mk.keyword_id " \
	"WHERE mk.message_id = m.id) "

/* Fills msg from a row of META_COLUMNS; returns the row id. */
static int64_t read_meta(sqlite3_stmt *stmt, eng_msg *msg)
{
	const char *kw = (const char *)sqlite3_column_text(stmt, 9);

	memset(msg, 0, sizeof(*msg));
	msg->uid = (uint32_t)sqlite3_column_int64(stmt, 1);
	msg->modseq = (uint64_t)sqlite3_column_int64(stmt, 2);
	msg->flags = (uint32_t)sqlite3_column_int64(stmt, 3);
	msg->internal_date = sqlite3_column_int64(stmt, 4);
	msg->save_date = sqlite3_column_int64(stmt, 5);
	msg->size = (uint64_t)sqlite3_column_int64(stmt, 6);
	msg->content_id = sqlite3_column_int64(stmt, 7);
	msg->thread_id = sqlite3_column_int64(stmt, 8);
	if (kw != NULL && *kw != '\0') {
		size_t n = 0;
		char *copy = eng_strdup(kw), *save = NULL;

		for (char *t = strtok_r(copy, " ", &save); t != NULL;
		     t = strtok_r(NULL, " ", &save)) {
			msg->keywords = eng_realloc(msg->keywords,
						    (n + 2) * sizeof(char *));
			msg->keywords[n++] = eng_strdup(t);
			msg->keywords[n] = NULL;
		}
		free(copy);
	}
	return sqlite3_column_int64(stmt, 0);
}

/* META_COLUMNS of the messages in uids; with want, then the header and
 * the MIME blob (NULL unless wanted), joined from the content row. */
static sqlite3_stmt *select_meta(eng_store *st, int64_t mailbox_id,
				 const eng_uidset *uids, unsigned want,
				 const char *extra, int *err_r)
{
	eng_buf sql = ENG_BUF_INIT;
	sqlite3_stmt *stmt;

	if (want == 0)
		eng_buf_puts(&sql, "SELECT " META_COLUMNS "FROM message m "
			     "WHERE m.mailbox_id = ?");
	else
		eng_buf_printf(&sql, "SELECT " META_COLUMNS ", %s, %s "
			       "FROM message m JOIN content c "
			       "ON c.id = m.content_id WHERE m.mailbox_id = ?",
			       (want & ENG_FETCH_WANT_HEADER) ? "c.header" :
			       "NULL", (want & ENG_FETCH_WANT_MIME) ? "c.mime" :
			       "NULL");
	store_uidset_sql(uids, &sql);
	if (extra != NULL)
		eng_buf_puts(&sql, extra);
	eng_buf_puts(&sql, " ORDER BY m.uid");
	stmt = store_prepare_once(st, sql.data, err_r);
	eng_buf_free(&sql);
	if (stmt != NULL)
		sqlite3_bind_int64(stmt, 1, mailbox_id);
	return stmt;
}

/* The blob of column col into *data_r / *len_r; an empty blob is "",
 * not NULL (SQLite gives NULL for both). */
static void read_blob(sqlite3_stmt *stmt, int col, const void **data_r,
		      size_t *len_r)
{
	*data_r = sqlite3_column_blob(stmt, col);
	*len_r = *data_r != NULL ? (size_t)sqlite3_column_bytes(stmt, col) : 0;
	if (*data_r == NULL && sqlite3_column_type(stmt, col) != SQLITE_NULL)
		*data_r = "";
}

/* The header (column 10) into msg; one that holds a zero block is checked
 * against the message's chunks (zero_check.c): 0 or ENG_ECORRUPT. */
static int read_header(eng_store *st, sqlite3_stmt *stmt, int64_t mailbox_id,
		       eng_msg *msg)
{
	eng_message *m;
	int err;

	read_blob(stmt, 10, &msg->header, &msg->header_len);
	if (!store_zero_block(msg->header, msg->header_len, 0))
		return 0;
	if ((err = eng_message_open(st, mailbox_id, msg->uid, &m)) != 0)
		return err;
	err = store_header_verify(m, msg->header, msg->header_len);
	eng_message_close(&m);
	return err;
}

int eng_fetch_meta(eng_store *st, int64_t mailbox_id, const eng_uidset *uids,
		   uint64_t changedsince, eng_msg_cb *cb, void *ctx)
{
	return eng_fetch_meta_want(st, mailbox_id, uids, changedsince, 0, cb,
				   ctx);
}

int eng_fetch_meta_want(eng_store *st, int64_t mailbox_id,
			const eng_uidset *uids, uint64_t changedsince,
			unsigned want, eng_msg_cb *cb, void *ctx)
{
	const char *extra = changedsince > 0 ? " AND m.modseq > ?2" : NULL;
	int err;
	sqlite3_stmt *stmt = select_meta(st, mailbox_id, uids, want, extra,
					 &err);
	int rc;

	if (stmt == NULL)
		return err;
	if (changedsince > 0)
		sqlite3_bind_int64(stmt, 2, (int64_t)changedsince);
	while ((rc = sqlite3_step(stmt)) == SQLITE_ROW) {
		eng_msg msg;
		int ret;

		read_meta(stmt, &msg);
		if (uids != NULL && !eng_uidset_contains(uids, msg.uid)) {
			eng_msg_clear(&msg);
			continue;
		}
		if ((want & ENG_FETCH_WANT_HEADER) &&
		    (ret = read_header(st, stmt, mailbox_id, &msg)) != 0) {
			eng_msg_clear(&msg);
			store_release(st, stmt);
			return ret;
		}
		if (want & ENG_FETCH_WANT_MIME)
			read_blob(stmt, 11, &msg.mime, &msg.mime_len);
		ret = cb(ctx, &msg);
		eng_msg_clear(&msg);
		if (ret != 0) {
			store_release(st, stmt);
			return ret;
		}
	}
	store_release(st, stmt);
	return rc == SQLITE_DONE ? 0 : store_err(st, rc, "fetch");
}

/* ---- The sequence map (SELECT) ---- */

int eng_mailbox_view(eng_store *st, int64_t mailbox_id, eng_view_cb *cb,
		     void *ctx)
{
	int err, rc;
	sqlite3_stmt *stmt = store_prepare(st, "SELECT uid, flags FROM message "
					   "WHERE mailbox_id = ? ORDER BY uid",
					   &err);

	if (stmt == NULL)
		return err;
	sqlite3_bind_int64(stmt, 1, mailbox_id);
	while ((rc = sqlite3_step(stmt)) == SQLITE_ROW) {
		int ret = cb(ctx, (uint32_t)sqlite3_column_int64(stmt, 0),
			     (uint32_t)sqlite3_column_int64(stmt, 1));

		if (ret != 0) {
			store_release(st, stmt);
			return ret;
		}
	}
	store_release(st, stmt);
	return rc == SQLITE_DONE ? 0 : store_err(st, rc, "view");
}

/* cb for each row of stmt (bound, column 0 a UID, column 1 flags or
 * none: flags 0), in its order; a non-zero return stops and is returned. */
static int view_rows(eng_store *st, sqlite3_stmt *stmt, bool with_flags,
		     eng_view_cb *cb, void *ctx)
{
	int rc;

	while ((rc = sqlite3_step(stmt)) == SQLITE_ROW) {
		int ret = cb(ctx, (uint32_t)sqlite3_column_int64(stmt, 0),
			     with_flags ? (uint32_t)sqlite3_column_int64(stmt, 1)
			     : 0);

		if (ret != 0) {
			store_release(st, stmt);
			return ret;
		}
	}
	store_release(st, stmt);
	return rc == SQLITE_DONE ? 0 : store_err(st, rc, "view since");
}

int eng_mailbox_view_since(eng_store *st, int64_t mailbox_id, uint64_t modseq,
			   eng_view_cb *changed, eng_view_cb *vanished,
			   void *ctx)
{
	int err;
	sqlite3_stmt *stmt;

	/* One read transaction: both lists describe the same state. The
	 * (mailbox_id, modseq) indexes, named: the planner would otherwise
	 * take (mailbox_id, uid) to save the sort and walk every row. */
	if ((err = store_exec(st, "SAVEPOINT view_since")) != 0)
		return err;
	stmt = store_prepare(st, "SELECT uid, flags FROM message INDEXED BY "
			     "message_modseq WHERE mailbox_id = ?1 AND "
			     "modseq > ?2 ORDER BY uid", &err);
	if (stmt == NULL)
		goto out;
	sqlite3_bind_int64(stmt, 1, mailbox_id);
	sqlite3_bind_int64(stmt, 2, (int64_t)modseq);
	if ((err = view_rows(st, stmt, true, changed, ctx)) != 0)
		goto out;
	stmt = store_prepare(st, "SELECT uid FROM expunged INDEXED BY "
			     "expunged_modseq WHERE mailbox_id = ?1 AND "
			     "modseq > ?2 ORDER BY uid", &err);
	if (stmt == NULL)
		goto out;
	sqlite3_bind_int64(stmt, 1, mailbox_id);
	sqlite3_bind_int64(stmt, 2, (int64_t)modseq);
	err = view_rows(st, stmt, false, vanished, ctx);
out:
	(void)store_exec(st, "RELEASE view_since");
	return err;
}

int eng_mailbox_keywords(eng_store *st, int64_t mailbox_id, size_t max,
			 eng_keyword_cb *cb, void *ctx)
{
	int err, rc;
	/* Per keyword (few), the first of its messages in this mailbox. */
	sqlite3_stmt *stmt = store_prepare(st, "SELECT k.name FROM keyword k "
		"WHERE EXISTS (SELECT 1 FROM message_keyword mk JOIN message m "
		"ON m.id = mk.message_id WHERE mk.keyword_id = k.id AND "
		"m.mailbox_id = ?1) ORDER BY k.id LIMIT ?2", &err);

	if (stmt == NULL)
		return err;
	sqlite3_bind_int64(stmt, 1, mailbox_id);
	sqlite3_bind_int64(stmt, 2, max > INT64_MAX ? INT64_MAX : (int64_t)max);
	while ((rc = sqlite3_step(stmt)) == SQLITE_ROW) {
		const char *name = (const char *)sqlite3_column_text(stmt, 0);
		int ret = name != NULL ? cb(ctx, name) : 0;

		if (ret != 0) {
			store_release(st, stmt);
			return ret;
		}
	}
	store_release(st, stmt);
	return rc == SQLITE_DONE ? 0 : store_err(st, rc, "keywords");
}

/* ---- STORE ---- */

static bool kw_has(char **list, const char *kw)
{
	for (; list != NULL && *list != NULL; list++) {
		if (strcasecmp(*list, kw) == 0)
			return true;
	}
	return false;
}

static size_t kw_count(char **list)
{
	size_t n = 0;

	while (list != NULL && list[n] != NULL)
		n++;
	return n;
}

/* The keyword list after the STORE; *changed_r says whether it differs. */
static char **kw_apply(char **cur, enum eng_store_mode mode,
		       const char *const *kws, size_t n_kws, bool *changed_r)
{
	size_t n_cur = kw_count(cur), n = 0;
	char **out = eng_calloc(n_cur + n_kws + 1, sizeof(char *));

	*changed_r = false;
	for (size_t i = 0; i < n_cur; i++) {
		bool listed = false;

		for (size_t j = 0; j < n_kws; j++)
			listed |= strcasecmp(cur[i], kws[j]) == 0;
		if ((mode == ENG_STORE_REMOVE && listed) ||
		    (mode == ENG_STORE_SET && !listed)) {
			*changed_r = true;
			continue;
		}
		out[n++] = cur[i];
	}
	if (mode != ENG_STORE_REMOVE) {
		for (size_t j = 0; j < n_kws; j++) {
			if (kw_has(cur, kws[j]))
				continue;
			/* Twice in the request counts once. */
			bool dup = false;

			for (size_t i = 0; i < n; i++)
				dup |= strcasecmp(out[i], kws[j]) == 0;
			if (dup)
				continue;
			out[n++] = (char *)kws[j];
			*changed_r = true;
		}
	}
	out[n] = NULL;
	return out;
}

struct change_list {
	eng_msg *msgs;
	size_t count;
};

static void change_list_free(struct change_list *cl)
{
	for (size_t i = 0; i < cl->count; i++)
		eng_msg_clear(&cl->msgs[i]);
	free(cl->msgs);
}

static int store_one(eng_store *st, int64_t mailbox_id, int64_t rowid,
		     eng_msg *msg, enum eng_store_mode mode, uint32_t flags,
		     const char *const *keywords, size_t n_keywords,
		     bool *changed_r)
{
	uint32_t new_flags;
	bool kw_changed;
	char **new_kw;
	uint64_t modseq;
	sqlite3_stmt *stmt;
	int err;

	switch (mode) {
	case ENG_STORE_ADD:
		new_flags = msg->flags | flags;
		break;
	case ENG_STORE_REMOVE:
		new_flags = msg->flags & ~flags;
		break;
	default:
		new_flags = flags;
		break;
	}
	new_kw = kw_apply(msg->keywords, mode, keywords, n_keywords,
			  &kw_changed);
	*changed_r = new_flags != msg->flags || kw_changed;
	if (!*changed_r) {
		free(new_kw);
		return 0;
	}
	if ((err = store_tx_modseq(st, &modseq)) != 0)
		goto out;
	if (kw_count(new_kw) > ENG_KEYWORDS_PER_MESSAGE) {
		err = ENG_ELIMIT;
		goto out;
	}
	stmt = store_prepare(st, "UPDATE message SET flags = ?, modseq = ? "
			     "WHERE id = ?", &err);
	if (stmt == NULL)
		goto out;
	sqlite3_bind_int64(stmt, 1, new_flags);
	sqlite3_bind_int64(stmt, 2, (int64_t)modseq);
	sqlite3_bind_int64(stmt, 3, rowid);
	if ((err = store_step_done(st, stmt)) != 0)
		goto out;
	if (kw_changed &&
	    (err = store_set_keywords(st, rowid, (const char *const *)new_kw,
				      kw_count(new_kw))) != 0)
		goto out;
	err = store_mailbox_account(st, mailbox_id, 0,
		(int64_t)!(new_flags & ENG_F_SEEN) - !(msg->flags & ENG_F_SEEN),
		(int64_t)!!(new_flags & ENG_F_DELETED) -
		!!(msg->flags & ENG_F_DELETED), 0, modseq);
	if (err != 0)
		goto out;
	/* Report the new state: keywords copied before cur is freed. */
	{
		size_t n = kw_count(new_kw);
		char **kw = NULL;

		if (n > 0) {
			kw = eng_calloc(n + 1, sizeof(char *));
			for (size_t i = 0; i < n; i++)
				kw[i] = eng_strdup(new_kw[i]);
		}
		free(new_kw);
		new_kw = NULL;
		eng_msg_clear(msg);
		msg->keywords = kw;
		msg->flags = new_flags;
		msg->modseq = modseq;
	}
out:
	free(new_kw);
	return err;
}

int eng_store_flags(eng_store *st, int64_t mailbox_id, const eng_uidset *uids,
		    enum eng_store_mode mode, uint32_t flags,
		    const char *const *keywords, size_t n_keywords,
		    uint64_t unchangedsince, eng_uidset *failed,
		    eng_msg_cb *changed, void *ctx)
{
	struct change_list cl = { NULL, 0 };
	sqlite3_stmt *stmt;
	int err, rc;

	if (flags & ~(uint32_t)ENG_F_ALL || n_keywords > ENG_KEYWORDS_PER_MESSAGE)
		return ENG_EINVAL;
	for (size_t i = 0; i < n_keywords; i++) {
		int64_t id;

		/* Validates the name; creation waits for a real change. */
		err = store_keyword_id(st, keywords[i], false, &id);
		if (err != 0 && err != ENG_ENOTFOUND)
			return err;
	}
	if ((err = eng_store_tx_begin(st)) != 0)
		return err;
	stmt = select_meta(st, mailbox_id, uids, 0, NULL, &err);
	if (stmt == NULL)
		goto fail;
	while ((rc = sqlite3_step(stmt)) == SQLITE_ROW) {
		eng_msg msg;
		int64_t rowid = read_meta(stmt, &msg);
		bool did = false;

		if (uids != NULL && !eng_uidset_contains(uids, msg.uid)) {
			eng_msg_clear(&msg);
			continue;
		}
		if (unchangedsince > 0 && msg.modseq > unchangedsince) {
			if (failed != NULL)
				eng_uidset_add(failed, msg.uid, msg.uid);
			eng_msg_clear(&msg);
			continue;
		}
		err = store_one(st, mailbox_id, rowid, &msg, mode, flags,
				keywords, n_keywords, &did);
		if (err != 0) {
			eng_msg_clear(&msg);
			store_release(st, stmt);
			goto fail;
		}
		if (!did) {
			eng_msg_clear(&msg);
			continue;
		}
		cl.msgs = eng_realloc(cl.msgs, (cl.count + 1) * sizeof(eng_msg));
		cl.msgs[cl.count++] = msg;
	}
	store_release(st, stmt);
	if (rc != SQLITE_DONE) {
		err = store_err(st, rc, "store");
		goto fail;
	}
	if ((err = eng_store_tx_commit(st)) != 0)
		goto fail;
	for (size_t i = 0; changed != NULL && i < cl.count; i++)
		changed(ctx, &cl.msgs[i]);
	change_list_free(&cl);
	return 0;
fail:
	eng_store_tx_rollback(st);
	change_list_free(&cl);
	return err;
}

/* ---- COPY / MOVE / EXPUNGE ---- */

static int log_expunged(eng_store *st, int64_t mailbox_id, uint32_t uid,
			uint64_t modseq)
{
	int err;
	sqlite3_stmt *stmt = store_prepare(st, "INSERT OR REPLACE INTO expunged "
		"(mailbox_id, uid, modseq) VALUES (?, ?, ?)", &err);

	if (stmt == NULL)
		return err;
	sqlite3_bind_int64(stmt, 1, mailbox_id);
	sqlite3_bind_int64(stmt, 2, uid);
	sqlite3_bind_int64(stmt, 3, (int64_t)modseq);
	return store_step_done(st, stmt);
}

/* Removes one message row (its content loses a reference). */
static int remove_row(eng_store *st, int64_t mailbox_id, int64_t rowid,
		      const eng_msg *msg, uint64_t modseq)
{
	int err;
	sqlite3_stmt *stmt;

	if ((err = store_content_unref(st, msg->content_id)) != 0)
		return err;
	stmt = store_prepare(st, "DELETE FROM message_keyword WHERE "
			     "message_id = ?", &err);
	if (stmt == NULL)
		return err;
	sqlite3_bind_int64(stmt, 1, rowid);
	if ((err = store_step_done(st, stmt)) != 0)
		return err;
	stmt = store_prepare(st, "DELETE FROM message WHERE id = ?", &err);
	if (stmt == NULL)
		return err;
	sqlite3_bind_int64(stmt, 1, rowid);
	if ((err = store_step_done(st, stmt)) != 0)
		return err;
	if ((err = log_expunged(st, mailbox_id, msg->uid, modseq)) != 0)
		return err;
	return store_mailbox_account(st, mailbox_id, -1,
				     (msg->flags & ENG_F_SEEN) ? 0 : -1,
				     (msg->flags & ENG_F_DELETED) ? -1 : 0,
				     -(int64_t)msg->size, modseq);
}

static int copy_row(eng_store *st, int64_t dst, int64_t rowid,
		    const eng_msg *msg, uint64_t modseq, uint32_t *uid_r)
{
	uint32_t uid;
	int err;
	sqlite3_stmt *stmt;
	int64_t new_rowid;

	if ((err = store_mailbox_uidnext(st, dst, &uid)) != 0)
		return err;
	stmt = store_prepare(st, "INSERT INTO message (mailbox_id, uid, modseq, "
		"flags, internal_date, save_date, size, content_id, thread_id) "
		"SELECT ?, ?, ?, flags, internal_date, ?, size, content_id, "
		"thread_id FROM message WHERE id = ?", &err);
	if (stmt == NULL)
		return err;
	sqlite3_bind_int64(stmt, 1, dst);
	sqlite3_bind_int64(stmt, 2, uid);
	sqlite3_bind_int64(stmt, 3, (int64_t)modseq);
	sqlite3_bind_int64(stmt, 4, (int64_t)time(NULL));
	sqlite3_bind_int64(stmt, 5, rowid);
	if ((err = store_step_done(st, stmt)) != 0)
		return err;
	new_rowid = sqlite3_last_insert_rowid(st->db);
	stmt = store_prepare(st, "INSERT INTO message_keyword (message_id, "
			     "keyword_id) SELECT ?, keyword_id FROM "
			     "message_keyword WHERE message_id = ?", &err);
	if (stmt == NULL)
		return err;
	sqlite3_bind_int64(stmt, 1, new_rowid);
	sqlite3_bind_int64(stmt, 2, rowid);
	if ((err = store_step_done(st, stmt)) != 0)
		return err;
	stmt = store_prepare(st, "UPDATE content SET refs = refs + 1 "
			     "WHERE id = ?", &err);
	if (stmt == NULL)
		return err;
	sqlite3_bind_int64(stmt, 1, msg->content_id);
	if ((err = store_step_done(st, stmt)) != 0)
		return err;
	if ((err = store_mailbox_added(st, dst, uid, msg->flags,
				       (int64_t)msg->size, modseq)) != 0)
		return err;
	*uid_r = uid;
	return 0;
}

struct row {
	int64_t rowid;
	eng_msg msg;
};

/* Collects the rows first: the loop below changes the table it reads. */
static int collect_rows(eng_store *st, int64_t mailbox_id,
			const eng_uidset *uids, const char *extra,
			struct row **rows_r, size_t *n_r)
{
	int err, rc;
	sqlite3_stmt *stmt = select_meta(st, mailbox_id, uids, 0, extra, &err);
	struct row *rows = NULL;
	size_t n = 0;

	*rows_r = NULL;
	*n_r = 0;
	if (stmt == NULL)
		return err;
	while ((rc = sqlite3_step(stmt)) == SQLITE_ROW) {
		struct row r;

		r.rowid = read_meta(stmt, &r.msg);
		if (uids != NULL && !eng_uidset_contains(uids, r.msg.uid)) {
			eng_msg_clear(&r.msg);
			continue;
		}
		rows = eng_realloc(rows, (n + 1) * sizeof(*rows));
		rows[n++] = r;
	}
	store_release(st, stmt);
	*rows_r = rows;
	*n_r = n;
	return rc == SQLITE_DONE ? 0 : store_err(st, rc, "collect");
}

static void rows_free(struct row *rows, size_t n)
{
	for (size_t i = 0; i < n; i++)
		eng_msg_clear(&rows[i].msg);
	free(rows);
}

static int mailbox_selectable(eng_store *st, int64_t mailbox_id)
{
	int err;
	sqlite3_stmt *stmt = store_prepare(st,
		"SELECT noselect FROM mailbox WHERE id = ?", &err);
	int rc, noselect = 0;

	if (stmt == NULL)
		return err;
	sqlite3_bind_int64(stmt, 1, mailbox_id);
	rc = sqlite3_step(stmt);
	if (rc == SQLITE_ROW)
		noselect = sqlite3_column_int(stmt, 0);
	store_release(st, stmt);
	if (rc != SQLITE_ROW)
		return rc == SQLITE_DONE ? ENG_ENOTFOUND :
			store_err(st, rc, "mailbox");
	return noselect ? ENG_EPERM : 0;
}

int eng_message_copy(eng_store *st, int64_t src_mailbox_id,
		     const eng_uidset *uids, int64_t dst_mailbox_id, bool move,
		     uint32_t **src_uids_r, uint32_t **dst_uids_r, size_t *n_r)
{
	struct row *rows = NULL;
	size_t n = 0;
	uint32_t *src_uids = NULL, *dst_uids = NULL;
	uint64_t modseq;
	int err;

	if (src_uids_r != NULL)
		*src_uids_r = NULL;
	if (dst_uids_r != NULL)
		*dst_uids_r = NULL;
	if (n_r != NULL)
		*n_r = 0;
	if (src_mailbox_id == dst_mailbox_id && move)
		return ENG_EINVAL;
	if ((err = eng_store_tx_begin(st)) != 0)
		return err;
	if ((err = mailbox_selectable(st, src_mailbox_id)) != 0 ||
	    (err = mailbox_selectable(st, dst_mailbox_id)) != 0 ||
	    (err = collect_rows(st, src_mailbox_id, uids, NULL, &rows, &n)) != 0)
		goto fail;
	if (n > 0 && (err = store_tx_modseq(st, &modseq)) != 0)
		goto fail;
	src_uids = eng_calloc(n, sizeof(uint32_t));
	dst_uids = eng_calloc(n, sizeof(uint32_t));
	for (size_t i = 0; i < n; i++) {
		src_uids[i] = rows[i].msg.uid;
		if ((err = copy_row(st, dst_mailbox_id, rows[i].rowid,
				    &rows[i].msg, modseq, &dst_uids[i])) != 0)
			goto fail;
		if (move && (err = remove_row(st, src_mailbox_id, rows[i].rowid,
					      &rows[i].msg, modseq)) != 0)
			goto fail;
	}
	if ((err = eng_store_tx_commit(st)) != 0)
		goto fail;
	rows_free(rows, n);
	if (src_uids_r != NULL && dst_uids_r != NULL) {
		*src_uids_r = src_uids;
		*dst_uids_r = dst_uids;
	} else {
		free(src_uids);
		free(dst_uids);
	}
	if (n_r != NULL)
		*n_r = n;
	return 0;
fail:
	eng_store_tx_rollback(st);
	rows_free(rows, n);
	free(src_uids);
	free(dst_uids);
	return err;
}

int eng_expunge(eng_store *st, int64_t mailbox_id, const eng_uidset *uids,
		uint32_t **uids_r, size_t *n_r)
{
	struct row *rows = NULL;
	size_t n = 0;
	uint64_t modseq;
	uint32_t *out = NULL;
	int err;

	if (uids_r != NULL)
		*uids_r = NULL;
	if (n_r != NULL)
		*n_r = 0;
	if ((err = eng_store_tx_begin(st)) != 0)
		return err;
	if ((err = collect_rows(st, mailbox_id, uids, " AND (flags & 8) != 0",
				&rows, &n)) != 0)
		goto fail;
	if (n > 0 && (err = store_tx_modseq(st, &modseq)) != 0)
		goto fail;
	out = eng_calloc(n, sizeof(uint32_t));
	for (size_t i = 0; i < n; i++) {
		out[i] = rows[i].msg.uid;
		if ((err = remove_row(st, mailbox_id, rows[i].rowid,
				      &rows[i].msg, modseq)) != 0)
			goto fail;
	}
	if ((err = eng_store_tx_commit(st)) != 0)
		goto fail;
	rows_free(rows, n);
	if (uids_r != NULL)
		*uids_r = out;
	else
		free(out);
	if (n_r != NULL)
		*n_r = n;
	return 0;
fail:
	eng_store_tx_rollback(st);
	rows_free(rows, n);
	free(out);
	return err;
}

int eng_changes_since(eng_store *st, int64_t mailbox_id, uint64_t modseq,
		      eng_msg_cb *cb, void *ctx, uint32_t **vanished_r,
		      size_t *n_vanished_r)
{
	int err, rc;
	sqlite3_stmt *stmt;
	uint32_t *vanished = NULL;
	size_t n = 0;

	*vanished_r = NULL;
	*n_vanished_r = 0;
	/* One read transaction: both answers describe the same state. */
	if ((err = store_exec(st, "SAVEPOINT changes")) != 0)
		return err;
	if (cb != NULL && (err = eng_fetch_meta(st, mailbox_id, NULL,
						modseq > 0 ? modseq : 0,
						cb, ctx)) != 0)
		goto out;
	stmt = store_prepare(st, "SELECT uid FROM expunged WHERE "
			     "mailbox_id = ? AND modseq > ? ORDER BY uid", &err);
	if (stmt == NULL)
		goto out;
	sqlite3_bind_int64(stmt, 1, mailbox_id);
	sqlite3_bind_int64(stmt, 2, (int64_t)modseq);
	while ((rc = sqlite3_step(stmt)) == SQLITE_ROW) {
		vanished = eng_realloc(vanished, (n + 1) * sizeof(uint32_t));
		vanished[n++] = (uint32_t)sqlite3_column_int64(stmt, 0);
	}
	store_release(st, stmt);
	if (rc != SQLITE_DONE) {
		err = store_err(st, rc, "vanished");
		free(vanished);
		goto out;
	}
	*vanished_r = vanished;
	*n_vanished_r = n;
out:
	(void)store_exec(st, "RELEASE changes");
	return err;
}
