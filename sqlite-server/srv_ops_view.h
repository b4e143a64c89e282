/*
 * sqlited's cache of MAILBOX_VIEW answers (srv_ops_view.c), as seen from
 * outside it, and the MAILBOX_INFO group both answer: the alias code drops an alias's entries when it closes the
 * alias (LOCK, idle close, ALIAS_REMOVE, RESTORE_ALIAS: the UIDs and flags
 * of its mailboxes must not outlive its keys), and tests read counters.
 *
 * Rules: thread-safe (one mutex); callable from the loop or the pool.
 */
#ifndef SRV_OPS_VIEW_H
#define SRV_OPS_VIEW_H

#include <stddef.h>
#include <stdint.h>

struct srv_mbop;
struct eng_mailbox;

/* The MAILBOX_INFO group of mb (srv_ops_mailbox.c): MAILBOX_STATUS and
 * MAILBOX_LIST answer it, and MAILBOX_VIEW with its view, so a SELECT
 * is one request. */
void srv_mbop_put_mailbox_info(struct srv_mbop *op,
			       const struct eng_mailbox *mb);

/* Drops every cached view of the alias (NULL: of every alias). */
void srv_view_cache_forget(const char *alias_id);

struct srv_view_stats {
	uint64_t hits;      /* answered from an entry of the same state */
	uint64_t patched;   /* an older entry patched with the changes since */
	uint64_t scanned;   /* every message row read */
	/* MAILBOX_VIEW answered on the loop thread from the entry of the
	 * alias's current write generation (no work queued), or not (it went
	 * to the pool: hits, patched or scanned above tell how). */
	uint64_t loop_hits, loop_misses;
	/* Answered VIEW_UNCHANGED (the caller's VIEW_HELD), on either path. */
	uint64_t unchanged;
	size_t entries;     /* entries now held for the alias asked about */
};

/* The counters since start, and the entries of alias_id (NULL: all). */
void srv_view_cache_stats(const char *alias_id, struct srv_view_stats *out);

/* Tests: a view's ranges and runs are kept up to entry_max bytes, the
 * buffers of all entries up to budget bytes (0: the defaults, 2 MiB and
 * 8 MiB; entry_max at most the default). */
void srv_view_cache_limits(size_t entry_max, size_t budget);

#endif
