/*
 * Content pins: a body stream's hold on the content it reads.
 *
 * sqlited streams a large body in pieces, each read in its own read
 * snapshot, with other work of the alias (an EXPUNGE) free to run between
 * them. A pin keeps the content's rows (content, body_chunk/chunk, fts,
 * header_field) in the file while the stream lasts: when the last message
 * that references pinned content goes, store_content_unref leaves the row
 * with refs = 0 (an orphan: no mailbox counts it, so neither does the
 * quota) and sets meta `content_orphans`; the last unpin deletes it if it
 * is still unreferenced (a new delivery of the same bytes may have taken
 * it again: dedup by sha256), and the open of a store with the meta key
 * set deletes the orphans nobody pins (a crash, or an unpin that had no
 * store to delete with) and clears it when none is left.
 *
 * The pins are in memory, per process, keyed by the database's path and
 * the content id, so that they outlive the store handle: sqlited closes
 * an idle alias's connection (release) and reopens it for the next piece,
 * and the stream goes on reading with eng_message_rebind.
 *
 * Threads: the registry has its own mutex; everything that touches a store
 * runs with that store's owner (sqlited: on the alias's queue).
 */
#include "store_private.h"
#include "eng_error.h"

#include <pthread.h>
#include <stdlib.h>
#include <string.h>

struct eng_content_pin {
	char *path;
	int64_t content_id;
};

/* One entry per (path, content id) pinned, with how many pins hold it. */
struct pin_entry {
	struct pin_entry *next;
	char *path;
	int64_t content_id;
	unsigned count;
};

static pthread_mutex_t pins_mu = PTHREAD_MUTEX_INITIALIZER;
static struct pin_entry *pins;

/* The entry's link for (path, id), or the list's end. Under pins_mu. */
static struct pin_entry **pin_find(const char *path, int64_t content_id)
{
	struct pin_entry **pp;

	for (pp = &pins; *pp != NULL; pp = &(*pp)->next)
		if ((*pp)->content_id == content_id &&
		    strcmp((*pp)->path, path) == 0)
			break;
	return pp;
}

eng_content_pin *eng_message_pin(const eng_message *m)
{
	eng_content_pin *pin = eng_calloc(1, sizeof(*pin));
	eng_store *st;
	struct pin_entry **pp, *e;

	pin->content_id = store_message_content(m, &st);
	pin->path = eng_strdup(st->path);
	pthread_mutex_lock(&pins_mu);
	pp = pin_find(pin->path, pin->content_id);
	if ((e = *pp) == NULL) {
		e = eng_calloc(1, sizeof(*e));
		e->path = eng_strdup(pin->path);
		e->content_id = pin->content_id;
		*pp = e;
	}
	e->count++;
	pthread_mutex_unlock(&pins_mu);
	return pin;
}

int64_t eng_content_pin_id(const eng_content_pin *pin)
{
	return pin->content_id;
}

bool store_content_pinned(eng_store *st, int64_t content_id)
{
	bool pinned;

	pthread_mutex_lock(&pins_mu);
	pinned = *pin_find(st->path, content_id) != NULL;
	pthread_mutex_unlock(&pins_mu);
	return pinned;
}

/* Deletes the content if it is an orphan (refs = 0). Own transaction. */
static int delete_if_orphan(eng_store *st, int64_t content_id)
{
	int err, rc;
	sqlite3_stmt *stmt;
	bool orphan;

	if ((err = eng_store_tx_begin(st)) != 0)
		return err;
	stmt = store_prepare(st, "SELECT refs FROM content WHERE id = ?", &err);
	if (stmt == NULL)
		goto fail;
	sqlite3_bind_int64(stmt, 1, content_id);
	rc = sqlite3_step(stmt);
	orphan = rc == SQLITE_ROW && sqlite3_column_int64(stmt, 0) == 0;
	store_release(st, stmt);
	if (rc != SQLITE_ROW && rc != SQLITE_DONE) {
		err = store_err(st, rc, "orphan");
		goto fail;
	}
	if (orphan && (err = store_content_delete(st, content_id)) != 0)
		goto fail;
	if ((err = eng_store_tx_commit(st)) == 0)
		return 0;
fail:
	eng_store_tx_rollback(st);
	return err;
}

int eng_content_unpin(eng_content_pin **pinp, eng_store *st)
{
	eng_content_pin *pin = *pinp;
	struct pin_entry **pp, *e;
	bool last = false;
	int err = 0;

	if (pin == NULL)
		return 0;
	*pinp = NULL;
	pthread_mutex_lock(&pins_mu);
	pp = pin_find(pin->path, pin->content_id);
	if ((e = *pp) != NULL && --e->count == 0) {
		*pp = e->next;
		free(e->path);
		free(e);
		last = true;
	}
	pthread_mutex_unlock(&pins_mu);
	if (last && st != NULL && strcmp(st->path, pin->path) == 0)
		err = delete_if_orphan(st, pin->content_id);
	free(pin->path);
	free(pin);
	return err;
}

int store_content_orphan(eng_store *st)
{
	return store_meta_set_int(st, "content_orphans", 1);
}

/* The orphans nobody pins go; the meta key too once none is left. Inside
 * the caller's transaction. */
static int sweep_tx(eng_store *st)
{
	int err = 0, rc;
	sqlite3_stmt *stmt = store_prepare(st,
		"SELECT id FROM content WHERE refs = 0", &err);
	int64_t *ids = NULL;
	size_t n = 0, cap = 0;
	bool kept = false;

	if (stmt == NULL)
		return err;
	while ((rc = sqlite3_step(stmt)) == SQLITE_ROW) {
		if (n == cap) {
			cap = cap == 0 ? 16 : cap * 2;
			ids = eng_realloc(ids, cap * sizeof(*ids));
		}
		ids[n++] = sqlite3_column_int64(stmt, 0);
	}
	store_release(st, stmt);
	if (rc != SQLITE_DONE)
		err = store_err(st, rc, "orphans");
	for (size_t i = 0; err == 0 && i < n; i++) {
		if (store_content_pinned(st, ids[i]))
			kept = true;
		else
			err = store_content_delete(st, ids[i]);
	}
	free(ids);
	if (err == 0)
		err = store_meta_set_int(st, "content_orphans", kept ? 1 : 0);
	return err;
}

int store_content_sweep(eng_store *st)
{
	int64_t flag = 0;
	int err = store_meta_get_int(st, "content_orphans", &flag);

	if (err == ENG_ENOTFOUND || (err == 0 && flag == 0))
		return 0;
	if (err != 0)
		return err;
	if ((err = eng_store_tx_begin(st)) != 0)
		return err;
	if ((err = sweep_tx(st)) != 0 ||
	    (err = eng_store_tx_commit(st)) != 0) {
		eng_store_tx_rollback(st);
		return err;
	}
	return 0;
}
