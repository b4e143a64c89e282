/*
 * What the mailbox opcode handlers share (srv_ops_mailbox.c,
 * srv_ops_message.c, srv_ops_body.c, srv_ops_search.c): checking request
 * fields on the loop thread, and one way of running a request on the
 * alias's queue.
 *
 * An mbop is one request's work. The handler fills it on the loop thread
 * from req->args (copies only: the work never looks at req), then
 * srv_mbop_submit() queues it. On the pool thread the run function gets
 * the open store and, when the request names a mailbox, that mailbox
 * (looked up and checked against the request's UIDVALIDITY? first); it
 * writes the answer into the mbop's parts and the change events it made
 * into its event list. Back on the loop, the parts are sent (all but the
 * last with MORE), the events published, and the mbop freed; or, on an
 * error, nothing but the ERROR is sent and no event published.
 *
 * Parts: srv_mbop_part() returns the buffer to append fields to, starting
 * a new part when the current one would pass the limits with the fields
 * about to be added, so that no RESPONSE frame exceeds the frame or
 * field limits of docs/rpc.md. Scalars go first, so they are in the
 * first part, as the protocol asks.
 *
 * Private to sqlite-server/srv_ops_*.c.
 */
#ifndef SRV_OPS_MBOX_H
#define SRV_OPS_MBOX_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "srv.h"
#include "store.h"

/* A RESPONSE part stays under these (the frame limit is 1 MiB and 4096
 * fields; the margins leave room for the header and the last item). */
#define SRV_PART_MAX_BYTES (768u * 1024)
#define SRV_PART_MAX_FIELDS 4000u
/* UIDs per packed list field: 256 KiB. */
#define SRV_PART_MAX_UIDS 65536u
/* Ranges accepted in one UID set field (a frame holds at most 131072). */
#define SRV_UIDSET_MAX_RANGES (1u << 17)

typedef struct srv_mbop srv_mbop;

/* Runs on the pool with the alias's queue held; mb is NULL unless the
 * mbop names a mailbox. Returns 0 or an engine error. */
typedef int srv_mbop_run_fn(srv_mbop *op, eng_store *st, eng_mailbox *mb);

struct srv_mbop_event {
	enum srv_event_kind kind;
	char *mailbox;
	uint32_t uid;
	uint64_t modseq;
};

struct srv_mbop {
	srv_req *req;
	srv *srv;
	char alias_id[SRV_ALIAS_ID_MAX + 1];
	/* The mailbox the request names (canonical), or NULL. */
	char *mailbox;
	/* Look the mailbox up before run (false: CREATE, SUBSCRIBE, whose
	 * mailbox need not exist, and APPEND, which looks it up in its own
	 * transaction). */
	bool lookup;
	/* The work only reads: the lookup and run share one read snapshot
	 * (eng_store_read_begin), one lock instead of one per statement. */
	bool read_only;
	bool check_uidvalidity;
	uint32_t uidvalidity;
	/* The alias's write generation when the work item started
	 * (srv_alias_work_gen; set by srv_mbop_work, 0 before). */
	uint64_t alias_gen;
	srv_mbop_run_fn *run;
	/* If set, called on the loop after a successful run instead of
	 * sending the parts (FETCH_BODY streams); it owns op from then on. */
	void (*done_fn)(srv_mbop *op);
	/* The opcode's own state, freed with free_fn (may be NULL). */
	void *ctx;
	void (*free_fn)(void *ctx);
	/* The answer, built on the pool. */
	eng_buf *parts;
	size_t n_parts;
	size_t part_fields;          /* fields in the last part */
	/* Events to publish once the answer is sent. */
	struct srv_mbop_event *events;
	size_t n_events;
};

/* A new mbop for req; the mailbox is taken from T_MAILBOX when
 * with_mailbox (checked: EMISSING, EFIELDTYPE, EINVAL), together with
 * T_UIDVALIDITY?. NULL with *err_r set on a bad field. */
srv_mbop *srv_mbop_new(srv_req *req, bool with_mailbox, int *err_r);
void srv_mbop_free(srv_mbop **op);
/* Queues the work; on failure answers the error itself and frees op. */
void srv_mbop_submit(srv_mbop *op, srv_mbop_run_fn *run);
/* Fails req with err and frees op (loop thread). */
void srv_mbop_fail(srv_mbop *op, int err);
/* The two halves of srv_mbop_submit's work item, for a handler that runs
 * several mbops (op->run set) in one item of its own: the pool half
 * (mailbox lookup, then run) and the loop half (answer or fail; frees op). */
int srv_mbop_work(srv_alias *a, srv_mbop *op);
void srv_mbop_done(srv_mbop *op, int result);

/* A handler's new mbop (srv_mbop_new), or the error answered and return. */
#define NEW_OP(op, req, with_mailbox) do { \
	int new_err_; \
	if (((op) = srv_mbop_new((req), (with_mailbox), &new_err_)) == NULL) { \
		srv_fail((req), new_err_); \
		return; \
	} \
} while (0)

/* Where a handler's field check fails: answer and stop. */
#define CHECK(op, expr) do { \
	int check_err_ = (expr); \
	if (check_err_ != 0) { \
		srv_mbop_fail((op), check_err_); \
		return; \
	} \
} while (0)

/* The part to append to, for n_fields more fields of about n_bytes. */
eng_buf *srv_mbop_part(srv_mbop *op, size_t n_fields, size_t n_bytes);
void srv_mbop_event(srv_mbop *op, enum srv_event_kind kind,
		    const char *mailbox, uint32_t uid, uint64_t modseq);

/* Writes one MESSAGE group (eng_msg) into the answer, with MIME and
 * HEADER when msg carries them (FETCH_META WANT). */
void srv_mbop_put_msg(srv_mbop *op, const eng_msg *msg);
/* Writes a UID list as packed fields of tag, split over parts. */
void srv_mbop_put_uids(srv_mbop *op, uint32_t tag, const uint32_t *uids,
		       size_t n);
/* Writes a sorted UID list as packed UID set fields (ranges), split. */
void srv_mbop_put_uid_ranges(srv_mbop *op, uint32_t tag,
			     const uint32_t *uids, size_t n);

/* ---- field checks on the loop thread: 0, RPC_EMISSING, RPC_EFIELDTYPE,
 * ENG_EINVAL. Optional getters leave the output alone when absent. ---- */

/* A mailbox name, canonicalised (free()). */
int srv_arg_mailbox(const rpc_view *v, uint32_t tag, char **name_r);
/* A string of 1..max_len bytes (0 allowed when allow_empty), no NUL. */
int srv_arg_str(const rpc_view *v, uint32_t tag, bool required,
		bool allow_empty, size_t max_len, char **s_r);
int srv_arg_u64(const rpc_view *v, uint32_t tag, bool required,
		uint64_t max, uint64_t *val_r);
/* The repeated KEYWORD fields: each 1..255 bytes of atom characters, at
 * most 64. *kw_r is a NULL-terminated array (srv_strv_free). */
int srv_arg_keywords(const rpc_view *v, char ***kw_r, size_t *n_r);
void srv_strv_free(char ***v);
/* A packed UID set into set (appended). */
int srv_arg_uidset(const rpc_view *v, uint32_t tag, bool required,
		   eng_uidset *set, bool *present_r);

/* The handlers (srv_ops.c's table refers to them weakly). */
srv_handler_fn srv_op_mailbox_list, srv_op_mailbox_create,
	srv_op_mailbox_rename, srv_op_mailbox_delete, srv_op_mailbox_subscribe,
	srv_op_mailbox_status, srv_op_quota_get;
srv_handler_fn srv_op_append, srv_op_fetch_meta, srv_op_fetch_body,
	srv_op_fetch_bodies,
	srv_op_store, srv_op_copy, srv_op_move, srv_op_expunge, srv_op_changes;
srv_handler_fn srv_op_search, srv_op_sort, srv_op_thread;

#endif
