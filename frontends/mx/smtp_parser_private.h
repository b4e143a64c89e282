/*
 * What the pieces of the SMTP codec share (private to it; smtp_parser.h is
 * the contract).
 *
 * smtp_parser.c   the parser object, its modes and smtp_parser_feed
 * smtp_command.c  command lines: verbs, arguments, the line buffer
 * smtp_address.c  paths, domains, local parts and MAIL/RCPT parameters
 * smtp_data.c     the DATA state machine and BDAT counting
 *
 * Rules: no I/O, no allocation after smtp_parser_new; everything a command
 * points at is copied into the field area (smtp_field), wiped at the next
 * event.
 */
#ifndef SM_SMTP_PARSER_PRIVATE_H
#define SM_SMTP_PARSER_PRIVATE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include "smtp_parser.h"

enum mode { MODE_CMD, MODE_LINE, MODE_DATA, MODE_BDAT };
enum dstate { D_TEXT, D_DOT, D_DOT_CR };

struct smtp_parser {
	smtp_limits lim;
	char *buf;              /* the current line: line_max - 1 bytes + NUL */
	size_t len;
	char *fields;           /* NUL-terminated copies of a command's fields */
	size_t fields_cap;
	size_t fields_used;
	size_t wipe_len;        /* bytes of buf the last event pointed into */
	enum mode mode;
	bool discarding;        /* skipping the rest of an over-long line */

	/* DATA */
	enum dstate dstate;
	bool at_line_start;
	bool last_cr;
	bool line_counted;      /* this line is already in long_lines */
	uint64_t line_bytes;
	unsigned int data_err;
	uint64_t data_bytes;
	uint64_t long_lines;
	uint64_t nul_bytes;

	/* BDAT */
	uint64_t bdat_left;
};

enum { PARAM_OK = 0, PARAM_UNKNOWN = 1, PARAM_BAD = 2 };

static inline void wipe(void *p, size_t n)
{
	if (n > 0)
		explicit_bzero(p, n);
}

static inline bool is_alpha(unsigned char c)
{
	return (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z');
}

static inline bool is_digit(unsigned char c)
{
	return c >= '0' && c <= '9';
}

/* smtp_parser.c: a NUL-terminated copy of s[0..n) in the field area. */
const char *smtp_field(smtp_parser *p, const char *s, size_t n);

/* smtp_address.c */
bool smtp_ieq(const char *s, size_t n, const char *word);
size_t smtp_utf8_char(const char *s, size_t n, size_t i);
bool smtp_valid_domain_or_literal(const char *s, size_t n, bool allow_underscore,
				  bool *literal, bool *utf8);
bool smtp_scan_path(smtp_parser *p, const char *s, size_t n, size_t *i,
		    bool is_mail, smtp_path *path);
bool smtp_parse_u64(const char *s, size_t n, uint64_t *v_r);
int smtp_decode_mail_param(smtp_command *cmd, const smtp_param *pr, unsigned *seen);
int smtp_decode_rcpt_param(smtp_parser *p, smtp_command *cmd,
			   const smtp_param *pr, unsigned *seen);

/* The modes' feeders: consume from data, fill *ev, return bytes used. */
size_t smtp_feed_line(smtp_parser *p, const uint8_t *data, size_t len, smtp_event *ev);
size_t smtp_feed_data(smtp_parser *p, const uint8_t *data, size_t len, smtp_event *ev);
size_t smtp_feed_bdat(smtp_parser *p, const uint8_t *data, size_t len, smtp_event *ev);

#endif
