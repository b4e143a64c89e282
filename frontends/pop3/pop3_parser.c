/*
 * The POP3 command-line parser (pop3_parser.h has the contract).
 *
 * States: reading a line (command or SASL mode) → a result at its LF →
 * reading the next line; or, once a line passes its limit, discarding up
 * to and including the next LF. Only the current line is ever buffered,
 * never more than the limit plus one byte (a CR that may precede the LF).
 */
#include "pop3_parser.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

struct pop3_parser {
	size_t max_line_bytes;
	size_t max_sasl_line_bytes;
	char *buf;              /* cap = max of the two limits + 2 */
	size_t len;             /* bytes of the current line held */
	size_t used;            /* bytes of buf a result points into (wiped
	                           at the next call) */
	bool sasl;              /* the next line is a SASL response */
	bool discarding;        /* skipping the rest of an over-long line */
	bool saw_nul;
};

static const char *const verb_names[POP3_VERB_COUNT] = {
	[POP3_VERB_UNKNOWN] = "",
	[POP3_VERB_USER] = "USER",
	[POP3_VERB_PASS] = "PASS",
	[POP3_VERB_QUIT] = "QUIT",
	[POP3_VERB_STAT] = "STAT",
	[POP3_VERB_LIST] = "LIST",
	[POP3_VERB_RETR] = "RETR",
	[POP3_VERB_DELE] = "DELE",
	[POP3_VERB_NOOP] = "NOOP",
	[POP3_VERB_RSET] = "RSET",
	[POP3_VERB_TOP] = "TOP",
	[POP3_VERB_UIDL] = "UIDL",
	[POP3_VERB_CAPA] = "CAPA",
	[POP3_VERB_STLS] = "STLS",
	[POP3_VERB_AUTH] = "AUTH",
	[POP3_VERB_SASL_RESPONSE] = "",
	[POP3_VERB_SASL_CANCEL] = "",
};

/* Arity per verb: at least min_args, at most max_args; numeric args. */
static const struct verb_rule {
	unsigned char min_args;
	unsigned char max_args;
	bool numeric;
	bool rest_of_line;      /* one argument: everything after "VERB " */
} verb_rules[POP3_VERB_COUNT] = {
	[POP3_VERB_USER] = { 1, 1, false, false },
	[POP3_VERB_PASS] = { 1, 1, false, true },
	[POP3_VERB_LIST] = { 0, 1, true, false },
	[POP3_VERB_RETR] = { 1, 1, true, false },
	[POP3_VERB_DELE] = { 1, 1, true, false },
	[POP3_VERB_TOP] = { 2, 2, true, false },
	[POP3_VERB_UIDL] = { 0, 1, true, false },
	[POP3_VERB_AUTH] = { 0, 2, false, false },
	/* QUIT, STAT, NOOP, RSET, CAPA, STLS: { 0, 0 } */
};

const char *pop3_verb_name(pop3_verb verb)
{
	if ((unsigned)verb >= POP3_VERB_COUNT)
		return "";
	return verb_names[verb];
}

const char *pop3_strerror(int err)
{
	switch (err) {
	case POP3_ELINE: return "Line too long";
	case POP3_ENUL: return "NUL byte in command";
	case POP3_EEMPTY: return "Empty command";
	case POP3_EARGS: return "Wrong number of arguments";
	case POP3_ENUMBER: return "Invalid message number";
	case POP3_EBASE64: return "Invalid base64 response";
	default: return "Invalid command";
	}
}

static void wipe(void *p, size_t n)
{
	if (n > 0)
		explicit_bzero(p, n);
}

pop3_parser *pop3_parser_new(size_t max_line_bytes, size_t max_sasl_line_bytes)
{
	pop3_parser *p = calloc(1, sizeof(*p));
	size_t cap;

	if (p == NULL)
		goto oom;
	p->max_line_bytes = max_line_bytes != 0 ? max_line_bytes : POP3_MAX_LINE_BYTES;
	p->max_sasl_line_bytes = max_sasl_line_bytes != 0 ?
		max_sasl_line_bytes : POP3_MAX_SASL_LINE_BYTES;
	cap = p->max_line_bytes > p->max_sasl_line_bytes ?
		p->max_line_bytes : p->max_sasl_line_bytes;
	p->buf = malloc(cap + 2);
	if (p->buf == NULL)
		goto oom;
	return p;
oom:
	fprintf(stderr, "pop3_parser: out of memory\n");
	abort();
}

void pop3_parser_free(pop3_parser **pp)
{
	pop3_parser *p;

	if (pp == NULL || *pp == NULL)
		return;
	p = *pp;
	wipe(p->buf, p->len > p->used ? p->len : p->used);
	free(p->buf);
	free(p);
	*pp = NULL;
}

void pop3_parser_reset(pop3_parser *p)
{
	wipe(p->buf, p->len > p->used ? p->len : p->used);
	p->len = 0;
	p->used = 0;
	p->sasl = false;
	p->discarding = false;
	p->saw_nul = false;
}

void pop3_parser_expect_sasl(pop3_parser *p)
{
	p->sasl = true;
}

size_t pop3_parser_pending(const pop3_parser *p)
{
	return p->len;
}

bool pop3_parser_discarding(const pop3_parser *p)
{
	return p->discarding;
}

static void clear_command(pop3_command *cmd)
{
	memset(cmd, 0, sizeof(*cmd));
	cmd->verb = POP3_VERB_UNKNOWN;
	cmd->verb_text = "";
}

static pop3_verb lookup_verb(const char *s, size_t len)
{
	char up[5];

	if (len < 3 || len > 4)
		return POP3_VERB_UNKNOWN;
	for (size_t i = 0; i < len; i++) {
		char c = s[i];

		if (c >= 'a' && c <= 'z')
			c = (char)(c - 'a' + 'A');
		up[i] = c;
	}
	up[len] = '\0';
	for (int v = POP3_VERB_USER; v <= POP3_VERB_AUTH; v++) {
		if (strcmp(up, verb_names[v]) == 0)
			return (pop3_verb)v;
	}
	return POP3_VERB_UNKNOWN;
}

static bool parse_u32(const char *s, size_t len, uint32_t *n_r)
{
	uint64_t n = 0;

	if (len == 0)
		return false;
	while (len > 1 && *s == '0') {
		s++;
		len--;
	}
	if (len > 10)
		return false;
	for (size_t i = 0; i < len; i++) {
		if (s[i] < '0' || s[i] > '9')
			return false;
		n = n * 10 + (uint64_t)(s[i] - '0');
	}
	if (n > UINT32_MAX)
		return false;
	*n_r = (uint32_t)n;
	return true;
}

static bool is_base64(const char *s, size_t len)
{
	for (size_t i = 0; i < len; i++) {
		unsigned char c = (unsigned char)s[i];

		if (!((c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') ||
		      (c >= '0' && c <= '9') || c == '+' || c == '/' || c == '='))
			return false;
	}
	return true;
}

/* The line is buf[0..len) without its line end, NUL-free. */
static int parse_sasl_line(pop3_parser *p, pop3_command *cmd)
{
	char *line = p->buf;

	line[p->len] = '\0';
	if (p->len == 1 && line[0] == '*') {
		cmd->verb = POP3_VERB_SASL_CANCEL;
		return 1;
	}
	if (!is_base64(line, p->len))
		return POP3_EBASE64;
	cmd->verb = POP3_VERB_SASL_RESPONSE;
	cmd->argc = 1;
	cmd->args[0] = line;
	cmd->arg_lens[0] = p->len;
	return 1;
}

static int parse_command_line(pop3_parser *p, pop3_command *cmd)
{
	char *line = p->buf;
	size_t len = p->len, i = 0, vstart, vend;
	const struct verb_rule *rule;
	unsigned int argc = 0;

	line[len] = '\0';
	while (i < len && line[i] == ' ')
		i++;
	if (i == len)
		return POP3_EEMPTY;
	vstart = i;
	while (i < len && line[i] != ' ')
		i++;
	vend = i;
	cmd->verb = lookup_verb(line + vstart, vend - vstart);
	cmd->verb_text = line + vstart;
	cmd->verb_len = vend - vstart;
	if (cmd->verb == POP3_VERB_UNKNOWN) {
		line[vend] = '\0';
		return 1;
	}
	rule = &verb_rules[cmd->verb];
	if (rule->rest_of_line) {
		/* "PASS secret with spaces": one space after the verb, then
		 * the argument verbatim. */
		if (vend + 1 >= len)
			return POP3_EARGS;
		line[vend] = '\0';
		cmd->argc = 1;
		cmd->args[0] = line + vend + 1;
		cmd->arg_lens[0] = len - vend - 1;
		return 1;
	}
	while (i < len) {
		size_t astart;

		line[i] = '\0';  /* ends the verb or the previous argument */
		while (++i < len && line[i] == ' ')
			line[i] = '\0';
		if (i == len)
			break;
		astart = i;
		while (i < len && line[i] != ' ')
			i++;
		if (argc == rule->max_args)
			return POP3_EARGS;
		cmd->args[argc] = line + astart;
		cmd->arg_lens[argc] = i - astart;
		argc++;
	}
	if (argc < rule->min_args)
		return POP3_EARGS;
	if (rule->numeric) {
		for (unsigned int a = 0; a < argc; a++) {
			if (!parse_u32(cmd->args[a], cmd->arg_lens[a], &cmd->nums[a]))
				return POP3_ENUMBER;
		}
	}
	cmd->argc = argc;
	return 1;
}

/* A whole line is in buf[0..len); len includes any trailing CR. */
static int finish_line(pop3_parser *p, pop3_command *cmd)
{
	bool sasl = p->sasl;
	int ret;

	if (p->len > 0 && p->buf[p->len - 1] == '\r')
		p->len--;
	p->used = p->len + 1;
	p->sasl = false;
	if (p->saw_nul)
		ret = POP3_ENUL;
	else if (sasl)
		ret = parse_sasl_line(p, cmd);
	else
		ret = parse_command_line(p, cmd);
	if (ret < 0) {
		/* The verb stays known for EARGS/ENUMBER; the arguments do
		 * not leak into the error path. */
		pop3_verb verb = cmd->verb;

		clear_command(cmd);
		if (ret == POP3_EARGS || ret == POP3_ENUMBER)
			cmd->verb = verb;
	}
	p->len = 0;
	p->saw_nul = false;
	return ret;
}

int pop3_parser_feed(pop3_parser *p, const uint8_t *data, size_t len,
		     size_t *consumed_r, pop3_command *cmd_r)
{
	size_t max = p->sasl ? p->max_sasl_line_bytes : p->max_line_bytes;
	size_t pos = 0;

	/* The previous result's strings (perhaps a password) are done. */
	if (p->used > 0) {
		wipe(p->buf, p->used);
		p->used = 0;
	}
	clear_command(cmd_r);
	*consumed_r = 0;
	while (pos < len) {
		const uint8_t *lf = memchr(data + pos, '\n', len - pos);
		size_t chunk = (lf != NULL ? (size_t)(lf - data) : len) - pos;

		if (p->discarding) {
			if (lf == NULL) {
				*consumed_r = len;
				return 0;
			}
			pos += chunk + 1;
			p->discarding = false;
			/* The limit may change between lines (SASL). */
			max = p->sasl ? p->max_sasl_line_bytes : p->max_line_bytes;
			continue;
		}
		/*
		 * Room for max bytes plus one CR that a LF may follow. A line
		 * of max+1 bytes whose last is not CR is already too long.
		 */
		if (p->len + chunk > max + 1 ||
		    (p->len + chunk == max + 1 && chunk > 0 &&
		     data[pos + chunk - 1] != '\r')) {
			wipe(p->buf, p->len);
			p->len = 0;
			p->saw_nul = false;
			p->sasl = false;
			if (lf != NULL) {
				pos += chunk + 1;
			} else {
				p->discarding = true;
				pos = len;
			}
			*consumed_r = pos;
			return POP3_ELINE;
		}
		if (chunk > 0) {
			if (memchr(data + pos, '\0', chunk) != NULL)
				p->saw_nul = true;
			memcpy(p->buf + p->len, data + pos, chunk);
			p->len += chunk;
		}
		pos += chunk;
		if (lf == NULL)
			break;
		pos++;  /* the LF */
		*consumed_r = pos;
		return finish_line(p, cmd_r);
	}
	*consumed_r = len;
	return 0;
}
