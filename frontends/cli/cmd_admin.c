/*
 * The administration commands: `sealmail domain`, `alias`, `app-password`
 * and `status`. Each is a client of the running sqlited: it connects to
 * the unix socket of the configuration (sqlited_socket), authenticates
 * with the RPC shared secret (rpc_secret_file) as peer CLI_PEER_NAME, and
 * sends the opcodes of docs/rpc.md with the blocking client rpc_sync.h.
 *
 * Passwords. Passwords read from standard input and passwords received
 * from sqlited live in sodium_malloc'd memory only (read with read(2), not
 * stdio, whose buffers would keep a copy) and are wiped when done. A
 * password sqlited generates is printed once, alone on the last line of
 * standard output, with write(2), so that scripts can take it with
 * `tail -n 1`; it appears nowhere else.
 *
 * Errors are one sentence on standard error ("sealmail: ...") and exit
 * code CLI_EXIT_FAIL; bad arguments give the usage and CLI_EXIT_USAGE.
 */
#include <errno.h>
#include <getopt.h>
#include <inttypes.h>
#include <sodium.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "cli.h"
#include "cli_admin.h"
#include "eng_error.h"
#include "keys.h"
#include "rpc_codec.h"
#include "rpc_proto.h"
#include "rpc_sync.h"
#include "secrets.h"

/* The name sqlited knows the CLI by (its admin list names it). */
#define CLI_PEER_NAME "cli@sealmail"
/* Argon2id runs and login throttling can take a while. */
#define CLI_RPC_TIMEOUT_MS 60000

/* ---- options ---- */

enum {
	OPT_FORWARD = 1u << 0,
	OPT_NO_MAILBOX = 1u << 1,
	OPT_PASSWORD_STDIN = 1u << 2,
	OPT_QUOTA = 1u << 3,
	OPT_LABEL = 1u << 4,
};

#define MAX_FORWARDS 100

struct opts {
	const char *config;
	const char *forwards[MAX_FORWARDS];
	size_t n_forwards;
	bool no_mailbox;
	bool password_stdin;
	bool has_quota;
	uint64_t quota;
	const char *label;
	/* Positional arguments after the sub-command's own name(s). */
	char **args;
	int n_args;
};

/*
 * Parses "--config FILE" and the options in allowed; positional arguments
 * go to o->args. Returns 0 or CLI_EXIT_USAGE (after the usage).
 */
static int parse_opts(int argc, char **argv, const char *usage_name,
		      unsigned allowed, struct opts *o)
{
	static const struct option longopts[] = {
		{ "config", required_argument, NULL, 'c' },
		{ "forward", required_argument, NULL, 'f' },
		{ "no-mailbox", no_argument, NULL, 'n' },
		{ "password-stdin", no_argument, NULL, 'p' },
		{ "quota", required_argument, NULL, 'q' },
		{ "label", required_argument, NULL, 'l' },
		{ "help", no_argument, NULL, 'h' },
		{ NULL, 0, NULL, 0 },
	};
	int c;

	memset(o, 0, sizeof(*o));
	optind = 1;
	opterr = 1;
	while ((c = getopt_long(argc, argv, "c:h", longopts, NULL)) != -1) {
		unsigned need = 0;

		switch (c) {
		case 'c':
			o->config = optarg;
			continue;
		case 'f':
			need = OPT_FORWARD;
			break;
		case 'n':
			need = OPT_NO_MAILBOX;
			break;
		case 'p':
			need = OPT_PASSWORD_STDIN;
			break;
		case 'q':
			need = OPT_QUOTA;
			break;
		case 'l':
			need = OPT_LABEL;
			break;
		default:
			return cli_usage(usage_name);
		}
		if ((allowed & need) == 0) {
			cli_error("%s does not take %s", usage_name,
				  argv[optind - 1]);
			return cli_usage(usage_name);
		}
		switch (c) {
		case 'f':
			if (o->n_forwards == MAX_FORWARDS) {
				cli_error("at most %d --forward targets", MAX_FORWARDS);
				return CLI_EXIT_USAGE;
			}
			o->forwards[o->n_forwards++] = optarg;
			break;
		case 'n':
			o->no_mailbox = true;
			break;
		case 'p':
			o->password_stdin = true;
			break;
		case 'q': {
			char *end;

			errno = 0;
			o->quota = strtoull(optarg, &end, 10);
			if (errno != 0 || end == optarg || *end != '\0' ||
			    optarg[0] == '-') {
				cli_error("--quota needs a number of bytes, not \"%s\"",
					  optarg);
				return CLI_EXIT_USAGE;
			}
			o->has_quota = true;
			break;
		}
		case 'l':
			o->label = optarg;
			break;
		}
	}
	if (o->config == NULL || *o->config == '\0') {
		cli_error("%s needs --config FILE", usage_name);
		return cli_usage(usage_name);
	}
	o->args = argv + optind;
	o->n_args = argc - optind;
	return 0;
}

/* ---- the connection ---- */

struct adm {
	sm_config *cfg;
	const char *config_path;
	rpc_sync *c;
};

static void adm_close(struct adm *a)
{
	rpc_sync_free(&a->c);
	sm_config_free(&a->cfg);
}

/*
 * sqlited_host is set: TCP to it on sqlited_port, with TLS unless it is
 * loopback and sqlited_tls is auto; the server certificate must chain to
 * sqlited_ca and name sqlited_host. 0 or -1 (printed).
 */
static int adm_connect_tcp(struct adm *a, const char *config_path)
{
	rpc_tls_config tls = {
		.ca_file = a->cfg->sqlited_ca,
		.always = a->cfg->sqlited_tls_always,
	};
	const char *host = a->cfg->sqlited_host;
	uint8_t *secret = NULL;
	char *msg = NULL;
	int err;

	if (a->cfg->sqlited_port == 0) {
		cli_error("%s: sqlited_host is set but sqlited_port is 0", config_path);
		goto fail;
	}
	if (sm_secret_load(a->cfg->rpc_secret_file, &secret, &msg) != 0) {
		cli_error("%s", msg != NULL ? msg : "cannot read the RPC secret");
		free(msg);
		goto fail;
	}
	err = rpc_sync_connect_tls(host, a->cfg->sqlited_port, &tls, secret,
				   CLI_PEER_NAME, CLI_RPC_TIMEOUT_MS, &a->c);
	sm_secret_free(&secret);
	if (err == RPC_ENOTAUTH) {
		cli_error("sqlited at %s port %u refused the RPC secret in %s, or "
			  "its TLS certificate does not verify against %s",
			  host, (unsigned)a->cfg->sqlited_port,
			  a->cfg->rpc_secret_file, a->cfg->sqlited_ca);
		goto fail;
	}
	if (err != 0) {
		cli_error("cannot reach sqlited at %s port %u: %s", host,
			  (unsigned)a->cfg->sqlited_port, rpc_strerror(err));
		goto fail;
	}
	return 0;
fail:
	adm_close(a);
	return -1;
}

/* Loads the configuration and the secret and connects. 0 or -1 (printed). */
static int adm_connect(struct adm *a, const char *config_path)
{
	uint8_t *secret = NULL;
	char *msg = NULL;
	struct stat st;
	int err;

	memset(a, 0, sizeof(*a));
	a->config_path = config_path;
	if (sm_config_load(config_path, &a->cfg, &msg) != 0) {
		cli_error("%s", msg != NULL ? msg : "cannot read the configuration");
		free(msg);
		return -1;
	}
	if (a->cfg->sqlited_host != NULL)
		return adm_connect_tcp(a, config_path);
	if (a->cfg->sqlited_socket == NULL) {
		cli_error("%s: sqlited_socket is empty; the admin commands talk "
			  "to sqlited over that unix socket (or sqlited_host), so "
			  "set it", config_path);
		goto fail;
	}
	if (stat(a->cfg->sqlited_socket, &st) != 0) {
		cli_error("sqlited is not running (no socket at %s): start it "
			  "with `sealmail up --config %s`",
			  a->cfg->sqlited_socket, config_path);
		goto fail;
	}
	if (sm_secret_load(a->cfg->rpc_secret_file, &secret, &msg) != 0) {
		cli_error("%s", msg != NULL ? msg : "cannot read the RPC secret");
		free(msg);
		goto fail;
	}
	err = rpc_sync_connect_unix(a->cfg->sqlited_socket, secret,
				    CLI_PEER_NAME, CLI_RPC_TIMEOUT_MS, &a->c);
	sm_secret_free(&secret);
	if (err == RPC_ENOTAUTH) {
		cli_error("sqlited at %s refused the RPC secret in %s (is it "
			  "another installation's?)", a->cfg->sqlited_socket,
			  a->cfg->rpc_secret_file);
		goto fail;
	}
	if (err != 0) {
		cli_error("sqlited is not running (cannot connect to %s: %s): "
			  "start it with `sealmail up --config %s`",
			  a->cfg->sqlited_socket, rpc_strerror(err), config_path);
		goto fail;
	}
	return 0;
fail:
	adm_close(a);
	return -1;
}

/* Errors every command answers alike; NULL for the others. */
static const char *common_error(int err)
{
	switch (err) {
	case ENG_EPERM:
		return "sqlited does not allow this client (peer \""
			CLI_PEER_NAME "\") to administer it";
	case RPC_ETIMEOUT:
		return "sqlited did not answer in time";
	case RPC_EUNAVAILABLE:
		return "sqlited cannot serve now (shutting down or overloaded); "
			"try again";
	case RPC_EOPCODE:
		return "this sqlited does not know that request (an older "
			"version?)";
	default:
		return NULL;
	}
}

static int report(int err, const char *what)
{
	const char *common = common_error(err);

	if (what != NULL)
		cli_error("%s", what);
	else if (common != NULL)
		cli_error("%s", common);
	else
		cli_error("sqlited answered: %s", rpc_strerror(err));
	return CLI_EXIT_FAIL;
}

/* ---- secrets on stdin and stdout ---- */

/*
 * Reads one line of standard input into secret memory, without its line
 * end. 0, 1 at end of input with nothing read, -1 on error (printed).
 */
static int read_secret_line(const char *what, uint8_t **pw_r, size_t *len_r)
{
	uint8_t *pw = eng_secret_new(ENG_PASSWORD_MAX + 1);
	size_t len = 0;
	bool any = false;

	*pw_r = NULL;
	*len_r = 0;
	for (;;) {
		char ch;
		ssize_t n = read(STDIN_FILENO, &ch, 1);

		if (n < 0 && errno == EINTR)
			continue;
		if (n < 0) {
			cli_error("cannot read the %s from standard input: %s",
				  what, strerror(errno));
			eng_secret_free(&pw);
			return -1;
		}
		if (n == 0 || ch == '\n')
			break;
		any = true;
		if (len == ENG_PASSWORD_MAX) {
			cli_error("the %s is longer than %d bytes", what,
				  ENG_PASSWORD_MAX);
			sodium_memzero(&ch, 1);
			eng_secret_free(&pw);
			return -1;
		}
		pw[len++] = (uint8_t)ch;
		sodium_memzero(&ch, 1);
	}
	if (len > 0 && pw[len - 1] == '\r')
		pw[--len] = 0;
	if (!any) {
		eng_secret_free(&pw);
		return 1;
	}
	*pw_r = pw;
	*len_r = len;
	return 0;
}

/* Prints a secret alone on a line (the last one the command prints). */
static void print_secret_line(const uint8_t *p, size_t len)
{
	fflush(stdout);
	while (len > 0) {
		ssize_t n = write(STDOUT_FILENO, p, len);

		if (n < 0 && errno == EINTR)
			continue;
		if (n <= 0)
			return;
		p += n;
		len -= (size_t)n;
	}
	(void)!write(STDOUT_FILENO, "\n", 1);
}

/* The request and response buffers may hold passwords: wipe them. */
static void buf_wipe_free(eng_buf *b)
{
	if (b->data != NULL)
		sodium_memzero(b->data, b->cap);
	eng_buf_free(b);
}

static void resp_wipe_clear(rpc_sync_resp *r)
{
	buf_wipe_free(&r->payload);
	rpc_sync_resp_clear(r);
}

/* ---- domain ---- */

static int cmd_domain_add_remove(struct adm *a, bool add, const char *name)
{
	eng_buf req = ENG_BUF_INIT;
	rpc_sync_resp resp = RPC_SYNC_RESP_INIT;
	char msg[512];
	int err;

	rpc_put_str(&req, RPC_T_DOMAIN, name);
	err = rpc_sync_call(a->c, add ? RPC_OP_DOMAIN_ADD : RPC_OP_DOMAIN_REMOVE,
			    req.data, req.len, &resp);
	eng_buf_free(&req);
	rpc_sync_resp_clear(&resp);
	if (err == 0) {
		printf("domain %s %s\n", name, add ? "added" : "removed");
		return CLI_EXIT_OK;
	}
	msg[0] = '\0';
	if (err == ENG_EEXIST && add)
		snprintf(msg, sizeof(msg), "domain %s is already served", name);
	else if (err == ENG_EINVAL)
		snprintf(msg, sizeof(msg), "\"%s\" is not a valid domain name "
			 "(ASCII letters, digits, '-' and '.'; use the "
			 "xn-- form for international names)", name);
	else if (err == ENG_ENOTFOUND && !add)
		snprintf(msg, sizeof(msg), "domain %s is not served here", name);
	else if (err == ENG_EPERM && !add)
		snprintf(msg, sizeof(msg), "domain %s still has aliases: remove "
			 "them first (`sealmail alias list %s --config %s`)",
			 name, name, a->config_path);
	return report(err, msg[0] != '\0' ? msg : NULL);
}

static int cmd_domain_list(struct adm *a)
{
	rpc_sync_resp resp = RPC_SYNC_RESP_INIT;
	const rpc_field *f;
	rpc_iter it;
	int err;

	err = rpc_sync_call(a->c, RPC_OP_DOMAIN_LIST, NULL, 0, &resp);
	if (err != 0) {
		rpc_sync_resp_clear(&resp);
		return report(err, NULL);
	}
	rpc_iter_init(&it, &resp.view);
	while ((f = rpc_iter_next(&it, RPC_T_DOMAIN)) != NULL)
		printf("%.*s\n", (int)f->u, (const char *)f->data);
	rpc_sync_resp_clear(&resp);
	return CLI_EXIT_OK;
}

int cli_cmd_domain(int argc, char **argv)
{
	struct opts o;
	struct adm a;
	int ret;

	if (argc < 2)
		return cli_usage("domain");
	if ((ret = parse_opts(argc - 1, argv + 1, "domain", 0, &o)) != 0)
		return ret;
	if (strcmp(argv[1], "list") == 0) {
		if (o.n_args != 0)
			return cli_usage("domain");
	} else if (strcmp(argv[1], "add") == 0 ||
		   strcmp(argv[1], "remove") == 0) {
		if (o.n_args != 1)
			return cli_usage("domain");
	} else {
		cli_error("unknown domain command \"%s\"", argv[1]);
		return cli_usage("domain");
	}
	if (adm_connect(&a, o.config) != 0)
		return CLI_EXIT_FAIL;
	if (strcmp(argv[1], "list") == 0)
		ret = cmd_domain_list(&a);
	else
		ret = cmd_domain_add_remove(&a, strcmp(argv[1], "add") == 0,
					    o.args[0]);
	adm_close(&a);
	return ret;
}

/* ---- alias ---- */

static const char *kind_name(uint64_t kind)
{
	switch (kind) {
	case RPC_DIR_MAILBOX:
		return "mailbox";
	case RPC_DIR_FORWARD:
		return "forward";
	case RPC_DIR_BOTH:
		return "mailbox+forward";
	default:
		return "?";
	}
}

static const char *domain_of(const char *address)
{
	const char *at = strrchr(address, '@');

	return at != NULL ? at + 1 : address;
}

static int cmd_alias_add(struct adm *a, const struct opts *o,
			 const char *address)
{
	eng_buf req = ENG_BUF_INIT;
	rpc_sync_resp resp = RPC_SYNC_RESP_INIT;
	uint8_t *pw = NULL;
	size_t pw_len = 0;
	const uint8_t *gen;
	size_t gen_len;
	unsigned kind = (o->no_mailbox ? 0 : RPC_DIR_MAILBOX) |
		(o->n_forwards > 0 ? RPC_DIR_FORWARD : 0);
	char msg[768];
	int err;

	if (kind == 0) {
		cli_error("--no-mailbox needs at least one --forward TARGET");
		return CLI_EXIT_USAGE;
	}
	if (o->password_stdin && o->no_mailbox) {
		cli_error("--password-stdin sets a mailbox password: it does "
			  "not go with --no-mailbox");
		return CLI_EXIT_USAGE;
	}
	if (o->password_stdin) {
		err = read_secret_line("password", &pw, &pw_len);
		if (err == 1) {
			cli_error("--password-stdin: no password on standard input");
			return CLI_EXIT_FAIL;
		}
		if (err != 0)
			return CLI_EXIT_FAIL;
	}
	rpc_put_str(&req, RPC_T_ALIAS, address);
	for (size_t i = 0; i < o->n_forwards; i++)
		rpc_put_str(&req, RPC_T_FORWARD, o->forwards[i]);
	rpc_put_u64(&req, RPC_T_KIND, kind);
	if (o->has_quota)
		rpc_put_u64(&req, RPC_T_QUOTA_LIMIT, o->quota);
	if (pw != NULL)
		rpc_put_bytes(&req, RPC_T_PASSWORD, pw, pw_len);
	eng_secret_free(&pw);
	err = rpc_sync_call(a->c, RPC_OP_ALIAS_ADD, req.data, req.len, &resp);
	buf_wipe_free(&req);
	if (err != 0) {
		resp_wipe_clear(&resp);
		msg[0] = '\0';
		if (err == ENG_ENOTFOUND)
			snprintf(msg, sizeof(msg), "domain %s is not served here: "
				 "add it first with `sealmail domain add %s "
				 "--config %s`", domain_of(address),
				 domain_of(address), a->config_path);
		else if (err == ENG_EEXIST)
			snprintf(msg, sizeof(msg), "alias %s already exists",
				 address);
		else if (err == ENG_EINVAL)
			snprintf(msg, sizeof(msg), "invalid alias: check the "
				 "address \"%s\" and the forward targets (a "
				 "target may not be the alias itself); a "
				 "password needs at least 8 characters",
				 address);
		else if (err == ENG_ELIMIT)
			snprintf(msg, sizeof(msg), "too many forward targets");
		return report(err, msg[0] != '\0' ? msg : NULL);
	}
	printf("alias %s added (%s)\n", address, kind_name(kind));
	if (rpc_get_bytes(&resp.view, RPC_T_PASSWORD, &gen, &gen_len) == 0) {
		printf("its password follows on the last line; it is shown "
		       "only this once and cannot be recovered: store it now\n");
		print_secret_line(gen, gen_len);
	}
	resp_wipe_clear(&resp);
	return CLI_EXIT_OK;
}

static int cmd_alias_list(struct adm *a, const char *domain)
{
	eng_buf req = ENG_BUF_INIT;
	rpc_sync_resp resp = RPC_SYNC_RESP_INIT;
	const rpc_field *f;
	rpc_iter it;
	char msg[512];
	int err;

	if (domain != NULL)
		rpc_put_str(&req, RPC_T_DOMAIN, domain);
	err = rpc_sync_call(a->c, RPC_OP_ALIAS_LIST, req.data, req.len, &resp);
	eng_buf_free(&req);
	if (err != 0) {
		rpc_sync_resp_clear(&resp);
		msg[0] = '\0';
		if (err == ENG_ENOTFOUND || err == ENG_EINVAL)
			snprintf(msg, sizeof(msg), "domain %s is not served here",
				 domain != NULL ? domain : "?");
		return report(err, msg[0] != '\0' ? msg : NULL);
	}
	rpc_iter_init(&it, &resp.view);
	while ((f = rpc_iter_next(&it, RPC_T_ALIAS_INFO)) != NULL) {
		rpc_view g = rpc_field_group(f);
		const rpc_field *t;
		rpc_iter fi;
		char *addr = NULL;
		uint64_t kind = 0, quota = 0;
		bool first = true;

		if (rpc_get_str(&g, RPC_T_ALIAS, &addr) != 0)
			continue;
		(void)rpc_get_u64(&g, RPC_T_KIND, &kind);
		(void)rpc_get_u64(&g, RPC_T_QUOTA_LIMIT, &quota);
		printf("%s\t%s\t", addr, kind_name(kind));
		rpc_iter_init(&fi, &g);
		while ((t = rpc_iter_next(&fi, RPC_T_FORWARD)) != NULL) {
			printf("%s%.*s", first ? "-> " : ",", (int)t->u,
			       (const char *)t->data);
			first = false;
		}
		if (first)
			printf("-");
		if (quota > 0)
			printf("\tquota %" PRIu64 "\n", quota);
		else
			printf("\tno quota\n");
		free(addr);
	}
	rpc_sync_resp_clear(&resp);
	return CLI_EXIT_OK;
}

static int cmd_alias_remove(struct adm *a, const char *address)
{
	eng_buf req = ENG_BUF_INIT;
	rpc_sync_resp resp = RPC_SYNC_RESP_INIT;
	char msg[512];
	int err;

	rpc_put_str(&req, RPC_T_ALIAS, address);
	err = rpc_sync_call(a->c, RPC_OP_ALIAS_REMOVE, req.data, req.len, &resp);
	eng_buf_free(&req);
	rpc_sync_resp_clear(&resp);
	if (err == 0) {
		printf("alias %s removed with all its mail\n", address);
		return CLI_EXIT_OK;
	}
	msg[0] = '\0';
	if (err == ENG_ENOTFOUND || err == ENG_EINVAL)
		snprintf(msg, sizeof(msg), "there is no alias %s", address);
	else if (err == ENG_EIO)
		snprintf(msg, sizeof(msg), "alias %s was removed, but some of "
			 "its files could not be deleted (sqlited's log names "
			 "them); without the alias's key they cannot be read",
			 address);
	return report(err, msg[0] != '\0' ? msg : NULL);
}

static int cmd_alias_passwd(struct adm *a, const char *address)
{
	eng_buf req = ENG_BUF_INIT;
	rpc_sync_resp resp = RPC_SYNC_RESP_INIT;
	uint8_t *cur = NULL, *new_pw = NULL;
	size_t cur_len, new_len = 0;
	const uint8_t *gen;
	size_t gen_len;
	int err;

	err = read_secret_line("current password", &cur, &cur_len);
	if (err == 1)
		cli_error("alias passwd reads the current password from "
			  "standard input (and the new one from the next line)");
	if (err != 0)
		return CLI_EXIT_FAIL;
	/* A missing second line: sqlited generates the new password. */
	if ((err = read_secret_line("new password", &new_pw, &new_len)) < 0) {
		eng_secret_free(&cur);
		return CLI_EXIT_FAIL;
	}
	rpc_put_str(&req, RPC_T_ALIAS, address);
	rpc_put_bytes(&req, RPC_T_PASSWORD, cur, cur_len);
	if (new_pw != NULL)
		rpc_put_bytes(&req, RPC_T_NEW_PASSWORD, new_pw, new_len);
	eng_secret_free(&cur);
	eng_secret_free(&new_pw);
	err = rpc_sync_call(a->c, RPC_OP_ALIAS_PASSWD, req.data, req.len, &resp);
	buf_wipe_free(&req);
	if (err != 0) {
		resp_wipe_clear(&resp);
		if (err == ENG_EAUTH)
			return report(err, "the current password is wrong (or "
				      "there is no such mailbox alias)");
		if (err == ENG_EINVAL)
			return report(err, "the new password needs at least 8 "
				      "characters");
		return report(err, NULL);
	}
	printf("password of %s changed\n", address);
	if (rpc_get_bytes(&resp.view, RPC_T_PASSWORD, &gen, &gen_len) == 0) {
		printf("the new password follows on the last line; it is shown "
		       "only this once: store it now\n");
		print_secret_line(gen, gen_len);
	}
	resp_wipe_clear(&resp);
	return CLI_EXIT_OK;
}

int cli_cmd_alias(int argc, char **argv)
{
	struct opts o;
	struct adm a;
	unsigned allowed = 0;
	int ret, min_args = 1, max_args = 1;

	if (argc < 2)
		return cli_usage("alias");
	if (strcmp(argv[1], "add") == 0) {
		allowed = OPT_FORWARD | OPT_NO_MAILBOX | OPT_PASSWORD_STDIN |
			OPT_QUOTA;
	} else if (strcmp(argv[1], "list") == 0) {
		min_args = 0;
	} else if (strcmp(argv[1], "remove") != 0 &&
		   strcmp(argv[1], "passwd") != 0) {
		cli_error("unknown alias command \"%s\"", argv[1]);
		return cli_usage("alias");
	}
	if ((ret = parse_opts(argc - 1, argv + 1, "alias", allowed, &o)) != 0)
		return ret;
	if (o.n_args < min_args || o.n_args > max_args)
		return cli_usage("alias");
	if (adm_connect(&a, o.config) != 0)
		return CLI_EXIT_FAIL;
	if (strcmp(argv[1], "add") == 0)
		ret = cmd_alias_add(&a, &o, o.args[0]);
	else if (strcmp(argv[1], "list") == 0)
		ret = cmd_alias_list(&a, o.n_args > 0 ? o.args[0] : NULL);
	else if (strcmp(argv[1], "remove") == 0)
		ret = cmd_alias_remove(&a, o.args[0]);
	else
		ret = cmd_alias_passwd(&a, o.args[0]);
	adm_close(&a);
	return ret;
}

/* ---- app-password ---- */

/*
 * APP_PASSWORD_ADD and _REVOKE act on a session (docs/rpc.md): the CLI
 * unlocks the alias with the password on standard input, sends the
 * request, and locks again.
 */
static int session_open(struct adm *a, const char *address, uint8_t **sess_r,
			size_t *sess_len_r)
{
	eng_buf req = ENG_BUF_INIT;
	rpc_sync_resp resp = RPC_SYNC_RESP_INIT;
	uint8_t *pw = NULL;
	size_t pw_len;
	const uint8_t *s;
	size_t s_len;
	int err;

	*sess_r = NULL;
	err = read_secret_line("password", &pw, &pw_len);
	if (err == 1)
		cli_error("give the alias's current password (or an app "
			  "password) on standard input");
	if (err != 0)
		return -1;
	rpc_put_str(&req, RPC_T_ALIAS, address);
	rpc_put_bytes(&req, RPC_T_PASSWORD, pw, pw_len);
	eng_secret_free(&pw);
	err = rpc_sync_call(a->c, RPC_OP_UNLOCK, req.data, req.len, &resp);
	buf_wipe_free(&req);
	if (err == 0 && rpc_get_bytes(&resp.view, RPC_T_SESSION, &s,
				      &s_len) != 0)
		err = ENG_EIO;
	if (err != 0) {
		resp_wipe_clear(&resp);
		if (err == ENG_EAUTH)
			report(err, "the password is wrong (or there is no such "
			       "mailbox alias)");
		else
			report(err, NULL);
		return -1;
	}
	/* The handle is a bearer credential: secret memory too. */
	*sess_r = eng_secret_new(s_len);
	memcpy(*sess_r, s, s_len);
	*sess_len_r = s_len;
	resp_wipe_clear(&resp);
	return 0;
}

static void session_close(struct adm *a, uint8_t **sess, size_t sess_len)
{
	eng_buf req = ENG_BUF_INIT;
	rpc_sync_resp resp = RPC_SYNC_RESP_INIT;

	if (*sess == NULL)
		return;
	rpc_put_bytes(&req, RPC_T_SESSION, *sess, sess_len);
	(void)rpc_sync_call(a->c, RPC_OP_LOCK, req.data, req.len, &resp);
	buf_wipe_free(&req);
	rpc_sync_resp_clear(&resp);
	eng_secret_free(sess);
}

static int cmd_app_add(struct adm *a, const char *address, const char *label)
{
	eng_buf req = ENG_BUF_INIT;
	rpc_sync_resp resp = RPC_SYNC_RESP_INIT;
	uint8_t *sess;
	size_t sess_len;
	const uint8_t *pw;
	size_t pw_len;
	uint64_t slot = 0;
	char deflabel[32];
	int err;

	if (label == NULL) {
		time_t now = time(NULL);
		struct tm tm;

		strftime(deflabel, sizeof(deflabel), "cli %Y-%m-%d %H:%M",
			 gmtime_r(&now, &tm));
		label = deflabel;
	}
	if (session_open(a, address, &sess, &sess_len) != 0)
		return CLI_EXIT_FAIL;
	rpc_put_bytes(&req, RPC_T_SESSION, sess, sess_len);
	rpc_put_str(&req, RPC_T_LABEL, label);
	err = rpc_sync_call(a->c, RPC_OP_APP_PASSWORD_ADD, req.data, req.len,
			    &resp);
	buf_wipe_free(&req);
	session_close(a, &sess, sess_len);
	if (err == 0 && rpc_get_bytes(&resp.view, RPC_T_PASSWORD, &pw,
				      &pw_len) != 0)
		err = ENG_EIO;
	if (err != 0) {
		resp_wipe_clear(&resp);
		if (err == ENG_EINVAL)
			return report(err, "the label must be 1 to 64 printable "
				      "ASCII characters");
		if (err == ENG_ELIMIT)
			return report(err, "this alias has the most key slots "
				      "allowed (64): revoke an app password first");
		return report(err, NULL);
	}
	(void)rpc_get_u64(&resp.view, RPC_T_SLOT, &slot);
	printf("app password \"%s\" added to %s as slot %" PRIu64
	       " (revoke it with `sealmail app-password revoke %s %" PRIu64
	       " --config %s`)\n", label, address, slot, address, slot,
	       a->config_path);
	printf("the app password follows on the last line; it is shown only "
	       "this once\n");
	print_secret_line(pw, pw_len);
	resp_wipe_clear(&resp);
	return CLI_EXIT_OK;
}

static int cmd_app_revoke(struct adm *a, const char *address,
			  const char *slot_text)
{
	eng_buf req = ENG_BUF_INIT;
	rpc_sync_resp resp = RPC_SYNC_RESP_INIT;
	uint8_t *sess;
	size_t sess_len;
	unsigned long slot;
	char *end;
	char msg[256];
	int err;

	errno = 0;
	slot = strtoul(slot_text, &end, 10);
	if (errno != 0 || end == slot_text || *end != '\0' || slot == 0 ||
	    slot > UINT32_MAX || slot_text[0] == '-') {
		cli_error("SLOT must be a slot number, not \"%s\"", slot_text);
		return CLI_EXIT_USAGE;
	}
	if (session_open(a, address, &sess, &sess_len) != 0)
		return CLI_EXIT_FAIL;
	rpc_put_bytes(&req, RPC_T_SESSION, sess, sess_len);
	rpc_put_u64(&req, RPC_T_SLOT, slot);
	err = rpc_sync_call(a->c, RPC_OP_APP_PASSWORD_REVOKE, req.data, req.len,
			    &resp);
	buf_wipe_free(&req);
	rpc_sync_resp_clear(&resp);
	session_close(a, &sess, sess_len);
	if (err == 0) {
		printf("slot %lu of %s revoked\n", slot, address);
		return CLI_EXIT_OK;
	}
	msg[0] = '\0';
	if (err == ENG_ENOTFOUND)
		snprintf(msg, sizeof(msg), "%s has no key slot %lu", address,
			 slot);
	else if (err == ENG_EPERM)
		snprintf(msg, sizeof(msg), "slot %lu cannot be revoked: slot 1 "
			 "is the main password (change it with `sealmail alias "
			 "passwd`), and the last slot must stay", slot);
	return report(err, msg[0] != '\0' ? msg : NULL);
}

int cli_cmd_app_password(int argc, char **argv)
{
	struct opts o;
	struct adm a;
	bool add;
	int ret;

	if (argc < 2)
		return cli_usage("app-password");
	if (strcmp(argv[1], "add") == 0) {
		add = true;
	} else if (strcmp(argv[1], "revoke") == 0) {
		add = false;
	} else {
		cli_error("unknown app-password command \"%s\"", argv[1]);
		return cli_usage("app-password");
	}
	if ((ret = parse_opts(argc - 1, argv + 1, "app-password",
			      add ? OPT_LABEL : 0, &o)) != 0)
		return ret;
	if (o.n_args != (add ? 1 : 2))
		return cli_usage("app-password");
	if (adm_connect(&a, o.config) != 0)
		return CLI_EXIT_FAIL;
	if (add)
		ret = cmd_app_add(&a, o.args[0], o.label);
	else
		ret = cmd_app_revoke(&a, o.args[0], o.args[1]);
	adm_close(&a);
	return ret;
}

/* ---- status ---- */

static int print_stats(struct adm *a, uint16_t opcode, const char *title)
{
	rpc_sync_resp resp = RPC_SYNC_RESP_INIT;
	const rpc_field *f;
	rpc_iter it;
	int err;

	err = rpc_sync_call(a->c, opcode, NULL, 0, &resp);
	if (err != 0) {
		rpc_sync_resp_clear(&resp);
		return err;
	}
	printf("%s:\n", title);
	rpc_iter_init(&it, &resp.view);
	while ((f = rpc_iter_next(&it, RPC_T_STAT)) != NULL) {
		rpc_view g = rpc_field_group(f);
		const uint8_t *name;
		size_t name_len;
		uint64_t value = 0;

		if (rpc_get_bytes(&g, RPC_T_NAME, &name, &name_len) != 0)
			continue;
		(void)rpc_get_u64(&g, RPC_T_VALUE, &value);
		printf("  %-24.*s %" PRIu64 "\n", (int)name_len,
		       (const char *)name, value);
	}
	rpc_sync_resp_clear(&resp);
	return 0;
}

int cli_cmd_status(int argc, char **argv)
{
	struct opts o;
	struct adm a;
	int ret, err;

	if ((ret = parse_opts(argc, argv, "status", 0, &o)) != 0)
		return ret;
	if (o.n_args != 0)
		return cli_usage("status");
	if (adm_connect(&a, o.config) != 0)
		return CLI_EXIT_FAIL;
	if (a.cfg->sqlited_host != NULL)
		printf("sqlited at %s port %u%s: running\n", a.cfg->sqlited_host,
		       (unsigned)a.cfg->sqlited_port,
		       rpc_sync_tls(a.c) ? " (TLS)" : "");
	else
		printf("sqlited at %s: running\n", a.cfg->sqlited_socket);
	err = print_stats(&a, RPC_OP_SERVER_STATUS, "server");
	if (err == 0)
		err = print_stats(&a, RPC_OP_STATS, "connection");
	adm_close(&a);
	return err == 0 ? CLI_EXIT_OK : report(err, NULL);
}
