/*
 * The sqlited wire protocol: frame kinds, flags, opcodes, field tags and
 * error codes. docs/rpc.md is the specification; this header is its
 * machine-readable half, and the numbers here are the wire numbers: they
 * never change meaning once released (add new ones, never renumber).
 *
 * Tags are one namespace for the whole protocol: a tag means the same thing
 * with the same wire type in every opcode and in every nested group, so
 * docs/rpc.md lists each tag once and the opcode tables only say which tags
 * a request or response carries.
 */
#ifndef RPC_PROTO_H
#define RPC_PROTO_H

#include <stddef.h>
#include <stdint.h>

#include "eng_error.h"

#define RPC_VERSION 1
#define RPC_DEFAULT_PORT 3456

/* ---- Frame kinds (header byte 5) ---- */

enum rpc_kind {
	RPC_K_HELLO = 1,        /* server -> client on connect */
	RPC_K_AUTH = 2,         /* client -> server */
	RPC_K_AUTH_OK = 3,      /* server -> client */
	RPC_K_REQUEST = 4,      /* client -> server */
	RPC_K_RESPONSE = 5,     /* server -> client */
	RPC_K_ERROR = 6,        /* either way; request id 0 = the connection */
	RPC_K_DATA = 7,         /* a chunk of a streamed body; raw payload */
	RPC_K_WINDOW = 8,       /* flow-control credit for a request id */
	RPC_K_CANCEL = 9,       /* client abandons a request id */
	RPC_K_EVENT = 10,       /* server push (reserved; not sent in v1) */
	RPC_K_MAX = RPC_K_EVENT,
};

/* ---- Frame flags (header byte 6); other bits must be 0 ---- */

enum rpc_flag {
	RPC_F_END = 0x01,       /* DATA: the last chunk of this body */
	RPC_F_BODY = 0x02,      /* REQUEST/RESPONSE: a body follows in DATA */
	RPC_F_MORE = 0x04,      /* RESPONSE: another RESPONSE part follows */
	RPC_F_ALL = 0x07,
};

/* Initial flow-control window of every body stream, each direction. */
#define RPC_INITIAL_WINDOW_BYTES (256u * 1024)

/*
 * FETCH_BODIES (docs/rpc.md): at most this many UIDs in one request, and
 * its body stream is a record per UID, each a head of RPC_BODIES_HEAD_BYTES
 * (UID u32, status u32, size u64, big-endian; rpc_bodies.h) and then the
 * message's bytes.
 */
#define RPC_BODIES_MAX_UIDS 4096u
#define RPC_BODIES_HEAD_BYTES 16u
enum rpc_bodies_status {
	RPC_BODIES_PRESENT = 0,      /* size bytes of the message follow */
	RPC_BODIES_GONE = 1,         /* no such message (expunged): size 0 */
};

/* ---- Opcodes (header bytes 8-9) ---- */

enum rpc_opcode {
	RPC_OP_PING = 1,
	RPC_OP_STATS = 2,

	RPC_OP_UNLOCK = 16,
	RPC_OP_LOCK = 17,

	RPC_OP_MAILBOX_LIST = 32,
	RPC_OP_MAILBOX_CREATE = 33,
	RPC_OP_MAILBOX_RENAME = 34,
	RPC_OP_MAILBOX_DELETE = 35,
	RPC_OP_MAILBOX_SUBSCRIBE = 36,
	RPC_OP_MAILBOX_STATUS = 37,

	RPC_OP_APPEND = 48,
	RPC_OP_FETCH_META = 49,
	RPC_OP_FETCH_BODY = 50,
	RPC_OP_STORE = 51,
	RPC_OP_COPY = 52,
	RPC_OP_MOVE = 53,
	RPC_OP_EXPUNGE = 54,
	RPC_OP_SEARCH = 55,
	RPC_OP_SORT = 56,
	RPC_OP_THREAD = 57,
	RPC_OP_CHANGES = 58,
	RPC_OP_QUOTA_GET = 59,
	RPC_OP_MAILBOX_VIEW = 60,
	RPC_OP_FETCH_BODIES = 61,

	RPC_OP_DELIVER = 64,
	RPC_OP_DIR_LOOKUP = 65,

	RPC_OP_DOMAIN_ADD = 80,
	RPC_OP_DOMAIN_LIST = 81,
	RPC_OP_DOMAIN_REMOVE = 82,
	RPC_OP_ALIAS_ADD = 83,
	RPC_OP_ALIAS_LIST = 84,
	RPC_OP_ALIAS_REMOVE = 85,
	RPC_OP_ALIAS_PASSWD = 86,
	RPC_OP_APP_PASSWORD_ADD = 87,
	RPC_OP_APP_PASSWORD_REVOKE = 88,
	RPC_OP_SERVER_STATUS = 89,

	RPC_OP_BACKUP_PREPARE = 96,
	RPC_OP_RESTORE_ALIAS = 97,
};

/* What the pre-dispatch check of an opcode needs to know. */
enum rpc_op_flags {
	RPC_OPF_SESSION = 1u << 0,   /* carries T_SESSION; ENOSESSION if stale */
	RPC_OPF_BODY_IN = 1u << 1,   /* the request streams a body (DATA) */
	RPC_OPF_BODY_OUT = 1u << 2,  /* the response may stream a body */
	RPC_OPF_ADMIN = 1u << 3,     /* only from peers allowed to administer */
	RPC_OPF_MULTI = 1u << 4,     /* the response may come in MORE parts */
};

typedef struct rpc_op {
	uint16_t opcode;
	const char *name;            /* "FETCH_BODY" */
	uint32_t flags;              /* enum rpc_op_flags */
} rpc_op;

/* The entry for opcode, or NULL for an unknown opcode (answer EOPCODE). */
const rpc_op *rpc_op_lookup(uint16_t opcode);
/* The whole table, in opcode order. */
const rpc_op *rpc_op_table(size_t *n_r);

/* ---- Field tags (wire type in brackets; see docs/rpc.md) ---- */

enum rpc_tag {
	/* connection, errors, diagnostics */
	RPC_T_CODE = 1,              /* [u] error code, positive (= -rpc_err) */
	RPC_T_ERROR_TEXT = 2,        /* [bytes] fixed non-revealing text */
	RPC_T_VERSION = 3,           /* [u] protocol version */
	RPC_T_NONCE = 4,             /* [bytes] 32 random bytes */
	RPC_T_PEER_NAME = 5,         /* [bytes] "imap@host1" */
	RPC_T_PROOF = 6,             /* [bytes] 32-byte HMAC-SHA256 */
	RPC_T_CREDIT = 7,            /* [u] WINDOW: more DATA bytes allowed */
	RPC_T_ECHO = 8,              /* [bytes] PING payload, sent back */
	RPC_T_STAT = 9,              /* [group] NAME, VALUE */
	RPC_T_NAME = 10,             /* [bytes] */
	RPC_T_VALUE = 11,            /* [u] */
	RPC_T_MAX_FRAME = 12,        /* [u] bytes */
	RPC_T_MAX_IN_FLIGHT = 13,    /* [u] requests */

	/* sessions and mailboxes */
	RPC_T_SESSION = 16,          /* [bytes] opaque session handle */
	RPC_T_ALIAS = 17,            /* [bytes] alias address */
	RPC_T_PASSWORD = 18,         /* [bytes] */
	RPC_T_NEW_PASSWORD = 19,     /* [bytes] */
	RPC_T_SLOT = 20,             /* [u] key slot id */
	RPC_T_LABEL = 21,            /* [bytes] app password name */
	RPC_T_DRAINED = 22,          /* [u] spool entries moved in at unlock */
	RPC_T_MAILBOX = 23,          /* [bytes] mailbox name, UTF-8, '/' */
	RPC_T_NEW_NAME = 24,         /* [bytes] */
	RPC_T_SPECIAL_USE = 25,      /* [u] enum eng_special_use bits */
	RPC_T_SUBSCRIBED = 26,       /* [u] 0/1 */
	RPC_T_NOSELECT = 27,         /* [u] 0/1 */
	RPC_T_MAILBOX_INFO = 28,     /* [group] one mailbox */
	RPC_T_UIDVALIDITY = 29,      /* [u] */
	RPC_T_UIDNEXT = 30,          /* [u] */
	RPC_T_HIGHESTMODSEQ = 31,    /* [u] */
	RPC_T_MESSAGES = 32,         /* [u] count */
	RPC_T_UNSEEN = 33,           /* [u] count */
	RPC_T_DELETED = 34,          /* [u] count of \Deleted */
	RPC_T_SIZE = 35,             /* [u] bytes */

	/* messages */
	RPC_T_UID = 40,              /* [u] */
	RPC_T_UIDSET = 41,           /* [bytes] packed ranges, see rpc_codec.h */
	RPC_T_UIDS = 42,             /* [bytes] packed u32 list, see rpc_codec.h */
	RPC_T_MODSEQ = 43,           /* [u] */
	RPC_T_CHANGEDSINCE = 44,     /* [u] */
	RPC_T_UNCHANGEDSINCE = 45,   /* [u] */
	RPC_T_FLAGS = 46,            /* [u] enum eng_flags bits */
	RPC_T_KEYWORD = 47,          /* [bytes] repeated */
	RPC_T_INTERNAL_DATE = 48,    /* [s] unix seconds */
	RPC_T_SAVE_DATE = 49,        /* [s] unix seconds */
	RPC_T_CONTENT_ID = 50,       /* [s] RFC 8474 EMAILID */
	RPC_T_THREAD_ID = 51,        /* [s] RFC 8474 THREADID */
	RPC_T_MESSAGE = 52,          /* [group] one message's metadata */
	RPC_T_IDEMPOTENCY_KEY = 53,  /* [bytes] up to 128 */
	RPC_T_MODE = 54,             /* [u] enum rpc_store_mode */
	RPC_T_FAILED = 55,           /* [bytes] packed ranges */
	RPC_T_DEST_MAILBOX = 56,     /* [bytes] */
	RPC_T_DEST_UIDS = 57,        /* [bytes] packed u32 list */
	RPC_T_SECTION = 58,          /* [bytes] IMAP section, "" = all */
	RPC_T_OFFSET = 59,           /* [u] bytes */
	RPC_T_LENGTH = 60,           /* [u] bytes */
	RPC_T_WANT = 61,             /* [u] enum rpc_want bits */
	RPC_T_MIME = 62,             /* [bytes] eng_mime_encode() blob */
	RPC_T_HEADER = 63,           /* [bytes] raw top-level header */
	RPC_T_VANISHED = 64,         /* [bytes] packed ranges */
	RPC_T_QUOTA_USED = 65,       /* [u] bytes */
	RPC_T_QUOTA_LIMIT = 66,      /* [u] bytes, 0 = none */
	RPC_T_FLAG_RUNS = 67,        /* [bytes] packed (count, flags) u32 pairs */

	/* search, sort, thread */
	RPC_T_QUERY = 70,            /* [group] one query node */
	RPC_T_Q_KIND = 71,           /* [u] enum rpc_query_kind */
	RPC_T_FIELD = 72,            /* [bytes] header field name */
	RPC_T_TEXT = 73,             /* [bytes] */
	RPC_T_NUMBER = 74,           /* [s] */
	RPC_T_SEQ_MAP = 75,          /* [bytes] packed u32 list */
	RPC_T_SORT_KEY = 76,         /* [u] rpc_sort_field | 0x100 reverse */
	RPC_T_ALGORITHM = 77,        /* [u] enum rpc_thread_algorithm */
	RPC_T_THREAD_TREE = 78,      /* [bytes] preorder (uid, n) varints */

	/* directory, delivery, administration */
	RPC_T_ADDRESS = 80,          /* [bytes] */
	RPC_T_EXISTS = 81,           /* [u] 0/1 */
	RPC_T_KIND = 82,             /* [u] enum rpc_dir_kind */
	RPC_T_FORWARD = 83,          /* [bytes] repeated forward target */
	RPC_T_DOMAIN = 84,           /* [bytes] */
	RPC_T_ALIAS_INFO = 85,       /* [group] ALIAS, KIND, FORWARD* */
	RPC_T_DELIVERED = 86,        /* [bytes] repeated alias delivered to */
	RPC_T_QUEUED = 87,           /* [u] forward copies queued */
	RPC_T_CATCH_ALL = 88,        /* [u] 0/1 matched the catch-all */
	RPC_T_DETAIL = 89,           /* [bytes] plus-address detail */
	RPC_T_CREATED = 90,          /* [s] unix seconds */
	RPC_T_CLIENT_ADDR = 91,      /* [bytes] end user's IP, for the login throttle */
	RPC_T_PATH = 92,             /* [bytes] a staging directory in data_dir/tmp/ */
	RPC_T_ALIAS_ID = 93,         /* [bytes] the alias's directory id (hex): its event channel */
	RPC_T_SENDER = 94,           /* [bytes] envelope sender (MAIL FROM), "" = null sender */
	RPC_T_MAILBOX_ID = 95,       /* [u] the mailbox row's id: kept by RENAME */
	RPC_T_PRIOR_MODSEQ = 96,     /* [u] STORE: the mailbox's HIGHESTMODSEQ before it */
	RPC_T_VIEW_HELD = 97,        /* [group] MAILBOX_VIEW: the row of a view the caller holds */
	RPC_T_VIEW_UNCHANGED = 98,   /* [u] 0/1 MAILBOX_VIEW: it is current, no UIDSET/FLAG_RUNS */
};

enum rpc_store_mode { RPC_MODE_SET = 0, RPC_MODE_ADD = 1, RPC_MODE_REMOVE = 2 };

enum rpc_want {
	RPC_WANT_BODY = 1u << 0,     /* stream the bytes of the section */
	RPC_WANT_MIME = 1u << 1,     /* T_MIME in the response */
	RPC_WANT_HEADER = 1u << 2,   /* T_HEADER in the response */
};

enum rpc_dir_kind { RPC_DIR_MAILBOX = 1, RPC_DIR_FORWARD = 2, RPC_DIR_BOTH = 3 };

/* Wire numbers of search keys (engine/search.h enum eng_query_kind). */
enum rpc_query_kind {
	RPC_Q_ALL = 0, RPC_Q_AND = 1, RPC_Q_OR = 2, RPC_Q_NOT = 3,
	RPC_Q_FLAG = 4, RPC_Q_UNFLAG = 5, RPC_Q_KEYWORD = 6,
	RPC_Q_UNKEYWORD = 7, RPC_Q_UID = 8, RPC_Q_SEQ = 9,
	RPC_Q_BEFORE = 10, RPC_Q_ON = 11, RPC_Q_SINCE = 12,
	RPC_Q_SENTBEFORE = 13, RPC_Q_SENTON = 14, RPC_Q_SENTSINCE = 15,
	RPC_Q_SAVEDBEFORE = 16, RPC_Q_SAVEDON = 17, RPC_Q_SAVEDSINCE = 18,
	RPC_Q_SAVEDATESUPPORTED = 19, RPC_Q_LARGER = 20, RPC_Q_SMALLER = 21,
	RPC_Q_HEADER = 22, RPC_Q_BODY = 23, RPC_Q_TEXT = 24,
	RPC_Q_MODSEQ = 25, RPC_Q_OLDER = 26, RPC_Q_YOUNGER = 27,
	RPC_Q_EMAILID = 28, RPC_Q_THREADID = 29,
};

/* Wire numbers of sort keys (engine/search.h enum eng_sort_field). */
enum rpc_sort_field {
	RPC_SORT_ARRIVAL = 0, RPC_SORT_CC = 1, RPC_SORT_DATE = 2,
	RPC_SORT_FROM = 3, RPC_SORT_SIZE = 4, RPC_SORT_SUBJECT = 5,
	RPC_SORT_TO = 6, RPC_SORT_DISPLAYFROM = 7, RPC_SORT_DISPLAYTO = 8,
};
#define RPC_SORT_REVERSE 0x100

enum rpc_thread_algorithm {
	RPC_THREAD_ORDEREDSUBJECT = 0,
	RPC_THREAD_REFERENCES = 1,
};

/* ---- Error codes ----
 *
 * Every rpc_ function returns 0 or one of these. The engine's codes
 * (eng_error.h) keep their values, so an engine result passes through
 * unchanged; the protocol's own start at -100. On the wire an ERROR frame
 * carries the code negated (T_CODE = 7 for ENG_ENOTFOUND).
 */
enum rpc_err {
	RPC_OK = 0,
	/* -1 .. -14: enum eng_err, unchanged */
	RPC_EMALFORMED = -100,      /* a frame that breaks the framing rules */
	RPC_EVERSION = -101,        /* unsupported protocol version */
	RPC_EOPCODE = -102,         /* unknown opcode */
	RPC_EFRAMESIZE = -103,      /* frame longer than the limit */
	RPC_ECHUNKSIZE = -104,      /* DATA chunk longer than the limit */
	RPC_EFIELDS = -105,         /* more fields in a payload than the limit */
	RPC_EDEPTH = -106,          /* groups nested deeper than the limit */
	RPC_EFIELDSIZE = -107,      /* a bytes field longer than the limit */
	RPC_EVARINT = -108,         /* a varint that is not minimal or > 64 bits */
	RPC_ETRUNCATED = -109,      /* a varint or length runs past the end */
	RPC_EWIRETYPE = -110,       /* wire type 4-7, or tag 0 */
	RPC_ERESERVED = -111,       /* a reserved byte or flag bit is not 0 */
	RPC_EKIND = -112,           /* unknown frame kind, or wrong header for it */
	RPC_EMISSING = -113,        /* a required field is absent */
	RPC_EFIELDTYPE = -114,      /* a field has the wrong wire type or range */
	RPC_ENOTAUTH = -115,        /* not authenticated (or auth failed) */
	RPC_ENOSESSION = -116,      /* no such session (expired or locked) */
	RPC_ETOOMANY = -117,        /* too many requests in flight */
	RPC_EUNAVAILABLE = -118,    /* sqlited cannot serve now; retry */
	RPC_ETIMEOUT = -119,        /* the request took too long */
	RPC_ECANCELLED = -120,      /* the client cancelled the request */
	RPC_EWINDOW = -121,         /* DATA beyond the granted window, or unmatched */
	RPC_EPROTO = -122,          /* a frame not allowed now (state machine) */
	RPC_ERR_MIN = -122,
};

/*
 * A fixed English sentence for a code, the same for every cause of it:
 * what an ERROR frame's T_MESSAGE carries. Never reveals a detail (whether
 * an alias exists, why a key did not fit).
 */
const char *rpc_strerror(int err);
/* The code as written in T_CODE (positive), and back (0 if out of range:
 * a peer's unknown code is mapped to ENG_EIO by the caller). */
uint32_t rpc_err_to_wire(int err);
int rpc_err_from_wire(uint64_t code);

#endif
