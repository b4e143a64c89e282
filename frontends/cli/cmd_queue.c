/*
 * `sealmail queue list|show ID --config FILE`: the outbound queue
 * (engine/outbound.h), read straight from data_dir/outbound/ with the
 * queue key in data_dir/secrets/outbound_key, so it works whether sqlited
 * runs or not. For the operator (it needs to read the secrets): list
 * prints one line per entry (id, sender, targets, size, recipient); show
 * prints one entry's envelope and message.
 *
 * It never removes anything (sqlited may be writing a tmp-* file: only
 * complete "<id>.msg" entries are read).
 */
#include <dirent.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli.h"
#include "cli_queue.h"
#include "eng_error.h"
#include "outbound.h"
#include "secrets.h"
#include "spool.h"

struct queue_ctx {
	sm_config *cfg;
	char *dir;
	uint8_t *sk;
};

static bool is_entry(const char *name, char id_r[ENG_SPOOL_ID_LEN + 1])
{
	size_t n = strlen(name);

	if (n != ENG_SPOOL_ID_LEN + 4 || strcmp(name + ENG_SPOOL_ID_LEN, ".msg") != 0 ||
	    strspn(name, "0123456789abcdef") != ENG_SPOOL_ID_LEN)
		return false;
	memcpy(id_r, name, ENG_SPOOL_ID_LEN);
	id_r[ENG_SPOOL_ID_LEN] = '\0';
	return true;
}

static void print_env(const char *id, const eng_outbound_env *e)
{
	printf("%s  from <%s>  to ", id, e->sender);
	for (size_t i = 0; i < e->n_targets; i++)
		printf("%s<%s>", i > 0 ? "," : "", e->targets[i]);
	printf("  %llu bytes  for <%s>  orig-sender <%s>\n",
	       (unsigned long long)e->size, e->recipient, e->orig_sender);
}

/* Opens one entry and reads its envelope; prints why not. */
static int open_entry(struct queue_ctx *q, const char *id, eng_spool_reader **r_r,
		      eng_outbound_env *env)
{
	int err = eng_spool_reader_open(q->dir, id, q->sk, r_r);

	if (err == 0)
		err = eng_outbound_read_env(*r_r, env);
	if (err != 0) {
		cli_error("queue entry %s: %s", id, eng_strerror(err));
		eng_spool_reader_free(r_r);
	}
	return err;
}

static int queue_list(struct queue_ctx *q)
{
	DIR *d = opendir(q->dir);
	struct dirent *e;
	char id[ENG_SPOOL_ID_LEN + 1];
	size_t n = 0;
	int ret = CLI_EXIT_OK;

	if (d == NULL) {
		printf("0 queued\n");
		return CLI_EXIT_OK;
	}
	while ((e = readdir(d)) != NULL) {
		eng_spool_reader *r = NULL;
		eng_outbound_env env;

		if (!is_entry(e->d_name, id))
			continue;
		if (open_entry(q, id, &r, &env) != 0) {
			ret = CLI_EXIT_FAIL;
			continue;
		}
		print_env(id, &env);
		eng_outbound_env_clear(&env);
		eng_spool_reader_free(&r);
		n++;
	}
	closedir(d);
	printf("%zu queued\n", n);
	return ret;
}

static int queue_show(struct queue_ctx *q, const char *id)
{
	eng_spool_reader *r = NULL;
	eng_outbound_env env;
	char buf[16384];
	long n;

	if (strlen(id) != ENG_SPOOL_ID_LEN || strspn(id, "0123456789abcdef") != ENG_SPOOL_ID_LEN) {
		cli_error("queue show: ID is %d lower-case hex digits", ENG_SPOOL_ID_LEN);
		return CLI_EXIT_USAGE;
	}
	if (open_entry(q, id, &r, &env) != 0)
		return CLI_EXIT_FAIL;
	print_env(id, &env);
	printf("\n");
	while ((n = eng_spool_read(r, buf, sizeof(buf))) > 0)
		fwrite(buf, 1, (size_t)n, stdout);
	eng_outbound_env_clear(&env);
	eng_spool_reader_free(&r);
	if (n < 0) {
		cli_error("queue entry %s: %s", id, eng_strerror((int)n));
		return CLI_EXIT_FAIL;
	}
	return CLI_EXIT_OK;
}

int cli_cmd_queue(int argc, char **argv)
{
	struct queue_ctx q = { 0 };
	const char *config = NULL, *show_id = NULL;
	char *err = NULL, *key_path = NULL;
	int ret, rest = 2;

	if (argc < 2)
		return cli_usage("queue");
	if (strcmp(argv[1], "show") == 0 && argc >= 3) {
		show_id = argv[2];
		rest = 3;
	} else if (strcmp(argv[1], "list") != 0) {
		return cli_usage("queue");
	}
	if ((ret = cli_parse_options(argc - rest + 1, argv + rest - 1, &config, NULL)) != 0)
		return ret;
	if (sm_config_load(config, &q.cfg, &err) < 0) {
		cli_error("%s", err != NULL ? err : "cannot read the configuration");
		free(err);
		return CLI_EXIT_FAIL;
	}
	if (asprintf(&q.dir, "%s/outbound", q.cfg->data_dir) < 0 ||
	    asprintf(&key_path, "%s/secrets/outbound_key", q.cfg->data_dir) < 0)
		eng_oom(0);
	if (sm_secret_load(key_path, &q.sk, &err) != 0) {
		/* No key: sqlited has never queued anything. */
		free(err);
		err = NULL;
		ret = show_id != NULL ? CLI_EXIT_FAIL : CLI_EXIT_OK;
		if (show_id != NULL)
			cli_error("no outbound queue key (%s): nothing was ever queued", key_path);
		else
			printf("0 queued\n");
	} else {
		ret = show_id != NULL ? queue_show(&q, show_id) : queue_list(&q);
	}
	sm_secret_free(&q.sk);
	free(key_path);
	free(q.dir);
	sm_config_free(&q.cfg);
	return ret;
}
