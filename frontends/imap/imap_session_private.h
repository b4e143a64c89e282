/*
 * What the three files of one IMAP connection share, and only they:
 * imap_session.c (output, lifetime, RPC calls, the command lifecycle,
 * STARTTLS/COMPRESS set-up, the per-alias sqlited session, the net
 * callbacks), imap_input.c (feeding the parser, dispatch, APPEND
 * streaming) and imap_sync.c (untagged updates, coalesced IDLE syncs).
 * Commands see an imap_session and an imap_cmd (imap.h); the session_full
 * and cmd_full around them are the session layer's. All of it runs on the
 * loop thread.
 */
#ifndef IMAP_SESSION_PRIVATE_H
#define IMAP_SESSION_PRIVATE_H

#include "imap_daemon.h"

typedef struct session_full session_full;

/* One sqlited session per alias per process, shared by the connections of
 * that alias while any uses it (imap_session_logged_in). */
typedef struct alias_sess {
	struct alias_sess *next;
	char alias_id[sizeof(((imap_session *)0)->alias_id)];
	uint8_t handle[sizeof(((imap_session *)0)->handle)];
	size_t handle_len;
	unsigned users;
	bool dead;                   /* ENOSESSION seen: not for new logins */
} alias_sess;

/* A command as the session layer keeps it. */
typedef struct cmd_full {
	imap_cmd cmd;                /* first: imap_cmd * converts */
	unsigned rpcs;               /* RPC callbacks still to come */
	bool done_pending;           /* imap_cmd_done was called */
	bool finishing;              /* the tagged line is on its way */
	enum imap_result r;
	char *code;
	char *text;
	imap_cmd_fn *fn;             /* the handler (APPEND: called again) */
	imap_line_fn *line_fn;       /* reading a raw line */
	void (*after)(imap_session *s);
	/* imap_sync */
	bool syncing;
	bool resync;                 /* an event came during an IDLE sync */
	bool allow_expunge;
	void (*sync_done)(imap_cmd *cmd);
	int sync_err;
} cmd_full;

struct session_full {
	imap_session s;              /* first: imap_session * converts */
	bool streaming;              /* inside a streamed APPEND */
	bool discard_owed;           /* the APPEND ended: drop append_owed */
	bool owed_hold;              /* until imap_append_resume */
	uint64_t append_owed;        /* literal bytes reported but not taken */
	bool mode_switch;            /* STARTTLS / COMPRESS: stop this feed */
	bool kick_pending;
	bool flush_pending;          /* deflated output waits for a flush */
	session_full *kick_next;
	alias_sess *as;              /* logged in: the shared sqlited session */
};

static inline session_full *full(imap_session *s)
{
	return (session_full *)s;
}

static inline cmd_full *cfull(imap_cmd *cmd)
{
	return (cmd_full *)cmd;
}

/* imap_session.c */
void kick(session_full *f);
void unref(imap_session *s);
void resume_input(imap_session *s);
void continue_done(cmd_full *cf);

/* imap_input.c */
void feed_inflated(session_full *f);
size_t on_data(sm_net_conn *c, void *ctx, const uint8_t *p, size_t len);

/* imap_sync.c */
void groups_flush(void);

#endif
