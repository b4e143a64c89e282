/*
 * Test helper: signs a message with DKIM (libopendkim's dkim_sign), for the
 * MX sender authentication tests. Keys come from opendkim-genkey.
 *
 *   dkim_sign KEY_FILE SELECTOR DOMAIN < message > signed-message
 *
 * The message on stdin has CRLF line ends; stdout is the DKIM-Signature
 * header (relaxed/relaxed, rsa-sha256, CRLF folding) followed by the
 * message unchanged. Exit 0, or 2 on an error (no key material is printed).
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <opendkim/dkim.h>

#define MAX_BYTES (50u << 20)
#define PREFIX "DKIM-Signature: "

static unsigned char *slurp(FILE *f, size_t *len)
{
	unsigned char *buf = malloc(MAX_BYTES + 1);
	*len = buf ? fread(buf, 1, MAX_BYTES, f) : 0;
	if (buf)
		buf[*len] = '\0';
	return buf;
}

/* Writes the header with every bare LF turned into CRLF. */
static void put_crlf(const unsigned char *s, size_t n)
{
	for (size_t i = 0; i < n; i++) {
		if (s[i] == '\n' && (i == 0 || s[i - 1] != '\r'))
			putchar('\r');
		putchar(s[i]);
	}
}

int main(int argc, char **argv)
{
	if (argc != 4) {
		fprintf(stderr, "usage: %s KEY_FILE SELECTOR DOMAIN\n", argv[0]);
		return 2;
	}
	FILE *kf = fopen(argv[1], "rb");
	size_t klen = 0, mlen = 0;
	unsigned char *key = kf ? slurp(kf, &klen) : NULL;
	if (kf)
		fclose(kf);
	unsigned char *msg = slurp(stdin, &mlen);
	if (key == NULL || klen == 0 || msg == NULL) {
		fprintf(stderr, "dkim_sign: cannot read the key or the message\n");
		return 2;
	}
	DKIM_LIB *lib = dkim_init(NULL, NULL);
	DKIM_STAT st = DKIM_STAT_INTERNAL;
	DKIM *d = lib ? dkim_sign(lib, (const unsigned char *)"test", NULL, key,
				  (const unsigned char *)argv[2],
				  (const unsigned char *)argv[3],
				  DKIM_CANON_RELAXED, DKIM_CANON_RELAXED,
				  DKIM_SIGN_RSASHA256, -1, &st)
			  : NULL;
	unsigned char *hdr = NULL;
	size_t hlen = 0;
	if (d == NULL || dkim_chunk(d, msg, mlen) != DKIM_STAT_OK ||
	    dkim_chunk(d, NULL, 0) != DKIM_STAT_OK ||
	    dkim_eom(d, NULL) != DKIM_STAT_OK ||
	    dkim_getsighdr_d(d, strlen(PREFIX), &hdr, &hlen) != DKIM_STAT_OK) {
		fprintf(stderr, "dkim_sign: signing failed (%d)\n", (int)st);
		return 2;
	}
	fputs(PREFIX, stdout);
	put_crlf(hdr, hlen);
	fputs("\r\n", stdout);
	fwrite(msg, 1, mlen, stdout);
	dkim_free(d);
	dkim_close(lib);
	free(key);
	free(msg);
	return 0;
}
