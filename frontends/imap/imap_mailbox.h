/*
 * What the mailbox command files share (imap_cmd_mailbox.c: the table and
 * CREATE ... GETQUOTAROOT; imap_cmd_select.c: SELECT, EXAMINE and the view;
 * imap_cmd_list.c: LIST, LSUB; imap_cmd_append.c: APPEND): sqlited's
 * MAILBOX_INFO read into a struct, STATUS items, the special-use
 * attributes, and the small RPC plumbing every handler uses.
 */
#ifndef IMAP_MAILBOX_H
#define IMAP_MAILBOX_H

#include "imap.h"
#include "rpc_codec.h"

/* One MAILBOX_INFO group of sqlited (docs/rpc.md). */
typedef struct imap_mbx_info {
	char *name;                  /* UTF-8 */
	uint64_t mailbox_id;         /* MAILBOX_ID, 0 = none (older sqlited) */
	uint32_t uidvalidity;
	uint32_t uidnext;
	uint64_t highestmodseq;
	uint32_t special_use;        /* enum eng_special_use bits */
	bool subscribed;
	bool noselect;
	uint32_t messages;
	uint32_t unseen;
	uint32_t deleted;
	uint64_t size;
} imap_mbx_info;

/* Reads a MAILBOX_INFO group; ENG_EMALFORMED if a required field is
 * missing. Clear with imap_mbx_info_clear. */
int imap_mbx_info_read(const rpc_view *g, imap_mbx_info *info);
void imap_mbx_info_clear(imap_mbx_info *info);

/* STATUS items, in the order the client asked them. */
enum imap_status_item {
	IMAP_ST_MESSAGES = 1, IMAP_ST_RECENT, IMAP_ST_UIDNEXT,
	IMAP_ST_UIDVALIDITY, IMAP_ST_UNSEEN, IMAP_ST_DELETED, IMAP_ST_SIZE,
	IMAP_ST_HIGHESTMODSEQ, IMAP_ST_APPENDLIMIT, IMAP_ST_MAILBOXID,
};
#define IMAP_ST_MAX 16

/* Parses "(MESSAGES UNSEEN ...)"; ENG_EINVAL for an unknown item, an
 * empty list or too many. HIGHESTMODSEQ enables CONDSTORE (RFC 7162 3.1). */
int imap_status_items_parse(imap_session *s, const imap_arg *list,
			    uint8_t *items, size_t *n_r);
/* RFC 8474 MAILBOXID "M<row id>-<uidvalidity>" into out (at least
 * IMAP_MAILBOXID_MAX bytes); false (out = "") when sqlited gave no row id.
 * RENAME keeps both numbers; a re-created mailbox gets a new UIDVALIDITY,
 * so an id never names another mailbox even if a row id is reused. */
#define IMAP_MAILBOXID_MAX 40
bool imap_mailboxid_format(char *out, uint64_t mailbox_id,
			   uint32_t uidvalidity);
/* Writes "* STATUS <name> (...)\r\n" to b; MAILBOXID is left out when
 * there is none. */
void imap_status_put(const imap_session *s, eng_buf *b,
		     const imap_mbx_info *info, const uint8_t *items, size_t n);

/* The special-use attributes (RFC 6154) and their SPECIAL_USE bits. */
typedef struct imap_special_use {
	const char *name;            /* "\\Drafts" */
	uint32_t bit;
} imap_special_use;
extern const imap_special_use imap_special_uses[];
extern const size_t imap_n_special_uses;

/* Starts an RPC for a command; when it cannot be sent, release(cmd) is
 * called (may be NULL) and the command is answered for the error. */
bool imap_mbx_call(imap_cmd *cmd, uint16_t opcode, const eng_buf *payload,
		   imap_rpc_cb *cb, void (*release)(imap_cmd *cmd));

/* The mailbox name argument, or NULL after answering NO (an invalid name). */
char *imap_mbx_name_arg(imap_cmd *cmd, const imap_arg *a);

/* Handlers of the other files, in imap_cmd_mailbox.c's table. */
void imap_cmd_select(imap_cmd *cmd);
void imap_cmd_list(imap_cmd *cmd);
void imap_cmd_lsub(imap_cmd *cmd);
void imap_cmd_append(imap_cmd *cmd);

#endif
