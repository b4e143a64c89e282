/*
 * The loopback check every listener and both RPC clients share
 * (frontends/common/net_addr.h): which addresses count as loopback, in
 * both families and IPv4 mapped into IPv6, and that nothing else does.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <arpa/inet.h>
#include <netinet/in.h>
#include <string.h>
#include <sys/un.h>

#include "net_addr.h"

static bool v4(const char *addr)
{
	struct sockaddr_in in;

	memset(&in, 0, sizeof(in));
	in.sin_family = AF_INET;
	in.sin_port = htons(143);
	assert_int_equal(inet_pton(AF_INET, addr, &in.sin_addr), 1);
	return sm_net_addr_loopback((const struct sockaddr *)&in);
}

static bool v6(const char *addr)
{
	struct sockaddr_in6 in6;

	memset(&in6, 0, sizeof(in6));
	in6.sin6_family = AF_INET6;
	in6.sin6_port = htons(143);
	assert_int_equal(inet_pton(AF_INET6, addr, &in6.sin6_addr), 1);
	return sm_net_addr_loopback((const struct sockaddr *)&in6);
}

static void test_ipv4(void **state)
{
	(void)state;
	assert_true(v4("127.0.0.1"));
	assert_true(v4("127.0.0.0"));
	assert_true(v4("127.1.2.3"));
	assert_true(v4("127.255.255.255"));
	assert_false(v4("126.255.255.255"));
	assert_false(v4("128.0.0.1"));
	assert_false(v4("10.0.0.1"));
	assert_false(v4("0.0.0.0"));
	assert_false(v4("1.0.0.127"));        /* the last byte is not the net */
}

static void test_ipv6(void **state)
{
	(void)state;
	assert_true(v6("::1"));
	assert_false(v6("::"));
	assert_false(v6("::2"));
	assert_false(v6("fe80::1"));
	assert_false(v6("2001:db8::1"));
	/* IPv4 loopback mapped into IPv6 (a dual-stack listener's peer). */
	assert_true(v6("::ffff:127.0.0.1"));
	assert_true(v6("::ffff:127.9.8.7"));
	assert_false(v6("::ffff:10.0.0.1"));
	assert_false(v6("::ffff:1.0.0.127"));
	/* Only the mapped form: IPv4-compatible and NAT64 ones are not. */
	assert_false(v6("::127.0.0.1"));
	assert_false(v6("64:ff9b::127.0.0.1"));
}

static void test_other_families(void **state)
{
	struct sockaddr_un un;
	struct sockaddr_storage ss;

	(void)state;
	memset(&un, 0, sizeof(un));
	un.sun_family = AF_UNIX;
	memcpy(un.sun_path, "/run/x.sock", sizeof("/run/x.sock"));
	assert_false(sm_net_addr_loopback((const struct sockaddr *)&un));
	memset(&ss, 0, sizeof(ss));
	ss.ss_family = AF_UNSPEC;
	assert_false(sm_net_addr_loopback((const struct sockaddr *)&ss));
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_ipv4),
		cmocka_unit_test(test_ipv6),
		cmocka_unit_test(test_other_families),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
