/*
 * Zeroed pages under the content.header column and the search text.
 *
 * SQLCipher 3.4.1 decrypts a page that is all zeroes on disk to zeroes
 * without an error (store_private.h, store_zero_block): a zeroed overflow
 * page of a long value reads as 4,044 zero bytes of it, so it always holds
 * a block of ENG_ZERO_BLOCK zeroes at a multiple of ENG_ZERO_BLOCK from the
 * value's start. Body chunks were checked since session 7; these are the
 * checks of the other long values read back as they are:
 *
 * - content.header (the raw top-level header, a copy of the message's first
 *   bytes): a header holding such a block is read again from the body
 *   chunks, which are checked (a chunk holding a zero block is never stored
 *   raw: its zstd frame carries a checksum); equal bytes are the message's
 *   own (a header full of NULs is legal input, if pathological), anything
 *   else is ENG_ECORRUPT. The writers therefore need no change, and a
 *   healthy header costs one scan of its bytes.
 * - the search text (fts header and body): decoded text with NUL bytes in it
 *   means nothing to a search (no IMAP search string holds a NUL), so the
 *   writer stores NULs of a text that holds a zero block as spaces
 *   (store_text_unzero) and the readers take such a block for damage.
 */
#include "store_private.h"
#include "eng_error.h"

#include <stdlib.h>
#include <string.h>

int store_header_verify(eng_message *m, const void *header, size_t len)
{
	unsigned char *back;
	long n;
	int err = 0;

	if (!store_zero_block(header, len, 0))
		return 0;
	if (len > eng_message_size(m))
		return ENG_ECORRUPT;
	back = eng_malloc(len);
	n = eng_message_read(m, 0, back, len);
	if (n < 0)
		err = (int)n;
	else if ((size_t)n != len || memcmp(back, header, len) != 0)
		err = ENG_ECORRUPT;
	free(back);
	if (err != 0)
		eng_log(ENG_LOG_ERROR, "a stored header does not match its "
			"message (a zeroed page?): %s", eng_strerror(err));
	return err;
}

bool store_text_unzero(const void *text, size_t len, eng_buf *out)
{
	if (!store_zero_block(text, len, 0))
		return false;
	eng_buf_reset(out);
	eng_buf_append(out, text, len);
	for (size_t i = 0; i < len; i++)
		if (out->data[i] == '\0')
			out->data[i] = ' ';
	return true;
}
