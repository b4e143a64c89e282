/*
 * The administration commands (cmd_admin.c): clients of the running
 * sqlited over its unix socket. Same contract as the handlers in cli.h.
 */
#ifndef SM_CLI_ADMIN_H
#define SM_CLI_ADMIN_H

int cli_cmd_domain(int argc, char **argv);
int cli_cmd_alias(int argc, char **argv);
int cli_cmd_app_password(int argc, char **argv);
int cli_cmd_status(int argc, char **argv);

#endif
