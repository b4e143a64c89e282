/*
 * The sqlited wire codec: frames, fields and their limits (docs/rpc.md).
 * I/O-free: it reads from and writes to memory only, so the server, the
 * client library, the tests and the fuzzer share it unchanged.
 *
 * A frame is a 16-byte header and a payload:
 *
 *     u32 length (big-endian; bytes after this field = 12 + payload)
 *     u8  version (1)   u8 kind   u8 flags   u8 reserved (0)
 *     u16 opcode        u16 reserved (0)
 *     u32 request id
 *     payload
 *
 * A payload (every kind but DATA, whose payload is raw body bytes) is a
 * sequence of fields: key = varint(tag << 3 | wire type), then a varint
 * (types 0 and 1), or a varint length and that many bytes (type 2), or a
 * varint length and nested fields (type 3, a group). Varints are minimal,
 * so every value has one encoding and encode(decode(x)) == x.
 *
 * Three parts:
 *  - rpc_reader: fed bytes in any split, yields whole frames; checks the
 *    header and the frame size before it buffers a byte of payload.
 *  - rpc_decode: a payload into a read-only view; getters by tag. Views
 *    point into the payload and into the rpc_msg's field array: both must
 *    outlive them.
 *  - rpc_put_* / rpc_frame_begin/end: appending fields and frames to an
 *    eng_buf.
 *
 * Errors are enum rpc_err (rpc_proto.h). A reader error is final: the byte
 * stream cannot be trusted after it, so the connection is closed (after an
 * ERROR frame, docs/rpc.md says which).
 */
#ifndef RPC_CODEC_H
#define RPC_CODEC_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "buf.h"
#include "rpc_proto.h"
#include "store.h"

#define RPC_HEADER_BYTES 16
/* The length field counts the 12 header bytes after it. */
#define RPC_LENGTH_MIN 12u

enum rpc_wire {
	RPC_W_VARINT = 0,
	RPC_W_SIGNED = 1,
	RPC_W_BYTES = 2,
	RPC_W_GROUP = 3,
};

/* Largest tag: the key (tag << 3 | type) stays within 32 bits. */
#define RPC_TAG_MAX ((1u << 29) - 1)
/* A hard cap on nesting whatever the limits say (recursion depth). */
#define RPC_DEPTH_HARD_MAX 64

/*
 * Limits checked by the reader and the decoder. Every length is compared
 * with these before anything is allocated for it.
 */
typedef struct rpc_limits {
	uint32_t max_frame_bytes;    /* whole frame, header and length included */
	uint32_t max_chunk_bytes;    /* payload of one DATA frame */
	uint32_t max_fields;         /* fields in one payload, all depths */
	uint32_t max_depth;          /* group nesting (top level = 0) */
	uint32_t max_bytes_field;    /* one bytes field */
} rpc_limits;

#define RPC_MAX_FRAME_BYTES (1024u * 1024)
#define RPC_MAX_FRAME_BYTES_PREAUTH (64u * 1024)
#define RPC_MAX_CHUNK_BYTES (256u * 1024)
#define RPC_MAX_FIELDS 4096u
#define RPC_MAX_FIELDS_PREAUTH 64u
#define RPC_MAX_DEPTH 16u
#define RPC_MAX_DEPTH_PREAUTH 2u

/* After authentication. */
void rpc_limits_default(rpc_limits *lim);
/* Before AUTH_OK: 64 KiB frames, 64 fields, depth 2, no DATA. */
void rpc_limits_preauth(rpc_limits *lim);

/* ---- Frames ---- */

typedef struct rpc_frame {
	uint8_t version;
	uint8_t kind;                /* enum rpc_kind */
	uint8_t flags;               /* enum rpc_flag */
	uint16_t opcode;
	uint32_t request_id;
	const uint8_t *payload;      /* see rpc_reader_feed for its lifetime */
	size_t payload_len;
} rpc_frame;

/*
 * Checks a 16-byte header against the rules of docs/rpc.md and the limits
 * and fills f (without the payload). *payload_len_r gets the payload size.
 * RPC_EMALFORMED (length < 12), RPC_EVERSION, RPC_EKIND (unknown kind, or
 * request id / opcode / flags wrong for the kind), RPC_ERESERVED,
 * RPC_EFRAMESIZE, RPC_ECHUNKSIZE.
 */
int rpc_header_parse(const uint8_t hdr[RPC_HEADER_BYTES],
		     const rpc_limits *lim, rpc_frame *f, size_t *payload_len_r);

typedef struct rpc_reader rpc_reader;

/* A reader with a copy of lim (NULL: rpc_limits_preauth). */
rpc_reader *rpc_reader_new(const rpc_limits *lim);
/* Frees; sets *r to NULL; accepts NULL. */
void rpc_reader_free(rpc_reader **r);
/* New limits from the next frame on (after AUTH_OK). */
void rpc_reader_set_limits(rpc_reader *r, const rpc_limits *lim);

/*
 * Feeds up to len bytes. *consumed_r gets how many were used (always all
 * of them when the result is 0). Returns 1 with a whole frame in *frame_r,
 * 0 when it needs more input, or a negative rpc_err, which is then
 * returned by every later call. Call again with the rest of the input
 * after a 1: one call yields at most one frame.
 *
 * frame_r->payload points into data when the whole frame was in this
 * call's input and nothing was buffered (no copy), else into the reader's
 * buffer; either way it is valid until the next call or rpc_reader_free.
 * The buffer grows to the largest frame seen, never past max_frame_bytes.
 */
int rpc_reader_feed(rpc_reader *r, const uint8_t *data, size_t len,
		    size_t *consumed_r, rpc_frame *frame_r);
/* Bytes of an unfinished frame held (0 between frames). */
size_t rpc_reader_pending(const rpc_reader *r);
/*
 * Between frames, wipes and frees the buffer that frames spanning two
 * feeds were put together in (it grows to the largest such frame, up to
 * max_frame_bytes, and holds the last one's bytes: a message's body).
 * With part of a frame held it does nothing. Not while a frame it
 * returned is still in use. rpc_reader_capacity: the buffer's size.
 */
void rpc_reader_trim(rpc_reader *r);
size_t rpc_reader_capacity(const rpc_reader *r);

/*
 * Starts a frame at the end of b: writes the header with a length to be
 * filled in. Returns the mark to give to rpc_frame_end.
 */
size_t rpc_frame_begin(eng_buf *b, uint8_t kind, uint8_t flags,
		       uint16_t opcode, uint32_t request_id);
/*
 * Fills in the length of the frame started at mark. If the frame is longer
 * than lim->max_frame_bytes (lim NULL: the defaults), or a DATA payload
 * longer than max_chunk_bytes, it is removed from b again and
 * RPC_EFRAMESIZE / RPC_ECHUNKSIZE returned.
 */
int rpc_frame_end(eng_buf *b, size_t mark, const rpc_limits *lim);
/*
 * A frame built in place: writes at hdr the header of a frame whose
 * payload_len bytes follow it (the caller's buffer holds the payload after
 * RPC_HEADER_BYTES). Checks as rpc_frame_end with the default limits.
 */
int rpc_frame_header(uint8_t hdr[RPC_HEADER_BYTES], uint8_t kind,
		     uint8_t flags, uint16_t opcode, uint32_t request_id,
		     size_t payload_len);
/* Writes f (header and f->payload) as one frame; checks like frame_end. */
int rpc_frame_write(eng_buf *b, const rpc_frame *f, const rpc_limits *lim);

/* ---- Varints ---- */

/* Bytes needed for v (1..10). */
size_t rpc_varint_len(uint64_t v);
void rpc_put_varint(eng_buf *b, uint64_t v);
/*
 * Reads a minimal varint from p[0..len). Returns the bytes used (>0),
 * RPC_ETRUNCATED if it runs past len, RPC_EVARINT if it is not minimal or
 * does not fit in 64 bits.
 */
int rpc_get_varint(const uint8_t *p, size_t len, uint64_t *v_r);
uint64_t rpc_zigzag(int64_t v);
int64_t rpc_unzigzag(uint64_t v);

/* ---- Writing fields ---- */

void rpc_put_u64(eng_buf *b, uint32_t tag, uint64_t v);
void rpc_put_s64(eng_buf *b, uint32_t tag, int64_t v);
void rpc_put_bool(eng_buf *b, uint32_t tag, bool v);
void rpc_put_bytes(eng_buf *b, uint32_t tag, const void *p, size_t len);
void rpc_put_str(eng_buf *b, uint32_t tag, const char *s);
/*
 * A group: rpc_group_begin returns a mark, fields follow, rpc_group_end
 * inserts the length. Groups nest; end them in reverse order.
 */
size_t rpc_group_begin(eng_buf *b, uint32_t tag);
void rpc_group_end(eng_buf *b, size_t mark);
/*
 * Packed UID set: 8 bytes per range, lo then hi as u32 big-endian,
 * 1 <= lo <= hi, hi = 0xffffffff for '*'.
 */
void rpc_put_uidset(eng_buf *b, uint32_t tag, const eng_uidset *set);
/* Packed UID list: 4 bytes per UID, u32 big-endian, in the given order. */
void rpc_put_uids(eng_buf *b, uint32_t tag, const uint32_t *uids, size_t n);

/* ---- Reading fields ---- */

/*
 * One decoded field. Fields are stored in preorder: a group is followed by
 * its descendants, and span counts the group and all of them (1 for a
 * scalar), so a reader skips a group in one step.
 */
typedef struct rpc_field {
	uint32_t tag;
	uint8_t type;                /* enum rpc_wire */
	uint32_t span;
	uint64_t u;                  /* VARINT/SIGNED: the raw varint; BYTES/GROUP: length */
	const uint8_t *data;         /* BYTES/GROUP: into the payload */
} rpc_field;

/* The decoded fields of one payload; owns only the array. */
typedef struct rpc_msg {
	rpc_field *fields;
	size_t n;
	size_t cap;
} rpc_msg;

#define RPC_MSG_INIT { NULL, 0, 0 }

/* The fields of one level: the top of a payload or one group's content. */
typedef struct rpc_view {
	const rpc_field *f;          /* first field of this level */
	size_t n;                    /* entries (with descendants) it covers */
} rpc_view;

/*
 * Decodes a payload into msg (reusing its array; the array never grows
 * past lim->max_fields entries) and sets *root_r to its top level.
 * RPC_EFIELDS, RPC_EDEPTH, RPC_EFIELDSIZE, RPC_EVARINT, RPC_ETRUNCATED,
 * RPC_EWIRETYPE. Never reads outside p[0..len). lim NULL: the defaults.
 */
int rpc_decode(const uint8_t *p, size_t len, const rpc_limits *lim,
	       rpc_msg *msg, rpc_view *root_r);
/* Frees the array; accepts a cleared msg. */
void rpc_msg_clear(rpc_msg *msg);

/*
 * Getters: the first field with tag at this level. 0 when found,
 * RPC_EMISSING when absent, RPC_EFIELDTYPE when its wire type (or, for
 * u32/bool, its range) is not what was asked. Outputs are untouched
 * unless 0 is returned.
 */
int rpc_get_u64(const rpc_view *v, uint32_t tag, uint64_t *val_r);
int rpc_get_u32(const rpc_view *v, uint32_t tag, uint32_t *val_r);
int rpc_get_s64(const rpc_view *v, uint32_t tag, int64_t *val_r);
int rpc_get_bool(const rpc_view *v, uint32_t tag, bool *val_r);
int rpc_get_bytes(const rpc_view *v, uint32_t tag, const uint8_t **p_r,
		  size_t *len_r);
/* Bytes as a C string: RPC_EFIELDTYPE if it holds a NUL. eng_strndup'd. */
int rpc_get_str(const rpc_view *v, uint32_t tag, char **s_r);
int rpc_get_group(const rpc_view *v, uint32_t tag, rpc_view *sub_r);
/*
 * A packed UID set (see rpc_put_uidset) into set (appended to): every
 * occurrence of tag, in order, since an answer in MORE parts carries one
 * field per part (docs/rpc.md); at most max_ranges ranges in all.
 * RPC_EFIELDTYPE for a bad length or range (then nothing is added);
 * RPC_EMISSING when the tag is absent.
 */
int rpc_get_uidset(const rpc_view *v, uint32_t tag, size_t max_ranges,
		   eng_uidset *set);
/* A packed UID list: *n_r UIDs at *p_r; read them with rpc_uids_at(). */
int rpc_get_uids(const rpc_view *v, uint32_t tag, const uint8_t **p_r,
		 size_t *n_r);
uint32_t rpc_uids_at(const uint8_t *p, size_t i);

/*
 * THREAD_TREE (docs/rpc.md): a thread tree as one bytes field, the nodes
 * in preorder, each as varint uid (0 = dummy) and varint child count,
 * beginning with the root (uid 0). A bytes field rather than nested
 * groups because a reply chain can be deeper than any group nesting limit.
 */
typedef struct rpc_tnode {
	uint32_t uid;
	uint32_t n_children;
} rpc_tnode;

/* Appends one node to a tree being built (then rpc_put_bytes the tree). */
void rpc_thread_tree_put(eng_buf *tree, uint32_t uid, uint32_t n_children);
/*
 * Parses and checks a tree: the counts must describe exactly len bytes,
 * the root's uid must be 0, UIDs must fit 32 bits. *nodes_r (free();
 * at most len / 2 entries) gets the nodes in preorder. Iterative, so any
 * depth is fine. 0 or RPC_EFIELDTYPE.
 */
int rpc_thread_tree_parse(const uint8_t *p, size_t len, rpc_tnode **nodes_r,
			  size_t *n_r);

/* Iterates over the fields of one level, in order. */
typedef struct rpc_iter {
	rpc_view v;
	size_t pos;
} rpc_iter;

void rpc_iter_init(rpc_iter *it, const rpc_view *v);
/* The next field with tag (0 = any tag) at this level, or NULL. */
const rpc_field *rpc_iter_next(rpc_iter *it, uint32_t tag);
/* The content of a group field. */
rpc_view rpc_field_group(const rpc_field *f);
/* Fields with tag at this level. */
size_t rpc_count(const rpc_view *v, uint32_t tag);

/*
 * Re-encodes a view (a whole payload or one group's content) exactly as
 * it was decoded: the bytes written equal the bytes decoded.
 */
void rpc_encode_view(eng_buf *b, const rpc_view *v);

#endif
