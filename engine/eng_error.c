#include "eng_error.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static const char *const err_strings[] = {
	[0] = "Success",
	[1] = "Invalid argument",
	[2] = "Authentication failed",
	[3] = "Stored data is corrupted",
	[4] = "Data was written by a newer version",
	[5] = "No space left on device",
	[6] = "Input/output error",
	[7] = "Not found",
	[8] = "Already exists",
	[9] = "Modified since the given MODSEQ",
	[10] = "Limit exceeded",
	[11] = "Malformed input",
	[12] = "Quota exceeded",
	[13] = "Busy, try again",
	[14] = "Not permitted",
};

const char *eng_strerror(int err)
{
	size_t i = err < 0 ? (size_t)-err : (size_t)err;

	if (i >= sizeof(err_strings) / sizeof(err_strings[0]))
		return "Unknown error";
	return err_strings[i];
}

static void default_log(enum eng_log_level level, const char *msg)
{
	static const char *const names[] = { "debug", "info", "warn", "error" };

	if (level == ENG_LOG_DEBUG && getenv("SEALMAIL_DEBUG") == NULL)
		return;
	fprintf(stderr, "sealmail %s: %s\n", names[level], msg);
}

static eng_log_fn *log_fn = default_log;

void eng_set_log(eng_log_fn *fn)
{
	log_fn = fn != NULL ? fn : default_log;
}

void eng_log(enum eng_log_level level, const char *fmt, ...)
{
	char msg[1024];
	va_list ap;

	va_start(ap, fmt);
	vsnprintf(msg, sizeof(msg), fmt, ap);
	va_end(ap);
	log_fn(level, msg);
}

void eng_oom(size_t size)
{
	eng_log(ENG_LOG_ERROR, "out of memory allocating %zu bytes", size);
	abort();
}

void *eng_malloc(size_t size)
{
	void *p = malloc(size != 0 ? size : 1);

	if (p == NULL)
		eng_oom(size);
	return p;
}

void *eng_calloc(size_t n, size_t size)
{
	void *p = calloc(n != 0 ? n : 1, size != 0 ? size : 1);

	if (p == NULL)
		eng_oom(n * size);
	return p;
}

void *eng_realloc(void *p, size_t size)
{
	void *q = realloc(p, size != 0 ? size : 1);

	if (q == NULL)
		eng_oom(size);
	return q;
}

char *eng_strndup(const char *s, size_t n)
{
	char *p = eng_malloc(n + 1);

	memcpy(p, s, n);
	p[n] = '\0';
	return p;
}

char *eng_strdup(const char *s)
{
	return eng_strndup(s, strlen(s));
}
