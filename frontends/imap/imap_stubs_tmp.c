/*
 * TEMPORARY (deleted once imap_cmd_mailbox.c, imap_cmd_fetch.c and
 * imap_cmd_message.c are committed): weak stand-ins so that the daemon
 * links before its command files exist. A real definition overrides each
 * one. Every stub command answers NO [SERVERBUG], never OK.
 */
#include "imap.h"

static void stub_cmd(imap_cmd *cmd)
{
	imap_cmd_done(cmd, IMAP_NO, "SERVERBUG", "%s is not implemented yet.", cmd->name);
}

#define STUB(name) { name, stub_cmd, IMAP_CF_LOGGEDIN, false }

__attribute__((weak)) const imap_cmd_def imap_mailbox_cmds[] = {
	STUB("SELECT"), STUB("EXAMINE"), STUB("LIST"), STUB("STATUS"), STUB("APPEND"),
	{ NULL, NULL, 0, false },
};
__attribute__((weak)) const imap_cmd_def imap_fetch_cmds[] = {
	{ NULL, NULL, 0, false },
};
__attribute__((weak)) const imap_cmd_def imap_message_cmds[] = {
	{ NULL, NULL, 0, false },
};

__attribute__((weak)) bool imap_append_literal(imap_cmd *cmd, const imap_event *ev)
{
	(void)ev;
	imap_cmd_done(cmd, IMAP_NO, "SERVERBUG", "APPEND is not implemented yet.");
	return false;
}

__attribute__((weak)) size_t imap_append_data(imap_cmd *cmd, const uint8_t *data,
					      size_t len)
{
	(void)cmd;
	(void)data;
	return len;
}

__attribute__((weak)) void imap_append_literal_end(imap_cmd *cmd)
{
	(void)cmd;
}

/* imap_cmd_append.c's handler (imap_mailbox.h). */
void imap_cmd_append(imap_cmd *cmd);
__attribute__((weak)) void imap_cmd_append(imap_cmd *cmd)
{
	stub_cmd(cmd);
}
