/*
 * `sealmail up`: a small supervisor that runs every service of one machine
 * in the foreground.
 *
 * Children: the private redis-server (when redis_url is empty or
 * "embedded"), then each daemon of the table below whose ports are not all
 * zero and whose executable sits next to the sealmail binary. Each child
 * gets its own process group (so a terminal's Ctrl-C reaches only the
 * supervisor, which then stops the children in order) and PR_SET_PDEATHSIG
 * (so a supervisor killed with SIGKILL leaves no orphans). A child that dies
 * is restarted after a delay that doubles from 1 s to 60 s, and falls back
 * to 1 s once a run lasted a minute.
 *
 * Signals are blocked and taken synchronously with sigtimedwait(): the
 * supervisor is one loop with no handlers and no races between them.
 * SIGINT and SIGTERM stop everything: SIGTERM to each child, up to
 * STOP_TIMEOUT_S for them to exit, then SIGKILL; the exit code is 0.
 */
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <netinet/in.h>
#include <poll.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "cli.h"
#include "eng_error.h"
#include "fsutil.h"

#define MAX_PORTS 3
#define READY_TIMEOUT_MS 10000
/* One readiness connect (tcp_probe); wait_ready retries every 50 ms. */
#define PROBE_CONNECT_MS 100
#define STOP_TIMEOUT_S 10
#define BACKOFF_MAX_S 60

struct service {
	const char *name;        /* what the status lines call it */
	const char *executable;  /* looked for next to the sealmail binary */
	const char *port_keys[MAX_PORTS];
};

static const struct service services[] = {
	{ "sqlited", "sqlited", { "sqlited_port", NULL } },
	{ "imapd", "sealmail-imapd", { "imaps_port", "imaps_alt_port", "imap_port" } },
	{ "pop3d", "sealmail-pop3d", { "pop3s_port", "pop3_port" } },
	{ "mx", "sealmail-mx", { "mx_port", NULL } },
	{ "submission", "sealmail-submission", { "smtps_port", "submission_port" } },
	{ "dav", "sealmail-dav", { "caldav_port", "carddav_port" } },
	{ "api", "sealmail-api", { "api_port", "web_port" } },
};

#define N_SERVICES (sizeof(services) / sizeof(services[0]))
#define MAX_CHILDREN (N_SERVICES + 1)

struct child {
	const char *name;
	char **argv;          /* argv[0] is the path to exec */
	bool search_path;     /* execvp: redis-server comes from $PATH */
	pid_t pid;            /* 0 when not running */
	time_t started;
	time_t restart_at;    /* when pid == 0: when to start it again */
	unsigned backoff_s;
};

static struct child children[MAX_CHILDREN];
static size_t n_children;
static sigset_t supervised_signals;

static time_t now_s(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return ts.tv_sec;
}

static char **argv_new(const char *first, ...)
{
	va_list ap;
	size_t n = 1;
	char **argv;

	va_start(ap, first);
	while (va_arg(ap, const char *) != NULL)
		n++;
	va_end(ap);
	argv = eng_calloc(n + 1, sizeof(*argv));
	argv[0] = eng_strdup(first);
	va_start(ap, first);
	for (size_t i = 1; i < n; i++)
		argv[i] = eng_strdup(va_arg(ap, const char *));
	va_end(ap);
	return argv;
}

static void argv_free(char ***argvp)
{
	if (*argvp == NULL)
		return;
	for (char **a = *argvp; *a != NULL; a++)
		free(*a);
	free(*argvp);
	*argvp = NULL;
}

static int child_start(struct child *c)
{
	pid_t parent = getpid(), pid;

	pid = fork();
	if (pid < 0) {
		cli_error("%s: fork failed: %s", c->name, strerror(errno));
		return -1;
	}
	if (pid == 0) {
		sigset_t none;
		int devnull;

		sigemptyset(&none);
		sigprocmask(SIG_SETMASK, &none, NULL);
		signal(SIGPIPE, SIG_DFL);
		setpgid(0, 0);
		prctl(PR_SET_PDEATHSIG, SIGTERM);
		if (getppid() != parent)
			_exit(1);  /* the supervisor died before prctl took effect */
		if ((devnull = open("/dev/null", O_RDONLY)) >= 0) {
			dup2(devnull, STDIN_FILENO);
			close(devnull);
		}
		if (c->search_path)
			execvp(c->argv[0], c->argv);
		else
			execv(c->argv[0], c->argv);
		fprintf(stderr, "sealmail: %s: cannot run %s: %s\n", c->name, c->argv[0],
			strerror(errno));
		_exit(127);
	}
	c->pid = pid;
	c->started = now_s();
	return 0;
}

static struct child *child_add(const char *name, char **argv, bool search_path)
{
	struct child *c = &children[n_children++];

	memset(c, 0, sizeof(*c));
	c->name = name;
	c->argv = argv;
	c->search_path = search_path;
	c->backoff_s = 1;
	return c;
}

static void describe_status(const struct child *c, int status)
{
	if (WIFEXITED(status))
		fprintf(stderr, "sealmail: %s (pid %ld) exited with status %d", c->name,
			(long)c->pid, WEXITSTATUS(status));
	else if (WIFSIGNALED(status))
		fprintf(stderr, "sealmail: %s (pid %ld) was killed by signal %d", c->name,
			(long)c->pid, WTERMSIG(status));
}

/* Reaps every exited child; with `restart`, schedules each one again. */
static void reap(bool restart)
{
	int status;
	pid_t pid;

	while ((pid = waitpid(-1, &status, WNOHANG)) > 0) {
		for (size_t i = 0; i < n_children; i++) {
			struct child *c = &children[i];
			time_t t = now_s();

			if (c->pid != pid)
				continue;
			if (restart) {
				if (t - c->started >= BACKOFF_MAX_S)
					c->backoff_s = 1;
				describe_status(c, status);
				fprintf(stderr, "; restarting in %u s\n", c->backoff_s);
				c->restart_at = t + c->backoff_s;
				c->backoff_s = c->backoff_s * 2 > BACKOFF_MAX_S ?
					       BACKOFF_MAX_S : c->backoff_s * 2;
			}
			c->pid = 0;
		}
	}
}

static void restart_due(void)
{
	time_t t = now_s();

	for (size_t i = 0; i < n_children; i++) {
		if (children[i].pid == 0 && children[i].restart_at <= t)
			child_start(&children[i]);
	}
}

static size_t running(void)
{
	size_t n = 0;

	for (size_t i = 0; i < n_children; i++)
		n += children[i].pid != 0;
	return n;
}

/* SIGTERM to every child, then up to STOP_TIMEOUT_S for them, then SIGKILL. */
static void stop_all(void)
{
	struct timespec one = { 0, 100 * 1000 * 1000 };
	time_t deadline = now_s() + STOP_TIMEOUT_S;
	sigset_t chld;

	sigemptyset(&chld);
	sigaddset(&chld, SIGCHLD);
	for (size_t i = 0; i < n_children; i++) {
		if (children[i].pid != 0)
			kill(children[i].pid, SIGTERM);
	}
	while (running() > 0 && now_s() < deadline) {
		sigtimedwait(&chld, NULL, &one);
		reap(false);
	}
	for (size_t i = 0; i < n_children; i++) {
		if (children[i].pid != 0) {
			fprintf(stderr, "sealmail: %s did not stop in %d s; killing it\n",
				children[i].name, STOP_TIMEOUT_S);
			kill(children[i].pid, SIGKILL);
			waitpid(children[i].pid, NULL, 0);
			children[i].pid = 0;
		}
	}
}

/*
 * Waits up to timeout_ms, in short steps, for probe() to succeed. Returns 0
 * when it did, -1 on timeout, 1 when a stop signal arrived meanwhile (it is
 * then consumed: the caller shuts down).
 */
static int wait_ready(int (*probe)(const void *), const void *arg, const struct child *c,
		      int timeout_ms)
{
	struct timespec step = { 0, 50 * 1000 * 1000 };

	for (int waited = 0; waited < timeout_ms; waited += 50) {
		int sig;

		if (probe(arg) == 0)
			return 0;
		sig = sigtimedwait(&supervised_signals, NULL, &step);
		if (sig == SIGINT || sig == SIGTERM)
			return 1;
		if (sig == SIGCHLD)
			reap(true);
		if (c != NULL && c->pid == 0)
			return -1;  /* it died while starting */
	}
	return -1;
}

/* One PING over the unix socket; the whole exchange is bounded by 1 s. */
static int redis_ping(const void *arg)
{
	static const char ping[] = "*1\r\n$4\r\nPING\r\n";
	const char *path = arg;
	struct sockaddr_un sa = { .sun_family = AF_UNIX };
	struct timeval tv = { 1, 0 };
	char reply[16];
	ssize_t n;
	int fd, ok = -1;

	snprintf(sa.sun_path, sizeof(sa.sun_path), "%s", path);
	if ((fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0)) < 0)
		return -1;
	setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
	setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof(tv));
	if (connect(fd, (struct sockaddr *)&sa, sizeof(sa)) == 0 &&
	    write(fd, ping, sizeof(ping) - 1) == (ssize_t)(sizeof(ping) - 1) &&
	    (n = read(fd, reply, sizeof(reply) - 1)) >= 7 && memcmp(reply, "+PONG\r\n", 7) == 0)
		ok = 0;
	close(fd);
	return ok;
}

struct tcp_target {
	const char *address;
	int port;
};

/*
 * Connects to listen_address:port (loopback when it is a wildcard), for at
 * most PROBE_CONNECT_MS. A blocking connect() to a port that another
 * process holds without accepting (its backlog full, so SYNs are dropped)
 * waits out the kernel's SYN retries, about 2 minutes, and SIGTERM and
 * Ctrl-C (taken by sigtimedwait in wait_ready) wait behind it.
 */
static int tcp_probe(const void *arg)
{
	const struct tcp_target *t = arg;
	struct sockaddr_storage ss;
	socklen_t len;
	int fd, ret;

	memset(&ss, 0, sizeof(ss));
	if (strchr(t->address, ':') != NULL) {
		struct sockaddr_in6 *s6 = (struct sockaddr_in6 *)&ss;

		s6->sin6_family = AF_INET6;
		s6->sin6_port = htons((uint16_t)t->port);
		inet_pton(AF_INET6, strcmp(t->address, "::") == 0 ? "::1" : t->address,
			  &s6->sin6_addr);
		len = sizeof(*s6);
	} else {
		struct sockaddr_in *s4 = (struct sockaddr_in *)&ss;

		s4->sin_family = AF_INET;
		s4->sin_port = htons((uint16_t)t->port);
		inet_pton(AF_INET, strcmp(t->address, "0.0.0.0") == 0 ? "127.0.0.1" : t->address,
			  &s4->sin_addr);
		len = sizeof(*s4);
	}
	if ((fd = socket(ss.ss_family, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0)) < 0)
		return -1;
	ret = connect(fd, (struct sockaddr *)&ss, len) == 0 ? 0 : -1;
	if (ret != 0 && errno == EINPROGRESS) {
		struct pollfd pfd = { .fd = fd, .events = POLLOUT };
		socklen_t elen = sizeof(int);
		int err = -1;

		if (poll(&pfd, 1, PROBE_CONNECT_MS) == 1 &&
		    getsockopt(fd, SOL_SOCKET, SO_ERROR, &err, &elen) == 0 && err == 0)
			ret = 0;
	}
	close(fd);
	return ret;
}

static char *self_dir(void)
{
	char path[PATH_MAX];

	sm_fs_exe_dir(path, sizeof(path));
	return eng_strdup(path[0] != '\0' ? path : ".");
}

/* Starts the private redis-server; 0 ready, -1 failed, 1 stop requested. */
static int start_redis(const sm_config *cfg, char **sock_r)
{
	struct sockaddr_un sa;
	char *dir, *sock, *log;
	struct child *c;
	char *err = NULL;
	int ret;

	if (asprintf(&dir, "%s/redis", cfg->data_dir) < 0 ||
	    asprintf(&sock, "%s/redis.sock", cfg->data_dir) < 0 ||
	    asprintf(&log, "%s/redis/redis.log", cfg->data_dir) < 0)
		eng_oom(PATH_MAX);
	*sock_r = sock;
	if (strlen(sock) >= sizeof(sa.sun_path)) {
		cli_error("%s: the path is too long for a unix socket (at most %zu bytes); "
			  "choose a shorter data_dir", sock, sizeof(sa.sun_path) - 1);
		free(dir);
		free(log);
		return -1;
	}
	if (sm_fs_mkdir_p(dir, 0700, &err) != 0) {
		cli_error("%s", err);
		free(err);
		free(dir);
		free(log);
		return -1;
	}
	/*
	 * No TCP port and no password: the socket is reachable only through the
	 * 0700 data directory, so only this user can talk to it.
	 */
	c = child_add("redis", argv_new("redis-server", "--port", "0", "--unixsocket", sock,
					"--unixsocketperm", "700", "--dir", dir,
					"--appendonly", "yes", "--daemonize", "no",
					"--logfile", log, (const char *)NULL), true);
	free(dir);
	free(log);
	if (child_start(c) != 0)
		return -1;
	ret = wait_ready(redis_ping, sock, c, READY_TIMEOUT_MS);
	if (ret < 0)
		cli_error("redis-server did not answer PING on %s within %d s; see %s/redis/redis.log",
			  sock, READY_TIMEOUT_MS / 1000, cfg->data_dir);
	return ret;
}

static void port_list(const sm_config *cfg, const struct service *s, char *out, size_t size,
		      bool with_address)
{
	size_t used = 0;

	out[0] = '\0';
	for (int i = 0; i < MAX_PORTS && s->port_keys[i] != NULL; i++) {
		int port = sm_config_port(cfg, s->port_keys[i]);
		size_t klen = strcspn(s->port_keys[i], "_");

		if (port <= 0 || used >= size)
			continue;
		if (with_address)
			used += (size_t)snprintf(out + used, size - used, "%s%s:%d (%.*s)",
						 used ? ", " : "", cfg->listen_address, port,
						 (int)klen, s->port_keys[i]);
		else
			used += (size_t)snprintf(out + used, size - used, "%s%d", used ? ", " : "",
						 port);
	}
}

/* How to connect to the IMAP server, under imapd's status line. */
static void print_hint(const sm_config *cfg, const struct service *s)
{
	int tls = sm_config_port(cfg, "imaps_port"), plain = sm_config_port(cfg, "imap_port");

	if (tls <= 0)
		tls = sm_config_port(cfg, "imaps_alt_port");
	const char *addr = cfg->listen_address;

	if (strcmp(s->name, "imapd") != 0)
		return;
	if (strcmp(addr, "0.0.0.0") == 0 || strcmp(addr, "::") == 0)
		addr = cfg->hostname;
	if (tls > 0)
		printf("%-11s connect: a mail client to %s port %d (IMAP, SSL/TLS; user = the "
		       "alias address), or: openssl s_client -quiet -connect %s:%d\n", "", addr,
		       tls, addr, tls);
	else if (plain > 0)
		printf("%-11s connect: a mail client to %s port %d (IMAP, STARTTLS; user = the "
		       "alias address), or: openssl s_client -quiet -starttls imap -connect %s:%d\n",
		       "", addr, plain, addr, plain);
}

/* Starts the services that are configured and built; prints a line for each. */
static int start_services(const sm_config *cfg, const char *config_path)
{
	char *dir = self_dir();
	int ret = 0;

	for (size_t i = 0; i < N_SERVICES && ret == 0; i++) {
		const struct service *s = &services[i];
		char ports[256], *exe;
		int n_ports = 0;
		struct child *c;

		for (int k = 0; k < MAX_PORTS && s->port_keys[k] != NULL; k++)
			n_ports += sm_config_port(cfg, s->port_keys[k]) > 0;
		if (n_ports == 0) {
			printf("%-11s off (its port is 0 or not set)\n", s->name);
			continue;
		}
		port_list(cfg, s, ports, sizeof(ports), false);
		if (asprintf(&exe, "%s/%s", dir, s->executable) < 0)
			eng_oom(PATH_MAX);
		if (access(exe, X_OK) != 0) {
			printf("%-11s not built yet (port%s %s)\n", s->name, n_ports > 1 ? "s" : "",
			       ports);
			free(exe);
			continue;
		}
		c = child_add(s->name, argv_new(exe, "--config", config_path, (const char *)NULL),
			      false);
		free(exe);
		if (child_start(c) != 0) {
			ret = -1;
			break;
		}
		for (int k = 0; k < MAX_PORTS && s->port_keys[k] != NULL && ret == 0; k++) {
			struct tcp_target t = { cfg->listen_address, sm_config_port(cfg, s->port_keys[k]) };

			if (t.port <= 0)
				continue;
			ret = wait_ready(tcp_probe, &t, c, READY_TIMEOUT_MS);
			if (ret < 0) {
				printf("%-11s started, but nothing answers on %s:%d yet\n", s->name,
				       cfg->listen_address, t.port);
				ret = 0;
			}
		}
		if (ret == 0) {
			port_list(cfg, s, ports, sizeof(ports), true);
			printf("%-11s %s\n", s->name, ports);
			print_hint(cfg, s);
		}
	}
	free(dir);
	return ret;
}

/* One `sealmail up` per data directory: a second one would fight over redis.sock. */
static int take_lock(const sm_config *cfg)
{
	char *path;
	int fd;

	if (asprintf(&path, "%s/sealmail.lock", cfg->data_dir) < 0)
		eng_oom(PATH_MAX);
	fd = open(path, O_RDWR | O_CREAT | O_CLOEXEC, 0600);
	if (fd < 0) {
		cli_error("%s: %s", path, strerror(errno));
	} else if (flock(fd, LOCK_EX | LOCK_NB) != 0) {
		cli_error("another `sealmail up` is already running with data_dir %s",
			  cfg->data_dir);
		close(fd);
		fd = -1;
	}
	free(path);
	return fd;
}

static int supervise(void)
{
	for (;;) {
		struct timespec tick = { 1, 0 };
		int sig = sigtimedwait(&supervised_signals, NULL, &tick);

		if (sig == SIGINT || sig == SIGTERM) {
			printf("sealmail: %s received; stopping\n", sig == SIGINT ? "SIGINT" : "SIGTERM");
			return 0;
		}
		if (sig == SIGCHLD)
			reap(true);
		restart_due();
	}
}

int cli_cmd_up(int argc, char **argv)
{
	const char *config_opt;
	char *config_path, *err = NULL, *redis_sock = NULL;
	sm_config *cfg = NULL;
	int ret, lock_fd = -1;

	if ((ret = cli_parse_options(argc, argv, &config_opt, NULL)) != 0)
		return ret;
	config_path = cli_abspath(config_opt);
	if (sm_config_load(config_path, &cfg, &err) != 0) {
		cli_error("%s", err);
		if (sm_fs_exists(config_path) == 0)
			cli_error("create it with: sealmail init --config %s", config_path);
		ret = CLI_EXIT_FAIL;
		goto out;
	}
	if (cli_prepare(cfg, false) != 0 || (lock_fd = take_lock(cfg)) < 0) {
		ret = CLI_EXIT_FAIL;
		goto out;
	}

	sigemptyset(&supervised_signals);
	sigaddset(&supervised_signals, SIGINT);
	sigaddset(&supervised_signals, SIGTERM);
	sigaddset(&supervised_signals, SIGCHLD);
	sigaddset(&supervised_signals, SIGHUP);  /* no reload yet: ignored */
	sigprocmask(SIG_BLOCK, &supervised_signals, NULL);
	signal(SIGPIPE, SIG_IGN);

	printf("sealmail %s: config %s, data_dir %s\n", SEALMAIL_VERSION, config_path,
	       cfg->data_dir);
	ret = 0;
	if (sm_config_redis_embedded(cfg)) {
		ret = start_redis(cfg, &redis_sock);
		if (ret == 0)
			printf("%-11s unix:%s (try: redis-cli -s %s ping)\n", "redis", redis_sock,
			       redis_sock);
	} else {
		char *pub = sm_config_redis_url_public(cfg);

		printf("%-11s external %s (not started here)\n", "redis", pub);
		free(pub);
	}
	if (ret == 0)
		ret = start_services(cfg, config_path);
	if (ret == 0) {
		printf("sealmail: ready; Ctrl-C or SIGTERM stops everything\n");
		ret = supervise();
	}
	stop_all();
	/* ret 1 means a stop signal came during start-up: a clean stop too */
	ret = ret < 0 ? CLI_EXIT_FAIL : CLI_EXIT_OK;
	if (ret == CLI_EXIT_OK)
		printf("sealmail: stopped\n");
out:
	for (size_t i = 0; i < n_children; i++)
		argv_free(&children[i].argv);
	n_children = 0;
	if (lock_fd >= 0)
		close(lock_fd);
	free(redis_sock);
	free(err);
	sm_config_free(&cfg);
	free(config_path);
	return ret;
}
