/*
 * What the IMAP daemon's files share (private to frontends/imap/):
 *
 *   imapd.c            the daemon: config, listeners, the sqlited client,
 *                      the Redis subscriber (events for IDLE), signals
 *   imap_session.c     one connection: output, lifetime, RPC calls, the
 *                      command lifecycle, STARTTLS/COMPRESS set-up, the
 *                      per-alias sqlited session, the net callbacks
 *   imap_input.c       feeding the parser (COMPRESS's inflate side), the
 *                      dispatch, APPEND streaming
 *   imap_sync.c        untagged updates (imap_sync), coalesced IDLE syncs,
 *                      IDLE's plumbing (the three session files share
 *                      imap_session_private.h)
 *   imap_util.c        shared helpers: sequence sets, mailbox names,
 *                      string and flag writers, RPC error mapping
 *   imap_cmd_auth.c    CAPABILITY NOOP LOGOUT STARTTLS LOGIN AUTHENTICATE
 *                      ENABLE ID NAMESPACE IDLE COMPRESS
 *   imap_cmd_mailbox.c CREATE DELETE RENAME SUBSCRIBE UNSUBSCRIBE STATUS
 *                      UNSELECT CLOSE CHECK GETQUOTA GETQUOTAROOT and the
 *                      table of the mailbox commands (imap_mailbox.h)
 *   imap_cmd_select.c  SELECT EXAMINE, the view (sequence map)
 *   imap_cmd_list.c    LIST LSUB
 *   imap_cmd_append.c  APPEND
 *   imap_cmd_fetch.c   FETCH, UID FETCH (+ BODYSTRUCTURE, BINARY, PREVIEW):
 *                      the command; imap_fetch_meta.c its metadata,
 *                      imap_fetch_body.c its body items
 *                      (imap_fetch_private.h)
 *   imap_cmd_message.c STORE COPY MOVE EXPUNGE SEARCH SORT THREAD and the
 *                      UID forms
 *
 * The model. A session runs one command at a time: when a command starts,
 * the session holds its input (sm_net_hold), so pipelined commands wait in
 * the buffer, and the parser's memory (the command's arguments) stays valid
 * until the command is done. A handler parses its arguments, makes RPC
 * calls to sqlited, writes untagged responses, and finally calls
 * imap_cmd_done() exactly once. imap_cmd_done writes the pending untagged
 * updates when the command allows them (imap_sync), then the tagged
 * answer, frees the command, and resumes input.
 *
 * The session is stateless towards sqlited apart from its session handle:
 * the selected mailbox's sequence-number map (UIDs in order), UIDVALIDITY,
 * UIDNEXT and HIGHESTMODSEQ are the session's view, brought up to date by
 * imap_sync() with RPC CHANGES when something changed (a Redis event for
 * the alias, or the session's own write) and always on NOOP, CHECK, IDLE.
 */
#ifndef IMAP_H
#define IMAP_H

#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <uv.h>

#include "buf.h"
#include "config.h"
#include "imap_parser.h"
#include "net.h"
#include "rpc_client.h"
#include "store.h"

typedef struct imapd imapd;
typedef struct imap_session imap_session;
typedef struct imap_cmd imap_cmd;
typedef struct imap_events imap_events;

/* ---- The daemon (imapd.c) ---- */

#define IMAP_LISTENERS 3

struct imapd {
	uv_loop_t *loop;
	sm_config *cfg;
	rpc_client *rpc;
	sm_net_tls *tls;             /* NULL when no certificate loaded */
	sm_net_listener *listeners[IMAP_LISTENERS]; /* imaps, imap, imaps_alt */
	imap_session *sessions;      /* every live session (doubly linked) */
	unsigned n_sessions;
	imap_events *events;         /* the Redis subscriber; may be down */
	bool stopping;
	uint64_t append_max;         /* APPENDLIMIT = cfg max_message_bytes */
	const char *hostname;        /* for greetings */
};

/* Listener callbacks (imap_session.c). */
extern const sm_net_callbacks imap_net_callbacks;

/* Sessions subscribe to their alias's channel after login and unsubscribe
 * when they end (imapd.c; reference counted per alias id). An event for an
 * alias reaches imap_session_event() of each of its sessions. */
void imap_events_subscribe(imapd *d, const char *alias_id);
void imap_events_unsubscribe(imapd *d, const char *alias_id);

/* ---- The session (imap_session.c) ---- */

enum imap_state {
	IMAP_S_NOTAUTH = 0,
	IMAP_S_AUTH = 1,
	IMAP_S_SELECTED = 2,
	IMAP_S_LOGOUT = 3,
};

/* ENABLEd extensions (RFC 5161). CONDSTORE is also enabled implicitly by
 * the first CONDSTORE-using command (RFC 7162 3.1). */
enum imap_enabled {
	IMAP_EN_CONDSTORE = 1u << 0,
	IMAP_EN_QRESYNC = 1u << 1,     /* implies CONDSTORE */
	IMAP_EN_UTF8 = 1u << 2,        /* UTF8=ACCEPT */
	IMAP_EN_REV2 = 1u << 3,        /* IMAP4rev2 */
};

/* Event kinds from sqlited (docs/rpc.md, Events). */
enum imap_evt_kind {
	IMAP_EVT_EXISTS = 1, IMAP_EVT_FLAGS = 2, IMAP_EVT_EXPUNGE = 3,
	IMAP_EVT_MAILBOX = 4,
};

/* The selected mailbox: the session's view of it. */
typedef struct imap_selected {
	char *name;                  /* UTF-8, as sqlited names it */
	bool readonly;               /* EXAMINE */
	uint32_t uidvalidity;
	uint32_t uidnext;
	uint64_t highestmodseq;      /* what this session has reported */
	/* uids[i] = UID of sequence number i+1. The view keeps no flags:
	 * every FLAGS the session reports, and every SEARCH on them, comes
	 * from sqlited's answer to that command. */
	uint32_t *uids;
	size_t n;
	size_t cap;
	/* The MAILBOX_INFO row uids were expanded from, while the view is
	 * still exactly that state (held.valid): whatever changes it clears
	 * it, a flag change too (first_unseen depends on the flags). A
	 * re-SELECT sends it as VIEW_HELD and keeps uids if sqlited answers
	 * that the view is unchanged (imap_cmd_select.c). */
	struct imap_view_held {
		bool valid;
		uint64_t mailbox_id, highestmodseq;
		uint32_t uidvalidity, uidnext, messages;
		size_t first_unseen;     /* [UNSEEN n]: 0 if all are \Seen */
	} held;
	bool dirty;                  /* something changed since the last sync */
	/* SEARCHRES (RFC 5182): the saved result "$", ascending UIDs. */
	uint32_t *saved;
	size_t n_saved;
	bool has_saved;
} imap_selected;

struct imap_session {
	imapd *d;
	sm_net_conn *c;              /* NULL once the connection is gone */
	imap_parser *parser;
	imap_session *prev, *next;   /* imapd's list */
	enum imap_state state;
	uint32_t enabled;            /* enum imap_enabled bits */
	/* Logged in: the sqlited session handle and the alias's event id. */
	uint8_t handle[64];
	size_t handle_len;
	char alias_id[72];
	char *user;                  /* the login name as given (for the log) */
	imap_selected *sel;          /* NULL unless state == SELECTED */
	imap_cmd *cmd;               /* the running command, or NULL */
	unsigned refs;               /* RPC calls in flight + the connection */
	unsigned bad_count;          /* consecutive BAD answers */
	unsigned auth_failures;
	bool idling;                 /* inside IDLE: updates are written at once */
	/* COMPRESS=DEFLATE (imap_session.c): z_stream pointers, NULL when off. */
	void *zin;
	void *zout;
	eng_buf inflated;            /* inflated input not yet parsed */
};

/*
 * Output. Everything the session writes goes through these (they deflate
 * under COMPRESS). imap_write_buf writes b's bytes and resets b.
 */
void imap_write(imap_session *s, const void *data, size_t len);
void imap_write_buf(imap_session *s, eng_buf *b);
/* imap_write for bytes the caller reuses at once (a streamed body): on a
 * plaintext connection without COMPRESS they go to the socket from where
 * they are when it takes them (sm_net_write_direct). */
void imap_write_direct(imap_session *s, const void *data, size_t len);
void imap_printf(imap_session *s, const char *fmt, ...)
	__attribute__((format(printf, 2, 3)));
/* The output is full: a streaming writer (FETCH of big bodies) waits for
 * imap_session's drain callback (cmd->on_drained) before writing more. */
bool imap_write_blocked(const imap_session *s);

/* An event from sqlited for this session's alias (imapd.c calls it). Marks
 * the selected mailbox dirty when it is concerned; inside IDLE it syncs
 * and writes the updates at once. */
void imap_session_event(imap_session *s, enum imap_evt_kind kind,
			const char *mailbox, uint32_t uid, uint64_t modseq);

/* Ends every session at shutdown: "* BYE" and close. */
void imap_sessions_shutdown(imapd *d);

/* ---- Commands ---- */

enum imap_result { IMAP_OK = 0, IMAP_NO = 1, IMAP_BAD = 2 };

/* Which states a command is allowed in, and how it syncs (the RFC 3501
 * 7.4.1 rule: no EXPUNGE during FETCH, STORE, SEARCH by sequence number). */
enum imap_cmd_flags {
	IMAP_CF_NOTAUTH = 1u << 0,
	IMAP_CF_AUTH = 1u << 1,
	IMAP_CF_SELECTED = 1u << 2,
	IMAP_CF_ANY = IMAP_CF_NOTAUTH | IMAP_CF_AUTH | IMAP_CF_SELECTED,
	IMAP_CF_LOGGEDIN = IMAP_CF_AUTH | IMAP_CF_SELECTED,
	/* Sequence numbers in the arguments or answer: updates at the end may
	 * not include EXPUNGE (they are held back to the next command that
	 * allows them); the UID forms do not set this. */
	IMAP_CF_NO_EXPUNGE = 1u << 3,
	/* Bring the view up to date before the tagged answer even without an
	 * event (NOOP, CHECK, IDLE's end, SELECT's own answer aside). */
	IMAP_CF_FORCE_SYNC = 1u << 4,
};

struct imap_cmd {
	imap_session *s;
	char *tag;                   /* copied */
	const char *name;            /* "FETCH"; for UID commands "FETCH"
	                                with uid = true */
	bool uid;
	uint32_t flags;              /* enum imap_cmd_flags of the command */
	const imap_arg *args;        /* valid until imap_cmd_done */
	size_t n_args;
	/* For the handler. */
	void *op;
	/* The request id of the last accepted imap_rpc_call (set by it
	 * before it returns 0), for rpc_client_source_ready and
	 * rpc_client_cancel (APPEND relays its upload with a source). */
	uint32_t rpc_id;
	/* Optional: called when the session's output drained (streaming). */
	void (*on_drained)(imap_cmd *cmd);
	/* Optional: the connection went away while the command ran; free op
	 * (RPC callbacks still come, with RPC_ECANCELLED). */
	void (*on_abort)(imap_cmd *cmd);
	bool aborted;
};

typedef void imap_cmd_fn(imap_cmd *cmd);

typedef struct imap_cmd_def {
	const char *name;            /* upper case */
	imap_cmd_fn *fn;
	uint32_t flags;              /* enum imap_cmd_flags */
	bool uid_ok;                 /* "UID <name>" exists */
} imap_cmd_def;

/* The tables of each command file, concatenated by imap_input.c's
 * dispatcher (name lookup, case-insensitive). Each ends with a NULL name. */
extern const imap_cmd_def imap_auth_cmds[];
extern const imap_cmd_def imap_mailbox_cmds[];
extern const imap_cmd_def imap_fetch_cmds[];
extern const imap_cmd_def imap_message_cmds[];

/*
 * Finishes the command: pending untagged updates (unless the connection is
 * gone), then "<tag> OK|NO|BAD [code] text" (code NULL: none; text is a
 * printf format), then frees cmd and resumes input. Exactly once per
 * command; cmd is invalid after it.
 */
void imap_cmd_done(imap_cmd *cmd, enum imap_result r, const char *code,
		   const char *fmt, ...) __attribute__((format(printf, 4, 5)));
/* The tagged answer for an RPC error (docs/rpc.md, Errors):
 * ENOSPC/EIO/EBUSY/EUNAVAILABLE/ETIMEOUT -> NO [UNAVAILABLE],
 * EQUOTA -> NO [OVERQUOTA], ENOTFOUND -> NO [NONEXISTENT],
 * EEXIST -> NO [ALREADYEXISTS], EPERM -> NO [NOPERM],
 * EMODIFIED -> NO (the mailbox changed), ELIMIT -> NO [LIMIT],
 * EINVAL/EMALFORMED -> BAD, ENOSESSION -> "* BYE" and close (the session
 * expired or the password changed), anything else NO [SERVERBUG]. what is
 * the sentence's subject ("SELECT"). Never a detail from sqlited. */
void imap_cmd_fail_rpc(imap_cmd *cmd, int err, const char *what);

/*
 * RPC to sqlited on behalf of a command. imap_rpc_begin resets payload and
 * puts the session handle (T_SESSION) in it; the caller adds fields and
 * calls imap_rpc_call. cb gets the answer (resp valid during the call
 * only); if the connection went away meanwhile, err is RPC_ECANCELLED and
 * the handler only frees its state (cmd->aborted is true; do not call
 * imap_cmd_done then). The session stays allocated until every callback
 * has run. opts may be NULL (bodies, downloads: rpc_client_opts). On
 * success (0) cmd->rpc_id is the request's id.
 */
typedef void imap_rpc_cb(imap_cmd *cmd, int err, const rpc_view *resp);
void imap_rpc_begin(imap_session *s, eng_buf *payload);
int imap_rpc_call(imap_cmd *cmd, uint16_t opcode, const eng_buf *payload,
		  const rpc_client_opts *opts, imap_rpc_cb *cb);

/*
 * Brings the selected mailbox's view up to date (RPC CHANGES since
 * sel->highestmodseq) and writes the untagged updates: EXPUNGE n (or
 * VANISHED uids under QRESYNC) unless allow_expunge is false, EXISTS for
 * new messages, FETCH n (FLAGS (...) UID u [MODSEQ (m)]) for changed flags.
 * done(cmd) is called afterwards (also when nothing had to be done, or on
 * an RPC error, which is logged and ignored: the view stays as it was).
 */
void imap_sync(imap_cmd *cmd, bool allow_expunge, void (*done)(imap_cmd *cmd));
/* After this session's STORE (resp, whose changed messages got MODSEQs
 * lo..hi, 0 if none): marks the view current up to hi when nothing else
 * can have changed the mailbox meanwhile, so that the next sync does not
 * report the session's own change again (imap_sync.c). */
void imap_view_advance(imap_selected *sel, const rpc_view *resp,
		       uint64_t lo, uint64_t hi);

/* Sets the selected mailbox (takes sel) / leaves it (state back to AUTH). */
void imap_select_set(imap_session *s, imap_selected *sel);
void imap_select_clear(imap_session *s);
void imap_selected_free(imap_selected *sel);
/* imap_cmd_select.c: takes a view's uids array (cap entries) for a later
 * SELECT to reuse, or frees it. */
void imap_view_uids_put(uint32_t *uids, size_t cap);

/*
 * APPEND streaming (imap_cmd_append.c; called by imap_input.c). The
 * message literals of APPEND are never buffered whole: on the parser's
 * IMAP_EV_LITERAL the session creates the APPEND command (the first time:
 * tag, name "APPEND", args = what was parsed so far; cmd->args is updated
 * for each further literal of a MULTIAPPEND) and calls
 * imap_append_literal(); it returns true to accept (the session writes
 * "+ OK" for a synchronising literal) or false to refuse (the session calls
 * imap_parser_skip_command(); the handler has already decided the tagged
 * answer and calls imap_cmd_done() from imap_append_command() or at once).
 * Then imap_append_data() gets each slice and returns how many bytes it
 * took: fewer than len makes the session hold input until the handler
 * calls imap_append_resume(cmd) (its buffer drained into the RPC upload,
 * rpc_client_source_ready). imap_append_literal_end() marks the end of one
 * message. Finally the parser's IMAP_EV_COMMAND for the APPEND calls the
 * command's handler (imap_append_command) with the arguments after the
 * last literal (none, normally): it answers once every upload is
 * committed (APPENDUID) or failed (then none is kept: MULTIAPPEND is all
 * or nothing as far as sqlited allows; say in the code what happens).
 */
bool imap_append_literal(imap_cmd *cmd, const imap_event *ev);
size_t imap_append_data(imap_cmd *cmd, const uint8_t *data, size_t len);
void imap_append_literal_end(imap_cmd *cmd);
/* The parser gave IMAP_EV_ERROR while an APPEND command runs (a NUL in a
 * literal, a further MULTIAPPEND literal over APPENDLIMIT, too many
 * literals, bad syntax after a literal): the parser skips the rest, no
 * IMAP_EV_COMMAND comes, so the handler cancels its upload, removes what
 * the command stored, and answers (NO [TOOBIG] for IMAP_ELITERAL, else BAD
 * with ev->text) with imap_cmd_done, at once or from an RPC callback. The
 * session then closes the connection if ev->fatal, as for other errors.
 * An error before the first message literal has no APPEND command yet: the
 * session answers it (NO [TOOBIG] for an APPEND literal over APPENDLIMIT).
 * When imap_append_literal returns false, the handler has answered (or
 * will, from an RPC callback): the session must not touch cmd after it. */
void imap_append_error(imap_cmd *cmd, const imap_event *ev);
/* imap_input.c: offer the held input again (from a later loop turn). */
void imap_append_resume(imap_cmd *cmd);

/* ---- Helpers (imap_util.c) ---- */

/*
 * A sequence set argument ("1:3,7,*", "$" for the saved search result)
 * to a UID set under the selected mailbox's view: uid = true takes the
 * numbers as UIDs (* = the highest UID, or UINT32_MAX if empty), false as
 * sequence numbers mapped through sel->uids (numbers past the end are
 * dropped; ENG_EINVAL if a number is 0 or the set is empty of valid syntax).
 * The result may be empty (no message matched: not an error).
 */
int imap_seqset_to_uids(const imap_session *s, const imap_arg *arg, bool uid,
			eng_uidset *set_r);
/* Sequence number of uid in the view, 0 if absent (binary search). */
uint32_t imap_seq_of_uid(const imap_selected *sel, uint32_t uid);
/* The FLAG_RUNS fields of a MAILBOX_VIEW answer (docs/rpc.md), read
 * without expanding them (the view keeps no flags): ENG_EIO unless they
 * are well formed and cover exactly n messages, each run at least one;
 * else *first_unseen_r = the sequence number of the first message without
 * \Seen, 0 if none (SELECT's [UNSEEN n]). */
int imap_flag_runs_first_unseen(const rpc_view *resp, size_t n,
				size_t *first_unseen_r);

/* An astring argument (atom, quoted or literal) as a C string; NULL for a
 * list, NIL, or a literal containing NUL. */
const char *imap_arg_astring(const imap_arg *a);
/* An atom argument (NULL otherwise). */
const char *imap_arg_atom(const imap_arg *a);
/* An unsigned decimal number (atom of digits, <= max). */
bool imap_arg_number(const imap_arg *a, uint64_t max, uint64_t *n_r);

/*
 * A mailbox name from the client to sqlited's UTF-8 name: modified UTF-7
 * decoded (strictly) unless UTF8=ACCEPT is enabled, in which case UTF-8 is
 * taken as is (and a "&" that decodes as modified UTF-7 too, per RFC 6855
 * 3); "INBOX" in any case becomes "INBOX"; the hierarchy separator is "/".
 * ENG_EMALFORMED for a name that is not valid (then answer BAD/NO).
 * Malloc'd.
 */
int imap_mailbox_from_client(const imap_session *s, const imap_arg *a,
			     char **name_r);
/* Writes a mailbox name for the client: quoted (or a literal if needed),
 * modified UTF-7 unless UTF8=ACCEPT is enabled. */
void imap_put_mailbox(const imap_session *s, eng_buf *b, const char *name);

/* Writes a string as an IMAP quoted string if it can be, else a literal
 * ({n}\r\n bytes); NULL as NIL. */
void imap_put_string(eng_buf *b, const char *s, size_t len);
void imap_put_nstring(eng_buf *b, const char *s);

/* Flags: "\Seen \Answered ..." plus keywords, in parentheses. */
void imap_put_flags(eng_buf *b, uint32_t flags, const char *const *keywords,
		    size_t n_keywords);
/* Parses a flag list "(\Seen $Junk)" or a single flag into bits and
 * keywords (pointers into the arguments; keywords_r malloc'd array).
 * ENG_EINVAL for \Recent (not settable), an unknown system flag, or a
 * keyword that is not an atom. */
int imap_parse_flags(const imap_arg *a, uint32_t *flags_r,
		     const char ***keywords_r, size_t *n_keywords_r);

/* Date-time "17-Jul-1996 02:44:25 -0700" <-> unix time; date "1-Feb-1994"
 * -> the unix time of the day's first second (UTC). */
int imap_parse_datetime(const char *s, int64_t *t_r);
int imap_parse_date(const char *s, int64_t *t_r);
void imap_put_datetime(eng_buf *b, int64_t t);

#endif
