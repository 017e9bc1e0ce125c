/*
 * rollout.c - cmsctl firmware rollout: staged rollouts of an approved
 * release through the operator API (docs/firmware.md, "Staged rollouts").
 *
 *   cmsctl firmware rollout create RELEASE --stages S1,S2... [--success PCT]
 *          [--failure PCT] [--window HH:MM-HH:MM] [--tz ZONE] [--max-retargets N]
 *          [--no-start]
 *   cmsctl firmware rollout list [--release ID] [--state S]
 *   cmsctl firmware rollout show ID [--stage N]
 *   cmsctl firmware rollout pause ID [--note TEXT]
 *   cmsctl firmware rollout resume ID
 *   cmsctl firmware rollout abort ID [--note TEXT]
 *
 * cmsd checks every value (and audits a refusal); cmsctl only turns the
 * command line into the JSON body. Exit codes as in api.h.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "api.h"
#include "cmsctl.h"

#define NCMDS(t) (sizeof(t) / sizeof((t)[0]))

static int parsed(int rc)
{
    return rc > 0 ? CMSCTL_OK : CMSCTL_EUSAGE;
}

static const api_col rollout_cols[] = {
    {"ID", "id", API_TEXT},
    {"RELEASE", "release_id", API_TEXT},
    {"VERSION", "version", API_TEXT},
    {"STATE", "state", API_TEXT},
    {"STAGE", "current_stage", API_TEXT},
    {"OF", "stages_total", API_TEXT},
    {"DEVICES", "devices", API_TEXT},
    {"INSTALLED", "installed", API_TEXT},
    {"FAILED", "failed", API_TEXT},
    {"WINDOW", "window", API_TEXT},
    {"CREATED BY", "created_by", API_TEXT},
    {NULL, NULL, API_TEXT},
};

static const api_col stage_cols[] = {
    {"STAGE", "stage", API_TEXT},
    {"SPEC", "spec", API_TEXT},
    {"DEVICES", "devices", API_TEXT},
    {"INSTALLED", "installed", API_TEXT},
    {"FAILED", "failed", API_TEXT},
    {"ROLLED BACK", "rolled_back", API_TEXT},
    {"IN PROGRESS", "in_progress", API_TEXT},
    {"PENDING", "pending", API_TEXT},
    {"RETARGETS", "retargets", API_TEXT},
    {"OPENED", "opened_at", API_TIME},
    {"DONE", "done_at", API_TIME},
    {NULL, NULL, API_TEXT},
};

/* Prints one rollout: its fields and stage table (and devices when present). */
static void print_rollout(const json_t *o)
{
    static const api_col fields[] = {
        {"id", "id", API_TEXT},
        {"release", "release_id", API_TEXT},
        {"model", "model", API_TEXT},
        {"version", "version", API_TEXT},
        {"state", "state", API_TEXT},
        {"stage", "current_stage", API_TEXT},
        {"stages", "stages_total", API_TEXT},
        {"success_threshold", "success_threshold", API_TEXT},
        {"failure_threshold", "failure_threshold", API_TEXT},
        {"window", "window", API_TEXT},
        {"time_zone", "time_zone", API_TEXT},
        {"window_open", "window_open", API_TEXT},
        {"max_retargets", "max_retargets", API_TEXT},
        {"pause_reason", "pause_reason", API_TEXT},
        {"devices", "devices", API_TEXT},
        {"installed", "installed", API_TEXT},
        {"failed", "failed", API_TEXT},
        {"retargets", "retargets", API_TEXT},
        {"created_by", "created_by", API_TEXT},
        {"created_at", "created_at", API_TIME},
        {"started_at", "started_at", API_TIME},
        {"finished_at", "finished_at", API_TIME},
        {NULL, NULL, API_TEXT},
    };
    static const api_col devs[] = {
        {"SERIAL", "serial", API_TEXT},
        {"STAGE", "stage", API_TEXT},
        {"STATE", "state", API_TEXT},
        {"RETARGETS", "retargets", API_TEXT},
        {"EXCLUDED", "excluded_reason", API_TEXT},
        {"REASON", "reason", API_TEXT},
        {"UPDATED", "updated_at", API_TIME},
        {NULL, NULL, API_TEXT},
    };
    api_fields(o, fields);
    printf("\nstages:\n");
    api_table(json_object_get(o, "stages"), stage_cols, "  none");
    const json_t *d = json_object_get(o, "device_list");
    if (d) {
        printf("\ndevices:\n");
        api_table(d, devs, "  none");
    }
}

/* The answer of a change: {"rollout": {...}} */
static int print_answer(api_resp *r)
{
    if (api_json_output())
        api_print_raw(r);
    else
        print_rollout(json_object_get(r->json, "rollout"));
    api_resp_free(r);
    return CMSCTL_OK;
}

/* A percentage or count option: decimal digits, else a usage error. */
static int number(const char *opt, const char *s, json_t *body, const char *member)
{
    char *end;
    if (!s)
        return CMSCTL_OK;
    errno = 0;
    long v = strtol(s, &end, 10);
    if (!*s || *end || errno || v < -1000000 || v > 1000000) {
        fprintf(stderr, "cmsctl: --%s needs a number, not \"%s\"\n", opt, s);
        return CMSCTL_EUSAGE;
    }
    json_object_set_new(body, member, json_integer(v));
    return CMSCTL_OK;
}

/* ---- create ------------------------------------------------------------------ */

static void create_usage(FILE *f)
{
    fprintf(
        f, "usage: cmsctl firmware rollout create RELEASE --stages S1,S2... [options]\n\n"
           "Rolls release RELEASE out over the devices it is approved for, in stages.\n"
           "A stage is N%% (cumulative: 10%%,50%%,100%% = a tenth, then up to half, then\n"
           "the rest, by a stable hash of the serial) or group:NAME (that group's\n"
           "devices). The next stage opens when --success percent of a stage installed\n"
           "the release; the rollout pauses by itself when more than --failure percent\n"
           "of an open stage failed or rolled back.\n\n"
           "  --stages LIST        the stages, comma-separated (required)\n"
           "  --success PCT        1..100 (default 90)\n"
           "  --failure PCT        0..100 (default 10)\n"
           "  --window HH:MM-HH:MM daily maintenance window: devices are offered the\n"
           "                       release only inside it (default: always)\n"
           "  --tz ZONE            the window's time zone (default UTC; e.g. Europe/Berlin)\n"
           "  --max-retargets N    offers again to a device that rolled back (0..10, default 1)\n"
           "  --no-start           create it paused before its first stage ('resume' starts it)\n");
    api_common_usage(f);
}

static int create_cmd(int argc, char **argv)
{
    const char *stages = NULL, *success = NULL, *failure = NULL, *window = NULL, *tz = NULL,
               *retargets = NULL;
    bool no_start = false;
    const api_opt opts[] = {{"stages", &stages, NULL},
                            {"success", &success, NULL},
                            {"failure", &failure, NULL},
                            {"window", &window, NULL},
                            {"tz", &tz, NULL},
                            {"max-retargets", &retargets, NULL},
                            {"no-start", NULL, &no_start},
                            {NULL, NULL, NULL}};
    api_args a;
    int rc = api_args_parse(argc, argv, opts, 1, 1, create_usage, &a);
    if (rc)
        return parsed(rc);
    if (!stages) {
        fprintf(stderr, "cmsctl: firmware rollout create needs --stages (e.g. 10%%,50%%,100%%)\n");
        return CMSCTL_EUSAGE;
    }
    json_t *body = json_object();
    if (number("release", a.pos[0], body, "release_id") != CMSCTL_OK ||
        number("success", success, body, "success_threshold") != CMSCTL_OK ||
        number("failure", failure, body, "failure_threshold") != CMSCTL_OK ||
        number("max-retargets", retargets, body, "max_retargets") != CMSCTL_OK) {
        json_decref(body);
        return CMSCTL_EUSAGE;
    }
    json_t *st = json_array();
    for (const char *s = stages; *s;) {
        size_t n = strcspn(s, ",");
        if (n)
            json_array_append_new(st, json_stringn(s, n));
        s += n;
        if (*s == ',')
            s++;
    }
    json_object_set_new(body, "stages", st);
    if (window)
        json_object_set_new(body, "window", json_string(window));
    if (tz)
        json_object_set_new(body, "time_zone", json_string(tz));
    if (no_start)
        json_object_set_new(body, "start", json_false());
    api_path p;
    api_path_init(&p, "/api/v1/firmware/rollouts");
    api_resp r;
    rc = api_call("POST", &p, body, &r);
    json_decref(body);
    if (rc != CMSCTL_OK)
        return rc;
    return print_answer(&r);
}

/* ---- list / show --------------------------------------------------------------- */

static void list_usage(FILE *f)
{
    fprintf(f, "usage: cmsctl firmware rollout list [--release ID] [--state S] [options]\n\n"
               "Lists rollouts, newest first. S: created, running, paused, completed, aborted.\n");
    api_common_usage(f);
}

static int list_cmd(int argc, char **argv)
{
    const char *release = NULL, *state = NULL;
    const api_opt opts[] = {
        {"release", &release, NULL}, {"state", &state, NULL}, {NULL, NULL, NULL}};
    api_args a;
    int rc = api_args_parse(argc, argv, opts, 0, 0, list_usage, &a);
    if (rc)
        return parsed(rc);
    api_path p;
    api_path_init(&p, "/api/v1/firmware/rollouts");
    api_path_query(&p, "release_id", release);
    api_path_query(&p, "state", state);
    api_resp r;
    rc = api_call("GET", &p, NULL, &r);
    if (rc != CMSCTL_OK)
        return rc;
    if (api_json_output())
        api_print_raw(&r);
    else
        api_table(json_object_get(r.json, "rollouts"), rollout_cols, "no rollouts");
    api_resp_free(&r);
    return CMSCTL_OK;
}

static void show_usage(FILE *f)
{
    fprintf(f, "usage: cmsctl firmware rollout show ID [--stage N] [options]\n\n"
               "Shows a rollout: its state, thresholds and window, per stage how many devices\n"
               "installed, failed, rolled back, are in progress or pending, and each device\n"
               "(at most 1000; --stage N: those of stage N).\n");
    api_common_usage(f);
}

static int show_cmd(int argc, char **argv)
{
    const char *stage = NULL;
    const api_opt opts[] = {{"stage", &stage, NULL}, {NULL, NULL, NULL}};
    api_args a;
    int rc = api_args_parse(argc, argv, opts, 1, 1, show_usage, &a);
    if (rc)
        return parsed(rc);
    api_path p;
    api_path_init(&p, "/api/v1/firmware/rollouts");
    api_path_segment(&p, a.pos[0]);
    api_path_query(&p, "stage", stage);
    api_resp r;
    rc = api_call("GET", &p, NULL, &r);
    if (rc != CMSCTL_OK)
        return rc;
    if (!api_json_output() &&
        json_is_true(json_object_get(json_object_get(r.json, "rollout"), "device_list_truncated")))
        fprintf(stderr, "cmsctl: the first 1000 devices only: use --stage N\n");
    return print_answer(&r);
}

/* ---- pause / resume / abort ---------------------------------------------------- */

static void pause_usage(FILE *f)
{
    fprintf(f, "usage: cmsctl firmware rollout pause ID [--note TEXT] [options]\n\n"
               "Stops offering the release to devices not offered it yet (downloads under\n"
               "way go on). 'resume' goes on.\n");
    api_common_usage(f);
}

static void resume_usage(FILE *f)
{
    fprintf(f, "usage: cmsctl firmware rollout resume ID [options]\n\n"
               "Goes on with a paused rollout (or starts one created with --no-start). The\n"
               "failures seen so far are acknowledged: only new ones pause it again.\n");
    api_common_usage(f);
}

static void abort_usage(FILE *f)
{
    fprintf(f, "usage: cmsctl firmware rollout abort ID [--note TEXT] [options]\n\n"
               "Ends a rollout: every offer to a device that has not installed the release\n"
               "is withdrawn (its downloads refused); devices that installed it keep it.\n");
    api_common_usage(f);
}

static int change_cmd(int argc, char **argv, const char *verb)
{
    const char *note = NULL;
    bool resume = strcmp(verb, "resume") == 0;
    const api_opt with_note[] = {{"note", &note, NULL}, {NULL, NULL, NULL}};
    api_args a;
    int rc = api_args_parse(argc, argv, resume ? NULL : with_note, 1, 1,
                            resume                       ? resume_usage
                            : strcmp(verb, "pause") == 0 ? pause_usage
                                                         : abort_usage,
                            &a);
    if (rc)
        return parsed(rc);
    json_t *body = json_object();
    if (note)
        json_object_set_new(body, "note", json_string(note));
    api_path p;
    api_path_init(&p, "/api/v1/firmware/rollouts");
    api_path_segment(&p, a.pos[0]);
    api_path_append(&p, resume ? "/resume" : strcmp(verb, "pause") == 0 ? "/pause" : "/abort");
    api_resp r;
    rc = api_call("POST", &p, body, &r);
    json_decref(body);
    if (rc != CMSCTL_OK)
        return rc;
    return print_answer(&r);
}

static int pause_cmd(int argc, char **argv)
{
    return change_cmd(argc, argv, "pause");
}

static int resume_cmd(int argc, char **argv)
{
    return change_cmd(argc, argv, "resume");
}

static int abort_cmd(int argc, char **argv)
{
    return change_cmd(argc, argv, "abort");
}

int cmsctl_fw_rollout(int argc, char **argv)
{
    static const cmsctl_cmd cmds[] = {
        {"create", create_cmd, "roll an approved release out in stages"},
        {"list", list_cmd, "list rollouts"},
        {"show", show_cmd, "a rollout, its stages and devices"},
        {"pause", pause_cmd, "stop offering (operator)"},
        {"resume", resume_cmd, "go on, or start a rollout created with --no-start"},
        {"abort", abort_cmd, "end it; withdraw offers to devices that did not install"},
    };
    return cmsctl_dispatch("cmsctl firmware rollout", cmds, NCMDS(cmds), argc - 1, argv + 1);
}
