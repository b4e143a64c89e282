/*
 * Helpers every IMAP command file shares (the "Helpers" of imap.h):
 * sequence sets, argument accessors, mailbox names, string / flag / date
 * writers and parsers, and the reading of SELECT's flag runs. I/O-free: nothing here talks to a socket or to
 * sqlited, so it lives in sm_imap beside the parser and is unit tested on
 * its own (tests/unit/test_imap_util.c).
 *
 * Rules kept here, once for every command:
 *
 *  - Sequence sets. "*" is the highest sequence number (the view's size)
 *    or, for UIDs, the highest UID in the view (UINT32_MAX when the view is
 *    empty). A range may be written backwards ("5:2"). Sequence numbers past
 *    the end of the view are dropped (RFC 9051 says SHOULD BAD; the contract
 *    of imap.h chose to act on what exists), 0 is an error. "$" (RFC 5182
 *    SEARCHRES) stands alone and is the saved result; before any SEARCH
 *    saved one, and after a SELECT, it is the empty set (RFC 5182 2.1: "$"
 *    on an empty result is not an error, the command acts on no message).
 *    For sequence-number commands "$" only keeps UIDs still in the view.
 *  - Mailbox names go to sqlited as UTF-8 with "/" as separator, INBOX
 *    upper-cased in its first level ("inbox/sub" -> "INBOX/sub"). Refused:
 *    invalid modified UTF-7 (without UTF8=ACCEPT) or invalid UTF-8, control
 *    characters (NUL, CR, LF...), the wildcards "*" and "%", an empty level
 *    ("a//b", a leading "/"), and more than IMAP_MAILBOX_MAX bytes. One
 *    trailing "/" is dropped (RFC 3501 6.3.3: "CREATE foo/" creates foo).
 *  - Strings. imap_put_string has no session, so it quotes only text that
 *    is safe in a quoted string for every client: 7-bit, no CR/LF/NUL, at
 *    most IMAP_QUOTED_MAX bytes; anything else (8-bit UTF-8 included) is a
 *    literal. imap_put_mailbox knows the session and also quotes UTF-8
 *    names once UTF8=ACCEPT is enabled (RFC 6855 3).
 *  - Flags. The system flags \Seen \Answered \Flagged \Deleted \Draft (any
 *    case); \Recent and unknown system flags are refused, as are keywords
 *    that are not atoms, longer than ENG_KEYWORD_MAX bytes, or more than
 *    ENG_KEYWORDS_PER_MESSAGE of them (duplicates, compared ignoring case,
 *    count once).
 *  - Dates (RFC 3501 9): date-time "dd-Mon-yyyy hh:mm:ss +zzzz" where the
 *    day may also be " d" or "d"; date "d-Mon-yyyy". Written back as
 *    "\" 1-Feb-1994 21:52:25 +0000\"" (UTC, day padded with a space,
 *    quotes included).
 */
#include "imap.h"

#include "eng_error.h"
#include "rpc_proto.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

/* Longest mailbox name (UTF-8 bytes). */
#define IMAP_MAILBOX_MAX 1024
/* Longer text goes out as a literal even when it could be quoted. */
#define IMAP_QUOTED_MAX 1024

/* ---- Sequence sets ---- */

/* One number of a set: digits (1..UINT32_MAX) or "*" (*star_r). */
static int seq_number(const char **pp, uint32_t *n_r, bool *star_r)
{
	const char *p = *pp;
	uint64_t n = 0;

	*star_r = false;
	if (*p == '*') {
		*star_r = true;
		*n_r = 0;
		*pp = p + 1;
		return 0;
	}
	if (*p < '1' || *p > '9')
		return ENG_EINVAL;
	while (*p >= '0' && *p <= '9') {
		n = n * 10 + (uint64_t)(*p - '0');
		if (n > UINT32_MAX)
			return ENG_EINVAL;
		p++;
	}
	*n_r = (uint32_t)n;
	*pp = p;
	return 0;
}

static int range_cmp(const void *a, const void *b)
{
	const eng_uid_range *x = a, *y = b;

	if (x->lo != y->lo)
		return x->lo < y->lo ? -1 : 1;
	return x->hi < y->hi ? -1 : x->hi > y->hi;
}

/* Sorts the ranges and merges those that touch or overlap. */
static void uidset_normalise(eng_uidset *set)
{
	size_t out = 0;

	if (set->count < 2)
		return;
	qsort(set->ranges, set->count, sizeof(*set->ranges), range_cmp);
	for (size_t i = 1; i < set->count; i++) {
		eng_uid_range *last = &set->ranges[out];
		const eng_uid_range *r = &set->ranges[i];

		if (last->hi == UINT32_MAX || r->lo <= last->hi + 1) {
			if (r->hi > last->hi)
				last->hi = r->hi;
		} else {
			set->ranges[++out] = *r;
		}
	}
	set->count = out + 1;
}

/* Adds the UIDs of sequence numbers lo..hi (1-based, clipped to the view):
 * since the view's UIDs ascend and new messages only get higher UIDs, the
 * UID range from the first to the last holds exactly those messages. */
static void add_seq_range(const imap_selected *sel, uint32_t lo, uint32_t hi,
			  eng_uidset *set)
{
	if (lo > hi) {
		uint32_t t = lo;

		lo = hi;
		hi = t;
	}
	if (sel == NULL || lo > sel->n)
		return;
	if (hi > sel->n)
		hi = (uint32_t)sel->n;
	eng_uidset_add(set, sel->uids[lo - 1], sel->uids[hi - 1]);
}

/* "$": the saved result, for sequence numbers only the UIDs still seen. */
static void add_saved(const imap_selected *sel, bool uid, eng_uidset *set)
{
	if (sel == NULL || !sel->has_saved)
		return;
	for (size_t i = 0; i < sel->n_saved; i++) {
		uint32_t u = sel->saved[i];

		if (!uid && imap_seq_of_uid(sel, u) == 0)
			continue;
		if (set->count > 0 && set->ranges[set->count - 1].hi + 1 == u)
			set->ranges[set->count - 1].hi = u;
		else
			eng_uidset_add(set, u, u);
	}
}

int imap_seqset_to_uids(const imap_session *s, const imap_arg *arg, bool uid,
			eng_uidset *set_r)
{
	const imap_selected *sel = s != NULL ? s->sel : NULL;
	const char *p = imap_arg_atom(arg);
	uint32_t star;

	memset(set_r, 0, sizeof(*set_r));
	if (p == NULL || *p == '\0')
		return ENG_EINVAL;
	if (strcmp(p, "$") == 0) {
		add_saved(sel, uid, set_r);
		return 0;
	}
	if (uid)
		star = sel != NULL && sel->n > 0 ? sel->uids[sel->n - 1] :
		       UINT32_MAX;
	else
		star = sel != NULL ? (uint32_t)sel->n : 0;
	for (;;) {
		uint32_t lo, hi;
		bool lo_star, hi_star;

		if (seq_number(&p, &lo, &lo_star) != 0)
			goto bad;
		hi = lo;
		hi_star = lo_star;
		if (*p == ':') {
			p++;
			if (seq_number(&p, &hi, &hi_star) != 0)
				goto bad;
		}
		if (lo_star)
			lo = star;
		if (hi_star)
			hi = star;
		if (uid)
			eng_uidset_add(set_r, lo, hi);
		else if (lo != 0 || hi != 0)   /* "*" of an empty view: none */
			add_seq_range(sel, lo == 0 ? hi : lo, hi == 0 ? lo : hi,
				      set_r);
		if (*p == '\0')
			break;
		if (*p++ != ',')
			goto bad;
	}
	uidset_normalise(set_r);
	return 0;
bad:
	eng_uidset_free(set_r);
	return ENG_EINVAL;
}

uint32_t imap_seq_of_uid(const imap_selected *sel, uint32_t uid)
{
	size_t lo = 0, hi;

	if (sel == NULL)
		return 0;
	hi = sel->n;
	while (lo < hi) {
		size_t mid = lo + (hi - lo) / 2;

		if (sel->uids[mid] == uid)
			return (uint32_t)(mid + 1);
		if (sel->uids[mid] < uid)
			lo = mid + 1;
		else
			hi = mid;
	}
	return 0;
}

int imap_flag_runs_first_unseen(const rpc_view *resp, size_t n,
				size_t *first_unseen_r)
{
	size_t done = 0, first_unseen = 0;
	const rpc_field *f;
	rpc_iter it;

	rpc_iter_init(&it, resp);
	while ((f = rpc_iter_next(&it, RPC_T_FLAG_RUNS)) != NULL) {
		if (f->type != RPC_W_BYTES || f->u % 8 != 0)
			return ENG_EIO;
		for (size_t i = 0; i < f->u / 4; i += 2) {
			uint32_t len = rpc_uids_at(f->data, i);

			if (len == 0 || len > n - done)
				return ENG_EIO;
			if (first_unseen == 0 &&
			    (rpc_uids_at(f->data, i + 1) & ENG_F_SEEN) == 0)
				first_unseen = done + 1;
			done += len;
		}
	}
	if (done != n)
		return ENG_EIO;
	*first_unseen_r = first_unseen;
	return 0;
}

/* ---- Arguments ---- */

const char *imap_arg_astring(const imap_arg *a)
{
	if (a == NULL || a->s == NULL)
		return NULL;
	switch (a->kind) {
	case IMAP_ARG_ATOM:
	case IMAP_ARG_QUOTED:
		return a->s;
	case IMAP_ARG_LITERAL:
		return memchr(a->s, '\0', a->len) == NULL ? a->s : NULL;
	default:
		return NULL;
	}
}

const char *imap_arg_atom(const imap_arg *a)
{
	return a != NULL && a->kind == IMAP_ARG_ATOM ? a->s : NULL;
}

bool imap_arg_number(const imap_arg *a, uint64_t max, uint64_t *n_r)
{
	const char *p = imap_arg_atom(a);
	uint64_t n = 0;

	if (p == NULL || *p == '\0')
		return false;
	for (; *p != '\0'; p++) {
		uint64_t d;

		if (*p < '0' || *p > '9')
			return false;
		d = (uint64_t)(*p - '0');
		if (n > (max - d) / 10)
			return false;
		n = n * 10 + d;
	}
	*n_r = n;
	return true;
}

/* ---- Mailbox names ---- */

static bool is_ascii(const char *s, size_t len)
{
	for (size_t i = 0; i < len; i++) {
		if ((unsigned char)s[i] >= 0x80)
			return false;
	}
	return true;
}

/* The name as UTF-8, before the rules on its content. */
static int mailbox_decode(const imap_session *s, const char *in, size_t len,
			  char **out_r)
{
	bool utf8 = s != NULL && (s->enabled & IMAP_EN_UTF8) != 0;

	if (!utf8)
		return imap_mutf7_decode(in, len, out_r);
	if (!imap_utf8_valid(in, len))
		return ENG_EMALFORMED;
	/* RFC 6855 3: a UTF8=ACCEPT client may still send modified UTF-7. */
	if (memchr(in, '&', len) != NULL && is_ascii(in, len) &&
	    imap_mutf7_decode(in, len, out_r) == 0)
		return 0;
	*out_r = eng_strndup(in, len);
	return 0;
}

/* The content rules (see the top of the file); may shorten name. */
static int mailbox_check(char *name)
{
	size_t len = strlen(name);

	if (len > 1 && name[len - 1] == '/')
		name[--len] = '\0';
	if (len == 0 || len > IMAP_MAILBOX_MAX || name[0] == '/')
		return ENG_EMALFORMED;
	for (size_t i = 0; i < len; i++) {
		unsigned char c = (unsigned char)name[i];

		if (c < 0x20 || c == 0x7f || c == '*' || c == '%')
			return ENG_EMALFORMED;
		if (c == '/' && (name[i + 1] == '/' || name[i + 1] == '\0'))
			return ENG_EMALFORMED;
	}
	if (strncasecmp(name, "INBOX", 5) == 0 &&
	    (name[5] == '\0' || name[5] == '/'))
		memcpy(name, "INBOX", 5);
	return 0;
}

int imap_mailbox_from_client(const imap_session *s, const imap_arg *a,
			     char **name_r)
{
	const char *in = imap_arg_astring(a);
	char *name = NULL;

	*name_r = NULL;
	/* A mailbox named NIL is an astring too (RFC 3501 9). */
	if (in == NULL && a != NULL && a->kind == IMAP_ARG_NIL &&
	    a->s != NULL)
		in = a->s;
	if (in == NULL || a->len > IMAP_MAILBOX_MAX * 4)
		return ENG_EMALFORMED;
	if (mailbox_decode(s, in, a->len, &name) != 0)
		return ENG_EMALFORMED;
	if (mailbox_check(name) != 0) {
		free(name);
		return ENG_EMALFORMED;
	}
	*name_r = name;
	return 0;
}

/* Quoted if allowed (7-bit text, or 8-bit UTF-8 when utf8), else literal. */
static void put_string(eng_buf *b, const char *s, size_t len, bool utf8)
{
	bool quote = len <= IMAP_QUOTED_MAX;

	for (size_t i = 0; quote && i < len; i++) {
		unsigned char c = (unsigned char)s[i];

		if (c == '\0' || c == '\r' || c == '\n' ||
		    (c >= 0x80 && !utf8))
			quote = false;
	}
	if (quote && utf8 && !is_ascii(s, len) && !imap_utf8_valid(s, len))
		quote = false;
	if (!quote) {
		eng_buf_printf(b, "{%zu}\r\n", len);
		eng_buf_append(b, s, len);
		return;
	}
	eng_buf_reserve(b, len + 2);
	eng_buf_putc(b, '"');
	for (size_t i = 0; i < len; i++) {
		if (s[i] == '"' || s[i] == '\\')
			eng_buf_putc(b, '\\');
		eng_buf_putc(b, s[i]);
	}
	eng_buf_putc(b, '"');
}

void imap_put_mailbox(const imap_session *s, eng_buf *b, const char *name)
{
	char *enc = NULL;

	if (s != NULL && (s->enabled & IMAP_EN_UTF8) != 0) {
		put_string(b, name, strlen(name), true);
		return;
	}
	if (imap_mutf7_encode(name, strlen(name), &enc) != 0) {
		/* sqlited only stores valid UTF-8; never expected. */
		put_string(b, name, strlen(name), false);
		return;
	}
	put_string(b, enc, strlen(enc), false);
	free(enc);
}

void imap_put_string(eng_buf *b, const char *s, size_t len)
{
	if (s == NULL) {
		eng_buf_puts(b, "NIL");
		return;
	}
	put_string(b, s, len, false);
}

void imap_put_nstring(eng_buf *b, const char *s)
{
	imap_put_string(b, s, s != NULL ? strlen(s) : 0);
}

/* ---- Flags ---- */

static const struct {
	const char *name;
	uint32_t bit;
} system_flags[] = {
	{ "\\Seen", ENG_F_SEEN },
	{ "\\Answered", ENG_F_ANSWERED },
	{ "\\Flagged", ENG_F_FLAGGED },
	{ "\\Deleted", ENG_F_DELETED },
	{ "\\Draft", ENG_F_DRAFT },
};

#define N_SYSTEM_FLAGS (sizeof(system_flags) / sizeof(system_flags[0]))

void imap_put_flags(eng_buf *b, uint32_t flags, const char *const *keywords,
		    size_t n_keywords)
{
	bool first = true;

	eng_buf_putc(b, '(');
	for (size_t i = 0; i < N_SYSTEM_FLAGS; i++) {
		if ((flags & system_flags[i].bit) == 0)
			continue;
		if (!first)
			eng_buf_putc(b, ' ');
		eng_buf_puts(b, system_flags[i].name);
		first = false;
	}
	for (size_t i = 0; i < n_keywords; i++) {
		if (!first)
			eng_buf_putc(b, ' ');
		eng_buf_puts(b, keywords[i]);
		first = false;
	}
	eng_buf_putc(b, ')');
}

/* An ATOM-CHAR of RFC 3501 9 (no "]" either: flag-keyword is an atom). */
static bool atom_char(unsigned char c)
{
	return c > 0x20 && c < 0x7f && strchr("(){%*\"\\]", c) == NULL;
}

static bool keyword_valid(const char *kw, size_t len)
{
	if (len == 0 || len > ENG_KEYWORD_MAX)
		return false;
	for (size_t i = 0; i < len; i++) {
		if (!atom_char((unsigned char)kw[i]))
			return false;
	}
	return true;
}

/* One flag into the bits or the keyword array (duplicates kept once). */
static int add_flag(const imap_arg *a, uint32_t *flags, const char **kw,
		    size_t *n_kw)
{
	const char *f = imap_arg_atom(a);

	if (f == NULL)
		return ENG_EINVAL;
	if (f[0] == '\\') {
		for (size_t i = 0; i < N_SYSTEM_FLAGS; i++) {
			if (strcasecmp(f, system_flags[i].name) == 0) {
				*flags |= system_flags[i].bit;
				return 0;
			}
		}
		return ENG_EINVAL;     /* \Recent, \*, unknown */
	}
	if (!keyword_valid(f, a->len))
		return ENG_EINVAL;
	for (size_t i = 0; i < *n_kw; i++) {
		if (strcasecmp(kw[i], f) == 0)
			return 0;
	}
	if (*n_kw >= ENG_KEYWORDS_PER_MESSAGE)
		return ENG_ELIMIT;
	kw[(*n_kw)++] = f;
	return 0;
}

int imap_parse_flags(const imap_arg *a, uint32_t *flags_r,
		     const char ***keywords_r, size_t *n_keywords_r)
{
	const imap_arg *items = a;
	size_t n = 1, n_kw = 0;
	const char **kw;
	uint32_t flags = 0;
	int err = 0;

	*flags_r = 0;
	*keywords_r = NULL;
	*n_keywords_r = 0;
	if (a == NULL)
		return ENG_EINVAL;
	if (a->kind == IMAP_ARG_LIST) {
		items = a->list;
		n = a->n_list;
	}
	kw = eng_malloc(sizeof(*kw) * ENG_KEYWORDS_PER_MESSAGE);
	for (size_t i = 0; i < n && err == 0; i++)
		err = add_flag(&items[i], &flags, kw, &n_kw);
	if (err != 0 || n_kw == 0) {
		free(kw);
		if (err == 0)
			*flags_r = flags;
		return err;
	}
	*flags_r = flags;
	*keywords_r = kw;
	*n_keywords_r = n_kw;
	return 0;
}

/* ---- Dates ---- */

static const char months[12][4] = {
	"Jan", "Feb", "Mar", "Apr", "May", "Jun",
	"Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
};

/* Days since 1970-01-01 of a proleptic Gregorian date (H. Hinnant's
 * days_from_civil), so no time zone or libc locale is involved. */
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

static unsigned days_in_month(int64_t y, unsigned m)
{
	static const unsigned char dm[12] = { 31, 28, 31, 30, 31, 30,
					      31, 31, 30, 31, 30, 31 };
	bool leap = (y % 4 == 0 && y % 100 != 0) || y % 400 == 0;

	return m == 2 && leap ? 29 : dm[m - 1];
}

/* Exactly n digits at *pp. */
static bool digits(const char **pp, unsigned n, unsigned *v_r)
{
	unsigned v = 0;

	for (unsigned i = 0; i < n; i++) {
		char c = (*pp)[i];

		if (c < '0' || c > '9')
			return false;
		v = v * 10 + (unsigned)(c - '0');
	}
	*pp += n;
	*v_r = v;
	return true;
}

/* "d-Mon-yyyy" (day " d", "d" or "dd") -> days since the epoch. */
static bool parse_day(const char **pp, int64_t *days_r)
{
	const char *p = *pp;
	unsigned d, m, y, nd;

	if (*p == ' ')
		p++;
	nd = p[0] >= '0' && p[0] <= '9' && p[1] >= '0' && p[1] <= '9' ? 2 : 1;
	if (!digits(&p, nd, &d) || *p++ != '-')
		return false;
	for (m = 0; m < 12; m++) {
		if (strncasecmp(p, months[m], 3) == 0)
			break;
	}
	if (m == 12 || p[3] != '-')
		return false;
	p += 4;
	if (!digits(&p, 4, &y) || d < 1 || d > days_in_month(y, m + 1))
		return false;
	*days_r = days_from_civil(y, m + 1, d);
	*pp = p;
	return true;
}

int imap_parse_date(const char *s, int64_t *t_r)
{
	int64_t days;

	if (s == NULL || !parse_day(&s, &days) || *s != '\0')
		return ENG_EINVAL;
	*t_r = days * 86400;
	return 0;
}

int imap_parse_datetime(const char *s, int64_t *t_r)
{
	int64_t days, zone;
	unsigned h, mi, se, zh, zm;
	char sign;

	if (s == NULL || !parse_day(&s, &days) || *s++ != ' ')
		return ENG_EINVAL;
	if (!digits(&s, 2, &h) || *s++ != ':' || !digits(&s, 2, &mi) ||
	    *s++ != ':' || !digits(&s, 2, &se) || *s++ != ' ')
		return ENG_EINVAL;
	sign = *s++;
	if ((sign != '+' && sign != '-') || !digits(&s, 2, &zh) ||
	    !digits(&s, 2, &zm) || *s != '\0')
		return ENG_EINVAL;
	if (h > 23 || mi > 59 || se > 60 || zh > 23 || zm > 59)
		return ENG_EINVAL;
	zone = (int64_t)zh * 3600 + zm * 60;
	*t_r = days * 86400 + h * 3600 + mi * 60 + se -
	       (sign == '+' ? zone : -zone);
	return 0;
}

void imap_put_datetime(eng_buf *b, int64_t t)
{
	/* civil_from_days, the inverse of days_from_civil. */
	int64_t days = t >= 0 ? t / 86400 : -((-t + 86399) / 86400);
	int64_t secs = t - days * 86400, z = days + 719468, era, y;
	unsigned doe, yoe, doy, mp, d, m;

	era = (z >= 0 ? z : z - 146096) / 146097;
	doe = (unsigned)(z - era * 146097);
	yoe = (doe - doe / 1460 + doe / 36524 - doe / 146096) / 365;
	y = (int64_t)yoe + era * 400;
	doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
	mp = (5 * doy + 2) / 153;
	d = doy - (153 * mp + 2) / 5 + 1;
	m = mp < 10 ? mp + 3 : mp - 9;
	y += m <= 2;
	if (y < 0 || y > 9999) {
		/* Not expressible with a 4-digit year: the epoch instead. */
		eng_buf_puts(b, "\" 1-Jan-1970 00:00:00 +0000\"");
		return;
	}
	eng_buf_printf(b, "\"%2u-%s-%04d %02d:%02d:%02d +0000\"", d,
		       months[m - 1], (int)y, (int)(secs / 3600),
		       (int)(secs / 60 % 60), (int)(secs % 60));
}
