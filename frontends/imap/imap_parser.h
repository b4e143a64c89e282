/*
 * The IMAP command parser (RFC 3501 / RFC 9051 client syntax, RFC 7888
 * literals, RFC 3516 literal8): incremental and I/O-free. It is fed bytes in
 * any split (one at a time included) and yields events; it never writes to
 * the client (the session writes "+ OK" continuations, BAD answers...), so
 * the daemon, the unit test and the fuzzer share it unchanged.
 *
 * What it yields:
 *
 *  - IMAP_EV_COMMAND: a whole command: tag, name (upper-cased) and the
 *    arguments as a tree (atoms, strings, NIL, parenthesised lists), every
 *    literal's bytes included. The tree and its strings point into the
 *    parser's memory and stay valid until the next imap_parser_feed() or
 *    imap_parser_free().
 *  - IMAP_EV_CONTINUE: a synchronising literal {n} (or ~{n}) was announced
 *    and is within the limits: the session must write "+ OK\r\n" (the
 *    client waits for it) and keep feeding. Nothing is written for a
 *    non-synchronising literal {n+} / {n-}.
 *  - IMAP_EV_LITERAL / IMAP_EV_LITERAL_DATA / IMAP_EV_LITERAL_END: the
 *    streamed literals of APPEND (see "Streaming" below).
 *  - IMAP_EV_LINE: a raw line, when the session asked for one with
 *    imap_parser_expect_line() (an AUTHENTICATE response, IDLE's DONE).
 *  - IMAP_EV_ERROR: the command is refused: err says why, tag is set when
 *    it was read (else the session answers with an untagged BAD), text is a
 *    fixed sentence for the BAD. The parser has skipped, or will skip
 *    without buffering and without further events, the rest of the
 *    command (up to its final line end, literals it announced included), so
 *    the session stays usable. fatal = true when it cannot resynchronise or
 *    the client is abusing it (a non-synchronising literal over the limit,
 *    too many errors in a row): the session answers BYE and closes.
 *
 * Limits (imap_parser_limits): the command line, literals excluded, is at
 * most line_max bytes (8 KiB before authentication, 64 KiB after:
 * imap_parser_set_line_max); a literal at most literal_max (1 MiB) except
 * the message literals of APPEND, which may be up to append_max
 * (APPENDLIMIT); at most literals_max literals per command; lists nested at
 * most depth_max deep; args_max arguments (all depths). A NUL byte in a line
 * or a (non-literal8) literal is IMAP_ENUL. A synchronising literal over
 * its limit is refused before the client sends it (no continuation: the
 * client sees the tagged error and sends nothing more of that command).
 *
 * Memory: nothing is allocated for an announced literal until its bytes
 * arrive, so a client that announces {4294967295} costs nothing; buffered
 * bytes are bounded by line_max + literal_max per connection, and a
 * streamed APPEND literal is never buffered at all.
 *
 * Streaming (APPEND, MULTIAPPEND). When the command name is APPEND (after
 * the tag), each message literal is streamed: the parser yields
 * IMAP_EV_LITERAL with the command so far (tag, name, the arguments read
 * before the literal: mailbox, flags list, date-time), literal_size,
 * literal8 (~{n}) and literal_sync ({n}: the client waits for "+"); then
 * IMAP_EV_LITERAL_DATA events whose data/len are slices of the bytes fed
 * (zero copy: valid until the next feed), then IMAP_EV_LITERAL_END. No
 * IMAP_EV_CONTINUE is given for a streamed literal: on IMAP_EV_LITERAL the
 * session decides whether to write "+ OK" or to refuse it (then it calls
 * imap_parser_skip_command(), after which nothing more of the command is
 * reported). The literal size limit for APPEND is append_max; over it,
 * IMAP_EV_ERROR (IMAP_ELITERAL) comes instead of IMAP_EV_LITERAL.
 * The arguments of IMAP_EV_LITERAL stay valid until IMAP_EV_LITERAL_END
 * (the parser keeps them while the data streams through).
 * After IMAP_EV_LITERAL_END, parsing continues: CRLF
 * ends the command (IMAP_EV_COMMAND with the arguments after the last
 * literal, usually none), or another message follows (MULTIAPPEND: flags,
 * date, literal), giving another IMAP_EV_LITERAL. During a stream
 * the session can stop feeding (backpressure) at any time: the parser keeps
 * its place.
 *
 * Atoms. The tokenizer is the server-side one: an atom is a run of
 * ATOM-CHARs plus "]" and "\" and "*" ("\Seen", "1:*", "$"), and an atom
 * containing "[" runs to the matching "]" including spaces and parentheses,
 * then on ("BODY.PEEK[HEADER.FIELDS (From To)]<0.100>" is one atom). A
 * "(" starts a list, ")" ends one; a '"' starts a quoted string (backslash
 * escapes only '"' and '\'; a CR or LF inside is IMAP_ESYNTAX).
 */
#ifndef IMAP_PARSER_H
#define IMAP_PARSER_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

typedef struct imap_parser imap_parser;

typedef struct imap_parser_limits {
	size_t line_max;        /* 8192 before login, 65536 after */
	uint64_t literal_max;   /* 1 MiB */
	uint64_t append_max;    /* APPENDLIMIT: max_message_bytes */
	unsigned literals_max;  /* per command: 1000 (MULTIAPPEND) */
	unsigned depth_max;     /* list nesting: 16 */
	unsigned args_max;      /* arguments, all depths: 10000 */
	unsigned errors_max;    /* consecutive errors before fatal: 20 */
} imap_parser_limits;

void imap_parser_limits_default(imap_parser_limits *lim);

typedef enum imap_arg_kind {
	IMAP_ARG_ATOM = 1,      /* including numbers, sets, "\Seen", "NIL" is NIL */
	IMAP_ARG_QUOTED = 2,    /* "..." (unescaped in s/len) */
	IMAP_ARG_LITERAL = 3,   /* {n} / {n+} / {n-} / ~{n} (see literal8) */
	IMAP_ARG_NIL = 4,       /* the atom NIL, any case */
	IMAP_ARG_LIST = 5,      /* ( ... ) */
} imap_arg_kind;

typedef struct imap_arg {
	imap_arg_kind kind;
	bool literal8;          /* LITERAL given as ~{n} */
	/* ATOM, QUOTED, LITERAL: the bytes, NUL-terminated (s[len] == 0;
	 * a literal8 may contain NULs, so use len). */
	const char *s;
	size_t len;
	/* LIST: the elements. */
	const struct imap_arg *list;
	size_t n_list;
} imap_arg;

typedef struct imap_command {
	const char *tag;        /* NUL-terminated */
	const char *name;       /* upper-cased: "UID" stays "UID", the
	                           sub-command is args[0] */
	const imap_arg *args;   /* the top-level arguments */
	size_t n_args;
} imap_command;

typedef enum imap_event_kind {
	IMAP_EV_NEED_MORE = 0,  /* every byte fed was consumed; nothing yet */
	IMAP_EV_COMMAND,
	IMAP_EV_CONTINUE,
	IMAP_EV_LITERAL,
	IMAP_EV_LITERAL_DATA,
	IMAP_EV_LITERAL_END,
	IMAP_EV_LINE,
	IMAP_EV_ERROR,
} imap_event_kind;

typedef enum imap_parse_err {
	IMAP_ESYNTAX = -1,      /* not IMAP syntax (bad tag, unbalanced ")"...) */
	IMAP_ELINE = -2,        /* line over line_max */
	IMAP_ELITERAL = -3,     /* literal over literal_max / append_max */
	IMAP_ELITERALS = -4,    /* more literals than literals_max */
	IMAP_EDEPTH = -5,       /* lists nested deeper than depth_max */
	IMAP_EARGS = -6,        /* more arguments than args_max */
	IMAP_ENUL = -7,         /* a NUL byte */
	IMAP_EEMPTY = -8,       /* an empty line, or a tag without a command */
} imap_parse_err;

typedef struct imap_event {
	imap_event_kind kind;
	/* COMMAND, LITERAL (the command so far), ERROR (tag may be NULL). */
	imap_command cmd;
	/* LITERAL, CONTINUE: the announced size; literal8 for ~{n};
	 * CONTINUE also for the buffered literals of other commands. */
	uint64_t literal_size;
	bool literal8;
	bool literal_sync;      /* LITERAL: {n} without + or - */
	/* LITERAL_DATA: a slice of the fed bytes. LINE: the line without its
	 * CRLF (NUL-terminated). */
	const uint8_t *data;
	size_t len;
	/* ERROR */
	int err;                /* enum imap_parse_err */
	const char *text;       /* fixed sentence for the BAD / NO */
	bool fatal;
} imap_event;

imap_parser *imap_parser_new(const imap_parser_limits *lim);
void imap_parser_free(imap_parser **p);
void imap_parser_set_line_max(imap_parser *p, size_t line_max);
void imap_parser_set_append_max(imap_parser *p, uint64_t append_max);

/*
 * Consumes bytes from data[0..len) until one event is complete and reports
 * it in *ev; returns the number of bytes consumed (the caller offers the
 * rest again, plus whatever arrives later). IMAP_EV_NEED_MORE means all len
 * bytes were consumed (buffered or skipped) and more are needed. Call it in
 * a loop until it returns NEED_MORE or the session holds.
 */
size_t imap_parser_feed(imap_parser *p, const uint8_t *data, size_t len,
			imap_event *ev);

/* The next event is one raw line (IMAP_EV_LINE), at most line_max bytes
 * (longer: IMAP_ELINE, fatal = false). */
void imap_parser_expect_line(imap_parser *p);

/* Drops the current command: its remaining bytes (the rest of the line,
 * literals announced non-synchronising) are skipped without events. For a
 * refused synchronising literal, nothing more of it is expected. */
void imap_parser_skip_command(imap_parser *p);

/*
 * Frees what the parser keeps from earlier commands (the argument arrays
 * and the byte buffer, wiped; the next line allocates them again) while a
 * session waits for a long time (IDLE). Acts only between lines, right
 * after a COMMAND (or LINE) event and before the next feed: that event's
 * strings and arguments become invalid at once, so its command must not
 * use them any more. Does nothing in any other state.
 */
void imap_parser_trim(imap_parser *p);

/* ---- Mailbox names: modified UTF-7 (RFC 3501 5.1.3) ---- */

/*
 * Strict decoder: modified UTF-7 to UTF-8. Refuses (ENG_EMALFORMED) what
 * RFC 3501 forbids: a "&" run that is not minimal base64 of UTF-16, a
 * non-zero padding bit, an encoded printable ASCII character, "&" not
 * written "&-", a lone surrogate, non-ASCII bytes in the input, two
 * adjacent encoded runs. The result is malloc'd and NUL-terminated.
 */
int imap_mutf7_decode(const char *in, size_t len, char **out_r);
/* UTF-8 to modified UTF-7; ENG_EMALFORMED for invalid UTF-8. */
int imap_mutf7_encode(const char *in, size_t len, char **out_r);
/* True if s[0..len) is valid UTF-8 (no overlongs, no surrogates). */
bool imap_utf8_valid(const char *s, size_t len);

#endif
