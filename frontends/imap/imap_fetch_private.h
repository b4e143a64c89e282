/*
 * What the pieces of FETCH share (private to them; imap.h and
 * imap_fetch_parse.h are the contracts).
 *
 * imap_cmd_fetch.c   the command: its plan, start (CHANGES, VANISHED),
 *                    lifetime and end, the RPC plumbing, the output
 *                    buffer, the message being written and the pump
 * imap_fetch_meta.c  the metadata: FETCH_META chunks, STORE \Seen, phase
 *                    A (MIME structure and header per message), the
 *                    response's simple items (FLAGS, ENVELOPE,
 *                    BODYSTRUCTURE...) and PREVIEW
 * imap_fetch_body.c  the body items: FETCH_BODY per item, bodies asked
 *                    ahead, FETCH_BODIES over a UID set, BINARY, literal
 *                    and literal8 output, partial <a.b>
 *
 * Rules: one fetch_op per command, freed in one place (fetch_op_end, once
 * no RPC of it is in flight); an RPC's answer first gives its count back
 * (fetch_rpc_back: false when the command is over and op maybe gone), and
 * what comes next is decided by fetch_pump.
 */
#ifndef IMAP_FETCH_PRIVATE_H
#define IMAP_FETCH_PRIVATE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "imap.h"
#include "imap_fetch_parse.h"
#include "mime.h"
#include "rpc_bodies.h"
#include "rpc_codec.h"

/* Phase A requests in flight ahead of the message being written. */
#define FETCH_PIPELINE 16
#define FETCH_REQS (FETCH_PIPELINE + 4)
/* Bodies asked for ahead of the message being written (fetch_fill_bodies);
 * each holds at most one RPC window (256 KiB) until its turn, and those
 * ahead together at most FETCH_BODY_AHEAD_BYTES (by their sizes, a window
 * each at most), so that many small ones go ahead (sqlited reads them in
 * one work item) and big ones hold no more than 4 windows. */
#define FETCH_BODY_AHEAD 8
#define FETCH_BODY_AHEAD_BYTES (1024u * 1024)
/* Encoded parts up to this size are decoded in memory for BINARY. */
#define FETCH_DECODE_MEM (1024u * 1024)
/* Bytes of a part read for PREVIEW, and of a part header for
 * HEADER.FIELDS when the header column cannot serve it. */
#define FETCH_PREVIEW_BYTES (8u * 1024)
#define FETCH_HEADER_MAX (1024u * 1024)
/* sqlited's header column holds at most this much (engine/message.c). */
#define FETCH_HEADER_COLUMN_MAX (256u * 1024)
/* A streamed body may take long on a slow client. */
#define FETCH_STREAM_TIMEOUT_MS (60u * 60 * 1000)
/* The window a FETCH_BODIES stream keeps open (rpc_client_opts): sqlited
 * reads it ahead in whole 256 KiB pieces, one per grant (half of it). */
#define FETCH_STREAM_WINDOW (512u * 1024)
/* Messages per FETCH_META: the command's memory is bounded by this
 * however large the set; fewer when headers or MIME structures come
 * inline (and sqlited bounds those to 16 MiB an answer). */
#define FETCH_META_CHUNK 4096
#define FETCH_META_CHUNK_INLINE 1024
/* Output is written in pieces of about this size. */
#define FETCH_FLUSH_BYTES (16u * 1024)
/* Keywords written per message at most (sqlited allows 64). */
#define FETCH_MAX_KEYWORDS 64


typedef struct fmsg {
	uint32_t uid;
	uint32_t seq;
	uint32_t flags;
	bool flags_changed;          /* \Seen set by this FETCH */
	bool has_savedate;
	uint64_t modseq;
	uint64_t size;
	int64_t internal_date;
	int64_t save_date;
	int64_t content_id;
	int64_t thread_id;
	size_t kw_off;               /* keywords: NUL-terminated in op->kw */
	uint32_t n_kw;
	/* FETCH_META WANT: the blobs, in op->blobs; has_*: came inline. */
	bool has_mime, has_hdr;
	size_t mime_off, mime_len;
	size_t hdr_off, hdr_len;
} fmsg;

/* A FETCH_META answer asked ahead: the messages, keywords, blobs. */
typedef struct fmeta_chunk {
	eng_uidset uids;
	fmsg *msgs;
	size_t n;
	eng_buf kw;
	eng_buf blobs;
} fmeta_chunk;

enum slot_state { SL_FREE = 0, SL_WAIT, SL_READY, SL_FAILED };

/* A phase A answer. */
typedef struct fslot {
	enum slot_state state;
	size_t msg;
	int err;
	eng_mime_part *mime;
	eng_buf hdr;
	bool hdr_complete;
} fslot;

enum req_kind { RQ_A = 1, RQ_B, RQ_P, RQ_S };

/* Phase B request modes. */
enum bmode { BM_STREAM = 1, BM_BUFFER, BM_COUNT, BM_DECODE_OUT };

typedef struct fetch_op fetch_op;
typedef struct freq freq;

/* A body asked for ahead (RQ_P): what arrived before its turn, its
 * credit withheld (RPC_CLIENT_HOLD), so sqlited stops at a window. */
typedef struct fahead {
	bool used;
	size_t msg;                  /* its message in op->msgs */
	freq *r;                     /* its request while it runs */
	bool ended;
	int err;                     /* it failed */
	bool has_size;
	uint64_t size;               /* the literal's size (SIZE) */
	bool has_id;
	uint32_t id;
	size_t held;                 /* bytes without credit */
	eng_buf data;
} fahead;

/* The FETCH_BODIES stream (RQ_S): the messages it asked for, in order,
 * and its bytes not consumed yet (their credit withheld). */
typedef struct fstream {
	bool busy;                   /* its request is open (sent, no END) */
	bool got_any;                /* a byte (or END) came: no fallback */
	bool ended;                  /* its last DATA came */
	int err;                     /* it failed (after what came) */
	bool has_id;
	uint32_t id;
	uint32_t *uids;              /* the UIDs asked, in order */
	size_t *msgs;                /* their messages in op->msgs */
	size_t n;                    /* records asked */
	rpc_bodies_reader rd;        /* rd.records: records begun */
	bool attached;               /* the current item takes the record */
	eng_buf buf;                 /* arrived, from off on not consumed */
	size_t off;
	/* While stream_data runs: its DATA not consumed yet, read in place
	 * after buf's bytes (what is left is appended to buf). */
	const uint8_t *in;
	size_t in_len;
	size_t to_credit;            /* consumed, credit not yet given */
} fstream;

struct freq {
	fetch_op *op;
	bool used;
	bool ended;
	bool has_id;
	uint32_t id;
	uint64_t order;              /* issue order, for error matching */
	enum req_kind kind;
	fslot *slot;                 /* RQ_A */
	fahead *ahead;               /* RQ_P */
};

/* What the message being written is doing. */
enum hstage { HS_START = 0, HS_PREVIEW, HS_PREFIX, HS_ITEMS, HS_DONE };

/* After a buffered fetch: what to do with the bytes. */
enum bafter { BA_FIELDS = 1, BA_DECODE, BA_PREVIEW };

struct fetch_op {
	imap_cmd *cmd;
	imap_session *s;
	imap_fetch_spec spec;
	eng_uidset set;
	eng_uidset chunk;            /* the UIDs of the current FETCH_META */
	/* The next chunk's FETCH_META, asked while the current one is
	 * written (at most this one ahead: two chunks held at most). */
	fmeta_chunk pre;
	bool pre_busy;               /* its request is in flight */
	bool pre_ready;              /* its answer is in pre */
	bool meta_end;               /* no chunk is left to ask for */
	int pre_err;                 /* its request failed */
	size_t view_pos;             /* next index of sel->uids to take */
	bool want_seen;              /* a non-PEEK item and not read-only */
	uint32_t attrs_a;            /* attributes needing phase A */
	bool need_mime, need_header;
	/* The messages. */
	fmsg *msgs;
	size_t n;
	eng_buf kw;
	eng_buf blobs;               /* inline MIME structures and headers */
	/* Pipeline. */
	fslot slots[FETCH_PIPELINE + 1];
	fslot inl;                   /* phase A of a message served inline */
	freq reqs[FETCH_REQS];
	uint64_t next_order;
	unsigned inflight;           /* every RPC, phases and others */
	size_t next_a;               /* next message to send phase A for */
	/* Body pipelining: when every message is one streamed body item and
	 * nothing else, the bodies of the next messages are asked for while
	 * the current one is written (answers kept in order in ahead[]). */
	bool body_ahead;
	/* ...and as one FETCH_BODIES stream while it is whole messages and
	 * sqlited knows it (see the top). */
	bool bodies;
	fstream st;
	fahead ahead[FETCH_BODY_AHEAD];
	size_t next_b;               /* next message to ask the body of */
	size_t cur;                  /* the message being written */
	bool busy;                   /* a non-pipelined RPC is in flight */
	bool finished;               /* the answer is decided */
	bool aborted;
	enum imap_result end_r;
	const char *end_code;
	const char *end_text;
	int end_err;                 /* != 0: imap_cmd_fail_rpc */
	bool need_space;             /* an item was written for this message */
	bool pumping;
	/* An item request waiting for phase A requests to be answered. */
	bool pend;
	char pend_section[200];
	uint64_t pend_offset, pend_length;
	bool repump;                 /* woken while pumping: go round again */
	/* The message being written. */
	enum hstage stage;
	size_t item;
	bool item_busy;              /* its RPC is in flight */
	bool item_done;
	int item_err;
	int item_pass;               /* BINARY counting: 0 then 1 */
	enum bmode mode;
	enum bafter after;
	fslot *hs;                   /* its phase A slot, if any */
	eng_buf line;                /* output not written yet */
	/* The message being written starts at line[msg_mark] and nothing of
	 * it has been written (msg_open): it can still be dropped if it
	 * turns out to be gone (expunged since FETCH_META). */
	size_t msg_mark;
	bool msg_open;
	eng_buf buf;                 /* a buffered fetch */
	eng_buf dec;                 /* decoder output */
	imap_cte cte;
	bool literal8;
	bool lit_started;
	uint64_t lit_size;
	uint64_t decoded;            /* BM_COUNT / BM_DECODE_OUT */
	uint64_t win_off, win_len;   /* BM_DECODE_OUT: bytes to write */
	char *preview;
	/* Backpressure. */
	bool held;
	uint32_t held_id;
	size_t held_bytes;
};

/* imap_cmd_fetch.c: lifetime, RPC plumbing, output, the pump. */
void fetch_slot_reset(fslot *sl);
void fetch_op_end(fetch_op *op);
void fetch_finish_rpc_error(fetch_op *op, int err);
bool fetch_rpc_back(fetch_op *op);
void fetch_fail_midstream(fetch_op *op, int err);
freq *fetch_req_new(fetch_op *op, enum req_kind kind);
void fetch_payload_begin(fetch_op *op, eng_buf *pl);
int fetch_call_once(fetch_op *op, uint16_t opcode, eng_buf *pl,
		    imap_rpc_cb *cb);
bool fetch_once_back(fetch_op *op, int err);
void fetch_on_rpc_done(imap_cmd *cmd, int err, const rpc_view *resp);
void fetch_out_flush(fetch_op *op);
void fetch_out_maybe_flush(fetch_op *op);
void fetch_out_put(fetch_op *op, const void *data, size_t len);
void fetch_next_message(fetch_op *op);
void fetch_pump(fetch_op *op);

/* imap_fetch_meta.c: FETCH_META chunks, phase A, the simple items. */
void fetch_a_head(fetch_op *op, fslot *sl, const rpc_view *head);
int fetch_fill_pipeline(fetch_op *op);
void fetch_put_prefix(fetch_op *op, const fmsg *m, const fslot *sl);
int fetch_preview_start(fetch_op *op);
void fetch_preview_finished(fetch_op *op);
int fetch_stage_start(fetch_op *op);
bool fetch_chunk_install(fetch_op *op);
int fetch_send_meta(fetch_op *op);

/* imap_fetch_body.c: body items. */
int fetch_send_body(fetch_op *op, freq *r, uint32_t uid, const char *section,
		    uint32_t want, uint64_t offset, uint64_t length,
		    bool stream);
bool fetch_a_open(const fetch_op *op);
int fetch_send_pending(fetch_op *op);
int fetch_send_item(fetch_op *op, const char *section, uint64_t offset,
		    uint64_t length, enum bmode mode);
int fetch_fill_bodies(fetch_op *op);
bool fetch_item_whole(const imap_fetch_item *it);
void fetch_stream_failed(fetch_op *op, int err);
void fetch_stream_run(fetch_op *op);
int fetch_item_start(fetch_op *op);
int fetch_item_finished(fetch_op *op);
bool fetch_binary_ok(fetch_op *op);

#endif
