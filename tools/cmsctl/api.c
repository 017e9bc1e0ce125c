/*
 * api.c - cmsctl's operator API client: settings (flags, environment,
 * config file), command-line parsing, one HTTPS request with libcurl and
 * the operator certificate, error reporting and table output. See api.h.
 */
#include <errno.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include <curl/curl.h>

#include "api.h"
#include "cmsctl.h"

#define MAX_BODY (64u * 1024u * 1024u) /* an answer larger than this is refused */
#define DEFAULT_TIMEOUT_S 60L

/* Settings given on the command line (before or after the command). */
static struct {
    const char *server, *cert, *key, *cacert, *config, *timeout;
    bool json;
} g_flags;

/* ---- command line ------------------------------------------------------- */

static const struct {
    const char *name;
    const char **value;
} common_opts[] = {
    {"server", &g_flags.server}, {"cert", &g_flags.cert},     {"key", &g_flags.key},
    {"cacert", &g_flags.cacert}, {"config", &g_flags.config}, {"timeout", &g_flags.timeout},
};

void api_common_usage(FILE *f)
{
    fprintf(f, "\nconnection (flags, else CMS_SERVER/CMS_CERT/CMS_KEY/CMS_CACERT, else the\n"
               "config file --config FILE, $CMS_CONFIG or ~/.config/cmsctl.conf):\n"
               "  --server URL     https://HOST:PORT of cmsd's HTTPS listener\n"
               "  --cert FILE      operator certificate (PEM)\n"
               "  --key FILE       its private key (PEM)\n"
               "  --cacert FILE    CA that issued the server certificate (PEM)\n"
               "  --config FILE    config file (lines: server|cert|key|cacert|timeout = VALUE)\n"
               "  --timeout SECS   whole-request timeout (default 60)\n"
               "  --json           print the API's JSON answer instead of a table\n"
               "\nexit status: 0 ok, 1 negative result, 2 usage/configuration, 3 refused by\n"
               "the API (HTTP 4xx), 4 server error or unreachable (HTTP 5xx, network, TLS)\n");
}

bool api_json_output(void)
{
    return g_flags.json;
}

/*
 * Tries argv[*i] as a common option. Returns 1 (consumed, *i advanced past
 * its value), 0 (not a common option), -1 (usage error printed).
 */
static int common_option(int argc, char **argv, int *i)
{
    const char *a = argv[*i];
    if (strncmp(a, "--", 2) != 0)
        return 0;
    const char *name = a + 2, *eq = strchr(name, '=');
    size_t nlen = eq ? (size_t)(eq - name) : strlen(name);
    if (nlen == 4 && strncmp(name, "json", 4) == 0) {
        if (eq) {
            fprintf(stderr, "cmsctl: --json takes no value\n");
            return -1;
        }
        g_flags.json = true;
        return 1;
    }
    for (size_t k = 0; k < sizeof(common_opts) / sizeof(common_opts[0]); k++) {
        if (strlen(common_opts[k].name) != nlen || strncmp(common_opts[k].name, name, nlen) != 0)
            continue;
        if (eq) {
            *common_opts[k].value = eq + 1;
        } else if (*i + 1 < argc) {
            *common_opts[k].value = argv[++*i];
        } else {
            fprintf(stderr, "cmsctl: --%s needs a value\n", common_opts[k].name);
            return -1;
        }
        return 1;
    }
    return 0;
}

int api_global_options(int argc, char **argv)
{
    int i = 0;
    while (i < argc) {
        int rc = common_option(argc, argv, &i);
        if (rc < 0)
            return -1;
        if (rc == 0)
            break;
        i++;
    }
    return i;
}

int api_args_parse(int argc, char **argv, const api_opt *opts, int min_pos, int max_pos,
                   void (*usage)(FILE *f), api_args *out)
{
    out->pos = argv + argc; /* filled below: positional args are compacted in place */
    out->npos = 0;
    char **pos = calloc((size_t)argc + 1, sizeof(*pos));
    if (!pos) {
        fprintf(stderr, "cmsctl: out of memory\n");
        return -1;
    }
    bool only_pos = false;
    int npos = 0;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (only_pos || a[0] != '-' || strcmp(a, "-") == 0) {
            pos[npos++] = argv[i];
            continue;
        }
        if (strcmp(a, "--") == 0) {
            only_pos = true;
            continue;
        }
        if (cmsctl_is_help(a)) {
            usage(stdout);
            free(pos);
            return 1;
        }
        int rc = common_option(argc, argv, &i);
        if (rc < 0)
            goto usage_error;
        if (rc > 0)
            continue;
        const char *name = a + 2, *eq = strchr(name, '=');
        size_t nlen = eq ? (size_t)(eq - name) : strlen(name);
        const api_opt *o = NULL;
        for (size_t k = 0; a[1] == '-' && opts && opts[k].name; k++)
            if (strlen(opts[k].name) == nlen && strncmp(opts[k].name, name, nlen) == 0)
                o = &opts[k];
        if (!o) {
            fprintf(stderr, "cmsctl: %s: unknown option %s\n", argv[0], a);
            goto usage_error;
        }
        if (o->flag) {
            if (eq) {
                fprintf(stderr, "cmsctl: --%s takes no value\n", o->name);
                goto usage_error;
            }
            *o->flag = true;
        } else if (eq) {
            *o->value = eq + 1;
        } else if (i + 1 < argc) {
            *o->value = argv[++i];
        } else {
            fprintf(stderr, "cmsctl: --%s needs a value\n", o->name);
            goto usage_error;
        }
    }
    if (npos < min_pos || (max_pos >= 0 && npos > max_pos)) {
        if (npos < min_pos)
            fprintf(stderr, "cmsctl: %s: missing argument\n", argv[0]);
        else
            fprintf(stderr, "cmsctl: %s: unexpected argument '%s'\n", argv[0], pos[max_pos]);
        goto usage_error;
    }
    /* Positional arguments go back into argv (after argv[0]), in order. */
    for (int k = 0; k < npos; k++)
        argv[1 + k] = pos[k];
    free(pos);
    out->pos = argv + 1;
    out->npos = npos;
    return 0;
usage_error:
    free(pos);
    (void)usage;
    fprintf(stderr, "cmsctl: run the command with --help for its usage\n");
    return -1;
}

/* ---- settings ----------------------------------------------------------- */

typedef struct settings {
    char *server, *cert, *key, *cacert; /* owned */
    long timeout_s;
} settings;

static void settings_free(settings *s)
{
    free(s->server);
    free(s->cert);
    free(s->key);
    free(s->cacert);
    memset(s, 0, sizeof(*s));
}

static char *trim(char *s)
{
    while (*s == ' ' || *s == '\t')
        s++;
    size_t n = strlen(s);
    while (n && (s[n - 1] == ' ' || s[n - 1] == '\t' || s[n - 1] == '\r' || s[n - 1] == '\n'))
        s[--n] = '\0';
    return s;
}

/* dir of path + "/" + value when value is relative (a path setting). */
static char *resolve(const char *path, const char *value)
{
    const char *slash = strrchr(path, '/');
    if (value[0] == '/' || !slash)
        return strdup(value);
    size_t dlen = (size_t)(slash - path);
    char *out = malloc(dlen + strlen(value) + 2);
    if (out)
        sprintf(out, "%.*s/%s", (int)dlen, path, value);
    return out;
}

/* Default config file path (may not exist), or NULL. */
static char *default_config(void)
{
    const char *env = getenv("CMS_CONFIG");
    if (env && *env)
        return strdup(env);
    char buf[PATH_MAX];
    const char *xdg = getenv("XDG_CONFIG_HOME"), *home = getenv("HOME");
    if (xdg && *xdg)
        snprintf(buf, sizeof(buf), "%s/cmsctl.conf", xdg);
    else if (home && *home)
        snprintf(buf, sizeof(buf), "%s/.config/cmsctl.conf", home);
    else
        return NULL;
    return strdup(buf);
}

/* Reads the config file into s (only settings not set yet). Returns 0 or -1 (printed). */
static int read_config(const char *path, bool must_exist, settings *s)
{
    FILE *f = fopen(path, "r");
    if (!f) {
        if (!must_exist && errno == ENOENT)
            return 0;
        fprintf(stderr, "cmsctl: cannot read config file %s: %s\n", path, strerror(errno));
        return -1;
    }
    char line[4096];
    int lineno = 0, rc = 0;
    while (fgets(line, sizeof(line), f)) {
        lineno++;
        char *l = trim(line);
        if (!*l || *l == '#')
            continue;
        char *eq = strchr(l, '=');
        if (!eq) {
            fprintf(stderr, "cmsctl: %s:%d: expected 'key = value'\n", path, lineno);
            rc = -1;
            break;
        }
        *eq = '\0';
        char *k = trim(l), *v = trim(eq + 1);
        size_t vlen = strlen(v);
        if (vlen >= 2 && ((v[0] == '"' && v[vlen - 1] == '"') || (v[0] == '\'' && v[vlen - 1] == '\''))) {
            v[vlen - 1] = '\0';
            v++;
        }
        char **dst = NULL;
        bool is_path = true;
        if (strcmp(k, "server") == 0) {
            dst = &s->server;
            is_path = false;
        } else if (strcmp(k, "cert") == 0) {
            dst = &s->cert;
        } else if (strcmp(k, "key") == 0) {
            dst = &s->key;
        } else if (strcmp(k, "cacert") == 0) {
            dst = &s->cacert;
        } else if (strcmp(k, "timeout") == 0) {
            char *end;
            long t = strtol(v, &end, 10);
            if (*end || t < 1 || t > 86400) {
                fprintf(stderr, "cmsctl: %s:%d: timeout must be 1..86400 seconds\n", path,
                        lineno);
                rc = -1;
                break;
            }
            if (!s->timeout_s)
                s->timeout_s = t;
            continue;
        } else {
            fprintf(stderr, "cmsctl: %s:%d: unknown setting '%s' (server, cert, key, cacert, "
                            "timeout)\n",
                    path, lineno, k);
            rc = -1;
            break;
        }
        if (!*dst && *v)
            *dst = is_path ? resolve(path, v) : strdup(v);
    }
    fclose(f);
    return rc;
}

static char *first_of(const char *flag, const char *env_name)
{
    if (flag && *flag)
        return strdup(flag);
    const char *env = getenv(env_name);
    return env && *env ? strdup(env) : NULL;
}

/* Resolves every setting. Returns 0 or -1 (printed). */
static int settings_load(settings *s)
{
    memset(s, 0, sizeof(*s));
    s->server = first_of(g_flags.server, "CMS_SERVER");
    s->cert = first_of(g_flags.cert, "CMS_CERT");
    s->key = first_of(g_flags.key, "CMS_KEY");
    s->cacert = first_of(g_flags.cacert, "CMS_CACERT");
    if (g_flags.timeout) {
        char *end;
        long t = strtol(g_flags.timeout, &end, 10);
        if (*end || t < 1 || t > 86400) {
            fprintf(stderr, "cmsctl: --timeout must be 1..86400 seconds\n");
            return -1;
        }
        s->timeout_s = t;
    }
    char *cfg = g_flags.config ? strdup(g_flags.config) : default_config();
    if (cfg && read_config(cfg, g_flags.config != NULL, s) != 0) {
        free(cfg);
        return -1;
    }
    free(cfg);
    if (!s->timeout_s)
        s->timeout_s = DEFAULT_TIMEOUT_S;
    if (!s->server) {
        fprintf(stderr, "cmsctl: no server: pass --server https://HOST:PORT, set CMS_SERVER or "
                        "put 'server = ...' in ~/.config/cmsctl.conf\n");
        return -1;
    }
    if (!s->cert || !s->key) {
        fprintf(stderr, "cmsctl: no operator certificate: pass --cert FILE --key FILE, set "
                        "CMS_CERT and CMS_KEY, or put cert/key in ~/.config/cmsctl.conf\n");
        return -1;
    }
    if (strncasecmp(s->server, "http://", 7) == 0) {
        fprintf(stderr, "cmsctl: refusing plain http (%s): the API is HTTPS only\n", s->server);
        return -1;
    }
    if (strncasecmp(s->server, "https://", 8) != 0) {
        char *u = malloc(strlen(s->server) + 9);
        if (!u)
            return -1;
        sprintf(u, "https://%s", s->server);
        free(s->server);
        s->server = u;
    }
    size_t n = strlen(s->server);
    while (n > 8 && s->server[n - 1] == '/')
        s->server[--n] = '\0';
    return 0;
}

/* ---- paths -------------------------------------------------------------- */

void api_path_init(api_path *p, const char *prefix)
{
    memset(p, 0, sizeof(*p));
    api_path_append(p, prefix);
}

void api_path_append(api_path *p, const char *text)
{
    size_t n = strlen(text);
    if (p->len + n >= sizeof(p->buf)) {
        p->overflow = true;
        return;
    }
    memcpy(p->buf + p->len, text, n + 1);
    p->len += n;
}

/* Appends s percent-encoded (every byte but unreserved characters). */
static void append_escaped(api_path *p, const char *s)
{
    static const char hex[] = "0123456789ABCDEF";
    for (const unsigned char *c = (const unsigned char *)s; *c; c++) {
        char one[4];
        if ((*c >= 'a' && *c <= 'z') || (*c >= 'A' && *c <= 'Z') || (*c >= '0' && *c <= '9') ||
            *c == '-' || *c == '.' || *c == '_' || *c == '~') {
            one[0] = (char)*c;
            one[1] = '\0';
        } else {
            one[0] = '%';
            one[1] = hex[*c >> 4];
            one[2] = hex[*c & 15];
            one[3] = '\0';
        }
        api_path_append(p, one);
    }
}

void api_path_segment(api_path *p, const char *segment)
{
    api_path_append(p, "/");
    append_escaped(p, segment);
}

void api_path_query(api_path *p, const char *name, const char *value)
{
    if (!value)
        return;
    api_path_append(p, p->has_query ? "&" : "?");
    p->has_query = true;
    append_escaped(p, name);
    api_path_append(p, "=");
    append_escaped(p, value);
}

/* ---- requests ----------------------------------------------------------- */

typedef struct sink {
    char *data;
    size_t len, cap;
    bool too_big;
} sink;

static size_t on_body(char *ptr, size_t size, size_t nmemb, void *ud)
{
    sink *b = ud;
    size_t n = size * nmemb;
    if (b->len + n + 1 > MAX_BODY) {
        b->too_big = true;
        return 0; /* aborts the transfer */
    }
    if (b->len + n + 1 > b->cap) {
        size_t cap = b->cap ? b->cap : 16384;
        while (cap < b->len + n + 1)
            cap *= 2;
        char *d = realloc(b->data, cap);
        if (!d)
            return 0;
        b->data = d;
        b->cap = cap;
    }
    memcpy(b->data + b->len, ptr, n);
    b->len += n;
    b->data[b->len] = '\0';
    return n;
}

void api_resp_free(api_resp *r)
{
    free(r->body);
    json_decref(r->json);
    memset(r, 0, sizeof(*r));
}

void api_print_raw(const api_resp *resp)
{
    if (!resp->body)
        return;
    fwrite(resp->body, 1, resp->len, stdout);
    if (resp->len == 0 || resp->body[resp->len - 1] != '\n')
        putchar('\n');
}

/* Prints an HTTP error answer. */
static void print_http_error(const char *method, const api_path *path, long status,
                             const json_t *j, const char *body)
{
    const char *err = json_string_value(json_object_get(j, "error"));
    const char *detail = json_string_value(json_object_get(j, "detail"));
    if (err)
        fprintf(stderr, "cmsctl: %s %s: HTTP %ld %s%s%s\n", method, path->buf, status, err,
                detail && *detail ? ": " : "", detail ? detail : "");
    else
        fprintf(stderr, "cmsctl: %s %s: HTTP %ld%s%.200s\n", method, path->buf, status,
                body && *body ? ": " : "", body ? body : "");
}

/* A raw request body for the next api_call (api_call_upload). */
static struct {
    const char *content_type;
    const void *data;
    size_t len;
    const char *const *headers;
} g_upload;

int api_call_upload(const char *method, const api_path *path, const char *content_type,
                    const void *data, size_t len, const char *const *headers, api_resp *resp)
{
    g_upload.content_type = content_type;
    g_upload.data = data;
    g_upload.len = len;
    g_upload.headers = headers;
    int rc = api_call(method, path, NULL, resp);
    memset(&g_upload, 0, sizeof(g_upload));
    return rc;
}

int api_call(const char *method, const api_path *path, const json_t *body, api_resp *resp)
{
    memset(resp, 0, sizeof(*resp));
    if (path->overflow) {
        fprintf(stderr, "cmsctl: request path too long\n");
        return CMSCTL_EUSAGE;
    }
    settings s;
    if (settings_load(&s) != 0) {
        settings_free(&s);
        return CMSCTL_EUSAGE;
    }
    int rc = CMSCTL_ESERVER;
    CURL *c = NULL;
    struct curl_slist *hdrs = NULL;
    char *payload = NULL, *url = NULL;
    char errbuf[CURL_ERROR_SIZE] = "";
    sink out = {0};
    if (curl_global_init(CURL_GLOBAL_DEFAULT) != CURLE_OK || !(c = curl_easy_init())) {
        fprintf(stderr, "cmsctl: cannot initialise libcurl\n");
        goto cleanup;
    }
    url = malloc(strlen(s.server) + path->len + 1);
    if (!url)
        goto cleanup;
    sprintf(url, "%s%s", s.server, path->buf);
    curl_easy_setopt(c, CURLOPT_URL, url);
    curl_easy_setopt(c, CURLOPT_PROTOCOLS_STR, "https");
    curl_easy_setopt(c, CURLOPT_FOLLOWLOCATION, 0L);
    curl_easy_setopt(c, CURLOPT_SSL_VERIFYPEER, 1L);
    curl_easy_setopt(c, CURLOPT_SSL_VERIFYHOST, 2L);
    curl_easy_setopt(c, CURLOPT_SSLVERSION, (long)CURL_SSLVERSION_TLSv1_2);
    curl_easy_setopt(c, CURLOPT_SSLCERT, s.cert);
    curl_easy_setopt(c, CURLOPT_SSLCERTTYPE, "PEM");
    curl_easy_setopt(c, CURLOPT_SSLKEY, s.key);
    curl_easy_setopt(c, CURLOPT_SSLKEYTYPE, "PEM");
    if (s.cacert)
        curl_easy_setopt(c, CURLOPT_CAINFO, s.cacert);
    curl_easy_setopt(c, CURLOPT_CONNECTTIMEOUT, s.timeout_s < 15 ? s.timeout_s : 15L);
    curl_easy_setopt(c, CURLOPT_TIMEOUT, s.timeout_s);
    curl_easy_setopt(c, CURLOPT_NOSIGNAL, 1L);
    curl_easy_setopt(c, CURLOPT_ERRORBUFFER, errbuf);
    curl_easy_setopt(c, CURLOPT_WRITEFUNCTION, on_body);
    curl_easy_setopt(c, CURLOPT_WRITEDATA, &out);
    curl_easy_setopt(c, CURLOPT_USERAGENT, "cmsctl");
    curl_easy_setopt(c, CURLOPT_CUSTOMREQUEST, method);
    hdrs = curl_slist_append(hdrs, "Accept: application/json");
    if (g_upload.data) {
        char ct[160];
        snprintf(ct, sizeof(ct), "Content-Type: %s", g_upload.content_type);
        hdrs = curl_slist_append(hdrs, ct);
        for (size_t i = 0; g_upload.headers && g_upload.headers[i]; i++)
            hdrs = curl_slist_append(hdrs, g_upload.headers[i]);
        curl_easy_setopt(c, CURLOPT_POSTFIELDS, g_upload.data);
        curl_easy_setopt(c, CURLOPT_POSTFIELDSIZE_LARGE, (curl_off_t)g_upload.len);
    } else if (body) {
        payload = json_dumps(body, JSON_COMPACT);
        if (!payload)
            goto cleanup;
        hdrs = curl_slist_append(hdrs, "Content-Type: application/json");
        curl_easy_setopt(c, CURLOPT_POSTFIELDS, payload);
        curl_easy_setopt(c, CURLOPT_POSTFIELDSIZE, (long)strlen(payload));
    } else if (strcmp(method, "POST") == 0) {
        curl_easy_setopt(c, CURLOPT_POSTFIELDS, "");
        curl_easy_setopt(c, CURLOPT_POSTFIELDSIZE, 0L);
    }
    hdrs = curl_slist_append(hdrs, "Expect:"); /* no 100-continue round trip */
    curl_easy_setopt(c, CURLOPT_HTTPHEADER, hdrs);

    CURLcode cr = curl_easy_perform(c);
    if (cr != CURLE_OK) {
        if (out.too_big)
            fprintf(stderr, "cmsctl: %s %s: answer larger than %u bytes\n", method, url,
                    MAX_BODY);
        else
            fprintf(stderr, "cmsctl: %s %s: %s\n", method, url,
                    errbuf[0] ? errbuf : curl_easy_strerror(cr));
        /* A local file problem (certificate, key, CA) is a configuration error. */
        if (cr == CURLE_SSL_CERTPROBLEM || cr == CURLE_SSL_CACERT_BADFILE ||
            cr == CURLE_URL_MALFORMAT || cr == CURLE_UNSUPPORTED_PROTOCOL)
            rc = CMSCTL_EUSAGE;
        goto cleanup;
    }
    curl_easy_getinfo(c, CURLINFO_RESPONSE_CODE, &resp->status);
    resp->body = out.data ? out.data : strdup("");
    resp->len = out.len;
    out.data = NULL;
    if (!resp->body)
        goto cleanup;
    resp->json = json_loadb(resp->body, resp->len, 0, NULL);
    if (resp->status >= 200 && resp->status < 300) {
        if (!json_is_object(resp->json)) {
            fprintf(stderr, "cmsctl: %s %s: HTTP %ld but the answer is not a JSON object\n",
                    method, path->buf, resp->status);
            goto cleanup;
        }
        rc = CMSCTL_OK;
        goto cleanup;
    }
    if (g_flags.json && json_is_object(resp->json))
        api_print_raw(resp);
    print_http_error(method, path, resp->status, resp->json, resp->body);
    rc = resp->status >= 400 && resp->status < 500 ? CMSCTL_EAPI : CMSCTL_ESERVER;
cleanup:
    if (rc != CMSCTL_OK)
        api_resp_free(resp);
    free(out.data);
    free(payload);
    free(url);
    curl_slist_free_all(hdrs);
    if (c)
        curl_easy_cleanup(c);
    curl_global_cleanup();
    settings_free(&s);
    return rc;
}

/* ---- output ------------------------------------------------------------- */

const char *api_value_text(const json_t *v, enum api_col_kind kind, char *buf, size_t cap)
{
    if (!v || json_is_null(v)) {
        snprintf(buf, cap, "-");
        return buf;
    }
    if (json_is_string(v)) {
        const char *s = json_string_value(v);
        if (kind == API_TIME && strlen(s) >= 19 && s[10] == 'T') {
            /* 2026-11-28T06:14:54.123456Z -> 2026-11-28 06:14:54Z */
            snprintf(buf, cap, "%.10s %.8sZ", s, s + 11);
            return buf;
        }
        snprintf(buf, cap, "%s", *s ? s : "-");
        return buf;
    }
    if (json_is_integer(v)) {
        snprintf(buf, cap, "%" JSON_INTEGER_FORMAT, json_integer_value(v));
        return buf;
    }
    if (json_is_boolean(v)) {
        snprintf(buf, cap, "%s", json_is_true(v) ? "yes" : "no");
        return buf;
    }
    if (json_is_array(v)) {
        size_t i, n = 0;
        json_t *e;
        buf[0] = '\0';
        json_array_foreach(v, i, e)
        {
            char tmp[256];
            const char *t = api_value_text(e, API_TEXT, tmp, sizeof(tmp));
            int w = snprintf(buf + n, cap > n ? cap - n : 0, "%s%s", i ? "," : "", t);
            if (w < 0 || (size_t)w >= cap - n)
                break;
            n += (size_t)w;
        }
        return n ? buf : "-";
    }
    char *d = json_dumps(v, JSON_COMPACT | JSON_ENCODE_ANY);
    snprintf(buf, cap, "%s", d ? d : "?");
    free(d);
    return buf;
}

/* Member key of o; "a.b" looks into the object member a. */
static json_t *member(const json_t *o, const char *key)
{
    const char *dot = strchr(key, '.');
    if (!dot)
        return json_object_get(o, key);
    char head[64];
    snprintf(head, sizeof(head), "%.*s", (int)(dot - key), key);
    return member(json_object_get(o, head), dot + 1);
}

static void print_cell(const char *text, size_t width, bool last)
{
    if (last)
        printf("%s\n", text);
    else
        printf("%-*s  ", (int)width, text);
}

void api_table(const json_t *rows, const api_col *cols, const char *empty)
{
    size_t ncols = 0;
    while (cols[ncols].header)
        ncols++;
    size_t *w = calloc(ncols, sizeof(*w));
    if (!w)
        return;
    char buf[4096];
    for (size_t c = 0; c < ncols; c++)
        w[c] = strlen(cols[c].header);
    size_t i;
    json_t *row;
    json_array_foreach(rows, i, row)
    {
        for (size_t c = 0; c < ncols; c++) {
            size_t n = strlen(api_value_text(member(row, cols[c].key), cols[c].kind,
                                             buf, sizeof(buf)));
            if (n > w[c])
                w[c] = n;
        }
    }
    if (json_array_size(rows) == 0) {
        if (empty)
            printf("%s\n", empty);
        free(w);
        return;
    }
    for (size_t c = 0; c < ncols; c++)
        print_cell(cols[c].header, w[c], c + 1 == ncols);
    json_array_foreach(rows, i, row)
    {
        for (size_t c = 0; c < ncols; c++)
            print_cell(api_value_text(member(row, cols[c].key), cols[c].kind, buf,
                                      sizeof(buf)),
                       w[c], c + 1 == ncols);
    }
    free(w);
}

void api_fields(const json_t *o, const api_col *cols)
{
    size_t w = 0;
    for (size_t c = 0; cols[c].header; c++)
        if (strlen(cols[c].header) > w)
            w = strlen(cols[c].header);
    char buf[4096], head[128];
    for (size_t c = 0; cols[c].header; c++) {
        snprintf(head, sizeof(head), "%s:", cols[c].header);
        printf("%-*s %s\n", (int)w + 1, head,
               api_value_text(member(o, cols[c].key), cols[c].kind, buf, sizeof(buf)));
    }
}

json_t *api_find_array(json_t *o, const char *key)
{
    json_t *a = key ? json_object_get(o, key) : NULL;
    if (json_is_array(a))
        return a;
    const char *k;
    json_t *v;
    json_object_foreach(o, k, v)
    {
        if (json_is_array(v))
            return v;
    }
    return NULL;
}
