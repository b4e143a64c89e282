/*
 * The spool drain (docs/storage.md, "The spool drain: exactly once"):
 * mail sealed into the spool while the mailbox was locked moves into
 * INBOX, exactly once, each entry in an append whose transaction records
 * its id in spool_applied (store_append_begin_spool, message.c).
 */
#include "store_private.h"
#include "eng_error.h"
#include "spool.h"

#include <sodium.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

/*
 * spool_applied holds the id of every entry drained, so that no entry is
 * delivered twice: its file can outlive the commit (a crash before
 * eng_spool_remove) or come back (a keyed DELIVER's resend, within the
 * MX's ~6 minutes, rewrites the same name: srv_ops_deliver.c). A row is
 * deleted once both are past: applied (the commit's time(NULL)) is older
 * than ENG_IDEMPOTENCY_TTL_SECONDS and the id is not in the drain's
 * listing of the spool. The drain does it after listing, at most once a
 * day per open store, in a transaction of its own: best effort, so that a
 * delete that fails (logged; tried again a day later) never keeps an
 * entry from being delivered. The table holds about 15 days of entries.
 */
struct spool_prune {
	char (*ids)[ENG_SPOOL_ID_LEN + 1];    /* the listing */
	size_t n_ids;
	int64_t now;
};

/* No index on applied: the statement reads the ~15 days of rows once a
 * day, where an index would cost every drained entry a page. The ids are
 * hex (eng_spool_list checks them), so they go into the SQL as they are. */
static int spool_applied_prune(eng_store *st, const struct spool_prune *p)
{
	eng_buf sql = ENG_BUF_INIT;
	sqlite3_stmt *stmt;
	int err;

	eng_buf_puts(&sql, "DELETE FROM spool_applied WHERE applied < ? AND "
		     "id NOT IN (");
	for (size_t i = 0; i < p->n_ids; i++)
		eng_buf_printf(&sql, "%s'%s'", i == 0 ? "" : ",", p->ids[i]);
	eng_buf_puts(&sql, ")");
	if ((err = eng_store_tx_begin(st)) != 0)
		goto out;
	if ((stmt = store_prepare_once(st, sql.data, &err)) != NULL) {
		sqlite3_bind_int64(stmt, 1,
				   p->now - ENG_IDEMPOTENCY_TTL_SECONDS);
		err = store_step_done(st, stmt);
	}
	if (err == 0)
		err = eng_store_tx_commit(st);
	else
		eng_store_tx_rollback(st);
out:
	eng_buf_free(&sql);
	return err;
}

static int spool_applied(eng_store *st, const char *id, bool *yes_r)
{
	int err;
	sqlite3_stmt *stmt = store_prepare(st,
		"SELECT 1 FROM spool_applied WHERE id = ?", &err);
	int rc;

	if (stmt == NULL)
		return err;
	sqlite3_bind_text(stmt, 1, id, -1, SQLITE_STATIC);
	rc = sqlite3_step(stmt);
	store_release(st, stmt);
	if (rc != SQLITE_ROW && rc != SQLITE_DONE)
		return store_err(st, rc, "spool");
	*yes_r = rc == SQLITE_ROW;
	return 0;
}

/* Moves entry id into INBOX. */
static int drain_one(eng_store *st, int64_t inbox, const char *dir,
		     const char *id, const uint8_t *sk, uint32_t *uid_r,
		     uint64_t *modseq_r)
{
	eng_spool_reader *r;
	eng_append *ap;
	eng_append_opts opts;
	char buf[65536];
	long n = 0;
	int err;

	memset(&opts, 0, sizeof(opts));
	if ((err = eng_spool_reader_open(dir, id, sk, &r)) != 0)
		return err;
	eng_spool_reader_meta(r, &opts.internal_date, &opts.flags);
	opts.flags &= ENG_F_ALL;
	if ((err = store_append_begin_spool(st, inbox, &opts, id, &ap)) != 0) {
		eng_spool_reader_free(&r);
		return err;
	}
	while (err == 0 && (n = eng_spool_read(r, buf, sizeof(buf))) > 0)
		err = eng_append_write(ap, buf, (size_t)n);
	eng_spool_reader_free(&r);
	sodium_memzero(buf, sizeof(buf));
	if (n < 0 || err != 0) {
		eng_append_abort(&ap);
		return n < 0 ? (int)n : err;
	}
	return eng_append_commit(&ap, uid_r, modseq_r);
}

int eng_store_drain_spool(eng_store *st, const char *spool_dir,
			  const uint8_t *sk, eng_drain_cb *cb, void *ctx,
			  size_t *n_r)
{
	struct spool_prune prune = { NULL, 0, (int64_t)time(NULL) };
	size_t delivered = 0;
	int64_t inbox;
	int err;

	if (n_r != NULL)
		*n_r = 0;
	if ((err = store_mailbox_id(st, "INBOX", &inbox, NULL)) != 0)
		return err;
	if ((err = eng_spool_list(spool_dir, &prune.ids, &prune.n_ids)) != 0)
		return err == ENG_ENOTFOUND ? 0 : err;
	if (store_prune_due(st->spool_pruned, prune.now)) {
		st->spool_pruned = prune.now;
		if ((err = spool_applied_prune(st, &prune)) != 0)
			eng_log(ENG_LOG_WARN, "spool_applied: old rows not "
				"deleted (%s); tried again in a day",
				eng_strerror(err));
		err = 0;
	}
	for (size_t i = 0; i < prune.n_ids; i++) {
		const char *id = prune.ids[i];
		bool done = false;
		uint32_t uid;
		uint64_t modseq;

		if ((err = spool_applied(st, id, &done)) != 0)
			break;
		if (!done) {
			err = drain_one(st, inbox, spool_dir, id, sk, &uid,
					&modseq);
			if (err == ENG_ECORRUPT || err == ENG_EAUTH) {
				/* Leave it for the operator; never drop mail. */
				eng_log(ENG_LOG_ERROR, "spool entry %s cannot "
					"be opened: %s; left in place", id,
					eng_strerror(err));
				err = 0;
				continue;
			}
			if (err != 0)
				break;
			delivered++;
			if (cb != NULL)
				cb(ctx, "INBOX", uid, modseq);
		}
		/* Committed: now the file may go. */
		if ((err = eng_spool_remove(spool_dir, id)) != 0)
			break;
	}
	free(prune.ids);
	if (n_r != NULL)
		*n_r = delivered;
	return err;
}
