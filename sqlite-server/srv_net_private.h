/*
 * The network core's private header: the objects the srv_net*.c files
 * share and the functions they call across files. Only those files
 * include it; main() and the tests use srv_net.h, the handlers srv.h.
 *
 * The core, one file per concern:
 *   srv_net.c         listeners (and the TLS context), start, stop, the
 *                     counters, srv_blocking
 *   srv_net_conn.c    peers; accepting a connection (plain or TLS, HELLO);
 *                     closing it
 *   srv_net_read.c    reading: TLS records, frames, the handshake (AUTH),
 *                     the pre-dispatch of REQUEST, WINDOW and CANCEL
 *   srv_net_req.c     requests and the handler side of srv.h: answers,
 *                     body streams and their credit windows
 *   srv_net_upload.c  request bodies: in memory or sealed into tmp_dir,
 *                     and their readers (srv_body_*)
 *   srv_net_write.c   output: frames, the send queue, TLS writes,
 *                     backpressure
 * What one file calls in another carries the prefix net_; everything
 * else is static in its file.
 *
 * Objects and who owns them:
 *   net_state   one per srv; owns the listeners, the TLS context, the list
 *               of connections and the table of peers.
 *   srv_conn    one per accepted stream. Holds two libuv handles (the
 *               stream and a timer) and is freed when both have closed.
 *   net_req     a srv_req and the core's state. Lives on its
 *               connection's list while the connection exists. Owned by
 *               the core until the handler is called; then by the handler
 *               until it answers (srv_reply, srv_fail, the last
 *               srv_send_data), even when the core has already answered
 *               ECANCELLED or the connection is gone (conn == NULL).
 *   net_upload  the body of an upload: held in memory while it is small
 *               (upload_keep_in_memory), else sealed into tmp_dir by pool
 *               threads; detached from its request when that goes away
 *               while a write runs, and then freed by the write's done.
 *   net_peer    in-flight count per peer name; refcounted by connections
 *               and requests, so req->peer_name stays valid.
 *
 * Connection states:
 *
 *   HANDSHAKE --AUTH ok--> READY --error/EOF/stop--> CLOSING --> (freed)
 *       |                                               ^
 *       +--bad AUTH: AUTH_DELAY (reads stopped) --------+
 *
 * Every byte read is fed to one rpc_reader; every frame is handled before
 * the next is read, so at most one read buffer (64 KiB) of frames is
 * handled per callback. Output is one uv_write per frame; when a
 * connection's queued output passes max_output_bytes its reads stop until
 * half of it has drained (and srv_window() answers 0 meanwhile), so a
 * client that does not read cannot make the server buffer without bound.
 */
#ifndef SRV_NET_PRIVATE_H
#define SRV_NET_PRIVATE_H

#include "srv_net.h"

#include "rpc_auth.h"
#include "spool.h"

#include <openssl/ssl.h>
#include <sodium.h>

#define NET_READ_BYTES 65536
#define NET_MAX_LISTENERS 2

typedef struct net_peer net_peer;
typedef struct net_req net_req;
typedef struct net_upload net_upload;
typedef struct srv_net net_state;

struct net_peer {
	net_peer *next;
	unsigned refs;
	unsigned in_flight;
	char name[RPC_PEER_NAME_MAX + 1];
};

enum conn_state { C_HANDSHAKE, C_AUTH_DELAY, C_READY, C_CLOSING };

struct srv_conn {
	net_state *net;
	srv_conn *prev, *next;
	union {
		uv_tcp_t tcp;
		uv_pipe_t pipe;
		uv_stream_t stream;
		uv_handle_t handle;
	} h;
	uv_timer_t timer;
	uv_shutdown_t shutdown_req;
	unsigned handles_open;
	enum conn_state state;
	bool is_unix;
	bool reading;
	bool paused;                 /* reads stopped by backpressure */
	bool frame_timer_on;
	/* TLS: the stream carries records; plaintext goes through ssl. */
	SSL *ssl;
	BIO *rbio, *wbio;
	eng_buf tls_early;           /* plaintext queued before the handshake ended */
	rpc_reader *reader;
	rpc_limits lim;
	uint8_t nonce[RPC_NONCE_BYTES];
	net_peer *peer;
	char addr[64];
	net_req *reqs;               /* every request of this connection */
	unsigned n_reqs;
	size_t out_bytes;
	char rbuf[NET_READ_BYTES];
};

enum req_phase {
	R_NEW,                       /* core-owned: being checked */
	R_UPLOAD,                    /* core-owned: receiving the body */
	R_DRAIN,                     /* core-owned: answered, dropping its DATA */
	R_HANDLER,                   /* handler-owned */
};

struct net_req {
	srv_req pub;                 /* first: srv_req * <-> net_req * */
	net_req *prev, *next;
	enum req_phase phase;
	bool on_wire;                /* the id is not finished for the client */
	bool streaming;              /* RESPONSE with BODY sent */
	uint64_t send_window;        /* download credit left */
	uint64_t recv_window;        /* upload credit the client has left */
	uint32_t credit_min;         /* the smallest WINDOW credit, 0: none */
	uint8_t *payload;
	size_t payload_len;
	rpc_msg msg;
	net_peer *peer;
	char addr[64];
	net_upload *up;
	srv_handler_fn *handler;
};

struct net_upload {
	net_state *net;
	net_req *req;                /* NULL when the request went away */
	uv_work_t work;
	bool busy;                   /* work queued or running */
	bool end;                    /* END received */
	bool committed;
	bool commit_now;             /* the running work commits after writing */
	int err;
	uint64_t received;
	eng_buf pending;             /* received, not yet handed to a write */
	eng_buf writing;             /* being written by the pool */
	eng_spool_writer *w;
	srv_body *body;
	/* Still held in memory only (pending): no file, no key pair yet. */
	bool in_memory;
	uint8_t pk[crypto_box_PUBLICKEYBYTES];
};

struct srv_body {
	net_state *net;
	char *dir;
	char id[ENG_SPOOL_ID_LEN + 1];
	uint8_t *sk;                 /* eng_secret_new: the only key to the file */
	uint64_t size;
	bool exists;
	/* A small body kept in memory instead of a file (see net_on_data); its
	 * bytes count against net->memory_bodies until it is freed. */
	bool in_memory;
	eng_buf mem;
	size_t reserved;
};

struct srv_net {
	srv *srv;
	srv_net_options opt;
	uv_tcp_t *tcp;
	uv_pipe_t *pipe;
	char *sock_path;
	uint16_t tcp_port;
	char listeners[NET_MAX_LISTENERS][300];
	size_t n_listeners;
	unsigned listeners_open;
	SSL_CTX *ssl_ctx;
	srv_conn *conns;
	unsigned n_conns;
	net_peer *peers;
	uint64_t start_ms;
	unsigned in_flight;          /* requests alive, all connections */
	unsigned uploads;            /* net_upload alive (detached included) */
	size_t memory_bodies;        /* bytes of bodies held in memory */
	bool stopping;
	bool stop_finished;
	uv_timer_t *drain_timer;
	void (*stop_done)(void *ctx);
	void *stop_ctx;
};

/* Whose bytes a write sends: a copy in the write itself, a block it
 * frees, or a piece buffer it gives back to srv_pieces (srv_bufpool.h). */
enum wire_own { W_COPY, W_OWNED, W_POOLED };

/* srv_net.c */
void net_stop_progress(net_state *n);

/* srv_net_conn.c */
net_peer *net_peer_get(net_state *n, const uint8_t *name, size_t len);
void net_peer_put(net_state *n, net_peer **pp);
void net_on_connection(uv_stream_t *server, int status);
void net_conn_close(srv_conn *c, bool flush);

/* srv_net_read.c */
void net_read_start(srv_conn *c);
void net_read_stop(srv_conn *c);
void net_on_alloc(uv_handle_t *h, size_t hint, uv_buf_t *buf);
void net_on_read(uv_stream_t *s, ssize_t nread, const uv_buf_t *buf);
void net_on_frame_timeout(uv_timer_t *t);

/* srv_net_req.c */
void net_req_free(net_req *r);
net_req *net_req_find(srv_conn *c, uint32_t id);
net_req *net_req_new(srv_conn *c, const rpc_frame *f, const rpc_op *op);
void net_req_refuse(net_req *r, int err, bool body_follows);
void net_run_handler(net_req *r);
bool net_req_live(const net_req *r);
void net_resume_streams(srv_conn *c);

/* srv_net_upload.c */
void net_body_free(srv_body **bp);
void net_upload_drop(net_req *r);
int net_upload_start(net_req *r);
void net_on_data(srv_conn *c, const rpc_frame *f);

/* srv_net_write.c */
void net_wire_queue(srv_conn *c, const void *data, size_t len,
		    enum wire_own own);
void net_tls_flush(srv_conn *c);
void net_conn_write(srv_conn *c, const void *data, size_t len);
int net_send_frame(srv_conn *c, uint8_t kind, uint8_t flags, uint16_t opcode,
		   uint32_t id, const void *payload, size_t len);
void net_conn_send_error(srv_conn *c, uint32_t id, uint16_t opcode, int err);
void net_conn_fatal(srv_conn *c, int err);

#endif
