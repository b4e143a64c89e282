/* Unit tests for the configuration parser (frontends/common/config.c). */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "config.h"
#include "eng_error.h"
#include "testutil.h"

static sm_config *parse_ok(const char *text)
{
	sm_config *cfg = NULL;
	char *err = NULL;
	int ret = sm_config_parse(text, strlen(text), "/etc/sealmail/test.conf", &cfg, &err);

	if (ret != 0)
		print_error("unexpected error: %s\n", err != NULL ? err : "(none)");
	assert_int_equal(ret, 0);
	assert_null(err);
	assert_non_null(cfg);
	return cfg;
}

/* Parses text that must fail; returns the message (caller frees). */
static char *parse_err(const char *text, size_t len, int want)
{
	sm_config *cfg = (sm_config *)(uintptr_t)1;
	char *err = NULL;
	int ret = sm_config_parse(text, len, "t.conf", &cfg, &err);

	assert_int_equal(ret, want);
	assert_null(cfg);
	assert_non_null(err);
	return err;
}

static void assert_err_has(const char *text, const char *line_prefix, const char *fragment)
{
	char *err = parse_err(text, strlen(text), ENG_EMALFORMED);

	if (strncmp(err, line_prefix, strlen(line_prefix)) != 0 || strstr(err, fragment) == NULL)
		fail_msg("message \"%s\" lacks \"%s\" or \"%s\"", err, line_prefix, fragment);
	free(err);
}

static void test_defaults(void **state)
{
	sm_config *cfg = parse_ok("");

	(void)state;
	assert_string_equal(cfg->data_dir, "/etc/sealmail");
	assert_string_equal(cfg->listen_address, "127.0.0.1");
	assert_string_equal(cfg->hostname, "localhost");
	assert_int_equal(cfg->imaps_port, 0);
	assert_int_equal(cfg->web_port, 0);
	assert_true(sm_config_redis_embedded(cfg));
	assert_string_equal(cfg->tls_cert, "/etc/sealmail/tls/cert.pem");
	assert_string_equal(cfg->rpc_secret_file, "/etc/sealmail/secrets/rpc_secret");
	assert_string_equal(cfg->sqlited_socket, "/etc/sealmail/sqlited.sock");
	assert_int_equal(cfg->argon2_opslimit, SM_CONFIG_DEFAULT_ARGON2_OPSLIMIT);
	assert_int_equal(cfg->argon2_memlimit_mib, SM_CONFIG_DEFAULT_ARGON2_MEMLIMIT_MIB);
	assert_int_equal(cfg->db_idle_seconds, SM_CONFIG_DEFAULT_DB_IDLE_SECONDS);
	assert_int_equal(cfg->max_message_bytes, SM_CONFIG_DEFAULT_MAX_MESSAGE_BYTES);
	assert_string_equal(cfg->source, "/etc/sealmail/test.conf");
	sm_config_free(&cfg);
	assert_null(cfg);
	sm_config_free(&cfg);   /* NULL is accepted */
	sm_config_free(NULL);
}

static void test_values_and_paths(void **state)
{
	sm_config *cfg = parse_ok(
		"# comment\n"
		"   \n"
		"\tdata_dir =  /srv/mail/  \r\n"
		"imaps_port=993\n"
		"  imap_port   =   2993\t\n"
		"tls_cert = certs/a.pem\n"
		"tls_key = /abs/key.pem\n"
		"sqlited_socket =\n"
		"listen_address = ::1\n"
		"hostname = mail.example.org\n"
		"db_idle_seconds = 0\n"
		"redis_url = redis://:pw@10.0.0.2:6379/1\n"
		"max_message_bytes = 1024");

	(void)state;
	assert_string_equal(cfg->data_dir, "/srv/mail");
	assert_int_equal(cfg->imaps_port, 993);
	assert_int_equal(cfg->imap_port, 2993);
	assert_int_equal(sm_config_port(cfg, "imap_port"), 2993);
	assert_int_equal(sm_config_port(cfg, "pop3_port"), 0);
	assert_int_equal(sm_config_port(cfg, "hostname"), -1);
	assert_int_equal(sm_config_port(cfg, "nonsense"), -1);
	assert_string_equal(cfg->tls_cert, "/srv/mail/certs/a.pem");
	assert_string_equal(cfg->tls_key, "/abs/key.pem");
	assert_null(cfg->sqlited_socket);
	assert_string_equal(cfg->listen_address, "::1");
	assert_string_equal(cfg->hostname, "mail.example.org");
	/* an explicit 0 is kept, not replaced by the default */
	assert_int_equal(cfg->db_idle_seconds, 0);
	assert_int_equal(cfg->max_message_bytes, 1024);
	assert_false(sm_config_redis_embedded(cfg));
	char *pub = sm_config_redis_url_public(cfg);
	assert_string_equal(pub, "redis://10.0.0.2:6379/1");
	assert_null(strstr(pub, "pw"));
	free(pub);
	sm_config_free(&cfg);
}

static void test_relative_data_dir(void **state)
{
	sm_config *cfg = NULL;
	char *err = NULL;
	const char *text = "data_dir = data\nbackup_key_file = k\n";

	(void)state;
	assert_int_equal(sm_config_parse(text, strlen(text), "conf/s.conf", &cfg, &err), 0);
	assert_string_equal(cfg->data_dir, "conf/data");
	assert_string_equal(cfg->backup_key_file, "conf/data/k");
	sm_config_free(&cfg);
	assert_int_equal(sm_config_parse(text, strlen(text), "s.conf", &cfg, &err), 0);
	assert_string_equal(cfg->data_dir, "data");
	sm_config_free(&cfg);
}

static void test_errors_name_file_and_line(void **state)
{
	(void)state;
	assert_err_has("imaps_port = 993\nbogus = 1\n", "t.conf:2: ", "unknown key \"bogus\"");
	assert_err_has("\n\nimaps_port = 70000\n", "t.conf:3: ", "imaps_port must be");
	assert_err_has("imaps_port = -1\n", "t.conf:1: ", "0 (off) to 65535");
	assert_err_has("imaps_port = 99x\n", "t.conf:1: ", "\"99x\"");
	assert_err_has("imaps_port =\n", "t.conf:1: ", "imaps_port must be");
	assert_err_has("mx_port = 25\nmx_port = 25\n", "t.conf:2: ", "duplicate key \"mx_port\"");
	assert_err_has("mx_port = 25\nmx_port = 25\n", "t.conf:2: ", "line 1");
	assert_err_has("just words\n", "t.conf:1: ", "no '='");
	assert_err_has(" = 5\n", "t.conf:1: ", "no key");
	assert_err_has("listen_address = localhost\n", "t.conf:1: ", "IPv4 or IPv6");
	assert_err_has("hostname = bad_name\n", "t.conf:1: ", "host name");
	assert_err_has("hostname = -a.b\n", "t.conf:1: ", "host name");
	assert_err_has("redis_url = http://x\n", "t.conf:1: ", "redis_url must be");
	assert_err_has("argon2_opslimit = 0\n", "t.conf:1: ", "from 1 to 100");
	assert_err_has("argon2_memlimit_mib = 99999999999999999999999\n", "t.conf:1: ",
		       "argon2_memlimit_mib must be");
	assert_err_has("max_message_bytes = 10\n", "t.conf:1: ", "max_message_bytes");
	assert_err_has("tls_cert =\n", "t.conf:1: ", "needs a path");
	assert_err_has("data_dir = \n", "t.conf:1: ", "needs a path");
	assert_err_has("tls_cert = a\x01 b\n", "t.conf:1: ", "\\x01");
	/* '#' starts a comment only at the beginning of a line */
	assert_err_has("imaps_port = 993 # TLS\n", "t.conf:1: ", "imaps_port must be");
}

static void test_nul_and_limits(void **state)
{
	static const char nul[] = "imaps_port = 1\nhostname = a\0b\n";
	char *err, *big;
	size_t n = SM_CONFIG_MAX_LINE_BYTES + 10;

	(void)state;
	err = parse_err(nul, sizeof(nul) - 1, ENG_EMALFORMED);
	assert_non_null(strstr(err, "t.conf:2: "));
	assert_non_null(strstr(err, "NUL"));
	free(err);

	big = malloc(n + 1);
	assert_non_null(big);
	memset(big, '#', n);
	big[n] = '\0';
	err = parse_err(big, n, ENG_ELIMIT);
	assert_non_null(strstr(err, "t.conf:1: "));
	assert_non_null(strstr(err, "longer than"));
	free(err);
	/* a long comment just under the limit is fine */
	big[SM_CONFIG_MAX_LINE_BYTES] = '\n';
	sm_config *cfg = NULL;
	assert_int_equal(sm_config_parse(big, SM_CONFIG_MAX_LINE_BYTES + 1, "t.conf", &cfg, NULL), 0);
	sm_config_free(&cfg);
	free(big);

	big = malloc(SM_CONFIG_MAX_FILE_BYTES + 2);
	assert_non_null(big);
	memset(big, '\n', SM_CONFIG_MAX_FILE_BYTES + 1);
	err = parse_err(big, SM_CONFIG_MAX_FILE_BYTES + 1, ENG_ELIMIT);
	free(err);
	free(big);
}

static void test_default_text_round_trip(void **state)
{
	char *text = sm_config_default_text("/var/lib/sealmail", "mx.example.net");
	sm_config *cfg = parse_ok(text);

	(void)state;
	assert_string_equal(cfg->data_dir, "/var/lib/sealmail");
	assert_string_equal(cfg->hostname, "mx.example.net");
	assert_int_equal(cfg->sqlited_port, 3456);
	assert_int_equal(cfg->imaps_port, 993);
	assert_int_equal(cfg->imaps_alt_port, 2993);
	assert_int_equal(cfg->imap_port, 0);
	assert_int_equal(cfg->pop3s_port, 995);
	assert_int_equal(cfg->pop3_port, 2995);
	assert_int_equal(cfg->mx_port, 2525);
	assert_int_equal(cfg->smtps_port, 465);
	assert_int_equal(cfg->submission_port, 587);
	assert_int_equal(cfg->caldav_port, 5000);
	assert_int_equal(cfg->carddav_port, 6000);
	assert_int_equal(cfg->api_port, 4000);
	assert_int_equal(cfg->web_port, 443);
	assert_true(sm_config_redis_embedded(cfg));
	assert_string_equal(cfg->backup_key_file, "/var/lib/sealmail/secrets/backup_key");
	sm_config_free(&cfg);
	free(text);
}

static void test_load_file(void **state)
{
	char *dir = tu_tmpdir(), *path, *err = NULL;
	sm_config *cfg = NULL;
	const char *text = "mx_port = 2525\nnope = 1\n";

	(void)state;
	assert_true(asprintf(&path, "%s/s.conf", dir) > 0);
	assert_int_equal(sm_config_load(path, &cfg, &err), ENG_ENOTFOUND);
	assert_non_null(err);
	assert_non_null(strstr(err, path));
	free(err);
	err = NULL;

	assert_int_equal(tu_write_file(path, text, strlen(text)), 0);
	assert_int_equal(sm_config_load(path, &cfg, &err), ENG_EMALFORMED);
	assert_null(cfg);
	assert_non_null(strstr(err, ":2: unknown key"));
	assert_int_equal(strncmp(err, path, strlen(path)), 0);
	free(err);
	err = NULL;

	assert_int_equal(tu_write_file(path, "mx_port = 2525\n", 15), 0);
	assert_int_equal(sm_config_load(path, &cfg, &err), 0);
	assert_int_equal(cfg->mx_port, 2525);
	assert_string_equal(cfg->data_dir, dir);
	sm_config_free(&cfg);
	free(path);
	tu_rmrf(dir);
	free(dir);
}

static void test_hostname_rules(void **state)
{
	(void)state;
	assert_true(sm_config_hostname_valid("localhost"));
	assert_true(sm_config_hostname_valid("a-b.example.org"));
	assert_false(sm_config_hostname_valid(""));
	assert_false(sm_config_hostname_valid("a..b"));
	assert_false(sm_config_hostname_valid("a-.b"));
	assert_false(sm_config_hostname_valid("a b"));
	assert_false(sm_config_hostname_valid("a,b"));
	assert_true(sm_config_key_known("web_port"));
	assert_false(sm_config_key_known("web"));
}

/* Every key named in the contract is known; docs and daemons rely on these names. */
static void test_contract_keys(void **state)
{
	static const char *const names[] = {
		"data_dir", "listen_address", "hostname", "sqlited_port", "sqlited_socket",
		"imaps_port", "imap_port", "pop3s_port", "pop3_port", "mx_port", "smtps_port",
		"submission_port", "caldav_port", "carddav_port", "api_port", "web_port",
		"redis_url", "tls_cert", "tls_key", "rpc_secret_file", "backup_key_file",
		"argon2_opslimit", "argon2_memlimit_mib", "db_cache_size", "db_idle_seconds",
		"max_message_bytes",
	};

	(void)state;
	for (size_t i = 0; i < sizeof(names) / sizeof(names[0]); i++) {
		if (!sm_config_key_known(names[i]))
			fail_msg("key %s is missing", names[i]);
	}
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_defaults),
		cmocka_unit_test(test_values_and_paths),
		cmocka_unit_test(test_relative_data_dir),
		cmocka_unit_test(test_errors_name_file_and_line),
		cmocka_unit_test(test_nul_and_limits),
		cmocka_unit_test(test_default_text_round_trip),
		cmocka_unit_test(test_load_file),
		cmocka_unit_test(test_hostname_rules),
		cmocka_unit_test(test_contract_keys),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
