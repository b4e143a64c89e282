/*
 * srv_malloc_tune (sqlite-server/srv_malloc.h): sqlited's malloc settings.
 * The test binary tunes itself as sqlited does (first thing in main: a
 * re-exec with the thread cache off), then: the cache is off in the
 * re-executed process, with the arguments and the process name (comm) kept;
 * an administrator's own glibc.malloc.tcache_count is kept (no re-exec);
 * and memory that several long-lived threads allocated and freed in a
 * scattered order (what the pool threads do with an SQLite connection's
 * memory before a release) goes back to the system after malloc_trim,
 * the threads still alive.
 * That last one fails with glibc's defaults (each thread's cache pins
 * pages all over its arena). Skipped where glibc's allocator is not the
 * one in use (sanitizers).
 * In every build: an SQLite connection that reads a small database holds
 * a few pages, not the 100-page bulk block pcache1 makes by default
 * (SQLite's own count of its memory; fails without the setting).
 */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <cmocka.h>

#include "srv_malloc.h"

#include <pthread.h>
#include <sqlite3.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>
#ifdef __GLIBC__
#include <malloc.h>
#endif

#define THREADS 6
#define BLOCKS 20000

static int g_argc;
static char **g_argv;

static long resident_kib(void)
{
	FILE *f = fopen("/proc/self/statm", "r");
	long size, res = -1;

	if (f == NULL)
		return -1;
	if (fscanf(f, "%ld %ld", &size, &res) != 2)
		res = -1;
	fclose(f);
	return res < 0 ? -1 : res * (sysconf(_SC_PAGESIZE) / 1024);
}

static pthread_mutex_t mu = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t cv = PTHREAD_COND_INITIALIZER;
static int phase, churned;

static void wait_phase(int want)
{
	pthread_mutex_lock(&mu);
	while (phase < want)
		pthread_cond_wait(&cv, &mu);
	pthread_mutex_unlock(&mu);
}

/* Allocates BLOCKS blocks of 16..1040 bytes, frees them in a shuffled
 * order, then stays alive (its cache, if any, with it) until told. */
static void *churn(void *arg)
{
	unsigned seed = (unsigned)(uintptr_t)arg;
	void **b = malloc(sizeof(void *) * BLOCKS);

	wait_phase(1);
	for (size_t i = 0; i < BLOCKS; i++) {
		size_t n = 16 + (size_t)(rand_r(&seed) % 1025);

		b[i] = malloc(n);
		memset(b[i], 0x5a, n);
	}
	for (size_t i = BLOCKS - 1; i > 0; i--) {
		size_t j = (size_t)rand_r(&seed) % (i + 1);
		void *t = b[i];

		b[i] = b[j];
		b[j] = t;
	}
	for (size_t i = 0; i < BLOCKS; i++)
		free(b[i]);
	free(b);
	pthread_mutex_lock(&mu);
	churned++;
	pthread_cond_broadcast(&cv);
	pthread_mutex_unlock(&mu);
	wait_phase(2);
	return NULL;
}

static void test_freed_memory_goes_back(void **state)
{
	pthread_t t[THREADS];
	long before, after;

	(void)state;
	if (!srv_malloc_tunes())
		skip();
	for (uintptr_t i = 0; i < THREADS; i++)
		assert_int_equal(pthread_create(&t[i], NULL, churn, (void *)(i + 1)), 0);
	usleep(100 * 1000);
	before = resident_kib();
	pthread_mutex_lock(&mu);
	phase = 1;
	pthread_cond_broadcast(&cv);
	while (churned < THREADS)
		pthread_cond_wait(&cv, &mu);
	pthread_mutex_unlock(&mu);
#ifdef __GLIBC__
	malloc_trim(0);
#endif
	after = resident_kib();
	pthread_mutex_lock(&mu);
	phase = 2;
	pthread_cond_broadcast(&cv);
	pthread_mutex_unlock(&mu);
	for (int i = 0; i < THREADS; i++)
		pthread_join(t[i], NULL);
	assert_true(before > 0);
	/* ~3.6 MB allocated per thread; with glibc's defaults about half of
	 * it stays resident. Tuned: each arena keeps at most its top's
	 * 256 KiB and a few pages. */
	printf("resident growth after free + trim: %ld KiB\n", after - before);
	assert_true(after - before < THREADS * 512);
}

static void test_tcache_off_after_reexec(void **state)
{
	(void)state;
	if (!srv_malloc_tunes())
		skip();
	assert_true(srv_malloc_tcache_off());
	/* The re-exec kept the arguments. */
	assert_true(g_argc >= 1);
	assert_non_null(strstr(g_argv[0], "test_srv_malloc"));
	/* Named after argv[0] again, not "exe" (what ps -C and pgrep see). */
	{
		char comm[32] = "";
		FILE *f = fopen("/proc/self/comm", "r");

		assert_non_null(f);
		assert_non_null(fgets(comm, sizeof(comm), f));
		fclose(f);
		comm[strcspn(comm, "\n")] = '\0';
		assert_string_equal(comm, "test_srv_malloc");
	}
}

/* An administrator's tcache_count is kept: no re-exec, no change. */
static void test_admin_setting_kept(void **state)
{
	pid_t pid;
	int status;

	(void)state;
	if (!srv_malloc_tunes())
		skip();
	pid = fork();
	assert_true(pid >= 0);
	if (pid == 0) {
		char *args[] = { g_argv[0], (char *)"--child-admin", NULL };

		setenv("GLIBC_TUNABLES", "glibc.malloc.tcache_count=3", 1);
		execv("/proc/self/exe", args);
		_exit(99);
	}
	assert_int_equal(waitpid(pid, &status, 0), pid);
	assert_true(WIFEXITED(status));
	assert_int_equal(WEXITSTATUS(status), 0);
}

static void exec_sql(sqlite3 *db, const char *sql)
{
	assert_int_equal(sqlite3_exec(db, sql, NULL, NULL, NULL), SQLITE_OK);
}

/*
 * A connection reading a small database: SQLite's memory while it is open
 * stays far below one bulk block (100 pages of 4 KiB and their headers,
 * 436,808 bytes with the default nInitPage), and its pages go at close.
 */
static void test_sqlite_pages_on_demand(void **state)
{
	char dir[] = "/tmp/test_srv_malloc.XXXXXX", path[64];
	sqlite3_int64 base, open_bytes;
	sqlite3 *db = NULL;

	(void)state;
	assert_non_null(mkdtemp(dir));
	snprintf(path, sizeof(path), "%s/t.db", dir);
	base = sqlite3_memory_used();
	assert_int_equal(sqlite3_open(path, &db), SQLITE_OK);
	exec_sql(db, "PRAGMA page_size = 4096; CREATE TABLE t (k INTEGER "
		 "PRIMARY KEY, v TEXT); INSERT INTO t (v) VALUES ('one'), "
		 "('two'); SELECT count(*) FROM t");
	open_bytes = sqlite3_memory_used() - base;
	assert_true(open_bytes > 0);    /* counted at all (memory statistics) */
	assert_true(open_bytes < 200 * 1024);
	assert_int_equal(sqlite3_close(db), SQLITE_OK);
	assert_true(sqlite3_memory_used() - base < 16 * 1024);
	unlink(path);
	rmdir(dir);
}

int main(int argc, char **argv)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_tcache_off_after_reexec),
		cmocka_unit_test(test_admin_setting_kept),
		cmocka_unit_test(test_freed_memory_goes_back),
		cmocka_unit_test(test_sqlite_pages_on_demand),
	};

	srv_malloc_tune(argv);
	g_argc = argc;
	g_argv = argv;
	if (argc == 2 && strcmp(argv[1], "--child-admin") == 0) {
		const char *t = getenv("GLIBC_TUNABLES");

		/* Still the admin's value, untouched, and not "off". */
		return t != NULL && strcmp(t, "glibc.malloc.tcache_count=3") == 0 &&
		       !srv_malloc_tcache_off() ? 0 : 1;
	}
	return cmocka_run_group_tests(tests, NULL, NULL);
}
