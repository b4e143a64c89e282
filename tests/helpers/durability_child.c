/*
 * durability_child: the victim of tests/unit/test_durability.c.
 *
 *   durability_child DB SPOOL_DIR KEYRING_FILE MK_HEX SEED SEQ_BASE
 *
 * Opens (creating) the encrypted store DB with the key derived from MK,
 * drains SPOOL_DIR, then loops forever doing random acknowledged writes
 * until the parent kills it with SIGKILL. For every write it prints an
 * intent line before the call and an acknowledgement line after the call
 * returned 0, each flushed at once to stdout (a pipe), so that the parent
 * knows exactly what was promised to a client and what was in flight:
 *
 *   a MBOX SEQ SHA FLAGS KW       about to append message SEQ
 *   A MBOX UID SEQ SHA FLAGS KW   append acknowledged: UID holds SEQ
 *   f MBOX UID FLAGS KW           about to set flags (STORE FLAGS, SET)
 *   F MBOX UID FLAGS KW           flag change acknowledged
 *   s SEQ SHA                     about to write a spool entry
 *   S ID SEQ SHA                  spool entry durable (eng_spool_commit)
 *   d                             about to drain the spool
 *   D UID                         one entry delivered (from the callback)
 *   R N                           drain returned 0 after N deliveries
 *   O                             the store is open
 *
 * SHA is the SHA-256 (hex) of the whole raw message, FLAGS a decimal
 * eng_flags mask, KW "-" or keywords joined by ','. A message carries its
 * own sequence number (X-Seq) and the SHA-256 of its body
 * (X-Payload-SHA256), so the parent can tell any message in the store
 * apart and check that it is whole. SEQ_BASE makes the sequence numbers of
 * every run distinct. Sizes run from 1 KB to 300 KB, so some messages span
 * two chunks of 256 KiB.
 *
 * Every line is shorter than PIPE_BUF and written with one write() by
 * fflush, so a kill never leaves half a line in the pipe.
 */
#include <inttypes.h>
#include <sodium.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "eng_error.h"
#include "keys.h"
#include "spool.h"
#include "store.h"

#define MAX_MESSAGE_BYTES (300u * 1024)
#define MIN_MESSAGE_BYTES 1024u
#define MAX_UIDS 4096

static uint64_t rng_state;

/* splitmix64: deterministic for a seed, good enough to pick actions. */
static uint64_t rng(void)
{
	uint64_t z = (rng_state += 0x9e3779b97f4a7c15ull);

	z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
	z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
	return z ^ (z >> 31);
}

static uint32_t rng_below(uint32_t n)
{
	return (uint32_t)(rng() % n);
}

static void die(const char *what, int err)
{
	fprintf(stderr, "durability_child: %s: %s (%d)\n", what,
		eng_strerror(err), err);
	exit(2);
}

static void hex(const uint8_t *in, size_t len, char *out)
{
	sodium_bin2hex(out, len * 2 + 1, in, len);
}

static const char *const words[] = {
	"mail", "server", "storage", "durable", "commit", "journal", "page",
	"cipher", "chunk", "flush", "sync", "crash", "kill", "restart",
	"inbox", "folder", "message", "header", "body", "quota", "spool",
	"alpha", "bravo", "charlie", "delta", "echo", "foxtrot", "golf",
};

static const char *const keyword_pool[] = {
	"$Label1", "$Label2", "Work", "Personal", "$Forwarded", "Todo",
};

/* The message for seq, about size bytes, into *msg_r (free()). */
static size_t make_message(uint64_t seq, size_t size, char **msg_r,
			   char sha_hex[65])
{
	size_t body_len = 0, cap = size + 1024, hdr_len;
	char *body = malloc(cap), *msg;
	uint8_t digest[32];
	char payload_hex[65];
	size_t col = 0;

	if (body == NULL)
		abort();
	body_len = (size_t)snprintf(body, cap, "sequence %" PRIu64 "\r\n", seq);
	while (body_len < size) {
		const char *w = words[rng_below(sizeof(words) / sizeof(words[0]))];
		size_t wl = strlen(w);

		if (col + wl + 1 > 76) {
			memcpy(body + body_len, "\r\n", 2);
			body_len += 2;
			col = 0;
		}
		memcpy(body + body_len, w, wl);
		body_len += wl;
		body[body_len++] = ' ';
		col += wl + 1;
		/* Random digits make each message distinct past dedup. */
		if (rng_below(8) == 0) {
			body_len += (size_t)snprintf(body + body_len, 24, "%08x ",
						     (unsigned)rng());
			col += 9;
		}
	}
	memcpy(body + body_len, "\r\n", 2);
	body_len += 2;
	crypto_hash_sha256(digest, (const uint8_t *)body, body_len);
	hex(digest, 32, payload_hex);

	msg = malloc(body_len + 1024);
	if (msg == NULL)
		abort();
	hdr_len = (size_t)snprintf(msg, 1024,
		"From: Sender %u <sender%u@example.org>\r\n"
		"To: alias@example.net\r\n"
		"Subject: durability %" PRIu64 "\r\n"
		"Message-ID: <seq-%" PRIu64 "@durability.test>\r\n"
		"Date: Mon, 1 Jan 2024 00:00:00 +0000\r\n"
		"X-Seq: %" PRIu64 "\r\n"
		"X-Payload-SHA256: %s\r\n"
		"MIME-Version: 1.0\r\n"
		"Content-Type: text/plain; charset=us-ascii\r\n"
		"\r\n",
		(unsigned)(seq % 50), (unsigned)(seq % 50), seq, seq, seq,
		payload_hex);
	memcpy(msg + hdr_len, body, body_len);
	free(body);
	crypto_hash_sha256(digest, (const uint8_t *)msg, hdr_len + body_len);
	hex(digest, 32, sha_hex);
	*msg_r = msg;
	return hdr_len + body_len;
}

/* Mostly small, some medium, some past one 256 KiB chunk. */
static size_t pick_size(void)
{
	uint32_t r = rng_below(100);

	if (r < 55)
		return MIN_MESSAGE_BYTES + rng_below(20 * 1024);
	if (r < 80)
		return 20 * 1024 + rng_below(80 * 1024);
	return 100 * 1024 + rng_below(MAX_MESSAGE_BYTES - 100 * 1024 - 1024);
}

/* Random flags and 0-3 keywords; kw_text gets "-" or "a,b". */
static uint32_t pick_flags(const char **kws, size_t *n_kws, char *kw_text,
			   size_t kw_cap)
{
	uint32_t flags = (uint32_t)rng() & ENG_F_ALL;
	size_t n = rng_below(4);

	*n_kws = 0;
	kw_text[0] = '\0';
	for (size_t i = 0; i < n; i++) {
		const char *k = keyword_pool[rng_below(
			sizeof(keyword_pool) / sizeof(keyword_pool[0]))];
		bool dup = false;

		for (size_t j = 0; j < *n_kws; j++)
			dup |= strcmp(kws[j], k) == 0;
		if (dup)
			continue;
		kws[(*n_kws)++] = k;
		if (kw_text[0] != '\0')
			strncat(kw_text, ",", kw_cap - strlen(kw_text) - 1);
		strncat(kw_text, k, kw_cap - strlen(kw_text) - 1);
	}
	if (*n_kws == 0)
		snprintf(kw_text, kw_cap, "-");
	return flags;
}

static void say(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static void say(const char *fmt, ...)
{
	va_list ap;

	va_start(ap, fmt);
	vprintf(fmt, ap);
	va_end(ap);
	fflush(stdout);
}

static void on_drain(void *ctx, const char *mailbox, uint32_t uid,
		     uint64_t modseq)
{
	(void)ctx;
	(void)mailbox;
	(void)modseq;
	say("D %u\n", uid);
}

static void drain(eng_store *st, const char *spool_dir, const uint8_t *sk)
{
	size_t n = 0;
	int err;

	say("d\n");
	err = eng_store_drain_spool(st, spool_dir, sk, on_drain, NULL, &n);
	if (err != 0)
		die("drain", err);
	say("R %zu\n", n);
}

struct uid_ref {
	int mbox;
	uint32_t uid;
};

int main(int argc, char **argv)
{
	static const char *const mbox_names[] = { "INBOX", "Durable" };
	eng_keyring *keyring = NULL;
	uint8_t *mk, *db_key = NULL, *sk = NULL;
	const uint8_t *pk;
	uint8_t *blob;
	size_t blob_len, mk_len = 0;
	eng_store_options opt;
	eng_store *st = NULL;
	int64_t mbox_ids[2];
	struct uid_ref *uids;
	size_t n_uids = 0;
	uint64_t seq;
	FILE *f;
	int err;

	if (argc != 7) {
		fprintf(stderr, "usage: durability_child DB SPOOL_DIR "
			"KEYRING_FILE MK_HEX SEED SEQ_BASE\n");
		return 2;
	}
	if (eng_crypto_init() != 0)
		return 2;
	rng_state = strtoull(argv[5], NULL, 10);
	seq = strtoull(argv[6], NULL, 10);

	/* The keyring (for the spool key pair) and MK come from the parent. */
	f = fopen(argv[3], "rb");
	if (f == NULL)
		die("keyring file", ENG_EIO);
	blob = malloc(65536);
	if (blob == NULL)
		abort();
	blob_len = fread(blob, 1, 65536, f);
	fclose(f);
	if ((err = eng_keyring_decode(blob, blob_len, &keyring)) != 0)
		die("keyring decode", err);
	free(blob);
	mk = eng_secret_new(ENG_MK_BYTES);
	if (sodium_hex2bin(mk, ENG_MK_BYTES, argv[4], strlen(argv[4]), NULL,
			   &mk_len, NULL) != 0 || mk_len != ENG_MK_BYTES)
		die("MK hex", ENG_EINVAL);
	if ((err = eng_derive_db_key(mk, &db_key)) != 0)
		die("derive db key", err);
	if ((err = eng_keyring_secret_key(keyring, mk, &sk)) != 0)
		die("secret key", err);
	pk = eng_keyring_public_key(keyring);

	eng_store_options_default(&opt);
	opt.create = true;
	if ((err = eng_store_open(argv[1], db_key, &opt, &st)) != 0)
		die("open", err);
	err = eng_mailbox_create(st, "Durable", 0, NULL);
	if (err != 0 && err != ENG_EEXIST)
		die("create mailbox", err);
	for (int i = 0; i < 2; i++) {
		eng_mailbox mb;

		if ((err = eng_mailbox_get(st, mbox_names[i], &mb)) != 0)
			die("mailbox get", err);
		mbox_ids[i] = mb.id;
		eng_mailbox_clear(&mb);
	}
	say("O\n");
	/* As sqlited does at every unlock. */
	drain(st, argv[2], sk);

	uids = calloc(MAX_UIDS, sizeof(*uids));
	if (uids == NULL)
		abort();
	for (;; seq++) {
		uint32_t action = rng_below(100);
		const char *kws[4];
		size_t n_kws;
		char kw_text[128];
		uint32_t flags;

		if (action < 60) {
			int mbox = rng_below(3) == 0 ? 1 : 0;
			char sha[65], *msg;
			size_t len = make_message(seq, pick_size(), &msg, sha);
			eng_append_opts ao;
			uint32_t uid;

			flags = pick_flags(kws, &n_kws, kw_text, sizeof(kw_text));
			memset(&ao, 0, sizeof(ao));
			ao.flags = flags;
			ao.keywords = kws;
			ao.n_keywords = n_kws;
			say("a %d %" PRIu64 " %s %u %s\n", mbox, seq, sha, flags,
			    kw_text);
			err = eng_append_message(st, mbox_ids[mbox], msg, len, &ao,
						 &uid, NULL);
			free(msg);
			if (err != 0)
				die("append", err);
			say("A %d %u %" PRIu64 " %s %u %s\n", mbox, uid, seq, sha,
			    flags, kw_text);
			if (n_uids < MAX_UIDS)
				uids[n_uids++] = (struct uid_ref){ mbox, uid };
		} else if (action < 80 && n_uids > 0) {
			struct uid_ref r = uids[rng_below((uint32_t)n_uids)];
			eng_uidset set = { NULL, 0, 0 };

			flags = pick_flags(kws, &n_kws, kw_text, sizeof(kw_text));
			eng_uidset_add(&set, r.uid, r.uid);
			say("f %d %u %u %s\n", r.mbox, r.uid, flags, kw_text);
			err = eng_store_flags(st, mbox_ids[r.mbox], &set,
					      ENG_STORE_SET, flags, kws, n_kws,
					      0, NULL, NULL, NULL);
			eng_uidset_free(&set);
			if (err != 0)
				die("store flags", err);
			say("F %d %u %u %s\n", r.mbox, r.uid, flags, kw_text);
		} else if (action < 95) {
			char sha[65], *msg, id[ENG_SPOOL_ID_LEN + 1];
			size_t len = make_message(seq, pick_size(), &msg, sha);
			eng_spool_writer *w;

			say("s %" PRIu64 " %s\n", seq, sha);
			if ((err = eng_spool_writer_open(argv[2], pk, 0, 0, &w)) != 0)
				die("spool open", err);
			/* In pieces, as MX streams it. */
			for (size_t off = 0; off < len && err == 0; off += 40000)
				err = eng_spool_write(w, msg + off, len - off < 40000 ?
						      len - off : 40000);
			free(msg);
			if (err != 0)
				die("spool write", err);
			if ((err = eng_spool_commit(&w, id)) != 0)
				die("spool commit", err);
			say("S %s %" PRIu64 " %s\n", id, seq, sha);
		} else {
			drain(st, argv[2], sk);
		}
	}
}
