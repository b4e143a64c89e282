/*
 * Where Redis is, from the config's redis_url, for every process that
 * talks to it (sqlited's events and throttle, pop3d's [IN-USE] lock):
 *
 *   "" or "embedded"                  data_dir/redis.sock (sealmail up's)
 *   "unix:/path" or "unix:///path"    a unix socket
 *   "redis://[:password@]host[:port][/db]"   TCP; IPv6 hosts in [brackets]
 *
 * rediss:// (TLS) is not in hiredis 0.14 and is refused.
 */
#ifndef SM_REDIS_URL_H
#define SM_REDIS_URL_H

typedef struct sm_redis_target {
	char *unix_path;     /* set for a unix socket, else NULL */
	char *host;          /* set for TCP, else NULL */
	int port;            /* TCP port, 6379 by default */
	int db;              /* SELECT this database, 0 by default */
	char *password;      /* AUTH with it, NULL for none; never logged */
} sm_redis_target;

/* 0, or ENG_EINVAL for a URL it cannot use (t is then cleared). */
int sm_redis_target_parse(const char *url, const char *data_dir,
			  sm_redis_target *t);
/* Frees the strings (the password wiped) and zeroes t. */
void sm_redis_target_clear(sm_redis_target *t);

#endif
