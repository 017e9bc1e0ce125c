/*
 * firmware.c - cmsctl firmware: signed firmware releases through the
 * operator API (docs/firmware.md).
 *
 *   cmsctl firmware import --image F --descriptor D --signature S
 *   cmsctl firmware list [--model M]
 *   cmsctl firmware approve RELEASE [--device S1,S2...] [--group G1,G2...] [SERIAL...]
 *   cmsctl firmware withdraw RELEASE [--device ...] [--group ...] [SERIAL...]   (none: all)
 *   cmsctl firmware status RELEASE
 *   cmsctl firmware rollout create|list|show|pause|resume|abort ...   (rollout.c)
 *
 * Devices are grouped with `cmsctl group add NAME SERIAL...`. Approving
 * takes a second operator: the importer of a release is refused (two-person
 * rule, audited). Exit codes as in api.h.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include <openssl/evp.h>

#include "api.h"
#include "cmsctl.h"
#include "pki.h"

#define NCMDS(t) (sizeof(t) / sizeof((t)[0]))
#define MAX_IMAGE (1024u * 1024u * 1024u)

static int parsed(int rc)
{
    return rc > 0 ? CMSCTL_OK : CMSCTL_EUSAGE;
}

/* Reads a whole file (at most max bytes). */
static int read_file(const char *path, size_t max, unsigned char **out, size_t *len)
{
    struct stat st;
    FILE *f = fopen(path, "rb");
    *out = NULL;
    if (!f || fstat(fileno(f), &st) != 0 || !S_ISREG(st.st_mode)) {
        fprintf(stderr, "cmsctl: %s: %s\n", path, f ? "not a regular file" : strerror(errno));
        if (f)
            fclose(f);
        return -1;
    }
    if ((uint64_t)st.st_size > max) {
        fprintf(stderr, "cmsctl: %s: larger than %zu bytes\n", path, max);
        fclose(f);
        return -1;
    }
    *out = malloc((size_t)st.st_size + 1);
    size_t n = *out ? fread(*out, 1, (size_t)st.st_size, f) : 0;
    fclose(f);
    if (!*out || n != (size_t)st.st_size) {
        fprintf(stderr, "cmsctl: cannot read %s\n", path);
        free(*out);
        *out = NULL;
        return -1;
    }
    *len = n;
    return 0;
}

static const api_col release_cols[] = {
    {"ID", "id", API_TEXT},
    {"MODEL", "model", API_TEXT},
    {"VERSION", "version", API_TEXT},
    {"COUNTER", "security_counter", API_TEXT},
    {"BYTES", "length", API_TEXT},
    {"SHA256", "sha256", API_TEXT},
    {"IMPORTED BY", "imported_by", API_TEXT},
    {"IMPORTED AT", "imported_at", API_TIME},
    {"APPROVALS", "active_approvals", API_TEXT},
    {"INSTALLED", "installed_devices", API_TEXT},
    {NULL, NULL, API_TEXT},
};

/* ---- import -------------------------------------------------------------- */

static void import_usage(FILE *f)
{
    fprintf(f, "usage: cmsctl firmware import --image FILE --descriptor FILE --signature FILE\n"
               "                              [options]\n\n"
               "Uploads a firmware image with the publisher's release descriptor and its\n"
               "signature. cmsd verifies the signature with its trusted publisher keys and\n"
               "that the image matches the descriptor's SHA-256 and length; anything else is\n"
               "refused with the reason (and audited). Prints the release id to approve.\n\n"
               "  --image FILE       the firmware image\n"
               "  --descriptor FILE  the release descriptor (JSON, exactly the signed bytes)\n"
               "  --signature FILE   the publisher's raw signature over the descriptor\n"
               "                     (tools/fw-sign-dev.sh makes both for dev images)\n");
    api_common_usage(f);
}

static int fw_import_cmd(int argc, char **argv)
{
    const char *image = NULL, *desc = NULL, *sig = NULL;
    const api_opt opts[] = {{"image", &image, NULL},
                            {"descriptor", &desc, NULL},
                            {"signature", &sig, NULL},
                            {NULL, NULL, NULL}};
    api_args a;
    int rc = api_args_parse(argc, argv, opts, 0, 0, import_usage, &a);
    if (rc)
        return parsed(rc);
    if (!image || !desc || !sig) {
        fprintf(stderr, "cmsctl: firmware import needs --image, --descriptor and --signature\n");
        return CMSCTL_EUSAGE;
    }
    unsigned char *img = NULL, *d = NULL, *s = NULL;
    size_t img_len = 0, d_len = 0, s_len = 0;
    char *d64 = NULL, *s64 = NULL, *h1 = NULL, *h2 = NULL;
    rc = CMSCTL_EUSAGE;
    if (read_file(desc, 4096, &d, &d_len) != 0 || read_file(sig, 256, &s, &s_len) != 0 ||
        read_file(image, MAX_IMAGE, &img, &img_len) != 0)
        goto out;
    if (pki_base64_encode(d, d_len, 0, &d64, NULL) != 0 ||
        pki_base64_encode(s, s_len, 0, &s64, NULL) != 0 || !(h1 = malloc(strlen(d64) + 32)) ||
        !(h2 = malloc(strlen(s64) + 32))) {
        fprintf(stderr, "cmsctl: out of memory\n");
        rc = CMSCTL_EFAIL;
        goto out;
    }
    sprintf(h1, "Fw-Descriptor: %s", d64);
    sprintf(h2, "Fw-Signature: %s", s64);
    const char *hdrs[] = {h1, h2, NULL};
    api_path p;
    api_path_init(&p, "/api/v1/firmware/releases");
    api_resp r;
    rc = api_call_upload("POST", &p, "application/octet-stream", img, img_len, hdrs, &r);
    if (rc == CMSCTL_OK) {
        if (api_json_output()) {
            api_print_raw(&r);
        } else {
            const char *outcome = json_string_value(json_object_get(r.json, "outcome"));
            printf("%s release %lld: %s %s, security counter %lld, %lld bytes, sha256 %s\n",
                   outcome && strcmp(outcome, "exists") == 0 ? "already imported:" : "imported",
                   (long long)json_integer_value(json_object_get(r.json, "id")),
                   json_string_value(json_object_get(r.json, "model")),
                   json_string_value(json_object_get(r.json, "version")),
                   (long long)json_integer_value(json_object_get(r.json, "security_counter")),
                   (long long)json_integer_value(json_object_get(r.json, "length")),
                   json_string_value(json_object_get(r.json, "sha256")));
            printf("next: another operator approves it: cmsctl firmware approve %lld "
                   "--device SERIAL | --group NAME\n",
                   (long long)json_integer_value(json_object_get(r.json, "id")));
        }
        api_resp_free(&r);
    }
out:
    free(img);
    free(d);
    free(s);
    free(d64);
    free(s64);
    free(h1);
    free(h2);
    return rc;
}

/* ---- list ---------------------------------------------------------------- */

static void list_usage(FILE *f)
{
    fprintf(f, "usage: cmsctl firmware list [--model MODEL] [options]\n\n"
               "Lists imported releases, newest first.\n");
    api_common_usage(f);
}

static int fw_list_cmd(int argc, char **argv)
{
    const char *model = NULL;
    const api_opt opts[] = {{"model", &model, NULL}, {NULL, NULL, NULL}};
    api_args a;
    int rc = api_args_parse(argc, argv, opts, 0, 0, list_usage, &a);
    if (rc)
        return parsed(rc);
    api_path p;
    api_path_init(&p, "/api/v1/firmware/releases");
    api_path_query(&p, "model", model);
    api_resp r;
    rc = api_call("GET", &p, NULL, &r);
    if (rc != CMSCTL_OK)
        return rc;
    if (api_json_output())
        api_print_raw(&r);
    else
        api_table(json_object_get(r.json, "releases"), release_cols, "no firmware releases");
    api_resp_free(&r);
    return CMSCTL_OK;
}

/* ---- approve / withdraw ---------------------------------------------------- */

/* Appends the comma-separated names of list (may be NULL) to a. */
static void add_names(json_t *a, const char *list)
{
    while (list && *list) {
        size_t n = strcspn(list, ",");
        if (n)
            json_array_append_new(a, json_stringn(list, n));
        list += n;
        if (*list == ',')
            list++;
    }
}

static void change_usage_of(FILE *f, const char *verb)
{
    fprintf(f,
            "usage: cmsctl firmware %s RELEASE [--device S1,S2...] [--group G1,G2...]\n"
            "                                 [SERIAL...] [options]\n\n",
            verb);
    if (strcmp(verb, "approve") == 0)
        fprintf(f, "Allowlists release RELEASE (its id, see 'firmware list') for devices and/or\n"
                   "groups ('cmsctl group add NAME SERIAL...'). Needs a second operator: the one\n"
                   "who imported the release is refused (two-person rule, audited).\n");
    else
        fprintf(f, "Withdraws approvals of release RELEASE: those named, or all of them when\n"
                   "none is named. Devices are then no longer offered the release.\n");
    api_common_usage(f);
}

static void approve_usage(FILE *f)
{
    change_usage_of(f, "approve");
}

static void withdraw_usage(FILE *f)
{
    change_usage_of(f, "withdraw");
}

static int change_cmd(int argc, char **argv, const char *verb)
{
    const char *devices = NULL, *groups = NULL;
    const api_opt opts[] = {
        {"device", &devices, NULL}, {"group", &groups, NULL}, {NULL, NULL, NULL}};
    api_args a;
    bool approve = strcmp(verb, "approve") == 0;
    int rc = api_args_parse(argc, argv, opts, 1, -1, approve ? approve_usage : withdraw_usage, &a);
    if (rc)
        return parsed(rc);
    json_t *devs = json_array(), *grps = json_array();
    add_names(devs, devices);
    add_names(grps, groups);
    for (int i = 1; i < a.npos; i++)
        add_names(devs, a.pos[i]);
    if (approve && json_array_size(devs) == 0 && json_array_size(grps) == 0) {
        json_decref(devs);
        json_decref(grps);
        fprintf(stderr, "cmsctl: firmware approve: name --device SERIAL and/or --group NAME\n");
        return CMSCTL_EUSAGE;
    }
    json_t *body = json_pack("{s:o, s:o}", "devices", devs, "groups", grps);
    api_path p;
    api_path_init(&p, "/api/v1/firmware/releases");
    api_path_segment(&p, a.pos[0]);
    api_path_append(&p, approve ? "/approve" : "/withdraw");
    api_resp r;
    rc = api_call("POST", &p, body, &r);
    json_decref(body);
    if (rc != CMSCTL_OK)
        return rc;
    if (api_json_output()) {
        api_print_raw(&r);
    } else {
        static const api_col cols[] = {{"KIND", "kind", API_TEXT},
                                       {"NAME", "name", API_TEXT},
                                       {"OUTCOME", "outcome", API_TEXT},
                                       {NULL, NULL, API_TEXT}};
        api_table(json_object_get(r.json, "results"), cols,
                  approve ? "nothing approved" : "no approval to withdraw");
    }
    api_resp_free(&r);
    return CMSCTL_OK;
}

static int fw_approve_cmd(int argc, char **argv)
{
    return change_cmd(argc, argv, "approve");
}

static int fw_withdraw_cmd(int argc, char **argv)
{
    return change_cmd(argc, argv, "withdraw");
}

/* ---- status ---------------------------------------------------------------- */

static void status_usage(FILE *f)
{
    fprintf(f, "usage: cmsctl firmware status RELEASE [options]\n\n"
               "Shows a release, its approvals and every allowlisted device's state:\n"
               "approved (not offered yet), offered, downloading, downloaded, installed,\n"
               "failed (with the device's reason), rolled_back, withdrawn (by an aborted\n"
               "rollout: 'firmware rollout').\n");
    api_common_usage(f);
}

static int fw_status_cmd(int argc, char **argv)
{
    api_args a;
    int rc = api_args_parse(argc, argv, NULL, 1, 1, status_usage, &a);
    if (rc)
        return parsed(rc);
    api_path p;
    api_path_init(&p, "/api/v1/firmware/releases");
    api_path_segment(&p, a.pos[0]);
    api_resp r;
    rc = api_call("GET", &p, NULL, &r);
    if (rc != CMSCTL_OK)
        return rc;
    if (api_json_output()) {
        api_print_raw(&r);
        api_resp_free(&r);
        return CMSCTL_OK;
    }
    static const api_col rel[] = {{"id", "id", API_TEXT},
                                  {"model", "model", API_TEXT},
                                  {"version", "version", API_TEXT},
                                  {"security_counter", "security_counter", API_TEXT},
                                  {"length", "length", API_TEXT},
                                  {"sha256", "sha256", API_TEXT},
                                  {"publisher_keyid", "publisher_keyid", API_TEXT},
                                  {"imported_by", "imported_by", API_TEXT},
                                  {"imported_at", "imported_at", API_TIME},
                                  {NULL, NULL, API_TEXT}};
    static const api_col appr[] = {{"ID", "id", API_TEXT},
                                   {"DEVICE", "device", API_TEXT},
                                   {"GROUP", "group", API_TEXT},
                                   {"APPROVED BY", "approved_by", API_TEXT},
                                   {"APPROVED AT", "approved_at", API_TIME},
                                   {"WITHDRAWN BY", "withdrawn_by", API_TEXT},
                                   {"WITHDRAWN AT", "withdrawn_at", API_TIME},
                                   {NULL, NULL, API_TEXT}};
    static const api_col devs[] = {{"SERIAL", "serial", API_TEXT},
                                   {"STATE", "state", API_TEXT},
                                   {"REASON", "reason", API_TEXT},
                                   {"RUNS", "firmware_version", API_TEXT},
                                   {"VIA", "via", API_TEXT},
                                   {"DEVICE STATUS", "device_status", API_TEXT},
                                   {"UPDATED", "updated_at", API_TIME},
                                   {NULL, NULL, API_TEXT}};
    api_fields(json_object_get(r.json, "release"), rel);
    printf("\napprovals:\n");
    api_table(json_object_get(r.json, "approvals"), appr, "  none");
    printf("\ndevices:\n");
    api_table(json_object_get(r.json, "devices"), devs, "  none allowlisted");
    api_resp_free(&r);
    return CMSCTL_OK;
}

int cmsctl_firmware(int argc, char **argv)
{
    static const cmsctl_cmd cmds[] = {
        {"import", fw_import_cmd, "upload a signed image (verified by cmsd)"},
        {"list", fw_list_cmd, "list releases"},
        {"approve", fw_approve_cmd, "allowlist a release for devices/groups (second operator)"},
        {"withdraw", fw_withdraw_cmd, "withdraw approvals of a release"},
        {"status", fw_status_cmd, "a release's approvals and every device's state"},
        {"rollout", cmsctl_fw_rollout, "staged rollouts (create, list, show, pause, resume, abort)"},
    };
    return cmsctl_dispatch("cmsctl firmware", cmds, NCMDS(cmds), argc - 1, argv + 1);
}
