/*
 * cmsctl.h - the operator CLI's command dispatcher.
 *
 * A command is a name, a handler and a one-line summary. main.c holds the
 * top-level table; a command group (e.g. "db" in db.c) may use
 * cmsctl_dispatch() with its own table of subcommands.
 *
 * Handlers get argv with argv[0] = their own name and return the process
 * exit code: CMSCTL_OK, CMSCTL_EFAIL (the operation failed), CMSCTL_EUSAGE
 * (bad command line), and for API commands CMSCTL_EAPI / CMSCTL_ESERVER (see
 * api.h). They print their own errors on stderr, prefixed with "cmsctl: ".
 *
 * Thread: main thread only (a CLI).
 */
#ifndef CMSCTL_H
#define CMSCTL_H

#include <stddef.h>

enum {
    CMSCTL_OK = 0,
    CMSCTL_EFAIL = 1,   /* the operation failed or its answer is negative */
    CMSCTL_EUSAGE = 2,  /* bad command line or configuration */
    CMSCTL_EAPI = 3,    /* the operator API refused the request (HTTP 4xx) */
    CMSCTL_ESERVER = 4, /* server error (HTTP 5xx) or unreachable (network, TLS) */
};

typedef struct cmsctl_cmd {
    const char *name;
    int (*run)(int argc, char **argv);
    const char *summary;
} cmsctl_cmd;

/*
 * Runs the command named argv[0] from cmds[0..n) with argv shifted so
 * that the handler sees its own name first. "help", "-h" and "--help" (or no
 * argv) print the table under the heading "usage: <prefix> <command>".
 * Unknown names are a usage error. All pointers are borrowed.
 */
int cmsctl_dispatch(const char *prefix, const cmsctl_cmd *cmds, size_t n, int argc, char **argv);

/* True when s is "-h" or "--help". */
int cmsctl_is_help(const char *s);

/* Command groups (one per file). */
int cmsctl_db(int argc, char **argv); /* db.c: migrate, status, device-add */
/* api_cmds.c: commands that use the operator API (api.h) */
int cmsctl_whoami(int argc, char **argv);
int cmsctl_enroll(int argc, char **argv); /* enroll token create|list|revoke */
int cmsctl_device(int argc, char **argv); /* device list|show|certs|revoke|decommission */
int cmsctl_group(int argc, char **argv);  /* group list|add|remove */
int cmsctl_audit(int argc, char **argv);  /* audit list|verify */
int cmsctl_firmware(int argc, char **argv); /* firmware.c: import|list|approve|withdraw|status|rollout */
int cmsctl_fw_rollout(int argc, char **argv); /* rollout.c: firmware rollout create|list|show|pause|resume|abort */

#endif
