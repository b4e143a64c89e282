/*
 * sqlited's network core: listeners, connections, TLS, the handshake,
 * framing, pre-dispatch, body streams and flow control (docs/rpc.md). The
 * handler side of it is srv.h; this header is what main() (sqlited.c) and
 * the tests use to start and stop it.
 *
 * Threads: everything here runs on the loop thread of s->loop.
 *
 * Starting: fill a struct srv (loop, cfg, aliases, dir, events,
 * rpc_secret, tmp_dir), then srv_net_start(). It removes stale sealed
 * bodies from tmp_dir, listens on cfg->listen_address:cfg->sqlited_port
 * (unless the port is 0) and on the unix socket cfg->sqlited_socket
 * (unless NULL; a stale socket file is removed, the new one is mode
 * 0600), and loads cfg->tls_cert / tls_key if the TCP listener is on.
 *
 * Transport security: TCP peers on loopback (127.0.0.0/8, ::1) and unix
 * socket peers speak plain; any other TCP peer must do TLS (1.2 or 1.3,
 * ECDHE with AEAD suites only, no compression, no renegotiation) before
 * HELLO, and is closed at once when no certificate could be loaded.
 *
 * Stopping: srv_net_stop() closes the listeners and sets
 * s->shutting_down (new requests get EUNAVAILABLE); once every request in
 * flight has been answered (or opt.drain_timeout_ms has passed) it
 * closes every connection after its queued output, then calls done on
 * the loop. srv_net_free() after that (or instead, if never started).
 */
#ifndef SRV_NET_H
#define SRV_NET_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "srv.h"

typedef struct srv_net_options {
	unsigned handshake_timeout_ms;   /* connect -> AUTH_OK, default 10000 */
	unsigned frame_timeout_ms;       /* a started frame completes, default 30000 */
	unsigned auth_fail_delay_ms;     /* before ENOTAUTH, default 1000 */
	unsigned drain_timeout_ms;       /* stop: wait for in-flight, default 30000 */
	unsigned max_in_flight;          /* per connection, default 256 */
	unsigned max_in_flight_peer;     /* per peer name, default 1024 */
	size_t max_output_bytes;         /* stop reading above this, default 4 MiB */
	/* Request bodies up to this size (at most the initial window) are
	 * kept in memory rather than sealed into tmp_dir, while all of them
	 * together stay within the budget; defaults 256 KiB and 64 MiB. */
	size_t max_memory_body_bytes;
	size_t memory_bodies_budget;
	/* Tests: listen on an ephemeral TCP port (srv_net_tcp_port() tells
	 * which) even when cfg->sqlited_port is 0. */
	bool tcp_ephemeral;
	/* Tests: demand TLS from loopback TCP peers too. */
	bool tls_always;
	/* Tests: handlers from here instead of srv_handler() (srv_ops.c). */
	srv_handler_fn *(*handler_for)(uint16_t opcode);
} srv_net_options;

void srv_net_options_default(srv_net_options *o);

/* 0, or a negative eng_err (with a log line naming the cause). */
int srv_net_start(srv *s, const srv_net_options *opt);
void srv_net_stop(srv *s, void (*done)(void *ctx), void *ctx);
void srv_net_free(srv *s);

/* The TCP port listened on, or 0. */
uint16_t srv_net_tcp_port(const srv *s);
/* Listener i ("tcp 127.0.0.1:3456", "unix /path (0600)"), NULL past the end. */
const char *srv_net_listener(const srv *s, size_t i);
/* Milliseconds since srv_net_start. */
uint64_t srv_net_uptime_ms(const srv *s);
/* Connections open now, requests in flight now. */
unsigned srv_net_open_connections(const srv *s);
unsigned srv_net_in_flight(const srv *s);

/* Removes every file in dir (sealed bodies left by a crash). */
void srv_net_clean_tmp(const char *dir);

#endif
