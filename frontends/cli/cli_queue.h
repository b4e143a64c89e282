/*
 * `sealmail queue` (cmd_queue.c): the outbound queue, read locally with
 * the queue key. Same contract as the handlers in cli.h.
 */
#ifndef SM_CLI_QUEUE_H
#define SM_CLI_QUEUE_H

int cli_cmd_queue(int argc, char **argv);

#endif
