/*
 * The S3 target: objects in a bucket of any S3-compatible store (AWS,
 * MinIO, s3rver), over libcurl with SigV4 signing (CURLOPT_AWS_SIGV4).
 *
 * Invariants:
 *  - an object of up to BK_S3_SINGLE_MAX bytes is one PUT; a larger one is
 *    a multipart upload (CreateMultipartUpload, UploadPart of part_bytes,
 *    CompleteMultipartUpload). S3 makes an object visible only when the
 *    PUT or the completion succeeds, so a failed put leaves the old object
 *    (or none); a failed multipart upload is aborted (best effort: a
 *    bucket lifecycle rule for incomplete uploads cleans up what an abort
 *    could not reach, e.g. when the store itself went away).
 *  - memory per put is one bounded buffer: the whole object up to 16 MiB,
 *    or one part. The buffer is what makes a retry possible: the caller's
 *    read callback cannot rewind, a buffer can be sent again.
 *  - a GET streams to the caller's write callback; a retry after a broken
 *    transfer resumes with a Range request, so the callback sees every
 *    byte exactly once.
 *  - retries (100 ms doubling, max_retries times) only on connection
 *    errors, timeouts, 5xx and 429: a 4xx is an answer, asking again
 *    changes nothing.
 *  - the secret key lives only in a sodium_malloc'd "access:secret"
 *    buffer handed to libcurl, and is never logged; requests are never run
 *    with CURLOPT_VERBOSE.
 *
 * Error mapping: 401/403 -> ENG_EAUTH, 404 -> ENG_ENOTFOUND, everything
 * else (network, timeouts, 5xx after the retries, other 4xx, malformed
 * answers) -> ENG_EIO, with the details (status, S3 error code) logged.
 *
 * Built as the module sealmail-bk-s3.so (sm_module.h), loaded by
 * bk_target.c at the first s3:// target: its one export is the descriptor
 * at the end (entry: bk_s3_open); it links libcurl and libxml2 and calls
 * the process back only for the eng_* helpers listed in
 * backup/CMakeLists.txt.
 */
#include "bk_target.h"
#include "sm_module.h"
#include "eng_error.h"

#include <curl/curl.h>
#include <libxml/parser.h>
#include <libxml/tree.h>
#include <pthread.h>
#include <sodium.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>

/* Above this an object is a multipart upload (the contract: 16 MiB). */
#define BK_S3_SINGLE_MAX (16u * 1024 * 1024)
/* The smallest part; S3 allows 10000 parts, larger objects get larger parts. */
#define BK_S3_PART_MIN_BYTES (8u * 1024 * 1024)
#define BK_S3_MAX_PARTS 10000u
/* One part never exceeds this (so memory per put stays bounded). */
#define BK_S3_PART_MAX_BYTES (512u * 1024 * 1024)
/* XML answers (a list page of 1000 keys is ~300 KB) and error bodies. */
#define BK_S3_MAX_XML_BYTES (8u * 1024 * 1024)
#define BK_S3_MAX_ERRBODY_BYTES (16u * 1024)
#define BK_S3_MAX_NAME_BYTES 900
#define BK_S3_DEFAULT_RETRIES 5
#define BK_S3_BACKOFF_FIRST_MS 100
#define BK_S3_BACKOFF_MAX_MS 20000
#define BK_S3_CONNECT_TIMEOUT_MS 10000
/* A transfer that moves less than 1 byte/s for this long is dead. */
#define BK_S3_STALL_SECONDS 60

struct bk_s3 {
	CURL *curl;
	char *endpoint;     /* no trailing '/' */
	char *bucket;
	char *prefix;
	char *sigv4;        /* "aws:amz:REGION:s3" */
	char *userpwd;      /* sodium_malloc'd "access:secret" */
	size_t userpwd_size;
	int path_style;
	unsigned max_retries;
};

/* A growing buffer with a hard cap. */
struct membuf {
	char *data;
	size_t len, cap, limit;
	int overflow;
};

/* One request, possibly sent several times. */
struct s3_call {
	const char *method;      /* GET, PUT, HEAD, DELETE, POST */
	char *url;
	const unsigned char *body;  /* PUT/POST body, may be NULL */
	size_t body_len;
	size_t body_pos;
	/* GET: 2xx bodies go to sink, resumable; else to resp (XML/errors). */
	bk_write_fn *sink;
	void *sink_ctx;
	int sink_err;
	uint64_t delivered;      /* bytes handed to sink over all attempts */
	uint64_t attempt_offset; /* where this attempt's body starts */
	struct membuf resp;
	char etag[256];
	long status;
};

static pthread_once_t global_once = PTHREAD_ONCE_INIT;
static int global_ok;

static void global_init(void)
{
	global_ok = curl_global_init(CURL_GLOBAL_DEFAULT) == CURLE_OK &&
		sodium_init() >= 0;
	xmlInitParser();
}

/* At the module's load (dlopen), on the loading thread: sqlited loads it
 * on its main thread at start when backups to S3 are scheduled, so that
 * libcurl's and OpenSSL's one-time set-up (and OpenSSL's per-thread error
 * state that comes with it) does not land on a pool thread. */
__attribute__((constructor)) static void module_loaded(void)
{
	pthread_once(&global_once, global_init);
}

static void membuf_init(struct membuf *b, size_t limit)
{
	memset(b, 0, sizeof(*b));
	b->limit = limit;
}

static void membuf_free(struct membuf *b)
{
	free(b->data);
	memset(b, 0, sizeof(*b));
}

static void membuf_append(struct membuf *b, const void *data, size_t len)
{
	if (b->overflow || len > b->limit - b->len) {
		b->overflow = 1;
		return;
	}
	if (b->len + len + 1 > b->cap) {
		size_t cap = b->cap ? b->cap : 4096;
		while (cap < b->len + len + 1)
			cap *= 2;
		b->data = eng_realloc(b->data, cap);
		b->cap = cap;
	}
	memcpy(b->data + b->len, data, len);
	b->len += len;
	b->data[b->len] = '\0';
}

/*
 * Percent-encodes s into out as SigV4 wants it: everything but the
 * unreserved characters, with upper-case hex; '/' kept when keep_slash
 * (object keys in the path), encoded otherwise (query values).
 */
static void uri_encode(struct membuf *out, const char *s, int keep_slash)
{
	static const char hex[] = "0123456789ABCDEF";

	for (; *s != '\0'; s++) {
		unsigned char c = (unsigned char)*s;
		if ((c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') ||
		    (c >= '0' && c <= '9') || c == '-' || c == '_' ||
		    c == '.' || c == '~' || (c == '/' && keep_slash)) {
			membuf_append(out, s, 1);
		} else {
			char esc[3] = { '%', hex[c >> 4], hex[c & 15] };
			membuf_append(out, esc, 3);
		}
	}
}

/*
 * The URL of the bucket (key == NULL) or of prefix+key, with an already
 * encoded query (sorted by parameter name: curl 7.88 signs the query as
 * it is given, SigV4 wants it canonical).
 */
static char *make_url(const struct bk_s3 *s, const char *key, const char *query)
{
	struct membuf u;

	membuf_init(&u, 64 * 1024);
	if (s->path_style) {
		membuf_append(&u, s->endpoint, strlen(s->endpoint));
		membuf_append(&u, "/", 1);
		uri_encode(&u, s->bucket, 0);
	} else {
		/* scheme://bucket.host[:port] */
		const char *host = strstr(s->endpoint, "://");
		host = host ? host + 3 : s->endpoint;
		membuf_append(&u, s->endpoint, (size_t)(host - s->endpoint));
		uri_encode(&u, s->bucket, 0);
		membuf_append(&u, ".", 1);
		membuf_append(&u, host, strlen(host));
	}
	membuf_append(&u, "/", 1);
	if (key != NULL) {
		uri_encode(&u, s->prefix, 1);
		uri_encode(&u, key, 1);
	}
	if (query != NULL) {
		membuf_append(&u, "?", 1);
		membuf_append(&u, query, strlen(query));
	}
	if (u.overflow)
		eng_oom(u.limit);
	return u.data;
}

static size_t on_header(char *buf, size_t size, size_t n, void *ctx)
{
	struct s3_call *c = ctx;
	size_t len = size * n;

	if (len > 5 && strncasecmp(buf, "etag:", 5) == 0) {
		size_t i = 5, end = len;
		while (i < end && (buf[i] == ' ' || buf[i] == '\t'))
			i++;
		while (end > i && (buf[end - 1] == '\r' || buf[end - 1] == '\n' ||
				   buf[end - 1] == ' '))
			end--;
		if (end - i < sizeof(c->etag)) {
			memcpy(c->etag, buf + i, end - i);
			c->etag[end - i] = '\0';
		}
	}
	return len;
}

static size_t on_body(char *data, size_t size, size_t n, void *ctx)
{
	struct s3_call *c = ctx;
	size_t len = size * n;

	if (c->sink == NULL || c->status < 200 || c->status > 299) {
		membuf_append(&c->resp, data, len);
		return len;
	}
	/*
	 * The part of this body the caller has already had (a 200 to a
	 * resumed request that ignored the Range) is skipped.
	 */
	const char *p = data;
	size_t left = len;
	if (c->attempt_offset < c->delivered) {
		uint64_t skip = c->delivered - c->attempt_offset;
		if (skip > left)
			skip = left;
		p += skip;
		left -= (size_t)skip;
		c->attempt_offset += skip;
	}
	if (left > 0) {
		int r = c->sink(c->sink_ctx, p, left);
		if (r < 0) {
			c->sink_err = r;
			return 0; /* CURLE_WRITE_ERROR */
		}
		c->delivered += left;
		c->attempt_offset += left;
	}
	return len;
}

/* Learns the status as soon as the headers are in, before the body. */
static size_t on_header_status(char *buf, size_t size, size_t n, void *ctx)
{
	struct s3_call *c = ctx;
	size_t len = size * n;

	if (len >= 12 && strncmp(buf, "HTTP/", 5) == 0) {
		const char *sp = memchr(buf, ' ', len);
		if (sp != NULL && sp + 4 <= buf + len)
			c->status = strtol(sp + 1, NULL, 10);
	}
	return on_header(buf, size, n, ctx);
}

static size_t on_read(char *buf, size_t size, size_t n, void *ctx)
{
	struct s3_call *c = ctx;
	size_t want = size * n, left = c->body_len - c->body_pos;

	if (want > left)
		want = left;
	if (want > 0)
		memcpy(buf, c->body + c->body_pos, want);
	c->body_pos += want;
	return want;
}

static int is_transient_curl(CURLcode cc)
{
	switch (cc) {
	case CURLE_COULDNT_RESOLVE_HOST:
	case CURLE_COULDNT_CONNECT:
	case CURLE_OPERATION_TIMEDOUT:
	case CURLE_SEND_ERROR:
	case CURLE_RECV_ERROR:
	case CURLE_GOT_NOTHING:
	case CURLE_PARTIAL_FILE:
	case CURLE_HTTP2:
	case CURLE_HTTP2_STREAM:
	case CURLE_SSL_CONNECT_ERROR:
		return 1;
	default:
		return 0;
	}
}

/* The <Code> of an S3 error body, for the log ("" if none). */
static void s3_error_code(const struct membuf *b, char *out, size_t out_size)
{
	const char *p, *e;

	out[0] = '\0';
	if (b->data == NULL)
		return;
	p = strstr(b->data, "<Code>");
	if (p == NULL)
		return;
	p += 6;
	e = strstr(p, "</Code>");
	if (e == NULL || (size_t)(e - p) >= out_size)
		return;
	memcpy(out, p, (size_t)(e - p));
	out[e - p] = '\0';
	for (char *q = out; *q; q++) {
		if ((unsigned char)*q < 0x20 || (unsigned char)*q > 0x7e)
			*q = '?';
	}
}

static void sleep_ms(unsigned ms)
{
	struct timespec ts = { ms / 1000, (long)(ms % 1000) * 1000000L };
	while (nanosleep(&ts, &ts) != 0)
		;
}

/* Maps a final HTTP status (not 2xx) to an engine code. */
static int status_error(long status)
{
	if (status == 401 || status == 403)
		return ENG_EAUTH;
	if (status == 404)
		return ENG_ENOTFOUND;
	return ENG_EIO;
}

/*
 * Runs c until it gets an answer that is not worth retrying. Returns 0
 * with c->status 2xx, or a negative code (already logged). what names the
 * operation in the log (no secrets: the object name and the status).
 */
static int s3_perform(struct bk_s3 *s, struct s3_call *c, const char *what,
		      const char *name)
{
	unsigned attempt, backoff_ms = BK_S3_BACKOFF_FIRST_MS;
	char hash_hdr[96], range_hdr[64], code[128];
	unsigned char digest[crypto_hash_sha256_BYTES];
	char hexd[crypto_hash_sha256_BYTES * 2 + 1];
	CURLcode cc = CURLE_OK;
	int is_get = strcmp(c->method, "GET") == 0;

	/*
	 * The payload hash is signed: the store checks the body against it
	 * (UNSIGNED-PAYLOAD would leave a corrupted body undetected).
	 */
	crypto_hash_sha256(digest, c->body ? c->body : (const unsigned char *)"",
			   c->body_len);
	sodium_bin2hex(hexd, sizeof(hexd), digest, sizeof(digest));
	snprintf(hash_hdr, sizeof(hash_hdr), "x-amz-content-sha256: %s", hexd);

	for (attempt = 0;; attempt++) {
		struct curl_slist *hdrs = NULL;
		CURL *h = s->curl;
		int retry = 0;

		curl_easy_reset(h);
		c->status = 0;
		c->etag[0] = '\0';
		c->body_pos = 0;
		c->attempt_offset = 0;
		membuf_free(&c->resp);
		membuf_init(&c->resp, c->sink ? BK_S3_MAX_ERRBODY_BYTES :
			    BK_S3_MAX_XML_BYTES);

		hdrs = curl_slist_append(hdrs, hash_hdr);
		/*
		 * No "Expect:" to turn off 100-continue: curl 7.88 would sign
		 * the empty header it then leaves out, and S3 would refuse.
		 */
		if (is_get && c->delivered > 0) {
			snprintf(range_hdr, sizeof(range_hdr),
				 "Range: bytes=%llu-",
				 (unsigned long long)c->delivered);
			hdrs = curl_slist_append(hdrs, range_hdr);
			c->attempt_offset = c->delivered;
		}
		if (hdrs == NULL)
			eng_oom(sizeof(hash_hdr));

		curl_easy_setopt(h, CURLOPT_URL, c->url);
		curl_easy_setopt(h, CURLOPT_PROTOCOLS_STR, "http,https");
		curl_easy_setopt(h, CURLOPT_NOSIGNAL, 1L);
		curl_easy_setopt(h, CURLOPT_SSL_VERIFYPEER, 1L);
		curl_easy_setopt(h, CURLOPT_SSL_VERIFYHOST, 2L);
		curl_easy_setopt(h, CURLOPT_CONNECTTIMEOUT_MS,
				 (long)BK_S3_CONNECT_TIMEOUT_MS);
		curl_easy_setopt(h, CURLOPT_LOW_SPEED_LIMIT, 1L);
		curl_easy_setopt(h, CURLOPT_LOW_SPEED_TIME,
				 (long)BK_S3_STALL_SECONDS);
		curl_easy_setopt(h, CURLOPT_AWS_SIGV4, s->sigv4);
		curl_easy_setopt(h, CURLOPT_USERPWD, s->userpwd);
		curl_easy_setopt(h, CURLOPT_HTTPHEADER, hdrs);
		curl_easy_setopt(h, CURLOPT_HEADERFUNCTION, on_header_status);
		curl_easy_setopt(h, CURLOPT_HEADERDATA, c);
		curl_easy_setopt(h, CURLOPT_WRITEFUNCTION, on_body);
		curl_easy_setopt(h, CURLOPT_WRITEDATA, c);
		if (strcmp(c->method, "PUT") == 0) {
			curl_easy_setopt(h, CURLOPT_UPLOAD, 1L);
			curl_easy_setopt(h, CURLOPT_READFUNCTION, on_read);
			curl_easy_setopt(h, CURLOPT_READDATA, c);
			curl_easy_setopt(h, CURLOPT_INFILESIZE_LARGE,
					 (curl_off_t)c->body_len);
		} else if (strcmp(c->method, "POST") == 0) {
			curl_easy_setopt(h, CURLOPT_POST, 1L);
			curl_easy_setopt(h, CURLOPT_POSTFIELDS,
					 c->body ? (const char *)c->body : "");
			curl_easy_setopt(h, CURLOPT_POSTFIELDSIZE_LARGE,
					 (curl_off_t)c->body_len);
		} else if (strcmp(c->method, "HEAD") == 0) {
			curl_easy_setopt(h, CURLOPT_NOBODY, 1L);
		} else if (strcmp(c->method, "DELETE") == 0) {
			curl_easy_setopt(h, CURLOPT_CUSTOMREQUEST, "DELETE");
		}

		cc = curl_easy_perform(h);
		curl_slist_free_all(hdrs);
		if (cc == CURLE_OK) {
			long st = 0;
			curl_easy_getinfo(h, CURLINFO_RESPONSE_CODE, &st);
			c->status = st;
		}
		/* Forget the credentials in the handle as soon as we can. */
		curl_easy_setopt(h, CURLOPT_USERPWD, NULL);

		if (c->sink_err < 0)
			return c->sink_err;
		if (cc == CURLE_OK && c->status >= 200 && c->status <= 299) {
			/* A 206 counts only for the Range we asked for. */
			return 0;
		}
		if (cc != CURLE_OK) {
			retry = is_transient_curl(cc);
		} else {
			retry = c->status >= 500 || c->status == 429;
		}
		if (!retry || attempt >= s->max_retries)
			break;
		if (cc != CURLE_OK)
			eng_log(ENG_LOG_INFO, "s3: %s %s: %s; retry %u of %u in %u ms",
				what, name, curl_easy_strerror(cc), attempt + 1,
				s->max_retries, backoff_ms);
		else
			eng_log(ENG_LOG_INFO, "s3: %s %s: HTTP %ld; retry %u of %u in %u ms",
				what, name, c->status, attempt + 1,
				s->max_retries, backoff_ms);
		sleep_ms(backoff_ms);
		backoff_ms = backoff_ms * 2 > BK_S3_BACKOFF_MAX_MS ?
			BK_S3_BACKOFF_MAX_MS : backoff_ms * 2;
	}

	if (cc != CURLE_OK) {
		eng_log(ENG_LOG_WARN, "s3: %s %s: %s", what, name,
			curl_easy_strerror(cc));
		return ENG_EIO;
	}
	s3_error_code(&c->resp, code, sizeof(code));
	if (!(strcmp(c->method, "HEAD") == 0 && c->status == 404) &&
	    !(strcmp(c->method, "DELETE") == 0 && c->status == 404) &&
	    !(is_get && c->status == 404 && strcmp(code, "NoSuchKey") == 0))
		eng_log(ENG_LOG_WARN, "s3: %s %s: HTTP %ld%s%s", what, name,
			c->status, code[0] ? " " : "", code);
	return status_error(c->status);
}

static void call_init(struct s3_call *c, const char *method, char *url)
{
	memset(c, 0, sizeof(*c));
	c->method = method;
	c->url = url;
	membuf_init(&c->resp, BK_S3_MAX_XML_BYTES);
}

static void call_free(struct s3_call *c)
{
	free(c->url);
	membuf_free(&c->resp);
}

static int check_name(const char *name)
{
	size_t len = name ? strlen(name) : 0;

	if (len == 0 || len > BK_S3_MAX_NAME_BYTES)
		return ENG_EINVAL;
	return 0;
}

/*
 * Fills buf with exactly want bytes from the caller's callback. ENG_EINVAL
 * when the object turns out shorter than the size it was announced with.
 */
static int read_exact(bk_read_fn *read, void *ctx, unsigned char *buf,
		      size_t want)
{
	size_t got = 0;

	while (got < want) {
		long r = read(ctx, buf + got, want - got);
		if (r < 0)
			return (int)r;
		if (r == 0) {
			eng_log(ENG_LOG_ERROR, "s3: object shorter than its size");
			return ENG_EINVAL;
		}
		if ((size_t)r > want - got)
			return ENG_EINVAL;
		got += (size_t)r;
	}
	return 0;
}

/* After size bytes the callback must be at its end. */
static int read_end(bk_read_fn *read, void *ctx)
{
	unsigned char extra;
	long r = read(ctx, &extra, 1);

	if (r < 0)
		return (int)r;
	if (r > 0) {
		eng_log(ENG_LOG_ERROR, "s3: object longer than its size");
		return ENG_EINVAL;
	}
	return 0;
}

/* The text of the first descendant element called name, or NULL. */
static xmlNode *find_child(xmlNode *parent, const char *name)
{
	for (xmlNode *n = parent ? parent->children : NULL; n; n = n->next) {
		if (n->type == XML_ELEMENT_NODE &&
		    strcmp((const char *)n->name, name) == 0)
			return n;
	}
	return NULL;
}

static char *node_text(xmlNode *n)
{
	xmlChar *t;
	char *s;

	if (n == NULL)
		return NULL;
	t = xmlNodeGetContent(n);
	if (t == NULL)
		return NULL;
	s = eng_strdup((const char *)t);
	xmlFree(t);
	return s;
}

static xmlDoc *parse_xml(const struct membuf *b)
{
	if (b->data == NULL || b->overflow || b->len > INT32_MAX)
		return NULL;
	/* No network, no entity expansion, no DTD loading. */
	return xmlReadMemory(b->data, (int)b->len, "s3.xml", NULL,
			     XML_PARSE_NONET | XML_PARSE_NOERROR |
			     XML_PARSE_NOWARNING);
}

static int put_single(struct bk_s3 *s, const char *name, uint64_t size,
		      bk_read_fn *read, void *ctx)
{
	struct s3_call c;
	unsigned char *buf = eng_malloc(size ? (size_t)size : 1);
	int r;

	r = read_exact(read, ctx, buf, (size_t)size);
	if (r == 0)
		r = read_end(read, ctx);
	if (r < 0) {
		free(buf);
		return r;
	}
	call_init(&c, "PUT", make_url(s, name, NULL));
	c.body = buf;
	c.body_len = (size_t)size;
	r = s3_perform(s, &c, "put", name);
	call_free(&c);
	free(buf);
	return r;
}

static void abort_upload(struct bk_s3 *s, const char *name, const char *qid)
{
	struct s3_call c;
	char *q;

	if (asprintf(&q, "uploadId=%s", qid) < 0)
		eng_oom(strlen(qid));
	call_init(&c, "DELETE", make_url(s, name, q));
	free(q);
	if (s3_perform(s, &c, "abort multipart upload of", name) < 0)
		eng_log(ENG_LOG_WARN, "s3: incomplete upload of %s left in the "
			"bucket (a lifecycle rule removes it)", name);
	call_free(&c);
}

static int put_multipart(struct bk_s3 *s, const char *name, uint64_t size,
			 bk_read_fn *read, void *ctx)
{
	uint64_t part_bytes = BK_S3_PART_MIN_BYTES, done = 0;
	unsigned nparts, i;
	unsigned char *buf = NULL;
	char **etags = NULL, *upload_id = NULL, *qid = NULL;
	struct membuf idenc, xml;
	struct s3_call c;
	xmlDoc *doc;
	int r;

	while ((size + part_bytes - 1) / part_bytes > BK_S3_MAX_PARTS)
		part_bytes *= 2;
	if (part_bytes > BK_S3_PART_MAX_BYTES) {
		eng_log(ENG_LOG_ERROR, "s3: put %s: %llu bytes is too large", name,
			(unsigned long long)size);
		return ENG_ELIMIT;
	}
	nparts = (unsigned)((size + part_bytes - 1) / part_bytes);

	/* CreateMultipartUpload ("uploads=": the canonical form of "uploads"). */
	call_init(&c, "POST", make_url(s, name, "uploads="));
	r = s3_perform(s, &c, "create multipart upload of", name);
	if (r == 0) {
		doc = parse_xml(&c.resp);
		upload_id = doc ? node_text(find_child(xmlDocGetRootElement(doc),
						       "UploadId")) : NULL;
		xmlFreeDoc(doc);
		if (upload_id == NULL || upload_id[0] == '\0') {
			eng_log(ENG_LOG_WARN, "s3: create multipart upload of %s: "
				"no UploadId in the answer", name);
			r = ENG_EIO;
		}
	}
	call_free(&c);
	if (r < 0) {
		free(upload_id);
		return r;
	}
	membuf_init(&idenc, 64 * 1024);
	uri_encode(&idenc, upload_id, 0);
	if (idenc.overflow)
		eng_oom(idenc.limit);
	qid = idenc.data;

	buf = eng_malloc((size_t)part_bytes);
	etags = eng_calloc(nparts, sizeof(*etags));
	for (i = 0; i < nparts && r == 0; i++) {
		size_t len = (size_t)(size - done < part_bytes ? size - done :
				      part_bytes);
		char *q;

		r = read_exact(read, ctx, buf, len);
		if (r == 0 && i + 1 == nparts)
			r = read_end(read, ctx);
		if (r < 0)
			break;
		/* Sorted: partNumber < uploadId. */
		if (asprintf(&q, "partNumber=%u&uploadId=%s", i + 1, qid) < 0)
			eng_oom(strlen(qid));
		call_init(&c, "PUT", make_url(s, name, q));
		free(q);
		c.body = buf;
		c.body_len = len;
		r = s3_perform(s, &c, "upload part of", name);
		if (r == 0 && c.etag[0] == '\0') {
			eng_log(ENG_LOG_WARN, "s3: upload part of %s: no ETag",
				name);
			r = ENG_EIO;
		}
		if (r == 0)
			etags[i] = eng_strdup(c.etag);
		call_free(&c);
		done += len;
	}
	free(buf);

	if (r == 0) {
		char line[400];
		membuf_init(&xml, 64u * 1024 * 1024);
		membuf_append(&xml, "<CompleteMultipartUpload>", 25);
		for (i = 0; i < nparts; i++) {
			/* An ETag is a quoted hex string: nothing to escape. */
			int n = snprintf(line, sizeof(line),
					 "<Part><PartNumber>%u</PartNumber>"
					 "<ETag>%s</ETag></Part>", i + 1, etags[i]);
			membuf_append(&xml, line, (size_t)n);
		}
		membuf_append(&xml, "</CompleteMultipartUpload>", 26);
		if (xml.overflow)
			eng_oom(xml.limit);
		char *q;
		if (asprintf(&q, "uploadId=%s", qid) < 0)
			eng_oom(strlen(qid));
		call_init(&c, "POST", make_url(s, name, q));
		free(q);
		c.body = (const unsigned char *)xml.data;
		c.body_len = xml.len;
		r = s3_perform(s, &c, "complete multipart upload of", name);
		/* S3 may answer 200 and then an <Error> in the body. */
		if (r == 0) {
			doc = parse_xml(&c.resp);
			xmlNode *root = doc ? xmlDocGetRootElement(doc) : NULL;
			if (root == NULL || strcmp((const char *)root->name,
						   "CompleteMultipartUploadResult") != 0) {
				char code[128];
				s3_error_code(&c.resp, code, sizeof(code));
				eng_log(ENG_LOG_WARN, "s3: complete multipart upload "
					"of %s failed: %s", name,
					code[0] ? code : "unexpected answer");
				r = ENG_EIO;
			}
			xmlFreeDoc(doc);
		}
		call_free(&c);
		membuf_free(&xml);
	}
	if (r < 0)
		abort_upload(s, name, qid);
	for (i = 0; i < nparts; i++)
		free(etags[i]);
	free(etags);
	free(qid);
	free(upload_id);
	return r;
}

static int s3_put(void *impl, const char *name, uint64_t size,
		  bk_read_fn *read, void *ctx)
{
	struct bk_s3 *s = impl;

	if (check_name(name) < 0 || read == NULL)
		return ENG_EINVAL;
	if (size <= BK_S3_SINGLE_MAX)
		return put_single(s, name, size, read, ctx);
	return put_multipart(s, name, size, read, ctx);
}

static int s3_get(void *impl, const char *name, bk_write_fn *write, void *ctx)
{
	struct bk_s3 *s = impl;
	struct s3_call c;
	int r;

	if (check_name(name) < 0 || write == NULL)
		return ENG_EINVAL;
	call_init(&c, "GET", make_url(s, name, NULL));
	c.sink = write;
	c.sink_ctx = ctx;
	r = s3_perform(s, &c, "get", name);
	call_free(&c);
	return r;
}

static int s3_stat(void *impl, const char *name, uint64_t *size_r)
{
	struct bk_s3 *s = impl;
	struct s3_call c;
	curl_off_t len = -1;
	int r;

	if (check_name(name) < 0)
		return ENG_EINVAL;
	call_init(&c, "HEAD", make_url(s, name, NULL));
	r = s3_perform(s, &c, "stat", name);
	if (r == 0) {
		curl_easy_getinfo(s->curl, CURLINFO_CONTENT_LENGTH_DOWNLOAD_T, &len);
		if (len < 0) {
			eng_log(ENG_LOG_WARN, "s3: stat %s: no Content-Length", name);
			r = ENG_EIO;
		} else if (size_r != NULL) {
			*size_r = (uint64_t)len;
		}
	}
	call_free(&c);
	return r;
}

static int s3_del(void *impl, const char *name)
{
	struct bk_s3 *s = impl;
	struct s3_call c;
	int r;

	if (check_name(name) < 0)
		return ENG_EINVAL;
	call_init(&c, "DELETE", make_url(s, name, NULL));
	r = s3_perform(s, &c, "delete", name);
	call_free(&c);
	return r == ENG_ENOTFOUND ? 0 : r;
}

static int cmp_names(const void *a, const void *b)
{
	return strcmp(*(char *const *)a, *(char *const *)b);
}

static int s3_list(void *impl, const char *prefix, char ***names_r,
		   size_t *n_r)
{
	struct bk_s3 *s = impl;
	char **names = NULL, *token = NULL, *full;
	size_t n = 0, cap = 0, plen = strlen(s->prefix);
	int r = 0, truncated = 1;

	*names_r = NULL;
	*n_r = 0;
	if (asprintf(&full, "%s%s", s->prefix, prefix ? prefix : "") < 0)
		eng_oom(plen);
	while (r == 0 && truncated) {
		struct membuf q;
		struct s3_call c;
		xmlDoc *doc;
		xmlNode *root;

		/* Sorted: continuation-token < list-type < prefix. */
		membuf_init(&q, 64 * 1024);
		if (token != NULL) {
			membuf_append(&q, "continuation-token=", 19);
			uri_encode(&q, token, 0);
			membuf_append(&q, "&", 1);
		}
		membuf_append(&q, "list-type=2&prefix=", 19);
		uri_encode(&q, full, 0);
		if (q.overflow)
			eng_oom(q.limit);
		call_init(&c, "GET", make_url(s, NULL, q.data));
		membuf_free(&q);
		r = s3_perform(s, &c, "list", full);
		if (r < 0) {
			call_free(&c);
			break;
		}
		doc = parse_xml(&c.resp);
		root = doc ? xmlDocGetRootElement(doc) : NULL;
		if (root == NULL ||
		    strcmp((const char *)root->name, "ListBucketResult") != 0) {
			eng_log(ENG_LOG_WARN, "s3: list %s: %s", full,
				c.resp.overflow ? "answer too large" :
				"not a ListBucketResult");
			r = ENG_EIO;
		}
		for (xmlNode *e = root ? root->children : NULL; r == 0 && e;
		     e = e->next) {
			char *key;
			if (e->type != XML_ELEMENT_NODE ||
			    strcmp((const char *)e->name, "Contents") != 0)
				continue;
			key = node_text(find_child(e, "Key"));
			if (key == NULL || strncmp(key, s->prefix, plen) != 0 ||
			    key[plen] == '\0') {
				free(key);
				continue;
			}
			if (n == cap) {
				cap = cap ? cap * 2 : 256;
				names = eng_realloc(names, cap * sizeof(*names));
			}
			names[n++] = eng_strdup(key + plen);
			free(key);
		}
		if (r == 0) {
			char *t = node_text(find_child(root, "IsTruncated"));
			truncated = t != NULL && strcmp(t, "true") == 0;
			free(t);
			free(token);
			token = truncated ? node_text(find_child(root,
						"NextContinuationToken")) : NULL;
			if (truncated && (token == NULL || token[0] == '\0')) {
				eng_log(ENG_LOG_WARN, "s3: list %s: truncated "
					"without a continuation token", full);
				r = ENG_EIO;
			}
		}
		xmlFreeDoc(doc);
		call_free(&c);
	}
	free(token);
	free(full);
	if (r < 0) {
		for (size_t i = 0; i < n; i++)
			free(names[i]);
		free(names);
		return r;
	}
	if (n > 1)
		qsort(names, n, sizeof(*names), cmp_names);
	*names_r = names;
	*n_r = n;
	return 0;
}

static void s3_close(void *impl)
{
	struct bk_s3 *s = impl;

	if (s == NULL)
		return;
	if (s->curl != NULL)
		curl_easy_cleanup(s->curl);
	if (s->userpwd != NULL)
		sodium_free(s->userpwd); /* wipes it */
	free(s->endpoint);
	free(s->bucket);
	free(s->prefix);
	free(s->sigv4);
	free(s);
}

static const struct bk_target_ops s3_ops = {
	.put = s3_put,
	.get = s3_get,
	.stat = s3_stat,
	.del = s3_del,
	.list = s3_list,
	.close = s3_close,
};

static int valid_token(const char *s, const char *extra)
{
	if (s == NULL || s[0] == '\0')
		return 0;
	for (; *s; s++) {
		unsigned char c = (unsigned char)*s;
		if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') ||
		      (c >= '0' && c <= '9') || strchr(extra, c) != NULL))
			return 0;
	}
	return 1;
}

static int is_loopback(const char *endpoint)
{
	const char *h = strstr(endpoint, "://");

	h = h ? h + 3 : endpoint;
	return strncmp(h, "127.", 4) == 0 || strncmp(h, "localhost", 9) == 0 ||
		strncmp(h, "[::1]", 5) == 0;
}

int bk_s3_open(const bk_s3_params *p, void **impl_r,
	       const struct bk_target_ops **ops_r)
{
	struct bk_s3 *s;
	size_t alen, slen, elen;

	*impl_r = NULL;
	*ops_r = NULL;
	if (p == NULL || p->endpoint == NULL ||
	    (strncmp(p->endpoint, "http://", 7) != 0 &&
	     strncmp(p->endpoint, "https://", 8) != 0) ||
	    !valid_token(p->region, "-_") ||
	    !valid_token(p->bucket, "-_.") ||
	    p->access_key == NULL || p->access_key[0] == '\0' ||
	    strchr(p->access_key, ':') != NULL ||
	    p->secret_key == NULL || p->secret_key[0] == '\0') {
		eng_log(ENG_LOG_ERROR, "s3: incomplete or invalid target "
			"parameters (endpoint, region, bucket, keys)");
		return ENG_EINVAL;
	}
	pthread_once(&global_once, global_init);
	if (!global_ok) {
		eng_log(ENG_LOG_ERROR, "s3: libcurl or libsodium did not initialise");
		return ENG_EIO;
	}
	if (strncmp(p->endpoint, "http://", 7) == 0 && !is_loopback(p->endpoint))
		eng_log(ENG_LOG_WARN, "s3: %s is plain HTTP: objects are encrypted, "
			"but names, sizes and timing are visible on the way",
			p->endpoint);

	s = eng_calloc(1, sizeof(*s));
	s->curl = curl_easy_init();
	if (s->curl == NULL)
		eng_oom(sizeof(CURL *));
	elen = strlen(p->endpoint);
	while (elen > 0 && p->endpoint[elen - 1] == '/')
		elen--;
	s->endpoint = eng_strndup(p->endpoint, elen);
	s->bucket = eng_strdup(p->bucket);
	s->prefix = eng_strdup(p->prefix ? p->prefix : "");
	if (asprintf(&s->sigv4, "aws:amz:%s:s3", p->region) < 0)
		eng_oom(strlen(p->region));
	s->path_style = p->path_style;
	s->max_retries = p->max_retries ? p->max_retries : BK_S3_DEFAULT_RETRIES;

	alen = strlen(p->access_key);
	slen = strlen(p->secret_key);
	s->userpwd_size = alen + 1 + slen + 1;
	s->userpwd = sodium_malloc(s->userpwd_size);
	if (s->userpwd == NULL)
		eng_oom(s->userpwd_size);
	memcpy(s->userpwd, p->access_key, alen);
	s->userpwd[alen] = ':';
	memcpy(s->userpwd + alen + 1, p->secret_key, slen);
	s->userpwd[alen + 1 + slen] = '\0';

	*impl_r = s;
	*ops_r = &s3_ops;
	return 0;
}

/* The module's one entry point (sm_module.h). */
SM_MODULE_EXPORT const sm_module_desc sealmail_bk_s3_module = {
	.abi = SM_MODULE_ABI,
	.name = "bk-s3",
	.entry = (void *)bk_s3_open,
};
