/*
 * RPC peer authentication: HMAC-SHA256 challenge-response (rpc_auth.h).
 * The HMAC key is the shared secret itself (32 bytes, as RFC 2104 wants a
 * key of at least the hash length); the HMAC state holds key material and
 * is wiped after use.
 */
#include "rpc_auth.h"
#include "eng_error.h"
#include "keys.h"
#include "rpc_proto.h"

#include <sodium.h>
#include <string.h>

int rpc_auth_nonce(uint8_t nonce[RPC_NONCE_BYTES])
{
	if (eng_crypto_init() != 0)
		return ENG_EIO;
	randombytes_buf(nonce, RPC_NONCE_BYTES);
	return 0;
}

int rpc_auth_peer_name_check(const uint8_t *name, size_t len)
{
	if (len == 0 || len > RPC_PEER_NAME_MAX)
		return ENG_EINVAL;
	for (size_t i = 0; i < len; i++) {
		if (name[i] <= 0x20 || name[i] >= 0x7f)
			return ENG_EINVAL;
	}
	return 0;
}

static int proof(const char *label, const uint8_t *secret,
		 const uint8_t *server_nonce, const uint8_t *client_nonce,
		 const uint8_t *peer_name, size_t peer_name_len,
		 uint8_t *proof_r)
{
	crypto_auth_hmacsha256_state st;

	if (rpc_auth_peer_name_check(peer_name, peer_name_len) != 0) {
		memset(proof_r, 0, RPC_PROOF_BYTES);
		return ENG_EINVAL;
	}
	crypto_auth_hmacsha256_init(&st, secret, RPC_SECRET_BYTES);
	crypto_auth_hmacsha256_update(&st, (const uint8_t *)label,
				      strlen(label));
	crypto_auth_hmacsha256_update(&st, server_nonce, RPC_NONCE_BYTES);
	crypto_auth_hmacsha256_update(&st, client_nonce, RPC_NONCE_BYTES);
	crypto_auth_hmacsha256_update(&st, peer_name, peer_name_len);
	crypto_auth_hmacsha256_final(&st, proof_r);
	sodium_memzero(&st, sizeof(st));
	return 0;
}

int rpc_auth_client_proof(const uint8_t secret[RPC_SECRET_BYTES],
			  const uint8_t server_nonce[RPC_NONCE_BYTES],
			  const uint8_t client_nonce[RPC_NONCE_BYTES],
			  const uint8_t *peer_name, size_t peer_name_len,
			  uint8_t proof_r[RPC_PROOF_BYTES])
{
	return proof(RPC_AUTH_LABEL_CLIENT, secret, server_nonce, client_nonce,
		     peer_name, peer_name_len, proof_r);
}

int rpc_auth_server_proof(const uint8_t secret[RPC_SECRET_BYTES],
			  const uint8_t server_nonce[RPC_NONCE_BYTES],
			  const uint8_t client_nonce[RPC_NONCE_BYTES],
			  const uint8_t *peer_name, size_t peer_name_len,
			  uint8_t proof_r[RPC_PROOF_BYTES])
{
	return proof(RPC_AUTH_LABEL_SERVER, secret, server_nonce, client_nonce,
		     peer_name, peer_name_len, proof_r);
}

static int verify(const char *label, const uint8_t *secret,
		  const uint8_t *server_nonce, const uint8_t *client_nonce,
		  const uint8_t *peer_name, size_t peer_name_len,
		  const uint8_t *got, size_t got_len)
{
	uint8_t want[RPC_PROOF_BYTES];
	int ret;

	ret = proof(label, secret, server_nonce, client_nonce, peer_name,
		    peer_name_len, want);
	if (ret == 0 && (got_len != RPC_PROOF_BYTES ||
			 sodium_memcmp(want, got, RPC_PROOF_BYTES) != 0))
		ret = -1;
	sodium_memzero(want, sizeof(want));
	return ret == 0 ? 0 : RPC_ENOTAUTH;
}

int rpc_auth_verify_client(const uint8_t secret[RPC_SECRET_BYTES],
			   const uint8_t server_nonce[RPC_NONCE_BYTES],
			   const uint8_t client_nonce[RPC_NONCE_BYTES],
			   const uint8_t *peer_name, size_t peer_name_len,
			   const uint8_t *proof_got, size_t proof_len)
{
	return verify(RPC_AUTH_LABEL_CLIENT, secret, server_nonce,
		      client_nonce, peer_name, peer_name_len, proof_got,
		      proof_len);
}

int rpc_auth_verify_server(const uint8_t secret[RPC_SECRET_BYTES],
			   const uint8_t server_nonce[RPC_NONCE_BYTES],
			   const uint8_t client_nonce[RPC_NONCE_BYTES],
			   const uint8_t *peer_name, size_t peer_name_len,
			   const uint8_t *proof_got, size_t proof_len)
{
	return verify(RPC_AUTH_LABEL_SERVER, secret, server_nonce,
		      client_nonce, peer_name, peer_name_len, proof_got,
		      proof_len);
}
