/*
 * bench-imap's shared declarations (bench_imap.c says what the program
 * is): the program was one file until it was split by topic, in pure
 * moves: bench_imap.c (options, the server trees' CPU and memory, the
 * measured window and report, main), imap_conn.c (failing loudly, sending,
 * receiving, connections and TLS) and imap_scripts.c (the per-mode
 * scripts). What one of them defines and another uses is declared here.
 */
#ifndef BENCH_IMAP_H
#define BENCH_IMAP_H

#include <openssl/ssl.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <uv.h>

#include "msggen.h"

#define SEED 0x5ea1u            /* bench-engine's: the same messages */
#define SMALL_SEED 0x51a11u     /* the mixed workload's appended messages */
#define N_SMALL 64
/*
 * Connections per source address: under Sealmail's default per-address
 * cap (imap_max_conns_per_ip 20) with room for the mixed workload's
 * reconnects, whose old connection the server may not have closed yet
 * when the new one arrives (16 left 4 of room: a loaded run saw a BYE).
 */
#define PER_SOURCE_IP 8
#define MAX_TREE 65536
#define READ_BUF (256 * 1024)
#define LINE_MAX_BYTES (64u << 20)
#define PREGEN_MAX 20000

enum ev { EV_GREETING, EV_UNTAGGED, EV_CONT, EV_TAGGED };
enum mode { M_APPEND, M_SELECT, M_FETCHHDR, M_FETCHBODY, M_SEARCH, M_MIXED,
	    M_LOGIN, M_IDLE, M_MBOX };

struct conn;
typedef void script_fn(struct conn *c, enum ev ev, const char *line, bool ok);

struct conn {
	uv_tcp_t tcp;
	uv_connect_t creq;
	int id;
	bool open, greeted, counted_ready, logging_out, reopen;
	SSL *ssl;
	BIO *rbio, *wbio;
	char *line;
	size_t line_len, line_cap;
	uint64_t lit_left, lit_bytes;
	char tag[16];
	unsigned tagn;
	int step, user;
	double t_cmd;
	script_fn *script;
	/* mixed: the mailbox's size at SELECT, the appended message's UID */
	unsigned exists, appended_uid;
	struct msggen own;      /* append above PREGEN_MAX: its message */
};

struct bench_opt {
	enum mode mode;
	const char *host, *user_fmt, *pass, *mailbox, *query, *pids, *out, *settle_cmd;
	int port, users, user_base, conns, count, first, repeat, setup_limit;
	bool tls, hold;
	double seconds, settle, max_seconds, settle_max;
};
extern struct bench_opt opt;

struct bench_state {
	uv_loop_t *loop;
	SSL_CTX *ssl_ctx;
	struct conn *conns;
	struct conn *holders;
	int n_ready, n_done, n_setting_up, next_to_open, next_user;
	bool started, stopping;
	double t0, t1;
	double srv_cpu0, srv_cpu1, gen_cpu0, gen_cpu1;
	uint64_t ops, bytes, items, errors, next_msg, hits;
	double *times;
	int n_times;
	struct msggen *msgs;    /* append: pre-generated, indices first.. */
	bool lazy;              /* append: generated as sent (count > PREGEN_MAX) */
	struct msggen small[N_SMALL];
	double pss_before_kib;
	double t_all_idle;      /* idle: when the last connection went IDLE */
	char pss_roots_before[256];
	uv_timer_t timer;
	char readbuf[READ_BUF];
};
extern struct bench_state g;

/* ---- bench_imap.c: time, the server trees, the measured window ---- */

double now_s(void);
double server_pss_kib(int *nprocs);
void pss_by_root(char *out, size_t size);
void print_result(const char *name, double value, const char *unit, const char *extra);
void window_start(void);
void window_end(void);
void finish(void);
void on_time_up(uv_timer_t *t);

/* ---- imap_conn.c: failing loudly, sending, connections ---- */

void die(const char *fmt, ...) __attribute__((format(printf, 1, 2), noreturn));
void fail(struct conn *c, const char *what, const char *line)
	__attribute__((noreturn));
void send_static(struct conn *c, const char *data, size_t len);
void cmd(struct conn *c, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
void send_login(struct conn *c);
void conn_open(struct conn *c);
void conn_close(struct conn *c);

/* ---- imap_scripts.c: the scripts ---- */

script_fn script_append, script_select, script_fetch, script_search,
	script_mixed, script_login, script_idle, script_hold;
void start_login_conns(void);
void open_more(void);

#endif
