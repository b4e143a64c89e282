/*
 * What imapd.c, the session (imap_session.c, imap_input.c, imap_sync.c)
 * and imap_cmd_auth.c share beyond imap.h
 * (the daemon's own plumbing; command files other than imap_cmd_auth.c do
 * not need it).
 */
#ifndef IMAP_DAEMON_H
#define IMAP_DAEMON_H

#include "imap.h"

/* Consecutive BAD answers before the session is closed. */
#define IMAP_MAX_BAD 10
/* Failed logins before the session is closed. */
#define IMAP_MAX_AUTH_FAILURES 3
/* The command line limit after login (before: the parser's default). */
#define IMAP_LINE_MAX_AUTH 65536
/* While idling, the view is synced at least this often (lost events). */
#define IMAP_IDLE_SYNC_MS 30000u
/* ... every this many of them while Redis events are up (5 minutes). */
#define IMAP_IDLE_EVENTS_TICKS 10u

/* ---- imapd.c ---- */

/* The last session is gone after imap_sessions_shutdown. */
void imapd_sessions_gone(imapd *d);
/* Calls imap_sessions_kick(d) from a later loop turn. */
void imapd_kick_later(imapd *d);
/* A command ended or a session closed: the heap is trimmed once none has
 * for IMAP_QUIET_MS (imapd.c). */
void imapd_activity(imapd *d);

/* ---- imap_cmd_auth.c ---- */

/* Every few idle ticks: "* OK Still here" to idling sessions (NAT). */
void imap_idle_keepalive(imapd *d);

/* ---- the session: imap_session.c, imap_input.c, imap_sync.c ---- */

/* Offers held inflated input (COMPRESS) again: for each session that
 * asked, from imapd_kick_later's loop turn. */
void imap_sessions_kick(imapd *d);
/* Every IMAP_IDLE_SYNC_MS: idling sessions sync (imapd.c's timer). */
void imap_sessions_idle_tick(imapd *d);
/* The Redis subscriber came back: every session's view may be stale. */
void imap_sessions_all_dirty(imapd *d);

/* The CAPABILITY list for this session's state, without "* CAPABILITY"
 * and without a line end. */
void imap_capability(const imap_session *s, eng_buf *b);

/*
 * The running command reads raw lines (AUTHENTICATE's responses, IDLE's
 * DONE): the session resumes input, the parser is told to expect a line,
 * and fn gets it (line == NULL and len == 0 when the line was refused:
 * too long or holding a NUL). fn calls imap_cmd_read_line again for
 * another line, or imap_cmd_done.
 */
typedef void imap_line_fn(imap_cmd *cmd, const char *line, size_t len);
void imap_cmd_read_line(imap_cmd *cmd, imap_line_fn *fn);

/* Runs after(s) right after the command's tagged line is written (by
 * imap_cmd_done, maybe after a sync): STARTTLS and COMPRESS switch layers
 * there. Call before imap_cmd_done. */
void imap_cmd_set_after(imap_cmd *cmd, void (*after)(imap_session *s));
/* The error of the command's last imap_sync (0: it worked or had nothing
 * to do); NOOP answers NO [UNAVAILABLE] when its sync could not run. */
int imap_cmd_sync_error(const imap_cmd *cmd);

/* After the tagged OK of STARTTLS (written first): net switches to TLS
 * and discards the rest of the plaintext input; the parser is reset. */
void imap_session_starttls(imap_session *s);
/* After the tagged OK of COMPRESS DEFLATE: both directions deflate from
 * the next byte. ENG_EEXIST if it is already on. */
int imap_session_compress(imap_session *s);

/* IDLE: the session is idling (updates are written at once) or not. */
void imap_session_set_idling(imap_session *s, bool on);
/* Syncs now (if the view is dirty and no sync runs) and writes the
 * updates; for IDLE. */
void imap_session_sync_now(imap_session *s);

/* Logged in: switches the limits, subscribes to the alias's events. */
void imap_session_logged_in(imap_session *s, const uint8_t *handle,
			    size_t handle_len, const char *alias_id,
			    const char *user);
/* sqlited said ENOSESSION for s's handle: the process's shared session of
 * the alias is not given to new logins any more. */
void imap_session_handle_dead(imap_session *s);
/* Closes the connection after "* BYE text" (the session stays until its
 * RPC callbacks ran). */
void imap_session_bye(imap_session *s, const char *text);

#endif
