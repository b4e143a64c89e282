/*
 * kill -9 durability of the mailbox store and the spool drain.
 *
 * The parent runs tests/helpers/durability_child against one encrypted
 * database again and again, and kills it with SIGKILL after a random 5-300
 * ms: during open, in the middle of an append, a flag change, a spool
 * write or a drain. The child prints an intent line before every write
 * and an acknowledgement after it returned 0 (see durability_child.c).
 * At the end the parent drains what is left in the spool and checks what
 * store.h promises:
 *
 *  - every acknowledged append is there, once, at its UID, byte for byte
 *    (SHA-256 of what eng_message_read gives back);
 *  - every acknowledged flag change is in place (or, if another change of
 *    that message was in flight at a kill, that one);
 *  - every acknowledged spool entry was delivered exactly once to INBOX;
 *  - nothing is there that was never asked for, no sequence number twice;
 *  - the mailbox counters equal what the message rows say;
 *  - eng_store_check() passes.
 *
 * The seed is printed; SEALMAIL_DURABILITY_SEED=n reruns one sequence of
 * actions (the kill points depend on timing and differ anyway), and
 * SEALMAIL_DURABILITY_KILLS=n changes the number of kills (default 60).
 */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <cmocka.h>

#include <ctype.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <poll.h>
#include <signal.h>
#include <sodium.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "eng_error.h"
#include "keys.h"
#include "spool.h"
#include "store.h"
#include "testutil.h"

#define DEFAULT_SEED 20240611u
#define DEFAULT_KILLS 60
#define MAX_ALTS 16

static const eng_kdf_params fast_kdf = { 1, 8 * 1024 };

/* One sequence number the child meant to store (append or spool). */
struct intent {
	uint64_t seq;
	char sha[65];
	int mbox;                   /* 0 INBOX, 1 Durable; spool: 0 */
	bool spool;
	bool acked;                 /* A or S seen */
	uint32_t uid;               /* acked appends */
	/* Flag states the message may be in: [0] the last acknowledged one,
	 * the others changes that were in flight when the child died. */
	uint32_t flags[MAX_ALTS];
	char kw[MAX_ALTS][128];
	size_t n_states;
	int found;                  /* copies found in the store */
};

struct ledger {
	struct intent *v;
	size_t n, cap;
	size_t acked_appends, acked_spool, acked_flags, drains;
};

struct fixture {
	char *dir;
	char *db;
	char *spool;
	char *keyring_file;
	char mk_hex[ENG_MK_BYTES * 2 + 1];
	uint8_t *mk;
	eng_keyring *keyring;
};

static void quiet_log(enum eng_log_level level, const char *msg)
{
	if (level >= ENG_LOG_ERROR)
		fprintf(stderr, "engine: %s\n", msg);
}

static struct intent *find_seq(struct ledger *l, uint64_t seq)
{
	for (size_t i = 0; i < l->n; i++) {
		if (l->v[i].seq == seq)
			return &l->v[i];
	}
	return NULL;
}

static struct intent *find_uid(struct ledger *l, int mbox, uint32_t uid)
{
	for (size_t i = 0; i < l->n; i++) {
		if (!l->v[i].spool && l->v[i].acked && l->v[i].mbox == mbox &&
		    l->v[i].uid == uid)
			return &l->v[i];
	}
	return NULL;
}

static struct intent *add_intent(struct ledger *l, uint64_t seq)
{
	struct intent *in;

	assert_null(find_seq(l, seq));
	if (l->n == l->cap) {
		l->cap = l->cap ? l->cap * 2 : 256;
		l->v = realloc(l->v, l->cap * sizeof(*l->v));
		assert_non_null(l->v);
	}
	in = &l->v[l->n++];
	memset(in, 0, sizeof(*in));
	in->seq = seq;
	return in;
}

/*
 * Applies one run's output. Only complete lines count: a line cut short
 * was never acknowledged. A flag change announced (f) but never
 * acknowledged (F) may or may not have happened: it becomes one more
 * allowed state of that message.
 */
static void apply_run(struct ledger *l, char *out, size_t len)
{
	struct intent *pending_f = NULL;
	uint32_t pf_flags = 0;
	char pf_kw[128] = "";

	while (len > 0) {
		char *nl = memchr(out, '\n', len);
		char *line = out;
		int mbox;
		uint32_t uid, flags;
		uint64_t seq;
		char sha[65], kw[128], id[64];
		struct intent *in;

		if (nl == NULL)
			break;
		*nl = '\0';
		len -= (size_t)(nl + 1 - out);
		out = nl + 1;
		switch (line[0]) {
		case 'a':
			assert_int_equal(sscanf(line, "a %d %" SCNu64 " %64s %u "
						"%127s", &mbox, &seq, sha, &flags,
						kw), 5);
			in = add_intent(l, seq);
			memcpy(in->sha, sha, sizeof(sha));
			in->mbox = mbox;
			in->flags[0] = flags;
			snprintf(in->kw[0], sizeof(in->kw[0]), "%s", kw);
			in->n_states = 1;
			break;
		case 'A':
			assert_int_equal(sscanf(line, "A %d %u %" SCNu64 " %64s",
						&mbox, &uid, &seq, sha), 4);
			in = find_seq(l, seq);
			assert_non_null(in);
			assert_string_equal(in->sha, sha);
			assert_null(find_uid(l, mbox, uid));
			in->acked = true;
			in->uid = uid;
			l->acked_appends++;
			break;
		case 'f':
			assert_int_equal(sscanf(line, "f %d %u %u %127s", &mbox,
						&uid, &flags, kw), 4);
			pending_f = find_uid(l, mbox, uid);
			assert_non_null(pending_f);
			pf_flags = flags;
			snprintf(pf_kw, sizeof(pf_kw), "%s", kw);
			break;
		case 'F':
			assert_int_equal(sscanf(line, "F %d %u %u %127s", &mbox,
						&uid, &flags, kw), 4);
			in = find_uid(l, mbox, uid);
			assert_true(in != NULL && in == pending_f);
			in->flags[0] = flags;
			snprintf(in->kw[0], sizeof(in->kw[0]), "%s", kw);
			in->n_states = 1;
			pending_f = NULL;
			l->acked_flags++;
			break;
		case 's':
			assert_int_equal(sscanf(line, "s %" SCNu64 " %64s", &seq,
						sha), 2);
			in = add_intent(l, seq);
			memcpy(in->sha, sha, sizeof(sha));
			in->spool = true;
			in->flags[0] = 0;
			snprintf(in->kw[0], sizeof(in->kw[0]), "-");
			in->n_states = 1;
			break;
		case 'S':
			assert_int_equal(sscanf(line, "S %63s %" SCNu64 " %64s", id,
						&seq, sha), 3);
			assert_int_equal(strlen(id), ENG_SPOOL_ID_LEN);
			in = find_seq(l, seq);
			assert_true(in != NULL && in->spool);
			assert_string_equal(in->sha, sha);
			in->acked = true;
			l->acked_spool++;
			break;
		case 'R':
			l->drains++;
			break;
		case 'O': case 'd': case 'D':
			break;
		default:
			fail_msg("unexpected line from the child: %s", line);
		}
	}
	if (pending_f != NULL) {
		assert_true(pending_f->n_states < MAX_ALTS);
		pending_f->flags[pending_f->n_states] = pf_flags;
		snprintf(pending_f->kw[pending_f->n_states],
			 sizeof(pending_f->kw[0]), "%s", pf_kw);
		pending_f->n_states++;
	}
}

static uint64_t now_ms(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000 + (uint64_t)ts.tv_nsec / 1000000;
}

/* Runs the child once, kills it after delay_ms, returns what it printed. */
static char *run_child(const struct fixture *fx, uint64_t seed,
		       uint64_t seq_base, unsigned delay_ms, size_t *len_r)
{
	const char *bin = getenv("SEALMAIL_BIN_DIR");
	char *child, seed_s[32], base_s[32];
	int fds[2], status;
	pid_t pid;
	char *out = NULL;
	size_t len = 0, cap = 0;
	uint64_t deadline;
	bool killed = false;

	if (asprintf(&child, "%s/durability_child", bin != NULL ? bin : ".") < 0)
		abort();
	snprintf(seed_s, sizeof(seed_s), "%" PRIu64, seed);
	snprintf(base_s, sizeof(base_s), "%" PRIu64, seq_base);
	assert_int_equal(pipe(fds), 0);
	pid = fork();
	assert_true(pid >= 0);
	if (pid == 0) {
		dup2(fds[1], 1);
		close(fds[0]);
		close(fds[1]);
		execl(child, child, fx->db, fx->spool, fx->keyring_file,
		      fx->mk_hex, seed_s, base_s, (char *)NULL);
		fprintf(stderr, "exec %s: %s\n", child, strerror(errno));
		_exit(127);
	}
	close(fds[1]);
	deadline = now_ms() + delay_ms;
	/*
	 * Short delays kill the child while it opens the store. Longer ones
	 * count from its first output, so that a loaded machine (CI runs
	 * tests in parallel) that is slow to start it still kills it at a
	 * random point of its work, not always before it.
	 */
	bool started = false, early = delay_ms < 20;

	/* Keep the pipe drained while the child works, then kill it. */
	for (;;) {
		uint64_t t = now_ms();
		struct pollfd pfd = { fds[0], POLLIN, 0 };
		ssize_t n;
		/* A child that prints nothing for 30 s is killed anyway. */
		bool armed = early || started || t >= deadline + 30000;

		if (!killed && armed && t >= deadline) {
			kill(pid, SIGKILL);
			killed = true;
		}
		if (poll(&pfd, 1, killed || !armed || t >= deadline ? 1000 :
			 (int)(deadline - t)) <= 0)
			continue;
		if (len + 4096 > cap) {
			cap = (cap + 4096) * 2;
			out = realloc(out, cap);
			assert_non_null(out);
		}
		n = read(fds[0], out + len, cap - len);
		if (n <= 0) {
			if (n < 0 && errno == EINTR)
				continue;
			break;      /* EOF: the child is gone */
		}
		len += (size_t)n;
		if (!started) {
			started = true;
			if (!early)
				deadline = now_ms() + delay_ms;
		}
	}
	close(fds[0]);
	if (!killed)
		kill(pid, SIGKILL);
	assert_int_equal(waitpid(pid, &status, 0), pid);
	if (!(WIFSIGNALED(status) && WTERMSIG(status) == SIGKILL))
		fail_msg("durability_child ended by itself (status %d): it "
			 "reported an error on stderr", status);
	free(child);
	*len_r = len;
	return out;
}

static void fixture_init(struct fixture *fx)
{
	uint8_t *blob;
	size_t blob_len;

	memset(fx, 0, sizeof(*fx));
	fx->dir = tu_tmpdir();
	if (asprintf(&fx->db, "%s/alias.db", fx->dir) < 0 ||
	    asprintf(&fx->spool, "%s/spool", fx->dir) < 0 ||
	    asprintf(&fx->keyring_file, "%s/keyring", fx->dir) < 0)
		abort();
	assert_int_equal(eng_keyring_create("pw", 2, fast_kdf, &fx->keyring,
					    &fx->mk), 0);
	assert_int_equal(eng_keyring_encode(fx->keyring, &blob, &blob_len), 0);
	assert_int_equal(tu_write_file(fx->keyring_file, blob, blob_len), 0);
	free(blob);
	sodium_bin2hex(fx->mk_hex, sizeof(fx->mk_hex), fx->mk, ENG_MK_BYTES);
}

static void fixture_free(struct fixture *fx)
{
	tu_rmrf(fx->dir);
	free(fx->dir);
	free(fx->db);
	free(fx->spool);
	free(fx->keyring_file);
	eng_secret_free(&fx->mk);
	eng_keyring_free(&fx->keyring);
	sodium_memzero(fx->mk_hex, sizeof(fx->mk_hex));
}

static eng_store *open_store(const struct fixture *fx, bool create)
{
	uint8_t *key = NULL;
	eng_store_options opt;
	eng_store *st = NULL;

	assert_int_equal(eng_derive_db_key(fx->mk, &key), 0);
	eng_store_options_default(&opt);
	opt.create = create;
	assert_int_equal(eng_store_open(fx->db, key, &opt, &st), 0);
	eng_secret_free(&key);
	return st;
}

/* Keywords as a canonical "a,b" (sorted, case-folded) or "-". */
static void kw_canon(const char *text, char *out, size_t cap)
{
	char *copy = strdup(text), *save = NULL, *list[16];
	size_t n = 0;

	assert_non_null(copy);
	out[0] = '\0';
	if (strcmp(text, "-") != 0) {
		for (char *t = strtok_r(copy, ",", &save); t != NULL && n < 16;
		     t = strtok_r(NULL, ",", &save))
			list[n++] = t;
	}
	for (size_t i = 1; i < n; i++) {
		for (size_t j = i; j > 0 && strcasecmp(list[j - 1], list[j]) > 0;
		     j--) {
			char *tmp = list[j];

			list[j] = list[j - 1];
			list[j - 1] = tmp;
		}
	}
	for (size_t i = 0; i < n; i++) {
		if (i > 0)
			strncat(out, ",", cap - strlen(out) - 1);
		for (char *c = list[i]; *c; c++)
			*c = (char)tolower((unsigned char)*c);
		strncat(out, list[i], cap - strlen(out) - 1);
	}
	if (n == 0)
		snprintf(out, cap, "-");
	free(copy);
}

struct found_msg {
	uint32_t uid;
	uint32_t flags;
	char kw[128];
	uint64_t size;
};

struct found_list {
	struct found_msg *v;
	size_t n;
};

static int collect(void *ctx, const eng_msg *msg)
{
	struct found_list *fl = ctx;
	struct found_msg *f;
	char joined[128] = "";

	fl->v = realloc(fl->v, (fl->n + 1) * sizeof(*fl->v));
	assert_non_null(fl->v);
	f = &fl->v[fl->n++];
	f->uid = msg->uid;
	f->flags = msg->flags;
	f->size = msg->size;
	for (char **k = msg->keywords; k != NULL && *k != NULL; k++) {
		if (joined[0] != '\0')
			strncat(joined, ",", sizeof(joined) - strlen(joined) - 1);
		strncat(joined, *k, sizeof(joined) - strlen(joined) - 1);
	}
	kw_canon(joined[0] != '\0' ? joined : "-", f->kw, sizeof(f->kw));
	return 0;
}

/* Value of header field name in a raw message, or NULL. */
static bool header_value(const char *msg, size_t len, const char *name,
			 char *out, size_t cap)
{
	size_t nl = strlen(name);

	for (size_t i = 0; i + nl < len; ) {
		const char *eol;

		if (msg[i] == '\r' && i + 1 < len && msg[i + 1] == '\n')
			return false;       /* end of the header */
		if (strncasecmp(msg + i, name, nl) == 0 && msg[i + nl] == ':') {
			size_t j = i + nl + 1, k = 0;

			while (j < len && msg[j] == ' ')
				j++;
			while (j < len && msg[j] != '\r' && k + 1 < cap)
				out[k++] = msg[j++];
			out[k] = '\0';
			return true;
		}
		eol = memchr(msg + i, '\n', len - i);
		if (eol == NULL)
			return false;
		i = (size_t)(eol - msg) + 1;
	}
	return false;
}

/* Reads a whole message back and checks it against the ledger. */
static void verify_message(eng_store *st, int64_t mbox_id, int mbox,
			   const struct found_msg *f, struct ledger *l)
{
	eng_message *m = NULL;
	char *data, seq_text[32], payload_sha[65], hex[65];
	uint8_t digest[32];
	uint64_t seq, off = 0;
	struct intent *in;
	const char *body;
	bool state_ok = false;
	long n;

	assert_int_equal(eng_message_open(st, mbox_id, f->uid, &m), 0);
	assert_int_equal(eng_message_size(m), f->size);
	data = malloc(f->size + 1);
	assert_non_null(data);
	/* Odd read sizes cross the 256 KiB chunk boundaries unaligned. */
	while ((n = eng_message_read(m, off, data + off, 77777)) > 0)
		off += (uint64_t)n;
	assert_int_equal(n, 0);
	assert_int_equal(off, f->size);
	eng_message_close(&m);

	crypto_hash_sha256(digest, (const uint8_t *)data, f->size);
	sodium_bin2hex(hex, sizeof(hex), digest, 32);
	assert_true(header_value(data, f->size, "X-Seq", seq_text,
				 sizeof(seq_text)));
	seq = strtoull(seq_text, NULL, 10);
	in = find_seq(l, seq);
	if (in == NULL)
		fail_msg("mailbox %d UID %u holds seq %" PRIu64 ", which the "
			 "child never wrote", mbox, f->uid, seq);
	if (strcmp(in->sha, hex) != 0)
		fail_msg("mailbox %d UID %u (seq %" PRIu64 ") differs from what "
			 "was written", mbox, f->uid, seq);
	/* The message is whole inside too: its body matches its header. */
	assert_true(header_value(data, f->size, "X-Payload-SHA256", payload_sha,
				 sizeof(payload_sha)));
	body = memmem(data, f->size, "\r\n\r\n", 4);
	assert_non_null(body);
	body += 4;
	crypto_hash_sha256(digest, (const uint8_t *)body,
			   f->size - (size_t)(body - data));
	sodium_bin2hex(hex, sizeof(hex), digest, 32);
	assert_string_equal(hex, payload_sha);
	free(data);

	in->found++;
	if (in->found > 1)
		fail_msg("seq %" PRIu64 " is stored %d times", seq, in->found);
	if (in->spool) {
		assert_int_equal(mbox, 0);
	} else {
		assert_int_equal(in->mbox, mbox);
		if (in->acked)
			assert_int_equal(in->uid, f->uid);
	}
	for (size_t i = 0; i < in->n_states && !state_ok; i++) {
		char want[128];

		kw_canon(in->kw[i], want, sizeof(want));
		state_ok = in->flags[i] == f->flags && strcmp(want, f->kw) == 0;
	}
	if (!state_ok)
		fail_msg("mailbox %d UID %u (seq %" PRIu64 "): flags %u "
			 "keywords %s, acknowledged %u %s", mbox, f->uid, seq,
			 f->flags, f->kw, in->flags[0], in->kw[0]);
}

static void verify_store(const struct fixture *fx, struct ledger *l,
			 size_t *drained_r)
{
	static const char *const names[] = { "INBOX", "Durable" };
	eng_store *st = open_store(fx, false);
	char (*ids)[ENG_SPOOL_ID_LEN + 1] = NULL;
	eng_buf report = ENG_BUF_INIT;
	uint8_t *sk = NULL;
	size_t n_ids = 99, total = 0;
	int err;

	/* What was still in the spool arrives now, as at the next unlock. */
	assert_int_equal(eng_keyring_secret_key(fx->keyring, fx->mk, &sk), 0);
	assert_int_equal(eng_store_drain_spool(st, fx->spool, sk, NULL, NULL,
					       drained_r), 0);
	eng_secret_free(&sk);
	err = eng_spool_list(fx->spool, &ids, &n_ids);
	assert_true(err == 0 || err == ENG_ENOTFOUND);
	assert_int_equal(err == 0 ? n_ids : 0, 0);
	free(ids);

	for (int mbox = 0; mbox < 2; mbox++) {
		struct found_list fl = { NULL, 0 };
		eng_mailbox mb;
		uint32_t unseen = 0, deleted = 0, max_uid = 0;
		uint64_t size = 0;

		assert_int_equal(eng_mailbox_get(st, names[mbox], &mb), 0);
		assert_int_equal(eng_fetch_meta(st, mb.id, NULL, 0, collect,
						&fl), 0);
		for (size_t i = 0; i < fl.n; i++) {
			verify_message(st, mb.id, mbox, &fl.v[i], l);
			unseen += (fl.v[i].flags & ENG_F_SEEN) ? 0 : 1;
			deleted += (fl.v[i].flags & ENG_F_DELETED) ? 1 : 0;
			size += fl.v[i].size;
			if (fl.v[i].uid > max_uid)
				max_uid = fl.v[i].uid;
		}
		assert_int_equal(mb.messages, fl.n);
		assert_int_equal(mb.unseen, unseen);
		assert_int_equal(mb.deleted, deleted);
		assert_int_equal(mb.size_bytes, size);
		assert_true(mb.uidnext > max_uid);
		total += fl.n;
		eng_mailbox_clear(&mb);
		free(fl.v);
	}
	for (size_t i = 0; i < l->n; i++) {
		if (l->v[i].acked && l->v[i].found != 1)
			fail_msg("acknowledged %s seq %" PRIu64 " found %d times",
				 l->v[i].spool ? "spool entry" : "append",
				 l->v[i].seq, l->v[i].found);
	}
	err = eng_store_check(st, &report);
	if (err != 0)
		fail_msg("eng_store_check: %s", report.data);
	eng_buf_free(&report);
	print_message("verified %zu messages in the store\n", total);
	eng_store_close(&st);
}

static void test_kill9(void **state)
{
	const char *env_seed = getenv("SEALMAIL_DURABILITY_SEED");
	const char *env_kills = getenv("SEALMAIL_DURABILITY_KILLS");
	uint64_t seed = env_seed != NULL ? strtoull(env_seed, NULL, 10) :
		DEFAULT_SEED;
	int kills = env_kills != NULL ? atoi(env_kills) : DEFAULT_KILLS;
	struct fixture fx;
	struct ledger l;
	uint64_t rng = seed, t0 = now_ms();
	size_t drained = 0, in_flight_found = 0;

	(void)state;
	memset(&l, 0, sizeof(l));
	fixture_init(&fx);
	print_message("kill -9 durability: seed %" PRIu64 ", %d kills\n", seed,
		      kills);
	for (int run = 0; run < kills; run++) {
		unsigned delay_ms;
		size_t len;
		char *out;

		rng = rng * 6364136223846793005ull + 1442695040888963407ull;
		delay_ms = 5 + (unsigned)((rng >> 33) % 296);
		out = run_child(&fx, seed + (uint64_t)run,
				(uint64_t)(run + 1) * 1000000u, delay_ms, &len);
		apply_run(&l, out, len);
		free(out);
		/* Every tenth kill: the database must open at once. */
		if (run % 10 == 9) {
			eng_store *st = open_store(&fx, false);

			assert_true(eng_store_schema_version(st) >= 1);
			eng_store_close(&st);
		}
	}
	print_message("acknowledged: %zu appends, %zu flag changes, %zu spool "
		      "entries, %zu drains in %d runs (%" PRIu64 " ms)\n",
		      l.acked_appends, l.acked_flags, l.acked_spool, l.drains,
		      kills, now_ms() - t0);
	/* Without writes acknowledged, the test proves nothing. */
	assert_true(l.acked_appends >= 20);
	assert_true(l.acked_flags >= 5);
	assert_true(l.acked_spool >= 5);
	verify_store(&fx, &l, &drained);
	for (size_t i = 0; i < l.n; i++) {
		if (!l.v[i].acked && l.v[i].found > 0)
			in_flight_found++;
	}
	print_message("final drain delivered %zu; %zu writes in flight at a "
		      "kill were committed; total %" PRIu64 " ms\n", drained,
		      in_flight_found, now_ms() - t0);
	free(l.v);
	fixture_free(&fx);
}

/*
 * The drain's exactly-once rule, deterministically: a crash after the
 * commit but before the file's removal leaves an entry that was already
 * delivered; the next drain must remove it without delivering it again.
 * Putting the files back after a drain is exactly that state.
 */
static void test_drain_after_commit_before_unlink(void **state)
{
	struct fixture fx;
	eng_store *st;
	uint8_t *sk = NULL;
	char ids[3][ENG_SPOOL_ID_LEN + 1];
	uint8_t *saved[3];
	size_t saved_len[3], n = 99;
	eng_mailbox mb;

	(void)state;
	fixture_init(&fx);
	st = open_store(&fx, true);
	for (int i = 0; i < 3; i++) {
		eng_spool_writer *w;
		char msg[256], *path;
		int len = snprintf(msg, sizeof(msg), "Subject: spool %d\r\n\r\n"
				   "body of entry %d\r\n", i, i);

		assert_int_equal(eng_spool_writer_open(fx.spool,
			eng_keyring_public_key(fx.keyring), 0, 0, &w), 0);
		assert_int_equal(eng_spool_write(w, msg, (size_t)len), 0);
		assert_int_equal(eng_spool_commit(&w, ids[i]), 0);
		if (asprintf(&path, "%s/%s.msg", fx.spool, ids[i]) < 0)
			abort();
		saved[i] = tu_read_file(path, &saved_len[i]);
		assert_non_null(saved[i]);
		free(path);
	}
	assert_int_equal(eng_keyring_secret_key(fx.keyring, fx.mk, &sk), 0);
	assert_int_equal(eng_store_drain_spool(st, fx.spool, sk, NULL, NULL,
					       &n), 0);
	assert_int_equal(n, 3);
	for (int i = 0; i < 3; i++) {
		char *path;

		if (asprintf(&path, "%s/%s.msg", fx.spool, ids[i]) < 0)
			abort();
		assert_int_equal(access(path, F_OK), -1);
		assert_int_equal(tu_write_file(path, saved[i], saved_len[i]), 0);
		free(saved[i]);
		free(path);
	}
	/* Reopen too: the record of what was applied is in the database. */
	eng_store_close(&st);
	st = open_store(&fx, false);
	n = 99;
	assert_int_equal(eng_store_drain_spool(st, fx.spool, sk, NULL, NULL,
					       &n), 0);
	assert_int_equal(n, 0);
	assert_int_equal(eng_mailbox_get(st, "INBOX", &mb), 0);
	assert_int_equal(mb.messages, 3);
	eng_mailbox_clear(&mb);
	{
		char (*left)[ENG_SPOOL_ID_LEN + 1] = NULL;
		size_t n_left = 99;

		assert_int_equal(eng_spool_list(fx.spool, &left, &n_left), 0);
		assert_int_equal(n_left, 0);
		free(left);
	}
	eng_secret_free(&sk);
	eng_store_close(&st);
	fixture_free(&fx);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_drain_after_commit_before_unlink),
		cmocka_unit_test(test_kill9),
	};

	eng_set_log(quiet_log);
	if (eng_crypto_init() != 0)
		return 1;
	return cmocka_run_group_tests(tests, NULL, NULL);
}
