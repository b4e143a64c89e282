/*
 * Scheduled backups (backup_schedule) and the start-up cleanup of staging
 * copies. The contract is in srv.h.
 *
 * A job, one at a time (srv.backup_busy, shared with BACKUP_PREPARE):
 *
 *   timer (loop) ─▶ busy? ─yes─▶ try again in BUSY_RETRY_MS
 *        │no
 *        ▼
 *   srv_backup_stage: the copy (pool, then each alias's queue)
 *        ▼
 *   job_work (pool): backup key, target, bk_collect_staged, bk_backup,
 *                    bk_prune, the copy removed, the key wiped
 *        ▼
 *   job_done (loop): one log line, not busy, timer armed for the next day
 *
 * Stopping (srv_backup_sched_stop) closes the timer; a job that runs goes
 * on to its end (the loop waits for pool work) and then frees the state.
 * Nothing here holds the backup key outside job_work.
 */
#include "srv.h"
#include "bk.h"
#include "bk_target.h"
#include "eng_error.h"
#include "secrets.h"

#include <dirent.h>
#include <errno.h>
#include <limits.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/types.h>
#include <time.h>

#define BUSY_RETRY_MS (10u * 1000)
#define DAY_SECONDS 86400

struct srv_backup_sched {
	srv *srv;
	char *config_path;
	bool daily;
	unsigned minute_of_day;  /* UTC */
	uv_timer_t timer;
	bool stopped, timer_closed, running;
	/* The job that runs. */
	char *stage;
	char id[BK_SNAPSHOT_ID_MAX + 1];
	bk_stats st, pst;
	const char *what;        /* the step that failed, for the log */
	int err;
};

static void sched_free_if_done(srv_backup_sched *b)
{
	if (!b->timer_closed || b->running)
		return;
	free(b->config_path);
	free(b);
}

/* ms from now to the next minute_of_day, UTC (at least one second). */
static uint64_t next_due_ms(const srv_backup_sched *b, time_t now)
{
	time_t day = now - now % DAY_SECONDS;
	time_t due = day + (time_t)b->minute_of_day * 60;

	if (due <= now)
		due += DAY_SECONDS;
	return (uint64_t)(due - now) * 1000;
}

static void job_start(uv_timer_t *t);

static void arm(srv_backup_sched *b, uint64_t delay_ms)
{
	if (b->stopped || b->srv->shutting_down)
		return;
	uv_timer_start(&b->timer, job_start, delay_ms, 0);
}

/* Pool: everything `sealmail backup` does after the copy. */
static int job_work(void *ctx)
{
	srv_backup_sched *b = ctx;
	const sm_config *cfg = b->srv->cfg;
	uint8_t *key = NULL;
	bk_target *t = NULL;
	bk_fileset *fs = NULL;
	const char *why = NULL;
	char *msg = NULL;
	int err;

	if (b->err != 0) {
		/* The copy failed part way: only remove what it left. */
		err = b->err;
		goto out;
	}
	err = sm_secret_load(cfg->backup_key_file, &key, &msg);
	if (err != 0) {
		b->what = "cannot read backup_key_file";
		goto out;
	}
	err = bk_target_open(NULL, cfg, &t, &why);
	if (err != 0) {
		b->what = why != NULL ? why : "cannot open backup_target";
		goto out;
	}
	err = bk_collect_staged(b->stage, b->config_path, &fs, &msg);
	if (err != 0) {
		b->what = "cannot list the staging copy";
		goto out;
	}
	err = bk_backup(t, key, fs, time(NULL), b->id, &b->st, NULL, NULL);
	if (err != 0) {
		b->what = "upload";
		goto out;
	}
	/* The snapshot is stored; a failed prune is logged, not fatal. */
	if (bk_prune(t, key, (unsigned)cfg->backup_keep_daily,
		     (unsigned)cfg->backup_keep_weekly, b->id, &b->pst) != 0)
		b->what = "pruning old snapshots";
out:
	if (msg != NULL)
		eng_log(ENG_LOG_ERROR, "scheduled backup: %s", msg);
	free(msg);
	bk_fileset_free(&fs);
	bk_target_close(&t);
	sm_secret_free(&key);
	bk_remove_tree(b->stage);
	return err;
}

static void job_done(void *ctx, int result)
{
	srv_backup_sched *b = ctx;

	if (result != 0)
		eng_log(ENG_LOG_ERROR, "scheduled backup failed (%s): %s; the "
			"target holds no new snapshot", b->what != NULL ?
			b->what : "staging copy", eng_strerror(result));
	else
		eng_log(b->what != NULL ? ENG_LOG_WARN : ENG_LOG_INFO,
			"scheduled backup: snapshot %s: %u files, %u objects "
			"uploaded (%llu bytes), %u already there; pruned %u "
			"snapshots, %u objects%s%s", b->id, b->st.files,
			b->st.objects_uploaded,
			(unsigned long long)b->st.bytes_uploaded,
			b->st.objects_present, b->pst.snapshots_pruned,
			b->pst.objects_pruned, b->what != NULL ? "; failed: " : "",
			b->what != NULL ? b->what : "");
	free(b->stage);
	b->stage = NULL;
	b->running = false;
	b->srv->backup_busy = false;
	if (b->daily)
		arm(b, next_due_ms(b, time(NULL)));
	sched_free_if_done(b);
}

static void job_staged(void *ctx, int result, const char *stage)
{
	srv_backup_sched *b = ctx;
	int err;

	b->stage = eng_strdup(stage);
	b->err = result;
	err = srv_blocking(b->srv, job_work, job_done, b);
	if (err != 0) {
		/* The copy is scratch; a leftover goes at the next start. */
		job_done(b, err);
	}
}

static void job_start(uv_timer_t *t)
{
	srv_backup_sched *b = t->data;

	if (b->srv->shutting_down)
		return;
	if (b->srv->backup_busy) {
		eng_log(ENG_LOG_INFO, "scheduled backup waits: another backup "
			"job runs");
		arm(b, BUSY_RETRY_MS);
		return;
	}
	b->srv->backup_busy = true;
	b->running = true;
	b->what = NULL;
	b->err = 0;
	memset(&b->st, 0, sizeof(b->st));
	memset(&b->pst, 0, sizeof(b->pst));
	b->id[0] = '\0';
	srv_backup_stage(b->srv, &b->srv->shutting_down, job_staged, b);
}

/*
 * Backups to S3 scheduled: the S3 module (libcurl, libxml2) is loaded now,
 * on the main thread, not by the first job on a pool thread: a missing
 * module shows in the log at start rather than at the first night, and
 * libcurl's one-time set-up runs here. Not fatal: the job reports again.
 */
static void preload_s3(const sm_config *cfg)
{
	bk_s3_open_fn *open_fn;

	if (cfg->backup_target != NULL &&
	    strncmp(cfg->backup_target, "s3://", 5) == 0 &&
	    bk_s3_load(&open_fn) != 0)
		eng_log(ENG_LOG_ERROR, "scheduled backups to %s will fail until "
			"the S3 module is installed", cfg->backup_target);
}

int srv_backup_sched_start(srv *s, const char *config_path,
			   srv_backup_sched **sched_r)
{
	const char *sch = s->cfg->backup_schedule;
	const char *test = getenv("SEALMAIL_BACKUP_SCHEDULE_TEST_SECONDS");
	srv_backup_sched *b;
	unsigned hh = 0, mm = 0;
	bool daily = false;
	char tail;

	*sched_r = NULL;
	if (sch != NULL && strcmp(sch, "off") != 0) {
		/* config.c has checked it; check again rather than guess. */
		if (sscanf(sch, "daily %u:%u%c", &hh, &mm, &tail) != 2 ||
		    hh > 23 || mm > 59)
			return ENG_EINVAL;
		daily = true;
	}
	if (!daily && (test == NULL || test[0] == '\0'))
		return 0;
	b = eng_calloc(1, sizeof(*b));
	b->srv = s;
	b->config_path = eng_strdup(config_path);
	b->daily = daily;
	b->minute_of_day = hh * 60 + mm;
	uv_timer_init(s->loop, &b->timer);
	b->timer.data = b;
	if (test != NULL && test[0] != '\0')
		arm(b, strtoull(test, NULL, 10) * 1000);
	else
		arm(b, next_due_ms(b, time(NULL)));
	if (daily)
		eng_log(ENG_LOG_INFO, "backups scheduled daily at %02u:%02u UTC",
			hh, mm);
	preload_s3(s->cfg);
	*sched_r = b;
	return 0;
}

static void sched_timer_closed(uv_handle_t *h)
{
	srv_backup_sched *b = h->data;

	b->timer_closed = true;
	sched_free_if_done(b);
}

void srv_backup_sched_stop(srv_backup_sched **sched)
{
	srv_backup_sched *b = *sched;

	if (b == NULL)
		return;
	*sched = NULL;
	b->stopped = true;
	uv_timer_stop(&b->timer);
	uv_close((uv_handle_t *)&b->timer, sched_timer_closed);
}

/* "backup-1234" / "restore-1234": a process that still runs owns it. */
static bool owner_alive(const char *suffix)
{
	char *end;
	long pid;

	if (suffix[0] < '0' || suffix[0] > '9')
		return false;
	errno = 0;
	pid = strtol(suffix, &end, 10);
	if (*end != '\0' || errno != 0 || pid <= 0 || pid > INT_MAX)
		return false;
	return kill((pid_t)pid, 0) == 0 || errno == EPERM;
}

void srv_backup_clean_tmp(const char *data_dir)
{
	char *tmp, *path;
	DIR *d;
	struct dirent *e;

	if (asprintf(&tmp, "%s/tmp", data_dir) < 0)
		eng_oom(0);
	d = opendir(tmp);
	while (d != NULL && (e = readdir(d)) != NULL) {
		const char *suffix;

		if (strncmp(e->d_name, "backup-", 7) == 0)
			suffix = e->d_name + 7;
		else if (strncmp(e->d_name, "restore-", 8) == 0)
			suffix = e->d_name + 8;
		else
			continue;
		if (suffix[0] == '\0' || owner_alive(suffix))
			continue;
		if (asprintf(&path, "%s/%s", tmp, e->d_name) < 0)
			eng_oom(0);
		eng_log(ENG_LOG_INFO, "removing %s, left by a backup or restore "
			"that did not finish", path);
		bk_remove_tree(path);
		free(path);
	}
	if (d != NULL)
		closedir(d);
	free(tmp);
}
