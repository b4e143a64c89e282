/*
 * What sqlited's own files share beyond srv.h: the events' connection
 * state for SERVER_STATUS and the version string. Handlers of other
 * families need none of it.
 */
#ifndef SRV_PRIVATE_H
#define SRV_PRIVATE_H

#include <stdbool.h>

#include "srv.h"

#define SQLITED_VERSION "0.1.0-dev"

/* True while the Redis connection is up (false for ev NULL). */
bool srv_events_connected(const srv_events *ev);

#endif
