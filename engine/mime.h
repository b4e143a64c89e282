/*
 * The MIME parser (RFC 5322, RFC 2045-2049, RFC 2047 encoded words,
 * RFC 2231 parameters) and the structure it leaves behind.
 *
 * It runs once, at append time, while the message streams in: the caller
 * feeds it the raw bytes in any split (byte by byte gives the same result)
 * and gets back a tree of parts with byte offsets into the message, the
 * fields IMAP's BODYSTRUCTURE and ENVELOPE need, and a summary for
 * sorting, threading and full-text search. The tree is stored in the
 * message row (eng_mime_encode) so that FETCH never parses again.
 *
 * The parser is linear in the input, never reads past what it was given,
 * and never fails on a malformed message: past a limit (nesting depth,
 * part count, header count or size) it stops splitting and treats the rest
 * as an opaque body, leaving a valid but degraded tree, and sets
 * ENG_MIME_DEGRADED in root->flags.
 *
 * Offsets: for each part, header_off is where its header starts,
 * body_off where its body starts (after the blank line; equal to body_end
 * if there is none) and body_end where it ends, all in bytes from the
 * start of the message. A part's MIME header is [header_off, body_off).
 * For a message/rfc822 part the embedded message is [body_off, body_end)
 * and its root is part->message.
 */
#ifndef ENG_MIME_H
#define ENG_MIME_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "buf.h"

typedef struct eng_mime_limits {
	uint32_t max_depth;          /* default 100 */
	uint32_t max_parts;          /* default 10,000 */
	uint32_t max_headers;        /* per part, default 1,000 */
	uint32_t max_header_bytes;   /* per part, default 256 KiB */
	uint32_t max_text_bytes;     /* decoded text kept for search, default 1 MiB */
} eng_mime_limits;

void eng_mime_limits_default(eng_mime_limits *limits);

/* A parameter. RFC 2231 sections (name*0, name*1*, ...) are joined into
 * one; when any section was in extended form the name keeps a trailing
 * '*' ("filename*") and the value is "charset'lang'%XX-encoded" as in the
 * header (plain sections percent-encoded to match), as Dovecot writes it
 * in BODYSTRUCTURE. An extended form wins over a plain one of the same name. */
typedef struct eng_mime_param {
	char *name;    /* lower-case */
	char *value;   /* RFC 2231 continuations joined; charset'lang' prefix kept */
} eng_mime_param;

/* One address of an address list, as IMAP's ENVELOPE has it. A group is
 * a start marker (mailbox = group name, host = NULL) ... an end marker
 * (mailbox = NULL, host = NULL). Strings are raw (encoded words kept). */
typedef struct eng_mime_addr {
	char *name;
	char *adl;
	char *mailbox;
	char *host;
} eng_mime_addr;

typedef struct eng_mime_addrlist {
	eng_mime_addr *addrs;
	size_t count;
} eng_mime_addrlist;

typedef struct eng_mime_envelope {
	char *date;            /* raw header values, unfolded; NULL if absent */
	char *subject;
	eng_mime_addrlist from, sender, reply_to, to, cc, bcc;
	char *in_reply_to;
	char *message_id;
} eng_mime_envelope;

enum eng_mime_part_flags {
	ENG_MIME_DEGRADED = 1u << 0,   /* a limit was hit somewhere below */
	ENG_MIME_HAS_8BIT = 1u << 1,   /* 8-bit bytes in headers or body */
	ENG_MIME_HAS_NUL = 1u << 2,    /* NUL bytes: not BINARY-safe as text */
};

typedef struct eng_mime_part eng_mime_part;
struct eng_mime_part {
	uint32_t flags;
	/* Offsets, see above. */
	uint64_t header_off, body_off, body_end;
	uint32_t body_lines;           /* lines of the body */
	/* Content-Type, lower-case; "text"/"plain" when absent. */
	char *type, *subtype;
	eng_mime_param *params; size_t n_params;
	char *id, *description;        /* raw, NULL if absent */
	char *encoding;                /* Content-Transfer-Encoding, lower-case; "7bit" default */
	char *md5, *location;
	char *disposition;             /* lower-case, NULL if absent */
	eng_mime_param *disp_params; size_t n_disp_params;
	char **languages; size_t n_languages;
	/* multipart: the children, in order. */
	eng_mime_part **children; size_t n_children;
	/* message/rfc822 (and message/global): the embedded message. */
	eng_mime_part *message;
	/* The envelope of a message: set on the root and on part->message. */
	eng_mime_envelope *envelope;
};

/*
 * What the store keeps in columns for search, sort and thread
 * (RFC 5256). Strings are UTF-8, NULL if absent.
 */
typedef struct eng_mime_summary {
	char *subject;          /* RFC 2047 decoded */
	char *base_subject;     /* RFC 5256 base subject, for SORT SUBJECT and THREAD */
	char *from_addr;        /* first From mailbox, "local@domain", lower-case */
	char *from_display;     /* RFC 5957 display name or, failing that, the address */
	char *to_addr, *to_display;
	char *cc_addr;
	int64_t sent_date;      /* Date: as unix seconds (UTC); INT64_MIN if absent/bad */
	char *message_id;       /* "<...>" as written, NULL if absent or bad */
	char **references;      /* References then In-Reply-To msg-ids, oldest first, deduplicated */
	size_t n_references;
	char *preview;          /* RFC 8970 preview: first 200 characters of text, whitespace folded */
	/* Decoded (charset to UTF-8, transfer encoding removed, HTML tags
	 * dropped) text of text/... parts, up to max_text_bytes: for BODY search. */
	eng_buf body_text;
	/* Decoded header values (name: value lines): for TEXT search. */
	eng_buf header_text;
} eng_mime_summary;

typedef struct eng_mime_parser eng_mime_parser;

eng_mime_parser *eng_mime_parser_new(const eng_mime_limits *limits);
/* Feeds the next bytes; never fails. */
void eng_mime_parser_feed(eng_mime_parser *p, const void *data, size_t len);
/* Once the top-level header has ended (its blank line fed, or a limit cut
 * it): true, with where its body starts (the header's length). */
bool eng_mime_parser_body_off(const eng_mime_parser *p, uint64_t *body_off_r);
/*
 * Ends the input. Hands over the tree and the summary (both owned by the
 * caller) and frees nothing else; the parser must still be freed.
 */
void eng_mime_parser_finish(eng_mime_parser *p, eng_mime_part **root_r,
			    eng_mime_summary *summary_r);
void eng_mime_parser_free(eng_mime_parser **p);

/* Convenience: parse a whole message in memory. */
void eng_mime_parse(const void *data, size_t len, const eng_mime_limits *limits,
		    eng_mime_part **root_r, eng_mime_summary *summary_r);

void eng_mime_part_free(eng_mime_part **root);
void eng_mime_summary_clear(eng_mime_summary *summary);

/*
 * Compact, versioned binary form of a tree, stored with the message.
 * decode() checks every length and offset (against message_size) and
 * returns ENG_EMALFORMED / ENG_ENEWER rather than trusting the blob;
 * encode(decode(encode(t))) == encode(t) byte for byte.
 */
void eng_mime_encode(const eng_mime_part *root, eng_buf *out);
int eng_mime_decode(const void *blob, size_t len, uint64_t message_size,
		    eng_mime_part **root_r);

/*
 * IMAP section lookup: "" or NULL is the message, "1.2" a part (RFC 3501
 * section-part numbering, where a non-multipart message has part 1 = its
 * body). Returns the part or NULL.
 */
const eng_mime_part *eng_mime_find_part(const eng_mime_part *root,
					const char *section);

/*
 * IMAP writers (RFC 3501 / RFC 9051 syntax, strings quoted or as literals
 * when they must be). BODY is extended == false, BODYSTRUCTURE true.
 */
void eng_mime_write_bodystructure(const eng_mime_part *part, bool extended,
				  eng_buf *out);
void eng_mime_write_envelope(const eng_mime_envelope *env, eng_buf *out);

/*
 * A decoded text part (transfer encoding already removed) as UTF-8: the
 * charset converted (NULL or unknown: invalid bytes replaced), HTML tags,
 * comments, scripts and entities dropped when html. For IMAP's PREVIEW,
 * with the same filters the summary uses. Appends to out.
 */
void eng_mime_text_to_utf8(const char *charset, bool html, const char *in,
			   size_t len, eng_buf *out);

#endif
