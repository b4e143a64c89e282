/*
 * Error codes shared by every engine module.
 *
 * Every engine call returns 0 on success or one of these negative codes.
 * The codes are what a caller may act on (and what sqlited maps to its
 * protocol answers); details go to the log, never to the code, so a client
 * that is told ENG_EAUTH learns nothing about why the key did not fit.
 * Allocation failure is not an error code: it aborts the process
 * (eng_oom()), as in Dovecot and Redis.
 */
#ifndef ENG_ERROR_H
#define ENG_ERROR_H

#include <stddef.h>

enum eng_err {
	ENG_OK = 0,
	ENG_EINVAL = -1,     /* bad argument: a caller bug or bad client input */
	ENG_EAUTH = -2,      /* wrong password or key: the same answer for both */
	ENG_ECORRUPT = -3,   /* a file or blob failed its checks */
	ENG_ENEWER = -4,     /* written by a newer Sealmail: refuse, never guess */
	ENG_ENOSPC = -5,     /* disk full: temporary, the write did not happen */
	ENG_EIO = -6,        /* I/O error: temporary, the write did not happen */
	ENG_ENOTFOUND = -7,  /* no such mailbox, message, slot or spool entry */
	ENG_EEXIST = -8,     /* the name is taken */
	ENG_EMODIFIED = -9,  /* an UNCHANGEDSINCE guard failed */
	ENG_ELIMIT = -10,    /* a limit was exceeded (size, count, depth) */
	ENG_EMALFORMED = -11,/* input that cannot be parsed at all */
	ENG_EQUOTA = -12,    /* over quota */
	ENG_EBUSY = -13,     /* locked by another writer; retry later */
	ENG_EPERM = -14,     /* not allowed (e.g. deleting INBOX) */
};

/* A short English sentence for the code, safe to show to a client. */
const char *eng_strerror(int err);

/* Logs "out of memory" with the size and aborts. */
void eng_oom(size_t size) __attribute__((noreturn));

/* malloc/calloc/realloc/strdup that never return NULL. */
void *eng_malloc(size_t size);
void *eng_calloc(size_t n, size_t size);
void *eng_realloc(void *p, size_t size);
char *eng_strdup(const char *s);
char *eng_strndup(const char *s, size_t n);

/*
 * Log sink. The engine logs through this one function so that a daemon can
 * route it; the default writes to stderr. Never pass secrets to it.
 */
enum eng_log_level { ENG_LOG_DEBUG, ENG_LOG_INFO, ENG_LOG_WARN, ENG_LOG_ERROR };
typedef void eng_log_fn(enum eng_log_level level, const char *msg);
void eng_set_log(eng_log_fn *fn);
void eng_log(enum eng_log_level level, const char *fmt, ...)
	__attribute__((format(printf, 2, 3)));

#endif
