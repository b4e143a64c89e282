/*
 * Socket address checks (net_addr.h). Its own file so that the RPC
 * clients and sqlited, which link it, do not pull the listener layer
 * (net*.c) out of sm_common with it. No state, any thread.
 */
#include "net_addr.h"

#include <arpa/inet.h>
#include <netinet/in.h>

bool sm_net_addr_loopback(const struct sockaddr *sa)
{
	if (sa->sa_family == AF_INET) {
		const struct sockaddr_in *in = (const struct sockaddr_in *)sa;

		return (ntohl(in->sin_addr.s_addr) >> 24) == 127;
	}
	if (sa->sa_family == AF_INET6) {
		const struct sockaddr_in6 *in6 = (const struct sockaddr_in6 *)sa;

		if (IN6_IS_ADDR_LOOPBACK(&in6->sin6_addr))
			return true;
		return IN6_IS_ADDR_V4MAPPED(&in6->sin6_addr) &&
		       in6->sin6_addr.s6_addr[12] == 127;
	}
	return false;
}
