/*
 * sdnotify.h - the service manager's notify protocol (systemd sd_notify(3)),
 * written directly: one datagram of "KEY=VALUE\n..." lines to the AF_UNIX
 * socket named by $NOTIFY_SOCKET ("/path", or "@name" for an abstract
 * socket), no libsystemd.
 *
 * cmsd sends READY=1 once every worker serves, RELOADING=1 (with
 * MONOTONIC_USEC, the CLOCK_MONOTONIC time in microseconds) when a SIGHUP
 * reload begins and READY=1 when it ends, STOPPING=1 when a drain begins,
 * STATUS=... with a human-readable state, and WATCHDOG=1 every half of
 * $WATCHDOG_USEC while the main loop turns.
 *
 * Thread: any. Each call opens, sends and closes its own socket.
 */
#ifndef CMS_SDNOTIFY_H
#define CMS_SDNOTIFY_H

#include <stdint.h>

/*
 * Sends state (borrowed; newline-separated assignments, e.g. "READY=1\n
 * STATUS=serving") to $NOTIFY_SOCKET. Returns 1 when sent, 0 when
 * $NOTIFY_SOCKET is unset or empty (not started by a service manager: nothing
 * to do), CMS_EINVAL when its value is not an absolute path or "@name" that
 * fits a socket address, CMS_EUNAVAIL when the socket could not be created or
 * the datagram not sent (errno says why).
 */
int sdnotify(const char *state);

/* sdnotify("READY=1\nSTATUS=<status>"); status borrowed, may be NULL. */
int sdnotify_ready(const char *status);

/* sdnotify("RELOADING=1\nMONOTONIC_USEC=<now>"): a reload begins. */
int sdnotify_reloading(void);

/* sdnotify("STOPPING=1"): the service is shutting down. */
int sdnotify_stopping(void);

/* sdnotify("WATCHDOG=1"): the main loop is alive. */
int sdnotify_watchdog(void);

/*
 * The watchdog interval the service manager expects, in microseconds, from
 * $WATCHDOG_USEC; 0 when it is unset, malformed, or meant for another process
 * ($WATCHDOG_PID set and not ours). Send WATCHDOG=1 at half of it.
 */
uint64_t sdnotify_watchdog_usec(void);

#endif
