/*
 * The dispatch table: opcode -> handler. The handlers live in one file per
 * family (srv_ops_conn.c: PING, STATS, SERVER_STATUS; srv_ops_session.c:
 * UNLOCK, LOCK; srv_ops_mailbox.c, srv_ops_message.c, srv_ops_body.c,
 * srv_ops_search.c, srv_ops_view.c:
 * the mailbox opcodes; srv_ops_dir.c: DIR_LOOKUP, DELIVER and the admin
 * opcodes; srv_ops_backup.c: BACKUP_PREPARE, RESTORE_ALIAS). The pre-dispatch checks (opcode known, session, limits, body)
 * are the core's, in srv_net_read.c, driven by rpc_op_lookup()'s flags.
 *
 * The handlers are declared weak so that a family that is not linked in
 * leaves its opcodes answering EOPCODE instead of failing the build.
 */
#include "srv.h"

#include <stddef.h>

srv_handler_fn srv_op_ping __attribute__((weak));
srv_handler_fn srv_op_stats __attribute__((weak));
srv_handler_fn srv_op_unlock __attribute__((weak));
srv_handler_fn srv_op_lock __attribute__((weak));
srv_handler_fn srv_op_mailbox_list __attribute__((weak));
srv_handler_fn srv_op_mailbox_create __attribute__((weak));
srv_handler_fn srv_op_mailbox_rename __attribute__((weak));
srv_handler_fn srv_op_mailbox_delete __attribute__((weak));
srv_handler_fn srv_op_mailbox_subscribe __attribute__((weak));
srv_handler_fn srv_op_mailbox_status __attribute__((weak));
srv_handler_fn srv_op_append __attribute__((weak));
srv_handler_fn srv_op_fetch_meta __attribute__((weak));
srv_handler_fn srv_op_fetch_body __attribute__((weak));
srv_handler_fn srv_op_fetch_bodies __attribute__((weak));
srv_handler_fn srv_op_store __attribute__((weak));
srv_handler_fn srv_op_copy __attribute__((weak));
srv_handler_fn srv_op_move __attribute__((weak));
srv_handler_fn srv_op_expunge __attribute__((weak));
srv_handler_fn srv_op_search __attribute__((weak));
srv_handler_fn srv_op_sort __attribute__((weak));
srv_handler_fn srv_op_thread __attribute__((weak));
srv_handler_fn srv_op_changes __attribute__((weak));
srv_handler_fn srv_op_quota_get __attribute__((weak));
srv_handler_fn srv_op_mailbox_view __attribute__((weak));
srv_handler_fn srv_op_deliver __attribute__((weak));
srv_handler_fn srv_op_dir_lookup __attribute__((weak));
srv_handler_fn srv_op_domain_add __attribute__((weak));
srv_handler_fn srv_op_domain_list __attribute__((weak));
srv_handler_fn srv_op_domain_remove __attribute__((weak));
srv_handler_fn srv_op_alias_add __attribute__((weak));
srv_handler_fn srv_op_alias_list __attribute__((weak));
srv_handler_fn srv_op_alias_remove __attribute__((weak));
srv_handler_fn srv_op_alias_passwd __attribute__((weak));
srv_handler_fn srv_op_app_password_add __attribute__((weak));
srv_handler_fn srv_op_app_password_revoke __attribute__((weak));
srv_handler_fn srv_op_server_status __attribute__((weak));
srv_handler_fn srv_op_backup_prepare __attribute__((weak));
srv_handler_fn srv_op_restore_alias __attribute__((weak));

static const struct {
	uint16_t opcode;
	srv_handler_fn *handler;
} handlers[] = {
	{ RPC_OP_PING, srv_op_ping },
	{ RPC_OP_STATS, srv_op_stats },
	{ RPC_OP_UNLOCK, srv_op_unlock },
	{ RPC_OP_LOCK, srv_op_lock },
	{ RPC_OP_MAILBOX_LIST, srv_op_mailbox_list },
	{ RPC_OP_MAILBOX_CREATE, srv_op_mailbox_create },
	{ RPC_OP_MAILBOX_RENAME, srv_op_mailbox_rename },
	{ RPC_OP_MAILBOX_DELETE, srv_op_mailbox_delete },
	{ RPC_OP_MAILBOX_SUBSCRIBE, srv_op_mailbox_subscribe },
	{ RPC_OP_MAILBOX_STATUS, srv_op_mailbox_status },
	{ RPC_OP_APPEND, srv_op_append },
	{ RPC_OP_FETCH_META, srv_op_fetch_meta },
	{ RPC_OP_FETCH_BODY, srv_op_fetch_body },
	{ RPC_OP_STORE, srv_op_store },
	{ RPC_OP_COPY, srv_op_copy },
	{ RPC_OP_MOVE, srv_op_move },
	{ RPC_OP_EXPUNGE, srv_op_expunge },
	{ RPC_OP_SEARCH, srv_op_search },
	{ RPC_OP_SORT, srv_op_sort },
	{ RPC_OP_THREAD, srv_op_thread },
	{ RPC_OP_CHANGES, srv_op_changes },
	{ RPC_OP_QUOTA_GET, srv_op_quota_get },
	{ RPC_OP_MAILBOX_VIEW, srv_op_mailbox_view },
	{ RPC_OP_FETCH_BODIES, srv_op_fetch_bodies },
	{ RPC_OP_DELIVER, srv_op_deliver },
	{ RPC_OP_DIR_LOOKUP, srv_op_dir_lookup },
	{ RPC_OP_DOMAIN_ADD, srv_op_domain_add },
	{ RPC_OP_DOMAIN_LIST, srv_op_domain_list },
	{ RPC_OP_DOMAIN_REMOVE, srv_op_domain_remove },
	{ RPC_OP_ALIAS_ADD, srv_op_alias_add },
	{ RPC_OP_ALIAS_LIST, srv_op_alias_list },
	{ RPC_OP_ALIAS_REMOVE, srv_op_alias_remove },
	{ RPC_OP_ALIAS_PASSWD, srv_op_alias_passwd },
	{ RPC_OP_APP_PASSWORD_ADD, srv_op_app_password_add },
	{ RPC_OP_APP_PASSWORD_REVOKE, srv_op_app_password_revoke },
	{ RPC_OP_SERVER_STATUS, srv_op_server_status },
	{ RPC_OP_BACKUP_PREPARE, srv_op_backup_prepare },
	{ RPC_OP_RESTORE_ALIAS, srv_op_restore_alias },
};

srv_handler_fn *srv_handler(uint16_t opcode)
{
	for (size_t i = 0; i < sizeof(handlers) / sizeof(handlers[0]); i++) {
		if (handlers[i].opcode == opcode)
			return handlers[i].handler;
	}
	return NULL;
}
