#include "tls_selfsigned.h"

#include <openssl/bio.h>
#include <openssl/bn.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/rand.h>
#include <openssl/x509.h>
#include <openssl/x509v3.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "eng_error.h"
#include "fsutil.h"

static int set_err(char **err_r, int code, const char *fmt, ...)
	__attribute__((format(printf, 3, 4)));

static int set_err(char **err_r, int code, const char *fmt, ...)
{
	va_list ap;
	unsigned long ossl = ERR_get_error();

	if (err_r != NULL) {
		char *msg;

		free(*err_r);
		*err_r = NULL;
		va_start(ap, fmt);
		if (vasprintf(&msg, fmt, ap) < 0)
			eng_oom(strlen(fmt));
		va_end(ap);
		if (ossl != 0) {
			char detail[256];

			ERR_error_string_n(ossl, detail, sizeof(detail));
			if (asprintf(err_r, "%s (%s)", msg, detail) < 0)
				eng_oom(strlen(msg));
			free(msg);
		} else {
			*err_r = msg;
		}
	}
	ERR_clear_error();
	return code;
}

static int add_ext(X509 *x, int nid, const char *value)
{
	X509V3_CTX ctx;
	X509_EXTENSION *ext;
	int ok;

	X509V3_set_ctx_nodb(&ctx);
	X509V3_set_ctx(&ctx, x, x, NULL, NULL, 0);
	ext = X509V3_EXT_conf_nid(NULL, &ctx, nid, value);
	if (ext == NULL)
		return -1;
	ok = X509_add_ext(x, ext, -1);
	X509_EXTENSION_free(ext);
	return ok == 1 ? 0 : -1;
}

/* A positive random 128-bit serial, as RFC 5280 asks for (at most 20 octets). */
static int set_serial(X509 *x)
{
	unsigned char bytes[16];
	BIGNUM *bn;
	int ok;

	if (RAND_bytes(bytes, sizeof(bytes)) != 1)
		return -1;
	bytes[0] &= 0x7f;
	bytes[0] |= 0x40;  /* never zero, never a leading zero octet */
	bn = BN_bin2bn(bytes, sizeof(bytes), NULL);
	if (bn == NULL)
		return -1;
	ok = BN_to_ASN1_INTEGER(bn, X509_get_serialNumber(x)) != NULL;
	BN_free(bn);
	return ok ? 0 : -1;
}

static X509 *make_cert(EVP_PKEY *pkey, const char *hostname)
{
	X509 *x = X509_new();
	X509_NAME *name;
	char san[400];

	if (x == NULL)
		return NULL;
	if (strcmp(hostname, "localhost") == 0)
		snprintf(san, sizeof(san), "DNS:localhost,IP:127.0.0.1");
	else
		snprintf(san, sizeof(san), "DNS:localhost,IP:127.0.0.1,DNS:%s", hostname);
	name = X509_get_subject_name(x);
	/* a CN is limited to 64 characters; the SAN carries the full name */
	if (X509_set_version(x, X509_VERSION_3) != 1 || set_serial(x) != 0 ||
	    X509_gmtime_adj(X509_getm_notBefore(x), -3600) == NULL ||
	    X509_time_adj_ex(X509_getm_notAfter(x), SM_TLS_SELFSIGNED_DAYS, 0, NULL) == NULL ||
	    X509_set_pubkey(x, pkey) != 1 ||
	    X509_NAME_add_entry_by_txt(name, "O", MBSTRING_ASC,
				       (const unsigned char *)"Sealmail self-signed", -1, -1, 0) != 1 ||
	    X509_NAME_add_entry_by_txt(name, "CN", MBSTRING_ASC,
				       (const unsigned char *)(strlen(hostname) <= 64 ? hostname : "localhost"),
				       -1, -1, 0) != 1 ||
	    X509_set_issuer_name(x, name) != 1 ||
	    add_ext(x, NID_basic_constraints, "critical,CA:FALSE") != 0 ||
	    add_ext(x, NID_key_usage, "critical,digitalSignature") != 0 ||
	    add_ext(x, NID_ext_key_usage, "serverAuth") != 0 ||
	    add_ext(x, NID_subject_key_identifier, "hash") != 0 ||
	    add_ext(x, NID_authority_key_identifier, "keyid:always") != 0 ||
	    add_ext(x, NID_subject_alt_name, san) != 0 ||
	    X509_sign(x, pkey, EVP_sha256()) <= 0) {
		X509_free(x);
		return NULL;
	}
	return x;
}

/* Writes a PEM held in a BIO to a new file. */
static int bio_to_file(BIO *bio, const char *path, mode_t mode, char **err_r)
{
	char *data;
	long len = BIO_get_mem_data(bio, &data);

	if (len <= 0)
		return set_err(err_r, ENG_EIO, "%s: nothing to write.", path);
	return sm_fs_create_file(path, data, (size_t)len, mode, err_r);
}

static int create_pair(const char *cert_path, const char *key_path, const char *hostname,
		       char **err_r)
{
	EVP_PKEY *pkey = NULL;
	X509 *x = NULL;
	BIO *kbio = NULL, *cbio = NULL;
	int ret;

	pkey = EVP_EC_gen("P-256");
	if (pkey == NULL) {
		ret = set_err(err_r, ENG_EIO, "cannot generate an EC P-256 key.");
		goto out;
	}
	if ((x = make_cert(pkey, hostname)) == NULL) {
		ret = set_err(err_r, ENG_EIO, "cannot build the self-signed certificate.");
		goto out;
	}
	/* secure memory BIO: the PEM of the private key is wiped when freed */
	kbio = BIO_new(BIO_s_secmem());
	cbio = BIO_new(BIO_s_mem());
	if (kbio == NULL || cbio == NULL)
		eng_oom(4096);
	if (PEM_write_bio_PrivateKey(kbio, pkey, NULL, NULL, 0, NULL, NULL) != 1 ||
	    PEM_write_bio_X509(cbio, x) != 1) {
		ret = set_err(err_r, ENG_EIO, "cannot encode the key or certificate.");
		goto out;
	}
	/* key first: a certificate without its key is useless, the reverse is just unfinished */
	if ((ret = bio_to_file(kbio, key_path, 0600, err_r)) != 0)
		goto out;
	ret = bio_to_file(cbio, cert_path, 0644, err_r);
out:
	BIO_free(kbio);
	BIO_free(cbio);
	X509_free(x);
	EVP_PKEY_free(pkey);
	return ret;
}

int sm_tls_check_pair(const char *cert_path, const char *key_path, char **err_r)
{
	FILE *f;
	X509 *x = NULL;
	EVP_PKEY *pkey = NULL;
	int ret = 0;

	if ((f = fopen(cert_path, "r")) == NULL)
		return set_err(err_r, ENG_ENOTFOUND, "%s: cannot open the certificate.", cert_path);
	x = PEM_read_X509(f, NULL, NULL, NULL);
	fclose(f);
	if (x == NULL)
		return set_err(err_r, ENG_ECORRUPT, "%s: is not a PEM certificate.", cert_path);
	if ((f = fopen(key_path, "r")) == NULL) {
		X509_free(x);
		return set_err(err_r, ENG_ENOTFOUND, "%s: cannot open the private key.", key_path);
	}
	pkey = PEM_read_PrivateKey(f, NULL, NULL, NULL);
	fclose(f);
	if (pkey == NULL)
		ret = set_err(err_r, ENG_ECORRUPT, "%s: is not an unencrypted PEM private key.",
			      key_path);
	else if (X509_check_private_key(x, pkey) != 1)
		ret = set_err(err_r, ENG_ECORRUPT, "%s does not belong to the certificate %s.",
			      key_path, cert_path);
	EVP_PKEY_free(pkey);
	X509_free(x);
	ERR_clear_error();
	return ret;
}

int sm_tls_selfsigned_ensure(const char *cert_path, const char *key_path,
			     const char *hostname, bool *created_r, char **err_r)
{
	int have_cert = sm_fs_exists(cert_path);
	int have_key = sm_fs_exists(key_path);
	int ret;

	*created_r = false;
	if (have_cert < 0 || have_key < 0)
		return set_err(err_r, ENG_EIO, "cannot look at %s or %s.", cert_path, key_path);
	if (have_cert && have_key)
		return sm_tls_check_pair(cert_path, key_path, err_r);
	if (have_cert != have_key)
		return set_err(err_r, ENG_EEXIST,
			       "%s exists but %s does not; put the missing file back, or "
			       "remove both to get a new self-signed pair.",
			       have_cert ? cert_path : key_path, have_cert ? key_path : cert_path);
	if ((ret = create_pair(cert_path, key_path, hostname, err_r)) == 0)
		*created_r = true;
	return ret;
}
