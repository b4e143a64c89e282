/*
 * The POP3 codec (RFC 1939, RFC 2449 CAPA, RFC 2595 STLS, RFC 5034 AUTH):
 * a command-line parser and the RETR/TOP dot-stuffing encoder. I/O-free:
 * it reads from and writes to memory only, so the daemon (pop3d.c), the
 * unit test and the fuzzer share it unchanged. It knows nothing of
 * sessions, states or mailboxes; the daemon's dispatch table decides what
 * a command means in the state it arrives in.
 *
 * Two parts:
 *  - pop3_parser: fed bytes in any split (one at a time included), yields
 *    one command line at a time with its verb and arguments, or an error
 *    for that line. Every error is per line: the parser resynchronises at
 *    the next line end and the session stays usable (it answers -ERR).
 *  - pop3_dotstuff: fed the bytes of a message in any split, writes the
 *    multi-line response body for RETR (the whole message) or TOP (the
 *    header and the first n body lines), with the terminator.
 *
 * Sources: pop3_parser.c (parser), pop3_dotstuff.c (encoder).
 */
#ifndef POP3_PARSER_H
#define POP3_PARSER_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* ---- Command parser ---- */

/*
 * Longest command line accepted, line end excluded. RFC 2449 caps a
 * command at 255 octets with its CRLF; clients in the wild send longer USER
 * and PASS lines, so we accept up to 512.
 */
#define POP3_MAX_LINE_BYTES 512
/* Longest SASL response line (base64, line end excluded) after AUTH. */
#define POP3_MAX_SASL_LINE_BYTES 8192
/* At most two arguments are kept (TOP msg n; AUTH mech initial-response). */
#define POP3_MAX_ARGS 2

typedef enum pop3_verb {
	POP3_VERB_UNKNOWN = 0,  /* not a verb this server knows: -ERR, go on */
	POP3_VERB_USER,         /* USER name                 (1 argument)  */
	POP3_VERB_PASS,         /* PASS password             (rest of line) */
	POP3_VERB_QUIT,
	POP3_VERB_STAT,
	POP3_VERB_LIST,         /* LIST [msg]                (0 or 1, number) */
	POP3_VERB_RETR,         /* RETR msg                  (1, number) */
	POP3_VERB_DELE,         /* DELE msg                  (1, number) */
	POP3_VERB_NOOP,
	POP3_VERB_RSET,
	POP3_VERB_TOP,          /* TOP msg n                 (2, numbers) */
	POP3_VERB_UIDL,         /* UIDL [msg]                (0 or 1, number) */
	POP3_VERB_CAPA,
	POP3_VERB_STLS,
	POP3_VERB_AUTH,         /* AUTH [mech [initial-response]] (0 to 2) */
	/* Only in SASL mode (pop3_parser_expect_sasl): */
	POP3_VERB_SASL_RESPONSE, /* args[0] = the base64 line (may be empty) */
	POP3_VERB_SASL_CANCEL,   /* the line was "*" (RFC 5034 4.) */
	POP3_VERB_COUNT
} pop3_verb;

/*
 * Per-line errors, all negative. After any of them the line is over (or,
 * for POP3_ELINE, the rest of it is skipped without being buffered) and
 * the next call parses the next line.
 */
typedef enum pop3_err {
	POP3_ELINE = -1,    /* line longer than the limit; reported as soon as
	                       the limit is passed, the rest up to the next LF
	                       is then discarded without another result */
	POP3_ENUL = -2,     /* a NUL byte in the line */
	POP3_EEMPTY = -3,   /* an empty line (or only spaces) */
	POP3_EARGS = -4,    /* wrong number of arguments for the verb */
	POP3_ENUMBER = -5,  /* an argument that must be a number is not one
	                       (digits only, value <= UINT32_MAX) */
	POP3_EBASE64 = -6,  /* SASL mode: the line is not base64 */
} pop3_err;

/*
 * One parsed line. The strings point into the parser's buffer, are
 * NUL-terminated (so a NUL inside is impossible: such lines are ENUL), and
 * are valid until the next pop3_parser_feed, pop3_parser_reset or
 * pop3_parser_free: the buffer is wiped then, because PASS, AUTH and SASL
 * lines carry credentials. Copy what must live longer (into guarded memory
 * for secrets).
 *
 * On an error result, verb is set when the verb was recognised (EARGS,
 * ENUMBER: so the session can say "-ERR RETR needs a message number"),
 * else POP3_VERB_UNKNOWN; argc is 0.
 */
typedef struct pop3_command {
	pop3_verb verb;
	const char *verb_text;        /* the verb as sent (for logs); "" in
	                                 SASL mode */
	size_t verb_len;
	unsigned int argc;
	const char *args[POP3_MAX_ARGS];
	size_t arg_lens[POP3_MAX_ARGS];
	/*
	 * Numeric arguments already converted (LIST, RETR, DELE, TOP, UIDL):
	 * nums[i] is args[i] as a number. Range (msg >= 1, msg <= count) is
	 * the session's business: the parser accepts 0.
	 */
	uint32_t nums[POP3_MAX_ARGS];
} pop3_command;

typedef struct pop3_parser pop3_parser;

/*
 * A parser with its limits (0 for each: the defaults above). Before
 * authentication a daemon may pass a tighter max_line_bytes. The buffer is
 * allocated once, max(max_line_bytes, max_sasl_line_bytes) + 2 bytes.
 */
pop3_parser *pop3_parser_new(size_t max_line_bytes, size_t max_sasl_line_bytes);
/* Wipes and frees; sets *p to NULL; accepts NULL. */
void pop3_parser_free(pop3_parser **p);

/*
 * Feeds up to len bytes. *consumed_r gets how many were used (always all
 * of them when the result is 0). Returns:
 *    1  a command in *cmd_r;
 *    0  it needs more input;
 *   <0  a pop3_err for one line (see above; *cmd_r is filled as said).
 * Call again with the rest of the input after a non-zero result: one call
 * yields at most one result, so the session handles commands one at a
 * time, in order, even when a client pipelines them (RFC 2449 PIPELINING).
 *
 * Lines end with CRLF or a bare LF; one CR before the LF is stripped.
 * Verbs are case-insensitive. Arguments are separated by one or more
 * spaces; trailing spaces are ignored, except in PASS, whose argument is
 * everything after "PASS " verbatim (RFC 1939 allows spaces in it).
 * Results do not depend on how the input is split, byte by byte included
 * (only *consumed_r does). Never reads past data + len.
 */
int pop3_parser_feed(pop3_parser *p, const uint8_t *data, size_t len,
		     size_t *consumed_r, pop3_command *cmd_r);

/*
 * The next line is a SASL response (after the session sent "+ ..."): it
 * is read with max_sasl_line_bytes, checked to be base64 (the alphabet
 * and '=', possibly empty), and returned as POP3_VERB_SASL_RESPONSE with
 * args[0], or POP3_VERB_SASL_CANCEL for "*". One line only: the parser is
 * back in command mode after it. Call between lines, i.e. after a result
 * and before feeding the rest (pop3_parser_pending() == 0).
 */
void pop3_parser_expect_sasl(pop3_parser *p);

/*
 * Forgets any partial line, a pending SASL mode and a discard in progress
 * (wiping the buffer). After STLS the session calls it and drops the rest
 * of its plaintext input: bytes pipelined after STLS are discarded
 * (RFC 2595 4., the STARTTLS injection attack).
 */
void pop3_parser_reset(pop3_parser *p);

/* Bytes of an unfinished line held (0 between lines). */
size_t pop3_parser_pending(const pop3_parser *p);
/* True while the rest of an over-long line is being skipped. */
bool pop3_parser_discarding(const pop3_parser *p);

/* Upper-case name of a verb ("RETR"), "" for UNKNOWN and the SASL ones. */
const char *pop3_verb_name(pop3_verb verb);
/* A short English description of an error, fit for "-ERR <text>". */
const char *pop3_strerror(int err);

/* ---- Dot-stuffing encoder (RETR, TOP) ---- */

/*
 * Turns message bytes into the body of a multi-line response (RFC 1939
 * 3.): every line starting with '.' gets another '.', a bare LF becomes
 * CRLF (the stored message may use LF line ends; the wire needs CRLF; a
 * bare CR not followed by LF is left as it is), and pop3_dotstuff_finish
 * writes the terminator: CRLF if the message did not end with a line end,
 * then ".\r\n". The input may come in any split (one byte at a time
 * included) and the output is the same, so RETR streams a message chunk by
 * chunk as sqlited sends it and never holds it whole.
 *
 * TOP (pop3_dotstuff_init_top) copies the header, the empty line that ends
 * it, and then at most body_lines lines of the body; the rest of the input
 * is ignored and pop3_dotstuff_done() turns true, so the session can stop
 * fetching. A message without an empty line is all header. The header
 * ends at the first line that is empty (LF, or CR LF).
 *
 * The struct is public so that it can live inside the session; its fields
 * are private to pop3_dotstuff.c.
 */
typedef struct pop3_dotstuff {
	uint64_t body_lines_left;
	size_t line_bytes;      /* bytes of the current input line so far */
	bool top;               /* TOP mode */
	bool in_header;         /* TOP: the header's empty line not seen yet */
	bool last_cr;           /* the last input byte was CR */
	bool done;              /* TOP: the cut-off was reached */
	bool finished;          /* the terminator was written */
} pop3_dotstuff;

/* Output of one pop3_dotstuff_feed is at most twice its input. */
#define POP3_DOTSTUFF_MAX_OUT(len) (2 * (size_t)(len))
/* pop3_dotstuff_finish writes at most this many bytes ("\r\n.\r\n"). */
#define POP3_DOTSTUFF_FINISH_MAX 5

/* Starts RETR: the whole message. */
void pop3_dotstuff_init(pop3_dotstuff *d);
/* Starts TOP msg n: the header and the first body_lines lines of the body. */
void pop3_dotstuff_init_top(pop3_dotstuff *d, uint64_t body_lines);

/*
 * Encodes len bytes of the message into out, which has room for at least
 * POP3_DOTSTUFF_MAX_OUT(len) bytes. Returns the number of bytes written.
 * All of the input is always used (TOP ignores what follows its cut-off).
 */
size_t pop3_dotstuff_feed(pop3_dotstuff *d, const uint8_t *in, size_t len,
			  uint8_t *out);
/*
 * Writes the terminator into out (room for POP3_DOTSTUFF_FINISH_MAX
 * bytes) and returns its length. Call once, after the last byte.
 */
size_t pop3_dotstuff_finish(pop3_dotstuff *d, uint8_t *out);
/* TOP: the cut-off has been reached; further input would be ignored. */
bool pop3_dotstuff_done(const pop3_dotstuff *d);

#endif
