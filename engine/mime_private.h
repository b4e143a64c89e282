/*
 * Helpers shared by the MIME parser's files (mime.c, mime_header.c,
 * mime_codec.c, mime_imap.c). Nothing outside engine/mime*.c includes this.
 *
 * All string helpers take raw header bytes (unfolded, NUL-free) and never
 * fail: malformed input gives a best-effort result.
 */
#ifndef ENG_MIME_PRIVATE_H
#define ENG_MIME_PRIVATE_H

#include "mime.h"

/* Longest boundary we recognise (RFC 2046 allows 70). Longer boundary
 * parameters make the multipart opaque. */
#define MIME_MAX_BOUNDARY 200
/* Deepest tree the parser builds and decode accepts (bounds recursion). */
#define MIME_MAX_DEPTH 1000
/* Most parameters, languages and references kept from one header field:
 * their handling is quadratic in the count. */
#define MIME_MAX_LIST 256
/* Longest subject (bytes) the RFC 5256 base subject looks at. */
#define MIME_MAX_SUBJECT 4096

/* Skips white space and (nested) comments; if comment is not NULL it
 * gets the text of the last comment. */
const char *mime_skip_cfws(const char *p, eng_buf *comment);
/* Value of a hex digit, or -1. */
int mime_hexval(char c);
/* Lower-cases an ASCII string in place. */
void mime_lower(char *s);

/* "type/subtype; params" -> lower-case type and subtype (NULL when the
 * value has no valid type) and the parameter list (RFC 2231 joined). */
void mime_parse_content_type(const char *value, char **type_r, char **subtype_r,
			     eng_mime_param **params_r, size_t *n_params_r);
/* "inline; filename=..." -> lower-case disposition and parameters. */
void mime_parse_disposition(const char *value, char **disp_r,
			    eng_mime_param **params_r, size_t *n_params_r);
/* Content-Language: a comma-separated list of tags. */
void mime_parse_languages(const char *value, char ***langs_r, size_t *n_r);
/* A single token (Content-Transfer-Encoding), lower-cased; NULL if none. */
char *mime_parse_token(const char *value);

const char *mime_param_get(const eng_mime_param *params, size_t n,
			   const char *name);
void mime_params_free(eng_mime_param *params, size_t n);

/* RFC 5322 address-list (with groups) appended to list. */
void mime_parse_addrlist(const char *value, eng_mime_addrlist *list);
void mime_addrlist_clear(eng_mime_addrlist *list);

/* RFC 2047 decoding of an unstructured value to UTF-8 (appended). */
void mime_decode_2047(const char *in, size_t len, eng_buf *out);
/* Converts bytes in charset to UTF-8 (appended); unknown charsets and
 * invalid sequences become U+FFFD-sanitised bytes. */
void mime_charset_to_utf8(const char *charset, const char *in, size_t len,
			  eng_buf *out);
/* Appends in, replacing invalid UTF-8 by U+FFFD and dropping NULs. */
void mime_utf8_sanitize(const char *in, size_t len, eng_buf *out);

/* RFC 5322 date-time (obsolete forms too) to unix seconds; INT64_MIN if bad. */
int64_t mime_parse_date(const char *s);
/* Appends the "<...>" msg-ids of s to *ids, skipping ones already there. */
void mime_parse_msgids(const char *s, char ***ids, size_t *n);
/* The first msg-id of s, or NULL. */
char *mime_first_msgid(const char *s);
/* RFC 5256 base subject of a decoded UTF-8 subject. */
char *mime_base_subject(const char *subject);
/* Appends the text of an HTML document (tags dropped, entities decoded). */
void mime_html_strip(const char *in, size_t len, eng_buf *out);

void mime_envelope_free(eng_mime_envelope **env);

#endif
