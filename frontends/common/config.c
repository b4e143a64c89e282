/*
 * Configuration parser. One static table describes every key: its type,
 * where it lives in struct sm_config and its range. Parsing is one pass over
 * the lines; paths are resolved only at the end because data_dir may come
 * after the paths that are relative to it.
 */
#include "config.h"

#include <arpa/inet.h>
#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "buf.h"
#include "eng_error.h"

enum key_type {
	KT_DATA_DIR,   /* a path, relative to the config file's directory */
	KT_PATH,       /* a path, relative to data_dir; must not be empty */
	KT_PATH_OPT,   /* as KT_PATH, but empty turns it off (NULL) */
	KT_ADDRESS,    /* an IPv4 or IPv6 literal */
	KT_HOSTNAME,
	KT_PORT,
	KT_UINT,       /* a decimal number in [min, max] */
	KT_REDIS_URL,
	KT_HOST_OPT,   /* empty (NULL), an IP literal or a host name */
	KT_TLS_MODE,   /* "auto" or "always", stored as a bool */
	KT_STRING,     /* any printable text, may be empty */
	KT_SCHEDULE,   /* "off" or "daily HH:MM" (UTC) */
};

/* Types whose field is a malloc'd string. */
static bool key_is_string(int type)
{
	return type != KT_PORT && type != KT_UINT && type != KT_TLS_MODE;
}

struct key_def {
	const char *name;
	enum key_type type;
	size_t offset;
	uint64_t min;
	uint64_t max;
	const char *default_str;    /* for string types; NULL = no default */
	uint64_t default_num;       /* for numbers; ports default to 0 (off) */
};

#define OFF(f) offsetof(sm_config, f)
#define PORT(n) { #n, KT_PORT, OFF(n), 0, 65535, NULL, 0 }

static const struct key_def keys[] = {
	{ "data_dir", KT_DATA_DIR, OFF(data_dir), 0, 0, NULL, 0 },
	{ "listen_address", KT_ADDRESS, OFF(listen_address), 0, 0,
	  SM_CONFIG_DEFAULT_LISTEN_ADDRESS, 0 },
	{ "hostname", KT_HOSTNAME, OFF(hostname), 0, 0,
	  SM_CONFIG_DEFAULT_HOSTNAME, 0 },
	PORT(sqlited_port),
	{ "sqlited_socket", KT_PATH_OPT, OFF(sqlited_socket), 0, 0,
	  SM_CONFIG_DEFAULT_SQLITED_SOCKET, 0 },
	{ "sqlited_host", KT_HOST_OPT, OFF(sqlited_host), 0, 0, "", 0 },
	/* empty: tls_cert (set after resolving) */
	{ "sqlited_ca", KT_PATH_OPT, OFF(sqlited_ca), 0, 0, "", 0 },
	{ "sqlited_tls", KT_TLS_MODE, OFF(sqlited_tls_always), 0, 0, NULL, 0 },
	PORT(imaps_port),
	PORT(imap_port),
	PORT(imaps_alt_port),
	PORT(pop3s_port),
	PORT(pop3_port),
	PORT(mx_port),
	PORT(smtps_port),
	PORT(submission_port),
	PORT(caldav_port),
	PORT(carddav_port),
	PORT(api_port),
	PORT(web_port),
	{ "redis_url", KT_REDIS_URL, OFF(redis_url), 0, 0, "", 0 },
	{ "tls_cert", KT_PATH, OFF(tls_cert), 0, 0,
	  SM_CONFIG_DEFAULT_TLS_CERT, 0 },
	{ "tls_key", KT_PATH, OFF(tls_key), 0, 0,
	  SM_CONFIG_DEFAULT_TLS_KEY, 0 },
	{ "rpc_secret_file", KT_PATH, OFF(rpc_secret_file), 0, 0,
	  SM_CONFIG_DEFAULT_RPC_SECRET_FILE, 0 },
	{ "backup_key_file", KT_PATH, OFF(backup_key_file), 0, 0,
	  SM_CONFIG_DEFAULT_BACKUP_KEY_FILE, 0 },
	/* libsodium's Argon2id accepts opslimit >= 1; above 100 a login takes minutes. */
	{ "argon2_opslimit", KT_UINT, OFF(argon2_opslimit), 1, 100, NULL,
	  SM_CONFIG_DEFAULT_ARGON2_OPSLIMIT },
	/* 64 GiB is far above what one login should ever cost. */
	{ "argon2_memlimit_mib", KT_UINT, OFF(argon2_memlimit_mib), 1, 65536, NULL,
	  SM_CONFIG_DEFAULT_ARGON2_MEMLIMIT_MIB },
	{ "db_cache_size", KT_UINT, OFF(db_cache_size), 1, 1000000, NULL,
	  SM_CONFIG_DEFAULT_DB_CACHE_SIZE },
	{ "db_idle_seconds", KT_UINT, OFF(db_idle_seconds), 0, 86400, NULL,
	  SM_CONFIG_DEFAULT_DB_IDLE_SECONDS },
	/* 0: never release an unlocked alias's connection. */
	{ "db_release_seconds", KT_UINT, OFF(db_release_seconds), 0, 86400,
	  NULL, SM_CONFIG_DEFAULT_DB_RELEASE_SECONDS },
	/* 1 KiB .. 1 GiB: smaller cannot hold headers, larger no MTA relays. */
	{ "max_message_bytes", KT_UINT, OFF(max_message_bytes), 1024,
	  1024ull * 1024 * 1024, NULL, SM_CONFIG_DEFAULT_MAX_MESSAGE_BYTES },
	/* MX (docs/mx.md). RFC 5321 4.5.3: at least 100 recipients, 1000-byte lines. */
	{ "mx_max_recipients", KT_UINT, OFF(mx_max_recipients), 1, 100000, NULL,
	  SM_CONFIG_DEFAULT_MX_MAX_RECIPIENTS },
	{ "mx_max_line_bytes", KT_UINT, OFF(mx_max_line_bytes), 1000, 65536, NULL,
	  SM_CONFIG_DEFAULT_MX_MAX_LINE_BYTES },
	{ "mx_max_commands_before_mail", KT_UINT, OFF(mx_max_commands_before_mail), 1,
	  100000, NULL, SM_CONFIG_DEFAULT_MX_MAX_COMMANDS_BEFORE_MAIL },
	{ "mx_max_errors", KT_UINT, OFF(mx_max_errors), 1, 1000, NULL,
	  SM_CONFIG_DEFAULT_MX_MAX_ERRORS },
	{ "mx_max_conns_per_ip", KT_UINT, OFF(mx_max_conns_per_ip), 1, 100000, NULL,
	  SM_CONFIG_DEFAULT_MX_MAX_CONNS_PER_IP },
	{ "imap_max_conns_per_ip", KT_UINT, OFF(imap_max_conns_per_ip), 1, 100000, NULL,
	  SM_CONFIG_DEFAULT_IMAP_MAX_CONNS_PER_IP },
	{ "mx_max_buffered_mib", KT_UINT, OFF(mx_max_buffered_mib), 1, 1048576, NULL,
	  SM_CONFIG_DEFAULT_MX_MAX_BUFFERED_MIB },
	{ "mx_rate_conns_per_ip_minute", KT_UINT, OFF(mx_rate_conns_per_ip_minute), 0,
	  100000000, NULL, SM_CONFIG_DEFAULT_MX_RATE_CONNS_PER_IP_MINUTE },
	{ "mx_rate_msgs_per_domain_day", KT_UINT, OFF(mx_rate_msgs_per_domain_day), 0,
	  100000000, NULL, SM_CONFIG_DEFAULT_MX_RATE_MSGS_PER_DOMAIN_DAY },
	{ "mx_rate_rcpts_per_sender_hour", KT_UINT, OFF(mx_rate_rcpts_per_sender_hour), 0,
	  100000000, NULL, SM_CONFIG_DEFAULT_MX_RATE_RCPTS_PER_SENDER_HOUR },
	/* Backups (backup/): empty target = data_dir/backups. */
	{ "backup_target", KT_STRING, OFF(backup_target), 0, 0, "", 0 },
	{ "backup_schedule", KT_SCHEDULE, OFF(backup_schedule), 0, 0, "off", 0 },
	{ "backup_keep_daily", KT_UINT, OFF(backup_keep_daily), 0, 3650, NULL,
	  SM_CONFIG_DEFAULT_BACKUP_KEEP_DAILY },
	{ "backup_keep_weekly", KT_UINT, OFF(backup_keep_weekly), 0, 520, NULL,
	  SM_CONFIG_DEFAULT_BACKUP_KEEP_WEEKLY },
	{ "s3_endpoint", KT_STRING, OFF(s3_endpoint), 0, 0, "", 0 },
	{ "s3_region", KT_STRING, OFF(s3_region), 0, 0, "us-east-1", 0 },
	{ "s3_access_key_file", KT_PATH_OPT, OFF(s3_access_key_file), 0, 0, "", 0 },
	{ "s3_secret_key_file", KT_PATH_OPT, OFF(s3_secret_key_file), 0, 0, "", 0 },
};

#define N_KEYS (sizeof(keys) / sizeof(keys[0]))
#define MAX_PATH_BYTES 4095

struct parser {
	const char *name;
	eng_buf err;
	unsigned seen_line[N_KEYS]; /* 0 = not set yet */
};

static const struct key_def *key_find(const char *name, size_t len)
{
	for (size_t i = 0; i < N_KEYS; i++) {
		if (strlen(keys[i].name) == len && memcmp(keys[i].name, name, len) == 0)
			return &keys[i];
	}
	return NULL;
}

bool sm_config_key_known(const char *key)
{
	return key != NULL && key_find(key, strlen(key)) != NULL;
}

/*
 * Appends s[0..len) in quotes, with anything that is not printable ASCII
 * escaped and long values cut, so that a binary or hostile file cannot make
 * an error message unreadable or unbounded.
 */
static void put_quoted(eng_buf *b, const char *s, size_t len)
{
	size_t shown = len > 64 ? 64 : len;

	eng_buf_putc(b, '"');
	for (size_t i = 0; i < shown; i++) {
		unsigned char c = (unsigned char)s[i];

		if (c == '"' || c == '\\')
			eng_buf_printf(b, "\\%c", c);
		else if (c >= 0x20 && c < 0x7f)
			eng_buf_putc(b, (char)c);
		else
			eng_buf_printf(b, "\\x%02x", c);
	}
	if (shown < len)
		eng_buf_puts(b, "...");
	eng_buf_putc(b, '"');
}

static int fail(struct parser *p, int code, unsigned line, const char *fmt, ...)
	__attribute__((format(printf, 4, 5)));

static int fail(struct parser *p, int code, unsigned line, const char *fmt, ...)
{
	va_list ap;

	eng_buf_reset(&p->err);
	if (line > 0)
		eng_buf_printf(&p->err, "%s:%u: ", p->name, line);
	else
		eng_buf_printf(&p->err, "%s: ", p->name);
	va_start(ap, fmt);
	eng_buf_vprintf(&p->err, fmt, ap);
	va_end(ap);
	return code;
}

/* fail() with the offending value quoted at the end of the sentence. */
static int fail_value(struct parser *p, unsigned line, const char *key,
		      const char *what, const char *v, size_t vlen)
{
	fail(p, ENG_EMALFORMED, line, "%s must be %s, not ", key, what);
	put_quoted(&p->err, v, vlen);
	eng_buf_putc(&p->err, '.');
	return ENG_EMALFORMED;
}

static bool parse_uint(const char *v, size_t len, uint64_t *out)
{
	uint64_t n = 0;

	if (len == 0 || len > 20)
		return false;
	for (size_t i = 0; i < len; i++) {
		unsigned d;

		if (v[i] < '0' || v[i] > '9')
			return false;
		d = (unsigned)(v[i] - '0');
		if (n > (UINT64_MAX - d) / 10)
			return false;
		n = n * 10 + d;
	}
	*out = n;
	return true;
}

static bool has_control(const char *v, size_t len)
{
	for (size_t i = 0; i < len; i++) {
		unsigned char c = (unsigned char)v[i];

		if (c < 0x20 || c == 0x7f)
			return true;
	}
	return false;
}

bool sm_config_hostname_valid(const char *s)
{
	size_t len = s != NULL ? strlen(s) : 0, label = 0;

	if (len == 0 || len > 253 || s[0] == '.' || s[0] == '-')
		return false;
	for (size_t i = 0; i < len; i++) {
		char c = s[i];

		if (c == '.') {
			/* empty labels and labels ending in '-' are not host names */
			if (label == 0 || s[i - 1] == '-')
				return false;
			label = 0;
			continue;
		}
		if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') ||
		      (c >= '0' && c <= '9') || c == '-'))
			return false;
		if (c == '-' && label == 0)
			return false;
		if (++label > 63)
			return false;
	}
	return s[len - 1] != '-';
}

static bool redis_url_valid(const char *v)
{
	static const char *const schemes[] = { "redis://", "rediss://", "unix:/" };

	if (*v == '\0' || strcmp(v, "embedded") == 0)
		return true;
	for (size_t i = 0; i < sizeof(schemes) / sizeof(schemes[0]); i++) {
		size_t n = strlen(schemes[i]);

		if (strncmp(v, schemes[i], n) == 0 && v[n] != '\0')
			return true;
	}
	return false;
}

/* Stores one value into the configuration; the value has no NUL bytes. */
static int set_value(struct parser *p, sm_config *cfg, const struct key_def *k,
		     unsigned line, const char *v, size_t vlen)
{
	void *field = (char *)cfg + k->offset;
	char **str = field;
	uint64_t n;

	if (k->type == KT_PORT) {
		if (!parse_uint(v, vlen, &n) || n > 65535)
			return fail_value(p, line, k->name,
					  "a whole number from 0 (off) to 65535", v, vlen);
		*(uint16_t *)field = (uint16_t)n;
		return 0;
	}
	if (k->type == KT_UINT) {
		char what[96];

		snprintf(what, sizeof(what), "a whole number from %llu to %llu",
			 (unsigned long long)k->min, (unsigned long long)k->max);
		if (!parse_uint(v, vlen, &n) || n < k->min || n > k->max)
			return fail_value(p, line, k->name, what, v, vlen);
		*(uint64_t *)field = n;
		return 0;
	}
	if (k->type == KT_TLS_MODE) {
		if (vlen == 4 && memcmp(v, "auto", 4) == 0)
			*(bool *)field = false;
		else if (vlen == 6 && memcmp(v, "always", 6) == 0)
			*(bool *)field = true;
		else
			return fail_value(p, line, k->name, "\"auto\" or \"always\"",
					  v, vlen);
		return 0;
	}

	if (has_control(v, vlen))
		return fail_value(p, line, k->name, "text without control characters",
				  v, vlen);
	if (vlen > MAX_PATH_BYTES)
		return fail(p, ENG_ELIMIT, line, "%s is longer than %d bytes.",
			    k->name, MAX_PATH_BYTES);

	char *s = eng_strndup(v, vlen);

	switch (k->type) {
	case KT_ADDRESS: {
		unsigned char addr[16];

		if (inet_pton(AF_INET, s, addr) != 1 && inet_pton(AF_INET6, s, addr) != 1) {
			free(s);
			return fail_value(p, line, k->name,
					  "an IPv4 or IPv6 address such as 127.0.0.1 or ::1",
					  v, vlen);
		}
		break;
	}
	case KT_HOSTNAME:
		if (!sm_config_hostname_valid(s)) {
			free(s);
			return fail_value(p, line, k->name,
					  "a host name such as mail.example.org", v, vlen);
		}
		break;
	case KT_HOST_OPT: {
		unsigned char addr[16];

		if (*s != '\0' && inet_pton(AF_INET, s, addr) != 1 &&
		    inet_pton(AF_INET6, s, addr) != 1 && !sm_config_hostname_valid(s)) {
			free(s);
			return fail_value(p, line, k->name,
					  "empty, an IP address or a host name", v, vlen);
		}
		break;
	}
	case KT_REDIS_URL:
		if (!redis_url_valid(s)) {
			free(s);
			return fail_value(p, line, k->name,
					  "empty, \"embedded\", redis://HOST:PORT, rediss://HOST:PORT "
					  "or unix:/PATH", v, vlen);
		}
		break;
	case KT_STRING:
		for (const char *c = s; *c != '\0'; c++) {
			if ((unsigned char)*c < 0x20 || (unsigned char)*c == 0x7f) {
				free(s);
				return fail_value(p, line, k->name, "printable text", v, vlen);
			}
		}
		break;
	case KT_SCHEDULE: {
		unsigned hh, mm;
		char tail;

		if (strcmp(s, "off") != 0 &&
		    (sscanf(s, "daily %2u:%2u%c", &hh, &mm, &tail) != 2 ||
		     hh > 23 || mm > 59 || strlen(s) != 11)) {
			free(s);
			return fail_value(p, line, k->name,
					  "\"off\" or \"daily HH:MM\" (UTC)", v, vlen);
		}
		break;
	}
	case KT_DATA_DIR:
	case KT_PATH:
		if (vlen == 0) {
			free(s);
			return fail(p, ENG_EMALFORMED, line, "%s needs a path.", k->name);
		}
		break;
	default:
		break;
	}
	free(*str);
	*str = s;
	return 0;
}

static char *path_join(const char *base, const char *rel)
{
	size_t blen = strlen(base);
	char *out;

	if (rel[0] == '/' || blen == 0 || strcmp(base, ".") == 0)
		return eng_strdup(rel);
	if (strcmp(rel, ".") == 0)
		return eng_strdup(base);
	while (blen > 1 && base[blen - 1] == '/')
		blen--;
	if (asprintf(&out, "%.*s%s%s", (int)blen, base,
		     base[blen - 1] == '/' ? "" : "/", rel) < 0)
		eng_oom(blen + strlen(rel) + 2);
	return out;
}

/* The directory part of a file name: "a/b.conf" -> "a", "b.conf" -> ".". */
static char *dir_of(const char *name)
{
	const char *slash = strrchr(name, '/');

	if (slash == NULL)
		return eng_strdup(".");
	if (slash == name)
		return eng_strdup("/");
	return eng_strndup(name, (size_t)(slash - name));
}

static void apply_defaults_and_resolve(const struct parser *p, sm_config *cfg)
{
	char *dir = dir_of(p->name);

	for (size_t i = 0; i < N_KEYS; i++) {
		void *field = (char *)cfg + keys[i].offset;
		char **str = field;

		if (p->seen_line[i] != 0)
			continue;
		switch (keys[i].type) {
		case KT_PORT:
		case KT_TLS_MODE:
			break;  /* zero-initialised: off, auto */
		case KT_UINT:
			*(uint64_t *)field = keys[i].default_num;
			break;
		default:
			if (*str == NULL && keys[i].default_str != NULL)
				*str = eng_strdup(keys[i].default_str);
			break;
		}
	}
	/* data_dir defaults to the directory of the configuration file. */
	char *dd = path_join(dir, cfg->data_dir != NULL ? cfg->data_dir : ".");

	free(cfg->data_dir);
	cfg->data_dir = dd;
	free(dir);
	/* "/srv/mail/" and "/srv/mail" are one directory: keep one spelling */
	for (size_t n = strlen(dd); n > 1 && dd[n - 1] == '/'; n--)
		dd[n - 1] = '\0';

	for (size_t i = 0; i < N_KEYS; i++) {
		char **str = (char **)((char *)cfg + keys[i].offset);
		char *resolved;

		if (keys[i].type != KT_PATH && keys[i].type != KT_PATH_OPT)
			continue;
		if (*str != NULL && **str == '\0') {
			/* only KT_PATH_OPT can be empty: the feature is off */
			free(*str);
			*str = NULL;
			continue;
		}
		resolved = path_join(cfg->data_dir, *str);
		free(*str);
		*str = resolved;
	}
	if (cfg->sqlited_host != NULL && cfg->sqlited_host[0] == '\0') {
		free(cfg->sqlited_host);
		cfg->sqlited_host = NULL;
	}
	/* One machine with its self-signed certificate: trust it. */
	if (cfg->sqlited_ca == NULL)
		cfg->sqlited_ca = eng_strdup(cfg->tls_cert);
}

static bool is_space(char c)
{
	return c == ' ' || c == '\t';
}

static int parse_line(struct parser *p, sm_config *cfg, unsigned line,
		      const char *s, size_t len)
{
	const char *eq, *k_end, *v;
	const struct key_def *k;
	size_t klen, vlen;
	int ret;

	if (memchr(s, '\0', len) != NULL)
		return fail(p, ENG_EMALFORMED, line, "the line contains a NUL byte.");
	while (len > 0 && is_space(*s)) {
		s++;
		len--;
	}
	while (len > 0 && is_space(s[len - 1]))
		len--;
	if (len == 0 || s[0] == '#')
		return 0;

	eq = memchr(s, '=', len);
	if (eq == NULL) {
		fail(p, ENG_EMALFORMED, line, "expected \"key = value\" but found ");
		put_quoted(&p->err, s, len);
		eng_buf_puts(&p->err, " (no '=').");
		return ENG_EMALFORMED;
	}
	k_end = eq;
	while (k_end > s && is_space(k_end[-1]))
		k_end--;
	klen = (size_t)(k_end - s);
	if (klen == 0)
		return fail(p, ENG_EMALFORMED, line, "there is no key before '='.");

	k = key_find(s, klen);
	if (k == NULL) {
		fail(p, ENG_EMALFORMED, line, "unknown key ");
		put_quoted(&p->err, s, klen);
		eng_buf_puts(&p->err, "; docs/configuration.md lists the keys.");
		return ENG_EMALFORMED;
	}
	if (p->seen_line[k - keys] != 0)
		return fail(p, ENG_EMALFORMED, line,
			    "duplicate key \"%s\" (it is already set on line %u).",
			    k->name, p->seen_line[k - keys]);
	p->seen_line[k - keys] = line;

	v = eq + 1;
	vlen = len - (size_t)(v - s);
	while (vlen > 0 && is_space(*v)) {
		v++;
		vlen--;
	}
	if ((ret = set_value(p, cfg, k, line, v, vlen)) != 0)
		return ret;
	return 0;
}

static void take_error(struct parser *p, char **err_r)
{
	if (err_r != NULL)
		*err_r = eng_buf_steal(&p->err, NULL);
	eng_buf_free(&p->err);
}

int sm_config_parse(const char *text, size_t len, const char *name,
		    sm_config **cfg_r, char **err_r)
{
	struct parser p = { .name = name != NULL ? name : "(config)", .err = ENG_BUF_INIT };
	sm_config *cfg;
	unsigned line = 0;
	size_t pos = 0;
	int ret = 0;

	*cfg_r = NULL;
	if (err_r != NULL)
		*err_r = NULL;
	if (len > SM_CONFIG_MAX_FILE_BYTES) {
		fail(&p, ENG_ELIMIT, 0, "the file is larger than %d bytes.",
		     SM_CONFIG_MAX_FILE_BYTES);
		take_error(&p, err_r);
		return ENG_ELIMIT;
	}

	cfg = eng_calloc(1, sizeof(*cfg));
	while (pos < len) {
		const char *s = text + pos;
		const char *nl = memchr(s, '\n', len - pos);
		size_t llen = nl != NULL ? (size_t)(nl - s) : len - pos;

		line++;
		pos += llen + (nl != NULL ? 1 : 0);
		if (llen > 0 && s[llen - 1] == '\r')
			llen--;
		if (llen > SM_CONFIG_MAX_LINE_BYTES) {
			ret = fail(&p, ENG_ELIMIT, line, "the line is longer than %d bytes.",
				   SM_CONFIG_MAX_LINE_BYTES);
			break;
		}
		if ((ret = parse_line(&p, cfg, line, s, llen)) != 0)
			break;
	}
	if (ret != 0) {
		take_error(&p, err_r);
		sm_config_free(&cfg);
		return ret;
	}
	eng_buf_free(&p.err);
	apply_defaults_and_resolve(&p, cfg);
	cfg->source = eng_strdup(p.name);
	*cfg_r = cfg;
	return 0;
}

int sm_config_load(const char *path, sm_config **cfg_r, char **err_r)
{
	eng_buf text = ENG_BUF_INIT;
	char chunk[8192];
	FILE *f;
	size_t n;
	int ret;

	*cfg_r = NULL;
	if (err_r != NULL)
		*err_r = NULL;
	f = fopen(path, "rb");
	if (f == NULL) {
		int e = errno;

		if (err_r != NULL && asprintf(err_r, "%s: cannot open the configuration file: %s.",
					      path, strerror(e)) < 0)
			eng_oom(64);
		return e == ENOENT ? ENG_ENOTFOUND : ENG_EIO;
	}
	/* read one byte past the limit so that the parser sees the file is too big */
	while ((n = fread(chunk, 1, sizeof(chunk), f)) > 0) {
		eng_buf_append(&text, chunk, n);
		if (text.len > SM_CONFIG_MAX_FILE_BYTES)
			break;
	}
	if (ferror(f)) {
		fclose(f);
		eng_buf_free(&text);
		if (err_r != NULL && asprintf(err_r, "%s: cannot read the configuration file.",
					      path) < 0)
			eng_oom(64);
		return ENG_EIO;
	}
	fclose(f);
	ret = sm_config_parse(text.data != NULL ? text.data : "", text.len, path, cfg_r, err_r);
	eng_buf_free(&text);
	return ret;
}

void sm_config_free(sm_config **cfgp)
{
	sm_config *cfg;

	if (cfgp == NULL || (cfg = *cfgp) == NULL)
		return;
	for (size_t i = 0; i < N_KEYS; i++) {
		if (key_is_string(keys[i].type))
			free(*(char **)((char *)cfg + keys[i].offset));
	}
	free(cfg->source);
	free(cfg);
	*cfgp = NULL;
}

bool sm_config_redis_embedded(const sm_config *cfg)
{
	return cfg->redis_url == NULL || cfg->redis_url[0] == '\0' ||
	       strcmp(cfg->redis_url, "embedded") == 0;
}

int sm_config_port(const sm_config *cfg, const char *key)
{
	const struct key_def *k = key != NULL ? key_find(key, strlen(key)) : NULL;

	if (k == NULL || k->type != KT_PORT)
		return -1;
	return *(const uint16_t *)((const char *)cfg + k->offset);
}

char *sm_config_redis_url_public(const sm_config *cfg)
{
	const char *url = cfg->redis_url != NULL ? cfg->redis_url : "";
	const char *scheme_end = strstr(url, "://");
	const char *host, *at, *end;
	char *out;

	if (scheme_end == NULL)
		return eng_strdup(url);
	host = scheme_end + 3;
	end = host + strcspn(host, "/?#");
	/* the last '@' before the path ends the userinfo */
	at = NULL;
	for (const char *c = host; c < end; c++) {
		if (*c == '@')
			at = c;
	}
	if (at == NULL)
		return eng_strdup(url);
	if (asprintf(&out, "%.*s%s", (int)(host - url), url, at + 1) < 0)
		eng_oom(strlen(url));
	return out;
}

char *sm_config_default_text(const char *data_dir, const char *hostname)
{
	eng_buf b = ENG_BUF_INIT;

	eng_buf_printf(&b,
		"# Sealmail configuration, written by `sealmail init`.\n"
		"# docs/configuration.md explains every key. Paths other than data_dir\n"
		"# are relative to data_dir. A port of 0 turns that service off.\n"
		"\n"
		"data_dir = %s\n"
		"listen_address = %s\n"
		"hostname = %s\n"
		"\n"
		"# storage service (binary RPC) and its local unix socket\n"
		"sqlited_port = %d\n"
		"sqlited_socket = %s\n"
		"# auto: TLS for TCP peers not on loopback; always: on loopback too\n"
		"sqlited_tls = auto\n"
		"# clients: empty for the unix socket; else where sqlited runs\n"
		"sqlited_host =\n"
		"# the CA (or pinned certificate) clients trust for sqlited; empty: tls_cert\n"
		"sqlited_ca =\n"
		"\n"
		"# IMAP over implicit TLS, on the standard port and on 2993 (the\n"
		"# port self-hosted mail uses without root); imap_port is plaintext\n"
		"# with STARTTLS, off unless set (143 is the standard one)\n"
		"imaps_port = %d\n"
		"imaps_alt_port = %d\n"
		"imap_port = %d\n"
		"pop3s_port = %d\n"
		"pop3_port = %d\n"
		"mx_port = %d\n"
		"smtps_port = %d\n"
		"submission_port = %d\n"
		"caldav_port = %d\n"
		"carddav_port = %d\n"
		"api_port = %d\n"
		"web_port = %d\n"
		"\n"
		"# empty or \"embedded\": a private redis-server on data_dir/redis.sock\n"
		"redis_url = embedded\n"
		"\n"
		"tls_cert = %s\n"
		"tls_key = %s\n"
		"rpc_secret_file = %s\n"
		"backup_key_file = %s\n"
		"\n"
		"argon2_opslimit = %d\n"
		"argon2_memlimit_mib = %d\n"
		"db_cache_size = %d\n"
		"db_idle_seconds = %d\n"
		"max_message_bytes = %u\n",
		data_dir, SM_CONFIG_DEFAULT_LISTEN_ADDRESS, hostname,
		SM_CONFIG_INIT_SQLITED_PORT, SM_CONFIG_DEFAULT_SQLITED_SOCKET,
		SM_CONFIG_INIT_IMAPS_PORT, SM_CONFIG_INIT_IMAPS_ALT_PORT,
		SM_CONFIG_INIT_IMAP_PORT,
		SM_CONFIG_INIT_POP3S_PORT, SM_CONFIG_INIT_POP3_PORT,
		SM_CONFIG_INIT_MX_PORT, SM_CONFIG_INIT_SMTPS_PORT,
		SM_CONFIG_INIT_SUBMISSION_PORT, SM_CONFIG_INIT_CALDAV_PORT,
		SM_CONFIG_INIT_CARDDAV_PORT, SM_CONFIG_INIT_API_PORT,
		SM_CONFIG_INIT_WEB_PORT,
		SM_CONFIG_DEFAULT_TLS_CERT, SM_CONFIG_DEFAULT_TLS_KEY,
		SM_CONFIG_DEFAULT_RPC_SECRET_FILE, SM_CONFIG_DEFAULT_BACKUP_KEY_FILE,
		SM_CONFIG_DEFAULT_ARGON2_OPSLIMIT, SM_CONFIG_DEFAULT_ARGON2_MEMLIMIT_MIB,
		SM_CONFIG_DEFAULT_DB_CACHE_SIZE, SM_CONFIG_DEFAULT_DB_IDLE_SECONDS,
		SM_CONFIG_DEFAULT_MAX_MESSAGE_BYTES);
	return eng_buf_steal(&b, NULL);
}
