/*
 * Mailboxes: names, hierarchy, counters, UIDVALIDITY / UIDNEXT /
 * HIGHESTMODSEQ.
 *
 * A mailbox row exists for every name that was created, and for every
 * parent of one (created as an ordinary mailbox, or left as \Noselect when
 * a mailbox with children is deleted). Counters are kept by the writers in
 * the same transaction as the change (store_mailbox_account), so STATUS
 * never counts rows.
 */
#include "store_private.h"
#include "eng_error.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>

/* Valid UTF-8 without overlongs or surrogates; control characters refused. */
static bool utf8_name_ok(const unsigned char *s)
{
	while (*s != '\0') {
		unsigned c = *s;
		size_t n;
		uint32_t cp;

		if (c < 0x20 || c == 0x7f)
			return false;
		if (c < 0x80) {
			s++;
			continue;
		}
		if ((c & 0xe0) == 0xc0) {
			n = 1;
			cp = c & 0x1f;
		} else if ((c & 0xf0) == 0xe0) {
			n = 2;
			cp = c & 0x0f;
		} else if ((c & 0xf8) == 0xf0) {
			n = 3;
			cp = c & 0x07;
		} else {
			return false;
		}
		for (size_t i = 1; i <= n; i++) {
			if ((s[i] & 0xc0) != 0x80)
				return false;
			cp = (cp << 6) | (s[i] & 0x3f);
		}
		if ((n == 1 && cp < 0x80) || (n == 2 && cp < 0x800) ||
		    (n == 3 && cp < 0x10000) || cp > 0x10ffff ||
		    (cp >= 0xd800 && cp <= 0xdfff) ||
		    (cp >= 0x80 && cp < 0xa0))
			return false;
		s += n + 1;
	}
	return true;
}

int eng_mailbox_name_check(const char *name, char **canonical_r)
{
	size_t len;
	char *canon;

	*canonical_r = NULL;
	if (name == NULL)
		return ENG_EINVAL;
	len = strlen(name);
	if (len == 0 || len > ENG_MAILBOX_NAME_MAX || name[0] == '/' ||
	    name[len - 1] == '/' || strstr(name, "//") != NULL ||
	    !utf8_name_ok((const unsigned char *)name))
		return ENG_EINVAL;
	/* No level may be "." or "..": names become paths in exports. */
	for (const char *p = name; p != NULL; ) {
		const char *end = strchr(p, '/');
		size_t n = end != NULL ? (size_t)(end - p) : strlen(p);

		if ((n == 1 && p[0] == '.') ||
		    (n == 2 && p[0] == '.' && p[1] == '.'))
			return ENG_EINVAL;
		p = end != NULL ? end + 1 : NULL;
	}
	canon = eng_strdup(name);
	if (strncasecmp(canon, "INBOX", 5) == 0 &&
	    (canon[5] == '\0' || canon[5] == '/'))
		memcpy(canon, "INBOX", 5);
	*canonical_r = canon;
	return 0;
}

int store_mailbox_id(eng_store *st, const char *name, int64_t *id_r,
		     bool *noselect_r)
{
	int err;
	sqlite3_stmt *stmt = store_prepare(st,
		"SELECT id, noselect FROM mailbox WHERE name = ?", &err);
	int rc;

	if (stmt == NULL)
		return err;
	sqlite3_bind_text(stmt, 1, name, -1, SQLITE_STATIC);
	rc = sqlite3_step(stmt);
	if (rc == SQLITE_ROW) {
		*id_r = sqlite3_column_int64(stmt, 0);
		if (noselect_r != NULL)
			*noselect_r = sqlite3_column_int(stmt, 1) != 0;
	}
	store_release(st, stmt);
	if (rc == SQLITE_ROW)
		return 0;
	return rc == SQLITE_DONE ? ENG_ENOTFOUND : store_err(st, rc, "mailbox");
}

/* uidnext 0 leaves UIDNEXT as it is. */
static int account(eng_store *st, int64_t mailbox_id, int64_t uidnext,
		   int64_t d_messages, int64_t d_unseen, int64_t d_deleted,
		   int64_t d_size, uint64_t modseq)
{
	int err;
	/* OR FAIL: on one row the same as the default ABORT, but SQLite
	 * (3.15) then runs no statement journal, which copied and encrypted
	 * the mailbox's page for each APPEND. */
	sqlite3_stmt *stmt = store_prepare(st,
		"UPDATE OR FAIL mailbox SET uidnext = max(uidnext, ?), "
		"messages = messages + ?, unseen = unseen + ?, "
		"deleted = deleted + ?, size = size + ?, "
		"highestmodseq = max(highestmodseq, ?) WHERE id = ?", &err);

	if (stmt == NULL)
		return err;
	sqlite3_bind_int64(stmt, 1, uidnext);
	sqlite3_bind_int64(stmt, 2, d_messages);
	sqlite3_bind_int64(stmt, 3, d_unseen);
	sqlite3_bind_int64(stmt, 4, d_deleted);
	sqlite3_bind_int64(stmt, 5, d_size);
	sqlite3_bind_int64(stmt, 6, (int64_t)modseq);
	sqlite3_bind_int64(stmt, 7, mailbox_id);
	if ((err = store_step_done(st, stmt)) != 0)
		return err;
	return sqlite3_changes(st->db) == 1 ? 0 : ENG_ENOTFOUND;
}

int store_mailbox_account(eng_store *st, int64_t mailbox_id,
			  int64_t d_messages, int64_t d_unseen,
			  int64_t d_deleted, int64_t d_size, uint64_t modseq)
{
	return account(st, mailbox_id, 0, d_messages, d_unseen, d_deleted,
		       d_size, modseq);
}

int store_mailbox_uidnext(eng_store *st, int64_t mailbox_id, uint32_t *uid_r)
{
	int err;
	sqlite3_stmt *stmt = store_prepare(st,
		"SELECT uidnext FROM mailbox WHERE id = ?", &err);
	int64_t uid;
	int rc;

	if (stmt == NULL)
		return err;
	sqlite3_bind_int64(stmt, 1, mailbox_id);
	rc = sqlite3_step(stmt);
	uid = rc == SQLITE_ROW ? sqlite3_column_int64(stmt, 0) : 0;
	store_release(st, stmt);
	if (rc != SQLITE_ROW)
		return rc == SQLITE_DONE ? ENG_ENOTFOUND :
			store_err(st, rc, "uidnext");
	/* UIDs are 32-bit; a mailbox that ran out needs a new UIDVALIDITY. */
	if (uid >= UINT32_MAX)
		return ENG_ELIMIT;
	*uid_r = (uint32_t)uid;
	return 0;
}

/*
 * UIDNEXT, the counters and HIGHESTMODSEQ of a new message in one UPDATE
 * of the row: APPEND wrote it twice (UIDNEXT, then the counters), COPY
 * twice per message.
 */
int store_mailbox_added(eng_store *st, int64_t mailbox_id, uint32_t uid,
			uint32_t flags, int64_t size, uint64_t modseq)
{
	return account(st, mailbox_id, (int64_t)uid + 1, 1,
		       (flags & ENG_F_SEEN) ? 0 : 1,
		       (flags & ENG_F_DELETED) ? 1 : 0, size, modseq);
}

static int next_uidvalidity(eng_store *st, uint32_t *uidvalidity_r)
{
	int err;
	sqlite3_stmt *stmt = store_prepare(st,
		"SELECT value FROM meta WHERE key = 'uidvalidity'", &err);
	int64_t v = 0, now = (int64_t)time(NULL);
	int rc;

	if (stmt == NULL)
		return err;
	rc = sqlite3_step(stmt);
	if (rc == SQLITE_ROW)
		v = sqlite3_column_int64(stmt, 0);
	store_release(st, stmt);
	if (rc != SQLITE_ROW && rc != SQLITE_DONE)
		return store_err(st, rc, "uidvalidity");
	/* Strictly increasing, so a re-created name never repeats one. */
	v = v + 1 > now ? v + 1 : now;
	if (v > UINT32_MAX)
		v = 1;
	stmt = store_prepare(st, "INSERT OR REPLACE INTO meta (key, value) "
			     "VALUES ('uidvalidity', ?)", &err);
	if (stmt == NULL)
		return err;
	sqlite3_bind_int64(stmt, 1, v);
	if ((err = store_step_done(st, stmt)) != 0)
		return err;
	*uidvalidity_r = (uint32_t)v;
	return 0;
}

static int insert_mailbox(eng_store *st, const char *name, uint32_t special_use,
			  int64_t *id_r)
{
	uint32_t uidvalidity = 0;
	uint64_t modseq;
	int err;
	sqlite3_stmt *stmt;

	if ((err = next_uidvalidity(st, &uidvalidity)) != 0 ||
	    (err = store_tx_modseq(st, &modseq)) != 0)
		return err;
	stmt = store_prepare(st, "INSERT INTO mailbox (name, uidvalidity, "
			     "highestmodseq, special_use, created) "
			     "VALUES (?, ?, ?, ?, ?)", &err);
	if (stmt == NULL)
		return err;
	sqlite3_bind_text(stmt, 1, name, -1, SQLITE_STATIC);
	sqlite3_bind_int64(stmt, 2, uidvalidity);
	sqlite3_bind_int64(stmt, 3, (int64_t)modseq);
	sqlite3_bind_int64(stmt, 4, special_use);
	sqlite3_bind_int64(stmt, 5, (int64_t)time(NULL));
	if ((err = store_step_done(st, stmt)) != 0)
		return err;
	if (id_r != NULL)
		*id_r = sqlite3_last_insert_rowid(st->db);
	return 0;
}

/* Creates every missing parent of name, as a selectable mailbox. */
static int create_parents(eng_store *st, const char *name)
{
	char *copy = eng_strdup(name);
	int err = 0;

	for (char *p = strchr(copy, '/'); p != NULL; p = strchr(p + 1, '/')) {
		int64_t id;

		*p = '\0';
		err = store_mailbox_id(st, copy, &id, NULL);
		if (err == ENG_ENOTFOUND)
			err = insert_mailbox(st, copy, 0, NULL);
		*p = '/';
		if (err != 0)
			break;
	}
	free(copy);
	return err;
}

int eng_mailbox_create(eng_store *st, const char *name, uint32_t special_use,
		       int64_t *id_r)
{
	char *canon;
	int64_t id;
	bool noselect;
	int err;

	if ((err = eng_mailbox_name_check(name, &canon)) != 0)
		return err;
	if ((err = eng_store_tx_begin(st)) != 0) {
		free(canon);
		return err;
	}
	err = store_mailbox_id(st, canon, &id, &noselect);
	if (err == 0 && noselect) {
		/* Re-creating a \Noselect parent makes it a mailbox again,
		 * with the UIDVALIDITY its DELETE gave it (not the old one). */
		sqlite3_stmt *stmt = store_prepare(st,
			"UPDATE mailbox SET noselect = 0, special_use = ? "
			"WHERE id = ?", &err);
		if (stmt != NULL) {
			sqlite3_bind_int64(stmt, 1, special_use);
			sqlite3_bind_int64(stmt, 2, id);
			err = store_step_done(st, stmt);
		}
	} else if (err == 0) {
		err = ENG_EEXIST;
	} else if (err == ENG_ENOTFOUND) {
		err = create_parents(st, canon);
		if (err == 0)
			err = insert_mailbox(st, canon, special_use, &id);
	}
	if (err == 0)
		err = eng_store_tx_commit(st);
	if (err != 0)
		eng_store_tx_rollback(st);
	else if (id_r != NULL)
		*id_r = id;
	free(canon);
	return err;
}

static void read_mailbox(sqlite3_stmt *stmt, eng_mailbox *mb)
{
	memset(mb, 0, sizeof(*mb));
	mb->id = sqlite3_column_int64(stmt, 0);
	mb->name = eng_strdup((const char *)sqlite3_column_text(stmt, 1));
	mb->uidvalidity = (uint32_t)sqlite3_column_int64(stmt, 2);
	mb->uidnext = (uint32_t)sqlite3_column_int64(stmt, 3);
	mb->highestmodseq = (uint64_t)sqlite3_column_int64(stmt, 4);
	mb->special_use = (uint32_t)sqlite3_column_int64(stmt, 5);
	mb->noselect = sqlite3_column_int(stmt, 6) != 0;
	mb->messages = (uint32_t)sqlite3_column_int64(stmt, 7);
	mb->unseen = (uint32_t)sqlite3_column_int64(stmt, 8);
	mb->deleted = (uint32_t)sqlite3_column_int64(stmt, 9);
	mb->size_bytes = (uint64_t)sqlite3_column_int64(stmt, 10);
	mb->subscribed = sqlite3_column_int(stmt, 11) != 0;
}

#define MAILBOX_COLUMNS \
	"m.id, m.name, m.uidvalidity, m.uidnext, m.highestmodseq, " \
	"m.special_use, m.noselect, m.messages, m.unseen, m.deleted, m.size, " \
	"(SELECT count(*) FROM subscription s WHERE s.name = m.name) "

int eng_mailbox_list(eng_store *st, eng_mailbox **list_r, size_t *n_r)
{
	int err;
	sqlite3_stmt *stmt = store_prepare(st, "SELECT " MAILBOX_COLUMNS
		"FROM mailbox m ORDER BY m.name", &err);
	eng_mailbox *list = NULL;
	size_t n = 0, cap = 0;
	int rc;

	*list_r = NULL;
	*n_r = 0;
	if (stmt == NULL)
		return err;
	while ((rc = sqlite3_step(stmt)) == SQLITE_ROW) {
		if (n == cap) {
			cap = cap != 0 ? cap * 2 : 16;
			list = eng_realloc(list, cap * sizeof(*list));
		}
		read_mailbox(stmt, &list[n++]);
	}
	store_release(st, stmt);
	if (rc != SQLITE_DONE) {
		eng_mailbox_list_free(&list, n);
		return store_err(st, rc, "list");
	}
	*list_r = list;
	*n_r = n;
	return 0;
}

void eng_mailbox_clear(eng_mailbox *mb)
{
	free(mb->name);
	mb->name = NULL;
}

void eng_mailbox_list_free(eng_mailbox **list, size_t n)
{
	if (*list == NULL)
		return;
	for (size_t i = 0; i < n; i++)
		eng_mailbox_clear(&(*list)[i]);
	free(*list);
	*list = NULL;
}

int eng_mailbox_get(eng_store *st, const char *name, eng_mailbox *mb_r)
{
	char *canon;
	int err;
	sqlite3_stmt *stmt;
	int rc;

	memset(mb_r, 0, sizeof(*mb_r));
	if ((err = eng_mailbox_name_check(name, &canon)) != 0)
		return err;
	stmt = store_prepare(st, "SELECT " MAILBOX_COLUMNS
			     "FROM mailbox m WHERE m.name = ?", &err);
	if (stmt == NULL) {
		free(canon);
		return err;
	}
	sqlite3_bind_text(stmt, 1, canon, -1, SQLITE_STATIC);
	rc = sqlite3_step(stmt);
	if (rc == SQLITE_ROW)
		read_mailbox(stmt, mb_r);
	store_release(st, stmt);
	free(canon);
	if (rc == SQLITE_ROW)
		return 0;
	return rc == SQLITE_DONE ? ENG_ENOTFOUND : store_err(st, rc, "get");
}

/* Deletes every message of a mailbox, releasing content references. */
static int delete_messages(eng_store *st, int64_t mailbox_id)
{
	int err;
	sqlite3_stmt *stmt = store_prepare(st,
		"SELECT id, content_id FROM message WHERE mailbox_id = ?", &err);
	int rc;

	if (stmt == NULL)
		return err;
	sqlite3_bind_int64(stmt, 1, mailbox_id);
	while ((rc = sqlite3_step(stmt)) == SQLITE_ROW) {
		int64_t content_id = sqlite3_column_int64(stmt, 1);

		if ((err = store_content_unref(st, content_id)) != 0) {
			store_release(st, stmt);
			return err;
		}
	}
	store_release(st, stmt);
	if (rc != SQLITE_DONE)
		return store_err(st, rc, "delete messages");
	stmt = store_prepare(st, "DELETE FROM message_keyword WHERE message_id "
			     "IN (SELECT id FROM message WHERE mailbox_id = ?)",
			     &err);
	if (stmt == NULL)
		return err;
	sqlite3_bind_int64(stmt, 1, mailbox_id);
	if ((err = store_step_done(st, stmt)) != 0)
		return err;
	stmt = store_prepare(st, "DELETE FROM message WHERE mailbox_id = ?",
			     &err);
	if (stmt == NULL)
		return err;
	sqlite3_bind_int64(stmt, 1, mailbox_id);
	if ((err = store_step_done(st, stmt)) != 0)
		return err;
	stmt = store_prepare(st, "DELETE FROM expunged WHERE mailbox_id = ?",
			     &err);
	if (stmt == NULL)
		return err;
	sqlite3_bind_int64(stmt, 1, mailbox_id);
	return store_step_done(st, stmt);
}

static int has_children(eng_store *st, const char *name, bool *yes_r)
{
	int err;
	sqlite3_stmt *stmt = store_prepare(st,
		"SELECT 1 FROM mailbox WHERE substr(name, 1, ?) = ? LIMIT 1",
		&err);
	char *prefix;
	int rc;

	if (stmt == NULL)
		return err;
	if (asprintf(&prefix, "%s/", name) < 0)
		eng_oom(strlen(name) + 2);
	sqlite3_bind_int64(stmt, 1, (int64_t)strlen(prefix));
	sqlite3_bind_text(stmt, 2, prefix, -1, SQLITE_TRANSIENT);
	rc = sqlite3_step(stmt);
	store_release(st, stmt);
	free(prefix);
	if (rc != SQLITE_ROW && rc != SQLITE_DONE)
		return store_err(st, rc, "children");
	*yes_r = rc == SQLITE_ROW;
	return 0;
}

int eng_mailbox_delete(eng_store *st, const char *name)
{
	char *canon;
	int64_t id;
	bool noselect, children = false;
	uint32_t uidvalidity = 0;
	int err;
	sqlite3_stmt *stmt;

	if ((err = eng_mailbox_name_check(name, &canon)) != 0)
		return err;
	if (strcmp(canon, "INBOX") == 0) {
		free(canon);
		return ENG_EPERM;
	}
	if ((err = eng_store_tx_begin(st)) != 0) {
		free(canon);
		return err;
	}
	if ((err = store_mailbox_id(st, canon, &id, &noselect)) != 0 ||
	    (err = has_children(st, canon, &children)) != 0)
		goto out;
	if (noselect && children) {
		/* RFC 3501: deleting a \Noselect name with inferiors fails. */
		err = ENG_EPERM;
		goto out;
	}
	if ((err = delete_messages(st, id)) != 0)
		goto out;
	/* The placeholder gets a new UIDVALIDITY: its messages and their
	 * expunge log went without a MODSEQ, so a client's QRESYNC state
	 * (or a cached view) of the old one must not match it. */
	if (children && (err = next_uidvalidity(st, &uidvalidity)) != 0)
		goto out;
	if (children)
		stmt = store_prepare(st, "UPDATE mailbox SET noselect = 1, "
				     "messages = 0, unseen = 0, deleted = 0, "
				     "size = 0, special_use = 0, uidvalidity = ?2 "
				     "WHERE id = ?1", &err);
	else
		stmt = store_prepare(st, "DELETE FROM mailbox WHERE id = ?",
				     &err);
	if (stmt == NULL)
		goto out;
	sqlite3_bind_int64(stmt, 1, id);
	if (children)
		sqlite3_bind_int64(stmt, 2, uidvalidity);
	if ((err = store_step_done(st, stmt)) != 0)
		goto out;
	err = eng_store_tx_commit(st);
out:
	if (err != 0)
		eng_store_tx_rollback(st);
	free(canon);
	return err;
}

/* Renames every row whose name is old or starts with old + "/". */
static int rename_tree(eng_store *st, const char *table, const char *old_name,
		       const char *new_name)
{
	char sql[256];
	int err;
	sqlite3_stmt *stmt;
	size_t old_len = strlen(old_name);

	snprintf(sql, sizeof(sql), "UPDATE %s SET name = ? || substr(name, ?) "
		 "WHERE name = ? OR substr(name, 1, ?) = ? || '/'", table);
	stmt = store_prepare(st, sql, &err);
	if (stmt == NULL)
		return err;
	sqlite3_bind_text(stmt, 1, new_name, -1, SQLITE_STATIC);
	sqlite3_bind_int64(stmt, 2, (int64_t)old_len + 1);
	sqlite3_bind_text(stmt, 3, old_name, -1, SQLITE_STATIC);
	sqlite3_bind_int64(stmt, 4, (int64_t)old_len + 1);
	sqlite3_bind_text(stmt, 5, old_name, -1, SQLITE_STATIC);
	return store_step_done(st, stmt);
}

/*
 * RFC 3501: RENAME INBOX moves its messages to a new mailbox and leaves
 * INBOX empty; its children stay where they are. The row keeps its id,
 * UIDVALIDITY, UIDs and counters under the new name, and a new INBOX row
 * (new UIDVALIDITY) takes the old name.
 */
static int rename_inbox(eng_store *st, int64_t inbox_id, const char *new_name)
{
	int err;
	sqlite3_stmt *stmt;

	if ((err = create_parents(st, new_name)) != 0)
		return err;
	stmt = store_prepare(st, "UPDATE mailbox SET name = ? WHERE id = ?",
			     &err);
	if (stmt == NULL)
		return err;
	sqlite3_bind_text(stmt, 1, new_name, -1, SQLITE_STATIC);
	sqlite3_bind_int64(stmt, 2, inbox_id);
	if ((err = store_step_done(st, stmt)) != 0)
		return err;
	return insert_mailbox(st, "INBOX", 0, NULL);
}

int eng_mailbox_rename(eng_store *st, const char *old_name,
		       const char *new_name)
{
	char *old_c = NULL, *new_c = NULL;
	int64_t id, other;
	bool noselect;
	int err;

	if ((err = eng_mailbox_name_check(old_name, &old_c)) != 0 ||
	    (err = eng_mailbox_name_check(new_name, &new_c)) != 0)
		goto out_free;
	/* Into itself or below itself is meaningless. */
	if (strcmp(old_c, new_c) == 0 ||
	    (strncmp(new_c, old_c, strlen(old_c)) == 0 &&
	     new_c[strlen(old_c)] == '/')) {
		err = ENG_EINVAL;
		goto out_free;
	}
	if (strcmp(new_c, "INBOX") == 0) {
		err = ENG_EEXIST;
		goto out_free;
	}
	if ((err = eng_store_tx_begin(st)) != 0)
		goto out_free;
	if ((err = store_mailbox_id(st, old_c, &id, &noselect)) != 0)
		goto out;
	err = store_mailbox_id(st, new_c, &other, NULL);
	if (err == 0) {
		err = ENG_EEXIST;
		goto out;
	}
	if (err != ENG_ENOTFOUND)
		goto out;
	if (strcmp(old_c, "INBOX") == 0) {
		err = rename_inbox(st, id, new_c);
	} else {
		bool clash = false;

		/* A child of the new name that exists would collide. */
		if ((err = has_children(st, new_c, &clash)) != 0)
			goto out;
		if (clash) {
			err = ENG_EEXIST;
			goto out;
		}
		if ((err = rename_tree(st, "mailbox", old_c, new_c)) != 0 ||
		    (err = create_parents(st, new_c)) != 0)
			goto out;
	}
	if (err == 0)
		err = eng_store_tx_commit(st);
out:
	if (err != 0)
		eng_store_tx_rollback(st);
out_free:
	free(old_c);
	free(new_c);
	return err;
}

int eng_mailbox_subscribe(eng_store *st, const char *name, bool subscribed)
{
	char *canon;
	int err;
	sqlite3_stmt *stmt;

	if ((err = eng_mailbox_name_check(name, &canon)) != 0)
		return err;
	stmt = store_prepare(st, subscribed ?
		"INSERT OR IGNORE INTO subscription (name) VALUES (?)" :
		"DELETE FROM subscription WHERE name = ?", &err);
	if (stmt != NULL) {
		sqlite3_bind_text(stmt, 1, canon, -1, SQLITE_STATIC);
		err = store_step_done(st, stmt);
	}
	free(canon);
	return err;
}

int eng_mailbox_set_special_use(eng_store *st, const char *name,
				uint32_t special_use)
{
	char *canon;
	int err;
	sqlite3_stmt *stmt;

	if ((err = eng_mailbox_name_check(name, &canon)) != 0)
		return err;
	stmt = store_prepare(st, "UPDATE mailbox SET special_use = ? "
			     "WHERE name = ?", &err);
	if (stmt != NULL) {
		sqlite3_bind_int64(stmt, 1, special_use);
		sqlite3_bind_text(stmt, 2, canon, -1, SQLITE_STATIC);
		err = store_step_done(st, stmt);
		if (err == 0 && sqlite3_changes(st->db) == 0)
			err = ENG_ENOTFOUND;
	}
	free(canon);
	return err;
}
