/*
 * The IMAP SEARCH program parser, SORT criteria, THREAD algorithms and
 * the writers of their answers (imap_search_parse.h has the contract).
 *
 * Rules: pure (no session, no I/O); every recursion is bounded (the raw
 * nesting by IMAP_SEARCH_MAX_RAW_DEPTH, the flattened tree by
 * IMAP_SEARCH_MAX_DEPTH); every failure leaves a fixed sentence in
 * p->error and frees what was built.
 */
#include "imap_search_parse.h"

#include "eng_error.h"

#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>

/* enum rpc_sort_field / rpc_thread_algorithm (docs/rpc.md pins them;
 * repeated here so that this library needs no RPC code). */
#define SORT_REVERSE 0x100u

/* ---- the parse state ---- */

struct sp {
	const imap_search_in *in;
	imap_search_prog *p;
	size_t text_bytes;
	unsigned depth;
};

/* A run of arguments being consumed. */
struct args {
	const imap_arg *a;
	size_t n;
	size_t i;
};

static int bad(struct sp *s, const char *why)
{
	if (s->p->error == NULL)
		s->p->error = why;
	return IMAP_SEARCH_BAD;
}

static const imap_arg *next_arg(struct args *a)
{
	return a->i < a->n ? &a->a[a->i++] : NULL;
}

static bool is_string(const imap_arg *a)
{
	return a != NULL && (a->kind == IMAP_ARG_ATOM ||
			     a->kind == IMAP_ARG_QUOTED ||
			     a->kind == IMAP_ARG_LITERAL);
}

/* An astring argument as a C string without NUL (NULL otherwise). */
static const char *astring(const imap_arg *a)
{
	if (!is_string(a) || strlen(a->s) != a->len)
		return NULL;
	return a->s;
}

static const char *atom(const imap_arg *a)
{
	return a != NULL && a->kind == IMAP_ARG_ATOM ? a->s : NULL;
}

/* A text argument, counted against IMAP_SEARCH_MAX_TEXT. */
static int text_arg(struct sp *s, struct args *a, const char **t_r)
{
	const imap_arg *arg = next_arg(a);
	const char *t = astring(arg);

	if (t == NULL)
		return bad(s, "Search key needs a string");
	s->text_bytes += arg->len;
	if (s->text_bytes > IMAP_SEARCH_MAX_TEXT) {
		s->p->error = "Search strings too long";
		return IMAP_SEARCH_TOO_COMPLEX;
	}
	*t_r = t;
	return 0;
}

static bool all_digits(const char *t)
{
	if (t == NULL || *t == '\0')
		return false;
	for (; *t != '\0'; t++) {
		if (*t < '0' || *t > '9')
			return false;
	}
	return true;
}

/* A decimal number in [min, max]. */
static int number_arg(struct sp *s, struct args *a, uint64_t min,
		      uint64_t max, uint64_t *n_r)
{
	const char *t = atom(next_arg(a));
	uint64_t n = 0;

	if (!all_digits(t))
		return bad(s, "Search key needs a number");
	for (; *t != '\0'; t++) {
		if (n > (max - (uint64_t)(*t - '0')) / 10)
			return bad(s, "Number out of range");
		n = n * 10 + (uint64_t)(*t - '0');
	}
	if (n < min)
		return bad(s, "Number out of range");
	*n_r = n;
	return 0;
}

/* ---- dates: "1-Feb-1994" (RFC 3501 date, quoted or not) ---- */

static const char *const months[12] = {
	"Jan", "Feb", "Mar", "Apr", "May", "Jun",
	"Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
};

static int64_t days_from_civil(int64_t y, unsigned m, unsigned d)
{
	int64_t era;
	unsigned yoe, doy, doe;

	y -= m <= 2;
	era = (y >= 0 ? y : y - 399) / 400;
	yoe = (unsigned)(y - era * 400);
	doy = (153 * (m > 2 ? m - 3 : m + 9) + 2) / 5 + d - 1;
	doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
	return era * 146097 + (int64_t)doe - 719468;
}

static unsigned days_in_month(unsigned y, unsigned m)
{
	static const unsigned dim[12] = { 31, 28, 31, 30, 31, 30, 31, 31, 30,
					  31, 30, 31 };

	if (m == 2 && ((y % 4 == 0 && y % 100 != 0) || y % 400 == 0))
		return 29;
	return dim[m - 1];
}

/* "d-Mon-yyyy" (1 or 2 day digits) into y/m/d. */
static bool parse_ymd(const char *t, unsigned *y_r, unsigned *m_r,
		      unsigned *d_r)
{
	unsigned d = 0, y = 0, m = 0, nd = 0;

	while (*t >= '0' && *t <= '9' && nd < 3) {
		d = d * 10 + (unsigned)(*t++ - '0');
		nd++;
	}
	if (nd == 0 || nd > 2 || *t++ != '-')
		return false;
	for (unsigned i = 0; i < 12; i++) {
		if (strncasecmp(t, months[i], 3) == 0)
			m = i + 1;
	}
	if (m == 0 || t[3] != '-')
		return false;
	t += 4;
	for (unsigned i = 0; i < 4; i++) {
		if (t[i] < '0' || t[i] > '9')
			return false;
		y = y * 10 + (unsigned)(t[i] - '0');
	}
	if (t[4] != '\0' || y < 1 || d < 1 || d > days_in_month(y, m))
		return false;
	*y_r = y;
	*m_r = m;
	*d_r = d;
	return true;
}

/* The day's first second: 00:00 UTC (utc) or local midnight. */
static int date_arg(struct sp *s, struct args *a, bool utc, int64_t *t_r)
{
	const imap_arg *arg = next_arg(a);
	unsigned y, m, d;

	if (arg == NULL || (arg->kind != IMAP_ARG_ATOM &&
			    arg->kind != IMAP_ARG_QUOTED) ||
	    !parse_ymd(arg->s, &y, &m, &d))
		return bad(s, "Invalid date");
	if (utc) {
		*t_r = days_from_civil(y, m, d) * 86400;
	} else {
		struct tm tm = { 0 };
		time_t t;

		tm.tm_year = (int)y - 1900;
		tm.tm_mon = (int)m - 1;
		tm.tm_mday = (int)d;
		tm.tm_isdst = -1;
		t = mktime(&tm);
		/* Out of time_t's range here: the UTC day is close enough. */
		*t_r = t == (time_t)-1 ? days_from_civil(y, m, d) * 86400 :
			(int64_t)t;
	}
	return 0;
}

/* ---- keys ---- */

enum key_kind {
	K_ALL, K_NOTHING, K_FLAG, K_UNFLAG, K_HEADER_NAMED, K_HEADER, K_TEXT,
	K_KEYWORD, K_UNKEYWORD, K_DATE, K_SENTDATE, K_SIZE, K_NOT, K_OR,
	K_UID, K_MODSEQ, K_WITHIN, K_OBJECTID, K_SAVEDATESUPPORTED,
};

struct key_def {
	const char *name;
	enum key_kind kind;
	int engine;                  /* enum eng_query_kind, or a flag bit */
	const char *field;           /* K_HEADER_NAMED */
};

static const struct key_def keys[] = {
	{ "ALL", K_ALL, 0, NULL },
	{ "OLD", K_ALL, 0, NULL },
	{ "NEW", K_NOTHING, 0, NULL },
	{ "RECENT", K_NOTHING, 0, NULL },
	{ "ANSWERED", K_FLAG, ENG_F_ANSWERED, NULL },
	{ "DELETED", K_FLAG, ENG_F_DELETED, NULL },
	{ "DRAFT", K_FLAG, ENG_F_DRAFT, NULL },
	{ "FLAGGED", K_FLAG, ENG_F_FLAGGED, NULL },
	{ "SEEN", K_FLAG, ENG_F_SEEN, NULL },
	{ "UNANSWERED", K_UNFLAG, ENG_F_ANSWERED, NULL },
	{ "UNDELETED", K_UNFLAG, ENG_F_DELETED, NULL },
	{ "UNDRAFT", K_UNFLAG, ENG_F_DRAFT, NULL },
	{ "UNFLAGGED", K_UNFLAG, ENG_F_FLAGGED, NULL },
	{ "UNSEEN", K_UNFLAG, ENG_F_SEEN, NULL },
	{ "BCC", K_HEADER_NAMED, 0, "Bcc" },
	{ "CC", K_HEADER_NAMED, 0, "Cc" },
	{ "FROM", K_HEADER_NAMED, 0, "From" },
	{ "SUBJECT", K_HEADER_NAMED, 0, "Subject" },
	{ "TO", K_HEADER_NAMED, 0, "To" },
	{ "HEADER", K_HEADER, 0, NULL },
	{ "BODY", K_TEXT, ENG_Q_BODY, NULL },
	{ "TEXT", K_TEXT, ENG_Q_TEXT, NULL },
	{ "KEYWORD", K_KEYWORD, 0, NULL },
	{ "UNKEYWORD", K_UNKEYWORD, 0, NULL },
	{ "BEFORE", K_DATE, ENG_Q_BEFORE, NULL },
	{ "ON", K_DATE, ENG_Q_ON, NULL },
	{ "SINCE", K_DATE, ENG_Q_SINCE, NULL },
	{ "SAVEDBEFORE", K_DATE, ENG_Q_SAVEDBEFORE, NULL },
	{ "SAVEDON", K_DATE, ENG_Q_SAVEDON, NULL },
	{ "SAVEDSINCE", K_DATE, ENG_Q_SAVEDSINCE, NULL },
	{ "SENTBEFORE", K_SENTDATE, ENG_Q_SENTBEFORE, NULL },
	{ "SENTON", K_SENTDATE, ENG_Q_SENTON, NULL },
	{ "SENTSINCE", K_SENTDATE, ENG_Q_SENTSINCE, NULL },
	{ "LARGER", K_SIZE, ENG_Q_LARGER, NULL },
	{ "SMALLER", K_SIZE, ENG_Q_SMALLER, NULL },
	{ "NOT", K_NOT, 0, NULL },
	{ "OR", K_OR, 0, NULL },
	{ "UID", K_UID, 0, NULL },
	{ "MODSEQ", K_MODSEQ, 0, NULL },
	{ "OLDER", K_WITHIN, ENG_Q_OLDER, NULL },
	{ "YOUNGER", K_WITHIN, ENG_Q_YOUNGER, NULL },
	{ "EMAILID", K_OBJECTID, ENG_Q_EMAILID, NULL },
	{ "THREADID", K_OBJECTID, ENG_Q_THREADID, NULL },
	{ "SAVEDATESUPPORTED", K_SAVEDATESUPPORTED, 0, NULL },
};

static const struct key_def *key_lookup(const char *name)
{
	for (size_t i = 0; i < sizeof(keys) / sizeof(keys[0]); i++) {
		if (strcasecmp(keys[i].name, name) == 0)
			return &keys[i];
	}
	return NULL;
}

static eng_query *nothing(void)
{
	return eng_query_new(ENG_Q_OR);
}

/* "$": the saved UIDs as ranges. */
static eng_query *saved_query(const imap_search_in *in)
{
	eng_uidset set = { 0 };
	eng_query *q;
	size_t i = 0;

	if (in->n_saved == 0)
		return nothing();
	while (i < in->n_saved) {
		size_t j = i;

		while (j + 1 < in->n_saved &&
		       in->saved[j + 1] == in->saved[j] + 1)
			j++;
		eng_uidset_add(&set, in->saved[i], in->saved[j]);
		i = j + 1;
	}
	q = eng_query_new_set(ENG_Q_UID, &set);
	eng_uidset_free(&set);
	return q;
}

static bool seqset_chars(const char *t)
{
	if (t == NULL || *t == '\0')
		return false;
	for (; *t != '\0'; t++) {
		if (!((*t >= '0' && *t <= '9') || *t == ':' || *t == ',' ||
		      *t == '*'))
			return false;
	}
	return true;
}

/* A sequence set ("$" included) as a UID or SEQ node. */
static int set_query(struct sp *s, const char *t, bool uid, eng_query **q_r)
{
	eng_uidset set;

	if (strcmp(t, "$") == 0) {
		s->p->uses_saved = true;
		*q_r = saved_query(s->in);
		return 0;
	}
	if (!seqset_chars(t) || eng_uidset_parse(t, &set) != 0)
		return bad(s, "Invalid sequence set");
	*q_r = eng_query_new_set(uid ? ENG_Q_UID : ENG_Q_SEQ, &set);
	eng_uidset_free(&set);
	if (!uid)
		s->p->uses_seq = true;
	return 0;
}

/* RFC 5322 field name: printable ASCII but ':' (and no space). */
static bool field_name_ok(const char *f)
{
	if (*f == '\0' || strlen(f) > 255)
		return false;
	for (; *f != '\0'; f++) {
		if (*f <= ' ' || *f > '~' || *f == ':')
			return false;
	}
	return true;
}

/* flag-keyword: an atom of ATOM-CHARs, not a \system flag. */
static bool keyword_ok(const char *k)
{
	if (k == NULL || *k == '\0' || strlen(k) > ENG_KEYWORD_MAX)
		return false;
	for (; *k != '\0'; k++) {
		if (*k <= ' ' || *k > '~' || strchr("(){%*\"\\]", *k) != NULL)
			return false;
	}
	return true;
}

/*
 * RFC 8474 objectid as imap_cmd_fetch.c writes it: a letter ("M" for
 * EMAILID, "T" for THREADID) then the id in decimal, "n" before the digits
 * of a negative id. Any other objectid is valid syntax that matches
 * nothing: an id from another server.
 */
static int objectid_arg(struct sp *s, struct args *a, int kind,
			eng_query **q_r)
{
	const char *t = astring(next_arg(a));
	char want = kind == ENG_Q_EMAILID ? 'M' : 'T';
	const char *digits;
	size_t len;
	int64_t id = 0;

	if (t == NULL || (len = strlen(t)) == 0 || len > 255)
		return bad(s, "Invalid object id");
	for (size_t i = 0; i < len; i++) {
		char c = t[i];

		if (!((c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') ||
		      (c >= '0' && c <= '9') || c == '_' || c == '-'))
			return bad(s, "Invalid object id");
	}
	digits = t + 1 + (t[1] == 'n');
	if (t[0] != want || !all_digits(digits) || strlen(digits) > 18 ||
	    (digits[0] == '0')) {
		*q_r = nothing();
		return 0;
	}
	for (; *digits != '\0'; digits++)
		id = id * 10 + (*digits - '0');
	*q_r = eng_query_new_number((enum eng_query_kind)kind,
				    t[1] == 'n' ? -id : id);
	return 0;
}

/* MODSEQ ["entry-name" entry-type] n (the entry is ignored, search.h). */
static int modseq_arg(struct sp *s, struct args *a, eng_query **q_r)
{
	uint64_t n;
	int err;

	if (a->i < a->n && (a->a[a->i].kind == IMAP_ARG_QUOTED ||
			    a->a[a->i].kind == IMAP_ARG_LITERAL)) {
		const char *type;

		a->i++;
		type = atom(next_arg(a));
		if (type == NULL || (strcasecmp(type, "priv") != 0 &&
				     strcasecmp(type, "shared") != 0 &&
				     strcasecmp(type, "all") != 0))
			return bad(s, "Invalid MODSEQ entry type");
	}
	if ((err = number_arg(s, a, 0, INT64_MAX, &n)) != 0)
		return err;
	s->p->uses_modseq = true;
	*q_r = eng_query_new_number(ENG_Q_MODSEQ, (int64_t)n);
	return 0;
}

static int parse_key(struct sp *s, struct args *a, eng_query **q_r);

/* Every key of a run, as one AND (or the key itself when alone). */
static int parse_all(struct sp *s, struct args *a, eng_query **q_r)
{
	eng_query *and = eng_query_new(ENG_Q_AND);
	int err;

	if (a->i >= a->n) {
		eng_query_free(&and);
		return bad(s, "Missing search key");
	}
	while (a->i < a->n) {
		eng_query *q;

		if ((err = parse_key(s, a, &q)) != 0) {
			eng_query_free(&and);
			return err;
		}
		eng_query_add(and, q);
	}
	*q_r = and;
	return 0;
}

static int parse_named(struct sp *s, struct args *a, const struct key_def *k,
		       eng_query **q_r)
{
	const char *t, *f;
	eng_query *x, *y;
	uint64_t n;
	int64_t day;
	int err;

	switch (k->kind) {
	case K_ALL:
		*q_r = eng_query_new(ENG_Q_ALL);
		return 0;
	case K_NOTHING:
		*q_r = nothing();
		return 0;
	case K_SAVEDATESUPPORTED:
		*q_r = eng_query_new(ENG_Q_SAVEDATESUPPORTED);
		return 0;
	case K_FLAG:
	case K_UNFLAG:
		*q_r = eng_query_new_flag((uint32_t)k->engine,
					  k->kind == K_FLAG);
		return 0;
	case K_HEADER_NAMED:
		if ((err = text_arg(s, a, &t)) != 0)
			return err;
		*q_r = eng_query_new_header(k->field, t);
		return 0;
	case K_HEADER:
		f = astring(next_arg(a));
		if (f == NULL || !field_name_ok(f))
			return bad(s, "Invalid header field name");
		if ((err = text_arg(s, a, &t)) != 0)
			return err;
		*q_r = eng_query_new_header(f, t);
		return 0;
	case K_TEXT:
		if ((err = text_arg(s, a, &t)) != 0)
			return err;
		*q_r = eng_query_new_text((enum eng_query_kind)k->engine, t);
		return 0;
	case K_KEYWORD:
	case K_UNKEYWORD:
		t = atom(next_arg(a));
		if (!keyword_ok(t))
			return bad(s, "Invalid keyword");
		*q_r = eng_query_new_keyword(t, k->kind == K_KEYWORD);
		return 0;
	case K_DATE:
	case K_SENTDATE:
		if ((err = date_arg(s, a, k->kind == K_SENTDATE, &day)) != 0)
			return err;
		*q_r = eng_query_new_number((enum eng_query_kind)k->engine,
					    day);
		return 0;
	case K_SIZE:
		if ((err = number_arg(s, a, 0, INT64_MAX, &n)) != 0)
			return err;
		*q_r = eng_query_new_number((enum eng_query_kind)k->engine,
					    (int64_t)n);
		return 0;
	case K_WITHIN:
		if ((err = number_arg(s, a, 1, INT64_MAX, &n)) != 0)
			return err;
		*q_r = eng_query_new_number((enum eng_query_kind)k->engine,
					    (int64_t)n);
		return 0;
	case K_NOT:
		if ((err = parse_key(s, a, &x)) != 0)
			return err;
		*q_r = eng_query_new_not(x);
		return 0;
	case K_OR:
		if ((err = parse_key(s, a, &x)) != 0)
			return err;
		if ((err = parse_key(s, a, &y)) != 0) {
			eng_query_free(&x);
			return err;
		}
		*q_r = eng_query_new_or(x, y);
		return 0;
	case K_UID:
		t = atom(next_arg(a));
		if (t == NULL)
			return bad(s, "UID needs a sequence set");
		return set_query(s, t, true, q_r);
	case K_MODSEQ:
		return modseq_arg(s, a, q_r);
	case K_OBJECTID:
		return objectid_arg(s, a, k->engine, q_r);
	}
	return bad(s, "Unknown search key");
}

static int parse_key(struct sp *s, struct args *a, eng_query **q_r)
{
	const imap_arg *arg = next_arg(a);
	const struct key_def *k;
	int err;

	*q_r = NULL;
	if (arg == NULL)
		return bad(s, "Missing search key");
	if (++s->depth > IMAP_SEARCH_MAX_RAW_DEPTH) {
		s->p->error = "Search program nested too deeply";
		return IMAP_SEARCH_TOO_COMPLEX;
	}
	if (arg->kind == IMAP_ARG_LIST) {
		struct args sub = { arg->list, arg->n_list, 0 };

		err = parse_all(s, &sub, q_r);
	} else if (arg->kind != IMAP_ARG_ATOM) {
		err = bad(s, "Search key expected");
	} else if ((k = key_lookup(arg->s)) != NULL) {
		err = parse_named(s, a, k, q_r);
	} else if (strcmp(arg->s, "$") == 0 || seqset_chars(arg->s)) {
		err = set_query(s, arg->s, false, q_r);
	} else {
		err = bad(s, "Unknown search key");
	}
	s->depth--;
	return err;
}

/* ---- flattening ---- */

/* Moves q's children into a new array where children of the same kind
 * (AND in AND, OR in OR) give their own children instead. */
static void merge_children(eng_query *q)
{
	size_t n = 0;
	eng_query **kids;

	for (size_t i = 0; i < q->n_children; i++) {
		eng_query *c = q->children[i];

		n += c->kind == q->kind ? c->n_children : 1;
	}
	kids = eng_malloc((n > 0 ? n : 1) * sizeof(*kids));
	n = 0;
	for (size_t i = 0; i < q->n_children; i++) {
		eng_query *c = q->children[i];

		if (c->kind != q->kind) {
			kids[n++] = c;
			continue;
		}
		for (size_t j = 0; j < c->n_children; j++)
			kids[n++] = c->children[j];
		c->n_children = 0;
		eng_query_free(&c);
	}
	free(q->children);
	q->children = kids;
	q->n_children = n;
}

/* Returns the flattened q (which may be one of its descendants; what is
 * dropped is freed). Recursion depth = the raw depth (bounded). */
static eng_query *flatten(eng_query *q)
{
	for (size_t i = 0; i < q->n_children; i++)
		q->children[i] = flatten(q->children[i]);
	if (q->kind == ENG_Q_NOT && q->n_children == 1 &&
	    q->children[0]->kind == ENG_Q_NOT &&
	    q->children[0]->n_children == 1) {
		eng_query *inner = q->children[0];
		eng_query *x = inner->children[0];

		inner->n_children = 0;
		eng_query_free(&q);
		return x;
	}
	if (q->kind == ENG_Q_AND || q->kind == ENG_Q_OR) {
		merge_children(q);
		if (q->n_children == 1) {
			eng_query *x = q->children[0];

			q->n_children = 0;
			eng_query_free(&q);
			return x;
		}
	}
	return q;
}

unsigned imap_search_depth(const eng_query *q)
{
	unsigned max = 0;

	for (size_t i = 0; i < q->n_children; i++) {
		unsigned d = imap_search_depth(q->children[i]);

		if (d > max)
			max = d;
	}
	return max + 1;
}

size_t imap_search_nodes(const eng_query *q)
{
	size_t n = 1;

	for (size_t i = 0; i < q->n_children; i++)
		n += imap_search_nodes(q->children[i]);
	return n;
}

/* ---- SEARCH [RETURN (...)] [CHARSET x] keys ---- */

int imap_search_parse_return(const imap_arg *list, uint32_t *ret_r)
{
	static const struct { const char *name; uint32_t bit; } opts[] = {
		{ "MIN", IMAP_RET_MIN }, { "MAX", IMAP_RET_MAX },
		{ "ALL", IMAP_RET_ALL }, { "COUNT", IMAP_RET_COUNT },
		{ "SAVE", IMAP_RET_SAVE },
	};
	uint32_t ret = 0;

	if (list == NULL || list->kind != IMAP_ARG_LIST)
		return IMAP_SEARCH_BAD;
	for (size_t i = 0; i < list->n_list; i++) {
		const char *t = atom(&list->list[i]);
		uint32_t bit = 0;

		for (size_t j = 0; t != NULL && j < 5; j++) {
			if (strcasecmp(t, opts[j].name) == 0)
				bit = opts[j].bit;
		}
		if (bit == 0)
			return IMAP_SEARCH_BAD;
		ret |= bit;
	}
	*ret_r = ret != 0 ? ret : IMAP_RET_ALL;
	return IMAP_SEARCH_OK;
}

static bool charset_ok(const char *cs)
{
	return cs != NULL && (strcasecmp(cs, "UTF-8") == 0 ||
			      strcasecmp(cs, "US-ASCII") == 0);
}

/* The words before the keys. */
static int parse_prefix(struct sp *s, struct args *a)
{
	const char *t;

	if (s->in->syntax == IMAP_SYNTAX_CHARSET_FIRST) {
		t = astring(next_arg(a));
		if (t == NULL)
			return bad(s, "Missing charset");
		if (!charset_ok(t)) {
			s->p->error = "Unsupported charset";
			return IMAP_SEARCH_BADCHARSET;
		}
		return 0;
	}
	t = atom(a->i < a->n ? &a->a[a->i] : NULL);
	if (t != NULL && strcasecmp(t, "RETURN") == 0) {
		a->i++;
		if (imap_search_parse_return(next_arg(a), &s->p->ret) != 0)
			return bad(s, "Invalid RETURN options");
		s->p->has_return = true;
		t = atom(a->i < a->n ? &a->a[a->i] : NULL);
	}
	if (t != NULL && strcasecmp(t, "CHARSET") == 0) {
		a->i++;
		t = astring(next_arg(a));
		if (t == NULL)
			return bad(s, "Missing charset");
		if (!charset_ok(t)) {
			s->p->error = "Unsupported charset";
			return IMAP_SEARCH_BADCHARSET;
		}
	}
	return 0;
}

int imap_search_parse(const imap_arg *args, size_t n, const imap_search_in *in,
		      imap_search_prog *p)
{
	struct sp s = { in, p, 0, 0 };
	struct args a = { args, n, 0 };
	eng_query *q = NULL;
	int err;

	memset(p, 0, sizeof(*p));
	if ((err = parse_prefix(&s, &a)) != 0)
		return err;
	if ((err = parse_all(&s, &a, &q)) != 0)
		return err;
	q = flatten(q);
	p->query = q;
	if (imap_search_nodes(q) > IMAP_SEARCH_MAX_NODES) {
		p->error = "Too many search keys";
		return IMAP_SEARCH_TOO_COMPLEX;
	}
	if (imap_search_depth(q) > IMAP_SEARCH_MAX_DEPTH) {
		p->error = "Search program nested too deeply";
		return IMAP_SEARCH_TOO_COMPLEX;
	}
	return IMAP_SEARCH_OK;
}

void imap_search_prog_free(imap_search_prog *p)
{
	eng_query_free(&p->query);
}

/* ---- SORT and THREAD arguments ---- */

int imap_sort_parse_criteria(const imap_arg *list, uint32_t *keys_r,
			     size_t *n_r)
{
	static const char *const names[] = {
		"ARRIVAL", "CC", "DATE", "FROM", "SIZE", "SUBJECT", "TO",
		"DISPLAYFROM", "DISPLAYTO",
	};
	bool reverse = false;
	size_t n = 0;

	if (list == NULL || list->kind != IMAP_ARG_LIST || list->n_list == 0)
		return IMAP_SEARCH_BAD;
	for (size_t i = 0; i < list->n_list; i++) {
		const char *t = atom(&list->list[i]);
		uint32_t key = UINT32_MAX;

		if (t == NULL)
			return IMAP_SEARCH_BAD;
		if (strcasecmp(t, "REVERSE") == 0) {
			if (reverse)
				return IMAP_SEARCH_BAD;
			reverse = true;
			continue;
		}
		for (uint32_t j = 0; j < sizeof(names) / sizeof(names[0]); j++) {
			if (strcasecmp(t, names[j]) == 0)
				key = j;
		}
		if (key == UINT32_MAX || n == IMAP_SORT_MAX_KEYS)
			return IMAP_SEARCH_BAD;
		keys_r[n++] = key | (reverse ? SORT_REVERSE : 0);
		reverse = false;
	}
	if (reverse)
		return IMAP_SEARCH_BAD;
	*n_r = n;
	return IMAP_SEARCH_OK;
}

int imap_thread_parse_algorithm(const imap_arg *a, uint32_t *alg_r)
{
	const char *t = atom(a);

	if (t != NULL && strcasecmp(t, "ORDEREDSUBJECT") == 0)
		*alg_r = 0;
	else if (t != NULL && strcasecmp(t, "REFERENCES") == 0)
		*alg_r = 1;
	else
		return IMAP_SEARCH_BAD;
	return IMAP_SEARCH_OK;
}

/* ---- writers ---- */

void imap_put_numset(eng_buf *b, const uint32_t *nums, size_t n)
{
	size_t i = 0;

	while (i < n) {
		size_t j = i;

		while (j + 1 < n && nums[j + 1] == nums[j] + 1)
			j++;
		if (i > 0)
			eng_buf_putc(b, ',');
		if (j == i)
			eng_buf_printf(b, "%u", nums[i]);
		else
			eng_buf_printf(b, "%u:%u", nums[i], nums[j]);
		i = j + 1;
	}
}

size_t imap_view_find(const uint32_t *view, size_t n_view, uint32_t uid)
{
	size_t lo = 0, hi = n_view;

	while (lo < hi) {
		size_t mid = lo + (hi - lo) / 2;

		if (view[mid] < uid)
			lo = mid + 1;
		else if (view[mid] > uid)
			hi = mid;
		else
			return mid;
	}
	return SIZE_MAX;
}

struct render {
	const imap_tnode *nodes;
	size_t n;
	size_t *end;                 /* index after node i's subtree */
	bool *vis;                   /* the subtree has a written node */
	uint32_t *num;               /* the number to write, 0 = none */
};

/* end[] and num[] in one pass, vis[] in a reverse pass. */
static void render_prepare(struct render *r, const uint32_t *view,
			   size_t n_view, bool uid)
{
	size_t *stack = eng_malloc(r->n * sizeof(size_t));
	uint32_t *left = eng_malloc(r->n * sizeof(uint32_t));
	size_t depth = 0;

	for (size_t i = 0; i < r->n; i++) {
		size_t at = r->nodes[i].uid == 0 ? SIZE_MAX :
			imap_view_find(view, n_view, r->nodes[i].uid);

		r->num[i] = at == SIZE_MAX ? 0 :
			uid ? r->nodes[i].uid : (uint32_t)(at + 1);
		if (depth > 0)
			left[depth - 1]--;
		stack[depth] = i;
		left[depth] = r->nodes[i].n_children;
		depth++;
		/* Close every subtree this node finished. */
		while (depth > 0 && left[depth - 1] == 0) {
			r->end[stack[depth - 1]] = i + 1;
			depth--;
		}
	}
	/* Malformed counts (unclosed subtrees): end at the array's end. */
	while (depth > 0)
		r->end[stack[--depth]] = r->n;
	for (size_t i = r->n; i > 0; i--) {
		size_t k = i - 1;

		r->vis[k] = r->num[k] != 0;
		for (size_t c = k + 1; !r->vis[k] && c < r->end[k]; c = r->end[c])
			r->vis[k] = r->vis[c];
	}
	free(stack);
	free(left);
}

/* The visible children of k: how many, and the first. */
static size_t visible_children(const struct render *r, size_t k,
			       size_t *first_r)
{
	size_t n = 0;

	for (size_t c = k + 1; c < r->end[k]; c = r->end[c]) {
		if (r->vis[c]) {
			if (n++ == 0)
				*first_r = c;
		}
	}
	return n;
}

struct frame {
	size_t next;                 /* next child to consider */
	size_t end;                  /* the parent's end */
};

void imap_thread_render(const imap_tnode *nodes, size_t n,
			const uint32_t *view, size_t n_view, bool uid,
			eng_buf *out)
{
	struct render r = { nodes, n, NULL, NULL, NULL };
	struct frame *st;
	size_t depth = 0;

	if (n == 0)
		return;
	r.end = eng_malloc(n * sizeof(size_t));
	r.vis = eng_malloc(n * sizeof(bool));
	r.num = eng_malloc(n * sizeof(uint32_t));
	st = eng_malloc(n * sizeof(*st));
	render_prepare(&r, view, n_view, uid);
	st[depth++] = (struct frame){ 1, r.end[0] };
	while (depth > 0) {
		struct frame *f = &st[depth - 1];
		size_t t, one;
		bool first = true;

		while (f->next < f->end && !r.vis[f->next])
			f->next = r.end[f->next];
		if (f->next >= f->end) {
			/* Closes the child of the frame below, whose chain
			 * opened this one. */
			if (--depth > 0)
				eng_buf_putc(out, ')');
			continue;
		}
		t = f->next;
		f->next = r.end[t];
		eng_buf_putc(out, '(');
		/* The chain of only children. */
		for (;;) {
			size_t nv;

			if (r.num[t] != 0) {
				eng_buf_printf(out, first ? "%u" : " %u",
					       r.num[t]);
				first = false;
			}
			nv = visible_children(&r, t, &one);
			if (nv == 1) {
				t = one;
				continue;
			}
			if (nv == 0) {
				eng_buf_putc(out, ')');
			} else {
				if (!first)
					eng_buf_putc(out, ' ');
				st[depth++] = (struct frame){ t + 1, r.end[t] };
			}
			break;
		}
	}
	free(st);
	free(r.end);
	free(r.vis);
	free(r.num);
}
