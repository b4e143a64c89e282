/*
 * The SMTP codec (frontends/mx/smtp_parser.h): every verb and its
 * arguments, paths and parameters, every per-line error and the resync
 * after it, the line limit, DATA (dot-unstuffing, every SMTP smuggling
 * variant, pipelining after the end, a 50 MiB message in 64 KiB slices
 * with no buffering), BDAT, the SASL line, reset (STARTTLS).
 *
 * Every stream is fed whole, one byte at a time and in random splits and
 * must give the same events (DATA/BDAT slices merged: only their
 * boundaries may differ). DATA output is also checked against a small,
 * non-incremental reference of the rules (reference_data below).
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "buf.h"
#include "testutil.h"

#include "smtp_parser.h"
#include "smtp_reference.h"

/* Bytes as a readable string: \r \n \0 and others escaped. */
static void put_escaped(eng_buf *out, const uint8_t *d, size_t n)
{
	for (size_t i = 0; i < n; i++) {
		if (d[i] == '\r')
			eng_buf_puts(out, "\\r");
		else if (d[i] == '\n')
			eng_buf_puts(out, "\\n");
		else if (d[i] < 32 || d[i] >= 127)
			eng_buf_printf(out, "\\x%02x", d[i]);
		else
			eng_buf_putc(out, (char)d[i]);
	}
}

typedef struct session {
	eng_buf out;
	eng_buf slices;         /* DATA/BDAT bytes not yet written out */
	smtp_event_type slice_type;
} session;

static void flush_slices(session *s)
{
	if (s->slice_type == SMTP_EV_NEED_MORE)
		return;
	eng_buf_puts(&s->out, s->slice_type == SMTP_EV_DATA ? "DATA[" : "BDAT[");
	put_escaped(&s->out, (const uint8_t *)s->slices.data, s->slices.len);
	eng_buf_puts(&s->out, "]\n");
	eng_buf_reset(&s->slices);
	s->slice_type = SMTP_EV_NEED_MORE;
}

static void put_str(eng_buf *out, const char *name, const char *v, size_t n)
{
	if (v == NULL)
		return;
	assert_int_equal(strlen(v), n);
	eng_buf_printf(out, " %s=", name);
	put_escaped(out, (const uint8_t *)v, n);
}

static void render_command(eng_buf *out, const smtp_command *c)
{
	eng_buf_printf(out, "CMD %s", c->verb == SMTP_UNKNOWN ? "?" : smtp_verb_name(c->verb));
	put_str(out, "verb", c->verb_text, c->verb_len);
	put_str(out, "arg", c->arg, c->arg_len);
	if (c->arg_literal)
		eng_buf_puts(out, " literal");
	put_str(out, "ir", c->auth_initial, c->auth_initial_len);
	if (c->verb == SMTP_MAIL || c->verb == SMTP_RCPT) {
		const smtp_path *pa = &c->path;

		if (pa->null_path)
			eng_buf_puts(out, " null");
		put_str(out, "route", pa->route, pa->route_len);
		put_str(out, "mbox", pa->mailbox, pa->mailbox_len);
		put_str(out, "local", pa->local, pa->local_len);
		put_str(out, "dom", pa->domain, pa->domain_len);
		eng_buf_printf(out, " q%d l%d u%d", pa->quoted_local, pa->domain_literal, pa->utf8);
		for (unsigned i = 0; i < c->nparams; i++) {
			put_str(out, "k", c->params[i].key, c->params[i].key_len);
			put_str(out, "v", c->params[i].value, c->params[i].value_len);
		}
	}
	if (c->has_size)
		eng_buf_printf(out, " size=%llu", (unsigned long long)c->size);
	if (c->body)
		eng_buf_printf(out, " body=%d", c->body);
	if (c->smtputf8)
		eng_buf_puts(out, " smtputf8");
	if (c->ret)
		eng_buf_printf(out, " ret=%d", c->ret);
	put_str(out, "envid", c->envid, c->envid_len);
	if (c->notify)
		eng_buf_printf(out, " notify=%u", c->notify);
	put_str(out, "otype", c->orcpt_type, c->orcpt_type_len);
	put_str(out, "oaddr", c->orcpt_addr, c->orcpt_addr_len);
	if (c->verb == SMTP_BDAT)
		eng_buf_printf(out, " n=%llu last=%d", (unsigned long long)c->bdat_size,
			       c->bdat_last);
	eng_buf_putc(out, '\n');
}

/* One event into the transcript, acting as a session would. */
static void handle(smtp_parser *p, session *s, const smtp_event *ev)
{
	if (ev->type == SMTP_EV_DATA || ev->type == SMTP_EV_BDAT) {
		assert_true(ev->len > 0);
		if (s->slice_type != ev->type)
			flush_slices(s);
		s->slice_type = ev->type;
		eng_buf_append(&s->slices, ev->data, ev->len);
		return;
	}
	flush_slices(s);
	switch (ev->type) {
	case SMTP_EV_COMMAND:
		render_command(&s->out, &ev->cmd);
		if (ev->cmd.verb == SMTP_DATA)
			smtp_parser_begin_data(p);
		if (ev->cmd.verb == SMTP_BDAT)
			smtp_parser_begin_bdat(p, ev->cmd.bdat_size);
		if (ev->cmd.verb == SMTP_AUTH && ev->cmd.auth_initial == NULL)
			smtp_parser_expect_line(p);
		break;
	case SMTP_EV_ERROR:
		assert_true(ev->err < 0);
		eng_buf_printf(&s->out, "ERR %d %d %s %s\n", ev->err, ev->reply_code,
			       ev->reply_status, smtp_verb_name(ev->cmd.verb));
		break;
	case SMTP_EV_DATA_END:
		eng_buf_printf(&s->out, "END err=%u bytes=%llu long=%llu nul=%llu\n",
			       ev->data_err, (unsigned long long)ev->data_bytes,
			       (unsigned long long)ev->long_lines,
			       (unsigned long long)ev->nul_bytes);
		break;
	case SMTP_EV_BDAT_END:
		eng_buf_puts(&s->out, "BDAT_END\n");
		break;
	case SMTP_EV_LINE:
		assert_int_equal(strlen(ev->line), ev->line_len);
		eng_buf_printf(&s->out, "LINE %s\n", ev->line);
		break;
	default:
		fail();
	}
}

/* lim: the smtp_limits (NULL: the defaults), for tu_split_same. */
static void transcript(const void *lim, const char *in, size_t len,
		       enum tu_split how, eng_buf *out)
{
	smtp_parser *p = smtp_parser_new(lim);
	session s = { ENG_BUF_INIT, ENG_BUF_INIT, SMTP_EV_NEED_MORE };
	size_t pos = 0;
	smtp_event ev;

	while (pos < len) {
		size_t piece = len - pos, off = 0;
		uint8_t *copy;

		piece = tu_split_piece(how, piece, 40);
		copy = malloc(piece);  /* exact size: ASan sees an overread */
		assert_non_null(copy);
		memcpy(copy, in + pos, piece);
		for (;;) {
			size_t n = smtp_parser_feed(p, copy + off, piece - off, &ev);

			assert_true(n <= piece - off);
			off += n;
			if (ev.type == SMTP_EV_NEED_MORE) {
				assert_int_equal(off, piece);
				break;
			}
			handle(p, &s, &ev);
		}
		free(copy);
		pos += piece;
	}
	/* An empty feed flushes a BDAT_END that needs no byte. */
	while (smtp_parser_feed(p, (const uint8_t *)"", 0, &ev) == 0 &&
	       ev.type != SMTP_EV_NEED_MORE)
		handle(p, &s, &ev);
	flush_slices(&s);
	eng_buf_printf(&s.out, "pending=%zu\n", smtp_parser_pending(p));
	smtp_parser_free(&p);
	assert_null(p);
	eng_buf_free(&s.slices);
	*out = s.out;
}

static char *parse_all_lim(const smtp_limits *lim, const char *in, size_t len)
{
	return tu_split_same(transcript, lim, in, len, 21);
}

static void expect_lim(const smtp_limits *lim, const char *in, size_t len, const char *want)
{
	char *got = parse_all_lim(lim, in, len);

	if (strcmp(got, want) != 0) {
		fprintf(stderr, "want:\n%s\ngot:\n%s\n", want, got);
		fail();
	}
	free(got);
}

static void expect(const char *in, const char *want)
{
	expect_lim(NULL, in, strlen(in), want);
}

/* ---- Commands ---- */

static void test_simple_verbs(void **state)
{
	(void)state;
	expect("EHLO mail.example.org\r\nhelo [192.0.2.1]\r\nEHLO [IPv6:2001:db8::1]\r\n"
	       "RSET\r\nnoop\r\nNOOP hello there \r\nQUIT\r\nSTARTTLS\r\nHELP\r\n"
	       "VRFY postmaster\r\nEXPN list\r\nAUTH PLAIN dGVzdA==\r\nXYZZY a b\r\n",
	       "CMD EHLO verb=EHLO arg=mail.example.org\n"
	       "CMD HELO verb=helo arg=[192.0.2.1] literal\n"
	       "CMD EHLO verb=EHLO arg=[IPv6:2001:db8::1] literal\n"
	       "CMD RSET verb=RSET\n"
	       "CMD NOOP verb=noop arg=\n"
	       "CMD NOOP verb=NOOP arg=hello there\n"
	       "CMD QUIT verb=QUIT\n"
	       "CMD STARTTLS verb=STARTTLS\n"
	       "CMD HELP verb=HELP arg=\n"
	       "CMD VRFY verb=VRFY arg=postmaster\n"
	       "CMD EXPN verb=EXPN arg=list\n"
	       "CMD AUTH verb=AUTH arg=PLAIN ir=dGVzdA==\n"
	       "CMD ? verb=XYZZY\n"
	       "pending=0\n");
	/* Arguments a verb does not take, or lacks. */
	expect("DATA x\r\nQUIT now\r\nEHLO\r\nEHLO a b\r\nVRFY\r\nEHLO bad..dom\r\n"
	       "EHLO -x.org\r\nEHLO [300.1.1.1]\r\nBDAT\r\nBDAT x\r\nBDAT 5 FIRST\r\n"
	       "BDAT 99999999999999999999\r\nAUTH\r\nAUTH PLAIN a b\r\n",
	       "ERR -2 501 5.5.4 DATA\nERR -2 501 5.5.4 QUIT\nERR -2 501 5.5.4 EHLO\n"
	       "ERR -2 501 5.5.4 EHLO\nERR -2 501 5.5.4 VRFY\nERR -2 501 5.5.4 EHLO\n"
	       "ERR -2 501 5.5.4 EHLO\nERR -2 501 5.5.4 EHLO\nERR -2 501 5.5.4 BDAT\n"
	       "ERR -2 501 5.5.4 BDAT\nERR -2 501 5.5.4 BDAT\nERR -2 501 5.5.4 BDAT\n"
	       "ERR -2 501 5.5.4 AUTH\nERR -2 501 5.5.4 AUTH\npending=0\n");
	/* HELO names in the wild: underscores, a bare IP, a UTF-8 name. */
	expect("HELO my_host.local\r\nEHLO 192.0.2.1\r\nEHLO b\xc3\xbc" "cher.example\r\n",
	       "CMD HELO verb=HELO arg=my_host.local\n"
	       "CMD EHLO verb=EHLO arg=192.0.2.1\n"
	       "CMD EHLO verb=EHLO arg=b\\xc3\\xbccher.example\n"
	       "pending=0\n");
}

static void test_mail_rcpt_paths(void **state)
{
	(void)state;
	expect("MAIL FROM:<>\r\nmail from: <a@b.example>\r\n"
	       "RCPT TO:<@r1.example,@[192.0.2.9]:u.x@d.example>\r\n"
	       "RCPT TO:<\"john doe\\\"\"@d.example>\r\nRCPT TO:<Postmaster>\r\n"
	       "RCPT TO:<u@[IPv6:::1]>\r\nRCPT TO:<u%other@d.example>\r\n"
	       "RCPT TO:<j\xc3\xb6rg@b\xc3\xbc" "cher.example>\r\n",
	       "CMD MAIL verb=MAIL null route= mbox= local= dom= q0 l0 u0\n"
	       "CMD MAIL verb=mail route= mbox=a@b.example local=a dom=b.example q0 l0 u0\n"
	       "CMD RCPT verb=RCPT route=@r1.example,@[192.0.2.9] mbox=u.x@d.example "
	       "local=u.x dom=d.example q0 l0 u0\n"
	       "CMD RCPT verb=RCPT route= mbox=\"john doe\\\"\"@d.example "
	       "local=\"john doe\\\"\" dom=d.example q1 l0 u0\n"
	       "CMD RCPT verb=RCPT route= mbox=Postmaster local=Postmaster dom= q0 l0 u0\n"
	       "CMD RCPT verb=RCPT route= mbox=u@[IPv6:::1] local=u dom=[IPv6:::1] q0 l1 u0\n"
	       "CMD RCPT verb=RCPT route= mbox=u%other@d.example local=u%other "
	       "dom=d.example q0 l0 u0\n"
	       "CMD RCPT verb=RCPT route= mbox=j\\xc3\\xb6rg@b\\xc3\\xbccher.example "
	       "local=j\\xc3\\xb6rg dom=b\\xc3\\xbccher.example q0 l0 u1\n"
	       "pending=0\n");
	/* Bad paths: 501 5.1.7 for MAIL, 501 5.1.3 for RCPT. */
	expect("MAIL FROM:a@b.example\r\nMAIL FROM:<a@b.example.>\r\nMAIL FROM:<a..b@c>\r\n"
	       "MAIL FROM:<.a@c>\r\nMAIL FROM:<a.@c>\r\nMAIL FROM:<a@>\r\nMAIL FROM:<a>\r\n"
	       "MAIL FROM:<a@b\r\nRCPT TO:<>\r\nRCPT TO:<postmaster@>\r\nRCPT TO:<a@b..c>\r\n"
	       "RCPT TO:<\xff@b>\r\nRCPT TO:<\xc3\x28@b>\r\nRCPT TO:<\"a@b>\r\n"
	       "RCPT TO:<@a:>\r\nRCPT TO:<@a,b:u@c>\r\nRCPT TO:<a b@c>\r\nRCPT TO:<a@[1.2.3]>\r\n"
	       "MAIL FROM <a@b>\r\nRCPT TO:<a@b>x\r\nMAIL FROM:<a@-b.c>\r\n",
	       "ERR -2 501 5.1.7 MAIL\nERR -2 501 5.1.7 MAIL\nERR -2 501 5.1.7 MAIL\n"
	       "ERR -2 501 5.1.7 MAIL\nERR -2 501 5.1.7 MAIL\nERR -2 501 5.1.7 MAIL\n"
	       "ERR -2 501 5.1.7 MAIL\nERR -2 501 5.1.7 MAIL\nERR -2 501 5.1.3 RCPT\n"
	       "ERR -2 501 5.1.3 RCPT\nERR -2 501 5.1.3 RCPT\nERR -2 501 5.1.3 RCPT\n"
	       "ERR -2 501 5.1.3 RCPT\nERR -2 501 5.1.3 RCPT\nERR -2 501 5.1.3 RCPT\n"
	       "ERR -2 501 5.1.3 RCPT\nERR -2 501 5.1.3 RCPT\nERR -2 501 5.1.3 RCPT\n"
	       "ERR -2 501 5.5.4 MAIL\nERR -2 501 5.5.4 RCPT\nERR -2 501 5.1.7 MAIL\n"
	       "pending=0\n");
}

static void test_params(void **state)
{
	(void)state;
	expect("MAIL FROM:<a@b.c> SIZE=1000 BODY=8bitmime SMTPUTF8 RET=HDRS ENVID=x+2By\r\n"
	       "MAIL FROM:<a@b.c>  body=BINARYMIME   \r\n"
	       "RCPT TO:<u@d.e> NOTIFY=SUCCESS,DELAY ORCPT=rfc822;u+40d.e\r\n"
	       "RCPT TO:<u@d.e> NOTIFY=never ORCPT=utf-8;j\xc3\xb6rg@d.e\r\n",
	       "CMD MAIL verb=MAIL route= mbox=a@b.c local=a dom=b.c q0 l0 u0 k=SIZE v=1000 "
	       "k=BODY v=8bitmime k=SMTPUTF8 k=RET v=HDRS k=ENVID v=x+2By size=1000 body=2 "
	       "smtputf8 ret=2 envid=x+2By\n"
	       "CMD MAIL verb=MAIL route= mbox=a@b.c local=a dom=b.c q0 l0 u0 k=body "
	       "v=BINARYMIME body=3\n"
	       "CMD RCPT verb=RCPT route= mbox=u@d.e local=u dom=d.e q0 l0 u0 k=NOTIFY "
	       "v=SUCCESS,DELAY k=ORCPT v=rfc822;u+40d.e notify=10 otype=rfc822 oaddr=u+40d.e\n"
	       "CMD RCPT verb=RCPT route= mbox=u@d.e local=u dom=d.e q0 l0 u0 k=NOTIFY v=never "
	       "k=ORCPT v=utf-8;j\\xc3\\xb6rg@d.e notify=1 otype=utf-8 oaddr=j\\xc3\\xb6rg@d.e\n"
	       "pending=0\n");
	/* Unknown or duplicate: 555; bad value: 501; bad shape: 501. */
	expect("MAIL FROM:<a@b.c> FOO=1\r\nMAIL FROM:<a@b.c> SIZE=1 SIZE=2\r\n"
	       "RCPT TO:<u@d.e> SIZE=1\r\nMAIL FROM:<a@b.c> NOTIFY=NEVER\r\n"
	       "MAIL FROM:<a@b.c> SIZE=x\r\nMAIL FROM:<a@b.c> SIZE=18446744073709551616\r\n"
	       "MAIL FROM:<a@b.c> BODY=9BIT\r\nMAIL FROM:<a@b.c> SMTPUTF8=yes\r\n"
	       "MAIL FROM:<a@b.c> RET=ALL\r\nMAIL FROM:<a@b.c> ENVID=a+zz\r\n"
	       "RCPT TO:<u@d.e> NOTIFY=NEVER,DELAY\r\nRCPT TO:<u@d.e> NOTIFY=\r\n"
	       "RCPT TO:<u@d.e> ORCPT=rfc822\r\nRCPT TO:<u@d.e> ORCPT=rfc822;a\xc3\xb6\r\n"
	       "MAIL FROM:<a@b.c> =1\r\nMAIL FROM:<a@b.c> A_B=1\r\nMAIL FROM:<a@b.c> SIZE\r\n"
	       "MAIL FROM:<a@b.c> A=1 B=2 C=3 D=4 E=5 F=6 G=7 H=8 I=9\r\n",
	       "ERR -5 555 5.5.4 MAIL\nERR -5 555 5.5.4 MAIL\nERR -5 555 5.5.4 RCPT\n"
	       "ERR -5 555 5.5.4 MAIL\nERR -5 501 5.5.4 MAIL\nERR -5 501 5.5.4 MAIL\n"
	       "ERR -5 501 5.5.4 MAIL\nERR -5 501 5.5.4 MAIL\nERR -5 501 5.5.4 MAIL\n"
	       "ERR -5 501 5.5.4 MAIL\nERR -5 501 5.5.4 RCPT\nERR -2 501 5.5.4 RCPT\n"
	       "ERR -5 501 5.5.4 RCPT\nERR -5 501 5.5.4 RCPT\nERR -2 501 5.5.4 MAIL\n"
	       "ERR -2 501 5.5.4 MAIL\nERR -5 501 5.5.4 MAIL\nERR -5 555 5.5.4 MAIL\n"
	       "pending=0\n");
}

static void test_line_errors(void **state)
{
	(void)state;
	/* NUL, bare CR, bare LF, empty line, leading space: one error per
	 * line, the next line parses. */
	static const char in[] = "NO\0OP\r\nNO\rOP\r\nNOOP\nNOOP\r\n\r\n OOPS\r\nQUIT\r\n";

	expect_lim(NULL, in, sizeof(in) - 1,
		   "ERR -3 500 5.5.2 \nERR -4 500 5.5.2 \nERR -4 500 5.5.2 \n"
		   "CMD NOOP verb=NOOP arg=\nERR -2 500 5.5.2 \nERR -2 500 5.5.2 \n"
		   "CMD QUIT verb=QUIT\npending=0\n");
}

static void test_line_limit(void **state)
{
	smtp_limits lim;
	eng_buf in = ENG_BUF_INIT;
	char *got;

	(void)state;
	smtp_limits_default(&lim);
	lim.line_max = 600;
	/* 598 bytes + CRLF = exactly 600: accepted. */
	eng_buf_puts(&in, "NOOP ");
	for (int i = 0; i < 593; i++)
		eng_buf_putc(&in, 'x');
	eng_buf_puts(&in, "\r\n");
	/* 599 + CRLF: one ELINE, the rest skipped, the next line parses. */
	eng_buf_puts(&in, "NOOP ");
	for (int i = 0; i < 2000; i++)
		eng_buf_putc(&in, 'y');
	eng_buf_puts(&in, "\r\nQUIT\r\n");
	got = parse_all_lim(&lim, in.data, in.len);
	assert_non_null(strstr(got, "CMD NOOP verb=NOOP arg=xxxx"));
	assert_non_null(strstr(got, "\nERR -1 500 5.5.2 \nCMD QUIT verb=QUIT\npending=0\n"));
	assert_null(strstr(got, "yy"));
	free(got);
	/* A partial line is held, within the limit. */
	{
		smtp_parser *p = smtp_parser_new(&lim);
		smtp_event ev;

		assert_int_equal(smtp_parser_feed(p, (const uint8_t *)in.data, 300, &ev), 300);
		assert_int_equal(ev.type, SMTP_EV_NEED_MORE);
		assert_int_equal(smtp_parser_pending(p), 300);
		smtp_parser_free(&p);
	}
	eng_buf_free(&in);
}

static void test_sasl_line_and_reset(void **state)
{
	smtp_parser *p = smtp_parser_new(NULL);
	const char *in = "STARTTLS\r\nMAIL FROM:<evil@x.y>\r\n";
	smtp_event ev;
	size_t n;

	(void)state;
	expect("AUTH LOGIN\r\ndXNlcg==\r\nAUTH PLAIN\r\n*\r\nNOOP\r\n",
	       "CMD AUTH verb=AUTH arg=LOGIN\nLINE dXNlcg==\nCMD AUTH verb=AUTH arg=PLAIN\n"
	       "LINE *\nCMD NOOP verb=NOOP arg=\npending=0\n");
	/* STARTTLS: the session resets and drops the rest of its input;
	 * a partial line already held is forgotten too. */
	n = smtp_parser_feed(p, (const uint8_t *)in, strlen(in), &ev);
	assert_int_equal(n, 10);
	assert_int_equal(ev.type, SMTP_EV_COMMAND);
	assert_int_equal(ev.cmd.verb, SMTP_STARTTLS);
	n = smtp_parser_feed(p, (const uint8_t *)"MAIL FR", 7, &ev);
	assert_int_equal(smtp_parser_pending(p), 7);
	smtp_parser_reset(p);
	assert_int_equal(smtp_parser_pending(p), 0);
	n = smtp_parser_feed(p, (const uint8_t *)"EHLO a.b\r\n", 10, &ev);
	assert_int_equal(n, 10);
	assert_int_equal(ev.cmd.verb, SMTP_EHLO);
	smtp_parser_free(&p);
	smtp_parser_free(&p);  /* accepts NULL */
}

/* ---- DATA ---- */

/* "DATA\r\n" + body + "QUIT\r\n": the transcript must match the reference. */
static void expect_data(const char *body, size_t body_len)
{
	eng_buf in = ENG_BUF_INIT, want = ENG_BUF_INIT, msg = ENG_BUF_INIT;
	unsigned err;
	size_t used = smtp_reference_data((const uint8_t *)body, body_len, &msg, &err);
	char *got;

	assert_true(used > 0);
	eng_buf_puts(&in, "DATA\r\n");
	eng_buf_append(&in, body, body_len);
	eng_buf_puts(&in, "QUIT\r\n");
	eng_buf_puts(&want, "CMD DATA verb=DATA\n");
	if (msg.len > 0) {
		eng_buf_puts(&want, "DATA[");
		put_escaped(&want, (const uint8_t *)msg.data, msg.len);
		eng_buf_puts(&want, "]\n");
	}
	eng_buf_printf(&want, "END err=%u bytes=%zu long=0 nul=0\n", err, msg.len);
	if (used < body_len) {
		/* What follows the end is commands: let the parser say. */
		got = parse_all_lim(NULL, in.data, in.len);
		assert_int_equal(strncmp(got, want.data, want.len), 0);
		free(got);
	} else {
		eng_buf_puts(&want, "CMD QUIT verb=QUIT\npending=0\n");
		expect_lim(NULL, in.data, in.len, want.data);
	}
	eng_buf_free(&in);
	eng_buf_free(&want);
	eng_buf_free(&msg);
}

static void test_data_smuggling(void **state)
{
	static const char *const variants[] = {
		"\n.\n", "\n.\r\n", "\r.\r\n", "\r\n.\r", "\r\n.\n", "\r\r\n.\r\r\n",
		/* and a few more of the family */
		"\r\n.\r\r\n", "\r\n..\r\n", "\r\n .\r\n", "\r\n.\n\r\n", "\n\r\n.\n",
	};
	(void)state;
	for (size_t v = 0; v < sizeof(variants) / sizeof(variants[0]); v++) {
		eng_buf body = ENG_BUF_INIT;
		/* A smuggled command behind the variant. */
		eng_buf_puts(&body, "Subject: x\r\n\r\nhello");
		eng_buf_puts(&body, variants[v]);
		eng_buf_puts(&body, "MAIL FROM:<evil@x.y>\r\nRCPT TO:<v@d.e>\r\nDATA\r\nspam\r\n.\r\n");
		expect_data(body.data, body.len);
		eng_buf_free(&body);
	}
	/* The exact bytes for the six named variants. */
	expect("DATA\r\na\n.\nb\r\n.\r\nQUIT\r\n",
	       "CMD DATA verb=DATA\nDATA[a\\n.\\nb\\r\\n]\nEND err=2 bytes=7 long=0 nul=0\n"
	       "CMD QUIT verb=QUIT\npending=0\n");
	expect("DATA\r\na\r.\r\nb\r\n.\r\nQUIT\r\n",
	       "CMD DATA verb=DATA\nDATA[a\\r.\\r\\nb\\r\\n]\nEND err=1 bytes=8 long=0 nul=0\n"
	       "CMD QUIT verb=QUIT\npending=0\n");
	expect("DATA\r\na\r\n.\rb\r\n.\r\nQUIT\r\n",
	       "CMD DATA verb=DATA\nDATA[a\\r\\n\\rb\\r\\n]\nEND err=1 bytes=7 long=0 nul=0\n"
	       "CMD QUIT verb=QUIT\npending=0\n");
	expect("DATA\r\na\r\n.\nb\r\n.\r\nQUIT\r\n",
	       "CMD DATA verb=DATA\nDATA[a\\r\\n\\nb\\r\\n]\nEND err=2 bytes=7 long=0 nul=0\n"
	       "CMD QUIT verb=QUIT\npending=0\n");
	expect("DATA\r\na\r\r\n.\r\r\nb\r\n.\r\nQUIT\r\n",
	       "CMD DATA verb=DATA\nDATA[a\\r\\r\\n\\r\\r\\nb\\r\\n]\n"
	       "END err=1 bytes=10 long=0 nul=0\nCMD QUIT verb=QUIT\npending=0\n");
	/* "\r\n.\r" at the very end of the input: held, no event yet. */
	expect("DATA\r\na\r\n.\r",
	       "CMD DATA verb=DATA\nDATA[a\\r\\n]\npending=0\n");
}

static void test_data_edges(void **state)
{
	(void)state;
	/* Empty message. */
	expect("DATA\r\n.\r\nQUIT\r\n",
	       "CMD DATA verb=DATA\nEND err=0 bytes=0 long=0 nul=0\nCMD QUIT verb=QUIT\n"
	       "pending=0\n");
	/* A dot at the very start, stuffed dots, a dot inside a line,
	 * "abc.\r\n" which is not an end. */
	expect("DATA\r\n.x\r\n..y\r\n...\r\nabc.\r\na.b\r\n.\r\n",
	       "CMD DATA verb=DATA\nDATA[x\\r\\n.y\\r\\n..\\r\\nabc.\\r\\na.b\\r\\n]\n"
	       "END err=0 bytes=22 long=0 nul=0\npending=0\n");
	/* Pipelined commands after the end, in the same buffer. */
	expect("MAIL FROM:<a@b.c>\r\nRCPT TO:<d@e.f>\r\nDATA\r\nhi\r\n.\r\n"
	       "MAIL FROM:<>\r\nRCPT TO:<g@e.f>\r\nDATA\r\nho\r\n.\r\nQUIT\r\n",
	       "CMD MAIL verb=MAIL route= mbox=a@b.c local=a dom=b.c q0 l0 u0\n"
	       "CMD RCPT verb=RCPT route= mbox=d@e.f local=d dom=e.f q0 l0 u0\n"
	       "CMD DATA verb=DATA\nDATA[hi\\r\\n]\nEND err=0 bytes=4 long=0 nul=0\n"
	       "CMD MAIL verb=MAIL null route= mbox= local= dom= q0 l0 u0\n"
	       "CMD RCPT verb=RCPT route= mbox=g@e.f local=g dom=e.f q0 l0 u0\n"
	       "CMD DATA verb=DATA\nDATA[ho\\r\\n]\nEND err=0 bytes=4 long=0 nul=0\n"
	       "CMD QUIT verb=QUIT\npending=0\n");
	/* NUL bytes are counted, not refused. */
	expect_lim(NULL, "DATA\r\na\0b\r\n.\r\n", sizeof("DATA\r\na\0b\r\n.\r\n") - 1,
		   "CMD DATA verb=DATA\nDATA[a\\x00b\\r\\n]\nEND err=0 bytes=5 long=0 nul=1\n"
		   "pending=0\n");
}

static void test_data_limits(void **state)
{
	smtp_limits lim;
	eng_buf in = ENG_BUF_INIT;
	char *got;

	(void)state;
	smtp_limits_default(&lim);
	lim.data_line_max = 10;
	lim.message_max = 30;
	/* 8 + CRLF fits; 9 + CRLF is long, twice over one line counts once. */
	eng_buf_puts(&in, "DATA\r\n12345678\r\n123456789\r\n.123456789012345678901\r\n.\r\n");
	got = parse_all_lim(&lim, in.data, in.len);
	assert_non_null(strstr(got, "END err=12 bytes=44 long=2 nul=0\n"));
	free(got);
	eng_buf_reset(&in);
	eng_buf_puts(&in, "DATA\r\n12345678\r\n.\r\n");
	got = parse_all_lim(&lim, in.data, in.len);
	assert_non_null(strstr(got, "END err=0 bytes=10 long=0 nul=0\n"));
	free(got);
	eng_buf_free(&in);
}

/* 50 MiB in 64 KiB slices: every slice points into the input (nothing
 * buffered), the output is the unstuffed message. */
static void test_data_50mib(void **state)
{
	const size_t slice = 64 * 1024, total = 50u * 1024 * 1024;
	uint8_t *wire = malloc(total + 16);
	smtp_parser *p = smtp_parser_new(NULL);
	uint64_t out_bytes = 0, out_hash = 1469598103934665603ull, want_hash = 1469598103934665603ull;
	uint64_t want_bytes = 0;
	size_t len = 0, pos = 0;
	smtp_event ev;
	bool ended = false;

	(void)state;
	assert_non_null(wire);
	/* Lines of 78 bytes + CRLF; every 7th starts with a stuffed dot. */
	for (unsigned line = 0; len + 80 + 5 <= total; line++) {
		if (line % 7 == 0)
			wire[len++] = '.';
		for (int k = 0; k < 78; k++) {
			uint8_t c = (uint8_t)('A' + (line + (unsigned)k) % 26);

			wire[len++] = c;
			want_hash = (want_hash ^ c) * 1099511628211ull;
			want_bytes++;
		}
		wire[len++] = '\r';
		wire[len++] = '\n';
		want_hash = ((want_hash ^ '\r') * 1099511628211ull ^ '\n') * 1099511628211ull;
		want_bytes += 2;
	}
	memcpy(wire + len, ".\r\n", 3);
	len += 3;
	smtp_parser_begin_data(p);
	while (pos < len && !ended) {
		size_t n = len - pos < slice ? len - pos : slice, off = 0;

		while (off < n) {
			size_t used = smtp_parser_feed(p, wire + pos + off, n - off, &ev);

			if (ev.type == SMTP_EV_DATA) {
				/* a slice of this piece of input: no copy */
				assert_true(ev.data >= wire + pos && ev.data + ev.len <= wire + pos + n);
				for (size_t k = 0; k < ev.len; k++)
					out_hash = (out_hash ^ ev.data[k]) * 1099511628211ull;
				out_bytes += ev.len;
			} else if (ev.type == SMTP_EV_DATA_END) {
				assert_int_equal(ev.data_err, 0);
				assert_int_equal(ev.data_bytes, want_bytes);
				ended = true;
			} else {
				assert_int_equal(ev.type, SMTP_EV_NEED_MORE);
			}
			assert_int_equal(smtp_parser_pending(p), 0);
			off += used;
		}
		pos += n;
	}
	assert_true(ended);
	assert_int_equal(pos, len);
	assert_int_equal(out_bytes, want_bytes);
	assert_true(out_hash == want_hash);
	assert_false(smtp_parser_in_message(p));
	smtp_parser_free(&p);
	free(wire);
}

static void test_data_too_big(void **state)
{
	smtp_limits lim;
	smtp_parser *p;
	const char *in = "0123456789\r\n0123456789\r\n.\r\n";
	smtp_event ev;
	size_t n;

	(void)state;
	smtp_limits_default(&lim);
	lim.message_max = 15;
	p = smtp_parser_new(&lim);
	smtp_parser_begin_data(p);
	n = smtp_parser_feed(p, (const uint8_t *)in, 12, &ev);
	assert_int_equal(n, 12);
	assert_int_equal(ev.type, SMTP_EV_DATA);
	assert_int_equal(ev.data_err, 0);
	n = smtp_parser_feed(p, (const uint8_t *)in + 12, 12, &ev);
	assert_int_equal(ev.type, SMTP_EV_DATA);
	assert_int_equal(ev.data_err, SMTP_DATA_TOO_BIG);  /* early: stop storing */
	n = smtp_parser_feed(p, (const uint8_t *)in + 24, 3, &ev);
	assert_int_equal(n, 3);
	assert_int_equal(ev.type, SMTP_EV_DATA_END);
	assert_int_equal(ev.data_err, SMTP_DATA_TOO_BIG);
	assert_int_equal(ev.data_bytes, 24);
	smtp_parser_free(&p);
}

/* Random messages from an alphabet of dangerous pieces, checked against
 * the reference under every split. */
static void test_data_random(void **state)
{
	static const char *const pieces[] = {
		"\r\n", "\n", "\r", ".", "..", "a", "b c", "\r\n.", ".\r\n", "\r\n.\r",
	};
	(void)state;
	for (int round = 0; round < 300; round++) {
		eng_buf body = ENG_BUF_INIT, msg = ENG_BUF_INIT;
		unsigned err;
		int count = 1 + (int)(tu_rng() % 12);

		for (int i = 0; i < count; i++)
			eng_buf_puts(&body, pieces[tu_rng() % (sizeof(pieces) /
							       sizeof(pieces[0]))]);
		eng_buf_puts(&body, "\r\n.\r\n");
		if (smtp_reference_data((const uint8_t *)body.data, body.len, &msg, &err) > 0)
			expect_data(body.data, body.len);
		eng_buf_free(&body);
		eng_buf_free(&msg);
	}
}

/* ---- BDAT ---- */

static void test_bdat(void **state)
{
	(void)state;
	expect("BDAT 7\r\na\r\n.\r\nbBDAT 0 LAST\r\nNOOP\r\n",
	       "CMD BDAT verb=BDAT n=7 last=0\nBDAT[a\\r\\n.\\r\\nb]\nBDAT_END\n"
	       "CMD BDAT verb=BDAT n=0 last=1\nBDAT_END\nCMD NOOP verb=NOOP arg=\npending=0\n");
	expect_lim(NULL, "bdat 3 last\r\n\n\r\0QUIT\r\n", sizeof("bdat 3 last\r\n\n\r\0QUIT\r\n") - 1,
	       "CMD BDAT verb=bdat n=3 last=1\nBDAT[\\n\\r\\x00]\nBDAT_END\n"
	       "CMD QUIT verb=QUIT\npending=0\n");
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_simple_verbs),
		cmocka_unit_test(test_mail_rcpt_paths),
		cmocka_unit_test(test_params),
		cmocka_unit_test(test_line_errors),
		cmocka_unit_test(test_line_limit),
		cmocka_unit_test(test_sasl_line_and_reset),
		cmocka_unit_test(test_data_smuggling),
		cmocka_unit_test(test_data_edges),
		cmocka_unit_test(test_data_limits),
		cmocka_unit_test(test_data_50mib),
		cmocka_unit_test(test_data_too_big),
		cmocka_unit_test(test_data_random),
		cmocka_unit_test(test_bdat),
	};

	/* This file's own sequence of random splits and bodies. */
	tu_rng_seed(0x2545f4914f6cdd1dull);
	return cmocka_run_group_tests(tests, NULL, NULL);
}
