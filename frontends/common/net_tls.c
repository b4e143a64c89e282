/*
 * TLS in the frontends' network layer (net.h): the server context
 * (sm_net_tls: Mozilla's intermediate configuration, no resumption,
 * reloadable), the one BIO per connection that OpenSSL reads ciphertext
 * from and writes records to, starting TLS on a connection, plaintext out
 * through SSL_write into records, and records in through SSL_read into the
 * input buffer.
 *
 * Rules: every TLS buffer (ciphertext in, records out, OpenSSL's own:
 * SSL_MODE_RELEASE_BUFFERS) is freed when it drains. Plaintext written
 * before the handshake ends waits in tls_early, sent once it has. SSL_read
 * fills the input only up to its bound. Decrypted bytes are wiped from the
 * stack buffer they pass through.
 */
#include "net_private.h"

#include "eng_error.h"

#include <openssl/err.h>
#include <openssl/ssl.h>
#include <sodium.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* The plaintext of a full TLS record (OpenSSL's max_send_fragment). */
#define NET_TLS_RECORD 16384u

/*
 * Mozilla's "intermediate" configuration (ssl-config.mozilla.org, v5.7):
 * TLS 1.2 with ECDHE/DHE and AEAD only, the TLS 1.3 suites as they are.
 */
#define NET_TLS12_CIPHERS \
	"ECDHE-ECDSA-AES128-GCM-SHA256:ECDHE-RSA-AES128-GCM-SHA256:" \
	"ECDHE-ECDSA-AES256-GCM-SHA384:ECDHE-RSA-AES256-GCM-SHA384:" \
	"ECDHE-ECDSA-CHACHA20-POLY1305:ECDHE-RSA-CHACHA20-POLY1305:" \
	"DHE-RSA-AES128-GCM-SHA256:DHE-RSA-AES256-GCM-SHA384:" \
	"DHE-RSA-CHACHA20-POLY1305"
#define NET_TLS13_SUITES \
	"TLS_AES_128_GCM_SHA256:TLS_AES_256_GCM_SHA384:TLS_CHACHA20_POLY1305_SHA256"

struct sm_net_tls {
	SSL_CTX *ctx;
	char *cert_path;
	char *key_path;
};
/*
 * One BIO per TLS connection for both directions (SSL_set_bio with the
 * same BIO twice takes one reference): it reads the ciphertext on_read put
 * in c->tls_in and appends the records OpenSSL writes to c->tls_out, which
 * smnet_tls_flush hands to the socket as they are (no copy). Both buffers are
 * freed when drained. Two memory BIOs cost two BIOs, their locks and
 * BUF_MEMs per connection, and each kept its largest buffer.
 */
static BIO_METHOD *net_bio_method;
static CRYPTO_ONCE net_bio_once = CRYPTO_ONCE_STATIC_INIT;

static int net_bio_write(BIO *b, const char *data, int len)
{
	sm_net_conn *c = BIO_get_data(b);

	BIO_clear_retry_flags(b);
	if (len <= 0)
		return 0;
	eng_buf_append(&c->tls_out, data, (size_t)len);
	return len;
}

static int net_bio_read(BIO *b, char *out, int len)
{
	sm_net_conn *c = BIO_get_data(b);
	size_t avail = c->tls_in.len - c->tls_in_off;
	size_t n;

	BIO_clear_retry_flags(b);
	if (len <= 0)
		return 0;
	if (avail == 0) {
		BIO_set_retry_read(b);
		return -1;
	}
	n = avail < (size_t)len ? avail : (size_t)len;
	memcpy(out, c->tls_in.data + c->tls_in_off, n);
	c->tls_in_off += n;
	return (int)n;
}

static long net_bio_ctrl(BIO *b, int cmd, long num, void *ptr)
{
	sm_net_conn *c = BIO_get_data(b);

	(void)num;
	(void)ptr;
	switch (cmd) {
	case BIO_CTRL_FLUSH:
		return 1;
	case BIO_CTRL_PENDING:
		return (long)(c->tls_in.len - c->tls_in_off);
	case BIO_CTRL_WPENDING:
		return (long)c->tls_out.len;
	default:
		return 0;
	}
}

static int net_bio_create(BIO *b)
{
	BIO_set_init(b, 1);
	return 1;
}

static void net_bio_method_init(void)
{
	BIO_METHOD *m = BIO_meth_new(BIO_get_new_index() | BIO_TYPE_SOURCE_SINK,
				     "sealmail net");

	if (m == NULL || BIO_meth_set_write(m, net_bio_write) != 1 ||
	    BIO_meth_set_read(m, net_bio_read) != 1 ||
	    BIO_meth_set_ctrl(m, net_bio_ctrl) != 1 ||
	    BIO_meth_set_create(m, net_bio_create) != 1) {
		BIO_meth_free(m);
		return;
	}
	net_bio_method = m;
}

static char *ssl_err_sentence(const char *what, const char *path)
{
	char reason[256] = "unknown reason";
	unsigned long e = ERR_peek_last_error();
	eng_buf b = ENG_BUF_INIT;

	if (e != 0)
		ERR_error_string_n(e, reason, sizeof(reason));
	ERR_clear_error();
	eng_buf_printf(&b, "cannot load the TLS %s %s: %s", what, path, reason);
	return eng_buf_steal(&b, NULL);
}

static SSL_CTX *tls_ctx_load(const char *cert, const char *key, char **err_r)
{
	SSL_CTX *ctx = SSL_CTX_new(TLS_server_method());

	if (ctx == NULL) {
		*err_r = ssl_err_sentence("context", "");
		return NULL;
	}
	SSL_CTX_set_min_proto_version(ctx, TLS1_2_VERSION);
	SSL_CTX_set_options(ctx, SSL_OP_NO_COMPRESSION | SSL_OP_NO_RENEGOTIATION |
			    SSL_OP_NO_TICKET);
	/* An idle connection (IMAP IDLE) keeps no record buffers (~34 KiB). */
	SSL_CTX_set_mode(ctx, SSL_MODE_RELEASE_BUFFERS);
	/* No resumption: TLS 1.3 would send 2 stateful tickets per
	 * connection (SSL_OP_NO_TICKET) and keep each session in the
	 * context's cache for 2 hours, up to 20,480 of them (~1 KiB each);
	 * TLS 1.2 would cache every session ID. A full handshake costs a
	 * fraction of a millisecond (bench/README.md, "IMAP idle memory"). */
	SSL_CTX_set_num_tickets(ctx, 0);
	SSL_CTX_set_session_cache_mode(ctx, SSL_SESS_CACHE_OFF);
	/* Intermediate: the client chooses among suites that are all good. */
	SSL_CTX_clear_options(ctx, SSL_OP_CIPHER_SERVER_PREFERENCE);
	SSL_CTX_set_dh_auto(ctx, 1);
	if (SSL_CTX_set_cipher_list(ctx, NET_TLS12_CIPHERS) != 1 ||
	    SSL_CTX_set_ciphersuites(ctx, NET_TLS13_SUITES) != 1) {
		*err_r = ssl_err_sentence("cipher list", "");
		SSL_CTX_free(ctx);
		return NULL;
	}
	if (SSL_CTX_use_certificate_chain_file(ctx, cert) != 1) {
		*err_r = ssl_err_sentence("certificate", cert);
		SSL_CTX_free(ctx);
		return NULL;
	}
	if (SSL_CTX_use_PrivateKey_file(ctx, key, SSL_FILETYPE_PEM) != 1 ||
	    SSL_CTX_check_private_key(ctx) != 1) {
		*err_r = ssl_err_sentence("key", key);
		SSL_CTX_free(ctx);
		return NULL;
	}
	return ctx;
}

int sm_net_tls_new(const char *cert_path, const char *key_path,
		   sm_net_tls **tls_r, char **err_r)
{
	sm_net_tls *t;
	char *err = NULL;
	SSL_CTX *ctx;

	*tls_r = NULL;
	if (cert_path == NULL || key_path == NULL)
		return ENG_EINVAL;
	ctx = tls_ctx_load(cert_path, key_path, &err);
	if (ctx == NULL) {
		if (err_r != NULL)
			*err_r = err;
		else
			free(err);
		return ENG_EIO;
	}
	t = eng_calloc(1, sizeof(*t));
	t->ctx = ctx;
	t->cert_path = eng_strdup(cert_path);
	t->key_path = eng_strdup(key_path);
	*tls_r = t;
	return 0;
}

int sm_net_tls_reload(sm_net_tls *t, char **err_r)
{
	char *err = NULL;
	SSL_CTX *ctx = tls_ctx_load(t->cert_path, t->key_path, &err);

	if (ctx == NULL) {
		if (err_r != NULL)
			*err_r = err;
		else
			free(err);
		return ENG_EIO;
	}
	/* SSL_new took a reference: open connections keep the old one. */
	SSL_CTX_free(t->ctx);
	t->ctx = ctx;
	return 0;
}

void sm_net_tls_free(sm_net_tls **tls)
{
	sm_net_tls *t = tls != NULL ? *tls : NULL;

	if (t == NULL)
		return;
	SSL_CTX_free(t->ctx);
	free(t->cert_path);
	free(t->key_path);
	free(t);
	*tls = NULL;
}

/* After OpenSSL read: the ciphertext it took is dropped, all of it freed. */
static void tls_in_compact(sm_net_conn *c)
{
	if (c->tls_in_off == 0)
		return;
	if (c->tls_in_off >= c->tls_in.len) {
		eng_buf_free(&c->tls_in);
	} else {
		memmove(c->tls_in.data, c->tls_in.data + c->tls_in_off,
			c->tls_in.len - c->tls_in_off);
		c->tls_in.len -= c->tls_in_off;
	}
	c->tls_in_off = 0;
}

/* Moves the records TLS produced to the socket, in one write (the buffer
 * itself: the next record starts a new one). */
void smnet_tls_flush(sm_net_conn *c)
{
	if (c->tls_out.len > 0)
		smnet_wire_write_owned(c, &c->tls_out);
}

/* Plaintext through TLS (after the handshake) into records, left in
 * tls_out (written once it holds 64 KiB, before more). false: the
 * connection failed. */
static bool tls_put(sm_net_conn *c, const void *data, size_t len)
{
	while (len > 0 && !c->handles_closing) {
		int chunk = len > 65536 ? 65536 : (int)len;
		int n;

		if (c->tls_out.len >= 65536)
			smnet_tls_flush(c);
		/* the records: the plaintext and 22 bytes per 16 KiB record */
		eng_buf_reserve(&c->tls_out, (size_t)chunk + 256);
		n = SSL_write(c->ssl, data, chunk);

		if (n <= 0) {
			ERR_clear_error();
			smnet_conn_abort(c, SM_NET_TLS_ERROR);
			return false;
		}
		data = (const char *)data + n;
		len -= (size_t)n;
	}
	return !c->handles_closing;
}

/* Plaintext through TLS (after the handshake) to the socket. */
void smnet_tls_send(sm_net_conn *c, const void *data, size_t len)
{
	if (tls_put(c, data, len))
		smnet_tls_flush(c);
}

/*
 * sm_net_write_direct under TLS: the records are those of one batch of
 * everything (full ones, no small record per write), but most of the
 * bytes go through SSL_write from where they are: the batch takes the
 * first of them up to a record's end and goes, then the whole records
 * of the bytes, and their tail becomes the batch (to be followed by
 * what is written next). The records wait in tls_out, like a batch, for
 * 64 KiB or the loop turn.
 */
void smnet_tls_direct(sm_net_conn *c, const void *data, size_t len)
{
	const char *p = data;
	size_t k = (NET_TLS_RECORD - c->pend.len % NET_TLS_RECORD) %
		NET_TLS_RECORD;
	size_t whole;
	eng_buf b;
	bool ok;

	if (k >= len) {
		sm_net_write(c, data, len);
		return;
	}
	eng_buf_append(&c->pend, p, k);
	p += k;
	len -= k;
	whole = len - len % NET_TLS_RECORD;
	b = c->pend;
	c->pend = (eng_buf)ENG_BUF_INIT;
	ok = tls_put(c, b.data, b.len) && tls_put(c, p, whole);
	eng_buf_free(&b);
	if (!ok)
		return;
	eng_buf_append(&c->pend, p + whole, len - whole);
	if (c->tls_out.len >= NET_FLUSH_BYTES ||
	    c->out_bytes + c->tls_out.len > c->l->cfg.max_output_bytes)
		smnet_tls_flush(c);
	smnet_dirty_add(c);
}

/* Pulls plaintext out of TLS into the input buffer, up to its bound. */
void smnet_tls_pump(sm_net_conn *c)
{
	uint8_t plain[NET_READ_BYTES];
	size_t max_in = c->l->cfg.max_input_bytes;

	while (!c->handles_closing && !c->peer_eof && c->in.len < max_in) {
		size_t room = max_in - c->in.len;
		int n = SSL_read(c->ssl, plain, (int)(room < sizeof(plain) ?
						      room : sizeof(plain)));

		if (n > 0) {
			eng_buf_append(&c->in, plain, (size_t)n);
			continue;
		}
		int e = SSL_get_error(c->ssl, n);

		if (e == SSL_ERROR_WANT_READ)
			break;
		if (e == SSL_ERROR_ZERO_RETURN) {
			c->peer_eof = true;
			break;
		}
		ERR_clear_error();
		smnet_tls_flush(c);
		sodium_memzero(plain, sizeof(plain));
		smnet_conn_abort(c, SM_NET_TLS_ERROR);
		return;
	}
	sodium_memzero(plain, sizeof(plain));
	smnet_tls_flush(c);
	tls_in_compact(c);
	if (!c->tls_done && SSL_is_init_finished(c->ssl)) {
		c->tls_done = true;
		if (c->tls_early.len > 0) {
			eng_buf early = c->tls_early;

			c->tls_early = (eng_buf)ENG_BUF_INIT;
			smnet_tls_send(c, early.data, early.len);
			eng_buf_free_wipe(&early);
		}
	}
}

void smnet_ssl_start(sm_net_conn *c)
{
	BIO *b;

	if (CRYPTO_THREAD_run_once(&net_bio_once, net_bio_method_init) != 1 ||
	    net_bio_method == NULL)
		eng_oom(sizeof(BIO_METHOD *));
	c->ssl = SSL_new(c->l->cfg.tls->ctx);
	if (c->ssl == NULL)
		eng_oom(sizeof(SSL *));
	if ((b = BIO_new(net_bio_method)) == NULL)
		eng_oom(sizeof(BIO *));
	BIO_set_data(b, c);
	SSL_set_bio(c->ssl, b, b);   /* one reference, owned by ssl */
	SSL_set_accept_state(c->ssl);
}

const char *sm_net_tls_describe(const sm_net_conn *c, char *buf, size_t len)
{
	const SSL_CIPHER *cipher;
	int alg_bits = 0, bits;

	if (len == 0)
		return buf;
	buf[0] = '\0';
	if (!sm_net_is_tls(c) || (cipher = SSL_get_current_cipher(c->ssl)) == NULL)
		return buf;
	bits = SSL_CIPHER_get_bits(cipher, &alg_bits);
	snprintf(buf, len, "%s with cipher %s (%d/%d bits)", SSL_get_version(c->ssl),
		 SSL_CIPHER_get_name(cipher), bits, alg_bits);
	return buf;
}
