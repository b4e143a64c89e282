/*
 * Snapshots (bk.h): listing them (bk_snapshots), retention (bk_prune:
 * daily and weekly snapshots kept, then the objects no kept manifest
 * refers to deleted), and the subkeys every piece derives from the backup
 * key. The format and the map of backup/ are in bk_private.h.
 */
#include <sodium.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "bk_private.h"
#include "eng_error.h"

/* ---- keys and sizes (bk_private.h) ---- */

void bk_subkey(uint8_t out[32], const uint8_t *key, int which)
{
	static const char *ctx[] = { NULL, "sm-bkobj", "sm-bknam", "sm-bkman" };

	crypto_kdf_derive_from_key(out, 32, (uint64_t)which, ctx[which], key);
}

uint8_t *bk_secret_new(size_t n)
{
	uint8_t *p = sodium_malloc(n);

	if (p == NULL)
		abort();
	return p;
}

uint64_t bk_n_chunks(uint64_t size)
{
	return size == 0 ? 1 : (size + BK_CHUNK_BYTES - 1) / BK_CHUNK_BYTES;
}


/* ---- snapshots ---- */

void bk_strv_free(char **v, size_t n)
{
	for (size_t i = 0; i < n; i++)
		free(v[i]);
	free(v);
}

static int cmp_str(const void *a, const void *b);

int bk_snapshots(bk_target *t, char ***ids_r, size_t *n_r)
{
	char **names;
	size_t n, k = 0;
	int r = bk_target_list(t, "snapshots/", &names, &n);

	*ids_r = NULL;
	*n_r = 0;
	if (r < 0)
		return r;
	for (size_t i = 0; i < n; i++) {
		const char *b = names[i] + strlen("snapshots/");
		size_t bl = strlen(b);
		const char *suf = ".manifest";

		if (bl > strlen(suf) && bl - strlen(suf) <= BK_SNAPSHOT_ID_MAX &&
		    strcmp(b + bl - strlen(suf), suf) == 0) {
			char *id = strndup(b, bl - strlen(suf));

			if (id == NULL)
				abort();
			free(names[i]);
			names[k++] = id;
		} else {
			free(names[i]);
		}
	}
	/* Sorted as ids, not as object names: in "<id>.manifest" the '-' of
	 * a "-N" suffix sorts before the '.', which would put a later
	 * snapshot of the same second first (and confuse retention).
	 * "YYYYMMDD-HHMMSS" and "-N" suffixes sort by time as strings. */
	qsort(names, k, sizeof(*names), cmp_str);
	*ids_r = names;
	*n_r = k;
	return 0;
}


/* ---- retention ---- */

static int id_time(const char *id, time_t *t_r)
{
	struct tm tm = { 0 };

	if (strlen(id) < 15 ||
	    sscanf(id, "%4d%2d%2d-%2d%2d%2d", &tm.tm_year, &tm.tm_mon,
		   &tm.tm_mday, &tm.tm_hour, &tm.tm_min, &tm.tm_sec) != 6)
		return -1;
	tm.tm_year -= 1900;
	tm.tm_mon -= 1;
	*t_r = timegm(&tm);
	return 0;
}

static int cmp_str(const void *a, const void *b)
{
	return strcmp(*(char *const *)a, *(char *const *)b);
}

int bk_prune(bk_target *t, const uint8_t *key, unsigned keep_daily,
	     unsigned keep_weekly, const char *keep_id, bk_stats *stats)
{
	char **ids = NULL, **objs = NULL, **refs = NULL;
	size_t n = 0, nobj = 0, nref = 0, capref = 0;
	char *keep = NULL;
	char last_day[16] = "", last_week[16] = "";
	unsigned days = 0, weeks = 0;
	int r;

	if ((r = bk_snapshots(t, &ids, &n)) < 0)
		return r;
	keep = calloc(n + 1, 1);
	if (keep == NULL)
		abort();
	/* Newest first: the first snapshot seen of a day/week is its newest. */
	for (size_t k = n; k-- > 0;) {
		time_t when;
		struct tm tm;
		char day[16], week[16];

		if (keep_id != NULL && strcmp(ids[k], keep_id) == 0)
			keep[k] = 1;
		if (id_time(ids[k], &when) < 0) {
			keep[k] = 1;  /* not ours to judge: leave it */
			continue;
		}
		gmtime_r(&when, &tm);
		strftime(day, sizeof(day), "%Y%m%d", &tm);
		strftime(week, sizeof(week), "%G%V", &tm);
		if (strcmp(day, last_day) != 0) {
			snprintf(last_day, sizeof(last_day), "%s", day);
			if (days < keep_daily) {
				keep[k] = 1;
			}
			days++;
		}
		if (strcmp(week, last_week) != 0) {
			snprintf(last_week, sizeof(last_week), "%s", week);
			if (weeks < keep_weekly)
				keep[k] = 1;
			weeks++;
		}
	}
	/* Read every kept manifest before deleting anything. */
	for (size_t k = 0; k < n && r == 0; k++) {
		bk_manifest *m;

		if (!keep[k])
			continue;
		r = bk_manifest_load(t, key, ids[k], &m);
		if (r < 0)
			break;
		for (size_t i = 0; i < m->n_files; i++) {
			if (nref == capref) {
				capref = capref ? 2 * capref : 256;
				refs = realloc(refs, capref * sizeof(*refs));
				if (refs == NULL)
					abort();
			}
			refs[nref] = strdup(m->files[i].object);
			if (refs[nref++] == NULL)
				abort();
		}
		bk_manifest_free(&m);
	}
	if (r < 0)
		goto out;
	for (size_t k = 0; k < n; k++) {
		char name[128];

		if (keep[k])
			continue;
		bk_manifest_name(name, sizeof(name), ids[k]);
		if ((r = bk_target_delete(t, name)) < 0)
			goto out;
		if (stats != NULL)
			stats->snapshots_pruned++;
	}
	if (nref > 1)
		qsort(refs, nref, sizeof(*refs), cmp_str);
	if ((r = bk_target_list(t, "objects/", &objs, &nobj)) < 0)
		goto out;
	for (size_t i = 0; i < nobj; i++) {
		if (nref > 0 && bsearch(&objs[i], refs, nref, sizeof(*refs),
					cmp_str) != NULL)
			continue;
		if ((r = bk_target_delete(t, objs[i])) < 0)
			break;
		if (stats != NULL)
			stats->objects_pruned++;
	}
out:
	bk_strv_free(objs, nobj);
	bk_strv_free(refs, nref);
	bk_strv_free(ids, n);
	free(keep);
	return r;
}
