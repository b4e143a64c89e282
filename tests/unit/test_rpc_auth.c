/*
 * Peer authentication of the RPC protocol (sqlite-server/rpc_auth.h,
 * docs/rpc.md): the HMAC proofs agree and fail on every wrong input, the
 * message layout, and the AUTH handshake frames carry no secret.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <sodium.h>

#include "eng_error.h"
#include "keys.h"
#include "rpc_auth.h"
#include "rpc_codec.h"
#include "rpc_proto.h"
#include "testutil.h"

/* ---- authentication ---- */

static void test_auth(void **state)
{
	uint8_t secret[32], other[32], sn[32], cn[32], cp[32], sp[32], x[32];
	static const uint8_t name[] = "imap@host1";
	size_t nl = sizeof(name) - 1;
	(void)state;

	assert_int_equal(eng_crypto_init(), 0);
	assert_int_equal(rpc_auth_nonce(secret), 0);
	memcpy(other, secret, 32);
	other[31] ^= 1;
	assert_int_equal(rpc_auth_nonce(sn), 0);
	assert_int_equal(rpc_auth_nonce(cn), 0);
	assert_memory_not_equal(sn, cn, 32);

	assert_int_equal(rpc_auth_client_proof(secret, sn, cn, name, nl, cp), 0);
	assert_int_equal(rpc_auth_server_proof(secret, sn, cn, name, nl, sp), 0);
	assert_memory_not_equal(cp, sp, 32);
	/* both sides agree */
	assert_int_equal(rpc_auth_verify_client(secret, sn, cn, name, nl, cp, 32), 0);
	assert_int_equal(rpc_auth_verify_server(secret, sn, cn, name, nl, sp, 32), 0);
	/* deterministic */
	assert_int_equal(rpc_auth_client_proof(secret, sn, cn, name, nl, x), 0);
	assert_memory_equal(x, cp, 32);
	/* a proof is not good for the other direction */
	assert_int_equal(rpc_auth_verify_server(secret, sn, cn, name, nl, cp, 32),
			 RPC_ENOTAUTH);
	assert_int_equal(rpc_auth_verify_client(secret, sn, cn, name, nl, sp, 32),
			 RPC_ENOTAUTH);
	/* wrong secret, nonces, peer name, proof, length */
	assert_int_equal(rpc_auth_verify_client(other, sn, cn, name, nl, cp, 32),
			 RPC_ENOTAUTH);
	assert_int_equal(rpc_auth_verify_client(secret, cn, sn, name, nl, cp, 32),
			 RPC_ENOTAUTH);
	memcpy(x, sn, 32);
	x[0] ^= 0x80;
	assert_int_equal(rpc_auth_verify_client(secret, x, cn, name, nl, cp, 32),
			 RPC_ENOTAUTH);
	assert_int_equal(rpc_auth_verify_client(secret, sn, x, name, nl, cp, 32),
			 RPC_ENOTAUTH);
	assert_int_equal(rpc_auth_verify_client(secret, sn, cn,
						(const uint8_t *)"imap@host2",
						nl, cp, 32), RPC_ENOTAUTH);
	assert_int_equal(rpc_auth_verify_client(secret, sn, cn, name, nl - 1,
						cp, 32), RPC_ENOTAUTH);
	memcpy(x, cp, 32);
	x[17] ^= 4;
	assert_int_equal(rpc_auth_verify_client(secret, sn, cn, name, nl, x, 32),
			 RPC_ENOTAUTH);
	assert_int_equal(rpc_auth_verify_client(secret, sn, cn, name, nl, cp, 31),
			 RPC_ENOTAUTH);
	assert_int_equal(rpc_auth_verify_server(other, sn, cn, name, nl, sp, 32),
			 RPC_ENOTAUTH);
	/* peer names */
	assert_int_equal(rpc_auth_peer_name_check(name, nl), 0);
	assert_int_equal(rpc_auth_peer_name_check(name, 0), ENG_EINVAL);
	assert_int_equal(rpc_auth_peer_name_check((const uint8_t *)"a b", 3),
			 ENG_EINVAL);
	assert_int_equal(rpc_auth_peer_name_check((const uint8_t *)"a\n", 2),
			 ENG_EINVAL);
	{
		uint8_t long_name[RPC_PEER_NAME_MAX + 1];

		memset(long_name, 'a', sizeof(long_name));
		assert_int_equal(rpc_auth_peer_name_check(long_name,
							  RPC_PEER_NAME_MAX), 0);
		assert_int_equal(rpc_auth_client_proof(secret, sn, cn, long_name,
						       sizeof(long_name), x),
				 ENG_EINVAL);
		for (size_t i = 0; i < 32; i++)
			assert_int_equal(x[i], 0);
		assert_int_equal(rpc_auth_verify_client(secret, sn, cn, long_name,
							sizeof(long_name), x, 32),
				 RPC_ENOTAUTH);
	}
}

/* The proof is HMAC-SHA256 over exactly the layout of docs/rpc.md: the
 * same as libsodium's one-shot HMAC of the message built by hand. */
static void test_auth_layout(void **state)
{
	uint8_t secret[32], sn[32], cn[32], got[32], want[32];
	uint8_t msg[22 + 64 + 1];
	(void)state;

	memset(secret, 0x11, 32);
	memset(sn, 0x22, 32);
	memset(cn, 0x33, 32);
	memcpy(msg, "sealmail-rpc-v1 client", 22);
	memcpy(msg + 22, sn, 32);
	memcpy(msg + 54, cn, 32);
	msg[86] = 'p';
	assert_int_equal(rpc_auth_client_proof(secret, sn, cn,
					       (const uint8_t *)"p", 1, got), 0);
	/* crypto_auth_hmacsha256 with a 32-byte key is the same HMAC. */
	crypto_auth_hmacsha256(want, msg, sizeof(msg), secret);
	assert_memory_equal(got, want, 32);
	memcpy(msg, "sealmail-rpc-v1 server", 22);
	assert_int_equal(rpc_auth_server_proof(secret, sn, cn,
					       (const uint8_t *)"p", 1, got), 0);
	crypto_auth_hmacsha256(want, msg, sizeof(msg), secret);
	assert_memory_equal(got, want, 32);
}

/* A whole handshake as frames: the secret appears in none of them. */
static void test_auth_handshake_frames(void **state)
{
	uint8_t secret[32], sn[32], cn[32], proof[32];
	static const char name[] = "mx@host1";
	eng_buf wire = ENG_BUF_INIT;
	rpc_reader *r = rpc_reader_new(NULL);
	rpc_msg msg = RPC_MSG_INIT;
	rpc_view root;
	rpc_frame f;
	size_t m, off = 0, consumed, nframes = 0;
	(void)state;

	assert_int_equal(rpc_auth_nonce(secret), 0);
	assert_int_equal(rpc_auth_nonce(sn), 0);
	assert_int_equal(rpc_auth_nonce(cn), 0);

	m = rpc_frame_begin(&wire, RPC_K_HELLO, 0, 0, 0);
	rpc_put_u64(&wire, RPC_T_VERSION, RPC_VERSION);
	rpc_put_bytes(&wire, RPC_T_NONCE, sn, 32);
	assert_int_equal(rpc_frame_end(&wire, m, NULL), 0);
	assert_int_equal(rpc_auth_client_proof(secret, sn, cn,
					       (const uint8_t *)name,
					       strlen(name), proof), 0);
	m = rpc_frame_begin(&wire, RPC_K_AUTH, 0, 0, 0);
	rpc_put_u64(&wire, RPC_T_VERSION, RPC_VERSION);
	rpc_put_bytes(&wire, RPC_T_NONCE, cn, 32);
	rpc_put_str(&wire, RPC_T_PEER_NAME, name);
	rpc_put_bytes(&wire, RPC_T_PROOF, proof, 32);
	assert_int_equal(rpc_frame_end(&wire, m, NULL), 0);
	assert_int_equal(rpc_auth_server_proof(secret, sn, cn,
					       (const uint8_t *)name,
					       strlen(name), proof), 0);
	m = rpc_frame_begin(&wire, RPC_K_AUTH_OK, 0, 0, 0);
	rpc_put_bytes(&wire, RPC_T_PROOF, proof, 32);
	assert_int_equal(rpc_frame_end(&wire, m, NULL), 0);

	/* not the secret, nor any 8 bytes of it */
	for (size_t i = 0; i + 8 <= 32; i++)
		assert_null(memmem(wire.data, wire.len, secret + i, 8));

	/* and the server side checks the AUTH frame as read off the wire */
	while (off < wire.len) {
		int ret = rpc_reader_feed(r, (const uint8_t *)wire.data + off,
					  wire.len - off, &consumed, &f);

		assert_int_equal(ret, 1);
		off += consumed;
		nframes++;
		assert_int_equal(rpc_decode(f.payload, f.payload_len, NULL, &msg,
					    &root), 0);
		if (f.kind == RPC_K_AUTH) {
			const uint8_t *nonce, *pn, *pr;
			size_t nlen, pnlen, prlen;

			assert_int_equal(rpc_get_bytes(&root, RPC_T_NONCE, &nonce,
						       &nlen), 0);
			assert_int_equal(nlen, 32);
			assert_int_equal(rpc_get_bytes(&root, RPC_T_PEER_NAME, &pn,
						       &pnlen), 0);
			assert_int_equal(rpc_get_bytes(&root, RPC_T_PROOF, &pr,
						       &prlen), 0);
			assert_int_equal(rpc_auth_verify_client(secret, sn, nonce,
								pn, pnlen, pr,
								prlen), 0);
		} else if (f.kind == RPC_K_AUTH_OK) {
			const uint8_t *pr;
			size_t prlen;

			assert_int_equal(rpc_get_bytes(&root, RPC_T_PROOF, &pr,
						       &prlen), 0);
			assert_int_equal(rpc_auth_verify_server(secret, sn, cn,
								(const uint8_t *)name,
								strlen(name), pr,
								prlen), 0);
		}
	}
	assert_int_equal(nframes, 3);
	rpc_msg_clear(&msg);
	rpc_reader_free(&r);
	eng_buf_free(&wire);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_auth),
		cmocka_unit_test(test_auth_layout),
		cmocka_unit_test(test_auth_handshake_frames),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
