/*
 * What the MIME unit tests share (test_mime.c, test_mime_text.c).
 */
#ifndef TESTMIME_H
#define TESTMIME_H

#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>
#include <cmocka.h>

#include "mime.h"

/* msg parsed whole into *root (never NULL) and *sum. */
static inline void parse_str(const char *msg, eng_mime_part **root,
			     eng_mime_summary *sum)
{
	eng_mime_parse(msg, strlen(msg), NULL, root, sum);
	assert_non_null(*root);
}

#endif
