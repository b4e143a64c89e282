/*
 * `sealmail backup`, `sealmail snapshots`, `sealmail restore`
 * (cmd_backup.c, on backup/bk.h). Exit codes as in cli.h.
 */
#ifndef SM_CLI_BACKUP_H
#define SM_CLI_BACKUP_H

int cli_cmd_backup(int argc, char **argv);
int cli_cmd_snapshots(int argc, char **argv);
int cli_cmd_restore(int argc, char **argv);

#endif
