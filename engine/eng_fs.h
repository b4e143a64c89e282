/*
 * File-system helpers every layer needs for durability.
 */
#ifndef ENG_FS_H
#define ENG_FS_H

/*
 * fsyncs a directory, so that a rename or unlink in it is durable.
 * 0, ENG_ENOSPC (ENOSPC, EDQUOT) or ENG_EIO.
 */
int eng_fsync_dir(const char *dir);

#endif
