/*
 * SRS forward and reverse (srv_srs.h has the contract and the formats).
 * Follows libsrs2 (srs2.c): srs_compile_shortcut for a plain sender,
 * srs_compile_guarded for SRS0/SRS1 senders, srs_parse_shortcut /
 * srs_parse_guarded for reversal. The separator after "SRS0"/"SRS1" is
 * '=' when we write and any of "=+-" when we read, as in libsrs2.
 */
#include "srv_srs.h"
#include "eng_error.h"

#include <ctype.h>
#include <stdarg.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#define SEP '='

static const char b32[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZ234567";
static const char b64[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

/* The first SRV_SRS_HASH_CHARS of base64(HMAC-SHA1(secret, lc(parts)...)). */
static void srs_hash(const uint8_t *secret, size_t secret_len,
		     const char *const *parts, size_t n,
		     char out[SRV_SRS_HASH_CHARS + 1])
{
	unsigned char md[EVP_MAX_MD_SIZE];
	unsigned int md_len = 0;
	size_t total = 0, off = 0;
	char *data;

	for (size_t i = 0; i < n; i++)
		total += strlen(parts[i]);
	data = malloc(total + 1);
	if (data == NULL)
		eng_oom(total + 1);
	for (size_t i = 0; i < n; i++)
		for (const char *c = parts[i]; *c != '\0'; c++)
			data[off++] = (char)tolower((unsigned char)*c);
	HMAC(EVP_sha1(), secret, (int)secret_len, (const unsigned char *)data,
	     total, md, &md_len);
	free(data);
	/* 4 base64 characters are the first 3 bytes. */
	out[0] = b64[md[0] >> 2];
	out[1] = b64[((md[0] & 0x03) << 4) | (md[1] >> 4)];
	out[2] = b64[((md[1] & 0x0f) << 2) | (md[2] >> 6)];
	out[3] = b64[md[2] & 0x3f];
	out[4] = '\0';
}

static bool hash_ok(const uint8_t *secret, size_t secret_len,
		    const char *const *parts, size_t n, const char *given,
		    size_t given_len)
{
	char want[SRV_SRS_HASH_CHARS + 1];

	srs_hash(secret, secret_len, parts, n, want);
	return given_len == SRV_SRS_HASH_CHARS &&
	       strncasecmp(given, want, SRV_SRS_HASH_CHARS) == 0;
}

static unsigned day_of(int64_t now)
{
	return (unsigned)((now / 86400) % 1024);
}

static char *join(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

static char *join(const char *fmt, ...)
{
	va_list ap;
	char *s;
	int n;

	va_start(ap, fmt);
	n = vasprintf(&s, fmt, ap);
	va_end(ap);
	if (n < 0)
		eng_oom(0);
	return s;
}

/* "SRS0" or "SRS1" (any case) followed by one of "=+-". */
static bool has_tag(const char *local, char digit)
{
	return strncasecmp(local, "SRS", 3) == 0 && local[3] == digit &&
	       local[4] != '\0' && strchr("=+-", local[4]) != NULL;
}

/* Splits addr at its last '@' into a copy of the local part and the domain. */
static int split(const char *addr, char **local_r, const char **domain_r)
{
	const char *at = strrchr(addr, '@');

	if (at == NULL || at == addr || at[1] == '\0')
		return ENG_EINVAL;
	*local_r = strndup(addr, (size_t)(at - addr));
	if (*local_r == NULL)
		eng_oom(0);
	*domain_r = at + 1;
	return 0;
}

int srv_srs_forward(const uint8_t *secret, size_t secret_len, const char *sender,
		    const char *alias_domain, int64_t now, char **out_r)
{
	char hash[SRV_SRS_HASH_CHARS + 1], *local;
	const char *host;
	int err;

	*out_r = NULL;
	if (sender[0] == '\0') {
		*out_r = join("%s", "");
		return 0;
	}
	if (alias_domain[0] == '\0' || (err = split(sender, &local, &host)) != 0)
		return ENG_EINVAL;
	if (strcasecmp(host, alias_domain) == 0) {
		*out_r = join("%s", sender);
	} else if (has_tag(local, '1')) {
		/* SRS1=hash=hop1=<rest>: keep hop1 and rest, hash again. */
		char *h = local + 5, *hop = strchr(h, SEP), *rest;

		if (hop == NULL || (rest = strchr(hop + 1, SEP)) == NULL ||
		    rest == hop + 1) {
			free(local);
			return ENG_EINVAL;
		}
		*rest++ = '\0';
		hop++;
		srs_hash(secret, secret_len, (const char *const[]){ hop, rest }, 2, hash);
		*out_r = join("SRS1%c%s%c%s%c%s@%s", SEP, hash, SEP, hop, SEP, rest,
			      alias_domain);
	} else if (has_tag(local, '0')) {
		/* SRS0<sep>...@hop1: wrap as SRS1 naming hop1. */
		const char *rest = local + 4;

		srs_hash(secret, secret_len, (const char *const[]){ host, rest }, 2, hash);
		*out_r = join("SRS1%c%s%c%s%c%s@%s", SEP, hash, SEP, host, SEP, rest,
			      alias_domain);
	} else {
		unsigned d = day_of(now);
		char stamp[3] = { b32[(d >> 5) & 31], b32[d & 31], '\0' };

		srs_hash(secret, secret_len, (const char *const[]){ stamp, host, local },
			 3, hash);
		*out_r = join("SRS0%c%s%c%s%c%s%c%s@%s", SEP, hash, SEP, stamp, SEP, host,
			      SEP, local, alias_domain);
	}
	free(local);
	return 0;
}

static int b32_value(char c)
{
	const char *p = strchr(b32, toupper((unsigned char)c));

	return c != '\0' && p != NULL ? (int)(p - b32) : -1;
}

/* SRS0<sep>HHHH=TT=host=user -> user@host */
static int reverse0(const uint8_t *secret, size_t secret_len, char *s, int64_t now,
		    char **out_r)
{
	char *hash = s, *stamp, *host, *user;
	int hi, lo, age;

	if ((stamp = strchr(hash, SEP)) == NULL)
		return ENG_EINVAL;
	*stamp++ = '\0';
	if ((host = strchr(stamp, SEP)) == NULL)
		return ENG_EINVAL;
	*host++ = '\0';
	if ((user = strchr(host, SEP)) == NULL)
		return ENG_EINVAL;
	*user++ = '\0';
	if (strlen(stamp) != 2 || host[0] == '\0' || user[0] == '\0' ||
	    (hi = b32_value(stamp[0])) < 0 || (lo = b32_value(stamp[1])) < 0)
		return ENG_EINVAL;
	if (!hash_ok(secret, secret_len, (const char *const[]){ stamp, host, user }, 3,
		     hash, strlen(hash)))
		return ENG_EAUTH;
	age = ((int)day_of(now) - (hi * 32 + lo) + 1024) % 1024;
	if (age > SRV_SRS_MAX_AGE_DAYS)
		return ENG_ELIMIT;
	*out_r = join("%s@%s", user, host);
	return 0;
}

/* SRS1<sep>HHHH=hop1=<rest> -> SRS0<rest>@hop1 */
static int reverse1(const uint8_t *secret, size_t secret_len, char *s, char **out_r)
{
	char *hash = s, *hop, *rest;

	if ((hop = strchr(hash, SEP)) == NULL)
		return ENG_EINVAL;
	*hop++ = '\0';
	if ((rest = strchr(hop, SEP)) == NULL || rest == hop)
		return ENG_EINVAL;
	*rest++ = '\0';
	if (rest[0] == '\0' || strchr("=+-", rest[0]) == NULL)
		return ENG_EINVAL;
	if (!hash_ok(secret, secret_len, (const char *const[]){ hop, rest }, 2, hash,
		     strlen(hash)))
		return ENG_EAUTH;
	*out_r = join("SRS0%s@%s", rest, hop);
	return 0;
}

int srv_srs_reverse(const uint8_t *secret, size_t secret_len, const char *address,
		    int64_t now, char **out_r)
{
	char *local;
	const char *host;
	int err;

	*out_r = NULL;
	if ((err = split(address, &local, &host)) != 0)
		return err;
	if (has_tag(local, '0'))
		err = reverse0(secret, secret_len, local + 5, now, out_r);
	else if (has_tag(local, '1'))
		err = reverse1(secret, secret_len, local + 5, out_r);
	else
		err = ENG_EINVAL;
	free(local);
	return err;
}
