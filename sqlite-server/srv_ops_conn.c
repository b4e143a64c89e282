/*
 * The connection-level opcodes: PING, STATS, SERVER_STATUS. They answer
 * from counters kept on the loop thread, so they run on the loop and
 * never wait for a database.
 */
#include "srv.h"
#include "srv_net.h"
#include "srv_private.h"
#include "srv_outbound.h"
#include "srv_ops_view.h"

#include <string.h>

srv_handler_fn srv_op_ping;
srv_handler_fn srv_op_stats;
srv_handler_fn srv_op_server_status;

static void put_stat(eng_buf *b, const char *name, uint64_t value)
{
	size_t mark = rpc_group_begin(b, RPC_T_STAT);

	rpc_put_str(b, RPC_T_NAME, name);
	rpc_put_u64(b, RPC_T_VALUE, value);
	rpc_group_end(b, mark);
}

/* PING: ECHO? -> the same bytes. */
void srv_op_ping(srv_req *req)
{
	const uint8_t *p;
	size_t len;
	int rc = rpc_get_bytes(&req->args, RPC_T_ECHO, &p, &len);

	if (rc == RPC_EFIELDTYPE) {
		srv_fail(req, rc);
		return;
	}
	if (rc == 0)
		rpc_put_bytes(&req->reply, RPC_T_ECHO, p, len);
	srv_reply(req);
}

static void put_alias_stats(srv *s, eng_buf *b)
{
	srv_alias_stats st;

	memset(&st, 0, sizeof(st));
	if (s->aliases != NULL)
		srv_aliases_stats(s->aliases, &st);
	put_stat(b, "aliases", st.aliases);
	put_stat(b, "aliases_open", st.open);
	put_stat(b, "aliases_released", st.released);
	put_stat(b, "sessions", st.sessions);
	put_stat(b, "unlocks_running", st.unlocks_running);
	put_stat(b, "unlocks_waiting", st.unlocks_waiting);
	put_stat(b, "alias_work_done", st.work_done);
	put_stat(b, "alias_releases", st.releases);
	put_stat(b, "alias_reopens", st.reopens);
	put_stat(b, "unlocks_kdf", st.kdf_unlocks);
	put_stat(b, "unlocks_without_kdf", st.fast_unlocks);
	put_stat(b, "unlocks_joined", st.unlocks_joins);
	put_stat(b, "unlocks_refused", st.unlocks_refused);
}

/* STATS: -> STAT* (connection and server counters). */
void srv_op_stats(srv_req *req)
{
	srv *s = req->srv;
	eng_buf *b = &req->reply;
	struct srv_view_stats vs;

	srv_view_cache_stats(NULL, &vs);
	put_stat(b, "connections", s->connections);
	put_stat(b, "connections_open", srv_net_open_connections(s));
	put_stat(b, "requests", s->requests);
	put_stat(b, "requests_in_flight", srv_net_in_flight(s));
	put_stat(b, "errors", s->errors);
	put_stat(b, "bytes_in", s->bytes_in);
	put_stat(b, "bytes_out", s->bytes_out);
	put_alias_stats(s, b);
	put_stat(b, "outbound_queued", srv_outbound_queued(s->outbound));
	put_stat(b, "views_unchanged", vs.unchanged);
	srv_reply(req);
}

/*
 * SERVER_STATUS: -> STAT*. Strings (the version, each listener) travel as
 * a STAT whose NAME carries "key:text" and whose VALUE is 1, since a STAT
 * holds a number.
 */
void srv_op_server_status(srv_req *req)
{
	srv *s = req->srv;
	eng_buf *b = &req->reply;
	eng_buf name = ENG_BUF_INIT;
	const char *l;

	put_stat(b, "version:" SQLITED_VERSION, 1);
	put_stat(b, "protocol_version", RPC_VERSION);
	put_stat(b, "uptime_seconds", srv_net_uptime_ms(s) / 1000);
	for (size_t i = 0; (l = srv_net_listener(s, i)) != NULL; i++) {
		eng_buf_reset(&name);
		eng_buf_printf(&name, "listener:%s", l);
		put_stat(b, name.data, 1);
	}
	put_stat(b, "redis_connected", srv_events_connected(s->events) ? 1 : 0);
	put_stat(b, "shutting_down", s->shutting_down ? 1 : 0);
	put_stat(b, "connections_open", srv_net_open_connections(s));
	put_stat(b, "requests_in_flight", srv_net_in_flight(s));
	put_alias_stats(s, b);
	put_stat(b, "outbound_queued", srv_outbound_queued(s->outbound));
	eng_buf_free(&name);
	srv_reply(req);
}
