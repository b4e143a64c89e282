/*
 * The blocking client (rpc_sync.h).
 *
 * Everything the server sends is read into c->inq, an unparsed byte queue,
 * and parsed from there by one rpc_reader. Writes poll for input too and
 * move what arrives into inq, so that a server that is itself blocked
 * writing to us (a download while we upload, an early ERROR) never
 * deadlocks with us. inq is bounded (RPC_SYNC_MAX_INQ_BYTES).
 */
#include "rpc_sync.h"

#include "eng_error.h"
#include "net_addr.h"
#include "rpc_auth.h"
#include "rpc_proto.h"
#include "rpc_tls.h"

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <openssl/err.h>
#include <openssl/ssl.h>
#include <poll.h>
#include <sodium.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

/* Input read while we write but not yet parsed: a bound well above the
 * frames and chunks the server may send without our credit. */
#define RPC_SYNC_MAX_INQ_BYTES (64u * 1024 * 1024)

struct rpc_sync {
	int fd;
	int timeout_ms;
	bool eof;                    /* the server closed its side */
	int err;                     /* sticky connection error, or 0 */
	rpc_reader *reader;
	eng_buf inq;
	size_t inq_off;
	uint32_t next_id;
	uint32_t max_frame;
	uint32_t max_in_flight;
	eng_buf out;                 /* scratch for outgoing frames */
	/* TLS over memory BIOs: recv() feeds rbio, SSL_read moves plaintext
	 * to inq; SSL_write fills wbio, whose bytes go out through send(). */
	SSL_CTX *ssl_ctx;
	SSL *ssl;
	BIO *rbio, *wbio;
	eng_buf tls_out;
};

static int64_t now_ms(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static int remaining_ms(int64_t deadline)
{
	int64_t left = deadline - now_ms();

	return left < 0 ? 0 : (int)left;
}

static int set_nonblock(int fd)
{
	int fl = fcntl(fd, F_GETFL);

	if (fl < 0 || fcntl(fd, F_SETFL, fl | O_NONBLOCK) < 0)
		return ENG_EIO;
	return 0;
}

static rpc_sync *sync_new(int fd, int timeout_ms)
{
	rpc_sync *c = eng_calloc(1, sizeof(*c));
	rpc_limits lim;

	c->fd = fd;
	c->timeout_ms = timeout_ms > 0 ? timeout_ms : RPC_SYNC_DEFAULT_TIMEOUT_MS;
	rpc_limits_default(&lim);
	c->reader = rpc_reader_new(&lim);
	c->next_id = 1;
	return c;
}

/* Waits for the connect() of a non-blocking socket. */
static int finish_connect(int fd, int rc, int timeout_ms)
{
	struct pollfd p = { .fd = fd, .events = POLLOUT };
	int soerr = 0;
	socklen_t sl = sizeof(soerr);

	if (rc == 0)
		return 0;
	if (errno != EINPROGRESS && errno != EAGAIN)
		return ENG_EIO;
	rc = poll(&p, 1, timeout_ms);
	if (rc == 0)
		return RPC_ETIMEOUT;
	if (rc < 0 || getsockopt(fd, SOL_SOCKET, SO_ERROR, &soerr, &sl) != 0 ||
	    soerr != 0)
		return ENG_EIO;
	return 0;
}

int rpc_sync_open_unix(const char *path, int timeout_ms, rpc_sync **c_r)
{
	struct sockaddr_un sa;
	int fd, rc;

	*c_r = NULL;
	if (timeout_ms <= 0)
		timeout_ms = RPC_SYNC_DEFAULT_TIMEOUT_MS;
	if (strlen(path) >= sizeof(sa.sun_path))
		return ENG_EINVAL;
	memset(&sa, 0, sizeof(sa));
	sa.sun_family = AF_UNIX;
	memcpy(sa.sun_path, path, strlen(path));
	fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
	if (fd < 0)
		return ENG_EIO;
	if (set_nonblock(fd) != 0) {
		close(fd);
		return ENG_EIO;
	}
	rc = connect(fd, (struct sockaddr *)&sa, sizeof(sa));
	rc = finish_connect(fd, rc, timeout_ms);
	if (rc != 0) {
		close(fd);
		return rc;
	}
	*c_r = sync_new(fd, timeout_ms);
	return 0;
}

/*
 * Connects to the first address of host that works. Without tls only
 * loopback addresses are tried (the protocol forbids AUTH in the clear
 * anywhere else: ENG_EPERM). *use_tls_r: whether the address reached
 * needs TLS under tls's rules.
 */
static int tcp_connect(const char *host, uint16_t port, int timeout_ms,
		       const rpc_tls_config *tls, int *fd_r, bool *use_tls_r)
{
	struct addrinfo hints, *res = NULL, *ai;
	char portstr[8];
	int fd = -1, rc = ENG_EIO, one = 1;

	memset(&hints, 0, sizeof(hints));
	hints.ai_socktype = SOCK_STREAM;
	hints.ai_flags = AI_NUMERICSERV;
	snprintf(portstr, sizeof(portstr), "%u", (unsigned)port);
	if (getaddrinfo(host, portstr, &hints, &res) != 0)
		return ENG_ENOTFOUND;
	for (ai = res; ai != NULL; ai = ai->ai_next) {
		bool loopback = sm_net_addr_loopback(ai->ai_addr);

		if (!loopback && tls == NULL) {
			rc = ENG_EPERM;
			continue;
		}
		fd = socket(ai->ai_family, SOCK_STREAM | SOCK_CLOEXEC, 0);
		if (fd < 0)
			continue;
		if (set_nonblock(fd) != 0) {
			close(fd);
			fd = -1;
			continue;
		}
		rc = connect(fd, ai->ai_addr, ai->ai_addrlen);
		rc = finish_connect(fd, rc, timeout_ms);
		if (rc == 0) {
			*use_tls_r = tls != NULL && (!loopback || tls->always);
			break;
		}
		close(fd);
		fd = -1;
	}
	freeaddrinfo(res);
	if (fd < 0)
		return rc;
	setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
	*fd_r = fd;
	return 0;
}

int rpc_sync_open_tcp(const char *host, uint16_t port, int timeout_ms,
		      rpc_sync **c_r)
{
	bool use_tls = false;
	int fd = -1, rc;

	*c_r = NULL;
	if (timeout_ms <= 0)
		timeout_ms = RPC_SYNC_DEFAULT_TIMEOUT_MS;
	rc = tcp_connect(host, port, timeout_ms, NULL, &fd, &use_tls);
	if (rc != 0)
		return rc;
	*c_r = sync_new(fd, timeout_ms);
	return 0;
}

static int read_some(rpc_sync *c);
static int tls_flush(rpc_sync *c);
static int fail(rpc_sync *c, int err);

/* The TLS handshake, blocking (with the connection's timeout). */
static int tls_handshake(rpc_sync *c)
{
	int64_t deadline = now_ms() + c->timeout_ms;

	for (;;) {
		int n = SSL_do_handshake(c->ssl);
		int e = n == 1 ? SSL_ERROR_NONE : SSL_get_error(c->ssl, n);
		int rc = tls_flush(c);   /* our flight, or the alert */

		if (e != SSL_ERROR_NONE && e != SSL_ERROR_WANT_READ)
			return fail(c, rpc_tls_failure(c->ssl, "rpc_sync"));
		if (rc != 0)
			return rc;
		if (e == SSL_ERROR_NONE)
			return 0;
		if (BIO_ctrl_pending(c->rbio) == 0) {
			struct pollfd pf = { .fd = c->fd, .events = POLLIN };

			if (c->eof)
				return fail(c, rpc_tls_failure(c->ssl, "rpc_sync"));
			rc = poll(&pf, 1, remaining_ms(deadline));
			if (rc < 0 && errno == EINTR)
				continue;
			if (rc < 0)
				return fail(c, ENG_EIO);
			if (rc == 0)
				return fail(c, RPC_ETIMEOUT);
			if (read_some(c) != 0)
				return c->err;
		}
	}
}

int rpc_sync_open_tls(const char *host, uint16_t port,
		      const rpc_tls_config *tls, int timeout_ms, rpc_sync **c_r)
{
	SSL_CTX *ctx = NULL;
	bool use_tls = false;
	rpc_sync *c;
	int fd = -1, rc;

	*c_r = NULL;
	if (tls == NULL)
		return ENG_EINVAL;
	if (timeout_ms <= 0)
		timeout_ms = RPC_SYNC_DEFAULT_TIMEOUT_MS;
	rc = rpc_tls_ctx_new(tls, &ctx);
	if (rc != 0)
		return rc;
	rc = tcp_connect(host, port, timeout_ms, tls, &fd, &use_tls);
	if (rc != 0) {
		SSL_CTX_free(ctx);
		return rc;
	}
	c = sync_new(fd, timeout_ms);
	if (!use_tls) {
		SSL_CTX_free(ctx);
		*c_r = c;
		return 0;
	}
	c->ssl_ctx = ctx;
	rc = rpc_tls_ssl_new(ctx, tls->server_name != NULL ? tls->server_name : host,
			     &c->ssl);
	if (rc == 0) {
		c->rbio = BIO_new(BIO_s_mem());
		c->wbio = BIO_new(BIO_s_mem());
		if (c->rbio == NULL || c->wbio == NULL)
			eng_oom(sizeof(void *));
		BIO_set_mem_eof_return(c->rbio, -1);
		SSL_set_bio(c->ssl, c->rbio, c->wbio);
		SSL_set_connect_state(c->ssl);
		rc = tls_handshake(c);
	}
	if (rc != 0) {
		rpc_sync_free(&c);
		return rc;
	}
	*c_r = c;
	return 0;
}

bool rpc_sync_tls(const rpc_sync *c)
{
	return c->ssl != NULL;
}

void rpc_sync_free(rpc_sync **c)
{
	if (c == NULL || *c == NULL)
		return;
	if ((*c)->fd >= 0)
		close((*c)->fd);
	if ((*c)->ssl != NULL)
		SSL_free((*c)->ssl);   /* frees both BIOs */
	if ((*c)->ssl_ctx != NULL)
		SSL_CTX_free((*c)->ssl_ctx);
	rpc_reader_free(&(*c)->reader);
	if ((*c)->inq.data != NULL)
		sodium_memzero((*c)->inq.data, (*c)->inq.cap);
	if ((*c)->out.data != NULL)
		sodium_memzero((*c)->out.data, (*c)->out.cap);
	eng_buf_free(&(*c)->inq);
	eng_buf_free(&(*c)->out);
	eng_buf_free(&(*c)->tls_out);
	free(*c);
	*c = NULL;
}

void rpc_sync_set_timeout(rpc_sync *c, int timeout_ms)
{
	c->timeout_ms = timeout_ms > 0 ? timeout_ms : RPC_SYNC_DEFAULT_TIMEOUT_MS;
}

bool rpc_sync_closed(const rpc_sync *c)
{
	return c->err != 0 || c->fd < 0;
}

uint32_t rpc_sync_max_frame(const rpc_sync *c)
{
	return c->max_frame;
}

uint32_t rpc_sync_max_in_flight(const rpc_sync *c)
{
	return c->max_in_flight;
}

uint32_t rpc_sync_next_id(rpc_sync *c)
{
	uint32_t id = c->next_id++;

	if (c->next_id == 0)
		c->next_id = 1;
	return id;
}

static int fail(rpc_sync *c, int err)
{
	if (c->err == 0)
		c->err = err;
	return err;
}

/*
 * Reads what is available (the socket is readable): into inq, or under
 * TLS into rbio (decrypted later by tls_decrypt, so that reading while a
 * handshake or a write is going on never runs SSL_read in the middle).
 */
static int read_some(rpc_sync *c)
{
	uint8_t tmp[16384];
	ssize_t n;

	if (c->inq.len - c->inq_off >= RPC_SYNC_MAX_INQ_BYTES ||
	    (c->ssl != NULL && BIO_ctrl_pending(c->rbio) >= RPC_SYNC_MAX_INQ_BYTES))
		return fail(c, ENG_ELIMIT);
	if (c->ssl != NULL) {
		n = recv(c->fd, tmp, sizeof(tmp), 0);
		if (n > 0) {
			if (BIO_write(c->rbio, tmp, (int)n) != (int)n)
				return fail(c, ENG_EIO);
			return 0;
		}
	} else {
		eng_buf_reserve(&c->inq, 65536);
		n = recv(c->fd, c->inq.data + c->inq.len, 65536, 0);
		if (n > 0) {
			c->inq.len += (size_t)n;
			c->inq.data[c->inq.len] = '\0';
			return 0;
		}
	}
	if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR))
		return 0;
	c->eof = true;
	return 0;
}

/* Under TLS: decrypts what rbio holds into inq. */
static int tls_decrypt(rpc_sync *c)
{
	if (c->ssl == NULL || !SSL_is_init_finished(c->ssl))
		return 0;
	for (;;) {
		int n, e;

		eng_buf_reserve(&c->inq, 16384);
		n = SSL_read(c->ssl, c->inq.data + c->inq.len, 16384);
		if (n > 0) {
			c->inq.len += (size_t)n;
			c->inq.data[c->inq.len] = '\0';
			continue;
		}
		e = SSL_get_error(c->ssl, n);
		if (e == SSL_ERROR_WANT_READ)
			return 0;
		if (e == SSL_ERROR_ZERO_RETURN) {
			c->eof = true;
			return 0;
		}
		return fail(c, rpc_tls_failure(c->ssl, "rpc_sync"));
	}
}

/* Sends bytes as they are on the socket; reads meanwhile (see above). */
static int sock_send_all(rpc_sync *c, const uint8_t *p, size_t len);

/* Moves what TLS wrote to wbio onto the socket. */
static int tls_flush(rpc_sync *c)
{
	size_t pending = BIO_ctrl_pending(c->wbio);
	int rc;

	if (pending == 0)
		return 0;
	eng_buf_reset(&c->tls_out);
	eng_buf_reserve(&c->tls_out, pending);
	if (BIO_read(c->wbio, c->tls_out.data, (int)pending) != (int)pending)
		return fail(c, ENG_EIO);
	c->tls_out.len = pending;
	rc = sock_send_all(c, (const uint8_t *)c->tls_out.data, c->tls_out.len);
	eng_buf_reset(&c->tls_out);
	return rc;
}

int rpc_sync_send_raw(rpc_sync *c, const void *data, size_t len)
{
	const uint8_t *p = data;

	if (c->err != 0)
		return c->err;
	if (c->ssl == NULL)
		return sock_send_all(c, p, len);
	while (len > 0) {
		/* wbio is a memory BIO: SSL_write takes everything at once. */
		int chunk = len > 1u << 30 ? 1 << 30 : (int)len;
		int n = SSL_write(c->ssl, p, chunk);

		if (n <= 0)
			return fail(c, rpc_tls_failure(c->ssl, "rpc_sync"));
		p += n;
		len -= (size_t)n;
		if (BIO_ctrl_pending(c->wbio) >= 256 * 1024) {
			int rc = tls_flush(c);

			if (rc != 0)
				return rc;
		}
	}
	return tls_flush(c);
}

static int sock_send_all(rpc_sync *c, const uint8_t *p, size_t len)
{
	int64_t deadline = now_ms() + c->timeout_ms;

	if (c->err != 0)
		return c->err;
	while (len > 0) {
		struct pollfd pf = { .fd = c->fd, .events = POLLOUT };
		ssize_t n;
		int rc;

		if (!c->eof)
			pf.events |= POLLIN;
		rc = poll(&pf, 1, remaining_ms(deadline));
		if (rc < 0 && errno == EINTR)
			continue;
		if (rc < 0)
			return fail(c, ENG_EIO);
		if (rc == 0)
			return RPC_ETIMEOUT;
		if ((pf.revents & POLLIN) && read_some(c) != 0)
			return c->err;
		if (!(pf.revents & (POLLOUT | POLLERR | POLLHUP)))
			continue;
		n = send(c->fd, p, len, MSG_NOSIGNAL);
		if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR))
			continue;
		if (n <= 0)
			return fail(c, ENG_EIO);
		p += n;
		len -= (size_t)n;
		deadline = now_ms() + c->timeout_ms;
	}
	return 0;
}

int rpc_sync_send(rpc_sync *c, uint8_t kind, uint8_t flags, uint16_t opcode,
		  uint32_t request_id, const void *payload, size_t payload_len)
{
	size_t mark;
	int rc;

	eng_buf_reset(&c->out);
	mark = rpc_frame_begin(&c->out, kind, flags, opcode, request_id);
	if (payload_len > 0)
		eng_buf_append(&c->out, payload, payload_len);
	rc = rpc_frame_end(&c->out, mark, NULL);
	if (rc != 0)
		return rc;
	return rpc_sync_send_raw(c, c->out.data, c->out.len);
}

int rpc_sync_recv(rpc_sync *c, int timeout_ms, rpc_frame *f_r)
{
	int64_t deadline;

	if (c->err != 0)
		return c->err;
	if (timeout_ms < 0)
		timeout_ms = c->timeout_ms;
	deadline = now_ms() + timeout_ms;
	for (;;) {
		size_t used = 0;
		int rc;

		if (c->inq_off == c->inq.len) {
			eng_buf_reset(&c->inq);
			c->inq_off = 0;
		}
		rc = 0;
		if (c->inq.len > c->inq_off)
			rc = rpc_reader_feed(c->reader,
					     (const uint8_t *)c->inq.data + c->inq_off,
					     c->inq.len - c->inq_off, &used, f_r);
		c->inq_off += used;
		if (rc < 0)
			return fail(c, rc);
		if (rc == 1)
			return 0;
		if (c->ssl != NULL && BIO_ctrl_pending(c->rbio) > 0) {
			size_t before = c->inq.len;

			if (tls_decrypt(c) != 0)
				return c->err;
			if (c->inq.len > before)
				continue;
		}
		if (c->eof)
			return fail(c, ENG_EIO);
		struct pollfd pf = { .fd = c->fd, .events = POLLIN };
		rc = poll(&pf, 1, remaining_ms(deadline));
		if (rc < 0 && errno == EINTR)
			continue;
		if (rc < 0)
			return fail(c, ENG_EIO);
		if (rc == 0)
			return RPC_ETIMEOUT;
		if (read_some(c) != 0)
			return c->err;
	}
}

int rpc_sync_error_code(const rpc_frame *f)
{
	rpc_msg msg = RPC_MSG_INIT;
	rpc_view root;
	uint64_t code = 0;
	int err = ENG_EIO;

	if (rpc_decode(f->payload, f->payload_len, NULL, &msg, &root) == 0 &&
	    rpc_get_u64(&root, RPC_T_CODE, &code) == 0) {
		err = rpc_err_from_wire(code);
		if (err == 0)
			err = ENG_EIO;
	}
	rpc_msg_clear(&msg);
	return err;
}

/* An ERROR frame with request id 0 ends the connection. */
static int connection_error(rpc_sync *c, const rpc_frame *f)
{
	return fail(c, rpc_sync_error_code(f));
}

int rpc_sync_handshake(rpc_sync *c, const uint8_t secret[32],
		       const char *peer_name)
{
	uint8_t sn[RPC_NONCE_BYTES], cn[RPC_NONCE_BYTES], proof[RPC_PROOF_BYTES];
	rpc_msg msg = RPC_MSG_INIT;
	rpc_view root;
	rpc_frame f;
	rpc_iter it;
	const rpc_field *fld;
	const uint8_t *p;
	size_t len, name_len = strlen(peer_name);
	uint64_t v;
	bool v1 = false;
	eng_buf pl = ENG_BUF_INIT;
	int rc;

	rc = rpc_sync_recv(c, -1, &f);
	if (rc != 0)
		goto out;
	if (f.kind == RPC_K_ERROR) {
		rc = connection_error(c, &f);
		goto out;
	}
	if (f.kind != RPC_K_HELLO) {
		rc = fail(c, RPC_EPROTO);
		goto out;
	}
	rc = rpc_decode(f.payload, f.payload_len, NULL, &msg, &root);
	if (rc != 0)
		goto out;
	rpc_iter_init(&it, &root);
	while ((fld = rpc_iter_next(&it, RPC_T_VERSION)) != NULL) {
		if (fld->type == RPC_W_VARINT && fld->u == RPC_VERSION)
			v1 = true;
	}
	if (!v1) {
		rc = fail(c, RPC_EVERSION);
		goto out;
	}
	if (rpc_get_bytes(&root, RPC_T_NONCE, &p, &len) != 0 ||
	    len != RPC_NONCE_BYTES) {
		rc = fail(c, RPC_EPROTO);
		goto out;
	}
	memcpy(sn, p, RPC_NONCE_BYTES);
	rc = rpc_auth_nonce(cn);
	if (rc != 0)
		goto out;
	rc = rpc_auth_client_proof(secret, sn, cn, (const uint8_t *)peer_name,
				   name_len, proof);
	if (rc != 0)
		goto out;
	rpc_put_u64(&pl, RPC_T_VERSION, RPC_VERSION);
	rpc_put_bytes(&pl, RPC_T_NONCE, cn, sizeof(cn));
	rpc_put_bytes(&pl, RPC_T_PEER_NAME, peer_name, name_len);
	rpc_put_bytes(&pl, RPC_T_PROOF, proof, sizeof(proof));
	rc = rpc_sync_send(c, RPC_K_AUTH, 0, 0, 0, pl.data, pl.len);
	if (rc != 0)
		goto out;
	rc = rpc_sync_recv(c, -1, &f);
	if (rc != 0)
		goto out;
	if (f.kind == RPC_K_ERROR) {
		rc = connection_error(c, &f);
		goto out;
	}
	if (f.kind != RPC_K_AUTH_OK) {
		rc = fail(c, RPC_EPROTO);
		goto out;
	}
	rc = rpc_decode(f.payload, f.payload_len, NULL, &msg, &root);
	if (rc != 0)
		goto out;
	if (rpc_get_bytes(&root, RPC_T_PROOF, &p, &len) != 0 ||
	    rpc_auth_verify_server(secret, sn, cn, (const uint8_t *)peer_name,
				   name_len, p, len) != 0) {
		/* A wrong server: send nothing more to it. */
		rc = fail(c, RPC_ENOTAUTH);
		goto out;
	}
	if (rpc_get_u64(&root, RPC_T_MAX_FRAME, &v) == 0 && v <= UINT32_MAX)
		c->max_frame = (uint32_t)v;
	if (rpc_get_u64(&root, RPC_T_MAX_IN_FLIGHT, &v) == 0 && v <= UINT32_MAX)
		c->max_in_flight = (uint32_t)v;
	rc = 0;
out:
	sodium_memzero(proof, sizeof(proof));
	eng_buf_free(&pl);
	rpc_msg_clear(&msg);
	return rc;
}

int rpc_sync_connect_unix(const char *path, const uint8_t secret[32],
			  const char *peer_name, int timeout_ms,
			  rpc_sync **c_r)
{
	int rc = rpc_sync_open_unix(path, timeout_ms, c_r);

	if (rc == 0 && (rc = rpc_sync_handshake(*c_r, secret, peer_name)) != 0)
		rpc_sync_free(c_r);
	return rc;
}

int rpc_sync_connect_tcp(const char *host, uint16_t port,
			 const uint8_t secret[32], const char *peer_name,
			 int timeout_ms, rpc_sync **c_r)
{
	int rc = rpc_sync_open_tcp(host, port, timeout_ms, c_r);

	if (rc == 0 && (rc = rpc_sync_handshake(*c_r, secret, peer_name)) != 0)
		rpc_sync_free(c_r);
	return rc;
}

int rpc_sync_connect_tls(const char *host, uint16_t port,
			 const rpc_tls_config *tls, const uint8_t secret[32],
			 const char *peer_name, int timeout_ms, rpc_sync **c_r)
{
	int rc = rpc_sync_open_tls(host, port, tls, timeout_ms, c_r);

	if (rc == 0 && (rc = rpc_sync_handshake(*c_r, secret, peer_name)) != 0)
		rpc_sync_free(c_r);
	return rc;
}

void rpc_sync_resp_clear(rpc_sync_resp *resp)
{
	eng_buf_free(&resp->payload);
	rpc_msg_clear(&resp->msg);
	eng_buf_free(&resp->body);
	resp->view.f = NULL;
	resp->view.n = 0;
	resp->parts = 0;
	resp->has_body = false;
	resp->body_bytes = 0;
}

static int send_window(rpc_sync *c, uint32_t id, uint64_t credit)
{
	eng_buf pl = ENG_BUF_INIT;
	int rc;

	rpc_put_u64(&pl, RPC_T_CREDIT, credit);
	rc = rpc_sync_send(c, RPC_K_WINDOW, 0, 0, id, pl.data, pl.len);
	eng_buf_free(&pl);
	return rc;
}

/* State of one call while its answer comes in. */
typedef struct call_state {
	uint32_t id;
	uint64_t window;             /* upload credit left */
	bool answered;               /* last RESPONSE part seen */
	bool streaming;              /* a body is coming */
	bool body_done;
	int result;                  /* an ERROR's code, or a local abort */
	bool finished;
	uint64_t ungranted;          /* download bytes not yet credited */
} call_state;

/*
 * Handles one frame of the call's answer (frames for other ids are
 * dropped). Sets st->finished when the request is over.
 */
static int on_frame(rpc_sync *c, call_state *st, const rpc_frame *f,
		    const rpc_sync_call_opts *o, rpc_sync_resp *resp)
{
	if (f->kind == RPC_K_ERROR && f->request_id == 0)
		return connection_error(c, f);
	if (f->request_id != st->id)
		return 0;
	switch (f->kind) {
	case RPC_K_ERROR:
		st->result = rpc_sync_error_code(f);
		st->finished = true;
		return 0;
	case RPC_K_WINDOW: {
		rpc_msg msg = RPC_MSG_INIT;
		rpc_view root;
		uint64_t credit = 0;

		if (rpc_decode(f->payload, f->payload_len, NULL, &msg, &root) == 0 &&
		    rpc_get_u64(&root, RPC_T_CREDIT, &credit) == 0)
			st->window += credit;
		rpc_msg_clear(&msg);
		return 0;
	}
	case RPC_K_RESPONSE:
		if (st->answered)
			return fail(c, RPC_EPROTO);
		eng_buf_append(&resp->payload, f->payload, f->payload_len);
		resp->parts++;
		if (f->flags & RPC_F_BODY) {
			resp->has_body = true;
			st->streaming = true;
		}
		if (!(f->flags & RPC_F_MORE)) {
			st->answered = true;
			if (!st->streaming)
				st->finished = true;
		}
		return 0;
	case RPC_K_DATA:
		if (!st->streaming || st->body_done)
			return fail(c, RPC_EWINDOW);
		resp->body_bytes += f->payload_len;
		if (o->max_body_bytes != 0 && resp->body_bytes > o->max_body_bytes) {
			st->result = ENG_ELIMIT;
			st->finished = true;
			return rpc_sync_send(c, RPC_K_CANCEL, 0, 0, st->id, NULL, 0);
		}
		if (o->body_write != NULL) {
			int rc = f->payload_len == 0 ? 0 :
				 o->body_write(o->body_write_ctx, f->payload,
					       f->payload_len);
			if (rc < 0) {
				st->result = rc;
				st->finished = true;
				return rpc_sync_send(c, RPC_K_CANCEL, 0, 0, st->id,
						     NULL, 0);
			}
		} else {
			eng_buf_append(&resp->body, f->payload, f->payload_len);
		}
		if (f->flags & RPC_F_END) {
			st->body_done = true;
			if (st->answered)
				st->finished = true;
			return 0;
		}
		st->ungranted += f->payload_len;
		if (st->ungranted >= RPC_INITIAL_WINDOW_BYTES / 2) {
			uint64_t g = st->ungranted;

			st->ungranted = 0;
			return send_window(c, st->id, g);
		}
		return 0;
	default:
		return 0;
	}
}

/* Sends the body as DATA frames within the window. */
static int upload(rpc_sync *c, call_state *st, const rpc_sync_call_opts *o,
		  rpc_sync_resp *resp)
{
	uint8_t *chunk = NULL;
	size_t off = 0;
	int rc = 0;

	if (o->body_read != NULL)
		chunk = eng_malloc(RPC_MAX_CHUNK_BYTES);
	st->window = RPC_INITIAL_WINDOW_BYTES;
	for (;;) {
		rpc_frame f;
		const void *p;
		size_t want, n;
		bool last;

		/* Take what the server has said so far without waiting: an
		 * early ERROR ends the upload. */
		while ((rc = rpc_sync_recv(c, 0, &f)) == 0) {
			rc = on_frame(c, st, &f, o, resp);
			if (rc != 0 || st->finished || st->answered)
				goto out;
		}
		if (rc != RPC_ETIMEOUT)
			goto out;
		rc = 0;
		if (st->window == 0) {
			rc = rpc_sync_recv(c, -1, &f);
			if (rc != 0)
				goto out;
			rc = on_frame(c, st, &f, o, resp);
			if (rc != 0 || st->finished || st->answered)
				goto out;
			continue;
		}
		want = st->window < RPC_MAX_CHUNK_BYTES ? (size_t)st->window :
		       RPC_MAX_CHUNK_BYTES;
		if (o->body_read == NULL) {
			n = o->body_len - off < want ? o->body_len - off : want;
			p = (const uint8_t *)o->body + off;
			off += n;
			last = off == o->body_len;
		} else {
			long got = o->body_read(o->body_read_ctx, chunk, want);

			if (got < 0) {
				/* Abandon: the server stores nothing and
				 * answers ECANCELLED. */
				rc = rpc_sync_send(c, RPC_K_CANCEL, 0, 0, st->id, NULL, 0);
				st->result = (int)got;
				goto out;
			}
			n = (size_t)got;
			p = chunk;
			last = n == 0;
		}
		rc = rpc_sync_send(c, RPC_K_DATA, last ? RPC_F_END : 0, 0, st->id,
				   p, n);
		if (rc != 0)
			goto out;
		st->window -= n;
		if (last)
			break;
	}
out:
	free(chunk);
	return rc;
}

int rpc_sync_call_ex(rpc_sync *c, uint16_t opcode, const void *payload,
		     size_t payload_len, const rpc_sync_call_opts *opts,
		     rpc_sync_resp *resp)
{
	static const rpc_sync_call_opts none;
	const rpc_sync_call_opts *o = opts != NULL ? opts : &none;
	call_state st;
	rpc_limits lim;
	int rc;

	rpc_sync_resp_clear(resp);
	memset(&st, 0, sizeof(st));
	st.id = rpc_sync_next_id(c);
	rc = rpc_sync_send(c, RPC_K_REQUEST, o->has_body ? RPC_F_BODY : 0, opcode,
			   st.id, payload, payload_len);
	if (rc != 0)
		return rc;
	if (o->has_body) {
		rc = upload(c, &st, o, resp);
		if (rc != 0)
			return rc;
	}
	while (!st.finished) {
		rpc_frame f;

		rc = rpc_sync_recv(c, -1, &f);
		if (rc != 0)
			return rc;
		rc = on_frame(c, &st, &f, o, resp);
		if (rc != 0)
			return rc;
	}
	if (st.result != 0)
		return st.result;
	/* The parts together may hold more fields than one frame may: bound
	 * the count by the bytes instead (a field takes at least 2). */
	rpc_limits_default(&lim);
	lim.max_frame_bytes = UINT32_MAX;
	lim.max_bytes_field = UINT32_MAX;
	lim.max_fields = (uint32_t)(resp->payload.len / 2 + 1);
	return rpc_decode((const uint8_t *)resp->payload.data, resp->payload.len,
			  &lim, &resp->msg, &resp->view);
}

int rpc_sync_call(rpc_sync *c, uint16_t opcode, const void *payload,
		  size_t payload_len, rpc_sync_resp *resp)
{
	return rpc_sync_call_ex(c, opcode, payload, payload_len, NULL, resp);
}
