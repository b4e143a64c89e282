/*
 * A self-signed certificate for a fresh installation, so that every TLS
 * port works from the first `sealmail up`. Operators replace it with a real
 * one (tls_cert / tls_key in the configuration) whenever they like.
 *
 * The key is EC P-256; the certificate is X.509 v3, valid for
 * SM_TLS_SELFSIGNED_DAYS, for serverAuth, with subjectAltName
 * DNS:localhost, IP:127.0.0.1 and DNS:<hostname>.
 */
#ifndef SM_TLS_SELFSIGNED_H
#define SM_TLS_SELFSIGNED_H

#include <stdbool.h>

#define SM_TLS_SELFSIGNED_DAYS 3650

/*
 * If neither file exists, creates the key (mode 0600) and then the
 * certificate (mode 0644) and sets *created_r. If both exist, checks that
 * they parse and that the key belongs to the certificate. If only one
 * exists, that is an error: replacing the other could throw away an
 * operator's real key or certificate. The directories must exist.
 * Returns 0 or a negative eng_err code with a malloc'd sentence in *err_r.
 */
int sm_tls_selfsigned_ensure(const char *cert_path, const char *key_path,
			     const char *hostname, bool *created_r, char **err_r);

/* Checks that both files parse and match; 0 or negative with *err_r. */
int sm_tls_check_pair(const char *cert_path, const char *key_path, char **err_r);

#endif
