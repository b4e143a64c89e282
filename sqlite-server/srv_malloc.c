/*
 * sqlited's malloc settings (srv_malloc.h): the thread cache off through
 * a re-exec with GLIBC_TUNABLES, two arenas per CPU, fastbins off, fixed
 * trim (256 KiB) and mmap thresholds; SQLite's page caches without their
 * bulk block.
 *
 * Rules: runs before anything else in main (no thread, no open file that
 * matters: the exec keeps descriptors, and there are none yet besides the
 * standard ones); the re-exec happens at most once (the variable it sets
 * is what it checks); an administrator's glibc.malloc.tcache_count and
 * glibc.malloc.arena_max win.
 */
#include "srv_malloc.h"

#include <sqlite3.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#ifdef __GLIBC__
#include <malloc.h>
#endif
#ifdef __linux__
#include <sys/prctl.h>
#endif

#define TCACHE_TUNABLE "glibc.malloc.tcache_count"
#define TCACHE_OFF TCACHE_TUNABLE "=0"

#if defined(__SANITIZE_ADDRESS__) || defined(__SANITIZE_THREAD__)
#define SANITIZER_ALLOCATOR 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer) || __has_feature(thread_sanitizer)
#define SANITIZER_ALLOCATOR 1
#endif
#endif

bool srv_malloc_tunes(void)
{
#if defined(__GLIBC__) && !defined(SANITIZER_ALLOCATOR)
	return true;
#else
	return false;
#endif
}

bool srv_malloc_tcache_off(void)
{
	const char *t = getenv("GLIBC_TUNABLES");

	return t != NULL && strstr(t, TCACHE_OFF) != NULL;
}

#if defined(__GLIBC__) && !defined(SANITIZER_ALLOCATOR)
/* Once: GLIBC_TUNABLES with the cache off, then exec ourselves. */
static void reexec_without_tcache(char **argv)
{
	const char *cur = getenv("GLIBC_TUNABLES");
	char *prev = cur != NULL ? strdup(cur) : NULL;
	char *val;

	if (cur != NULL && strstr(cur, TCACHE_TUNABLE "=") != NULL) {
		free(prev);
		return;                 /* set already: by us or by the admin */
	}
	if (cur != NULL && *cur != '\0') {
		if (asprintf(&val, "%s:%s", cur, TCACHE_OFF) < 0)
			val = NULL;
	} else {
		val = strdup(TCACHE_OFF);
	}
	if (val != NULL && setenv("GLIBC_TUNABLES", val, 1) == 0)
		execv("/proc/self/exe", argv);
	/* No exec (no /proc?): run on with the cache, environment as it was. */
	free(val);
	if (prev != NULL)
		setenv("GLIBC_TUNABLES", prev, 1);
	else
		unsetenv("GLIBC_TUNABLES");
	free(prev);
}

/* The exec of /proc/self/exe named the process "exe" (comm, what ps -C,
 * pgrep and top show): give it argv[0]'s base name back. */
static void name_from_argv0(char **argv)
{
#ifdef __linux__
	const char *slash;

	if (argv == NULL || argv[0] == NULL || argv[0][0] == '\0')
		return;
	slash = strrchr(argv[0], '/');
	(void)prctl(PR_SET_NAME, slash != NULL ? slash + 1 : argv[0], 0, 0, 0);
#else
	(void)argv;
#endif
}
#endif

#if defined(__GLIBC__) && !defined(SANITIZER_ALLOCATOR)
/* Whether GLIBC_TUNABLES sets name (an administrator's choice stays). */
static bool tunable_set(const char *name)
{
	const char *t = getenv("GLIBC_TUNABLES");
	size_t n = strlen(name);

	for (const char *p = t; p != NULL && (p = strstr(p, name)) != NULL; p += n) {
		if ((p == t || p[-1] == ':') && p[n] == '=')
			return true;
	}
	return false;
}

/* Two arenas per online CPU (glibc's default is eight), 2 to 32. */
static int arenas(void)
{
	long n = sysconf(_SC_NPROCESSORS_ONLN);

	if (n < 1)
		n = 1;
	return n > 16 ? 32 : (int)(2 * n);
}
#endif

/* SQLite's page caches without their first bulk block (srv_malloc.h). */
static void sqlite_pages_on_demand(void)
{
	/* No buffer, no size, 0 pages: pcache1's nInitPage 0. SQLITE_MISUSE
	 * if SQLite is initialised already: its default stays. */
	(void)sqlite3_config(SQLITE_CONFIG_PAGECACHE, (void *)NULL, 0, 0);
}

void srv_malloc_tune(char **argv)
{
	sqlite_pages_on_demand();
#if defined(__GLIBC__) && !defined(SANITIZER_ALLOCATOR)
	reexec_without_tcache(argv);
	name_from_argv0(argv);
	if (!tunable_set("glibc.malloc.arena_max"))
		mallopt(M_ARENA_MAX, arenas());
	mallopt(M_MXFAST, 0);
	mallopt(M_TRIM_THRESHOLD, 256 * 1024);
	mallopt(M_TOP_PAD, 64 * 1024);
	mallopt(M_MMAP_THRESHOLD, 1024 * 1024);
#else
	(void)argv;
#endif
}
