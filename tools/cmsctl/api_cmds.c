/*
 * api_cmds.c - cmsctl commands that talk to cmsd's operator API:
 *
 *   cmsctl whoami
 *   cmsctl enroll token create --serial S --model M [--ttl SECONDS]
 *   cmsctl enroll token list | revoke ID
 *   cmsctl device list [--status S] [--group G] | show SERIAL | certs SERIAL
 *   cmsctl device revoke SERIAL [--reason R] | decommission SERIAL
 *   cmsctl device cert-revoke SHA256 [--reason R]
 *   cmsctl group list | add NAME SERIAL... | remove NAME SERIAL...
 *   cmsctl audit list [--since T] [--device S] [--event E] [--limit N] | verify [--anchor ID:SHA256]
 *
 * Each command is one request (lists follow the API's pages), a table or
 * the raw JSON (--json), and an exit code (see api.h).
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "api.h"
#include "cmsctl.h"

#define NCMDS(t) (sizeof(t) / sizeof((t)[0]))

/* Runs a request whose answer is printed raw with --json, else by show(). */
static int simple(const char *method, const api_path *p, const json_t *body,
                  void (*show)(const json_t *answer))
{
    api_resp r;
    int rc = api_call(method, p, body, &r);
    if (rc != CMSCTL_OK)
        return rc;
    if (api_json_output())
        api_print_raw(&r);
    else
        show(r.json);
    api_resp_free(&r);
    return CMSCTL_OK;
}

/*
 * GETs every page of a list: the API answers {list_key: [...], next_key: X}
 * and takes page_param=X for the next page. With one page, the answer is
 * kept as it came; pages are merged into the first answer otherwise. At
 * most max items (0 = all). *out: the (merged) answer object.
 */
static int get_pages(api_path *base, const char *list_key, const char *next_key,
                     const char *page_param, size_t max, json_t **out, api_resp *first)
{
    *out = NULL;
    int rc = api_call("GET", base, NULL, first);
    if (rc != CMSCTL_OK)
        return rc;
    json_t *all = first->json, *list = json_object_get(all, list_key);
    if (!json_is_array(list)) {
        fprintf(stderr, "cmsctl: unexpected answer (no \"%s\" list)\n", list_key);
        api_resp_free(first);
        return CMSCTL_ESERVER;
    }
    json_t *next = json_object_get(all, next_key);
    while (next && !json_is_null(next) && (max == 0 || json_array_size(list) < max)) {
        char cursor[128];
        api_value_text(next, API_TEXT, cursor, sizeof(cursor));
        api_path p = *base;
        api_path_query(&p, page_param, cursor);
        api_resp r;
        rc = api_call("GET", &p, NULL, &r);
        if (rc != CMSCTL_OK) {
            api_resp_free(first);
            return rc;
        }
        json_t *more = json_object_get(r.json, list_key);
        if (!json_is_array(more) || json_array_size(more) == 0) {
            api_resp_free(&r);
            break;
        }
        json_array_extend(list, more);
        json_object_set(all, next_key, json_object_get(r.json, next_key));
        api_resp_free(&r);
        next = json_object_get(all, next_key);
        char again[128];
        if (next && strcmp(api_value_text(next, API_TEXT, again, sizeof(again)), cursor) == 0) {
            fprintf(stderr, "cmsctl: the server repeated the page cursor %s; stopping\n", cursor);
            api_resp_free(first);
            return CMSCTL_ESERVER;
        }
        free(first->body); /* the raw text no longer describes the merged answer */
        first->body = NULL;
    }
    while (max && json_array_size(list) > max)
        json_array_remove(list, json_array_size(list) - 1);
    *out = all;
    return CMSCTL_OK;
}

/* Prints a (possibly merged) list answer as JSON. */
static void print_json(const api_resp *r, const json_t *all)
{
    if (r->body) {
        api_print_raw(r);
        return;
    }
    char *s = json_dumps(all, JSON_COMPACT);
    if (s)
        printf("%s\n", s);
    free(s);
}

/* ---- whoami ------------------------------------------------------------- */

static void whoami_usage(FILE *f)
{
    fprintf(f, "usage: cmsctl whoami [options]\n\n"
               "Shows the operator name (certificate CN) and role (certificate OU) that\n"
               "the server sees.\n");
    api_common_usage(f);
}

static void whoami_show(const json_t *a)
{
    char b1[256], b2[64];
    printf("%s (role %s)\n", api_value_text(json_object_get(a, "cn"), API_TEXT, b1, sizeof(b1)),
           api_value_text(json_object_get(a, "role"), API_TEXT, b2, sizeof(b2)));
}

int cmsctl_whoami(int argc, char **argv)
{
    api_args a;
    int rc = api_args_parse(argc, argv, NULL, 0, 0, whoami_usage, &a);
    if (rc)
        return rc > 0 ? CMSCTL_OK : CMSCTL_EUSAGE;
    api_path p;
    api_path_init(&p, "/api/v1/whoami");
    return simple("GET", &p, NULL, whoami_show);
}

/* ---- enroll token ------------------------------------------------------- */

static void token_create_usage(FILE *f)
{
    fprintf(f, "usage: cmsctl enroll token create --serial SERIAL --model MODEL [--ttl SECONDS]\n"
               "                                 [--token-only]\n\n"
               "Creates a one-time enrollment token for the monitor SERIAL (its certificate\n"
               "CN) of model MODEL, valid for SECONDS (server default when omitted). The\n"
               "token is printed once and cannot be shown again. Needs role operator.\n\n"
               "  --token-only  print the token alone, one line, nothing else\n"
               "                (TOKEN=$(cmsctl enroll token create ... --token-only))\n");
    api_common_usage(f);
}

static void token_create_show(const json_t *a)
{
    static const api_col cols[] = {
        {"id", "id", API_TEXT},       {"serial", "serial", API_TEXT},
        {"model", "model", API_TEXT}, {"expires", "expires_at", API_TIME},
        {"token", "token", API_TEXT}, {NULL, NULL, API_TEXT},
    };
    api_fields(a, cols);
    fprintf(stderr, "cmsctl: the token is shown only this once; give it to the device's "
                    "installer over a trusted channel\n");
}

static void token_only_show(const json_t *a)
{
    const char *t = json_string_value(json_object_get(a, "token"));
    printf("%s\n", t ? t : "");
}

static int token_create(int argc, char **argv)
{
    const char *serial = NULL, *model = NULL, *ttl = NULL;
    bool token_only = false;
    const api_opt opts[] = {{"serial", &serial, NULL},
                            {"model", &model, NULL},
                            {"ttl", &ttl, NULL},
                            {"token-only", NULL, &token_only},
                            {NULL, NULL, NULL}};
    api_args a;
    int rc = api_args_parse(argc, argv, opts, 0, 0, token_create_usage, &a);
    if (rc)
        return rc > 0 ? CMSCTL_OK : CMSCTL_EUSAGE;
    if (!serial || !*serial || !model || !*model) {
        fprintf(stderr, "cmsctl: enroll token create needs --serial and --model\n");
        token_create_usage(stderr);
        return CMSCTL_EUSAGE;
    }
    json_t *body = json_pack("{s:s, s:s}", "serial", serial, "model", model);
    if (ttl) {
        char *end;
        long long t = strtoll(ttl, &end, 10);
        if (*end || end == ttl || t < 1) {
            fprintf(stderr, "cmsctl: --ttl must be a positive number of seconds\n");
            json_decref(body);
            return CMSCTL_EUSAGE;
        }
        json_object_set_new(body, "ttl_s", json_integer(t));
    }
    api_path p;
    api_path_init(&p, "/api/v1/enroll/tokens");
    rc = simple("POST", &p, body, token_only ? token_only_show : token_create_show);
    json_decref(body);
    return rc;
}

static void token_list_usage(FILE *f)
{
    fprintf(f, "usage: cmsctl enroll token list [options]\n\n"
               "Lists enrollment tokens (never their secret) and their state.\n");
    api_common_usage(f);
}

static void token_list_show(const json_t *a)
{
    static const api_col cols[] = {
        {"ID", "id", API_TEXT},
        {"SERIAL", "serial", API_TEXT},
        {"MODEL", "model", API_TEXT},
        {"STATE", "state", API_TEXT},
        {"CREATED", "created_at", API_TIME},
        {"BY", "created_by", API_TEXT},
        {"EXPIRES", "expires_at", API_TIME},
        {"USED", "used_at", API_TIME},
        {"REVOKED", "revoked_at", API_TIME},
        {NULL, NULL, API_TEXT},
    };
    api_table(api_find_array((json_t *)a, "tokens"), cols, "(no tokens)");
}

static int token_list(int argc, char **argv)
{
    api_args a;
    int rc = api_args_parse(argc, argv, NULL, 0, 0, token_list_usage, &a);
    if (rc)
        return rc > 0 ? CMSCTL_OK : CMSCTL_EUSAGE;
    api_path p;
    api_path_init(&p, "/api/v1/enroll/tokens");
    return simple("GET", &p, NULL, token_list_show);
}

static void token_revoke_usage(FILE *f)
{
    fprintf(f, "usage: cmsctl enroll token revoke ID [options]\n\n"
               "Revokes an unused enrollment token. Needs role operator.\n");
    api_common_usage(f);
}

static const char *g_done_msg; /* what a successful action prints */

static void done_show(const json_t *a)
{
    (void)a;
    printf("%s\n", g_done_msg);
}

/* done_show, then the reason the server recorded (it maps "stolen" to keyCompromise ...). */
static void revoked_show(const json_t *a)
{
    const char *reason = json_string_value(json_object_get(a, "reason"));
    if (reason)
        printf("%s (reason %s)\n", g_done_msg, reason);
    else
        done_show(a);
}

static int token_revoke(int argc, char **argv)
{
    api_args a;
    int rc = api_args_parse(argc, argv, NULL, 1, 1, token_revoke_usage, &a);
    if (rc)
        return rc > 0 ? CMSCTL_OK : CMSCTL_EUSAGE;
    api_path p;
    api_path_init(&p, "/api/v1/enroll/tokens");
    api_path_segment(&p, a.pos[0]);
    api_path_append(&p, "/revoke");
    char msg[256];
    snprintf(msg, sizeof(msg), "token %s revoked", a.pos[0]);
    g_done_msg = msg;
    return simple("POST", &p, NULL, done_show);
}

static int enroll_token(int argc, char **argv)
{
    static const cmsctl_cmd cmds[] = {
        {"create", token_create, "create a one-time enrollment token for a serial"},
        {"list", token_list, "list enrollment tokens"},
        {"revoke", token_revoke, "revoke an unused token"},
    };
    return cmsctl_dispatch("cmsctl enroll token", cmds, NCMDS(cmds), argc - 1, argv + 1);
}

int cmsctl_enroll(int argc, char **argv)
{
    static const cmsctl_cmd cmds[] = {
        {"token", enroll_token, "enrollment tokens (create, list, revoke)"},
    };
    return cmsctl_dispatch("cmsctl enroll", cmds, NCMDS(cmds), argc - 1, argv + 1);
}

/* ---- device ------------------------------------------------------------- */

static const api_col device_cols[] = {
    {"SERIAL", "serial", API_TEXT},
    {"STATUS", "status", API_TEXT},
    {"MODEL", "model", API_TEXT},
    {"GROUPS", "groups", API_LIST},
    {"LOCATION", "location", API_TEXT},
    {"FIRMWARE", "firmware_version", API_TEXT},
    {"LAST SEEN", "last_seen_at", API_TIME},
    {"CERT EXPIRES", "certificate.not_after", API_TIME},
    {NULL, NULL, API_TEXT},
};

static void device_list_usage(FILE *f)
{
    fprintf(f, "usage: cmsctl device list [--status STATUS] [--group GROUP] [options]\n\n"
               "Lists registered devices, by serial.\n\n"
               "  --status STATUS  pending | active | revoked | decommissioned\n"
               "  --group GROUP    only members of GROUP\n");
    api_common_usage(f);
}

static int device_list(int argc, char **argv)
{
    const char *status = NULL, *group = NULL;
    const api_opt opts[] = {{"status", &status, NULL}, {"group", &group, NULL}, {NULL, NULL, NULL}};
    api_args a;
    int rc = api_args_parse(argc, argv, opts, 0, 0, device_list_usage, &a);
    if (rc)
        return rc > 0 ? CMSCTL_OK : CMSCTL_EUSAGE;
    api_path p;
    api_path_init(&p, "/api/v1/devices");
    api_path_query(&p, "status", status);
    api_path_query(&p, "group", group);
    api_resp r;
    json_t *all;
    rc = get_pages(&p, "devices", "next_after", "after", 0, &all, &r);
    if (rc != CMSCTL_OK)
        return rc;
    if (api_json_output())
        print_json(&r, all);
    else
        api_table(json_object_get(all, "devices"), device_cols, "(no devices)");
    api_resp_free(&r);
    return CMSCTL_OK;
}

static void device_show_usage(FILE *f)
{
    fprintf(f, "usage: cmsctl device show SERIAL [options]\n\n"
               "Shows one device: status, model, groups, last contact, firmware, current\n"
               "certificate, other identifiers.\n");
    api_common_usage(f);
}

static void device_show_show(const json_t *a)
{
    static const api_col cols[] = {
        {"serial", "serial", API_TEXT},
        {"status", "status", API_TEXT},
        {"model", "model", API_TEXT},
        {"location", "location", API_TEXT},
        {"groups", "groups", API_LIST},
        {"firmware", "firmware_version", API_TEXT},
        {"registered", "created_at", API_TIME},
        {"last seen", "last_seen_at", API_TIME},
        {"last peer", "last_peer", API_TEXT},
        {"status since", "status_changed_at", API_TIME},
        {"status reason", "status_reason", API_TEXT},
        {"cert serial", "certificate.serial_hex", API_TEXT},
        {"cert sha256", "certificate.sha256", API_TEXT},
        {"cert key", "certificate.key", API_TEXT},
        {"cert valid from", "certificate.not_before", API_TIME},
        {"cert expires", "certificate.not_after", API_TIME},
        {NULL, NULL, API_TEXT},
    };
    api_fields(a, cols);
    json_t *ids = json_object_get(a, "identifiers");
    size_t i;
    json_t *id;
    json_array_foreach(ids, i, id)
    {
        char b1[256], b2[64];
        printf("%-16s %s (%s)\n", i == 0 ? "identifiers:" : "",
               api_value_text(json_object_get(id, "identifier"), API_TEXT, b1, sizeof(b1)),
               api_value_text(json_object_get(id, "kind"), API_TEXT, b2, sizeof(b2)));
    }
}

static int device_show(int argc, char **argv)
{
    api_args a;
    int rc = api_args_parse(argc, argv, NULL, 1, 1, device_show_usage, &a);
    if (rc)
        return rc > 0 ? CMSCTL_OK : CMSCTL_EUSAGE;
    api_path p;
    api_path_init(&p, "/api/v1/devices");
    api_path_segment(&p, a.pos[0]);
    return simple("GET", &p, NULL, device_show_show);
}

static void device_certs_usage(FILE *f)
{
    fprintf(f, "usage: cmsctl device certs SERIAL [options]\n\n"
               "Lists the certificates issued to a device, newest first, with their state\n"
               "(current, superseded, revoked) and validity.\n");
    api_common_usage(f);
}

static void device_certs_show(const json_t *a)
{
    static const api_col cols[] = {
        {"CERT SERIAL", "serial_hex", API_TEXT},
        {"STATE", "state", API_TEXT},
        {"KEY", "key", API_TEXT},
        {"ISSUED", "issued_at", API_TIME},
        {"VIA", "issued_via", API_TEXT},
        {"NOT AFTER", "not_after", API_TIME},
        {"SUPERSEDED", "superseded_at", API_TIME},
        {"REVOKED", "revoked_at", API_TIME},
        {"REASON", "revocation_reason", API_TEXT},
        {"SHA-256", "sha256", API_TEXT},
        {NULL, NULL, API_TEXT},
    };
    api_table(json_object_get(a, "certs"), cols, "(no certificates)");
}

static int device_certs(int argc, char **argv)
{
    api_args a;
    int rc = api_args_parse(argc, argv, NULL, 1, 1, device_certs_usage, &a);
    if (rc)
        return rc > 0 ? CMSCTL_OK : CMSCTL_EUSAGE;
    api_path p;
    api_path_init(&p, "/api/v1/devices");
    api_path_segment(&p, a.pos[0]);
    api_path_append(&p, "/certs");
    return simple("GET", &p, NULL, device_certs_show);
}

static void device_revoke_usage(FILE *f)
{
    fprintf(f, "usage: cmsctl device revoke SERIAL [--reason REASON] [options]\n\n"
               "Revokes the device: its certificates are revoked (CRL), its live\n"
               "connections closed, re-enrollment refused. Needs role admin.\n\n"
               "  --reason REASON  RFC 5280 reason: unspecified (default), keyCompromise,\n"
               "                   affiliationChanged, superseded, cessationOfOperation,\n"
               "                   privilegeWithdrawn; or stolen, lost, compromised\n"
               "                   (= keyCompromise), retired (= cessationOfOperation); any\n"
               "                   case. The RFC 5280 name is recorded on the CRL and in the\n"
               "                   audit log\n");
    api_common_usage(f);
}

static int device_revoke(int argc, char **argv)
{
    const char *reason = NULL;
    const api_opt opts[] = {{"reason", &reason, NULL}, {NULL, NULL, NULL}};
    api_args a;
    int rc = api_args_parse(argc, argv, opts, 1, 1, device_revoke_usage, &a);
    if (rc)
        return rc > 0 ? CMSCTL_OK : CMSCTL_EUSAGE;
    api_path p;
    api_path_init(&p, "/api/v1/devices");
    api_path_segment(&p, a.pos[0]);
    api_path_append(&p, "/revoke");
    json_t *body = reason ? json_pack("{s:s}", "reason", reason) : NULL;
    char msg[256];
    snprintf(msg, sizeof(msg), "device %s revoked", a.pos[0]);
    g_done_msg = msg;
    rc = simple("POST", &p, body, revoked_show);
    json_decref(body);
    return rc;
}

static void device_decommission_usage(FILE *f)
{
    fprintf(f, "usage: cmsctl device decommission SERIAL [options]\n\n"
               "Retires the device for good (its certificates stop working). Needs role\n"
               "admin.\n");
    api_common_usage(f);
}

static int device_decommission(int argc, char **argv)
{
    api_args a;
    int rc = api_args_parse(argc, argv, NULL, 1, 1, device_decommission_usage, &a);
    if (rc)
        return rc > 0 ? CMSCTL_OK : CMSCTL_EUSAGE;
    api_path p;
    api_path_init(&p, "/api/v1/devices");
    api_path_segment(&p, a.pos[0]);
    api_path_append(&p, "/decommission");
    char msg[256];
    snprintf(msg, sizeof(msg), "device %s decommissioned", a.pos[0]);
    g_done_msg = msg;
    return simple("POST", &p, NULL, done_show);
}

static void cert_revoke_usage(FILE *f)
{
    fprintf(f, "usage: cmsctl device cert-revoke SHA256 [--reason REASON] [options]\n\n"
               "Revokes one certificate, by its SHA-256 fingerprint (64 hex digits, as\n"
               "'cmsctl device certs' shows it; colons allowed): it goes on the CRL and its\n"
               "connections are closed; the device keeps its status and may enroll again\n"
               "with a new token. Needs role admin.\n\n"
               "  --reason REASON  as for 'cmsctl device revoke' (default unspecified)\n");
    api_common_usage(f);
}

static int cert_revoke(int argc, char **argv)
{
    const char *reason = NULL;
    const api_opt opts[] = {{"reason", &reason, NULL}, {NULL, NULL, NULL}};
    api_args a;
    int rc = api_args_parse(argc, argv, opts, 1, 1, cert_revoke_usage, &a);
    if (rc)
        return rc > 0 ? CMSCTL_OK : CMSCTL_EUSAGE;
    api_path p;
    api_path_init(&p, "/api/v1/certs");
    api_path_segment(&p, a.pos[0]);
    api_path_append(&p, "/revoke");
    json_t *body = reason ? json_pack("{s:s}", "reason", reason) : NULL;
    char msg[256];
    snprintf(msg, sizeof(msg), "certificate %s revoked", a.pos[0]);
    g_done_msg = msg;
    rc = simple("POST", &p, body, revoked_show);
    json_decref(body);
    return rc;
}

int cmsctl_device(int argc, char **argv)
{
    static const cmsctl_cmd cmds[] = {
        {"list", device_list, "list devices (--status, --group)"},
        {"show", device_show, "show one device"},
        {"certs", device_certs, "list a device's certificates"},
        {"revoke", device_revoke, "revoke a device (admin)"},
        {"decommission", device_decommission, "decommission a device (admin)"},
        {"cert-revoke", cert_revoke, "revoke one certificate by fingerprint (admin)"},
    };
    return cmsctl_dispatch("cmsctl device", cmds, NCMDS(cmds), argc - 1, argv + 1);
}

/* ---- group -------------------------------------------------------------- */

static void group_list_usage(FILE *f)
{
    fprintf(f, "usage: cmsctl group list [options]\n\n"
               "Lists device groups and how many devices each has. A device may be in\n"
               "several groups; 'cmsctl device list --group NAME' lists the members.\n");
    api_common_usage(f);
}

static void group_list_show(const json_t *a)
{
    static const api_col cols[] = {
        {"NAME", "name", API_TEXT},
        {"DEVICES", "devices", API_TEXT},
        {"CREATED", "created_at", API_TIME},
        {"CREATED BY", "created_by", API_TEXT},
        {"DESCRIPTION", "description", API_TEXT},
        {NULL, NULL, API_TEXT},
    };
    api_table(json_object_get(a, "groups"), cols, "(no groups)");
}

static int group_list(int argc, char **argv)
{
    api_args a;
    int rc = api_args_parse(argc, argv, NULL, 0, 0, group_list_usage, &a);
    if (rc)
        return rc > 0 ? CMSCTL_OK : CMSCTL_EUSAGE;
    api_path p;
    api_path_init(&p, "/api/v1/groups");
    return simple("GET", &p, NULL, group_list_show);
}

static void group_add_usage(FILE *f)
{
    fprintf(f, "usage: cmsctl group add NAME SERIAL... [options]\n\n"
               "Adds devices to group NAME (created if new). All or nothing: an unknown\n"
               "serial changes nothing. Needs role operator; audited.\n");
    api_common_usage(f);
}

static void group_remove_usage(FILE *f)
{
    fprintf(f, "usage: cmsctl group remove NAME SERIAL... [options]\n\n"
               "Removes devices from group NAME (the group stays, possibly empty). Needs\n"
               "role operator; audited.\n");
    api_common_usage(f);
}

static void print_names(const char *label, const json_t *list)
{
    if (json_array_size(list) == 0)
        return;
    char buf[4096];
    printf("  %-15s %s\n", label, api_value_text(list, API_LIST, buf, sizeof(buf)));
}

static void group_change_show(const json_t *a)
{
    char buf[128];
    printf("group %s:\n", api_value_text(json_object_get(a, "group"), API_TEXT, buf, sizeof(buf)));
    print_names("added", json_object_get(a, "added"));
    print_names("already member", json_object_get(a, "already_member"));
    print_names("removed", json_object_get(a, "removed"));
    print_names("not a member", json_object_get(a, "not_member"));
}

static int group_change(int argc, char **argv, const char *member, void (*usage)(FILE *f))
{
    api_args a;
    int rc = api_args_parse(argc, argv, NULL, 2, -1, usage, &a);
    if (rc)
        return rc > 0 ? CMSCTL_OK : CMSCTL_EUSAGE;
    json_t *serials = json_array();
    for (int i = 1; i < a.npos; i++)
        json_array_append_new(serials, json_string(a.pos[i]));
    json_t *body = json_pack("{s:o}", member, serials);
    api_path p;
    api_path_init(&p, "/api/v1/groups");
    api_path_segment(&p, a.pos[0]);
    api_path_append(&p, "/devices");
    rc = simple("POST", &p, body, group_change_show);
    json_decref(body);
    return rc;
}

static int group_add(int argc, char **argv)
{
    return group_change(argc, argv, "add", group_add_usage);
}

static int group_remove(int argc, char **argv)
{
    return group_change(argc, argv, "remove", group_remove_usage);
}

int cmsctl_group(int argc, char **argv)
{
    static const cmsctl_cmd cmds[] = {
        {"list", group_list, "list groups"},
        {"add", group_add, "add devices to a group (operator)"},
        {"remove", group_remove, "remove devices from a group (operator)"},
    };
    return cmsctl_dispatch("cmsctl group", cmds, NCMDS(cmds), argc - 1, argv + 1);
}

/* ---- audit -------------------------------------------------------------- */

static void audit_list_usage(FILE *f)
{
    fprintf(f, "usage: cmsctl audit list [--since TIME] [--device SERIAL] [--event EVENT]\n"
               "                        [--limit N] [options]\n\n"
               "Lists audit events, newest first.\n\n"
               "  --since TIME     only events at or after TIME (ISO 8601, e.g.\n"
               "                   2026-11-28T06:00:00Z)\n"
               "  --device SERIAL  only events about device SERIAL\n"
               "  --event EVENT    only events named EVENT (e.g. device_revoked)\n"
               "  --limit N        at most N events (default 100)\n");
    api_common_usage(f);
}

static int audit_list(int argc, char **argv)
{
    const char *since = NULL, *device = NULL, *event = NULL, *limit = NULL;
    const api_opt opts[] = {{"since", &since, NULL},
                            {"device", &device, NULL},
                            {"event", &event, NULL},
                            {"limit", &limit, NULL},
                            {NULL, NULL, NULL}};
    api_args a;
    int rc = api_args_parse(argc, argv, opts, 0, 0, audit_list_usage, &a);
    if (rc)
        return rc > 0 ? CMSCTL_OK : CMSCTL_EUSAGE;
    long long max = 100;
    if (limit) {
        char *end;
        max = strtoll(limit, &end, 10);
        if (*end || end == limit || max < 1 || max > 1000000) {
            fprintf(stderr, "cmsctl: --limit must be 1..1000000\n");
            return CMSCTL_EUSAGE;
        }
    }
    char page[24];
    snprintf(page, sizeof(page), "%lld", max < 1000 ? max : 1000);
    api_path p;
    api_path_init(&p, "/api/v1/audit");
    api_path_query(&p, "since", since);
    api_path_query(&p, "device", device);
    api_path_query(&p, "event", event);
    api_path_query(&p, "limit", page);
    api_resp r;
    json_t *all;
    rc = get_pages(&p, "events", "next_before", "before", (size_t)max, &all, &r);
    if (rc != CMSCTL_OK)
        return rc;
    if (api_json_output()) {
        print_json(&r, all);
    } else {
        static const api_col cols[] = {
            {"ID", "id", API_TEXT},         {"AT", "at", API_TIME},
            {"EVENT", "event", API_TEXT},   {"ACTOR", "actor", API_TEXT},
            {"DEVICE", "device", API_TEXT}, {"PEER", "peer", API_TEXT},
            {"DETAIL", "detail", API_TEXT}, {NULL, NULL, API_TEXT},
        };
        api_table(json_object_get(all, "events"), cols, "(no events)");
    }
    api_resp_free(&r);
    return CMSCTL_OK;
}

static void audit_verify_usage(FILE *f)
{
    fprintf(f, "usage: cmsctl audit verify [--anchor ID:SHA256] [options]\n\n"
               "Has the server recompute the audit log's hash chain. Exit status 0 when\n"
               "intact, 1 when broken (the first broken row is named).\n\n"
               "  --anchor ID:SHA256  also check that row ID still has this hash, as cmsd\n"
               "                      logged it (event=audit_anchor msg=\"id=ID sha256=...\"):\n"
               "                      a chain rewritten and re-hashed by someone with database\n"
               "                      superuser rights still links, but not to the anchor\n");
    api_common_usage(f);
}

static int audit_verify(int argc, char **argv)
{
    const char *anchor = NULL;
    const api_opt opts[] = {{"anchor", &anchor, NULL}, {NULL, NULL, NULL}};
    api_args a;
    int rc = api_args_parse(argc, argv, opts, 0, 0, audit_verify_usage, &a);
    if (rc)
        return rc > 0 ? CMSCTL_OK : CMSCTL_EUSAGE;
    api_path p;
    api_path_init(&p, "/api/v1/audit/verify");
    api_path_query(&p, "anchor", anchor);
    api_resp r;
    rc = api_call("GET", &p, NULL, &r);
    if (rc != CMSCTL_OK)
        return rc;
    json_t *intact = json_object_get(r.json, "intact");
    if (!json_is_boolean(intact)) {
        fprintf(stderr, "cmsctl: unexpected answer (no \"intact\")\n");
        api_resp_free(&r);
        return CMSCTL_ESERVER;
    }
    char n[32], last[32], bad[32], id[32], hash[128], why[512];
    api_value_text(json_object_get(r.json, "rows_checked"), API_TEXT, n, sizeof(n));
    api_value_text(json_object_get(r.json, "last_id"), API_TEXT, last, sizeof(last));
    api_value_text(json_object_get(r.json, "bad_rows"), API_TEXT, bad, sizeof(bad));
    api_value_text(json_object_get(r.json, "first_bad_id"), API_TEXT, id, sizeof(id));
    api_value_text(json_object_get(r.json, "last_hash"), API_TEXT, hash, sizeof(hash));
    api_value_text(json_object_get(r.json, "reason"), API_TEXT, why, sizeof(why));
    if (api_json_output())
        api_print_raw(&r);
    if (json_is_true(intact)) {
        if (!api_json_output())
            printf("audit chain intact: %s rows checked, last row %s, sha256 %s\n", n, last, hash);
        if (!api_json_output() && anchor)
            printf("anchor: row %.*s has the logged sha256\n", (int)strcspn(anchor, ":"), anchor);
        rc = CMSCTL_OK;
    } else {
        if (!api_json_output())
            printf("audit chain BROKEN at row %s: %s (%s rows checked, %s bad)\n", id, why, n, bad);
        fprintf(stderr, "cmsctl: audit chain broken: first bad row %s\n", id);
        rc = CMSCTL_EFAIL;
    }
    api_resp_free(&r);
    return rc;
}

int cmsctl_audit(int argc, char **argv)
{
    static const cmsctl_cmd cmds[] = {
        {"list", audit_list, "list audit events, newest first"},
        {"verify", audit_verify, "verify the audit log's hash chain"},
    };
    return cmsctl_dispatch("cmsctl audit", cmds, NCMDS(cmds), argc - 1, argv + 1);
}
