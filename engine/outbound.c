/*
 * The outbound queue entry's envelope (outbound.h has the format).
 */
#include "outbound.h"
#include "eng_error.h"

#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define MAGIC "SMOUTQ1\n"
/* The envelope, all lines: far above 100 targets of 1 KiB. */
#define ENV_MAX_BYTES (128u * 1024)

static bool value_ok(const char *v)
{
	size_t n = strlen(v);

	return n <= ENG_OUTBOUND_VALUE_MAX && strpbrk(v, "\r\n") == NULL;
}

static int put_line(eng_spool_writer *w, const char *key, const char *value)
{
	int err;

	if ((err = eng_spool_write(w, key, strlen(key))) != 0 ||
	    (err = eng_spool_write(w, " ", 1)) != 0 ||
	    (err = eng_spool_write(w, value, strlen(value))) != 0)
		return err;
	return eng_spool_write(w, "\n", 1);
}

int eng_outbound_writer_open(const char *dir, const uint8_t *pk, int64_t date,
			     const char *id, const eng_outbound_env *env,
			     eng_spool_writer **w_r)
{
	const char *vals[] = { env->sender, env->orig_sender, env->recipient, env->alias_id };
	char size[32];
	int err;

	*w_r = NULL;
	for (size_t i = 0; i < sizeof(vals) / sizeof(vals[0]); i++)
		if (vals[i] == NULL || !value_ok(vals[i]))
			return ENG_EINVAL;
	if (env->n_targets == 0 || env->n_targets > ENG_OUTBOUND_TARGETS_MAX)
		return ENG_EINVAL;
	for (size_t i = 0; i < env->n_targets; i++)
		if (!value_ok(env->targets[i]) || env->targets[i][0] == '\0')
			return ENG_EINVAL;
	if ((err = eng_spool_writer_open_id(dir, pk, date, 0, id, w_r)) != 0)
		return err;
	snprintf(size, sizeof(size), "%llu", (unsigned long long)env->size);
	if ((err = eng_spool_write(*w_r, MAGIC, strlen(MAGIC))) != 0 ||
	    (err = put_line(*w_r, "sender", env->sender)) != 0 ||
	    (err = put_line(*w_r, "orig-sender", env->orig_sender)) != 0 ||
	    (err = put_line(*w_r, "recipient", env->recipient)) != 0 ||
	    (err = put_line(*w_r, "alias", env->alias_id)) != 0 ||
	    (err = put_line(*w_r, "size", size)) != 0)
		goto fail;
	for (size_t i = 0; i < env->n_targets; i++)
		if ((err = put_line(*w_r, "target", env->targets[i])) != 0)
			goto fail;
	if ((err = eng_spool_write(*w_r, "\n", 1)) != 0)
		goto fail;
	return 0;
fail:
	eng_spool_abort(w_r);
	return err;
}

/* One line into buf (without its LF); 0, or ENG_ECORRUPT. */
static int read_line(eng_spool_reader *r, char *buf, size_t cap, size_t *total)
{
	size_t n = 0;

	for (;;) {
		char c;
		long got = eng_spool_read(r, &c, 1);

		if (got != 1 || ++*total > ENV_MAX_BYTES)
			return ENG_ECORRUPT;
		if (c == '\n')
			break;
		if (c == '\0' || c == '\r' || n + 1 >= cap)
			return ENG_ECORRUPT;
		buf[n++] = c;
	}
	buf[n] = '\0';
	return 0;
}

static int set_field(eng_outbound_env *env, const char *line)
{
	const char *sp = strchr(line, ' ');
	size_t klen;
	const char *v;
	char *end;

	if (sp == NULL)
		return ENG_ECORRUPT;
	klen = (size_t)(sp - line);
	v = sp + 1;
#define KEY(k) (klen == sizeof(k) - 1 && memcmp(line, k, klen) == 0)
	if (KEY("sender") && env->sender == NULL) {
		env->sender = eng_strdup(v);
	} else if (KEY("orig-sender") && env->orig_sender == NULL) {
		env->orig_sender = eng_strdup(v);
	} else if (KEY("recipient") && env->recipient == NULL) {
		env->recipient = eng_strdup(v);
	} else if (KEY("alias") && env->alias_id == NULL) {
		env->alias_id = eng_strdup(v);
	} else if (KEY("size")) {
		env->size = strtoull(v, &end, 10);
		if (*v == '\0' || *end != '\0')
			return ENG_ECORRUPT;
	} else if (KEY("target") && env->n_targets < ENG_OUTBOUND_TARGETS_MAX) {
		env->targets = eng_realloc(env->targets, (env->n_targets + 1) *
					   sizeof(*env->targets));
		env->targets[env->n_targets++] = eng_strdup(v);
	} else {
		return ENG_ECORRUPT;
	}
#undef KEY
	return 0;
}

int eng_outbound_read_env(eng_spool_reader *r, eng_outbound_env *env)
{
	char *line = eng_malloc(ENG_OUTBOUND_VALUE_MAX + 32);
	size_t total = 0;
	int err;

	memset(env, 0, sizeof(*env));
	if ((err = read_line(r, line, ENG_OUTBOUND_VALUE_MAX + 32, &total)) != 0 ||
	    strcmp(line, "SMOUTQ1") != 0) {
		err = ENG_ECORRUPT;
		goto out;
	}
	for (;;) {
		if ((err = read_line(r, line, ENG_OUTBOUND_VALUE_MAX + 32, &total)) != 0)
			goto out;
		if (line[0] == '\0')
			break;
		if ((err = set_field(env, line)) != 0)
			goto out;
	}
	if (env->sender == NULL || env->orig_sender == NULL || env->recipient == NULL ||
	    env->alias_id == NULL || env->n_targets == 0)
		err = ENG_ECORRUPT;
out:
	free(line);
	if (err != 0)
		eng_outbound_env_clear(env);
	return err;
}

void eng_outbound_env_clear(eng_outbound_env *env)
{
	free(env->sender);
	free(env->orig_sender);
	free(env->recipient);
	free(env->alias_id);
	for (size_t i = 0; i < env->n_targets; i++)
		free(env->targets[i]);
	free(env->targets);
	memset(env, 0, sizeof(*env));
}
