/*
 * The I/O-free parts of FETCH (imap_cmd_fetch.c), unit-tested alone
 * (tests/unit/test_imap_fetch_parse.c):
 *
 *  - imap_fetch_parse: the fetch attributes (RFC 3501 6.4.5, RFC 9051,
 *    RFC 3516 BINARY, RFC 7162 MODSEQ and the CHANGEDSINCE/VANISHED
 *    modifier, RFC 8514 SAVEDATE, RFC 8474 EMAILID/THREADID, RFC 8970
 *    PREVIEW) from the parser's argument tree to a spec; bad input gets a
 *    fixed sentence for the BAD;
 *  - imap_header_filter: HEADER.FIELDS / HEADER.FIELDS.NOT over a header
 *    block (case-insensitive names, folded lines kept whole, the answer
 *    ends with the blank line);
 *  - imap_cte: a streaming Content-Transfer-Encoding decoder (base64,
 *    quoted-printable, identity) for BINARY, fed in any split;
 *  - imap_preview_build: the RFC 8970 preview text of a decoded part.
 *
 * Memory: a spec holds pointers into the argument tree (valid until the
 * command is done) plus one malloc'd array of body items.
 */
#ifndef IMAP_FETCH_PARSE_H
#define IMAP_FETCH_PARSE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "buf.h"
#include "imap_parser.h"

/* Simple attributes (bits of imap_fetch_spec.attrs). */
enum imap_fetch_attr {
	IMAP_FA_FLAGS = 1u << 0,
	IMAP_FA_UID = 1u << 1,
	IMAP_FA_INTERNALDATE = 1u << 2,
	IMAP_FA_RFC822_SIZE = 1u << 3,
	IMAP_FA_ENVELOPE = 1u << 4,
	IMAP_FA_BODY = 1u << 5,            /* BODY without a section */
	IMAP_FA_BODYSTRUCTURE = 1u << 6,
	IMAP_FA_MODSEQ = 1u << 7,
	IMAP_FA_SAVEDATE = 1u << 8,
	IMAP_FA_EMAILID = 1u << 9,
	IMAP_FA_THREADID = 1u << 10,
	IMAP_FA_PREVIEW = 1u << 11,        /* PREVIEW and PREVIEW (LAZY) */
};

enum imap_fetch_kind {
	IMAP_FK_BODY = 0,        /* BODY[...], BODY.PEEK[...], RFC822* */
	IMAP_FK_BINARY = 1,      /* BINARY[...], BINARY.PEEK[...] */
	IMAP_FK_BINARY_SIZE = 2, /* BINARY.SIZE[...] */
};

enum imap_fetch_text {
	IMAP_FT_ALL = 0,         /* no text: the part (or the message) */
	IMAP_FT_HEADER = 1,
	IMAP_FT_TEXT = 2,
	IMAP_FT_MIME = 3,
	IMAP_FT_FIELDS = 4,
	IMAP_FT_FIELDS_NOT = 5,
};

/* Field names of HEADER.FIELDS, at most this many per item. */
#define IMAP_FETCH_MAX_FIELDS 128
/* Body items per command at most. */
#define IMAP_FETCH_MAX_ITEMS 64

typedef struct imap_fetch_item {
	enum imap_fetch_kind kind;
	bool peek;               /* BODY.PEEK, BINARY.PEEK, RFC822.HEADER */
	/* "RFC822", "RFC822.HEADER", "RFC822.TEXT" answer under that name. */
	const char *rfc822_name;
	char part[64];           /* "1.2", "" for the message */
	enum imap_fetch_text text;
	/* HEADER.FIELDS[.NOT]: the names as the client wrote them. */
	const char *fields[IMAP_FETCH_MAX_FIELDS];
	size_t field_lens[IMAP_FETCH_MAX_FIELDS];
	size_t n_fields;
	bool partial;
	uint64_t offset;
	uint64_t length;         /* > 0 when partial */
} imap_fetch_item;

typedef struct imap_fetch_spec {
	uint32_t attrs;          /* enum imap_fetch_attr */
	imap_fetch_item *items;  /* malloc'd */
	size_t n_items;
	/* Modifiers (RFC 7162 3.1.4, 3.2.6). */
	bool has_changedsince;
	uint64_t changedsince;
	bool vanished;
} imap_fetch_spec;

/*
 * Parses the attribute argument (an atom: a macro or one attribute; or a
 * list of attributes) and the optional modifier list (NULL if none).
 * 0, or ENG_EINVAL with *err_r a fixed sentence for the BAD. The spec
 * is usable (and must be cleared) in both cases.
 */
int imap_fetch_parse(const imap_arg *attrs, const imap_arg *mods,
		     imap_fetch_spec *spec, const char **err_r);
void imap_fetch_spec_clear(imap_fetch_spec *spec);

/* True if the item sets \Seen (a non-PEEK body or binary fetch). */
bool imap_fetch_item_sets_seen(const imap_fetch_item *it);

/* v in decimal, without printf (a FETCH writes a few per message). */
void imap_fetch_put_uint(eng_buf *b, uint64_t v);
/* The section as sqlited names it ("1.2.HEADER", "TEXT", "" ...): the
 * HEADER.FIELDS forms ask for the header; BINARY for the part. */
void imap_fetch_item_rpc_section(const imap_fetch_item *it, char *out,
				 size_t out_len);
/* The name the response carries: "BODY[1.HEADER.FIELDS (From)]<0>",
 * "RFC822.TEXT", "BINARY[2]", "BINARY.SIZE[2]" (no trailing space). */
void imap_fetch_item_label(const imap_fetch_item *it, eng_buf *out);

/*
 * Appends to out the fields of the header block hdr[0..len) whose names
 * are (not_ false) or are not (not_ true) among names; each field with
 * its continuation lines, as in the message; then the blank line "\r\n".
 */
void imap_header_filter(const char *hdr, size_t len,
			const char *const *names, const size_t *name_lens,
			size_t n_names, bool not_, eng_buf *out);

/* ---- Content-Transfer-Encoding decoding ---- */

enum imap_cte_kind { IMAP_CTE_IDENTITY = 0, IMAP_CTE_BASE64 = 1,
		     IMAP_CTE_QP = 2 };

typedef struct imap_cte {
	enum imap_cte_kind kind;
	/* base64: bits collected; QP: the bytes of a pending "=XX" or of
	 * trailing white space that may precede a line end. */
	uint32_t acc;
	unsigned n_acc;
	char pend[80];
	size_t n_pend;
	bool b64_done;           /* base64 padding seen */
} imap_cte;

/* The decoder for a Content-Transfer-Encoding (lower-case; NULL =
 * 7bit). ENG_ENOTFOUND for an encoding it does not know (UNKNOWN-CTE). */
int imap_cte_init(imap_cte *d, const char *encoding);
/* Decodes in[0..len) and appends the bytes to out. Invalid input is
 * skipped (base64) or kept as is (QP), never an error. */
void imap_cte_feed(imap_cte *d, const void *in, size_t len, eng_buf *out);
/* The end of the input: flushes what is pending. */
void imap_cte_finish(imap_cte *d, eng_buf *out);

/* ---- PREVIEW (RFC 8970) ---- */

#define IMAP_PREVIEW_MAX_CHARS 256

/*
 * The preview of a decoded text part: in[0..len) in charset (NULL or
 * unknown: UTF-8 with invalid bytes dropped), HTML tags and entities
 * removed when html, white space collapsed to single spaces and trimmed,
 * at most IMAP_PREVIEW_MAX_CHARS characters of valid UTF-8 appended to
 * out. The input may end in the middle of a character (it is a prefix).
 */
void imap_preview_build(const char *in, size_t len, const char *charset,
			bool html, eng_buf *out);

#endif
