/*
 * main.c - cmsctl entry point: a small table-driven dispatcher.
 *
 * To add a command group, write `int cmsctl_<name>(int argc, char **argv)`
 * in its own file, declare it in cmsctl.h and add one row to commands[].
 */
#include <stdio.h>
#include <string.h>

#include "cmsctl.h"

static const cmsctl_cmd commands[] = {
    {"db", cmsctl_db, "local database administration (migrate, status, device-add)"},
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
    return cmsctl_dispatch("cmsctl", commands, sizeof commands / sizeof commands[0], argc - 1,
                           argv + 1);
}
