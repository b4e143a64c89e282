/*
 * Socket address checks every process shares: the frontends' listeners
 * (net*.c), sqlited's (srv_net_conn.c: TLS unless the peer is on
 * loopback) and both RPC clients (rpc_client.c, rpc_sync.c: AUTH in the
 * clear to loopback only, the policy of rpc_tls.h). One definition, so
 * that every one of them draws the loopback line in the same place.
 */
#ifndef NET_ADDR_H
#define NET_ADDR_H

#include <stdbool.h>
#include <sys/socket.h>

/*
 * True for 127.0.0.0/8, ::1 and ::ffff:127.0.0.0/104 (IPv4 loopback
 * mapped into IPv6); false for every other address and family (a unix
 * socket's included: callers that accept those decide for themselves).
 */
bool sm_net_addr_loopback(const struct sockaddr *sa);

#endif
