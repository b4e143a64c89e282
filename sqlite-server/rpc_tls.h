/*
 * The client side of sqlited's transport security (docs/rpc.md,
 * "Transport and its security"), shared by both clients (rpc_client*.c on
 * libuv, rpc_sync.c blocking), so that they apply one policy:
 *
 *  - TLS 1.2 or 1.3; under 1.2 only ECDHE with AES-GCM or ChaCha20-Poly1305
 *    (the server's list); no compression, no renegotiation.
 *  - The server certificate must chain to a certificate in ca_file: the
 *    installation's CA, or (a single machine with `sealmail init`'s
 *    self-signed certificate) that certificate itself, pinned. A
 *    certificate in ca_file is trusted as an anchor even when it is not a
 *    CA (X509_V_FLAG_PARTIAL_CHAIN).
 *  - It must name the target: server_name, an IP literal (matched against
 *    its IP SANs) or a DNS name (its DNS SANs / CN; also sent as SNI).
 *  - Optionally the client presents cert_file / key_file (mutual TLS).
 *
 * When TLS is used: always to an address outside loopback (127.0.0.0/8,
 * ::1, ::ffff:127.x: sm_net_addr_loopback, net_addr.h); on loopback only
 * when `always` is set (a server with sqlited_tls = always). A unix
 * socket never uses TLS.
 */
#ifndef RPC_TLS_H
#define RPC_TLS_H

#include <stdbool.h>
#include <sys/socket.h>

#include <openssl/ssl.h>

typedef struct rpc_tls_config {
	/* PEM file of the certificate(s) to trust; required for TLS. */
	const char *ca_file;
	/* The name or IP the certificate must carry; NULL: the target host. */
	const char *server_name;
	/* Optional client certificate (chain) and its key, PEM. */
	const char *cert_file;
	const char *key_file;
	/* TLS on loopback too (sqlited_tls = always). */
	bool always;
} rpc_tls_config;

/*
 * A client SSL_CTX with the policy above, trusting cfg->ca_file and
 * holding the client certificate if one is given. 0, ENG_EINVAL (no
 * ca_file), or ENG_EIO (a file does not load; logged with the cause).
 */
int rpc_tls_ctx_new(const rpc_tls_config *cfg, SSL_CTX **ctx_r);

/*
 * A client SSL on ctx that checks the certificate names server_name
 * (an IP literal or a DNS name). 0 or ENG_EIO.
 */
int rpc_tls_ssl_new(SSL_CTX *ctx, const char *server_name, SSL **ssl_r);

/*
 * After a failed handshake or record: logs why (who: "rpc client") and
 * gives RPC_ENOTAUTH when the server certificate did not verify (a wrong
 * server: retrying cannot help), RPC_EPROTO otherwise. Clears OpenSSL's
 * error queue.
 */
int rpc_tls_failure(SSL *ssl, const char *who);

#endif
