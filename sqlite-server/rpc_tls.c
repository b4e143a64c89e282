/*
 * Client TLS policy for sqlited's RPC (rpc_tls.h).
 */
#include "rpc_tls.h"

#include "eng_error.h"
#include "rpc_proto.h"

#include <arpa/inet.h>
#include <openssl/err.h>
#include <openssl/x509v3.h>
#include <string.h>

/* The server's TLS 1.2 list (srv_net.c); TLS 1.3 suites are all AEAD. */
#define RPC_TLS12_CIPHERS "ECDHE+AESGCM:ECDHE+CHACHA20"

static void log_ssl_errors(const char *what, const char *file)
{
	unsigned long e = ERR_get_error();
	char msg[256] = "unknown error";

	if (e != 0)
		ERR_error_string_n(e, msg, sizeof(msg));
	eng_log(ENG_LOG_ERROR, "rpc tls: %s %s: %s", what, file, msg);
	ERR_clear_error();
}

int rpc_tls_ctx_new(const rpc_tls_config *cfg, SSL_CTX **ctx_r)
{
	SSL_CTX *ctx;

	*ctx_r = NULL;
	if (cfg == NULL || cfg->ca_file == NULL || cfg->ca_file[0] == '\0')
		return ENG_EINVAL;
	if ((cfg->cert_file == NULL) != (cfg->key_file == NULL))
		return ENG_EINVAL;
	ctx = SSL_CTX_new(TLS_client_method());
	if (ctx == NULL)
		eng_oom(sizeof(void *));
	SSL_CTX_set_min_proto_version(ctx, TLS1_2_VERSION);
	SSL_CTX_set_options(ctx, SSL_OP_NO_COMPRESSION | SSL_OP_NO_RENEGOTIATION);
	SSL_CTX_set_mode(ctx, SSL_MODE_ACCEPT_MOVING_WRITE_BUFFER);
	if (SSL_CTX_set_cipher_list(ctx, RPC_TLS12_CIPHERS) != 1) {
		log_ssl_errors("cipher list", RPC_TLS12_CIPHERS);
		goto fail;
	}
	if (SSL_CTX_load_verify_locations(ctx, cfg->ca_file, NULL) != 1) {
		log_ssl_errors("cannot load the CA file", cfg->ca_file);
		goto fail;
	}
	/* A pinned self-signed server certificate is an anchor, not a CA. */
	X509_VERIFY_PARAM_set_flags(SSL_CTX_get0_param(ctx),
				    X509_V_FLAG_PARTIAL_CHAIN);
	SSL_CTX_set_verify(ctx, SSL_VERIFY_PEER, NULL);
	if (cfg->cert_file != NULL) {
		if (SSL_CTX_use_certificate_chain_file(ctx, cfg->cert_file) != 1) {
			log_ssl_errors("cannot load the client certificate", cfg->cert_file);
			goto fail;
		}
		if (SSL_CTX_use_PrivateKey_file(ctx, cfg->key_file, SSL_FILETYPE_PEM) != 1 ||
		    SSL_CTX_check_private_key(ctx) != 1) {
			log_ssl_errors("cannot load the client key", cfg->key_file);
			goto fail;
		}
	}
	*ctx_r = ctx;
	return 0;
fail:
	SSL_CTX_free(ctx);
	return ENG_EIO;
}

int rpc_tls_ssl_new(SSL_CTX *ctx, const char *server_name, SSL **ssl_r)
{
	unsigned char addr[16];
	SSL *ssl = SSL_new(ctx);
	int ok;

	*ssl_r = NULL;
	if (ssl == NULL)
		eng_oom(sizeof(void *));
	if (server_name == NULL || server_name[0] == '\0') {
		SSL_free(ssl);
		return ENG_EINVAL;
	}
	if (inet_pton(AF_INET, server_name, addr) == 1 ||
	    inet_pton(AF_INET6, server_name, addr) == 1) {
		ok = X509_VERIFY_PARAM_set1_ip_asc(SSL_get0_param(ssl), server_name);
	} else {
		ok = SSL_set1_host(ssl, server_name) == 1 &&
		     SSL_set_tlsext_host_name(ssl, server_name) == 1;
	}
	if (!ok) {
		ERR_clear_error();
		SSL_free(ssl);
		return ENG_EIO;
	}
	*ssl_r = ssl;
	return 0;
}

int rpc_tls_failure(SSL *ssl, const char *who)
{
	long v = ssl != NULL ? SSL_get_verify_result(ssl) : X509_V_OK;
	unsigned long e = ERR_peek_error();
	char msg[256] = "connection closed during the handshake";

	if (v != X509_V_OK) {
		eng_log(ENG_LOG_WARN, "%s: TLS: the server certificate is not trusted "
			"(%s); check sqlited_ca", who,
			X509_verify_cert_error_string(v));
		ERR_clear_error();
		return RPC_ENOTAUTH;
	}
	if (e != 0)
		ERR_error_string_n(e, msg, sizeof(msg));
	eng_log(ENG_LOG_WARN, "%s: TLS failed: %s", who, msg);
	ERR_clear_error();
	return RPC_EPROTO;
}
