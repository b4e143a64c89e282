/*
 * The S3 target (backup/bk_s3.c) against s3rver, a local S3-compatible
 * server (installed with npm by tests/integration/s3rver.sh), and against
 * a tiny scripted HTTP server in this file for the retry rules.
 *
 * Skipped (cmocka skip) only when node or npm are missing.
 */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <cmocka.h>

#include "bk_target.h"
#include "eng_error.h"
#include "testutil.h"

#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define BUCKET "bk-test"
#define LARGE_BYTES (40u * 1000 * 1000)

static char *script;      /* tests/integration/s3rver.sh */
static char *s3dir;       /* s3rver's data */
static int s3port;
static pid_t s3pid = -1;
static char endpoint[64];

static double now_s(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static int free_port(void)
{
	struct sockaddr_in a = { .sin_family = AF_INET };
	socklen_t len = sizeof(a);
	int fd = socket(AF_INET, SOCK_STREAM, 0), port;

	a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
	assert_int_equal(bind(fd, (struct sockaddr *)&a, sizeof(a)), 0);
	assert_int_equal(getsockname(fd, (struct sockaddr *)&a, &len), 0);
	port = ntohs(a.sin_port);
	close(fd);
	return port;
}

static int can_connect(int port)
{
	struct sockaddr_in a = { .sin_family = AF_INET };
	int fd = socket(AF_INET, SOCK_STREAM, 0), ok;

	a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
	a.sin_port = htons((uint16_t)port);
	ok = connect(fd, (struct sockaddr *)&a, sizeof(a)) == 0;
	close(fd);
	return ok;
}

static void s3rver_start(void)
{
	char portstr[16], *log;
	double deadline;

	snprintf(portstr, sizeof(portstr), "%d", s3port);
	if (asprintf(&log, "%s.log", s3dir) < 0)
		abort();
	s3pid = fork();
	assert_true(s3pid >= 0);
	if (s3pid == 0) {
		FILE *f = freopen(log, "a", stderr);
		(void)f;
		dup2(2, 1);
		execl("/bin/bash", "bash", script, "run", portstr, s3dir, BUCKET,
		      (char *)NULL);
		_exit(127);
	}
	free(log);
	deadline = now_s() + 60;
	while (!can_connect(s3port)) {
		int st;
		if (waitpid(s3pid, &st, WNOHANG) == s3pid) {
			s3pid = -1;
			fail_msg("s3rver exited at start (see %s.log)", s3dir);
		}
		assert_true(now_s() < deadline);
		usleep(50 * 1000);
	}
}

static void s3rver_stop(int sig)
{
	if (s3pid > 0) {
		kill(s3pid, sig);
		waitpid(s3pid, NULL, 0);
		s3pid = -1;
	}
}

static int have_node(void)
{
	return system("command -v node >/dev/null 2>&1 && "
		      "command -v npm >/dev/null 2>&1") == 0;
}

static int group_setup(void **state)
{
	char *cmd;
	(void)state;

	if (!have_node())
		return 0; /* each test skips */
	script = tu_source_path("tests/integration/s3rver.sh");
	if (asprintf(&cmd, "bash '%s' path >/dev/null", script) < 0)
		abort();
	if (system(cmd) != 0) {
		fprintf(stderr, "s3rver.sh could not install s3rver\n");
		free(cmd);
		return -1;
	}
	free(cmd);
	s3dir = tu_tmpdir();
	s3port = free_port();
	snprintf(endpoint, sizeof(endpoint), "http://127.0.0.1:%d", s3port);
	s3rver_start();
	return 0;
}

static int group_teardown(void **state)
{
	char *log;
	(void)state;

	s3rver_stop(SIGTERM);
	if (s3dir != NULL) {
		if (asprintf(&log, "%s.log", s3dir) >= 0) {
			unlink(log);
			free(log);
		}
		tu_rmrf(s3dir);
		free(s3dir);
	}
	free(script);
	return 0;
}

#define NEED_S3RVER() do { \
	if (s3dir == NULL) { \
		fprintf(stderr, "SKIP: node/npm not installed: no s3rver\n"); \
		skip(); \
	} \
} while (0)

/* bk_s3.c is the module sealmail-bk-s3.so: reached through its loader,
 * as sqlited and the CLI reach it. */
static int s3_open(const bk_s3_params *p, void **impl_r,
		   const struct bk_target_ops **ops_r)
{
	bk_s3_open_fn *open_fn;

	assert_int_equal(bk_s3_load(&open_fn), 0);
	return open_fn(p, impl_r, ops_r);
}

struct target {
	void *impl;
	const struct bk_target_ops *ops;
};

static struct target open_target_at(const char *ep, const char *prefix,
				    const char *access, const char *secret,
				    unsigned retries)
{
	bk_s3_params p = {
		.endpoint = ep, .region = "us-east-1", .bucket = BUCKET,
		.prefix = prefix, .access_key = access, .secret_key = secret,
		.path_style = 1, .max_retries = retries,
	};
	struct target t;

	assert_int_equal(s3_open(&p, &t.impl, &t.ops), 0);
	return t;
}

static struct target open_target(const char *prefix)
{
	return open_target_at(endpoint, prefix, "S3RVER", "S3RVER", 2);
}

static void close_target(struct target *t)
{
	t->ops->close(t->impl);
	t->impl = NULL;
}

/* --- generated objects: byte i of object "seed" is a function of (seed, i) */

static uint8_t gen_byte(uint64_t seed, uint64_t i)
{
	uint64_t z = seed * 0x9e3779b97f4a7c15ull + (i >> 3);
	z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
	z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
	z ^= z >> 31;
	return (uint8_t)(z >> (8 * (i & 7)));
}

struct gen {
	uint64_t seed, size, pos;
	uint64_t kill_at;       /* set killed when pos passes this (0: never) */
	atomic_int *killed;
};

static long gen_read(void *ctx, void *buf, size_t len)
{
	struct gen *g = ctx;
	uint8_t *b = buf;
	size_t i;

	if (len > g->size - g->pos)
		len = (size_t)(g->size - g->pos);
	for (i = 0; i < len; i++)
		b[i] = gen_byte(g->seed, g->pos + i);
	g->pos += len;
	if (g->kill_at && g->pos >= g->kill_at && g->killed)
		atomic_store(g->killed, 1);
	return (long)len;
}

struct check {
	uint64_t seed, pos;
	int bad;
	unsigned calls;
};

static int check_write(void *ctx, const void *data, size_t len)
{
	struct check *c = ctx;
	const uint8_t *b = data;

	c->calls++;
	for (size_t i = 0; i < len; i++) {
		if (b[i] != gen_byte(c->seed, c->pos + i))
			c->bad++;
	}
	c->pos += len;
	return 0;
}

struct mem {
	const uint8_t *data;
	size_t len, pos;
};

static long mem_read(void *ctx, void *buf, size_t len)
{
	struct mem *m = ctx;
	if (len > m->len - m->pos)
		len = m->len - m->pos;
	memcpy(buf, m->data + m->pos, len);
	m->pos += len;
	return (long)len;
}

struct sink {
	uint8_t *data;
	size_t len;
	unsigned calls;
};

static int sink_write(void *ctx, const void *data, size_t len)
{
	struct sink *s = ctx;
	s->calls++;
	s->data = realloc(s->data, s->len + len + 1);
	memcpy(s->data + s->len, data, len);
	s->len += len;
	s->data[s->len] = 0;
	return 0;
}

static int put_str(struct target *t, const char *name, const char *s)
{
	struct mem m = { (const uint8_t *)s, strlen(s), 0 };
	return t->ops->put(t->impl, name, strlen(s), mem_read, &m);
}

static void assert_content(struct target *t, const char *name, const char *want)
{
	struct sink s = { 0 };
	assert_int_equal(t->ops->get(t->impl, name, sink_write, &s), 0);
	assert_int_equal(s.len, strlen(want));
	if (s.len)
		assert_memory_equal(s.data, want, s.len);
	free(s.data);
}

/* --- tests against s3rver */

static void test_small(void **state)
{
	struct target t;
	uint64_t size = 0;
	(void)state;
	NEED_S3RVER();
	t = open_target("");

	assert_int_equal(put_str(&t, "snap/one.bin", "hello, bucket"), 0);
	assert_content(&t, "snap/one.bin", "hello, bucket");
	assert_int_equal(t.ops->stat(t.impl, "snap/one.bin", &size), 0);
	assert_int_equal(size, 13);
	/* overwrite */
	assert_int_equal(put_str(&t, "snap/one.bin", "v2"), 0);
	assert_content(&t, "snap/one.bin", "v2");
	/* empty object */
	assert_int_equal(put_str(&t, "empty", ""), 0);
	assert_int_equal(t.ops->stat(t.impl, "empty", &size), 0);
	assert_int_equal(size, 0);
	assert_content(&t, "empty", "");
	/* keys that need encoding reach the bucket under their own name */
	assert_int_equal(put_str(&t, "odd name+%&=?#~ü", "odd"), 0);
	assert_content(&t, "odd name+%&=?#~ü", "odd");
	assert_int_equal(t.ops->stat(t.impl, "odd name+%&=?#~", NULL),
			 ENG_ENOTFOUND);
	/* a size that does not match the callback is refused, nothing stored */
	struct mem m = { (const uint8_t *)"abc", 3, 0 };
	assert_int_equal(t.ops->put(t.impl, "short", 5, mem_read, &m), ENG_EINVAL);
	m.pos = 0;
	assert_int_equal(t.ops->put(t.impl, "long", 2, mem_read, &m), ENG_EINVAL);
	assert_int_equal(t.ops->stat(t.impl, "short", NULL), ENG_ENOTFOUND);
	assert_int_equal(t.ops->stat(t.impl, "long", NULL), ENG_ENOTFOUND);
	close_target(&t);
}

static long maxrss_kb(void)
{
	struct rusage ru;
	getrusage(RUSAGE_SELF, &ru);
	return ru.ru_maxrss;
}

static void test_large_multipart(void **state)
{
	struct target t;
	struct gen g = { .seed = 42, .size = LARGE_BYTES };
	struct check c = { .seed = 42 };
	uint64_t size = 0;
	long rss0;
	double t0;
	(void)state;
	NEED_S3RVER();
	t = open_target("");

	rss0 = maxrss_kb();
	t0 = now_s();
	assert_int_equal(t.ops->put(t.impl, "big/object", g.size, gen_read, &g), 0);
	fprintf(stderr, "put 40 MB (multipart): %.2f s\n", now_s() - t0);
	assert_int_equal(t.ops->stat(t.impl, "big/object", &size), 0);
	assert_int_equal(size, LARGE_BYTES);
	t0 = now_s();
	assert_int_equal(t.ops->get(t.impl, "big/object", check_write, &c), 0);
	fprintf(stderr, "get 40 MB: %.2f s in %u writes\n", now_s() - t0, c.calls);
	assert_int_equal(c.pos, LARGE_BYTES);
	assert_int_equal(c.bad, 0);
	assert_true(c.calls > 1); /* streamed, not handed over whole */
	/*
	 * Memory: one 8 MiB part buffer, never the 40 MB object (ASan's
	 * quarantine and shadow add some; the object would add 40 MB).
	 */
	fprintf(stderr, "max RSS grew by %ld KiB\n", maxrss_kb() - rss0);
	assert_true(maxrss_kb() - rss0 < 30 * 1024);

	/* exactly the single-PUT limit, and one byte more (multipart) */
	for (uint64_t sz = 16u * 1024 * 1024; sz <= 16u * 1024 * 1024 + 1; sz++) {
		struct gen g2 = { .seed = sz, .size = sz };
		struct check c2 = { .seed = sz };
		assert_int_equal(t.ops->put(t.impl, "big/edge", sz, gen_read, &g2), 0);
		assert_int_equal(t.ops->get(t.impl, "big/edge", check_write, &c2), 0);
		assert_int_equal(c2.pos, sz);
		assert_int_equal(c2.bad, 0);
	}
	assert_int_equal(t.ops->del(t.impl, "big/edge"), 0);
	close_target(&t);
}

static void test_list_delete(void **state)
{
	struct target t, th;
	char name[64], **names;
	size_t n;
	(void)state;
	NEED_S3RVER();
	t = open_target("");
	th = open_target("host1/");

	for (int i = 0; i < 1005; i++) {
		snprintf(name, sizeof(name), "many/%05d", 1004 - i);
		assert_int_equal(put_str(&t, name, "x"), 0);
	}
	assert_int_equal(put_str(&t, "manx", "y"), 0);
	assert_int_equal(put_str(&th, "many/inside-host1", "z"), 0);

	assert_int_equal(t.ops->list(t.impl, "many/", &names, &n), 0);
	assert_int_equal(n, 1005); /* two pages: continuation token */
	for (size_t i = 0; i < n; i++) {
		snprintf(name, sizeof(name), "many/%05zu", i);
		assert_string_equal(names[i], name);
		free(names[i]);
	}
	free(names);

	/* the target's prefix is hidden and confines the listing */
	assert_int_equal(th.ops->list(th.impl, "", &names, &n), 0);
	assert_int_equal(n, 1);
	assert_string_equal(names[0], "many/inside-host1");
	free(names[0]);
	free(names);
	assert_content(&th, "many/inside-host1", "z");
	assert_int_equal(t.ops->stat(t.impl, "host1/many/inside-host1", NULL), 0);

	assert_int_equal(t.ops->list(t.impl, "nothing-here/", &names, &n), 0);
	assert_int_equal(n, 0);
	free(names);

	/* delete: gone; deleting again is fine */
	assert_int_equal(t.ops->del(t.impl, "many/00000"), 0);
	assert_int_equal(t.ops->stat(t.impl, "many/00000", NULL), ENG_ENOTFOUND);
	assert_int_equal(t.ops->del(t.impl, "many/00000"), 0);
	assert_int_equal(t.ops->list(t.impl, "many/", &names, &n), 0);
	assert_int_equal(n, 1004);
	assert_string_equal(names[0], "many/00001");
	for (size_t i = 0; i < n; i++)
		free(names[i]);
	free(names);
	close_target(&th);
	close_target(&t);
}

static void test_errors(void **state)
{
	struct target t, bad;
	struct sink s = { 0 };
	double t0;
	(void)state;
	NEED_S3RVER();
	t = open_target("");
	bad = open_target_at(endpoint, "", "NOT-S3RVER", "S3RVER", 5);

	/* missing object: ENOTFOUND, the callback never runs */
	assert_int_equal(t.ops->get(t.impl, "no/such", sink_write, &s),
			 ENG_ENOTFOUND);
	assert_int_equal(s.calls, 0);
	assert_int_equal(t.ops->stat(t.impl, "no/such", NULL), ENG_ENOTFOUND);

	/*
	 * Wrong credentials: EAUTH at once (a 403 is not retried). s3rver
	 * 3.7 does not check SigV4 signatures, only the access key id, so the
	 * wrong key here is the access key (the signatures themselves are
	 * checked against botocore in tests/integration/test_backup_s3.py).
	 */
	assert_int_equal(put_str(&t, "auth/probe", "p"), 0);
	t0 = now_s();
	assert_int_equal(put_str(&bad, "auth/x", "x"), ENG_EAUTH);
	assert_int_equal(bad.ops->get(bad.impl, "auth/probe", sink_write, &s),
			 ENG_EAUTH);
	assert_int_equal(s.calls, 0);
	char **names;
	size_t n;
	assert_int_equal(bad.ops->list(bad.impl, "", &names, &n), ENG_EAUTH);
	assert_true(now_s() - t0 < 1.0);
	assert_int_equal(t.ops->stat(t.impl, "auth/x", NULL), ENG_ENOTFOUND);

	/* bad parameters */
	bk_s3_params p = { .endpoint = "ftp://x", .region = "us-east-1",
			   .bucket = BUCKET, .access_key = "a", .secret_key = "b" };
	void *impl;
	const struct bk_target_ops *ops;
	assert_int_equal(s3_open(&p, &impl, &ops), ENG_EINVAL);
	p.endpoint = endpoint;
	p.secret_key = "";
	assert_int_equal(s3_open(&p, &impl, &ops), ENG_EINVAL);
	close_target(&bad);
	close_target(&t);
}

static void *killer(void *arg)
{
	atomic_int *flag = arg;
	while (!atomic_load(flag))
		usleep(1000);
	usleep(20 * 1000); /* let the part's PUT get under way */
	s3rver_stop(SIGKILL);
	return NULL;
}

static void test_kill_mid_upload(void **state)
{
	struct target t;
	atomic_int killed = 0;
	pthread_t th;
	(void)state;
	NEED_S3RVER();
	t = open_target_at(endpoint, "", "S3RVER", "S3RVER", 1);

	assert_int_equal(put_str(&t, "victim", "the old object"), 0);

	/* the server dies 20 MB into a 40 MB multipart upload */
	struct gen g = { .seed = 7, .size = LARGE_BYTES, .kill_at = 20u * 1000 * 1000,
			 .killed = &killed };
	pthread_create(&th, NULL, killer, &killed);
	assert_int_equal(t.ops->put(t.impl, "victim", g.size, gen_read, &g), ENG_EIO);
	pthread_join(th, NULL);
	assert_true(s3pid < 0);

	/* and once more for an object with no old version */
	assert_int_equal(put_str(&t, "victim2", "x"), ENG_EIO);

	s3rver_start();
	assert_content(&t, "victim", "the old object");
	assert_int_equal(t.ops->stat(t.impl, "victim2", NULL), ENG_ENOTFOUND);
	close_target(&t);
}

/* --- a scripted HTTP server for the retry rules --- */

struct fake_answer {
	int status;
	const char *body;     /* NULL: "" */
	long content_length;  /* -1: strlen(body); larger: cut the connection */
};

struct fake {
	int fd, port;
	pthread_t th;
	const struct fake_answer *answers;
	int n_answers;
	/* what it saw */
	int requests;
	char method[8][8];
	char range[8][64];
	long body_bytes[8];
};

static void *fake_main(void *arg)
{
	struct fake *f = arg;

	for (int i = 0; i < f->n_answers; i++) {
		int c = accept(f->fd, NULL, NULL);
		char buf[65536], out[1024];
		size_t got = 0;
		char *end = NULL;
		long clen = 0, have;
		const struct fake_answer *a = &f->answers[i];
		const char *body = a->body ? a->body : "";

		if (c < 0)
			break;
		while (end == NULL && got < sizeof(buf) - 1) {
			ssize_t r = read(c, buf + got, sizeof(buf) - 1 - got);
			if (r <= 0)
				break;
			got += (size_t)r;
			buf[got] = 0;
			end = strstr(buf, "\r\n\r\n");
		}
		if (end == NULL) {
			close(c);
			continue;
		}
		sscanf(buf, "%7s", f->method[i % 8]);
		char *cl = strcasestr(buf, "\r\ncontent-length:");
		if (cl != NULL && cl < end)
			clen = strtol(cl + 17, NULL, 10);
		char *rg = strcasestr(buf, "\r\nrange:");
		f->range[i % 8][0] = 0;
		if (rg != NULL && rg < end)
			sscanf(rg + 8, " %63[^\r]", f->range[i % 8]);
		have = (long)(got - (size_t)(end + 4 - buf));
		while (have < clen) {
			ssize_t r = read(c, buf, sizeof(buf));
			if (r <= 0)
				break;
			have += r;
		}
		f->body_bytes[i % 8] = have;
		f->requests++;
		long announce = a->content_length >= 0 ? a->content_length :
			(long)strlen(body);
		int n = snprintf(out, sizeof(out),
				 "HTTP/1.1 %d X\r\nContent-Length: %ld\r\n"
				 "ETag: \"e%d\"\r\nConnection: close\r\n\r\n%s",
				 a->status, announce, i, body);
		if (write(c, out, (size_t)n) < 0)
			perror("fake write");
		close(c);
	}
	return NULL;
}

static void fake_start(struct fake *f, const struct fake_answer *answers, int n)
{
	struct sockaddr_in a = { .sin_family = AF_INET };
	socklen_t len = sizeof(a);

	memset(f, 0, sizeof(*f));
	f->answers = answers;
	f->n_answers = n;
	f->fd = socket(AF_INET, SOCK_STREAM, 0);
	a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
	assert_int_equal(bind(f->fd, (struct sockaddr *)&a, sizeof(a)), 0);
	assert_int_equal(listen(f->fd, 16), 0);
	getsockname(f->fd, (struct sockaddr *)&a, &len);
	f->port = ntohs(a.sin_port);
	pthread_create(&f->th, NULL, fake_main, f);
}

/* Stops the fake (unblocking a pending accept) and joins it. */
static void fake_stop(struct fake *f)
{
	shutdown(f->fd, SHUT_RDWR);
	pthread_join(f->th, NULL);
	close(f->fd);
}

static struct target fake_target(struct fake *f, unsigned retries)
{
	char ep[64];
	snprintf(ep, sizeof(ep), "http://127.0.0.1:%d", f->port);
	return open_target_at(ep, "", "AK", "secret", retries);
}

static void test_retry_get_after_503(void **state)
{
	static const struct fake_answer a[] = {
		{ 503, "<Error><Code>SlowDown</Code></Error>", -1 },
		{ 200, "hello", -1 },
	};
	struct fake f;
	struct target t;
	struct sink s = { 0 };
	(void)state;

	fake_start(&f, a, 2);
	t = fake_target(&f, 3);
	assert_int_equal(t.ops->get(t.impl, "x", sink_write, &s), 0);
	assert_int_equal(f.requests, 2);
	assert_int_equal(s.len, 5);
	assert_memory_equal(s.data, "hello", 5); /* the 503 body never leaks in */
	free(s.data);
	close_target(&t);
	fake_stop(&f);
}

static void test_retry_put_after_503(void **state)
{
	static const struct fake_answer a[] = {
		{ 503, NULL, -1 }, { 500, NULL, -1 }, { 200, NULL, -1 },
	};
	struct fake f;
	struct target t;
	struct gen g = { .seed = 1, .size = 100000 };
	double t0;
	(void)state;

	fake_start(&f, a, 3);
	t = fake_target(&f, 3);
	t0 = now_s();
	assert_int_equal(t.ops->put(t.impl, "x", g.size, gen_read, &g), 0);
	/* backoff 100 ms then 200 ms */
	assert_true(now_s() - t0 >= 0.29);
	assert_int_equal(f.requests, 3);
	for (int i = 0; i < 3; i++) {
		assert_string_equal(f.method[i], "PUT");
		assert_int_equal(f.body_bytes[i], 100000); /* sent whole each time */
	}
	close_target(&t);
	fake_stop(&f);
}

static void test_retry_429_then_gives_up(void **state)
{
	static const struct fake_answer a[] = {
		{ 429, NULL, -1 }, { 503, NULL, -1 }, { 503, NULL, -1 },
	};
	struct fake f;
	struct target t;
	(void)state;

	fake_start(&f, a, 3);
	t = fake_target(&f, 2);
	assert_int_equal(t.ops->stat(t.impl, "x", NULL), ENG_EIO);
	assert_int_equal(f.requests, 3); /* 1 + max_retries */
	close_target(&t);
	fake_stop(&f);
}

static void test_no_retry_on_4xx(void **state)
{
	static const struct fake_answer bad_request[] = { { 400, NULL, -1 } };
	static const struct fake_answer forbidden[] = { { 403, NULL, -1 } };
	static const struct fake_answer missing[] = { { 404, NULL, -1 } };
	struct fake f;
	struct target t;
	struct sink s = { 0 };
	(void)state;

	fake_start(&f, bad_request, 1);
	t = fake_target(&f, 3);
	assert_int_equal(put_str(&t, "x", "abc"), ENG_EIO);
	close_target(&t);
	fake_stop(&f);
	assert_int_equal(f.requests, 1);

	fake_start(&f, forbidden, 1);
	t = fake_target(&f, 3);
	assert_int_equal(t.ops->get(t.impl, "x", sink_write, &s), ENG_EAUTH);
	close_target(&t);
	fake_stop(&f);
	assert_int_equal(f.requests, 1);

	fake_start(&f, missing, 1);
	t = fake_target(&f, 3);
	assert_int_equal(t.ops->get(t.impl, "x", sink_write, &s), ENG_ENOTFOUND);
	fake_stop(&f);
	assert_int_equal(t.ops->del(t.impl, "x"), ENG_EIO); /* fake is gone */
	close_target(&t);
	assert_int_equal(s.calls, 0);
}

static void test_get_resumes_with_range(void **state)
{
	/* the first answer announces 10 bytes and sends 5, then hangs up */
	static const struct fake_answer a[] = {
		{ 200, "01234", 10 },
		{ 206, "56789", -1 },
	};
	struct fake f;
	struct target t;
	struct sink s = { 0 };
	(void)state;

	fake_start(&f, a, 2);
	t = fake_target(&f, 3);
	assert_int_equal(t.ops->get(t.impl, "x", sink_write, &s), 0);
	assert_int_equal(f.requests, 2);
	assert_string_equal(f.range[1], "bytes=5-");
	assert_int_equal(s.len, 10);
	assert_memory_equal(s.data, "0123456789", 10);
	free(s.data);
	close_target(&t);
	fake_stop(&f);
}

static void test_connection_refused(void **state)
{
	struct target t;
	char ep[64];
	double t0;
	(void)state;

	snprintf(ep, sizeof(ep), "http://127.0.0.1:%d", free_port());
	t = open_target_at(ep, "", "AK", "secret", 2);
	t0 = now_s();
	assert_int_equal(put_str(&t, "x", "abc"), ENG_EIO);
	assert_true(now_s() - t0 >= 0.29); /* retried: 100 + 200 ms */
	close_target(&t);
}

int main(void)
{
	const struct CMUnitTest s3rver_tests[] = {
		cmocka_unit_test(test_small),
		cmocka_unit_test(test_large_multipart),
		cmocka_unit_test(test_list_delete),
		cmocka_unit_test(test_errors),
		cmocka_unit_test(test_kill_mid_upload),
	};
	const struct CMUnitTest fake_tests[] = {
		cmocka_unit_test(test_retry_get_after_503),
		cmocka_unit_test(test_retry_put_after_503),
		cmocka_unit_test(test_retry_429_then_gives_up),
		cmocka_unit_test(test_no_retry_on_4xx),
		cmocka_unit_test(test_get_resumes_with_range),
		cmocka_unit_test(test_connection_refused),
	};
	int failed;

	signal(SIGPIPE, SIG_IGN);
	failed = cmocka_run_group_tests_name("fake", fake_tests, NULL, NULL);
	failed += cmocka_run_group_tests_name("s3rver", s3rver_tests, group_setup,
					      group_teardown);
	return failed;
}
