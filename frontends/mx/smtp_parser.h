/*
 * The SMTP codec for the MX frontend (RFC 5321; RFC 1870 SIZE, RFC 6152
 * 8BITMIME, RFC 3030 CHUNKING/BINARYMIME, RFC 6531 SMTPUTF8, RFC 3461 DSN,
 * RFC 3207 STARTTLS): an incremental command parser and the DATA/BDAT
 * readers. I/O-free: it reads from memory only, so the daemon (mxd.c,
 * mx_session.c), the unit test and the fuzzer share it unchanged. It knows
 * nothing of sessions, states or recipients; the daemon decides what a
 * command means in the state it arrives in (and whether SMTPUTF8, BDAT,
 * STARTTLS... were advertised).
 *
 * One call to smtp_parser_feed yields at most one event and consumes the
 * bytes up to and including what that event needs, never more: a session
 * handles pipelined commands one at a time, and the bytes after a DATA or
 * BDAT command line are still unconsumed when the session decides (with
 * smtp_parser_begin_data / smtp_parser_begin_bdat) how to read them.
 *
 * Three modes:
 *  - command (the initial mode): lines ending in CRLF, parsed into
 *    SMTP_EV_COMMAND or a per-line SMTP_EV_ERROR (the parser resyncs at the
 *    next LF: the session answers the error and goes on);
 *  - DATA (after smtp_parser_begin_data): message bytes streamed as
 *    SMTP_EV_DATA slices, dot-unstuffed, until CRLF "." CRLF, then
 *    SMTP_EV_DATA_END and back to command mode. SMTP smuggling
 *    (CVE-2023-51764/5/6): ONLY CRLF "." CRLF ends the message: "\n.\n",
 *    "\n.\r\n", "\r.\r\n", "\r\n.\r", "\r\n.\n", "\r\r\n.\r\r\n" never do.
 *    Any bare CR or bare LF in the message sets a data_err flag (the
 *    session answers 5xx and stores nothing) while the parser keeps
 *    scanning for the real end, so the session stays in sync;
 *  - BDAT (after smtp_parser_begin_bdat): exactly the chunk's size in raw
 *    SMTP_EV_BDAT slices (no unstuffing, no line rules), then
 *    SMTP_EV_BDAT_END and back to command mode.
 * A fourth, one-line mode (smtp_parser_expect_line) reads a SASL response
 * line for AUTH (submission).
 *
 * Memory: one buffer of line_max bytes for the current command line (plus
 * a copy of its fields), allocated once. DATA and BDAT slices point into
 * the caller's input: the parser never buffers message bytes, whatever the
 * message size.
 *
 * Source: smtp_parser.c.
 */
#ifndef SMTP_PARSER_H
#define SMTP_PARSER_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* ---- Limits ---- */

/*
 * Command lines: RFC 5321 4.5.3.1.4 says 512 octets with CRLF, and each
 * extension may add to it (SIZE +14, DSN +100 per parameter...); SMTPUTF8
 * addresses are longer in octets. Default 1000 (CRLF included), accepted
 * range 512 to 65536 (the config's mx_max_line_bytes; out-of-range values
 * are clamped).
 */
#define SMTP_LINE_MAX_DEFAULT 1000
#define SMTP_LINE_MAX_MIN 512
#define SMTP_LINE_MAX_MAX 65536
/*
 * DATA text lines: RFC 5321 4.5.3.1.6 says 1000 octets with CRLF. Longer
 * lines do not stop the parser (DATA is streamed, nothing is buffered):
 * they are counted (ev->long_lines) and flag SMTP_DATA_LONG_LINE. Whether
 * that refuses the message is the session's choice (docs/configuration.md:
 * mx_max_line_bytes refuses it; pass data_line_max = 0 to never flag).
 */
#define SMTP_DATA_LINE_MAX_DEFAULT 1000
/* Message size (after unstuffing): 50 MiB, the config's max_message_bytes. */
#define SMTP_MESSAGE_MAX_DEFAULT ((uint64_t)50 * 1024 * 1024)

typedef struct smtp_limits {
	size_t line_max;        /* command line, CRLF included (bytes) */
	size_t data_line_max;   /* DATA line, CRLF included (bytes); 0: no check */
	uint64_t message_max;   /* DATA bytes after unstuffing; 0: no check */
} smtp_limits;

/* Fills *lim with the defaults above. */
void smtp_limits_default(smtp_limits *lim);

/* ---- Commands ---- */

typedef enum smtp_verb {
	SMTP_UNKNOWN = 0,   /* not a verb this parser knows: 500 5.5.1 */
	SMTP_HELO,          /* HELO domain */
	SMTP_EHLO,          /* EHLO domain / address-literal */
	SMTP_MAIL,          /* MAIL FROM:<reverse-path> [params] */
	SMTP_RCPT,          /* RCPT TO:<forward-path> [params] */
	SMTP_DATA,
	SMTP_BDAT,          /* BDAT size [LAST] */
	SMTP_RSET,
	SMTP_NOOP,          /* NOOP [string] (argument ignored) */
	SMTP_QUIT,
	SMTP_VRFY,          /* VRFY string */
	SMTP_EXPN,          /* EXPN string */
	SMTP_HELP,          /* HELP [string] */
	SMTP_STARTTLS,
	SMTP_AUTH,          /* AUTH mechanism [initial-response] */
	SMTP_VERB_COUNT
} smtp_verb;

/* MAIL BODY= (RFC 6152, RFC 3030). */
typedef enum smtp_body {
	SMTP_BODY_NONE = 0, /* not given */
	SMTP_BODY_7BIT,
	SMTP_BODY_8BITMIME,
	SMTP_BODY_BINARYMIME,
} smtp_body;

/* MAIL RET= (RFC 3461 4.3). */
typedef enum smtp_ret {
	SMTP_RET_NONE = 0,
	SMTP_RET_FULL,
	SMTP_RET_HDRS,
} smtp_ret;

/* RCPT NOTIFY= (RFC 3461 4.1): a bit set; 0 when not given. */
enum {
	SMTP_NOTIFY_NEVER = 1,
	SMTP_NOTIFY_SUCCESS = 2,
	SMTP_NOTIFY_FAILURE = 4,
	SMTP_NOTIFY_DELAY = 8,
};

/*
 * A reverse- or forward-path, as given. For "<@a,@b:user@example.org>":
 * route "@a,@b", mailbox "user@example.org", local "user", domain
 * "example.org". The parser checks the syntax (RFC 5321 4.1.2 with the
 * RFC 6531 UTF-8 extensions) and keeps everything as sent: the session
 * refuses source routes, quoted local parts, address literals, the
 * percent hack or bang paths as its policy says.
 */
typedef struct smtp_path {
	bool null_path;         /* "<>" (MAIL only; all strings below "") */
	const char *mailbox;    /* between '<' and '>', after the route */
	size_t mailbox_len;
	const char *local;      /* local part as given (quotes kept) */
	size_t local_len;
	const char *domain;     /* domain or "[address literal]" as given;
	                           "" for RCPT TO:<Postmaster> (RFC 5321 4.1.1.3,
	                           the only mailbox without a domain) */
	size_t domain_len;
	const char *route;      /* "@a,@b" without the ':'; "" if none */
	size_t route_len;
	bool quoted_local;      /* the local part is a quoted string */
	bool domain_literal;    /* the domain is "[...]" */
	bool utf8;              /* non-ASCII (valid UTF-8) anywhere: needs
	                           SMTPUTF8 on MAIL (RFC 6531 3.2) */
} smtp_path;

/* A MAIL/RCPT parameter as given: key as sent, value NULL if none. */
#define SMTP_MAX_PARAMS 8
typedef struct smtp_param {
	const char *key;
	size_t key_len;
	const char *value;
	size_t value_len;
} smtp_param;

/*
 * One parsed command. Every string is NUL-terminated at its length, points
 * into the parser, and is valid until the next smtp_parser_feed,
 * smtp_parser_reset or smtp_parser_free (the parser's buffer is wiped
 * then: AUTH lines carry credentials). Fields not used by the verb are
 * zero / NULL / "".
 */
typedef struct smtp_command {
	smtp_verb verb;
	const char *verb_text;  /* the verb as sent (for logs) */
	size_t verb_len;

	/* HELO/EHLO: the domain or "[address literal]"; VRFY/EXPN/HELP/NOOP:
	   the argument string (may be "" for HELP/NOOP); AUTH: mechanism. */
	const char *arg;
	size_t arg_len;
	bool arg_literal;       /* HELO/EHLO: arg is an address literal */
	/* AUTH: the initial response ("=" for an empty one), or NULL. */
	const char *auth_initial;
	size_t auth_initial_len;

	/* MAIL / RCPT */
	smtp_path path;
	unsigned int nparams;
	smtp_param params[SMTP_MAX_PARAMS];
	/* MAIL's parameters, decoded (each at most once, else SMTP_EPARAM). */
	bool has_size;
	uint64_t size;          /* SIZE=n */
	smtp_body body;         /* BODY= */
	bool smtputf8;          /* SMTPUTF8 */
	smtp_ret ret;           /* RET= */
	const char *envid;      /* ENVID=xtext as given (still encoded), or NULL */
	size_t envid_len;
	/* RCPT's parameters, decoded. */
	unsigned int notify;    /* SMTP_NOTIFY_* bits, 0 if absent */
	const char *orcpt_type; /* ORCPT=type;xtext: "rfc822", "utf-8"... or NULL */
	size_t orcpt_type_len;
	const char *orcpt_addr; /* the xtext as given (still encoded) */
	size_t orcpt_addr_len;

	/* BDAT */
	uint64_t bdat_size;
	bool bdat_last;
} smtp_command;

/* ---- Events ---- */

typedef enum smtp_event_type {
	SMTP_EV_NEED_MORE = 0,  /* all input used, nothing complete */
	SMTP_EV_COMMAND,        /* ev->cmd */
	SMTP_EV_ERROR,          /* ev->err + suggested reply; the line is over */
	SMTP_EV_DATA,           /* ev->data, ev->len: message bytes */
	SMTP_EV_DATA_END,       /* CRLF.CRLF seen; ev->data_err, counters */
	SMTP_EV_BDAT,           /* ev->data, ev->len: raw chunk bytes */
	SMTP_EV_BDAT_END,       /* the chunk's size reached */
	SMTP_EV_LINE,           /* after smtp_parser_expect_line: ev->line */
} smtp_event_type;

/*
 * Per-line errors in command mode. Each comes with a suggested reply in
 * the event (code, enhanced status, fixed text without secrets or input):
 *   SMTP_ELINE   500 5.5.2 line longer than line_max. Reported as soon as
 *                the limit is passed; the rest of the line, up to the next
 *                LF, is skipped without another event.
 *   SMTP_ESYNTAX 500 5.5.2 empty line / bad verb shape; 501 5.5.4 bad
 *                arguments for a known verb; 501 5.1.7 bad MAIL path;
 *                501 5.1.3 bad RCPT path (or "<>" in RCPT).
 *   SMTP_ENUL    500 5.5.2 a NUL byte in the line.
 *   SMTP_EBARE   500 5.5.2 a bare CR, or a line ended by a bare LF. The
 *                line is not executed; a bare LF still ends it.
 *   SMTP_EPARAM  555 5.5.4 unknown or duplicate MAIL/RCPT parameter;
 *                501 5.5.4 a known parameter with a bad value.
 * ev->cmd.verb (and verb_text) are set when the verb was recognised, so a
 * session can count errors per command; the other cmd fields are not.
 */
typedef enum smtp_err {
	SMTP_EOK = 0,
	SMTP_ELINE = -1,
	SMTP_ESYNTAX = -2,
	SMTP_ENUL = -3,
	SMTP_EBARE = -4,
	SMTP_EPARAM = -5,
} smtp_err;

/*
 * DATA_END's data_err: a bit set; 0 means the message is good.
 *   SMTP_DATA_BARE_CR, SMTP_DATA_BARE_LF: a CR not followed by LF, or an
 *     LF not preceded by CR, anywhere in the message (including around a
 *     would-be terminator: "\n.\n" etc.). Refuse (550 5.6.0) and store
 *     nothing: this is the smuggling defence.
 *   SMTP_DATA_TOO_BIG: more than message_max bytes (552 5.3.4). Set as
 *     soon as it happens, also on the SMTP_EV_DATA event that crosses the
 *     limit, so the session can stop storing early; the parser still reads
 *     to the end.
 *   SMTP_DATA_LONG_LINE: a line longer than data_line_max (500 5.5.2 if
 *     the session refuses such messages; see SMTP_DATA_LINE_MAX_DEFAULT).
 * smtp_data_err_reply() picks the reply for a set.
 */
enum {
	SMTP_DATA_BARE_CR = 1,
	SMTP_DATA_BARE_LF = 2,
	SMTP_DATA_TOO_BIG = 4,
	SMTP_DATA_LONG_LINE = 8,
};

typedef struct smtp_event {
	smtp_event_type type;

	/* SMTP_EV_COMMAND (and SMTP_EV_ERROR: verb only). */
	smtp_command cmd;

	/* SMTP_EV_ERROR */
	smtp_err err;
	int reply_code;             /* 500, 501, 555 */
	const char *reply_status;   /* "5.5.2" */
	const char *reply_text;     /* "Syntax error" */

	/*
	 * SMTP_EV_DATA / SMTP_EV_BDAT: a slice of the message, valid until
	 * the next call. Usually it points into the caller's input; it may
	 * point to a constant (a CR the parser held back while deciding
	 * whether "\r\n.\r" ends the message). DATA slices are unstuffed
	 * and keep line ends exactly as sent; how the message is cut into
	 * slices depends on how the input was split, their concatenation
	 * does not.
	 */
	const uint8_t *data;
	size_t len;

	/* SMTP_EV_DATA (so far) and SMTP_EV_DATA_END (final). */
	unsigned int data_err;      /* SMTP_DATA_* bits */
	uint64_t data_bytes;        /* message bytes after unstuffing */
	uint64_t long_lines;        /* lines longer than data_line_max */
	uint64_t nul_bytes;         /* NUL bytes (the session may refuse
	                               them unless BODY=BINARYMIME) */

	/* SMTP_EV_LINE: the line without its CRLF, NUL-terminated. */
	const char *line;
	size_t line_len;
} smtp_event;

/* ---- Parser ---- */

typedef struct smtp_parser smtp_parser;

/*
 * A parser in command mode with the given limits (NULL: the defaults).
 * Aborts on allocation failure, as everything in Sealmail does.
 */
smtp_parser *smtp_parser_new(const smtp_limits *lim);
/* Wipes and frees; sets *p to NULL; accepts NULL. */
void smtp_parser_free(smtp_parser **p);

/*
 * Consumes bytes from data until one event is complete or the input is
 * used up, fills *ev (fully reset first) and returns the number of bytes
 * consumed. ev->type is SMTP_EV_NEED_MORE exactly when nothing completed;
 * then all len bytes were consumed. An event may come with 0 bytes
 * consumed (SMTP_EV_BDAT_END of a chunk whose bytes were all delivered,
 * or a held CR released); the parser's state has moved on then, so the
 * usual loop terminates:
 *
 *     while (len > 0 || more_events_possible) {
 *         size_t n = smtp_parser_feed(p, data, len, &ev);
 *         data += n; len -= n;
 *         if (ev.type == SMTP_EV_NEED_MORE) break;
 *         handle(&ev);   // may call begin_data / begin_bdat / reset
 *     }
 *
 * (after a BDAT command with size 0, or when the last chunk byte arrived,
 * call once more with len 0 to get SMTP_EV_BDAT_END). Results do not depend
 * on how the input is split, byte by byte included, except for the slice
 * boundaries of DATA/BDAT. Never reads past data + len.
 *
 * Command lines end with CRLF. Verbs are case-insensitive; arguments are
 * separated by one or more spaces; trailing spaces are ignored. "MAIL
 * FROM:" and "RCPT TO:" may be followed by spaces before '<' (common
 * clients send them); the path must be in angle brackets.
 */
size_t smtp_parser_feed(smtp_parser *p, const uint8_t *data, size_t len,
			smtp_event *ev);

/*
 * After the session answered 354 to DATA: the next bytes are the message.
 * Call between events (the DATA line has been consumed, the bytes after it
 * not). The parser returns to command mode after SMTP_EV_DATA_END.
 */
void smtp_parser_begin_data(smtp_parser *p);

/*
 * After a BDAT command (RFC 3030 2.: the server reads the chunk even when
 * it refuses the command, or the session would read message bytes as
 * commands): the next size bytes are chunk data. Returns to command mode
 * after SMTP_EV_BDAT_END.
 */
void smtp_parser_begin_bdat(smtp_parser *p, uint64_t size);

/*
 * The next line is a SASL response (after a 334): it comes back as
 * SMTP_EV_LINE (same line_max, same ELINE/ENUL/EBARE errors), then the
 * parser is in command mode again.
 */
void smtp_parser_expect_line(smtp_parser *p);

/*
 * Back to command mode, forgetting any partial line, DATA/BDAT state and
 * a discard in progress (wiping the buffer). After STARTTLS the session
 * calls it and drops the rest of its plaintext input (RFC 3207 5.: bytes
 * pipelined after STARTTLS are discarded, the STARTTLS injection attack).
 */
void smtp_parser_reset(smtp_parser *p);

/* Bytes of an unfinished command line held (0 between lines). */
size_t smtp_parser_pending(const smtp_parser *p);
/* True while in DATA or BDAT mode. */
bool smtp_parser_in_message(const smtp_parser *p);

/* Upper-case name of a verb ("MAIL"), "" for SMTP_UNKNOWN. */
const char *smtp_verb_name(smtp_verb verb);
/* Short English text for an smtp_err ("Line too long"). */
const char *smtp_strerror(int err);
/*
 * The reply for a DATA_END data_err set (the most important flag wins:
 * bare CR/LF, then size, then long lines). Returns false for 0.
 */
bool smtp_data_err_reply(unsigned int data_err, int *code_r,
			 const char **status_r, const char **text_r);

#endif
