/*
 * Peer authentication of the RPC protocol (docs/rpc.md "Authentication"):
 * the challenge-response computations, pure functions with no I/O.
 *
 * Both ends hold a 32-byte shared secret (the file named by the config's
 * rpc_secret_file). On connect the server sends a random nonce in HELLO;
 * the client answers with AUTH carrying its own nonce, its peer name and
 *
 *     client proof = HMAC-SHA256(secret, "sealmail-rpc-v1 client"
 *                                || server_nonce || client_nonce || peer_name)
 *
 * and the server, once it has checked that, proves it knows the secret too
 * with AUTH_OK carrying
 *
 *     server proof = HMAC-SHA256(secret, "sealmail-rpc-v1 server"
 *                                || server_nonce || client_nonce || peer_name)
 *
 * The labels have the same length and only the last input has a variable
 * length, so no two different inputs give the same message; the different
 * labels stop a proof from being reflected back in the other direction.
 * The secret is never sent, and both nonces make every proof good for one
 * connection only. Proofs are compared in constant time (sodium_memcmp).
 */
#ifndef RPC_AUTH_H
#define RPC_AUTH_H

#include <stddef.h>
#include <stdint.h>

#define RPC_SECRET_BYTES 32
#define RPC_NONCE_BYTES 32
#define RPC_PROOF_BYTES 32
#define RPC_PEER_NAME_MAX 255

#define RPC_AUTH_LABEL_CLIENT "sealmail-rpc-v1 client"
#define RPC_AUTH_LABEL_SERVER "sealmail-rpc-v1 server"

/* Fills nonce with random bytes (libsodium). 0 or ENG_EIO. */
int rpc_auth_nonce(uint8_t nonce[RPC_NONCE_BYTES]);

/*
 * A peer name is 1..RPC_PEER_NAME_MAX bytes of printable ASCII without
 * spaces ("imap@mx1.example.org"); it names the peer in the server's log
 * and in its access rules. 0 or ENG_EINVAL.
 */
int rpc_auth_peer_name_check(const uint8_t *name, size_t len);

/* The proofs above. ENG_EINVAL for a bad peer name (then proof_r is zeroed). */
int rpc_auth_client_proof(const uint8_t secret[RPC_SECRET_BYTES],
			  const uint8_t server_nonce[RPC_NONCE_BYTES],
			  const uint8_t client_nonce[RPC_NONCE_BYTES],
			  const uint8_t *peer_name, size_t peer_name_len,
			  uint8_t proof_r[RPC_PROOF_BYTES]);
int rpc_auth_server_proof(const uint8_t secret[RPC_SECRET_BYTES],
			  const uint8_t server_nonce[RPC_NONCE_BYTES],
			  const uint8_t client_nonce[RPC_NONCE_BYTES],
			  const uint8_t *peer_name, size_t peer_name_len,
			  uint8_t proof_r[RPC_PROOF_BYTES]);

/*
 * Server side: checks a client's proof (proof_len must be RPC_PROOF_BYTES).
 * Client side: checks the server's. 0, or RPC_ENOTAUTH for any mismatch
 * (a wrong length, name or proof all give the same answer).
 */
int rpc_auth_verify_client(const uint8_t secret[RPC_SECRET_BYTES],
			   const uint8_t server_nonce[RPC_NONCE_BYTES],
			   const uint8_t client_nonce[RPC_NONCE_BYTES],
			   const uint8_t *peer_name, size_t peer_name_len,
			   const uint8_t *proof, size_t proof_len);
int rpc_auth_verify_server(const uint8_t secret[RPC_SECRET_BYTES],
			   const uint8_t server_nonce[RPC_NONCE_BYTES],
			   const uint8_t client_nonce[RPC_NONCE_BYTES],
			   const uint8_t *peer_name, size_t peer_name_len,
			   const uint8_t *proof, size_t proof_len);

#endif
