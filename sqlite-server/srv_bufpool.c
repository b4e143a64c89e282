/*
 * Piece buffers kept for reuse while body streams run (srv_bufpool.h).
 *
 * Rules: every count changes under the mutex; a buffer is wiped (its used
 * bytes) before it is kept or freed, outside the mutex; buffers are kept
 * only while a holder exists and within the holders' share, and the last
 * unhold frees them all.
 */
#include "srv_bufpool.h"

#include "eng_error.h"

#include <sodium.h>
#include <stdbool.h>
#include <stdlib.h>

srv_bufpool srv_pieces = { .mu = PTHREAD_MUTEX_INITIALIZER };

void srv_bufpool_init(srv_bufpool *p)
{
	*p = (srv_bufpool){ .n_kept = 0 };
	pthread_mutex_init(&p->mu, NULL);
}

/* How many buffers p may keep now. Under the mutex. */
static size_t keep_limit(const srv_bufpool *p)
{
	return p->holders < SRV_BUFPOOL_KEEP / SRV_BUFPOOL_KEEP_PER_HOLD ?
		p->holders * SRV_BUFPOOL_KEEP_PER_HOLD : SRV_BUFPOOL_KEEP;
}

/* Frees the kept buffers beyond keep_limit (all of them without a
 * holder). They were wiped when given back. */
static void shrink(srv_bufpool *p)
{
	uint8_t *drop[SRV_BUFPOOL_KEEP];
	size_t n = 0, limit;

	pthread_mutex_lock(&p->mu);
	limit = keep_limit(p);
	while (p->n_kept > limit)
		drop[n++] = p->kept[--p->n_kept];
	pthread_mutex_unlock(&p->mu);
	while (n > 0)
		free(drop[--n]);
}

void srv_bufpool_destroy(srv_bufpool *p)
{
	pthread_mutex_lock(&p->mu);
	p->holders = 0;
	pthread_mutex_unlock(&p->mu);
	shrink(p);
	pthread_mutex_destroy(&p->mu);
}

void srv_bufpool_hold(srv_bufpool *p)
{
	pthread_mutex_lock(&p->mu);
	p->holders++;
	pthread_mutex_unlock(&p->mu);
}

void srv_bufpool_unhold(srv_bufpool *p)
{
	pthread_mutex_lock(&p->mu);
	if (p->holders > 0)
		p->holders--;
	pthread_mutex_unlock(&p->mu);
	shrink(p);
}

uint8_t *srv_bufpool_get(srv_bufpool *p)
{
	uint8_t *buf = NULL;

	pthread_mutex_lock(&p->mu);
	if (p->n_kept > 0)
		buf = p->kept[--p->n_kept];
	p->out++;
	pthread_mutex_unlock(&p->mu);
	return buf != NULL ? buf : eng_malloc(SRV_BUFPOOL_BYTES);
}

void srv_bufpool_put(srv_bufpool *p, uint8_t *buf, size_t used)
{
	bool kept = false;

	if (buf == NULL)
		return;
	sodium_memzero(buf, used < SRV_BUFPOOL_BYTES ? used : SRV_BUFPOOL_BYTES);
	pthread_mutex_lock(&p->mu);
	if (p->out > 0)
		p->out--;
	if (p->n_kept < keep_limit(p)) {
		p->kept[p->n_kept++] = buf;
		kept = true;
	}
	pthread_mutex_unlock(&p->mu);
	if (!kept)
		free(buf);
}

void srv_bufpool_counts(srv_bufpool *p, size_t *kept_r, size_t *out_r)
{
	pthread_mutex_lock(&p->mu);
	*kept_r = p->n_kept;
	*out_r = p->out;
	pthread_mutex_unlock(&p->mu);
}
