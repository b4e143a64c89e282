/*
 * The outbound queue (srv_outbound.h has the contract).
 *
 * Keys are made and loaded once, at the first forward, under a mutex.
 * The count of queued entries is taken at start (eng_spool_list, which
 * also removes tmp-* leftovers of a crash) and kept with atomic adds; a
 * keyed entry written again (a retry) replaces itself and is not counted
 * twice.
 */
#include "srv_outbound.h"
#include "srv.h"
#include "srv_srs.h"
#include "eng_error.h"
#include "outbound.h"
#include "secrets.h"

#include <errno.h>
#include <pthread.h>
#include <sodium.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#define BODY_CHUNK (64u * 1024)

struct srv_outbound {
	char *dir;                  /* data_dir/outbound */
	char *secrets_dir;          /* data_dir/secrets */
	pthread_mutex_t lock;
	bool keys_loaded;
	uint8_t pk[crypto_box_PUBLICKEYBYTES];
	char *srs_key;              /* hex text, secret memory */
	uint64_t queued;            /* atomic */
};

int srv_outbound_new(const char *data_dir, srv_outbound **ob_r)
{
	srv_outbound *ob = eng_calloc(1, sizeof(*ob));
	char (*ids)[ENG_SPOOL_ID_LEN + 1] = NULL;
	size_t n = 0;

	if (asprintf(&ob->dir, "%s/outbound", data_dir) < 0 ||
	    asprintf(&ob->secrets_dir, "%s/secrets", data_dir) < 0)
		eng_oom(0);
	pthread_mutex_init(&ob->lock, NULL);
	if (access(ob->dir, F_OK) == 0 && eng_spool_list(ob->dir, &ids, &n) == 0)
		ob->queued = n;
	free(ids);
	*ob_r = ob;
	return 0;
}

void srv_outbound_free(srv_outbound **obp)
{
	srv_outbound *ob;

	if (obp == NULL || *obp == NULL)
		return;
	ob = *obp;
	if (ob->srs_key != NULL)
		sodium_free(ob->srs_key);
	pthread_mutex_destroy(&ob->lock);
	free(ob->dir);
	free(ob->secrets_dir);
	free(ob);
	*obp = NULL;
}

uint64_t srv_outbound_queued(const srv_outbound *ob)
{
	return ob == NULL ? 0 : __atomic_load_n(&ob->queued, __ATOMIC_RELAXED);
}

/* Makes (first use) and loads one secret file; *key_r in secret memory. */
static int load_secret(const char *secrets_dir, const char *name, uint8_t **key_r)
{
	char *path, *msg = NULL;
	bool created = false;
	int err;

	if (asprintf(&path, "%s/%s", secrets_dir, name) < 0)
		eng_oom(0);
	err = sm_secret_ensure(path, &created, NULL, &msg);
	if (err == 0)
		err = sm_secret_load(path, key_r, &msg);
	if (err != 0)
		eng_log(ENG_LOG_ERROR, "outbound queue: %s", msg != NULL ? msg :
			eng_strerror(err));
	else if (created)
		eng_log(ENG_LOG_INFO, "outbound queue: created %s", path);
	free(msg);
	free(path);
	return err;
}

static int keys_load(srv_outbound *ob)
{
	uint8_t *sk = NULL, *srs = NULL;
	int err = 0;

	pthread_mutex_lock(&ob->lock);
	if (ob->keys_loaded)
		goto out;
	if (mkdir(ob->secrets_dir, 0700) != 0 && errno != EEXIST) {
		err = errno == ENOSPC ? ENG_ENOSPC : ENG_EIO;
		goto out;
	}
	if ((err = load_secret(ob->secrets_dir, "outbound_key", &sk)) != 0 ||
	    (err = load_secret(ob->secrets_dir, "srs_secret", &srs)) != 0)
		goto out;
	crypto_scalarmult_base(ob->pk, sk);
	ob->srs_key = sodium_malloc(SM_SECRET_HEX_CHARS + 1);
	if (ob->srs_key == NULL)
		eng_oom(SM_SECRET_HEX_CHARS + 1);
	sodium_bin2hex(ob->srs_key, SM_SECRET_HEX_CHARS + 1, srs, SM_SECRET_BYTES);
	ob->keys_loaded = true;
out:
	sm_secret_free(&sk);
	sm_secret_free(&srs);
	pthread_mutex_unlock(&ob->lock);
	return err;
}

int srv_body_copy(srv_body *body, eng_spool_writer *w)
{
	srv_body_reader *br = NULL;
	uint8_t *chunk;
	long n;
	int err;

	if ((err = srv_body_open(body, &br)) != 0)
		return err;
	chunk = eng_malloc(BODY_CHUNK);
	while ((n = srv_body_read(br, chunk, BODY_CHUNK)) > 0) {
		if ((err = eng_spool_write(w, chunk, (size_t)n)) != 0)
			break;
	}
	if (err == 0 && n < 0) {
		/* Our own sealed temporary file failed its check: a local
		 * fault, temporary from the sender's point of view. */
		eng_log(ENG_LOG_ERROR, "the received body failed its check: %s",
			eng_strerror((int)n));
		err = ENG_EIO;
	}
	/* It held message bytes in the clear. */
	sodium_memzero(chunk, BODY_CHUNK);
	free(chunk);
	srv_body_reader_free(&br);
	return err;
}

void srv_key_id(const char *label, const char *alias_id, const uint8_t *key,
		size_t key_len, char id_r[ENG_SPOOL_ID_LEN + 1])
{
	crypto_generichash_state st;
	uint8_t h[ENG_SPOOL_ID_LEN / 2];

	crypto_generichash_init(&st, NULL, 0, sizeof(h));
	crypto_generichash_update(&st, (const uint8_t *)label, strlen(label) + 1);
	crypto_generichash_update(&st, (const uint8_t *)alias_id, strlen(alias_id) + 1);
	crypto_generichash_update(&st, key, key_len);
	crypto_generichash_final(&st, h, sizeof(h));
	sodium_bin2hex(id_r, ENG_SPOOL_ID_LEN + 1, h, sizeof(h));
}

int srv_outbound_queue(srv_outbound *ob, const srv_outbound_req *q, srv_body *body)
{
	eng_outbound_env env;
	eng_spool_writer *w = NULL;
	char id[ENG_SPOOL_ID_LEN + 1], committed[ENG_SPOOL_ID_LEN + 1];
	char *srs = NULL, *path = NULL;
	bool replaces = false;
	int err;

	if ((err = keys_load(ob)) != 0)
		return err;
	err = srv_srs_forward((const uint8_t *)ob->srs_key, SM_SECRET_HEX_CHARS,
			      q->sender, q->alias_domain, (int64_t)time(NULL), &srs);
	if (err != 0)
		return err;
	memset(&env, 0, sizeof(env));
	env.sender = srs;
	env.orig_sender = (char *)q->sender;
	env.recipient = (char *)q->recipient;
	env.alias_id = (char *)q->alias_id;
	env.size = srv_body_size(body);
	env.targets = (char **)q->targets;
	env.n_targets = q->n_targets;
	if (q->key != NULL) {
		srv_key_id("sealmail-outbound-id", q->alias_id, q->key, q->key_len, id);
		if (asprintf(&path, "%s/%s.msg", ob->dir, id) < 0)
			eng_oom(0);
		replaces = access(path, F_OK) == 0;
	}
	if ((err = eng_outbound_writer_open(ob->dir, ob->pk, q->internal_date,
					    q->key != NULL ? id : NULL, &env, &w)) != 0 ||
	    (err = srv_body_copy(body, w)) != 0 ||
	    (err = eng_spool_commit(&w, committed)) != 0)
		goto out;
	if (!replaces)
		__atomic_add_fetch(&ob->queued, 1, __ATOMIC_RELAXED);
	eng_log(ENG_LOG_INFO, "outbound: queued %s for alias %s (%zu targets)",
		committed, q->alias_id, q->n_targets);
out:
	eng_spool_abort(&w);
	free(srs);
	free(path);
	return err;
}
