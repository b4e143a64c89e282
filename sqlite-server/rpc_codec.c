/*
 * The wire codec of docs/rpc.md: frame reader, payload decoder, writers,
 * and the protocol's tables (opcodes, error texts).
 *
 * Invariants:
 *  - nothing is read outside the bytes a caller passed (every length is
 *    compared with what remains before it is used);
 *  - nothing is allocated for a length before it passed its limit: the
 *    reader's buffer is at most max_frame_bytes, the field array at most
 *    max_fields entries;
 *  - the decoder accepts exactly the canonical encodings (minimal varints,
 *    lengths that match), so rpc_encode_view() gives back the same bytes.
 */
#include "rpc_codec.h"
#include "eng_error.h"

#include <sodium.h>
#include <stdlib.h>
#include <string.h>

/* ---- Protocol tables ---- */

static const rpc_op op_table[] = {
	{ RPC_OP_PING, "PING", 0 },
	{ RPC_OP_STATS, "STATS", RPC_OPF_MULTI },
	{ RPC_OP_UNLOCK, "UNLOCK", 0 },
	{ RPC_OP_LOCK, "LOCK", RPC_OPF_SESSION },
	{ RPC_OP_MAILBOX_LIST, "MAILBOX_LIST", RPC_OPF_SESSION | RPC_OPF_MULTI },
	{ RPC_OP_MAILBOX_CREATE, "MAILBOX_CREATE", RPC_OPF_SESSION },
	{ RPC_OP_MAILBOX_RENAME, "MAILBOX_RENAME", RPC_OPF_SESSION },
	{ RPC_OP_MAILBOX_DELETE, "MAILBOX_DELETE", RPC_OPF_SESSION },
	{ RPC_OP_MAILBOX_SUBSCRIBE, "MAILBOX_SUBSCRIBE", RPC_OPF_SESSION },
	{ RPC_OP_MAILBOX_STATUS, "MAILBOX_STATUS", RPC_OPF_SESSION },
	{ RPC_OP_APPEND, "APPEND", RPC_OPF_SESSION | RPC_OPF_BODY_IN },
	{ RPC_OP_FETCH_META, "FETCH_META", RPC_OPF_SESSION | RPC_OPF_MULTI },
	{ RPC_OP_FETCH_BODY, "FETCH_BODY", RPC_OPF_SESSION | RPC_OPF_BODY_OUT },
	{ RPC_OP_STORE, "STORE", RPC_OPF_SESSION | RPC_OPF_MULTI },
	{ RPC_OP_COPY, "COPY", RPC_OPF_SESSION | RPC_OPF_MULTI },
	{ RPC_OP_MOVE, "MOVE", RPC_OPF_SESSION | RPC_OPF_MULTI },
	{ RPC_OP_EXPUNGE, "EXPUNGE", RPC_OPF_SESSION | RPC_OPF_MULTI },
	{ RPC_OP_SEARCH, "SEARCH", RPC_OPF_SESSION | RPC_OPF_MULTI },
	{ RPC_OP_SORT, "SORT", RPC_OPF_SESSION | RPC_OPF_MULTI },
	{ RPC_OP_THREAD, "THREAD", RPC_OPF_SESSION | RPC_OPF_MULTI },
	{ RPC_OP_CHANGES, "CHANGES", RPC_OPF_SESSION | RPC_OPF_MULTI },
	{ RPC_OP_QUOTA_GET, "QUOTA_GET", RPC_OPF_SESSION },
	{ RPC_OP_MAILBOX_VIEW, "MAILBOX_VIEW", RPC_OPF_SESSION | RPC_OPF_MULTI },
	{ RPC_OP_FETCH_BODIES, "FETCH_BODIES", RPC_OPF_SESSION | RPC_OPF_BODY_OUT },
	{ RPC_OP_DELIVER, "DELIVER", RPC_OPF_BODY_IN },
	{ RPC_OP_DIR_LOOKUP, "DIR_LOOKUP", 0 },
	{ RPC_OP_DOMAIN_ADD, "DOMAIN_ADD", RPC_OPF_ADMIN },
	{ RPC_OP_DOMAIN_LIST, "DOMAIN_LIST", RPC_OPF_ADMIN | RPC_OPF_MULTI },
	{ RPC_OP_DOMAIN_REMOVE, "DOMAIN_REMOVE", RPC_OPF_ADMIN },
	{ RPC_OP_ALIAS_ADD, "ALIAS_ADD", RPC_OPF_ADMIN },
	{ RPC_OP_ALIAS_LIST, "ALIAS_LIST", RPC_OPF_ADMIN | RPC_OPF_MULTI },
	{ RPC_OP_ALIAS_REMOVE, "ALIAS_REMOVE", RPC_OPF_ADMIN },
	{ RPC_OP_ALIAS_PASSWD, "ALIAS_PASSWD", 0 },
	{ RPC_OP_APP_PASSWORD_ADD, "APP_PASSWORD_ADD", RPC_OPF_SESSION },
	{ RPC_OP_APP_PASSWORD_REVOKE, "APP_PASSWORD_REVOKE", RPC_OPF_SESSION },
	{ RPC_OP_SERVER_STATUS, "SERVER_STATUS", RPC_OPF_ADMIN | RPC_OPF_MULTI },
	{ RPC_OP_BACKUP_PREPARE, "BACKUP_PREPARE", RPC_OPF_ADMIN },
	{ RPC_OP_RESTORE_ALIAS, "RESTORE_ALIAS", RPC_OPF_ADMIN },
};

const rpc_op *rpc_op_lookup(uint16_t opcode)
{
	for (size_t i = 0; i < sizeof(op_table) / sizeof(op_table[0]); i++) {
		if (op_table[i].opcode == opcode)
			return &op_table[i];
	}
	return NULL;
}

const rpc_op *rpc_op_table(size_t *n_r)
{
	*n_r = sizeof(op_table) / sizeof(op_table[0]);
	return op_table;
}

/* Indexed by -(code) - 100. */
static const char *const proto_errors[] = {
	"Malformed frame",
	"Unsupported protocol version",
	"Unknown operation",
	"Frame too large",
	"Data chunk too large",
	"Too many fields",
	"Fields nested too deeply",
	"Field too large",
	"Malformed number",
	"Truncated field",
	"Unknown field type",
	"Reserved bits set",
	"Unexpected frame",
	"Missing field",
	"Wrong field type",
	"Not authenticated",
	"No such session",
	"Too many requests in flight",
	"Service unavailable, try again later",
	"Request timed out",
	"Request cancelled",
	"Flow control violation",
	"Protocol violation",
};

const char *rpc_strerror(int err)
{
	if (err <= RPC_EMALFORMED && err >= RPC_ERR_MIN)
		return proto_errors[-err - 100];
	return eng_strerror(err);
}

uint32_t rpc_err_to_wire(int err)
{
	if ((err <= RPC_EMALFORMED && err >= RPC_ERR_MIN) ||
	    (err < 0 && err >= ENG_EPERM))
		return (uint32_t)-err;
	/* Anything else is a bug on our side: a temporary failure. */
	return (uint32_t)-ENG_EIO;
}

int rpc_err_from_wire(uint64_t code)
{
	if ((code >= 1 && code <= (uint64_t)-ENG_EPERM) ||
	    (code >= (uint64_t)-RPC_EMALFORMED && code <= (uint64_t)-RPC_ERR_MIN))
		return -(int)code;
	return 0;
}

/* ---- Limits ---- */

void rpc_limits_default(rpc_limits *lim)
{
	lim->max_frame_bytes = RPC_MAX_FRAME_BYTES;
	lim->max_chunk_bytes = RPC_MAX_CHUNK_BYTES;
	lim->max_fields = RPC_MAX_FIELDS;
	lim->max_depth = RPC_MAX_DEPTH;
	lim->max_bytes_field = RPC_MAX_FRAME_BYTES;
}

void rpc_limits_preauth(rpc_limits *lim)
{
	lim->max_frame_bytes = RPC_MAX_FRAME_BYTES_PREAUTH;
	lim->max_chunk_bytes = 0;
	lim->max_fields = RPC_MAX_FIELDS_PREAUTH;
	lim->max_depth = RPC_MAX_DEPTH_PREAUTH;
	lim->max_bytes_field = RPC_MAX_FRAME_BYTES_PREAUTH;
}

static const rpc_limits *limits_or_default(const rpc_limits *lim,
					   rpc_limits *tmp)
{
	if (lim != NULL)
		return lim;
	rpc_limits_default(tmp);
	return tmp;
}

/* ---- Byte helpers ---- */

static uint32_t get_be32(const uint8_t *p)
{
	return ((uint32_t)p[0] << 24) | ((uint32_t)p[1] << 16) |
	       ((uint32_t)p[2] << 8) | p[3];
}

static uint16_t get_be16(const uint8_t *p)
{
	return (uint16_t)((p[0] << 8) | p[1]);
}

static void set_be32(uint8_t *p, uint32_t v)
{
	p[0] = (uint8_t)(v >> 24);
	p[1] = (uint8_t)(v >> 16);
	p[2] = (uint8_t)(v >> 8);
	p[3] = (uint8_t)v;
}

static void set_be16(uint8_t *p, uint16_t v)
{
	p[0] = (uint8_t)(v >> 8);
	p[1] = (uint8_t)v;
}

/* ---- Frame header ---- */

/*
 * Which header values each kind allows (docs/rpc.md "Frame kinds"):
 * request id 0 for connection-level kinds and non-zero for per-request
 * ones; an opcode only where it means something; only its own flags.
 */
static int header_kind_check(const rpc_frame *f)
{
	bool id0 = f->request_id == 0, op0 = f->opcode == 0;
	uint8_t allowed;

	switch (f->kind) {
	case RPC_K_HELLO:
	case RPC_K_AUTH:
	case RPC_K_AUTH_OK:
		if (!id0 || !op0)
			return RPC_EKIND;
		allowed = 0;
		break;
	case RPC_K_REQUEST:
		if (id0 || op0)
			return RPC_EKIND;
		allowed = RPC_F_BODY;
		break;
	case RPC_K_RESPONSE:
		if (id0 || op0)
			return RPC_EKIND;
		allowed = RPC_F_BODY | RPC_F_MORE;
		break;
	case RPC_K_ERROR:
		allowed = 0;
		break;
	case RPC_K_DATA:
		if (id0 || !op0)
			return RPC_EKIND;
		allowed = RPC_F_END;
		break;
	case RPC_K_WINDOW:
	case RPC_K_CANCEL:
		if (id0 || !op0)
			return RPC_EKIND;
		allowed = 0;
		break;
	case RPC_K_EVENT:
		if (!id0)
			return RPC_EKIND;
		allowed = 0;
		break;
	default:
		return RPC_EKIND;
	}
	if ((f->flags & ~allowed) != 0)
		return RPC_EKIND;
	return 0;
}

int rpc_header_parse(const uint8_t hdr[RPC_HEADER_BYTES],
		     const rpc_limits *lim, rpc_frame *f, size_t *payload_len_r)
{
	rpc_limits tmp;
	uint32_t length = get_be32(hdr);
	size_t payload_len;
	int ret;

	lim = limits_or_default(lim, &tmp);
	/* Size first: it is what protects memory, whatever else is wrong. */
	if (length < RPC_LENGTH_MIN)
		return RPC_EMALFORMED;
	if ((uint64_t)length + 4 > lim->max_frame_bytes)
		return RPC_EFRAMESIZE;
	if (hdr[4] != RPC_VERSION)
		return RPC_EVERSION;
	if (hdr[7] != 0 || hdr[10] != 0 || hdr[11] != 0 ||
	    (hdr[6] & ~RPC_F_ALL) != 0)
		return RPC_ERESERVED;
	memset(f, 0, sizeof(*f));
	f->version = hdr[4];
	f->kind = hdr[5];
	f->flags = hdr[6];
	f->opcode = get_be16(hdr + 8);
	f->request_id = get_be32(hdr + 12);
	if ((ret = header_kind_check(f)) != 0)
		return ret;
	payload_len = length - RPC_LENGTH_MIN;
	if (f->kind == RPC_K_DATA && payload_len > lim->max_chunk_bytes)
		return RPC_ECHUNKSIZE;
	*payload_len_r = payload_len;
	return 0;
}

/* ---- Frame reader ---- */

struct rpc_reader {
	rpc_limits lim;
	uint8_t hdr[RPC_HEADER_BYTES];
	size_t hdr_have;
	rpc_frame frame;             /* header of the frame being read */
	size_t payload_len;
	size_t have;                 /* payload bytes in buf */
	uint8_t *buf;
	size_t cap;
	int err;                     /* sticky */
};

static const uint8_t empty_payload[1];

rpc_reader *rpc_reader_new(const rpc_limits *lim)
{
	rpc_reader *r = eng_calloc(1, sizeof(*r));

	if (lim != NULL)
		r->lim = *lim;
	else
		rpc_limits_preauth(&r->lim);
	return r;
}

static void rpc_reader_trim_buf(rpc_reader *r)
{
	if (r->buf == NULL)
		return;
	sodium_memzero(r->buf, r->cap);
	free(r->buf);
	r->buf = NULL;
	r->cap = 0;
}

void rpc_reader_trim(rpc_reader *r)
{
	if (r->hdr_have == 0 && r->have == 0)
		rpc_reader_trim_buf(r);
}

size_t rpc_reader_capacity(const rpc_reader *r)
{
	return r->cap;
}

void rpc_reader_free(rpc_reader **r)
{
	if (*r == NULL)
		return;
	rpc_reader_trim_buf(*r);
	free(*r);
	*r = NULL;
}

void rpc_reader_set_limits(rpc_reader *r, const rpc_limits *lim)
{
	r->lim = *lim;
}

size_t rpc_reader_pending(const rpc_reader *r)
{
	return r->hdr_have + r->have;
}

static int reader_fail(rpc_reader *r, int err)
{
	r->err = err;
	return err;
}

int rpc_reader_feed(rpc_reader *r, const uint8_t *data, size_t len,
		    size_t *consumed_r, rpc_frame *frame_r)
{
	size_t off = 0, n;
	int ret;

	*consumed_r = 0;
	if (r->err != 0)
		return r->err;
	/* Nothing to read (data may be NULL): a frame is never left whole
	 * in the buffer between calls, so there is nothing to return. */
	if (len == 0)
		return 0;

	if (r->hdr_have < RPC_HEADER_BYTES) {
		/* Fast path: a whole frame in the input, nothing buffered. */
		if (r->hdr_have == 0 && len >= RPC_HEADER_BYTES) {
			ret = rpc_header_parse(data, &r->lim, &r->frame,
					       &r->payload_len);
			if (ret != 0)
				return reader_fail(r, ret);
			if (len - RPC_HEADER_BYTES >= r->payload_len) {
				*frame_r = r->frame;
				frame_r->payload = r->payload_len != 0 ?
					data + RPC_HEADER_BYTES : empty_payload;
				frame_r->payload_len = r->payload_len;
				*consumed_r = RPC_HEADER_BYTES + r->payload_len;
				return 1;
			}
			memcpy(r->hdr, data, RPC_HEADER_BYTES);
			r->hdr_have = RPC_HEADER_BYTES;
			off = RPC_HEADER_BYTES;
		} else {
			n = RPC_HEADER_BYTES - r->hdr_have;
			if (n > len)
				n = len;
			memcpy(r->hdr + r->hdr_have, data, n);
			r->hdr_have += n;
			off = n;
			if (r->hdr_have < RPC_HEADER_BYTES) {
				*consumed_r = off;
				return 0;
			}
			ret = rpc_header_parse(r->hdr, &r->lim, &r->frame,
					       &r->payload_len);
			if (ret != 0) {
				*consumed_r = off;
				return reader_fail(r, ret);
			}
		}
		/* payload_len passed the frame limit: the buffer is bounded. */
		if (r->payload_len > r->cap) {
			rpc_reader_trim_buf(r);   /* wiped: the last frame's bytes */
			r->buf = eng_malloc(r->payload_len);
			r->cap = r->payload_len;
		}
		r->have = 0;
	}

	n = r->payload_len - r->have;
	if (n > len - off)
		n = len - off;
	if (n != 0)
		memcpy(r->buf + r->have, data + off, n);
	r->have += n;
	off += n;
	*consumed_r = off;
	if (r->have < r->payload_len)
		return 0;
	*frame_r = r->frame;
	frame_r->payload = r->payload_len != 0 ? r->buf : empty_payload;
	frame_r->payload_len = r->payload_len;
	r->hdr_have = 0;
	r->have = 0;
	r->payload_len = 0;
	return 1;
}

/* ---- Frame writer ---- */

/* A header with its length left 0. */
static void header_fill(uint8_t hdr[RPC_HEADER_BYTES], uint8_t kind,
			uint8_t flags, uint16_t opcode, uint32_t request_id)
{
	memset(hdr, 0, RPC_HEADER_BYTES);
	hdr[4] = RPC_VERSION;
	hdr[5] = kind;
	hdr[6] = flags;
	set_be16(hdr + 8, opcode);
	set_be32(hdr + 12, request_id);
}

size_t rpc_frame_begin(eng_buf *b, uint8_t kind, uint8_t flags,
		       uint16_t opcode, uint32_t request_id)
{
	uint8_t hdr[RPC_HEADER_BYTES];
	size_t mark = b->len;

	header_fill(hdr, kind, flags, opcode, request_id);
	eng_buf_append(b, hdr, sizeof(hdr));
	return mark;
}

int rpc_frame_header(uint8_t hdr[RPC_HEADER_BYTES], uint8_t kind,
		     uint8_t flags, uint16_t opcode, uint32_t request_id,
		     size_t payload_len)
{
	if (payload_len > RPC_MAX_FRAME_BYTES - RPC_HEADER_BYTES)
		return RPC_EFRAMESIZE;
	if (kind == RPC_K_DATA && payload_len > RPC_MAX_CHUNK_BYTES)
		return RPC_ECHUNKSIZE;
	header_fill(hdr, kind, flags, opcode, request_id);
	set_be32(hdr, (uint32_t)(RPC_HEADER_BYTES - 4 + payload_len));
	return 0;
}

int rpc_frame_end(eng_buf *b, size_t mark, const rpc_limits *lim)
{
	rpc_limits tmp;
	size_t total = b->len - mark;
	uint8_t *hdr = (uint8_t *)b->data + mark;
	int err = 0;

	lim = limits_or_default(lim, &tmp);
	if (total > lim->max_frame_bytes)
		err = RPC_EFRAMESIZE;
	else if (hdr[5] == RPC_K_DATA &&
		 total - RPC_HEADER_BYTES > lim->max_chunk_bytes)
		err = RPC_ECHUNKSIZE;
	if (err != 0) {
		b->len = mark;
		b->data[b->len] = '\0';
		return err;
	}
	set_be32(hdr, (uint32_t)(total - 4));
	return 0;
}

int rpc_frame_write(eng_buf *b, const rpc_frame *f, const rpc_limits *lim)
{
	size_t mark = rpc_frame_begin(b, f->kind, f->flags, f->opcode,
				      f->request_id);

	/* rpc_frame_begin always writes version 1; keep what f says. */
	((uint8_t *)b->data)[mark + 4] = f->version;
	if (f->payload_len != 0)
		eng_buf_append(b, f->payload, f->payload_len);
	return rpc_frame_end(b, mark, lim);
}

/* ---- Varints ---- */

size_t rpc_varint_len(uint64_t v)
{
	size_t n = 1;

	while (v >= 0x80) {
		v >>= 7;
		n++;
	}
	return n;
}

static size_t write_varint(uint8_t *out, uint64_t v)
{
	size_t n = 0;

	while (v >= 0x80) {
		out[n++] = (uint8_t)(v | 0x80);
		v >>= 7;
	}
	out[n++] = (uint8_t)v;
	return n;
}

void rpc_put_varint(eng_buf *b, uint64_t v)
{
	uint8_t tmp[10];

	eng_buf_append(b, tmp, write_varint(tmp, v));
}

int rpc_get_varint(const uint8_t *p, size_t len, uint64_t *v_r)
{
	uint64_t v = 0;

	for (size_t i = 0; i < 10; i++) {
		uint8_t c;

		if (i >= len)
			return RPC_ETRUNCATED;
		c = p[i];
		/* The 10th byte holds bit 63 only, and ends the varint. */
		if (i == 9 && c > 1)
			return RPC_EVARINT;
		v |= (uint64_t)(c & 0x7f) << (7 * i);
		if ((c & 0x80) == 0) {
			/* A final 0 byte after others is a longer encoding
			 * of a shorter number: not minimal. */
			if (i > 0 && c == 0)
				return RPC_EVARINT;
			*v_r = v;
			return (int)i + 1;
		}
	}
	return RPC_EVARINT;
}

uint64_t rpc_zigzag(int64_t v)
{
	return ((uint64_t)v << 1) ^ (uint64_t)(v >> 63);
}

int64_t rpc_unzigzag(uint64_t v)
{
	return (int64_t)(v >> 1) ^ -(int64_t)(v & 1);
}

/* ---- Field writers ---- */

static void put_key(eng_buf *b, uint32_t tag, enum rpc_wire type)
{
	rpc_put_varint(b, ((uint64_t)tag << 3) | (uint64_t)type);
}

void rpc_put_u64(eng_buf *b, uint32_t tag, uint64_t v)
{
	put_key(b, tag, RPC_W_VARINT);
	rpc_put_varint(b, v);
}

void rpc_put_s64(eng_buf *b, uint32_t tag, int64_t v)
{
	put_key(b, tag, RPC_W_SIGNED);
	rpc_put_varint(b, rpc_zigzag(v));
}

void rpc_put_bool(eng_buf *b, uint32_t tag, bool v)
{
	rpc_put_u64(b, tag, v ? 1 : 0);
}

void rpc_put_bytes(eng_buf *b, uint32_t tag, const void *p, size_t len)
{
	put_key(b, tag, RPC_W_BYTES);
	rpc_put_varint(b, len);
	if (len != 0)
		eng_buf_append(b, p, len);
}

void rpc_put_str(eng_buf *b, uint32_t tag, const char *s)
{
	rpc_put_bytes(b, tag, s, strlen(s));
}

size_t rpc_group_begin(eng_buf *b, uint32_t tag)
{
	put_key(b, tag, RPC_W_GROUP);
	return b->len;
}

void rpc_group_end(eng_buf *b, size_t mark)
{
	size_t content = b->len - mark;
	size_t n = rpc_varint_len(content);

	/* The length goes before the content: shift it by n bytes. */
	eng_buf_reserve(b, n);
	memmove(b->data + mark + n, b->data + mark, content);
	write_varint((uint8_t *)b->data + mark, content);
	b->len += n;
	b->data[b->len] = '\0';
}

void rpc_put_uidset(eng_buf *b, uint32_t tag, const eng_uidset *set)
{
	put_key(b, tag, RPC_W_BYTES);
	rpc_put_varint(b, (uint64_t)set->count * 8);
	eng_buf_reserve(b, set->count * 8);
	for (size_t i = 0; i < set->count; i++) {
		uint8_t *p = (uint8_t *)b->data + b->len;

		set_be32(p, set->ranges[i].lo);
		set_be32(p + 4, set->ranges[i].hi);
		b->len += 8;
	}
	b->data[b->len] = '\0';
}

void rpc_put_uids(eng_buf *b, uint32_t tag, const uint32_t *uids, size_t n)
{
	put_key(b, tag, RPC_W_BYTES);
	rpc_put_varint(b, (uint64_t)n * 4);
	eng_buf_reserve(b, n * 4);
	for (size_t i = 0; i < n; i++) {
		set_be32((uint8_t *)b->data + b->len, uids[i]);
		b->len += 4;
	}
	b->data[b->len] = '\0';
}

/* ---- Decoder ---- */

typedef struct decode_ctx {
	const rpc_limits *lim;
	uint32_t max_depth;
	rpc_msg *msg;
} decode_ctx;

static int add_field(decode_ctx *c, size_t *idx_r)
{
	rpc_msg *m = c->msg;

	if (m->n >= c->lim->max_fields)
		return RPC_EFIELDS;
	if (m->n == m->cap) {
		size_t cap = m->cap != 0 ? m->cap * 2 : 16;

		if (cap > c->lim->max_fields)
			cap = c->lim->max_fields;
		m->fields = eng_realloc(m->fields, cap * sizeof(*m->fields));
		m->cap = cap;
	}
	*idx_r = m->n++;
	return 0;
}

static int decode_level(decode_ctx *c, const uint8_t *p, size_t len,
			uint32_t depth)
{
	size_t off = 0;

	while (off < len) {
		uint64_t key, v;
		size_t idx;
		rpc_field *f;
		int n, ret;

		if ((n = rpc_get_varint(p + off, len - off, &key)) < 0)
			return n;
		off += (size_t)n;
		if ((key >> 3) == 0 || (key >> 3) > RPC_TAG_MAX || (key & 7) > 3)
			return RPC_EWIRETYPE;
		if ((ret = add_field(c, &idx)) != 0)
			return ret;
		f = &c->msg->fields[idx];
		f->tag = (uint32_t)(key >> 3);
		f->type = (uint8_t)(key & 7);
		f->span = 1;
		f->data = NULL;
		if ((n = rpc_get_varint(p + off, len - off, &v)) < 0)
			return n;
		off += (size_t)n;
		f->u = v;
		if (f->type == RPC_W_VARINT || f->type == RPC_W_SIGNED)
			continue;
		if (f->type == RPC_W_BYTES && v > c->lim->max_bytes_field)
			return RPC_EFIELDSIZE;
		if (v > len - off)
			return RPC_ETRUNCATED;
		f->data = p + off;
		if (f->type == RPC_W_GROUP) {
			if (depth + 1 > c->max_depth)
				return RPC_EDEPTH;
			ret = decode_level(c, p + off, (size_t)v, depth + 1);
			if (ret != 0)
				return ret;
			/* f may have moved with the array. */
			c->msg->fields[idx].span = (uint32_t)(c->msg->n - idx);
		}
		off += (size_t)v;
	}
	return 0;
}

int rpc_decode(const uint8_t *p, size_t len, const rpc_limits *lim,
	       rpc_msg *msg, rpc_view *root_r)
{
	rpc_limits tmp;
	decode_ctx c;
	int ret;

	c.lim = limits_or_default(lim, &tmp);
	c.max_depth = c.lim->max_depth < RPC_DEPTH_HARD_MAX ?
		c.lim->max_depth : RPC_DEPTH_HARD_MAX;
	c.msg = msg;
	msg->n = 0;
	ret = decode_level(&c, p, len, 0);
	if (ret != 0) {
		msg->n = 0;
		root_r->f = NULL;
		root_r->n = 0;
		return ret;
	}
	root_r->f = msg->fields;
	root_r->n = msg->n;
	return 0;
}

void rpc_msg_clear(rpc_msg *msg)
{
	free(msg->fields);
	msg->fields = NULL;
	msg->n = msg->cap = 0;
}

/* ---- Getters ---- */

static const rpc_field *find(const rpc_view *v, uint32_t tag)
{
	for (size_t i = 0; i < v->n; i += v->f[i].span) {
		if (v->f[i].tag == tag)
			return &v->f[i];
	}
	return NULL;
}

static int find_typed(const rpc_view *v, uint32_t tag, enum rpc_wire type,
		      const rpc_field **f_r)
{
	const rpc_field *f = find(v, tag);

	if (f == NULL)
		return RPC_EMISSING;
	if (f->type != type)
		return RPC_EFIELDTYPE;
	*f_r = f;
	return 0;
}

int rpc_get_u64(const rpc_view *v, uint32_t tag, uint64_t *val_r)
{
	const rpc_field *f;
	int ret = find_typed(v, tag, RPC_W_VARINT, &f);

	if (ret == 0)
		*val_r = f->u;
	return ret;
}

int rpc_get_u32(const rpc_view *v, uint32_t tag, uint32_t *val_r)
{
	const rpc_field *f;
	int ret = find_typed(v, tag, RPC_W_VARINT, &f);

	if (ret != 0)
		return ret;
	if (f->u > UINT32_MAX)
		return RPC_EFIELDTYPE;
	*val_r = (uint32_t)f->u;
	return 0;
}

int rpc_get_s64(const rpc_view *v, uint32_t tag, int64_t *val_r)
{
	const rpc_field *f;
	int ret = find_typed(v, tag, RPC_W_SIGNED, &f);

	if (ret == 0)
		*val_r = rpc_unzigzag(f->u);
	return ret;
}

int rpc_get_bool(const rpc_view *v, uint32_t tag, bool *val_r)
{
	const rpc_field *f;
	int ret = find_typed(v, tag, RPC_W_VARINT, &f);

	if (ret != 0)
		return ret;
	if (f->u > 1)
		return RPC_EFIELDTYPE;
	*val_r = f->u == 1;
	return 0;
}

int rpc_get_bytes(const rpc_view *v, uint32_t tag, const uint8_t **p_r,
		  size_t *len_r)
{
	const rpc_field *f;
	int ret = find_typed(v, tag, RPC_W_BYTES, &f);

	if (ret == 0) {
		*p_r = f->data;
		*len_r = (size_t)f->u;
	}
	return ret;
}

int rpc_get_str(const rpc_view *v, uint32_t tag, char **s_r)
{
	const uint8_t *p;
	size_t len;
	int ret = rpc_get_bytes(v, tag, &p, &len);

	if (ret != 0)
		return ret;
	if (len != 0 && memchr(p, '\0', len) != NULL)
		return RPC_EFIELDTYPE;
	*s_r = eng_strndup((const char *)p, len);
	return 0;
}

rpc_view rpc_field_group(const rpc_field *f)
{
	rpc_view v = { f + 1, f->span - 1 };

	return v;
}

int rpc_get_group(const rpc_view *v, uint32_t tag, rpc_view *sub_r)
{
	const rpc_field *f;
	int ret = find_typed(v, tag, RPC_W_GROUP, &f);

	if (ret == 0)
		*sub_r = rpc_field_group(f);
	return ret;
}

int rpc_get_uidset(const rpc_view *v, uint32_t tag, size_t max_ranges,
		   eng_uidset *set)
{
	const rpc_field *f;
	rpc_iter it;
	size_t ranges = 0;
	int ret;

	/* The first occurrence decides absence and the wire type. */
	{
		const uint8_t *p;
		size_t len;

		if ((ret = rpc_get_bytes(v, tag, &p, &len)) != 0)
			return ret;
	}
	/* Check everything before adding anything. */
	rpc_iter_init(&it, v);
	while ((f = rpc_iter_next(&it, tag)) != NULL) {
		if (f->type != RPC_W_BYTES || f->u % 8 != 0)
			return RPC_EFIELDTYPE;
		ranges += (size_t)(f->u / 8);
		if (ranges > max_ranges)
			return RPC_EFIELDTYPE;
		for (size_t i = 0; i < f->u; i += 8) {
			uint32_t lo = get_be32(f->data + i);
			uint32_t hi = get_be32(f->data + i + 4);

			if (lo == 0 || lo > hi)
				return RPC_EFIELDTYPE;
		}
	}
	rpc_iter_init(&it, v);
	while ((f = rpc_iter_next(&it, tag)) != NULL)
		for (size_t i = 0; i < f->u; i += 8)
			eng_uidset_add(set, get_be32(f->data + i),
				       get_be32(f->data + i + 4));
	return 0;
}

int rpc_get_uids(const rpc_view *v, uint32_t tag, const uint8_t **p_r,
		 size_t *n_r)
{
	const uint8_t *p;
	size_t len;
	int ret = rpc_get_bytes(v, tag, &p, &len);

	if (ret != 0)
		return ret;
	if (len % 4 != 0)
		return RPC_EFIELDTYPE;
	*p_r = p;
	*n_r = len / 4;
	return 0;
}

uint32_t rpc_uids_at(const uint8_t *p, size_t i)
{
	return get_be32(p + i * 4);
}

void rpc_thread_tree_put(eng_buf *tree, uint32_t uid, uint32_t n_children)
{
	rpc_put_varint(tree, uid);
	rpc_put_varint(tree, n_children);
}

int rpc_thread_tree_parse(const uint8_t *p, size_t len, rpc_tnode **nodes_r,
			  size_t *n_r)
{
	rpc_tnode *nodes;
	size_t off = 0, n = 0;
	uint64_t pending = 1;        /* nodes announced but not yet read */

	*nodes_r = NULL;
	*n_r = 0;
	if (len < 2)
		return RPC_EFIELDTYPE;
	/* Every node takes at least 2 bytes: the array is bounded by len. */
	nodes = eng_malloc((len / 2) * sizeof(*nodes));
	while (off < len) {
		uint64_t uid, kids;
		int k;

		if (pending == 0)
			goto bad;            /* bytes after the last node */
		if ((k = rpc_get_varint(p + off, len - off, &uid)) < 0)
			goto bad;
		off += (size_t)k;
		if ((k = rpc_get_varint(p + off, len - off, &kids)) < 0)
			goto bad;
		off += (size_t)k;
		if (uid > UINT32_MAX || (n == 0 && uid != 0) ||
		    kids > (len - off) / 2)
			goto bad;
		nodes[n].uid = (uint32_t)uid;
		nodes[n].n_children = (uint32_t)kids;
		n++;
		pending = pending - 1 + kids;
	}
	if (pending != 0)
		goto bad;
	*nodes_r = nodes;
	*n_r = n;
	return 0;
bad:
	free(nodes);
	return RPC_EFIELDTYPE;
}

void rpc_iter_init(rpc_iter *it, const rpc_view *v)
{
	it->v = *v;
	it->pos = 0;
}

const rpc_field *rpc_iter_next(rpc_iter *it, uint32_t tag)
{
	while (it->pos < it->v.n) {
		const rpc_field *f = &it->v.f[it->pos];

		it->pos += f->span;
		if (tag == 0 || f->tag == tag)
			return f;
	}
	return NULL;
}

size_t rpc_count(const rpc_view *v, uint32_t tag)
{
	size_t n = 0;

	for (size_t i = 0; i < v->n; i += v->f[i].span) {
		if (v->f[i].tag == tag)
			n++;
	}
	return n;
}

void rpc_encode_view(eng_buf *b, const rpc_view *v)
{
	for (size_t i = 0; i < v->n; i += v->f[i].span) {
		const rpc_field *f = &v->f[i];

		switch (f->type) {
		case RPC_W_VARINT:
		case RPC_W_SIGNED:
			put_key(b, f->tag, (enum rpc_wire)f->type);
			rpc_put_varint(b, f->u);
			break;
		case RPC_W_BYTES:
			rpc_put_bytes(b, f->tag, f->data, (size_t)f->u);
			break;
		case RPC_W_GROUP: {
			/* Re-encode the content rather than copy it, so that
			 * the length written is the one the content needs. */
			rpc_view sub = rpc_field_group(f);
			size_t mark = rpc_group_begin(b, f->tag);

			rpc_encode_view(b, &sub);
			rpc_group_end(b, mark);
			break;
		}
		}
	}
}
