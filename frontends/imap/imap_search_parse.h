/*
 * The IMAP SEARCH program parser (RFC 3501 / RFC 9051 6.4.4, CONDSTORE
 * MODSEQ, RFC 5032 WITHIN, RFC 8514 SAVEDATE, RFC 8474 OBJECTID, RFC 5182
 * SEARCHRES "$", RFC 4731 ESEARCH RETURN options), the SORT criteria and
 * THREAD algorithms (RFC 5256, RFC 5957), and the writers of their answers
 * (compact sequence sets, THREAD lists). I/O-free and session-free: the
 * command file (imap_cmd_message.c) gives it the parsed arguments and the
 * few facts of the session it needs (the saved result "$"), the unit test
 * and the daemon share it unchanged.
 *
 * The program is parsed into the engine's query tree (engine/search.h),
 * which is what sqlited rebuilds from the RPC QUERY group, then flattened
 * as docs/rpc.md asks (NOT NOT x = x; an AND inside an AND and an OR inside
 * an OR are merged; a one-child AND/OR is its child). What is left must be
 * at most IMAP_SEARCH_MAX_DEPTH levels deep (the RPC limit) and at most
 * IMAP_SEARCH_MAX_NODES nodes; otherwise the answer is NO.
 *
 * Session-dependent keys, translated here (search.h leaves them to us):
 *  - RECENT and NEW match nothing (Sealmail keeps no \Recent, as
 *    IMAP4rev2), OLD matches everything;
 *  - "$" is the UID set of the saved result (nothing when none is saved);
 *  - sequence sets stay ENG_Q_SEQ nodes ('*' = UINT32_MAX): the caller then
 *    sends the SEQ_MAP (uses_seq tells it).
 *
 * Dates: BEFORE/ON/SINCE and SAVED* pass the first second of the day in
 * the server's local zone (mktime, like Dovecot), SENT* 00:00 UTC of the
 * named day (search.h explains why).
 *
 * Bounds: the raw program (before flattening) may nest at most
 * IMAP_SEARCH_MAX_RAW_DEPTH levels (recursion depth: "NOT NOT NOT ..."
 * fills a 64 KiB line with little else), strings at most
 * IMAP_SEARCH_MAX_TEXT bytes in total.
 */
#ifndef IMAP_SEARCH_PARSE_H
#define IMAP_SEARCH_PARSE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "buf.h"
#include "imap_parser.h"
#include "search.h"

#define IMAP_SEARCH_MAX_DEPTH 16
#define IMAP_SEARCH_MAX_NODES 1000
#define IMAP_SEARCH_MAX_RAW_DEPTH 1000
#define IMAP_SEARCH_MAX_TEXT (256u * 1024)
#define IMAP_SORT_MAX_KEYS 16

/* What a parse ends with. */
enum imap_search_status {
	IMAP_SEARCH_OK = 0,
	IMAP_SEARCH_BAD = -1,        /* syntax: tagged BAD with error */
	IMAP_SEARCH_BADCHARSET = -2, /* NO [BADCHARSET (UTF-8 US-ASCII)] */
	IMAP_SEARCH_TOO_COMPLEX = -3,/* NO [LIMIT]: too deep, too many keys */
};

/* ESEARCH RETURN options (RFC 4731, RFC 5182 SAVE). */
enum imap_search_return {
	IMAP_RET_MIN = 1u << 0,
	IMAP_RET_MAX = 1u << 1,
	IMAP_RET_ALL = 1u << 2,
	IMAP_RET_COUNT = 1u << 3,
	IMAP_RET_SAVE = 1u << 4,
};

/* Which command's syntax comes before the keys. */
enum imap_search_syntax {
	/* SEARCH [RETURN (opts)] [CHARSET cs] keys */
	IMAP_SYNTAX_SEARCH,
	/* SORT/THREAD: the charset is a mandatory astring before the keys
	 * (RETURN and the criteria/algorithm are the caller's). */
	IMAP_SYNTAX_CHARSET_FIRST,
};

typedef struct imap_search_in {
	enum imap_search_syntax syntax;
	/* "$": the saved result, ascending UIDs (may be NULL/0: empty). */
	const uint32_t *saved;
	size_t n_saved;
} imap_search_in;

typedef struct imap_search_prog {
	eng_query *query;            /* the flattened program (never NULL on OK) */
	bool uses_seq;               /* a sequence-set key: send SEQ_MAP */
	bool uses_modseq;            /* MODSEQ key: answer (MODSEQ n) */
	bool uses_saved;             /* "$" */
	bool has_return;             /* RETURN (...) was given */
	uint32_t ret;                /* enum imap_search_return bits;
	                                RETURN () = ALL */
	const char *error;           /* a fixed sentence for BAD/NO */
} imap_search_prog;

/*
 * Parses args[0..n) (the arguments after the command name). Returns an
 * enum imap_search_status; p->error is set for every failure. On
 * IMAP_SEARCH_OK p->query holds the program; free it with
 * imap_search_prog_free (also after a failure).
 */
int imap_search_parse(const imap_arg *args, size_t n, const imap_search_in *in,
		      imap_search_prog *p);
void imap_search_prog_free(imap_search_prog *p);

/* Depth of a query tree (a leaf is 1) and its node count. */
unsigned imap_search_depth(const eng_query *q);
size_t imap_search_nodes(const eng_query *q);

/* "RETURN (MIN MAX ...)": the list argument after RETURN. () = ALL. */
int imap_search_parse_return(const imap_arg *list, uint32_t *ret_r);

/*
 * SORT criteria "(REVERSE DATE SUBJECT)" into RPC sort keys (enum
 * rpc_sort_field values, | 0x100 for REVERSE, as docs/rpc.md numbers
 * them). At most IMAP_SORT_MAX_KEYS. IMAP_SEARCH_OK or IMAP_SEARCH_BAD.
 */
int imap_sort_parse_criteria(const imap_arg *list, uint32_t *keys,
			     size_t *n_r);
/* THREAD algorithm: 0 ORDEREDSUBJECT, 1 REFERENCES (docs/rpc.md). */
int imap_thread_parse_algorithm(const imap_arg *a, uint32_t *alg_r);

/*
 * Writes numbers as a sequence set in the order given, runs of
 * consecutive ascending numbers as "lo:hi" ("1:3,7,5" for 1 2 3 7 5).
 * Nothing for n == 0.
 */
void imap_put_numset(eng_buf *b, const uint32_t *nums, size_t n);

/*
 * A thread tree in preorder (docs/rpc.md THREAD_TREE: the root, uid 0,
 * first; uid 0 elsewhere is a dummy) to the IMAP THREAD data, without
 * "* THREAD " (RFC 5256 section 4: a chain of only children separated by
 * spaces, several children each in parentheses; dummies are not written,
 * so a dummy with several children gives "((3)(4))"). view (ascending
 * UIDs, the session's view) maps UIDs: to their sequence number when uid
 * is false, to themselves when true; a UID outside the view is written as
 * a dummy. The caller has checked the counts (rpc_thread_tree_parse).
 * Iterative, O(n): a reply chain may be as deep as the mailbox is large.
 */
typedef struct imap_tnode {
	uint32_t uid;
	uint32_t n_children;
} imap_tnode;

void imap_thread_render(const imap_tnode *nodes, size_t n,
			const uint32_t *view, size_t n_view, bool uid,
			eng_buf *out);

/* The index of uid in view (ascending), or SIZE_MAX. */
size_t imap_view_find(const uint32_t *view, size_t n_view, uint32_t uid);

#endif
