/*
 * SEARCH and SORT: an eng_query tree becomes one SELECT over message
 * (alias m) joined with content (alias c), every value a bound parameter.
 *
 * What SQL cannot say by itself is done by four SQL functions that are
 * registered on the connection the first time a search runs on it:
 *   sm_in_set(uid, blob)            uid in a set of merged, sorted ranges
 *   sm_header_has(text, field, s)   decoded header field contains s
 *   sm_contains(text, s)            decoded text contains s
 *   sm_sent_day(text, sent_date)    the Date header's day in its own zone
 * text is the FTS row of the content (fts.header, fts.body), which holds
 * the decoded, unfolded header ("Name: value" lines) and body text the
 * MIME parser produced at append time. Every leaf of the tree yields 0 or
 * 1, never NULL, so NOT keeps two-valued logic.
 *
 * AND and OR are flattened (IMAP's OR is binary, so "OR a OR b c" nests)
 * and written as balanced trees, so SQLite's expression depth stays at
 * the logarithm of the width; the UID and sequence sets under one OR are
 * merged into one set, so a long OR of UIDs is one parameter.
 */
#include "search.h"
#include "search_private.h"
#include "store_private.h"
#include "eng_error.h"

#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>

#define DAY_SECONDS 86400

/* ---- builders ---- */

eng_query *eng_query_new(enum eng_query_kind kind)
{
	eng_query *q = eng_calloc(1, sizeof(*q));

	q->kind = kind;
	return q;
}

void eng_query_add(eng_query *parent, eng_query *child)
{
	parent->children = eng_realloc(parent->children,
				       (parent->n_children + 1) *
				       sizeof(eng_query *));
	parent->children[parent->n_children++] = child;
}

static eng_query *new_pair(enum eng_query_kind kind, eng_query *a,
			   eng_query *b)
{
	eng_query *q = eng_query_new(kind);

	eng_query_add(q, a);
	eng_query_add(q, b);
	return q;
}

eng_query *eng_query_new_and(eng_query *a, eng_query *b)
{
	return new_pair(ENG_Q_AND, a, b);
}

eng_query *eng_query_new_or(eng_query *a, eng_query *b)
{
	return new_pair(ENG_Q_OR, a, b);
}

eng_query *eng_query_new_not(eng_query *child)
{
	eng_query *q = eng_query_new(ENG_Q_NOT);

	eng_query_add(q, child);
	return q;
}

eng_query *eng_query_new_flag(uint32_t flag, bool set)
{
	eng_query *q = eng_query_new(set ? ENG_Q_FLAG : ENG_Q_UNFLAG);

	q->flag = flag;
	return q;
}

eng_query *eng_query_new_keyword(const char *keyword, bool set)
{
	eng_query *q = eng_query_new(set ? ENG_Q_KEYWORD : ENG_Q_UNKEYWORD);

	q->text = eng_strdup(keyword);
	return q;
}

eng_query *eng_query_new_set(enum eng_query_kind kind, const eng_uidset *set)
{
	eng_query *q = eng_query_new(kind);

	for (size_t i = 0; set != NULL && i < set->count; i++)
		eng_uidset_add(&q->set, set->ranges[i].lo, set->ranges[i].hi);
	return q;
}

eng_query *eng_query_new_number(enum eng_query_kind kind, int64_t number)
{
	eng_query *q = eng_query_new(kind);

	q->number = number;
	return q;
}

eng_query *eng_query_new_header(const char *field, const char *text)
{
	eng_query *q = eng_query_new(ENG_Q_HEADER);

	q->field = eng_strdup(field);
	q->text = eng_strdup(text);
	return q;
}

eng_query *eng_query_new_text(enum eng_query_kind kind, const char *text)
{
	eng_query *q = eng_query_new(kind);

	q->text = eng_strdup(text);
	return q;
}

void eng_query_free(eng_query **qp)
{
	eng_query *q = *qp;

	if (q == NULL)
		return;
	*qp = NULL;
	for (size_t i = 0; i < q->n_children; i++)
		eng_query_free(&q->children[i]);
	free(q->children);
	free(q->field);
	free(q->text);
	eng_uidset_free(&q->set);
	free(q);
}

/* ---- SQL functions ---- */

static void aux_buf_free(void *p)
{
	eng_buf *b = p;

	eng_buf_free(b);
	free(b);
}

/* The folded form of argument i, cached while the statement runs. */
static const eng_buf *folded_arg(sqlite3_context *ctx, sqlite3_value **argv,
				 int i)
{
	eng_buf *b = sqlite3_get_auxdata(ctx, i);
	const char *s;

	if (b != NULL)
		return b;
	b = eng_calloc(1, sizeof(*b));
	s = (const char *)sqlite3_value_text(argv[i]);
	eng_buf_puts(b, "");
	if (s != NULL)
		search_fold_append(b, s,
				   (size_t)sqlite3_value_bytes(argv[i]));
	sqlite3_set_auxdata(ctx, i, b, aux_buf_free);
	/* set_auxdata may free it at once (non-constant argument). */
	b = sqlite3_get_auxdata(ctx, i);
	if (b == NULL) {
		/* Not cacheable: fold into a buffer owned by the result's
		 * lifetime is not possible here, so refold per call. */
		return NULL;
	}
	return b;
}

/* sm_in_set(uid, blob of sorted, merged uint32 pairs). */
static void fn_in_set(sqlite3_context *ctx, int argc, sqlite3_value **argv)
{
	int64_t uid = sqlite3_value_int64(argv[0]);
	const uint32_t *r;
	size_t n, lo = 0, hi;
	uint32_t tmp[2];

	(void)argc;
	n = (size_t)sqlite3_value_bytes(argv[1]) / (2 * sizeof(uint32_t));
	r = sqlite3_value_blob(argv[1]);
	hi = n;
	/* Binary search over the ranges (the blob may be unaligned). */
	while (lo < hi) {
		size_t mid = lo + (hi - lo) / 2;

		memcpy(tmp, (const char *)r + mid * sizeof(tmp), sizeof(tmp));
		if (uid < tmp[0])
			hi = mid;
		else if (uid > tmp[1])
			lo = mid + 1;
		else {
			sqlite3_result_int(ctx, 1);
			return;
		}
	}
	sqlite3_result_int(ctx, 0);
}

struct contains_arg {
	const eng_buf *needle;
	eng_buf scratch;
};

static bool contains_cb(void *arg, const char *v, size_t len)
{
	struct contains_arg *a = arg;

	return search_folded_contains(v, len, a->needle, &a->scratch);
}

static const eng_buf *needle_arg(sqlite3_context *ctx, sqlite3_value **argv,
				 int i, eng_buf *tmp)
{
	const eng_buf *b = folded_arg(ctx, argv, i);
	const char *s;

	if (b != NULL)
		return b;
	s = (const char *)sqlite3_value_text(argv[i]);
	eng_buf_puts(tmp, "");
	if (s != NULL)
		search_fold_append(tmp, s,
				   (size_t)sqlite3_value_bytes(argv[i]));
	return tmp;
}

/*
 * True (and the call fails with SQLITE_CORRUPT, which the statement
 * reports as ENG_ECORRUPT) when the text holds a zero block: a zeroed page
 * under it (zero_check.c; the writer never stores one).
 */
static bool text_zeroed(sqlite3_context *ctx, sqlite3_value *v)
{
	const unsigned char *text = sqlite3_value_blob(v);

	if (text == NULL ||
	    !store_zero_block(text, (size_t)sqlite3_value_bytes(v), 0))
		return false;
	sqlite3_result_error_code(ctx, SQLITE_CORRUPT);
	return true;
}

/* sm_header_has(header text, field name, string). */
static void fn_header_has(sqlite3_context *ctx, int argc, sqlite3_value **argv)
{
	const char *text = (const char *)sqlite3_value_text(argv[0]);
	const char *field = (const char *)sqlite3_value_text(argv[1]);
	eng_buf tmp = ENG_BUF_INIT;
	struct contains_arg a = { NULL, ENG_BUF_INIT };
	bool found;

	(void)argc;
	if (text_zeroed(ctx, argv[0]))
		return;
	if (text == NULL || field == NULL || *field == '\0') {
		sqlite3_result_int(ctx, 0);
		return;
	}
	a.needle = needle_arg(ctx, argv, 2, &tmp);
	found = search_header_find(text, (size_t)sqlite3_value_bytes(argv[0]),
				   field, contains_cb, &a);
	eng_buf_free(&a.scratch);
	eng_buf_free(&tmp);
	sqlite3_result_int(ctx, found);
}

/* sm_contains(text, string). */
static void fn_contains(sqlite3_context *ctx, int argc, sqlite3_value **argv)
{
	const char *text = (const char *)sqlite3_value_text(argv[0]);
	eng_buf tmp = ENG_BUF_INIT, scratch = ENG_BUF_INIT;
	const eng_buf *needle;
	bool found;

	(void)argc;
	if (text_zeroed(ctx, argv[0]))
		return;
	needle = needle_arg(ctx, argv, 1, &tmp);
	found = search_folded_contains(text != NULL ? text : "",
				       text != NULL ?
				       (size_t)sqlite3_value_bytes(argv[0]) : 0,
				       needle, &scratch);
	eng_buf_free(&scratch);
	eng_buf_free(&tmp);
	sqlite3_result_int(ctx, found);
}

/*
 * sm_folded_has(folded value, folded needle): a byte substring test of
 * two values folded already (header_field.value and the needle folded
 * when the SQL was built); an empty needle matches.
 */
static void fn_folded_has(sqlite3_context *ctx, int argc,
			  sqlite3_value **argv)
{
	const void *hay = sqlite3_value_blob(argv[0]);
	size_t hay_len = (size_t)sqlite3_value_bytes(argv[0]);
	const void *needle = sqlite3_value_blob(argv[1]);
	size_t needle_len = (size_t)sqlite3_value_bytes(argv[1]);

	(void)argc;
	if (needle_len == 0) {
		sqlite3_result_int(ctx, 1);
		return;
	}
	sqlite3_result_int(ctx, hay != NULL && hay_len >= needle_len &&
			   memmem(hay, hay_len, needle, needle_len) != NULL);
}

/*
 * The zone of an RFC 5322 date in seconds east of UTC: the last token,
 * "+hhmm" / "-hhmm" or an obsolete zone name (RFC 5322 4.3). Unknown
 * names count as UTC, as RFC 5322 says of military zones.
 */
static int64_t date_zone(const char *v, size_t len)
{
	static const struct {
		const char *name;
		int hours;
	} names[] = {
		{ "UT", 0 }, { "GMT", 0 }, { "Z", 0 },
		{ "EST", -5 }, { "EDT", -4 }, { "CST", -6 }, { "CDT", -5 },
		{ "MST", -7 }, { "MDT", -6 }, { "PST", -8 }, { "PDT", -7 },
	};
	const char *end = v + len, *tok;
	size_t tlen;

	/* Drop a trailing comment such as "(CET)". */
	while (end > v && (end[-1] == ' ' || end[-1] == '\t'))
		end--;
	if (end > v && end[-1] == ')') {
		const char *open = end;

		while (open > v && open[-1] != '(')
			open--;
		if (open > v)
			end = open - 1;
		while (end > v && (end[-1] == ' ' || end[-1] == '\t'))
			end--;
	}
	tok = end;
	while (tok > v && tok[-1] != ' ' && tok[-1] != '\t')
		tok--;
	tlen = (size_t)(end - tok);
	if (tlen == 5 && (tok[0] == '+' || tok[0] == '-')) {
		int64_t hh = 0, mm = 0;

		for (int i = 1; i < 5; i++) {
			if (tok[i] < '0' || tok[i] > '9')
				return 0;
		}
		hh = (tok[1] - '0') * 10 + (tok[2] - '0');
		mm = (tok[3] - '0') * 10 + (tok[4] - '0');
		if (mm > 59)
			return 0;
		return (tok[0] == '-' ? -1 : 1) * (hh * 3600 + mm * 60);
	}
	for (size_t i = 0; i < sizeof(names) / sizeof(names[0]); i++) {
		if (strlen(names[i].name) == tlen &&
		    strncasecmp(tok, names[i].name, tlen) == 0)
			return (int64_t)names[i].hours * 3600;
	}
	return 0;
}

static bool zone_cb(void *arg, const char *v, size_t len)
{
	*(int64_t *)arg = date_zone(v, len);
	return true;
}

static int64_t floor_day(int64_t t)
{
	int64_t d = t / DAY_SECONDS;

	if (t % DAY_SECONDS < 0)
		d--;
	return d * DAY_SECONDS;
}

/* sm_sent_day(header text, sent_date): NULL without a sent date. */
static void fn_sent_day(sqlite3_context *ctx, int argc, sqlite3_value **argv)
{
	const char *text = (const char *)sqlite3_value_text(argv[0]);
	int64_t sent, zone = 0;

	(void)argc;
	if (sqlite3_value_type(argv[1]) == SQLITE_NULL) {
		sqlite3_result_null(ctx);
		return;
	}
	sent = sqlite3_value_int64(argv[1]);
	if (text != NULL)
		(void)search_header_find(text,
					 (size_t)sqlite3_value_bytes(argv[0]),
					 "Date", zone_cb, &zone);
	/* Far-off dates cannot overflow: zone is under a day. */
	if (sent > INT64_MIN + 2 * DAY_SECONDS &&
	    sent < INT64_MAX - 2 * DAY_SECONDS)
		sent += zone;
	sqlite3_result_int64(ctx, floor_day(sent));
}

/*
 * Registers the functions once per connection: a statement that names one
 * prepares only if they are there already (registering again while a
 * statement of the caller runs would fail with SQLITE_BUSY).
 */
static int register_functions(eng_store *st)
{
	static const struct {
		const char *name;
		int n_args;
		void (*fn)(sqlite3_context *, int, sqlite3_value **);
	} fns[] = {
		{ "sm_in_set", 2, fn_in_set },
		{ "sm_header_has", 3, fn_header_has },
		{ "sm_contains", 2, fn_contains },
		{ "sm_sent_day", 2, fn_sent_day },
		{ "sm_folded_has", 2, fn_folded_has },
	};
	sqlite3_stmt *stmt = NULL;

	if (sqlite3_prepare_v2(st->db, "SELECT sm_folded_has(NULL, NULL)", -1,
			       &stmt, NULL) == SQLITE_OK) {
		sqlite3_finalize(stmt);
		return 0;
	}
	for (size_t i = 0; i < sizeof(fns) / sizeof(fns[0]); i++) {
		int rc = sqlite3_create_function(st->db, fns[i].name,
			fns[i].n_args, SQLITE_UTF8 | SQLITE_DETERMINISTIC,
			NULL, fns[i].fn, NULL, NULL);

		if (rc != SQLITE_OK)
			return store_err(st, rc, "register search functions");
	}
	return 0;
}

/* ---- from the tree to SQL ---- */

enum bind_type { BIND_INT, BIND_TEXT, BIND_BLOB };

struct bind {
	enum bind_type type;
	int64_t i;
	const char *text;           /* borrowed from the query */
	void *blob;                 /* owned */
	size_t blob_len;
};

struct sqlgen {
	eng_store *st;
	int64_t mailbox_id;
	const uint32_t *seq_map;
	size_t n_seq_map;
	int64_t now;
	int64_t max_uid;            /* -1 until looked up */
	eng_buf sql;
	struct bind *binds;
	size_t n_binds;
	size_t nodes;
	bool need_content;          /* the SQL names content c */
	int err;
};

static void bind_int(struct sqlgen *g, int64_t v)
{
	g->binds = eng_realloc(g->binds, (g->n_binds + 1) * sizeof(*g->binds));
	memset(&g->binds[g->n_binds], 0, sizeof(*g->binds));
	g->binds[g->n_binds].type = BIND_INT;
	g->binds[g->n_binds++].i = v;
	eng_buf_putc(&g->sql, '?');
}

static void bind_text(struct sqlgen *g, const char *s)
{
	g->binds = eng_realloc(g->binds, (g->n_binds + 1) * sizeof(*g->binds));
	memset(&g->binds[g->n_binds], 0, sizeof(*g->binds));
	g->binds[g->n_binds].type = BIND_TEXT;
	g->binds[g->n_binds++].text = s;
	eng_buf_putc(&g->sql, '?');
}

static void bind_blob(struct sqlgen *g, void *blob, size_t len)
{
	g->binds = eng_realloc(g->binds, (g->n_binds + 1) * sizeof(*g->binds));
	memset(&g->binds[g->n_binds], 0, sizeof(*g->binds));
	g->binds[g->n_binds].type = BIND_BLOB;
	g->binds[g->n_binds].blob = blob;
	g->binds[g->n_binds++].blob_len = len;
	eng_buf_putc(&g->sql, '?');
}

static void binds_free(struct sqlgen *g)
{
	for (size_t i = 0; i < g->n_binds; i++)
		free(g->binds[i].blob);
	free(g->binds);
	g->binds = NULL;
	g->n_binds = 0;
}

static int max_uid(struct sqlgen *g, int64_t *uid_r)
{
	sqlite3_stmt *stmt;
	int err, rc;

	if (g->max_uid >= 0) {
		*uid_r = g->max_uid;
		return 0;
	}
	stmt = store_prepare(g->st, "SELECT coalesce(max(uid), 0) FROM message "
			     "WHERE mailbox_id = ?", &err);
	if (stmt == NULL)
		return err;
	sqlite3_bind_int64(stmt, 1, g->mailbox_id);
	rc = sqlite3_step(stmt);
	if (rc == SQLITE_ROW)
		g->max_uid = sqlite3_column_int64(stmt, 0);
	store_release(g->st, stmt);
	if (rc != SQLITE_ROW)
		return store_err(g->st, rc, "max uid");
	*uid_r = g->max_uid;
	return 0;
}

static int range_cmp(const void *a, const void *b)
{
	const eng_uid_range *x = a, *y = b;

	return x->lo < y->lo ? -1 : x->lo > y->lo;
}

/*
 * Adds the UIDs a set names to out: '*' resolved (the highest UID, or the
 * last sequence number), sequence numbers mapped through seq_map.
 */
static int resolve_set(struct sqlgen *g, const eng_query *q, eng_uidset *out)
{
	for (size_t i = 0; i < q->set.count; i++) {
		uint32_t lo = q->set.ranges[i].lo, hi = q->set.ranges[i].hi;
		int64_t top = 0;
		int err;

		if (q->kind == ENG_Q_SEQ) {
			if (g->seq_map == NULL)
				return ENG_EINVAL;
			top = (int64_t)g->n_seq_map;
		} else if (lo == UINT32_MAX || hi == UINT32_MAX) {
			if ((err = max_uid(g, &top)) != 0)
				return err;
		} else {
			top = UINT32_MAX;
		}
		if (lo == UINT32_MAX)
			lo = (uint32_t)top;
		if (hi == UINT32_MAX)
			hi = (uint32_t)top;
		if (lo > hi) {
			uint32_t t = lo;

			lo = hi;
			hi = t;
		}
		if (lo == 0)
			lo = 1;
		if ((int64_t)hi > top)
			hi = (uint32_t)top;
		if (lo > hi)
			continue;
		if (q->kind == ENG_Q_UID) {
			eng_uidset_add(out, lo, hi);
			continue;
		}
		for (uint32_t s = lo; s <= hi; s++) {
			uint32_t uid = g->seq_map[s - 1];
			size_t n = out->count;

			/* Consecutive UIDs extend the last range. */
			if (n > 0 && out->ranges[n - 1].hi + 1 == uid)
				out->ranges[n - 1].hi = uid;
			else
				eng_uidset_add(out, uid, uid);
			if (s == UINT32_MAX)
				break;
		}
	}
	return 0;
}

/* Writes "sm_in_set(m.uid, ?)" for the union of the sets in qs. */
static int gen_set(struct sqlgen *g, const eng_query *const *qs, size_t n)
{
	eng_uidset set = { NULL, 0, 0 };
	uint32_t *blob;
	size_t k = 0;
	int err;

	for (size_t i = 0; i < n; i++) {
		if ((err = resolve_set(g, qs[i], &set)) != 0) {
			eng_uidset_free(&set);
			return err;
		}
	}
	if (set.count == 0) {
		eng_buf_puts(&g->sql, "0");
		return 0;
	}
	qsort(set.ranges, set.count, sizeof(set.ranges[0]), range_cmp);
	blob = eng_malloc(set.count * 2 * sizeof(uint32_t));
	for (size_t i = 0; i < set.count; i++) {
		uint32_t lo = set.ranges[i].lo, hi = set.ranges[i].hi;

		if (k > 0 && (uint64_t)blob[2 * k - 1] + 1 >= lo) {
			if (hi > blob[2 * k - 1])
				blob[2 * k - 1] = hi;
			continue;
		}
		blob[2 * k] = lo;
		blob[2 * k + 1] = hi;
		k++;
	}
	eng_uidset_free(&set);
	eng_buf_puts(&g->sql, "sm_in_set(m.uid, ");
	bind_blob(g, blob, k * 2 * sizeof(uint32_t));
	eng_buf_puts(&g->sql, ")");
	return 0;
}

/*
 * The FTS query for a search string: each word quoted as a phrase with
 * its last token a prefix ("wonder*"), implicit AND. Words without a
 * letter or digit would make FTS find nothing and are left out; '"'
 * cannot be quoted in FTS syntax and separates words. Empty when no word
 * is left (then only the substring check applies).
 */
static char *fts_expr(const char *s)
{
	eng_buf out = ENG_BUF_INIT;
	const char *p = s;

	while (*p != '\0') {
		const char *w;
		bool alnum = false;

		while (*p == ' ' || *p == '\t' || *p == '\r' || *p == '\n' ||
		       *p == '"')
			p++;
		w = p;
		while (*p != '\0' && *p != ' ' && *p != '\t' && *p != '\r' &&
		       *p != '\n' && *p != '"') {
			unsigned char c = (unsigned char)*p;

			if (c >= 0x80 || (c >= '0' && c <= '9') ||
			    ((c | 0x20) >= 'a' && (c | 0x20) <= 'z'))
				alnum = true;
			p++;
		}
		if (!alnum)
			continue;
		if (out.len > 0)
			eng_buf_putc(&out, ' ');
		eng_buf_putc(&out, '"');
		eng_buf_append(&out, w, (size_t)(p - w));
		eng_buf_puts(&out, "*\"");
	}
	eng_buf_puts(&out, "");
	return eng_buf_steal(&out, NULL);
}

static int gen(struct sqlgen *g, const eng_query *q, int depth);

/*
 * Collects the children of an AND/OR through nested nodes of its kind;
 * the nodes it passes through count against ENG_QUERY_MAX_NODES.
 */
static int flatten(struct sqlgen *g, const eng_query *q,
		   enum eng_query_kind kind, const eng_query ***list, size_t *n)
{
	for (size_t i = 0; i < q->n_children; i++) {
		const eng_query *c = q->children[i];
		int err;

		if (c == NULL)
			return ENG_EINVAL;
		if (c->kind == kind) {
			if (++g->nodes > ENG_QUERY_MAX_NODES)
				return ENG_ELIMIT;
			if ((err = flatten(g, c, kind, list, n)) != 0)
				return err;
			continue;
		}
		*list = eng_realloc(*list, (*n + 1) * sizeof(**list));
		(*list)[(*n)++] = c;
	}
	return 0;
}

/* Writes list[0..n) joined by op as a balanced tree. */
static int gen_balanced(struct sqlgen *g, const eng_query *const *list,
			size_t n, const char *op, int depth)
{
	int err;

	if (n == 1)
		return gen(g, list[0], depth);
	eng_buf_putc(&g->sql, '(');
	if ((err = gen_balanced(g, list, n / 2, op, depth)) != 0)
		return err;
	eng_buf_puts(&g->sql, op);
	if ((err = gen_balanced(g, list + n / 2, n - n / 2, op, depth)) != 0)
		return err;
	eng_buf_putc(&g->sql, ')');
	return 0;
}

static int gen_bool(struct sqlgen *g, const eng_query *q, int depth)
{
	const eng_query **list = NULL, **rest = NULL, **sets = NULL;
	size_t n = 0, n_rest = 0, n_sets = 0;
	bool is_or = q->kind == ENG_Q_OR;
	int err = 0;

	if ((err = flatten(g, q, q->kind, &list, &n)) != 0) {
		free(list);
		return err;
	}
	if (n == 0) {
		eng_buf_puts(&g->sql, is_or ? "0" : "1");
		return 0;
	}
	/* Under OR, the UID and sequence sets become one set. */
	for (size_t i = 0; i < n; i++) {
		bool set = is_or && (list[i]->kind == ENG_Q_UID ||
				     list[i]->kind == ENG_Q_SEQ);
		const eng_query ***dst = set ? &sets : &rest;
		size_t *dn = set ? &n_sets : &n_rest;

		*dst = eng_realloc(*dst, (*dn + 1) * sizeof(**dst));
		(*dst)[(*dn)++] = list[i];
	}
	eng_buf_putc(&g->sql, '(');
	if (n_sets > 0) {
		err = gen_set(g, sets, n_sets);
		if (err == 0 && n_rest > 0)
			eng_buf_puts(&g->sql, " OR ");
	}
	if (err == 0 && n_rest > 0)
		err = gen_balanced(g, rest, n_rest, is_or ? " OR " : " AND ",
				   depth + 1);
	eng_buf_putc(&g->sql, ')');
	free(list);
	free(rest);
	free(sets);
	return err;
}

/*
 * The decoded header text of the content. FTS4 keeps the text in its
 * shadow table fts_content (docid, c0header, c1body); reading the fts
 * table itself goes through the FTS module, which loads (and, in an
 * encrypted store, decrypts) the whole row, body text included, for one
 * column. Reading c0header from the shadow table directly is the same
 * stored value without the body's overflow pages. legacy_header_scan
 * (eng_search_legacy_header_scan, for tests and benchmarks) restores the
 * read through the FTS module, to prove both give the same answers.
 */
static const char fts_header_direct[] =
	"(SELECT c0header FROM fts_content WHERE docid = m.content_id)";
static const char fts_header_module[] =
	"(SELECT header FROM fts WHERE docid = m.content_id)";
static bool legacy_header_scan;

void eng_search_legacy_header_scan(bool on)
{
	legacy_header_scan = on;
}

#define fts_header \
	(legacy_header_scan ? fts_header_module : fts_header_direct)

static bool header_fields_off;

void eng_search_header_fields(bool on)
{
	header_fields_off = !on;
}
static const char fts_body[] =
	"(SELECT body FROM fts WHERE docid = m.content_id)";

static void gen_day(struct sqlgen *g, const char *expr, enum eng_query_kind k,
		    int64_t day, bool nullable)
{
	if (nullable)
		eng_buf_puts(&g->sql, "coalesce(");
	eng_buf_putc(&g->sql, '(');
	eng_buf_puts(&g->sql, expr);
	switch (k) {
	case ENG_Q_BEFORE:
	case ENG_Q_SENTBEFORE:
	case ENG_Q_SAVEDBEFORE:
		eng_buf_puts(&g->sql, " < ");
		bind_int(g, day);
		break;
	case ENG_Q_SINCE:
	case ENG_Q_SENTSINCE:
	case ENG_Q_SAVEDSINCE:
		eng_buf_puts(&g->sql, " >= ");
		bind_int(g, day);
		break;
	default:
		eng_buf_puts(&g->sql, " BETWEEN ");
		bind_int(g, day);
		eng_buf_puts(&g->sql, " AND ");
		bind_int(g, day + DAY_SECONDS - 1);
		break;
	}
	eng_buf_putc(&g->sql, ')');
	if (nullable)
		eng_buf_puts(&g->sql, ", 0)");
}

static int gen_fts(struct sqlgen *g, const eng_query *q)
{
	char *expr;

	if (q->text == NULL)
		return ENG_EINVAL;
	expr = fts_expr(q->text);
	eng_buf_putc(&g->sql, '(');
	if (*expr != '\0') {
		/* The expression is a bound value; only our quoting makes it
		 * FTS syntax. It lives in a blob slot so that it is freed. */
		size_t len = strlen(expr) + 1;

		eng_buf_puts(&g->sql, q->kind == ENG_Q_BODY ?
			     "m.content_id IN (SELECT docid FROM fts WHERE "
			     "body MATCH " :
			     "m.content_id IN (SELECT docid FROM fts WHERE "
			     "fts MATCH ");
		bind_blob(g, expr, len);
		g->binds[g->n_binds - 1].type = BIND_TEXT;
		g->binds[g->n_binds - 1].text = expr;
		eng_buf_puts(&g->sql, ") AND ");
	} else {
		free(expr);
	}
	eng_buf_puts(&g->sql, "(sm_contains(");
	eng_buf_puts(&g->sql, fts_body);
	eng_buf_puts(&g->sql, ", ");
	bind_text(g, q->text);
	eng_buf_puts(&g->sql, ")");
	if (q->kind == ENG_Q_TEXT) {
		eng_buf_puts(&g->sql, " OR sm_contains(");
		eng_buf_puts(&g->sql, fts_header);
		eng_buf_puts(&g->sql, ", ");
		bind_text(g, q->text);
		eng_buf_puts(&g->sql, ")");
	}
	eng_buf_puts(&g->sql, "))");
	return 0;
}

/*
 * HEADER of a field table header_field holds (engine/search_fields.c):
 * its folded values against the needle folded here, the same answer as
 * sm_header_has over the header text without reading it.
 */
static void gen_header_field(struct sqlgen *g, const eng_query *q)
{
	eng_buf needle = ENG_BUF_INIT;
	size_t len;

	search_fold_append(&needle, q->text, strlen(q->text));
	len = needle.len;
	eng_buf_puts(&g->sql, "EXISTS (SELECT 1 FROM header_field h WHERE "
		     "h.name = ");
	bind_text(g, search_field_stored(q->field));
	eng_buf_puts(&g->sql, " AND h.content_id = m.content_id AND "
		     "sm_folded_has(h.value, ");
	bind_blob(g, eng_buf_steal(&needle, NULL), len);
	eng_buf_puts(&g->sql, "))");
}

static int gen(struct sqlgen *g, const eng_query *q, int depth)
{
	const eng_query *self = q;
	int err;

	if (q == NULL)
		return ENG_EINVAL;
	if (depth > ENG_QUERY_MAX_DEPTH || ++g->nodes > ENG_QUERY_MAX_NODES)
		return ENG_ELIMIT;
	switch (q->kind) {
	case ENG_Q_ALL:
	case ENG_Q_SAVEDATESUPPORTED:
		eng_buf_puts(&g->sql, "1");
		return 0;
	case ENG_Q_AND:
	case ENG_Q_OR:
		return gen_bool(g, q, depth);
	case ENG_Q_NOT:
		if (q->n_children != 1)
			return ENG_EINVAL;
		eng_buf_puts(&g->sql, "NOT (");
		if ((err = gen(g, q->children[0], depth + 1)) != 0)
			return err;
		eng_buf_putc(&g->sql, ')');
		return 0;
	case ENG_Q_FLAG:
	case ENG_Q_UNFLAG:
		if (q->flag == 0 || (q->flag & (q->flag - 1)) != 0 ||
		    (q->flag & ~(uint32_t)ENG_F_ALL) != 0)
			return ENG_EINVAL;
		eng_buf_puts(&g->sql, "(m.flags & ");
		bind_int(g, q->flag);
		eng_buf_puts(&g->sql, q->kind == ENG_Q_FLAG ? ") != 0" : ") = 0");
		return 0;
	case ENG_Q_KEYWORD:
	case ENG_Q_UNKEYWORD:
		if (q->text == NULL)
			return ENG_EINVAL;
		/* keyword.name is COLLATE NOCASE: IMAP keywords ignore case. */
		eng_buf_puts(&g->sql, q->kind == ENG_Q_KEYWORD ? "" : "NOT ");
		eng_buf_puts(&g->sql, "EXISTS (SELECT 1 FROM message_keyword mk "
			     "JOIN keyword k ON k.id = mk.keyword_id WHERE "
			     "mk.message_id = m.id AND k.name = ");
		bind_text(g, q->text);
		eng_buf_puts(&g->sql, ")");
		return 0;
	case ENG_Q_UID:
	case ENG_Q_SEQ:
		return gen_set(g, &self, 1);
	case ENG_Q_BEFORE:
	case ENG_Q_ON:
	case ENG_Q_SINCE:
		gen_day(g, "m.internal_date", q->kind, q->number, false);
		return 0;
	case ENG_Q_SENTBEFORE:
	case ENG_Q_SENTON:
	case ENG_Q_SENTSINCE:
		{
			eng_buf e = ENG_BUF_INIT;
			enum eng_query_kind k = q->kind == ENG_Q_SENTBEFORE ?
				ENG_Q_BEFORE : q->kind == ENG_Q_SENTON ?
				ENG_Q_ON : ENG_Q_SINCE;

			g->need_content = true;
			eng_buf_printf(&e, "sm_sent_day(%s, c.sent_date)",
				       fts_header);
			gen_day(g, e.data, k, q->number, true);
			eng_buf_free(&e);
		}
		return 0;
	case ENG_Q_SAVEDBEFORE:
	case ENG_Q_SAVEDON:
	case ENG_Q_SAVEDSINCE:
		gen_day(g, "m.save_date", q->kind == ENG_Q_SAVEDBEFORE ?
			ENG_Q_BEFORE : q->kind == ENG_Q_SAVEDON ? ENG_Q_ON :
			ENG_Q_SINCE, q->number, false);
		return 0;
	case ENG_Q_LARGER:
	case ENG_Q_SMALLER:
		eng_buf_puts(&g->sql, q->kind == ENG_Q_LARGER ? "m.size > " :
			     "m.size < ");
		bind_int(g, q->number);
		return 0;
	case ENG_Q_HEADER:
		if (q->field == NULL || q->text == NULL || q->field[0] == '\0' ||
		    strchr(q->field, ':') != NULL)
			return ENG_EINVAL;
		if (search_field_stored(q->field) != NULL &&
		    !header_fields_off && !legacy_header_scan) {
			gen_header_field(g, q);
			return 0;
		}
		eng_buf_printf(&g->sql, "sm_header_has(%s, ", fts_header);
		bind_text(g, q->field);
		eng_buf_puts(&g->sql, ", ");
		bind_text(g, q->text);
		eng_buf_puts(&g->sql, ")");
		return 0;
	case ENG_Q_BODY:
	case ENG_Q_TEXT:
		return gen_fts(g, q);
	case ENG_Q_MODSEQ:
		eng_buf_puts(&g->sql, "m.modseq >= ");
		bind_int(g, q->number);
		return 0;
	case ENG_Q_OLDER:
	case ENG_Q_YOUNGER:
		if (q->number < 0)
			return ENG_EINVAL;
		eng_buf_puts(&g->sql, q->kind == ENG_Q_OLDER ?
			     "m.internal_date < " : "m.internal_date >= ");
		bind_int(g, g->now - q->number);
		return 0;
	case ENG_Q_EMAILID:
		eng_buf_puts(&g->sql, "m.content_id = ");
		bind_int(g, q->number);
		return 0;
	case ENG_Q_THREADID:
		eng_buf_puts(&g->sql, "m.thread_id = ");
		bind_int(g, q->number);
		return 0;
	}
	return ENG_EINVAL;
}

/* The local part of an address column, "" when absent (RFC 5256). */
#define LOCAL_PART(col) \
	"CASE WHEN instr(coalesce(" col ", ''), '@') > 0 THEN substr(" col \
	", 1, instr(" col ", '@') - 1) ELSE coalesce(" col ", '') END " \
	"COLLATE NOCASE"

static const char *sort_expr(enum eng_sort_field f)
{
	switch (f) {
	case ENG_SORT_ARRIVAL:
		return "m.internal_date";
	case ENG_SORT_CC:
		return LOCAL_PART("c.cc_addr");
	case ENG_SORT_DATE:
		return "coalesce(c.sent_date, m.internal_date)";
	case ENG_SORT_FROM:
		return LOCAL_PART("c.from_addr");
	case ENG_SORT_SIZE:
		return "m.size";
	case ENG_SORT_SUBJECT:
		return "coalesce(c.base_subject, '') COLLATE NOCASE";
	case ENG_SORT_TO:
		return LOCAL_PART("c.to_addr");
	case ENG_SORT_DISPLAYFROM:
		return "coalesce(c.from_display, '') COLLATE NOCASE";
	case ENG_SORT_DISPLAYTO:
		return "coalesce(c.to_display, '') COLLATE NOCASE";
	}
	return NULL;
}

/* The whole statement: the FROM clause, then the WHERE and ORDER BY. */
static char *with_from(const struct sqlgen *g)
{
	eng_buf out = ENG_BUF_INIT;

	eng_buf_puts(&out, "SELECT m.uid, m.modseq FROM message m");
	if (g->need_content)
		eng_buf_puts(&out, " JOIN content c ON c.id = m.content_id");
	eng_buf_append(&out, g->sql.data, g->sql.len);
	return eng_buf_steal(&out, NULL);
}

int eng_search(eng_store *st, int64_t mailbox_id, const eng_query *query,
	       const eng_sort_key *sort, size_t n_sort,
	       const uint32_t *seq_map, size_t n_seq_map,
	       uint32_t **uids_r, size_t *n_r, uint64_t *highest_modseq_r)
{
	struct sqlgen g;
	sqlite3_stmt *stmt = NULL;
	char *sql = NULL;
	uint32_t *uids = NULL;
	size_t n = 0, cap = 0;
	uint64_t highest = 0;
	int err, rc;

	*uids_r = NULL;
	*n_r = 0;
	if (highest_modseq_r != NULL)
		*highest_modseq_r = 0;
	if (n_sort > 16)
		return ENG_ELIMIT;
	memset(&g, 0, sizeof(g));
	g.st = st;
	g.mailbox_id = mailbox_id;
	g.seq_map = seq_map;
	g.n_seq_map = seq_map != NULL ? n_seq_map : 0;
	g.now = (int64_t)time(NULL);
	g.max_uid = -1;
	if ((err = register_functions(st)) != 0)
		return err;
	/* The FROM clause goes in front at the end: content c is joined
	 * only if a key or sort key needs it (its rows are wide). */
	eng_buf_puts(&g.sql, " WHERE m.mailbox_id = ");
	bind_int(&g, mailbox_id);
	if (query != NULL) {
		eng_buf_puts(&g.sql, " AND ");
		if ((err = gen(&g, query, 0)) != 0)
			goto out;
	}
	eng_buf_puts(&g.sql, " ORDER BY ");
	for (size_t i = 0; i < n_sort; i++) {
		const char *e = sort_expr(sort[i].field);

		if (e == NULL) {
			err = ENG_EINVAL;
			goto out;
		}
		/* A sort expression names content as "c.column". */
		if (strstr(e, "c.") != NULL)
			g.need_content = true;
		eng_buf_puts(&g.sql, e);
		eng_buf_puts(&g.sql, sort[i].reverse ? " DESC, " : " ASC, ");
	}
	eng_buf_puts(&g.sql, "m.uid");
	sql = with_from(&g);
	if (g.n_binds > (size_t)sqlite3_limit(st->db,
					      SQLITE_LIMIT_VARIABLE_NUMBER, -1)) {
		err = ENG_ELIMIT;
		goto out;
	}
	if ((stmt = store_prepare_once(st, sql, &err)) == NULL)
		goto out;
	for (size_t i = 0; i < g.n_binds; i++) {
		const struct bind *b = &g.binds[i];
		int col = (int)i + 1;

		if (b->type == BIND_INT)
			sqlite3_bind_int64(stmt, col, b->i);
		else if (b->type == BIND_TEXT)
			sqlite3_bind_text(stmt, col, b->text, -1, SQLITE_STATIC);
		else
			sqlite3_bind_blob(stmt, col, b->blob, (int)b->blob_len,
					  SQLITE_STATIC);
	}
	while ((rc = sqlite3_step(stmt)) == SQLITE_ROW) {
		uint64_t modseq = (uint64_t)sqlite3_column_int64(stmt, 1);

		if (n == cap) {
			cap = cap != 0 ? cap * 2 : 64;
			uids = eng_realloc(uids, cap * sizeof(uint32_t));
		}
		uids[n++] = (uint32_t)sqlite3_column_int64(stmt, 0);
		if (modseq > highest)
			highest = modseq;
	}
	if (rc != SQLITE_DONE) {
		err = store_err(st, rc, "search");
		free(uids);
		goto out;
	}
	*uids_r = uids;
	*n_r = n;
	if (highest_modseq_r != NULL)
		*highest_modseq_r = highest;
	err = 0;
out:
	store_release(st, stmt);
	free(sql);
	binds_free(&g);
	eng_buf_free(&g.sql);
	return err;
}
