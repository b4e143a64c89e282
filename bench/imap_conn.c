/*
 * bench-imap's connections (bench_imap.c says what the program is,
 * bench_imap.h what its files share): failing loudly, sending commands
 * (TLS through memory BIOs), receiving logical lines with literals
 * counted and skipped, opening and closing connections. Moved from
 * bench_imap.c as it was.
 */
#include <dirent.h>
#include <errno.h>
#include <getopt.h>
#include <inttypes.h>
#include <signal.h>
#include <openssl/err.h>
#include <openssl/ssl.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>
#include <uv.h>

#include "bench_imap.h"
#include "msggen.h"

/* ---- failing loudly ---- */

void die(const char *fmt, ...)
{
	va_list ap;

	va_start(ap, fmt);
	fputs("bench-imap: ", stderr);
	vfprintf(stderr, fmt, ap);
	fputc('\n', stderr);
	va_end(ap);
	exit(1);
}

void fail(struct conn *c, const char *what, const char *line)
{
	die("conn %d (user %d): %s: %.300s", c->id, c->user, what, line ? line : "");
}

/* ---- sending ---- */

struct wreq {
	uv_write_t req;
	char *owned;
};

static void on_written(uv_write_t *req, int status)
{
	struct wreq *w = (struct wreq *)req;

	if (status < 0 && !g.stopping)
		die("write: %s", uv_strerror(status));
	free(w->owned);
	free(w);
}

/* data stays valid until written (owned: freed then). */
static void wire_write(struct conn *c, char *data, size_t len, bool owned)
{
	struct wreq *w = malloc(sizeof(*w));
	uv_buf_t b = uv_buf_init(data, (unsigned)len);

	if (w == NULL)
		abort();
	w->owned = owned ? data : NULL;
	if (uv_write(&w->req, (uv_stream_t *)&c->tcp, &b, 1, on_written) != 0)
		fail(c, "uv_write failed", NULL);
}

static void tls_flush(struct conn *c)
{
	int pending;

	while ((pending = (int)BIO_ctrl_pending(c->wbio)) > 0) {
		char *buf = malloc((size_t)pending);

		if (buf == NULL)
			abort();
		BIO_read(c->wbio, buf, pending);
		wire_write(c, buf, (size_t)pending, true);
	}
}

/* Sends len bytes of data that stays valid until the write completes. */
void send_static(struct conn *c, const char *data, size_t len)
{
	if (c->ssl == NULL) {
		wire_write(c, (char *)data, len, false);
		return;
	}
	if (SSL_write(c->ssl, data, (int)len) != (int)len)
		fail(c, "SSL_write failed", NULL);
	tls_flush(c);
}

static void send_copy(struct conn *c, const char *data, size_t len)
{
	char *copy;

	if (c->ssl != NULL) {
		send_static(c, data, len);      /* SSL_write copies */
		return;
	}
	copy = malloc(len);
	if (copy == NULL)
		abort();
	memcpy(copy, data, len);
	wire_write(c, copy, len, true);
}

/* Sends "TAG command\r\n" with a fresh tag and starts its clock. */
void cmd(struct conn *c, const char *fmt, ...)
{
	char buf[1024];
	va_list ap;
	int n;

	snprintf(c->tag, sizeof(c->tag), "a%u", ++c->tagn);
	n = snprintf(buf, sizeof(buf), "%s ", c->tag);
	va_start(ap, fmt);
	n += vsnprintf(buf + n, sizeof(buf) - (size_t)n - 2, fmt, ap);
	va_end(ap);
	if (n > (int)sizeof(buf) - 3)
		fail(c, "command too long", NULL);
	buf[n++] = '\r';
	buf[n++] = '\n';
	c->t_cmd = now_s();
	c->logging_out = strcmp(fmt, "LOGOUT") == 0;
	send_copy(c, buf, (size_t)n);
}

/* --user with its "%d" or "%0Nd" replaced by the connection's user number. */
static void user_name(char *out, size_t size, int n)
{
	const char *f = opt.user_fmt, *pct = strchr(f, '%');
	int width = 0;

	if (pct == NULL) {
		snprintf(out, size, "%s", f);
		return;
	}
	if (pct[1] == '0')
		width = pct[2] - '0';
	snprintf(out, size, "%.*s%0*d%s", (int)(pct - f), f, width, n,
		 strchr(pct, 'd') + 1);
}

void send_login(struct conn *c)
{
	char user[256];

	user_name(user, sizeof(user), c->user);
	cmd(c, "LOGIN \"%s\" \"%s\"", user, opt.pass);
}

/* ---- receiving: logical lines, literals counted and skipped ---- */

static void line_put(struct conn *c, const char *data, size_t len)
{
	if (c->line_len + len + 1 > c->line_cap) {
		size_t cap = (c->line_len + len + 1) * 2;

		if (cap > LINE_MAX_BYTES)
			fail(c, "response line too long", NULL);
		c->line = realloc(c->line, cap);
		if (c->line == NULL)
			abort();
		c->line_cap = cap;
	}
	memcpy(c->line + c->line_len, data, len);
	c->line_len += len;
	c->line[c->line_len] = '\0';
}

/* The logical line ends in "{N}" or "{N+}" (CRLF stripped): N, or -1. */
static int64_t literal_at_end(const struct conn *c)
{
	size_t i = c->line_len;
	uint64_t n = 0, mul = 1;

	if (i < 3 || c->line[i - 1] != '}')
		return -1;
	i--;
	if (c->line[i - 1] == '+')
		i--;
	if (i == 0 || c->line[i - 1] < '0' || c->line[i - 1] > '9')
		return -1;
	while (i > 0 && c->line[i - 1] >= '0' && c->line[i - 1] <= '9') {
		n += (uint64_t)(c->line[i - 1] - '0') * mul;
		mul *= 10;
		i--;
	}
	return (i > 0 && c->line[i - 1] == '{') ? (int64_t)n : -1;
}

static void dispatch(struct conn *c)
{
	const char *l = c->line;
	size_t tl = strlen(c->tag);

	if (!c->greeted) {
		c->greeted = true;
		if (strncmp(l, "* OK", 4) != 0)
			fail(c, "greeting", l);
		c->script(c, EV_GREETING, l, true);
	} else if (l[0] == '+') {
		c->script(c, EV_CONT, l, true);
	} else if (l[0] == '*') {
		c->script(c, EV_UNTAGGED, l, true);
	} else if (strncmp(l, c->tag, tl) == 0 && l[tl] == ' ') {
		c->script(c, EV_TAGGED, l, strncmp(l + tl + 1, "OK", 2) == 0);
	} else {
		fail(c, "unexpected line", l);
	}
}

static void feed(struct conn *c, const char *data, size_t n)
{
	while (n > 0 && c->open) {
		const char *nl;
		size_t k;

		if (c->lit_left > 0) {
			k = n < c->lit_left ? n : (size_t)c->lit_left;
			c->lit_left -= k;
			c->lit_bytes += k;
			g.bytes += k;
			data += k;
			n -= k;
			continue;
		}
		nl = memchr(data, '\n', n);
		k = nl ? (size_t)(nl - data) + 1 : n;
		line_put(c, data, k);
		data += k;
		n -= k;
		if (nl == NULL)
			break;
		c->line_len -= (c->line_len >= 2 && c->line[c->line_len - 2] == '\r') ? 2 : 1;
		c->line[c->line_len] = '\0';
		{
			int64_t lit = literal_at_end(c);

			if (lit >= 0) {
				c->lit_left = (uint64_t)lit;
				continue;      /* the line goes on after the literal */
			}
		}
		dispatch(c);
		c->line_len = 0;
		c->lit_bytes = 0;
	}
}

/* ---- connections ---- */

static void on_closed(uv_handle_t *h)
{
	struct conn *c = h->data;

	if (c->ssl != NULL)
		SSL_free(c->ssl);     /* frees the BIOs */
	c->ssl = NULL;
	if (c->reopen)
		conn_open(c);
}

void conn_close(struct conn *c)
{
	if (!c->open)
		return;
	c->open = false;
	uv_close((uv_handle_t *)&c->tcp, on_closed);
}

static void alloc_cb(uv_handle_t *h, size_t suggested, uv_buf_t *buf)
{
	(void)h;
	(void)suggested;
	*buf = uv_buf_init(g.readbuf, sizeof(g.readbuf));
}

static void tls_feed(struct conn *c, const char *data, size_t n)
{
	static char plain[READ_BUF];
	int r;

	BIO_write(c->rbio, data, (int)n);
	if (!SSL_is_init_finished(c->ssl)) {
		r = SSL_do_handshake(c->ssl);
		tls_flush(c);
		if (r != 1) {
			int e = SSL_get_error(c->ssl, r);

			if (e != SSL_ERROR_WANT_READ && e != SSL_ERROR_WANT_WRITE)
				fail(c, "TLS handshake failed", NULL);
			return;
		}
	}
	while (c->open && (r = SSL_read(c->ssl, plain, sizeof(plain))) > 0)
		feed(c, plain, (size_t)r);
	if (c->open)
		tls_flush(c);
}

static void on_read(uv_stream_t *s, ssize_t n, const uv_buf_t *buf)
{
	struct conn *c = s->data;

	if (n < 0) {
		if (c->open && !c->logging_out && c->step != -2)
			fail(c, "connection closed by the server", uv_strerror((int)n));
		conn_close(c);
		return;
	}
	if (c->ssl != NULL)
		tls_feed(c, buf->base, (size_t)n);
	else
		feed(c, buf->base, (size_t)n);
}

static void on_connect(uv_connect_t *req, int status)
{
	struct conn *c = req->data;

	if (status < 0)
		fail(c, "connect", uv_strerror(status));
	uv_read_start((uv_stream_t *)&c->tcp, alloc_cb, on_read);
	if (opt.tls) {
		c->ssl = SSL_new(g.ssl_ctx);
		c->rbio = BIO_new(BIO_s_mem());
		c->wbio = BIO_new(BIO_s_mem());
		if (c->ssl == NULL || c->rbio == NULL || c->wbio == NULL)
			abort();
		SSL_set_bio(c->ssl, c->rbio, c->wbio);
		SSL_set_connect_state(c->ssl);
		SSL_do_handshake(c->ssl);
		tls_flush(c);
	}
}

/* Opens connection c (again): greeting, then its script runs. */
void conn_open(struct conn *c)
{
	struct sockaddr_in src, dst;
	int ip = c->id / PER_SOURCE_IP + 1;
	char srcs[32];

	snprintf(srcs, sizeof(srcs), "127.1.%d.%d", (ip >> 8) & 255, ip & 255);
	uv_ip4_addr(srcs, 0, &src);
	uv_ip4_addr(opt.host, opt.port, &dst);
	c->open = true;
	c->reopen = false;
	c->logging_out = false;
	c->greeted = false;
	c->step = 0;
	c->line_len = 0;
	c->lit_left = c->lit_bytes = 0;
	uv_tcp_init(g.loop, &c->tcp);
	c->tcp.data = c;
	c->creq.data = c;
	uv_tcp_nodelay(&c->tcp, 1);
	if (uv_tcp_bind(&c->tcp, (struct sockaddr *)&src, 0) != 0)
		fail(c, "bind to the source address", srcs);
	if (uv_tcp_connect(&c->creq, &c->tcp, (struct sockaddr *)&dst, on_connect) != 0)
		fail(c, "uv_tcp_connect", NULL);
}
