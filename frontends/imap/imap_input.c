/*
 * The input side of an IMAP connection: feeding the parser (plain, or
 * inflated under COMPRESS), dispatching each command through the command
 * tables (state checks, UID forms, too many BADs), and streaming APPEND
 * literals to imap_cmd_append.c. Part of the session (imap_session.c says
 * the rules; imap_session_private.h is what the files share).
 *
 * Rules kept here:
 *
 *  - Input is taken only while the session wants it (session_wants_input):
 *    no command, or one that reads a raw line or streams an APPEND
 *    literal; otherwise the net layer holds it (one command at a time).
 *  - Literal data an APPEND could not take yet stays unconsumed
 *    (append_owed) and is offered to it again first.
 *  - COMPRESS: input is inflated at most IMAP_INFLATE_CHUNK at a time and
 *    only when the previous inflated bytes were parsed, so it is bounded
 *    like plain input (and freed once parsed).
 *  - Bad input is a BAD (or a BYE when the parser cannot resynchronise or
 *    after IMAP_MAX_BAD in a row), never a crash.
 */
#include "imap_session_private.h"

#include <string.h>
#include <strings.h>
#include <zlib.h>

#define IMAP_INFLATE_CHUNK 16384

/* ---- dispatch ---- */

static const imap_cmd_def *const *tables(void)
{
	static const imap_cmd_def *const t[] = {
		imap_auth_cmds, imap_mailbox_cmds, imap_fetch_cmds, imap_message_cmds, NULL,
	};

	return t;
}

static const imap_cmd_def *cmd_lookup(const char *name)
{
	for (const imap_cmd_def *const *t = tables(); *t != NULL; t++)
		for (const imap_cmd_def *d = *t; d->name != NULL; d++)
			if (strcasecmp(d->name, name) == 0)
				return d;
	return NULL;
}

static void untagged_bad(imap_session *s, const char *tag, const char *text)
{
	if (tag != NULL)
		imap_printf(s, "%s BAD %s\r\n", tag, text);
	else
		imap_printf(s, "* BAD %s\r\n", text);
	if (++s->bad_count >= IMAP_MAX_BAD) {
		eng_log(ENG_LOG_INFO, "imap: %s: too many invalid commands",
			sm_net_peer_addr(s->c));
		imap_session_bye(s, "Too many invalid commands.");
	}
}

static const uint32_t state_bits[] = {
	[IMAP_S_NOTAUTH] = IMAP_CF_NOTAUTH,
	[IMAP_S_AUTH] = IMAP_CF_AUTH,
	[IMAP_S_SELECTED] = IMAP_CF_SELECTED,
	[IMAP_S_LOGOUT] = 0,
};

/* The definition for a command in this state, or NULL (answered). */
static const imap_cmd_def *check_command(imap_session *s, const char *tag,
					 const char *name, bool uid)
{
	const imap_cmd_def *def = cmd_lookup(name);

	if (def == NULL || (uid && !def->uid_ok)) {
		untagged_bad(s, tag, "Unknown command.");
		return NULL;
	}
	if ((def->flags & state_bits[s->state]) == 0) {
		untagged_bad(s, tag, s->state == IMAP_S_NOTAUTH ? "Command not allowed now: "
			     "log in first." : (def->flags & IMAP_CF_LOGGEDIN) ==
			     IMAP_CF_SELECTED ? "Command not allowed now: no mailbox selected." :
			     "Command not allowed now.");
		return NULL;
	}
	return def;
}

static cmd_full *cmd_new(imap_session *s, const imap_cmd_def *def, const char *tag,
			 bool uid, const imap_arg *args, size_t n_args)
{
	cmd_full *cf = eng_calloc(1, sizeof(*cf));

	cf->cmd.s = s;
	cf->cmd.tag = eng_strdup(tag);
	cf->cmd.name = def->name;
	cf->cmd.uid = uid;
	cf->cmd.flags = def->flags & ~(uid ? (uint32_t)IMAP_CF_NO_EXPUNGE : 0u);
	cf->cmd.args = args;
	cf->cmd.n_args = n_args;
	cf->fn = def->fn;
	s->cmd = &cf->cmd;
	return cf;
}

static void dispatch(imap_session *s, const imap_command *c)
{
	const imap_arg *args = c->args;
	size_t n = c->n_args;
	const char *name = c->name;
	const imap_cmd_def *def;
	bool uid = false;
	cmd_full *cf;

	if (strcmp(name, "UID") == 0) {
		if (n == 0 || args[0].kind != IMAP_ARG_ATOM) {
			untagged_bad(s, c->tag, "UID needs a command.");
			return;
		}
		name = args[0].s;
		args++;
		n--;
		uid = true;
	}
	def = check_command(s, c->tag, name, uid);
	if (def == NULL)
		return;
	cf = cmd_new(s, def, c->tag, uid, args, n);
	def->fn(&cf->cmd);
}

/* ---- APPEND streaming ---- */

static void on_literal(imap_session *s, const imap_event *ev)
{
	session_full *f = full(s);
	imap_cmd *cmd = s->cmd;

	if (cmd == NULL) {
		const imap_cmd_def *def = check_command(s, ev->cmd.tag, ev->cmd.name, false);

		if (def == NULL) {
			imap_parser_skip_command(s->parser);
			return;
		}
		cmd = &cmd_new(s, def, ev->cmd.tag, false, ev->cmd.args, ev->cmd.n_args)->cmd;
	} else {
		cmd->args = ev->cmd.args;
		cmd->n_args = ev->cmd.n_args;
	}
	f->streaming = true;
	f->discard_owed = false;
	if (!imap_append_literal(cmd, ev)) {
		/* Refused: nothing more of the command comes from the parser, so
		 * the handler answers now (imap_append_command) unless it did. */
		if (f->streaming) {
			f->streaming = false;
			imap_parser_skip_command(s->parser);
		}
		if (s->cmd == cmd && !cfull(cmd)->done_pending)
			cfull(cmd)->fn(cmd);
		return;
	}
	if (ev->literal_sync)
		imap_write(s, "+ OK\r\n", 6);
}

/* Literal bytes for the APPEND; returns how many were taken. */
static size_t give_append(imap_session *s, const uint8_t *p, size_t len)
{
	if (s->cmd == NULL || !full(s)->streaming)
		return len;          /* answered already: dropped */
	return imap_append_data(s->cmd, p, len);
}

void imap_append_resume(imap_cmd *cmd)
{
	full(cmd->s)->owed_hold = false;
	resume_input(cmd->s);
	if (cmd->s->zin != NULL)
		kick(full(cmd->s));
}

/* ---- feeding the parser ---- */

static bool session_wants_input(imap_session *s)
{
	session_full *f = full(s);
	cmd_full *cf = cfull(s->cmd);

	if (s->c == NULL || sm_net_closing(s->c) || f->mode_switch || f->owed_hold)
		return false;
	if (cf == NULL)
		return true;
	if (cf->done_pending)
		return false;
	return cf->line_fn != NULL || f->streaming;
}

static void on_line(imap_session *s, const char *line, size_t len)
{
	cmd_full *cf = cfull(s->cmd);
	imap_line_fn *fn = cf != NULL ? cf->line_fn : NULL;

	if (fn == NULL) {
		untagged_bad(s, NULL, "Unexpected line.");
		return;
	}
	cf->line_fn = NULL;
	fn(&cf->cmd, line, len);
}

static void on_error(imap_session *s, const imap_event *ev)
{
	cmd_full *cf = cfull(s->cmd);

	if (cf != NULL && cf->line_fn != NULL && !ev->fatal) {
		on_line(s, NULL, 0);
		return;
	}
	if (cf != NULL && full(s)->streaming) {
		if (ev->fatal) {
			/* The parser cannot resynchronise: the connection ends
			 * and the command is aborted (nothing is reported as
			 * stored). */
			imap_printf(s, "%s %s\r\n", cf->cmd.tag,
				    ev->err == IMAP_ELITERAL ?
				    "NO [TOOBIG] Message too large" : "BAD Invalid APPEND");
			imap_session_bye(s, "Invalid APPEND.");
			return;
		}
		/* A NUL in a literal, a further MULTIAPPEND message over
		 * APPENDLIMIT, bad syntax after a literal: the APPEND takes
		 * back what it stored and answers; the connection goes on. */
		full(s)->streaming = false;
		imap_append_error(s->cmd, ev);
		return;
	}
	if (ev->err == IMAP_ELITERAL && ev->cmd.tag != NULL &&
	    ev->cmd.name != NULL && strcmp(ev->cmd.name, "APPEND") == 0) {
		/* RFC 7889: a message over APPENDLIMIT, refused before the
		 * client sent it (or skipped, for a non-synchronising one). */
		imap_printf(s, "%s NO [TOOBIG] Message too large\r\n",
			    ev->cmd.tag);
		if (ev->fatal)
			imap_session_bye(s, "Message too large.");
		return;
	}
	if (ev->fatal) {
		if (ev->cmd.tag != NULL)
			imap_printf(s, "%s BAD %s\r\n", ev->cmd.tag, ev->text);
		imap_session_bye(s, ev->text);
		return;
	}
	untagged_bad(s, ev->cmd.tag, ev->text);
}

/* One parser event. Returns false to stop feeding (held or closing). */
static bool handle_event(imap_session *s, const imap_event *ev)
{
	switch (ev->kind) {
	case IMAP_EV_NEED_MORE:
		return false;
	case IMAP_EV_COMMAND:
		if (s->cmd != NULL && full(s)->streaming) {
			full(s)->streaming = false;
			s->cmd->args = ev->cmd.args;
			s->cmd->n_args = ev->cmd.n_args;
			cfull(s->cmd)->fn(s->cmd);
		} else {
			dispatch(s, &ev->cmd);
		}
		break;
	case IMAP_EV_CONTINUE:
		imap_write(s, "+ OK\r\n", 6);
		break;
	case IMAP_EV_LITERAL:
		on_literal(s, ev);
		break;
	case IMAP_EV_LITERAL_END:
		if (s->cmd != NULL && full(s)->streaming)
			imap_append_literal_end(s->cmd);
		break;
	case IMAP_EV_LINE:
		on_line(s, (const char *)ev->data, ev->len);
		break;
	case IMAP_EV_ERROR:
		on_error(s, ev);
		break;
	case IMAP_EV_LITERAL_DATA:
		break;               /* handled by feed() */
	}
	return true;
}

/*
 * Feeds p[0..len) to the parser while the session takes input; returns
 * the bytes consumed. Literal data the APPEND did not take stays
 * unconsumed (append_owed): it is offered to the APPEND again first.
 */
static size_t feed(imap_session *s, const uint8_t *p, size_t len)
{
	session_full *f = full(s);
	size_t off = 0;

	while (session_wants_input(s)) {
		imap_event ev;
		size_t n;

		if (f->append_owed > 0) {
			size_t want = len - off < f->append_owed ? len - off : (size_t)f->append_owed;
			size_t took = f->discard_owed ? want : give_append(s, p + off, want);

			off += took;
			f->append_owed -= took;
			if (f->append_owed > 0) {
				f->owed_hold = true;
				break;
			}
			if (off == len)
				break;
			continue;
		}
		if (off == len)
			break;
		memset(&ev, 0, sizeof(ev));
		n = imap_parser_feed(s->parser, p + off, len - off, &ev);
		if (ev.kind == IMAP_EV_LITERAL_DATA) {
			size_t took = give_append(s, ev.data, ev.len);

			if (took < ev.len) {
				f->append_owed = ev.len - took;
				f->discard_owed = false;
				f->owed_hold = true;
				off = (size_t)(ev.data + took - p);
				break;
			}
			off += n;
			continue;
		}
		off += n;
		if (!handle_event(s, &ev))
			break;
	}
	return off;
}

/* Parses inflated input that waits (COMPRESS). */
void feed_inflated(session_full *f)
{
	imap_session *s = &f->s;
	size_t n;

	if (s->inflated.len == 0 || s->c == NULL)
		return;
	n = feed(s, (const uint8_t *)s->inflated.data, s->inflated.len);
	if (n > 0) {
		memmove(s->inflated.data, s->inflated.data + n, s->inflated.len - n);
		s->inflated.len -= n;
	}
	/* All parsed: an idle compressed session keeps no 16 KiB chunk. */
	if (s->inflated.len == 0)
		eng_buf_free_wipe(&s->inflated);
}

static size_t on_data_compressed(imap_session *s, const uint8_t *p, size_t len)
{
	z_stream *z = s->zin;
	size_t used = 0;

	for (;;) {
		int rc;

		feed_inflated(full(s));
		if (s->inflated.len > 0 || used == len || !session_wants_input(s))
			break;
		eng_buf_reserve(&s->inflated, IMAP_INFLATE_CHUNK);
		z->next_in = (Bytef *)(uintptr_t)(p + used);
		z->avail_in = (uInt)(len - used);
		z->next_out = (Bytef *)s->inflated.data;
		z->avail_out = IMAP_INFLATE_CHUNK;
		rc = inflate(z, Z_SYNC_FLUSH);
		used = len - z->avail_in;
		s->inflated.len = IMAP_INFLATE_CHUNK - z->avail_out;
		if (rc == Z_STREAM_END || (rc != Z_OK && rc != Z_BUF_ERROR)) {
			eng_log(ENG_LOG_INFO, "imap: %s: invalid compressed input",
				sm_net_peer_addr(s->c));
			s->inflated.len = 0;
			imap_session_bye(s, "Invalid compressed data.");
			used = len;
			break;
		}
		if (s->inflated.len == 0 && used == len)
			break;
	}
	return used;
}

size_t on_data(sm_net_conn *c, void *ctx, const uint8_t *p, size_t len)
{
	imap_session *s = ctx;
	size_t n;

	(void)c;
	if (s == NULL)
		return len;
	/* mode_switch (STARTTLS, COMPRESS) stops a feed at the command's end:
	 * the bytes after it are for the new layer, from the next call. */
	full(s)->mode_switch = false;
	if (s->zin != NULL)
		n = on_data_compressed(s, p, len);
	else
		n = feed(s, p, len);
	full(s)->mode_switch = false;
	if (s->c != NULL && s->cmd != NULL && !session_wants_input(s))
		sm_net_hold(s->c);
	return n;
}
