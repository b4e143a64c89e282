/*
 * The Sealmail configuration file (docs/configuration.md is the reference).
 *
 * One file, shared by every process: `sealmail up` reads it, and passes
 * `--config FILE` on to every daemon it starts. The format is
 *
 *     # a comment (only on a line of its own: '#' may appear in values)
 *     key = value
 *
 * with whitespace around keys and values trimmed and blank lines ignored.
 * Every key may appear at most once. An unknown key, a duplicate key, a line
 * without '=', a line longer than SM_CONFIG_MAX_LINE_BYTES, a NUL byte or a
 * value out of range is an error, and the message names the file and the
 * line ("sealmail.conf:7: imaps_port must be ..."): a typo must never turn
 * a service off silently.
 *
 * The key names are a contract between the processes; renaming one breaks
 * every existing installation. Ports: 0 or a missing key means the service
 * is off. Paths other than data_dir are relative to data_dir; a relative
 * data_dir is relative to the directory that holds the configuration file.
 * After parsing, every path in struct sm_config is resolved (but not
 * canonicalised: nothing has to exist yet).
 *
 * The configuration holds no secrets, only the paths of the files that do,
 * so it may be logged and its values may appear in error messages.
 */
#ifndef SM_CONFIG_H
#define SM_CONFIG_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define SM_CONFIG_MAX_LINE_BYTES 4096
#define SM_CONFIG_MAX_FILE_BYTES (1024 * 1024)

/* Defaults (docs/configuration.md explains each). */
#define SM_CONFIG_DEFAULT_LISTEN_ADDRESS "127.0.0.1"
#define SM_CONFIG_DEFAULT_HOSTNAME "localhost"
#define SM_CONFIG_DEFAULT_SQLITED_SOCKET "sqlited.sock"
#define SM_CONFIG_DEFAULT_TLS_CERT "tls/cert.pem"
#define SM_CONFIG_DEFAULT_TLS_KEY "tls/key.pem"
#define SM_CONFIG_DEFAULT_RPC_SECRET_FILE "secrets/rpc_secret"
#define SM_CONFIG_DEFAULT_BACKUP_KEY_FILE "secrets/backup_key"
#define SM_CONFIG_DEFAULT_ARGON2_OPSLIMIT 3
#define SM_CONFIG_DEFAULT_ARGON2_MEMLIMIT_MIB 64
#define SM_CONFIG_DEFAULT_DB_CACHE_SIZE 128
#define SM_CONFIG_DEFAULT_DB_IDLE_SECONDS 300
#define SM_CONFIG_DEFAULT_DB_RELEASE_SECONDS 10
#define SM_CONFIG_DEFAULT_MAX_MESSAGE_BYTES (50u * 1024 * 1024)
#define SM_CONFIG_DEFAULT_BACKUP_KEEP_DAILY 7
#define SM_CONFIG_DEFAULT_BACKUP_KEEP_WEEKLY 4
/* MX (frontends/mx, docs/mx.md). */
#define SM_CONFIG_DEFAULT_MX_MAX_RECIPIENTS 50
#define SM_CONFIG_DEFAULT_MX_MAX_LINE_BYTES 4096
#define SM_CONFIG_DEFAULT_MX_MAX_COMMANDS_BEFORE_MAIL 30
#define SM_CONFIG_DEFAULT_MX_MAX_ERRORS 10
#define SM_CONFIG_DEFAULT_MX_MAX_CONNS_PER_IP 20
#define SM_CONFIG_DEFAULT_IMAP_MAX_CONNS_PER_IP 20
#define SM_CONFIG_DEFAULT_MX_MAX_BUFFERED_MIB 256
#define SM_CONFIG_DEFAULT_MX_RATE_CONNS_PER_IP_MINUTE 120
#define SM_CONFIG_DEFAULT_MX_RATE_MSGS_PER_DOMAIN_DAY 20000
#define SM_CONFIG_DEFAULT_MX_RATE_RCPTS_PER_SENDER_HOUR 2000

/* The ports `sealmail init` writes into a new configuration file. */
#define SM_CONFIG_INIT_SQLITED_PORT 3456
#define SM_CONFIG_INIT_IMAPS_PORT 993
#define SM_CONFIG_INIT_IMAPS_ALT_PORT 2993
#define SM_CONFIG_INIT_IMAP_PORT 0
#define SM_CONFIG_INIT_POP3S_PORT 995
#define SM_CONFIG_INIT_POP3_PORT 2995
#define SM_CONFIG_INIT_MX_PORT 2525
#define SM_CONFIG_INIT_SMTPS_PORT 465
#define SM_CONFIG_INIT_SUBMISSION_PORT 587
#define SM_CONFIG_INIT_CALDAV_PORT 5000
#define SM_CONFIG_INIT_CARDDAV_PORT 6000
#define SM_CONFIG_INIT_API_PORT 4000
#define SM_CONFIG_INIT_WEB_PORT 443

typedef struct sm_config {
	char *source;          /* the file name (or buffer name) it came from */

	char *data_dir;        /* resolved; never NULL */
	char *listen_address;  /* an IPv4 or IPv6 literal */
	char *hostname;        /* the server's DNS name, used in banners and TLS */

	uint16_t sqlited_port;
	char *sqlited_socket;  /* resolved path, or NULL when set to empty (off) */
	/* Where clients reach sqlited: NULL (empty, the default) for the unix
	 * socket, else an IP literal or a host name (with sqlited_port). */
	char *sqlited_host;
	char *sqlited_ca;      /* resolved; defaults to tls_cert */
	bool sqlited_tls_always; /* sqlited_tls = always (default auto) */
	uint16_t imaps_port;
	uint16_t imap_port;
	uint16_t imaps_alt_port;     /* a second implicit-TLS port (2993) */
	uint16_t pop3s_port;
	uint16_t pop3_port;
	uint16_t mx_port;
	uint16_t smtps_port;
	uint16_t submission_port;
	uint16_t caldav_port;
	uint16_t carddav_port;
	uint16_t api_port;
	uint16_t web_port;

	/* "" when the private redis-server is wanted (see sm_config_redis_embedded) */
	char *redis_url;

	char *tls_cert;        /* resolved paths */
	char *tls_key;
	char *rpc_secret_file;
	char *backup_key_file;

	uint64_t argon2_opslimit;
	uint64_t argon2_memlimit_mib;
	uint64_t db_cache_size;     /* alias databases sqlited keeps open at once */
	uint64_t db_idle_seconds;   /* idle time before a database is closed, MK wiped */
	uint64_t db_release_seconds; /* no request this long: connection closed, keys kept */
	uint64_t max_message_bytes;

	/* MX limits (docs/configuration.md, docs/mx.md); a rate of 0 is off. */
	uint64_t mx_max_recipients;          /* RCPT per message */
	uint64_t mx_max_line_bytes;          /* command and DATA line length */
	uint64_t mx_max_commands_before_mail;
	uint64_t mx_max_errors;              /* error replies before 421 */
	uint64_t mx_max_conns_per_ip;        /* at once, per MX process */
	uint64_t imap_max_conns_per_ip;      /* at once, per IMAP process */
	uint64_t mx_max_buffered_mib;        /* messages held in memory, per process */
	uint64_t mx_rate_conns_per_ip_minute;
	uint64_t mx_rate_msgs_per_domain_day;
	uint64_t mx_rate_rcpts_per_sender_hour;

	/* Backups (backup/, docs/configuration.md). */
	char *backup_target;   /* "" = data_dir/backups; a path or s3://bucket/prefix */
	char *backup_schedule; /* "off" or "daily HH:MM" (UTC) */
	uint64_t backup_keep_daily;
	uint64_t backup_keep_weekly;
	char *s3_endpoint;     /* "" = https://s3.<region>.amazonaws.com */
	char *s3_region;
	char *s3_access_key_file;  /* resolved, NULL when empty */
	char *s3_secret_key_file;
} sm_config;

/*
 * Parses a configuration from memory. `name` is used in error messages and,
 * when data_dir is relative (or missing), its directory part is the base
 * for data_dir. The text need not be NUL-terminated; it may contain any
 * bytes. On success *cfg_r gets a new configuration and 0 is returned. On
 * failure a negative eng_err code is returned (ENG_EMALFORMED for bad
 * content, ENG_ELIMIT for an over-long line or file), *cfg_r is NULL, and,
 * if err_r is not NULL, *err_r gets a malloc'd sentence of the form
 * "NAME:LINE: ..." that the caller frees.
 */
int sm_config_parse(const char *text, size_t len, const char *name,
		    sm_config **cfg_r, char **err_r);

/*
 * Reads and parses a file, as sm_config_parse() with the file's path as
 * name. A missing file is ENG_ENOTFOUND, an unreadable one ENG_EIO; both
 * with a message in *err_r.
 */
int sm_config_load(const char *path, sm_config **cfg_r, char **err_r);

/* Frees the configuration, sets *cfg to NULL; accepts NULL and *cfg NULL. */
void sm_config_free(sm_config **cfg);

/* True when redis_url is empty or "embedded": use a private redis-server. */
bool sm_config_redis_embedded(const sm_config *cfg);

/*
 * The value of a port key by name ("imaps_port"): 0..65535, or -1 if the
 * name is not a port key. Lets tables of services name their ports.
 */
int sm_config_port(const sm_config *cfg, const char *key);

/* True if `key` is one of the keys the file may contain. */
bool sm_config_key_known(const char *key);

/*
 * The text of a new configuration file: every key with its `sealmail init`
 * default and a comment. data_dir is written as given (pass an absolute
 * path), hostname must be a valid host name. Returns a malloc'd string.
 */
char *sm_config_default_text(const char *data_dir, const char *hostname);

/* True if s is a syntactically valid DNS host name (letters, digits, '-', '.'). */
bool sm_config_hostname_valid(const char *s);

/*
 * redis_url with any user name or password removed, safe for a log line
 * ("redis://:secret@host:6379/0" gives "redis://host:6379/0"). malloc'd.
 */
char *sm_config_redis_url_public(const sm_config *cfg);

#endif
