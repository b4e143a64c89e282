/*
 * THREAD (RFC 5256): ORDEREDSUBJECT and REFERENCES over the messages a
 * query selects, and the writer of the IMAP THREAD response.
 *
 * The messages come from eng_search(); their Message-ID, sent date and
 * base subject from the content row's summary columns; their references
 * from the stored top-level header (References, else In-Reply-To), which
 * is parsed here because no column keeps them.
 *
 * The REFERENCES algorithm works on containers (JWZ's word): one per
 * message and one per message-id that is referenced but absent (a dummy).
 * Containers live in one array and point at each other (parent, first
 * child, next sibling), so the whole tree is freed at once; the result is
 * then copied out as eng_thread_node trees.
 */
#include "search.h"
#include "store_private.h"
#include "eng_error.h"

#include <stdlib.h>
#include <string.h>
#include <strings.h>

struct tmsg {
	uint32_t uid;
	int64_t date;               /* sent date, else internal date */
	char *msgid;
	char **refs;                /* References, else In-Reply-To's first */
	size_t n_refs;
	char *base;                 /* base subject, "" if none */
	bool reply;                 /* the subject was a reply or forward */
};

/* ---- header helpers ---- */

/*
 * The unfolded value of the first field called name in a raw header, or
 * false. Lines end in LF or CRLF; a line starting with white space
 * continues the previous one.
 */
static bool raw_field(const char *h, size_t len, const char *name,
		      eng_buf *out)
{
	size_t nlen = strlen(name), i = 0;

	while (i < len) {
		size_t start = i, end;

		do {
			const char *nl = memchr(h + i, '\n', len - i);

			i = nl != NULL ? (size_t)(nl - h) + 1 : len;
		} while (i < len && (h[i] == ' ' || h[i] == '\t'));
		end = i;
		if (end - start > nlen && strncasecmp(h + start, name, nlen) == 0) {
			size_t p = start + nlen;

			while (p < end && (h[p] == ' ' || h[p] == '\t'))
				p++;
			if (p < end && h[p] == ':') {
				eng_buf_reset(out);
				for (p++; p < end; p++) {
					if (h[p] != '\r' && h[p] != '\n')
						eng_buf_putc(out, h[p]);
				}
				eng_buf_puts(out, "");
				return true;
			}
		}
	}
	return false;
}

/*
 * Appends the msg-ids "<...>" of s to *ids (comments skipped; an id with
 * white space, '<' or nothing inside is not valid and left out). With
 * first_only, stops after one.
 */
static void parse_msgids(const char *s, char ***ids, size_t *n,
			 bool first_only)
{
	const char *p = s;

	while (*p != '\0') {
		const char *open, *q;

		if (*p == '(') {
			/* A comment, nested comments included. */
			int level = 0;

			for (; *p != '\0'; p++) {
				if (*p == '\\' && p[1] != '\0')
					p++;
				else if (*p == '(')
					level++;
				else if (*p == ')' && --level == 0) {
					p++;
					break;
				}
			}
			continue;
		}
		if (*p != '<') {
			p++;
			continue;
		}
		open = p;
		for (q = p + 1; *q != '\0' && *q != '>' && *q != '<' &&
		     *q != ' ' && *q != '\t'; q++)
			;
		if (*q != '>' || q == open + 1) {
			p = q;
			continue;
		}
		*ids = eng_realloc(*ids, (*n + 1) * sizeof(char *));
		(*ids)[(*n)++] = eng_strndup(open, (size_t)(q - open + 1));
		p = q + 1;
		if (first_only)
			return;
	}
}

/*
 * Whether a subject is a reply or forward in RFC 5256's sense: its
 * base-subject extraction removes a subj-refwd ("Re:", "Fwd:", "Fw:",
 * optionally with a [blob] before the colon), or a "[Fwd: ...]" wrapper,
 * or it ends in "(fwd)". Leading [blob]s alone are not.
 */
static bool subject_is_reply(const char *s)
{
	size_t len;
	const char *p = s;

	if (s == NULL)
		return false;
	len = strlen(s);
	while (len > 0 && (s[len - 1] == ' ' || s[len - 1] == '\t'))
		len--;
	if (len >= 5 && strncasecmp(s + len - 5, "(fwd)", 5) == 0)
		return true;
	for (;;) {
		const char *q;

		while (*p == ' ' || *p == '\t')
			p++;
		if (strncasecmp(p, "[fwd:", 5) == 0)
			return true;
		if (*p == '[') {
			q = strchr(p, ']');
			if (q == NULL)
				return false;
			p = q + 1;
			continue;
		}
		if (strncasecmp(p, "re", 2) == 0)
			q = p + 2;
		else if (strncasecmp(p, "fwd", 3) == 0)
			q = p + 3;
		else if (strncasecmp(p, "fw", 2) == 0)
			q = p + 2;
		else
			return false;
		while (*q == ' ' || *q == '\t')
			q++;
		if (*q == '[') {
			q = strchr(q, ']');
			if (q == NULL)
				return false;
			q++;
		}
		return *q == ':';
	}
}

/* ---- loading ---- */

static void tmsgs_free(struct tmsg *msgs, size_t n)
{
	for (size_t i = 0; i < n; i++) {
		free(msgs[i].msgid);
		for (size_t j = 0; j < msgs[i].n_refs; j++)
			free(msgs[i].refs[j]);
		free(msgs[i].refs);
		free(msgs[i].base);
	}
	free(msgs);
}

static int uid_cmp(const void *a, const void *b)
{
	uint32_t x = *(const uint32_t *)a, y = *(const uint32_t *)b;

	return x < y ? -1 : x > y;
}

/* The matching messages, in UID order, with what threading needs. */
static int load(eng_store *st, int64_t mailbox_id, const eng_query *query,
		const uint32_t *seq_map, size_t n_seq_map, bool want_refs,
		struct tmsg **msgs_r, size_t *n_r)
{
	uint32_t *uids = NULL;
	size_t n_uids = 0, n = 0;
	struct tmsg *msgs = NULL;
	sqlite3_stmt *stmt;
	eng_buf val = ENG_BUF_INIT;
	int err, rc;

	*msgs_r = NULL;
	*n_r = 0;
	err = eng_search(st, mailbox_id, query, NULL, 0, seq_map, n_seq_map,
			 &uids, &n_uids, NULL);
	if (err != 0 || n_uids == 0)
		return err;
	stmt = store_prepare(st, "SELECT m.uid, coalesce(c.sent_date, "
			     "m.internal_date), c.message_id, c.subject, "
			     "c.base_subject, c.header FROM message m JOIN "
			     "content c ON c.id = m.content_id WHERE "
			     "m.mailbox_id = ? ORDER BY m.uid", &err);
	if (stmt == NULL) {
		free(uids);
		return err;
	}
	sqlite3_bind_int64(stmt, 1, mailbox_id);
	msgs = eng_calloc(n_uids, sizeof(*msgs));
	while ((rc = sqlite3_step(stmt)) == SQLITE_ROW && n < n_uids) {
		uint32_t uid = (uint32_t)sqlite3_column_int64(stmt, 0);
		const char *msgid = (const char *)sqlite3_column_text(stmt, 2);
		const char *subject = (const char *)sqlite3_column_text(stmt, 3);
		const char *base = (const char *)sqlite3_column_text(stmt, 4);
		struct tmsg *m;

		if (bsearch(&uid, uids, n_uids, sizeof(uint32_t), uid_cmp) == NULL)
			continue;
		m = &msgs[n++];
		m->uid = uid;
		m->date = sqlite3_column_int64(stmt, 1);
		m->msgid = msgid != NULL && *msgid != '\0' ?
			eng_strdup(msgid) : NULL;
		m->base = eng_strdup(base != NULL ? base : "");
		m->reply = subject_is_reply(subject);
		if (want_refs) {
			const char *h = sqlite3_column_blob(stmt, 5);
			size_t hlen = (size_t)sqlite3_column_bytes(stmt, 5);

			if (h != NULL &&
			    raw_field(h, hlen, "References", &val))
				parse_msgids(val.data, &m->refs, &m->n_refs,
					     false);
			if (m->n_refs == 0 && h != NULL &&
			    raw_field(h, hlen, "In-Reply-To", &val))
				parse_msgids(val.data, &m->refs, &m->n_refs,
					     true);
		}
	}
	store_release(st, stmt);
	eng_buf_free(&val);
	free(uids);
	if (rc != SQLITE_ROW && rc != SQLITE_DONE) {
		tmsgs_free(msgs, n);
		return store_err(st, rc, "thread");
	}
	*msgs_r = msgs;
	*n_r = n;
	return 0;
}

/* ---- the result tree ---- */

static eng_thread_node *node_new(uint32_t uid)
{
	eng_thread_node *t = eng_calloc(1, sizeof(*t));

	t->uid = uid;
	return t;
}

static void node_add(eng_thread_node *parent, eng_thread_node *child)
{
	parent->children = eng_realloc(parent->children,
				       (parent->n_children + 1) *
				       sizeof(eng_thread_node *));
	parent->children[parent->n_children++] = child;
}

void eng_thread_free(eng_thread_node **tp)
{
	eng_thread_node *t = *tp;

	if (t == NULL)
		return;
	*tp = NULL;
	for (size_t i = 0; i < t->n_children; i++)
		eng_thread_free(&t->children[i]);
	free(t->children);
	free(t);
}

/* ---- ORDEREDSUBJECT ---- */

static int date_cmp(int64_t da, uint32_t ua, int64_t db, uint32_t ub)
{
	if (da != db)
		return da < db ? -1 : 1;
	return ua < ub ? -1 : ua > ub;
}

static int subject_order(const void *a, const void *b)
{
	const struct tmsg *x = a, *y = b;
	int c = strcasecmp(x->base, y->base);

	return c != 0 ? c : date_cmp(x->date, x->uid, y->date, y->uid);
}

struct first {
	size_t start, count;
};

static int first_order(const void *a, const void *b, void *ctx)
{
	const struct first *x = a, *y = b;
	const struct tmsg *msgs = ctx;

	return date_cmp(msgs[x->start].date, msgs[x->start].uid,
			msgs[y->start].date, msgs[y->start].uid);
}

static eng_thread_node *ordered_subject(struct tmsg *msgs, size_t n)
{
	eng_thread_node *root = node_new(0);
	struct first *groups = NULL;
	size_t n_groups = 0;

	if (n == 0)
		return root;
	qsort(msgs, n, sizeof(*msgs), subject_order);
	for (size_t i = 0; i < n; i++) {
		if (i == 0 || strcasecmp(msgs[i].base, msgs[i - 1].base) != 0) {
			groups = eng_realloc(groups, (n_groups + 1) *
					     sizeof(*groups));
			groups[n_groups].start = i;
			groups[n_groups++].count = 0;
		}
		groups[n_groups - 1].count++;
	}
	qsort_r(groups, n_groups, sizeof(*groups), first_order, msgs);
	for (size_t g = 0; g < n_groups; g++) {
		eng_thread_node *t = node_new(msgs[groups[g].start].uid);

		for (size_t i = 1; i < groups[g].count; i++)
			node_add(t, node_new(msgs[groups[g].start + i].uid));
		node_add(root, t);
	}
	free(groups);
	return root;
}

/* ---- REFERENCES ---- */

struct cont {
	struct tmsg *msg;           /* NULL: a dummy */
	const char *id;             /* the message-id it stands for, or NULL */
	struct cont *parent, *child, *next;
	bool gone;                  /* removed from the tree */
};

struct ctable {
	struct cont **slots;
	size_t cap;
};

static uint64_t hash_str(const char *s)
{
	uint64_t h = 1469598103934665603ull;

	for (; *s != '\0'; s++)
		h = (h ^ (unsigned char)*s) * 1099511628211ull;
	return h;
}

static struct cont **table_slot(struct ctable *t, const char *id)
{
	size_t i = (size_t)(hash_str(id) & (t->cap - 1));

	while (t->slots[i] != NULL && strcmp(t->slots[i]->id, id) != 0)
		i = (i + 1) & (t->cap - 1);
	return &t->slots[i];
}

struct refctx {
	struct cont *conts;         /* preallocated, never moves */
	size_t n_conts;
	struct ctable table;
};

/* The container of id, a new dummy if there is none. */
static struct cont *cont_get(struct refctx *r, const char *id)
{
	struct cont **slot = table_slot(&r->table, id);

	if (*slot == NULL) {
		struct cont *c = &r->conts[r->n_conts++];

		c->id = id;
		*slot = c;
	}
	return *slot;
}

static bool is_ancestor(const struct cont *a, const struct cont *c)
{
	for (; c != NULL; c = c->parent) {
		if (c == a)
			return true;
	}
	return false;
}

static void unlink_cont(struct cont *c)
{
	struct cont **pp;

	if (c->parent == NULL)
		return;
	for (pp = &c->parent->child; *pp != NULL; pp = &(*pp)->next) {
		if (*pp == c) {
			*pp = c->next;
			break;
		}
	}
	c->parent = NULL;
	c->next = NULL;
}

static void append_child(struct cont *parent, struct cont *c)
{
	struct cont **pp = &parent->child;

	while (*pp != NULL)
		pp = &(*pp)->next;
	*pp = c;
	c->parent = parent;
	c->next = NULL;
}

/* The date and UID a container sorts by: a dummy's first child's. */
static const struct tmsg *sort_msg(const struct cont *c)
{
	while (c != NULL && c->msg == NULL)
		c = c->child;
	return c != NULL ? c->msg : NULL;
}

static int cont_order(const void *a, const void *b)
{
	const struct tmsg *x = sort_msg(*(struct cont *const *)a);
	const struct tmsg *y = sort_msg(*(struct cont *const *)b);

	if (x == NULL || y == NULL)
		return (x == NULL) - (y == NULL);
	return date_cmp(x->date, x->uid, y->date, y->uid);
}

/* Sorts a list of siblings (children first) by sent date. */
static struct cont *sort_list(struct cont *first)
{
	struct cont **arr = NULL;
	size_t n = 0;

	for (struct cont *c = first; c != NULL; c = c->next) {
		c->child = sort_list(c->child);
		arr = eng_realloc(arr, (n + 1) * sizeof(*arr));
		arr[n++] = c;
	}
	if (n == 0)
		return NULL;
	qsort(arr, n, sizeof(*arr), cont_order);
	for (size_t i = 0; i + 1 < n; i++)
		arr[i]->next = arr[i + 1];
	arr[n - 1]->next = NULL;
	first = arr[0];
	free(arr);
	return first;
}

/*
 * RFC 5256 step 3: dummies without children go; a dummy's children take
 * its place, except at the top level where a dummy with several children
 * stays (they would otherwise become separate threads). Returns the new
 * list; parent is the container the list hangs from (NULL: the root).
 */
static struct cont *prune(struct cont *first, struct cont *parent)
{
	struct cont *head = NULL, **tail = &head;
	struct cont *c = first;

	while (c != NULL) {
		struct cont *next = c->next;

		c->child = prune(c->child, c);
		if (c->msg == NULL && c->child == NULL) {
			c->gone = true;
		} else if (c->msg == NULL &&
			   (parent != NULL || c->child->next == NULL)) {
			/* Promote the children: splice them in here. */
			struct cont *k = c->child;

			c->gone = true;
			while (k != NULL) {
				struct cont *kn = k->next;

				k->parent = parent;
				k->next = NULL;
				*tail = k;
				tail = &k->next;
				k = kn;
			}
		} else {
			c->parent = parent;
			c->next = NULL;
			*tail = c;
			tail = &c->next;
		}
		c = next;
	}
	return head;
}

static const struct tmsg *subject_msg(const struct cont *c)
{
	return c->msg != NULL ? c->msg : c->child != NULL ? c->child->msg :
		NULL;
}

struct subj {
	const char *base;
	struct cont *c;
};

/* RFC 5256 step 5: roots with the same base subject come together. */
static struct cont *merge_subjects(struct refctx *r, struct cont *roots)
{
	struct cont **arr = NULL;
	struct subj *tab = NULL;
	size_t n = 0, n_tab = 0;

	for (struct cont *c = roots; c != NULL; c = c->next) {
		arr = eng_realloc(arr, (n + 1) * sizeof(*arr));
		arr[n++] = c;
	}
	/* B: the table keeps the best container per subject. */
	for (size_t i = 0; i < n; i++) {
		const struct tmsg *m = subject_msg(arr[i]);
		size_t j;

		if (m == NULL || m->base[0] == '\0')
			continue;
		for (j = 0; j < n_tab; j++) {
			if (strcasecmp(tab[j].base, m->base) == 0)
				break;
		}
		if (j == n_tab) {
			tab = eng_realloc(tab, (n_tab + 1) * sizeof(*tab));
			tab[n_tab].base = m->base;
			tab[n_tab++].c = arr[i];
		} else if ((tab[j].c->msg != NULL && arr[i]->msg == NULL) ||
			   (tab[j].c->msg != NULL && arr[i]->msg != NULL &&
			    tab[j].c->msg->reply && !arr[i]->msg->reply)) {
			tab[j].c = arr[i];
		}
	}
	/* C: merge every other root into the table's container. */
	for (size_t i = 0; i < n; i++) {
		struct cont *c = arr[i], *t, *d;
		const struct tmsg *m = subject_msg(c);
		size_t j;

		if (m == NULL || m->base[0] == '\0' || c->gone ||
		    c->parent != NULL)
			continue;
		for (j = 0; j < n_tab; j++) {
			if (strcasecmp(tab[j].base, m->base) == 0)
				break;
		}
		t = tab[j].c;
		if (t == c)
			continue;
		if (t->msg == NULL && c->msg == NULL) {
			while (c->child != NULL) {
				struct cont *k = c->child;

				unlink_cont(k);
				append_child(t, k);
			}
			c->gone = true;
		} else if (t->msg == NULL) {
			append_child(t, c);
		} else if (c->msg == NULL) {
			/* Cannot happen after B (dummies win the table), but
			 * the RFC's rule is: the message joins the dummy,
			 * which takes its place. */
			append_child(c, t);
			tab[j].c = c;
				} else if (c->msg->reply && !t->msg->reply) {
			append_child(t, c);
		} else {
			d = &r->conts[r->n_conts++];
			for (size_t k = 0; k < n; k++) {
				if (arr[k] == t)
					arr[k] = d;
			}
			append_child(d, t);
			append_child(d, c);
			tab[j].c = d;
		}
	}
	/* Rebuild the root list in its order, without the merged ones
	 * (they have a parent now, or were emptied into another dummy). */
	{
		struct cont *head = NULL, **tail = &head;

		for (size_t i = 0; i < n; i++) {
			struct cont *c = arr[i];

			if (c->gone || (c->parent != NULL))
				continue;
			*tail = c;
			c->next = NULL;
			tail = &c->next;
		}
		free(arr);
		free(tab);
		return head;
	}
}

static eng_thread_node *to_nodes(const struct cont *c)
{
	eng_thread_node *t = node_new(c->msg != NULL ? c->msg->uid : 0);

	for (const struct cont *k = c->child; k != NULL; k = k->next)
		node_add(t, to_nodes(k));
	return t;
}

static eng_thread_node *references(struct tmsg *msgs, size_t n)
{
	struct refctx r;
	size_t n_ids = 0;
	struct cont *roots = NULL, **tail = &roots;
	eng_thread_node *root;

	memset(&r, 0, sizeof(r));
	for (size_t i = 0; i < n; i++)
		n_ids += 1 + msgs[i].n_refs;
	/* Messages, dummies for references, and one per subject merge. */
	r.conts = eng_calloc(2 * n_ids + n + 1, sizeof(*r.conts));
	r.table.cap = 16;
	while (r.table.cap < 2 * n_ids)
		r.table.cap *= 2;
	r.table.slots = eng_calloc(r.table.cap, sizeof(*r.table.slots));

	/* 1: a container per message (a unique one when its id is missing
	 * or taken), its references linked into a parent chain. */
	for (size_t i = 0; i < n; i++) {
		struct tmsg *m = &msgs[i];
		struct cont *c = NULL, *prev = NULL;

		if (m->msgid != NULL) {
			c = cont_get(&r, m->msgid);
			if (c->msg != NULL)
				c = NULL;           /* a duplicate */
		}
		if (c == NULL)
			c = &r.conts[r.n_conts++];
		c->msg = m;
		/* A: each reference the child of the one before it, unless
		 * it has a parent already or that makes a loop. */
		for (size_t j = 0; j < m->n_refs; j++) {
			struct cont *rc = cont_get(&r, m->refs[j]);

			if (prev != NULL && rc->parent == NULL && rc != prev &&
			    !is_ancestor(rc, prev))
				append_child(prev, rc);
			prev = rc;
		}
		/* B: the last reference is the parent, replacing any other
		 * (a truncated References gave the old one). */
		if (prev != NULL && (prev == c || is_ancestor(c, prev)))
			prev = NULL;
		if (prev == NULL || c->parent != prev) {
			unlink_cont(c);
			if (prev != NULL)
				append_child(prev, c);
		}
	}
	/* 2: the root set. */
	for (size_t i = 0; i < r.n_conts; i++) {
		if (r.conts[i].parent == NULL) {
			*tail = &r.conts[i];
			r.conts[i].next = NULL;
			tail = &r.conts[i].next;
		}
	}
	/* 3: prune dummies; 4: sort the roots by date; 5: merge by subject;
	 * 6: sort every set of siblings by date. */
	roots = prune(roots, NULL);
	roots = sort_list(roots);
	roots = merge_subjects(&r, roots);
	roots = sort_list(roots);

	root = node_new(0);
	for (struct cont *c = roots; c != NULL; c = c->next)
		node_add(root, to_nodes(c));
	free(r.table.slots);
	free(r.conts);
	return root;
}

int eng_thread(eng_store *st, int64_t mailbox_id,
	       enum eng_thread_algorithm algorithm, const eng_query *query,
	       const uint32_t *seq_map, size_t n_seq_map,
	       eng_thread_node **tree_r)
{
	struct tmsg *msgs;
	size_t n;
	int err;

	*tree_r = NULL;
	if (algorithm != ENG_THREAD_ORDEREDSUBJECT &&
	    algorithm != ENG_THREAD_REFERENCES)
		return ENG_EINVAL;
	err = load(st, mailbox_id, query, seq_map, n_seq_map,
		   algorithm == ENG_THREAD_REFERENCES, &msgs, &n);
	if (err != 0)
		return err;
	if (algorithm == ENG_THREAD_ORDEREDSUBJECT)
		*tree_r = ordered_subject(msgs, n);
	else
		*tree_r = references(msgs, n);
	tmsgs_free(msgs, n);
	return 0;
}

/* ---- the writer ---- */

struct writer {
	const uint32_t *seq_map;
	size_t n_seq_map;
	eng_buf *out;
};

/* The number to write for a UID; 0 when it is not in the view. */
static uint32_t number_of(const struct writer *w, uint32_t uid)
{
	const uint32_t *p;

	if (uid == 0 || w->seq_map == NULL)
		return uid;
	p = bsearch(&uid, w->seq_map, w->n_seq_map, sizeof(uint32_t), uid_cmp);
	return p != NULL ? (uint32_t)(p - w->seq_map) + 1 : 0;
}

/* Whether a subtree has anything to write (a node in the view). */
static bool visible(const struct writer *w, const eng_thread_node *t)
{
	if (number_of(w, t->uid) != 0)
		return true;
	for (size_t i = 0; i < t->n_children; i++) {
		if (visible(w, t->children[i]))
			return true;
	}
	return false;
}

/*
 * thread-members: the node's number, then down a chain of only children
 * separated by spaces; where there are several children, each in its own
 * parentheses (RFC 5256 section 4). Nodes without a number (dummies, UIDs
 * outside the view) are not written, and subtrees with nothing to write
 * do not count as children.
 */
static void write_members(const struct writer *w, const eng_thread_node *t,
			  bool first)
{
	while (t != NULL) {
		uint32_t num = number_of(w, t->uid);
		const eng_thread_node *only = NULL;
		size_t n_vis = 0;

		if (num != 0) {
			eng_buf_printf(w->out, first ? "%u" : " %u", num);
			first = false;
		}
		for (size_t i = 0; i < t->n_children; i++) {
			if (visible(w, t->children[i])) {
				only = t->children[i];
				n_vis++;
			}
		}
		if (n_vis == 1) {
			t = only;
			continue;
		}
		if (n_vis > 1) {
			if (!first)
				eng_buf_putc(w->out, ' ');
			for (size_t i = 0; i < t->n_children; i++) {
				if (!visible(w, t->children[i]))
					continue;
				eng_buf_putc(w->out, '(');
				write_members(w, t->children[i], true);
				eng_buf_putc(w->out, ')');
			}
		}
		t = NULL;
	}
}

static void write_tree(const struct writer *w, const eng_thread_node *tree)
{
	if (tree == NULL)
		return;
	for (size_t i = 0; i < tree->n_children; i++) {
		if (!visible(w, tree->children[i]))
			continue;
		eng_buf_putc(w->out, '(');
		write_members(w, tree->children[i], true);
		eng_buf_putc(w->out, ')');
	}
}

void eng_thread_write(const eng_thread_node *tree, eng_buf *out)
{
	struct writer w = { NULL, 0, out };

	write_tree(&w, tree);
}

void eng_thread_write_seq(const eng_thread_node *tree, const uint32_t *seq_map,
			  size_t n_seq_map, eng_buf *out)
{
	struct writer w = { seq_map, n_seq_map, out };

	write_tree(&w, tree);
}
