/*
 * main.c - cmsctl entry point: a small table-driven dispatcher.
 *
 * To add a command group, write `int cmsctl_<name>(int argc, char **argv)`
 * in its own file, declare it in cmsctl.h and add one row to commands[].
 * The API commands' connection options (api.h) are also accepted before the
 * command name.
 */
#include <stdio.h>
#include <string.h>

#include "api.h"
#include "cmsctl.h"

static const cmsctl_cmd commands[] = {
    {"db", cmsctl_db, "local database administration (migrate, status, device-add)"},
    {"whoami", cmsctl_whoami, "the operator identity and role the server sees"},
    {"enroll", cmsctl_enroll, "enrollment tokens (token create, list, revoke)"},
    {"device", cmsctl_device, "devices (list, show, certs, revoke, decommission)"},
    {"group", cmsctl_group, "device groups (list, add, remove)"},
    {"audit", cmsctl_audit, "the audit log (list, verify)"},
    {"firmware", cmsctl_firmware, "signed firmware (import, list, approve, withdraw, status, rollout)"},
};

int cmsctl_is_help(const char *s)
{
    return strcmp(s, "-h") == 0 || strcmp(s, "--help") == 0;
}

static void usage(FILE *f, const char *prefix, const cmsctl_cmd *cmds, size_t n)
{
    fprintf(f, "usage: %s <command> [options]\n\ncommands:\n", prefix);
    for (size_t i = 0; i < n; i++)
        fprintf(f, "  %-14s %s\n", cmds[i].name, cmds[i].summary);
    fprintf(f, "\nRun '%s <command> --help' for the options of a command.\n", prefix);
}

int cmsctl_dispatch(const char *prefix, const cmsctl_cmd *cmds, size_t n, int argc, char **argv)
{
    if (argc < 1) {
        usage(stderr, prefix, cmds, n);
        return CMSCTL_EUSAGE;
    }
    if (cmsctl_is_help(argv[0]) || strcmp(argv[0], "help") == 0) {
        usage(stdout, prefix, cmds, n);
        return CMSCTL_OK;
    }
    for (size_t i = 0; i < n; i++)
        if (strcmp(argv[0], cmds[i].name) == 0)
            return cmds[i].run(argc, argv);
    fprintf(stderr, "cmsctl: unknown command '%s %s'\n", prefix, argv[0]);
    usage(stderr, prefix, cmds, n);
    return CMSCTL_EUSAGE;
}

int main(int argc, char **argv)
{
    /* Connection options may come before the command (cmsctl --server URL device list). */
    int used = api_global_options(argc - 1, argv + 1);
    if (used < 0)
        return CMSCTL_EUSAGE;
    int rc = cmsctl_dispatch("cmsctl", commands, sizeof commands / sizeof commands[0],
                             argc - 1 - used, argv + 1 + used);
    if (argc - 1 - used >= 1 &&
        (cmsctl_is_help(argv[1 + used]) || strcmp(argv[1 + used], "help") == 0))
        api_common_usage(stdout);
    return rc;
}
