/*
 * Generated test messages the store tests share: a multipart one with a
 * large base64 attachment that spans several chunks, and a text one that
 * zstd shrinks to almost nothing.
 */
#ifndef TESTMSGS_H
#define TESTMSGS_H

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>

/* A deterministic message of about size bytes, multipart with a large
 * base64 attachment so that it spans several chunks. */
static inline char *big_message(size_t size)
{
	char *msg = malloc(size + 1024);
	size_t len;
	uint32_t x = 12345;

	len = (size_t)sprintf(msg,
		"From: a@example.org\r\nSubject: big\r\nMIME-Version: 1.0\r\n"
		"Content-Type: multipart/mixed; boundary=\"XX\"\r\n\r\n"
		"--XX\r\nContent-Type: text/plain\r\n\r\nsee attached\r\n"
		"--XX\r\nContent-Type: application/octet-stream\r\n"
		"Content-Transfer-Encoding: base64\r\n\r\n");
	while (len < size) {
		for (int i = 0; i < 76; i++) {
			x = x * 1103515245 + 12345;
			msg[len++] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"[(x >> 16) & 63];
		}
		msg[len++] = '\r';
		msg[len++] = '\n';
	}
	len += (size_t)sprintf(msg + len, "--XX--\r\n");
	msg[len] = '\0';
	return msg;
}

/* A text message of about size bytes that zstd shrinks to almost
 * nothing (its chunks are stored as zstd frames). */
static inline char *text_message(size_t size)
{
	char *msg = malloc(size + 256);
	size_t len = (size_t)sprintf(msg, "From: a@example.org\r\n"
				     "Subject: t\r\n\r\n");

	for (unsigned i = 0; len < size; i++)
		len += (size_t)sprintf(msg + len, "line %u of the same text, "
				       "again and again\r\n", i % 10);
	return msg;
}

#endif
