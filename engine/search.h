/*
 * SEARCH, SORT and THREAD over one mailbox of a store.
 *
 * The IMAP frontend parses a SEARCH program (RFC 3501 6.4.4, RFC 9051
 * 6.4.4, CONDSTORE MODSEQ, RFC 5032 WITHIN, RFC 8514 SAVEDATE, RFC 8474
 * OBJECTID) into an eng_query tree with the builders below and hands it,
 * over RPC, to eng_search() / eng_thread(). The engine turns the tree into
 * one SQL statement whose values are all bound parameters, so nothing a
 * client sends is ever pasted into SQL.
 *
 * What is the frontend's business, not the engine's:
 *  - NEW, OLD and RECENT: \Recent belongs to one session, so the session
 *    translates them: RECENT is a UID set of its recent messages, NEW is
 *    (RECENT UNSEEN), OLD is NOT RECENT.
 *  - Sequence numbers: only the session knows its view of the mailbox, so
 *    it passes seq_map[i] = UID of message i + 1 (strictly increasing, as
 *    in every IMAP view). Sequence-set keys are resolved through it ('*'
 *    is the last entry); without a map they are ENG_EINVAL. Messages
 *    outside the map can still match the other keys: a session drops the
 *    UIDs it has not announced yet before answering SEARCH with numbers.
 *  - $ (RFC 5182 SEARCHRES): the saved result is a UID set.
 *  - The MODSEQ entry-name / entry-type-req pair: the store keeps one
 *    MODSEQ per message, so those two arguments are ignored (RFC 7162
 *    3.1.5 allows it).
 *
 * Text matching:
 *  - HEADER field string, and FROM/TO/CC/BCC/SUBJECT (which are HEADER with
 *    that field name) look at the top-level header as the MIME parser
 *    decoded it at append time (RFC 2047 encoded words decoded to UTF-8,
 *    folding removed, so "=?utf-8?q?Gr=C3=BC=C3=9Fe?=" is found by
 *    "Grüße"). The match is a substring match, case-insensitive with
 *    simple case folding (ASCII, Latin-1, Latin Extended-A, Greek,
 *    Cyrillic), where any run of white space matches any other. An empty
 *    string matches every message that has the field (RFC 3501).
 *  - BODY and TEXT (TEXT = header + body) use the FTS4 index, which knows
 *    whole tokens, not substrings. DEVIATION from RFC 3501: each word of
 *    the search string must be found as the start of a token ("wonder"
 *    finds "wonderful", "onder" does not); among the messages the index
 *    proposes, the whole string must then occur as a substring of the
 *    decoded text as above, so "hello world" does not match "world ...
 *    hello". Body text is the decoded text of the text parts (transfer
 *    encoding removed, charset converted, HTML tags dropped), up to the
 *    parser's max_text_bytes.
 *
 * Dates. RFC 3501 compares calendar days and ignores time and zone. A day
 * is passed as `day`, the unix time of its first second, and a date key
 * looks at [day, day + 86400):
 *  - BEFORE/ON/SINCE (internal date), SAVEDBEFORE/SAVEDON/SAVEDSINCE (save
 *    date): the caller chooses the zone by the midnight it passes; the
 *    frontend passes midnight in the server's zone (as Dovecot does).
 *  - SENTBEFORE/SENTON/SENTSINCE: the day is taken as written in the Date
 *    header, in the header's own zone, so `day` must be 00:00 UTC of the
 *    calendar date the client named ("Date: 1 Jan 2024 23:30 -0800" is ON
 *    1-Jan-2024). A message without a valid Date field never matches.
 *  - OLDER/YOUNGER n (RFC 5032) compare the internal date with the time of
 *    the search minus n seconds.
 *  - SAVEDATESUPPORTED matches every message: every message has a save
 *    date here.
 */
#ifndef ENG_SEARCH_H
#define ENG_SEARCH_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "buf.h"
#include "store.h"

enum eng_query_kind {
	ENG_Q_ALL,
	ENG_Q_AND,              /* every child matches (no child: ALL) */
	ENG_Q_OR,               /* some child matches (no child: nothing) */
	ENG_Q_NOT,              /* one child, which does not match */
	ENG_Q_FLAG,             /* flag (one enum eng_flags bit) is set */
	ENG_Q_UNFLAG,           /* flag is not set */
	ENG_Q_KEYWORD,          /* text: keyword set (case-insensitive) */
	ENG_Q_UNKEYWORD,
	ENG_Q_UID,              /* set: UIDs, '*' = highest UID in the mailbox */
	ENG_Q_SEQ,              /* set: sequence numbers through seq_map */
	ENG_Q_BEFORE,           /* number: day, internal date */
	ENG_Q_ON,
	ENG_Q_SINCE,
	ENG_Q_SENTBEFORE,       /* number: day (00:00 UTC), Date header */
	ENG_Q_SENTON,
	ENG_Q_SENTSINCE,
	ENG_Q_SAVEDBEFORE,      /* number: day, save date (RFC 8514) */
	ENG_Q_SAVEDON,
	ENG_Q_SAVEDSINCE,
	ENG_Q_SAVEDATESUPPORTED,
	ENG_Q_LARGER,           /* number: size in bytes, strictly larger */
	ENG_Q_SMALLER,          /* strictly smaller */
	ENG_Q_HEADER,           /* field, text: header field contains text */
	ENG_Q_BODY,             /* text: in the body (FTS, see above) */
	ENG_Q_TEXT,             /* text: in header or body */
	ENG_Q_MODSEQ,           /* number: MODSEQ >= number */
	ENG_Q_OLDER,            /* number: seconds (RFC 5032) */
	ENG_Q_YOUNGER,
	ENG_Q_EMAILID,          /* number: eng_msg.content_id (RFC 8474) */
	ENG_Q_THREADID,         /* number: eng_msg.thread_id */
};

/*
 * One node of a search program. Build it with the eng_query_new_*()
 * functions, which copy their arguments; the tree owns its children and
 * strings and is freed at once with eng_query_free().
 */
typedef struct eng_query eng_query;
struct eng_query {
	enum eng_query_kind kind;
	eng_query **children;       /* AND, OR, NOT */
	size_t n_children;
	uint32_t flag;              /* FLAG, UNFLAG */
	char *field;                /* HEADER: the field name, without ':' */
	char *text;                 /* KEYWORD, UNKEYWORD, HEADER, BODY, TEXT */
	eng_uidset set;             /* UID, SEQ */
	int64_t number;             /* dates, sizes, MODSEQ, seconds, ids */
};

/* Nesting deeper than this is refused with ENG_ELIMIT. */
#define ENG_QUERY_MAX_DEPTH 64
/* More nodes than this in one program are refused with ENG_ELIMIT. */
#define ENG_QUERY_MAX_NODES 2000

/* ALL, SAVEDATESUPPORTED, or an empty AND/OR (add children later). */
eng_query *eng_query_new(enum eng_query_kind kind);
/* Adds child to an AND or OR node; takes ownership. */
void eng_query_add(eng_query *parent, eng_query *child);
/* AND/OR of two subqueries, NOT of one; take ownership. */
eng_query *eng_query_new_and(eng_query *a, eng_query *b);
eng_query *eng_query_new_or(eng_query *a, eng_query *b);
eng_query *eng_query_new_not(eng_query *q);
/* ANSWERED/DELETED/DRAFT/FLAGGED/SEEN (set) and their UN- forms (!set). */
eng_query *eng_query_new_flag(uint32_t flag, bool set);
/* KEYWORD (set) / UNKEYWORD (!set). */
eng_query *eng_query_new_keyword(const char *keyword, bool set);
/* ENG_Q_UID or ENG_Q_SEQ; the set is copied. */
eng_query *eng_query_new_set(enum eng_query_kind kind, const eng_uidset *set);
/* BEFORE ... SAVEDSINCE with a day, LARGER/SMALLER with a size, MODSEQ,
 * OLDER/YOUNGER with seconds, EMAILID/THREADID with an id. */
eng_query *eng_query_new_number(enum eng_query_kind kind, int64_t number);
/* HEADER field text; FROM is eng_query_new_header("From", text) etc. */
eng_query *eng_query_new_header(const char *field, const char *text);
/* BODY or TEXT. */
eng_query *eng_query_new_text(enum eng_query_kind kind, const char *text);
/* Frees the tree; sets *q to NULL; accepts NULL. */
void eng_query_free(eng_query **q);

/* ---- SORT (RFC 5256) and DISPLAY sort (RFC 5957) ---- */

enum eng_sort_field {
	ENG_SORT_ARRIVAL,       /* internal date */
	ENG_SORT_CC,            /* local part of the first Cc address */
	ENG_SORT_DATE,          /* Date header, else internal date */
	ENG_SORT_FROM,          /* local part of the first From address */
	ENG_SORT_SIZE,
	ENG_SORT_SUBJECT,       /* base subject (RFC 5256 section 2.1) */
	ENG_SORT_TO,            /* local part of the first To address */
	ENG_SORT_DISPLAYFROM,   /* display name, else address (RFC 5957) */
	ENG_SORT_DISPLAYTO,
};

typedef struct eng_sort_key {
	enum eng_sort_field field;
	bool reverse;
} eng_sort_key;

/*
 * Runs query (NULL = ALL) over the messages of a mailbox. *uids_r (free();
 * NULL when nothing matched) gets the UIDs that match, in UID order when
 * n_sort == 0, else in the order of the sort keys, ties broken by the
 * next key and finally by UID ascending (RFC 5256: mailbox order). A
 * missing string field sorts as the empty string; strings compare with
 * i;ascii-casemap (RFC 5957 asks i;unicode-casemap for DISPLAY: non-ASCII
 * display names compare by their bytes).
 *
 * highest_modseq_r (may be NULL) gets the highest MODSEQ among the
 * matches (0 if none), for CONDSTORE's "(MODSEQ n)" answer.
 *
 * seq_map/n_seq_map: see the top of this file (may be NULL/0 when the
 * query has no ENG_Q_SEQ key). Errors: ENG_EINVAL (a bad query: unknown
 * kind or sort field, NOT without one child, SEQ without a map, a flag
 * that is not one enum eng_flags bit, a missing string, a HEADER field
 * name that is empty or has a ':'), ENG_ELIMIT (too deep, too many nodes
 * or bound values, more than 16 sort keys), store errors. A keyword no
 * message has is not an error: KEYWORD matches nothing, UNKEYWORD all.
 *
 * Cost: one statement. HEADER of From, To, Cc, Bcc or Subject reads the
 * field's folded values (table header_field, a few narrow rows); other
 * HEADER fields, SENT* and the substring check of BODY/TEXT read the
 * content's FTS row for each candidate; put cheap keys first in an AND,
 * SQLite evaluates it left to right.
 */
int eng_search(eng_store *st, int64_t mailbox_id, const eng_query *query,
	       const eng_sort_key *sort, size_t n_sort,
	       const uint32_t *seq_map, size_t n_seq_map,
	       uint32_t **uids_r, size_t *n_r, uint64_t *highest_modseq_r);

/*
 * Tests and benchmarks only: true makes HEADER, SENT* and TEXT read the
 * header text through the FTS4 module (the path before the direct read
 * of its shadow table), to compare both. Process-wide; default false.
 */
void eng_search_legacy_header_scan(bool on);

/*
 * Tests and benchmarks only: false makes HEADER of the fields table
 * header_field holds (From, To, Cc, Bcc, Subject) scan the header text
 * like any other field, to compare both. Process-wide; default true.
 */
void eng_search_header_fields(bool on);

/* ---- THREAD (RFC 5256) ---- */

enum eng_thread_algorithm {
	ENG_THREAD_ORDEREDSUBJECT,
	ENG_THREAD_REFERENCES,
};

/*
 * A thread tree. eng_thread() returns a root with uid 0 whose children are
 * the threads, in the order IMAP sends them. Any other node with uid 0 is
 * a dummy: a message that is referenced but not among the matches (or the
 * common parent made for messages with the same subject).
 */
typedef struct eng_thread_node eng_thread_node;
struct eng_thread_node {
	uint32_t uid;
	eng_thread_node **children;
	size_t n_children;
};

/*
 * Threads the messages of a mailbox that match query (NULL = ALL; seq_map
 * as for eng_search) with an RFC 5256 algorithm:
 *  - ORDEREDSUBJECT: messages grouped by base subject; threads ordered by
 *    the sent date of their first message, each a first message with the
 *    others as its children in sent-date order.
 *  - REFERENCES: the JWZ algorithm of RFC 5256 section 3 over Message-ID,
 *    References (else the first msg-id of In-Reply-To), then subject
 *    merging of the roots, then sent-date order of siblings.
 * The sent date is the Date header, else the internal date; ties are
 * broken by UID. Messages without a Message-ID, and second copies of one,
 * get a Message-ID of their own.
 */
int eng_thread(eng_store *st, int64_t mailbox_id,
	       enum eng_thread_algorithm algorithm, const eng_query *query,
	       const uint32_t *seq_map, size_t n_seq_map,
	       eng_thread_node **tree_r);

/*
 * Appends the IMAP THREAD response data of tree (without "* THREAD "),
 * e.g. "(1 2)(3 (4)(5))"; nothing for an empty tree. With seq_map (the
 * session's view), UIDs become sequence numbers; a UID outside the map
 * is written as a dummy would be (the thread keeps its shape).
 */
void eng_thread_write(const eng_thread_node *tree, eng_buf *out);
void eng_thread_write_seq(const eng_thread_node *tree, const uint32_t *seq_map,
			  size_t n_seq_map, eng_buf *out);

/* Frees a tree; sets *tree to NULL; accepts NULL. */
void eng_thread_free(eng_thread_node **tree);

#endif
