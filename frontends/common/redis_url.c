#include "redis_url.h"
#include "eng_error.h"

#include <sodium.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

void sm_redis_target_clear(sm_redis_target *t)
{
	free(t->unix_path);
	free(t->host);
	if (t->password != NULL)
		sodium_memzero(t->password, strlen(t->password));
	free(t->password);
	memset(t, 0, sizeof(*t));
}

static int parse_tcp(const char *p, sm_redis_target *t)
{
	const char *slash = strchr(p, '/'), *at = strchr(p, '@'), *colon;
	char *hostport, *end;

	if (at != NULL && (slash == NULL || at < slash)) {
		const char *pw = memchr(p, ':', (size_t)(at - p));

		if (pw != NULL && at > pw + 1)
			t->password = eng_strndup(pw + 1, (size_t)(at - pw - 1));
		p = at + 1;
	}
	hostport = slash != NULL ? eng_strndup(p, (size_t)(slash - p)) :
		eng_strdup(p);
	colon = strrchr(hostport, ':');
	if (hostport[0] == '[') {
		end = strchr(hostport, ']');
		if (end == NULL || (end[1] != '\0' && end[1] != ':')) {
			free(hostport);
			return ENG_EINVAL;
		}
		if (end[1] == ':')
			t->port = atoi(end + 2);
		t->host = eng_strndup(hostport + 1, (size_t)(end - hostport - 1));
	} else if (colon != NULL) {
		t->port = atoi(colon + 1);
		t->host = eng_strndup(hostport, (size_t)(colon - hostport));
	} else {
		t->host = eng_strdup(hostport);
	}
	free(hostport);
	if (slash != NULL && slash[1] != '\0')
		t->db = atoi(slash + 1);
	if (t->host[0] == '\0' || t->port <= 0 || t->port > 65535 || t->db < 0)
		return ENG_EINVAL;
	return 0;
}

int sm_redis_target_parse(const char *url, const char *data_dir,
			  sm_redis_target *t)
{
	int err = 0;

	memset(t, 0, sizeof(*t));
	t->port = 6379;
	if (url == NULL || url[0] == '\0' || strcmp(url, "embedded") == 0) {
		if (asprintf(&t->unix_path, "%s/redis.sock",
			     data_dir != NULL ? data_dir : ".") < 0)
			eng_oom(0);
	} else if (strncmp(url, "unix:", 5) == 0) {
		const char *p = url + 5;

		if (strncmp(p, "//", 2) == 0)
			p += 2;
		if (*p == '\0')
			err = ENG_EINVAL;
		else
			t->unix_path = eng_strdup(p);
	} else if (strncmp(url, "redis://", 8) == 0) {
		err = parse_tcp(url + 8, t);
	} else {
		err = ENG_EINVAL;
	}
	if (err != 0)
		sm_redis_target_clear(t);
	return err;
}
