/*
 * What the directory opcodes' files share (private to sqlited).
 *
 * srv_ops_dir.c     the common helpers, DIR_LOOKUP, DOMAIN_ADD/LIST/REMOVE
 * srv_ops_deliver.c DELIVER (spool, idempotency records, forwarding)
 * srv_ops_alias.c   ALIAS_ADD, ALIAS_LIST, ALIAS_REMOVE
 * srv_ops_passwd.c  ALIAS_PASSWD, APP_PASSWORD_ADD/REVOKE (keyring changes)
 *
 * Threads. Handlers parse their fields on the loop and copy what the pool
 * needs; every directory call, Argon2id run and fsync happens on the pool
 * (srv_blocking), or on the alias's own queue when it needs the alias's
 * open state (MK for APP_PASSWORD_ADD, the store for the drain and for
 * ALIAS_REMOVE's close). The answer is always sent from a done callback on
 * the loop.
 *
 * Passwords. Generated passwords and the passwords of requests live in
 * secret memory (eng_secret_new) and are wiped when the request is done;
 * they never reach the log.
 */
#ifndef SM_SRV_OPS_DIR_H
#define SM_SRV_OPS_DIR_H

#include "srv.h"

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* Generated passwords: 24 characters of 62, about 143 bits. */
#define GEN_PASSWORD_LEN 24
/* Passwords chosen by a person, for ALIAS_ADD and ALIAS_PASSWD. */
#define MIN_PASSWORD_LEN 8

/* A required or optional string field (RPC_EMISSING when required). */
int srv_dir_arg_str(srv_req *req, uint32_t tag, bool required, char **s_r);
/* A password field copied into secret memory (1..ENG_PASSWORD_MAX). */
int srv_dir_arg_password(srv_req *req, uint32_t tag, bool required,
			 uint8_t **pw_r, size_t *len_r);
/* GEN_PASSWORD_LEN letters and digits into secret memory. */
void srv_dir_gen_password(uint8_t **pw_r, size_t *len_r);
/* Sends the current part when it is large; *fields counts its fields. */
void srv_dir_part_maybe_flush(srv_req *req, unsigned *fields);
/* data_dir/delivered/<alias id>[/<key hash>] (an idempotency record). */
char *srv_dir_key_path(const char *data_dir, const char *alias_id,
		       const uint8_t *key, size_t key_len);

#endif
