/* UID sets: ranges as IMAP writes them ("1:5,7,9:*"). */
#include "store_private.h"
#include "eng_error.h"

#include <stdlib.h>
#include <string.h>

/* Past this many ranges the SQL filter is only the bounding range and
 * callers filter exactly with eng_uidset_contains(). */
#define UIDSET_SQL_MAX_RANGES 64

void eng_uidset_add(eng_uidset *set, uint32_t lo, uint32_t hi)
{
	if (lo > hi) {
		uint32_t t = lo;

		lo = hi;
		hi = t;
	}
	if (set->count == set->cap) {
		set->cap = set->cap != 0 ? set->cap * 2 : 8;
		set->ranges = eng_realloc(set->ranges,
					  set->cap * sizeof(*set->ranges));
	}
	set->ranges[set->count].lo = lo;
	set->ranges[set->count].hi = hi;
	set->count++;
}

bool eng_uidset_contains(const eng_uidset *set, uint32_t uid)
{
	for (size_t i = 0; i < set->count; i++) {
		if (uid >= set->ranges[i].lo && uid <= set->ranges[i].hi)
			return true;
	}
	return false;
}

void eng_uidset_free(eng_uidset *set)
{
	free(set->ranges);
	memset(set, 0, sizeof(*set));
}

static int parse_number(const char **pp, uint32_t *n_r)
{
	const char *p = *pp;
	uint64_t n = 0;

	if (*p == '*') {
		*n_r = UINT32_MAX;
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

int eng_uidset_parse(const char *text, eng_uidset *set)
{
	const char *p = text;

	memset(set, 0, sizeof(*set));
	for (;;) {
		uint32_t lo, hi;

		if (parse_number(&p, &lo) != 0)
			goto bad;
		hi = lo;
		if (*p == ':') {
			p++;
			if (parse_number(&p, &hi) != 0)
				goto bad;
		}
		eng_uidset_add(set, lo, hi);
		if (*p == '\0')
			return 0;
		if (*p++ != ',')
			goto bad;
	}
bad:
	eng_uidset_free(set);
	return ENG_EINVAL;
}

void store_uidset_sql(const eng_uidset *set, eng_buf *sql)
{
	if (set == NULL)
		return;
	if (set->count == 0) {
		eng_buf_puts(sql, " AND 0");
		return;
	}
	if (set->count > UIDSET_SQL_MAX_RANGES) {
		uint32_t lo = UINT32_MAX, hi = 0;

		for (size_t i = 0; i < set->count; i++) {
			if (set->ranges[i].lo < lo)
				lo = set->ranges[i].lo;
			if (set->ranges[i].hi > hi)
				hi = set->ranges[i].hi;
		}
		eng_buf_printf(sql, " AND uid BETWEEN %u AND %u", lo, hi);
		return;
	}
	eng_buf_puts(sql, " AND (");
	for (size_t i = 0; i < set->count; i++) {
		if (i > 0)
			eng_buf_puts(sql, " OR ");
		if (set->ranges[i].lo == set->ranges[i].hi)
			eng_buf_printf(sql, "uid = %u", set->ranges[i].lo);
		else
			eng_buf_printf(sql, "uid BETWEEN %u AND %u",
				       set->ranges[i].lo, set->ranges[i].hi);
	}
	eng_buf_puts(sql, ")");
}
