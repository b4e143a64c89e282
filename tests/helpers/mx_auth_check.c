/*
 * Test driver for frontends/mx/mx_auth.h: runs one mx_auth_check on a libuv
 * loop and prints the outcome, for tests/integration/test_mx_auth.py (run
 * inside a DNS namespace, tests/integration/dns_zone.py).
 *
 *   mx_auth_check MESSAGE_FILE CLIENT_IP HELO MAIL_FROM [TIMEOUT_MS
 *                 [AUTHSERV_ID [COUNT]]]
 *
 * MAIL_FROM "" is the null sender. COUNT checks of the same input run at
 * once on the pool (default 1). Output on stdout, for the first result:
 *   verdict=accept|reject|tempfail
 *   reason=<text>
 *   <the Authentication-Results header, as returned (folded, CRLF)>
 * and with COUNT > 1 a last line "identical=N": how many of the COUNT
 * results had the first one's verdict and header.
 * Exit 0, or 2 on a usage or setup error.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <uv.h>

#include "mx_auth.h"

#define MAX_MESSAGE_BYTES (50u << 20)

static const char *const verdicts[] = { "accept", "reject", "tempfail" };

typedef struct state {
	int called, identical;
	mx_auth_verdict verdict;
	char *header;
} state;

static void done(void *ctx, mx_auth_result *res)
{
	state *st = ctx;
	if (st->called++ == 0) {
		printf("verdict=%s\nreason=%s\n%s", verdicts[res->verdict],
		       res->reason, res->header);
		st->verdict = res->verdict;
		st->header = strdup(res->header);
	}
	if (res->verdict == st->verdict && st->header &&
	    strcmp(res->header, st->header) == 0)
		st->identical++;
	mx_auth_result_free(&res);
}

static uint8_t *read_file(const char *path, size_t *len)
{
	FILE *f = fopen(path, "rb");
	if (f == NULL)
		return NULL;
	uint8_t *buf = malloc(MAX_MESSAGE_BYTES);
	*len = buf ? fread(buf, 1, MAX_MESSAGE_BYTES, f) : 0;
	fclose(f);
	return buf;
}

int main(int argc, char **argv)
{
	if (argc < 5) {
		fprintf(stderr, "usage: %s MESSAGE CLIENT_IP HELO MAIL_FROM "
				"[TIMEOUT_MS [AUTHSERV_ID]]\n", argv[0]);
		return 2;
	}
	size_t len = 0;
	uint8_t *msg = read_file(argv[1], &len);
	if (msg == NULL) {
		fprintf(stderr, "cannot read %s\n", argv[1]);
		return 2;
	}
	mx_auth_config cfg = {
		.authserv_id = argc > 6 ? argv[6] : "mx.test",
		.dns_timeout_ms = argc > 5 ? (unsigned)atoi(argv[5]) : 0,
	};
	uv_loop_t loop;
	uv_loop_init(&loop);
	mx_auth *a = NULL;
	state st = { 0 };
	int count = argc > 7 ? atoi(argv[7]) : 1;
	mx_auth_input in = { .client_ip = argv[2], .helo = argv[3],
			     .mail_from = argv[4], .message = msg, .len = len };
	if (count < 1 || mx_auth_new(&loop, &cfg, &a) != 0) {
		fprintf(stderr, "mx_auth setup failed\n");
		return 2;
	}
	for (int i = 0; i < count; i++)
		if (mx_auth_check(a, &in, done, &st) != 0) {
			fprintf(stderr, "mx_auth_check failed\n");
			return 2;
		}
	uv_run(&loop, UV_RUN_DEFAULT);
	if (count > 1)
		printf("identical=%d\n", st.identical);
	free(st.header);
	mx_auth_free(&a);
	uv_loop_close(&loop);
	free(msg);
	return st.called == count ? 0 : 2;
}
