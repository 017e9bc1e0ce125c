/*
 * console.c - the console's static files (read once, served from memory)
 * and its session endpoint (see console.h).
 */
#include <dirent.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>

#include <openssl/crypto.h>

#include "cms_err.h"
#include "console_int.h"
#include "log.h"
#include "svc.h"
#include "../svc_int.h"

/* Scripts, styles, images and connections from this origin only; no inline
 * script or style, no plugins, never inside a frame. */
#define CSP                                                                                        \
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "              \
    "connect-src 'self'; font-src 'self'; manifest-src 'self'; base-uri 'none'; "                  \
    "form-action 'self'; frame-ancestors 'none'"

static const struct {
    const char *ext;
    const char *type;
} types[] = {
    {".html", "text/html; charset=utf-8"},
    {".js", "text/javascript; charset=utf-8"},
    {".css", "text/css; charset=utf-8"},
    {".svg", "image/svg+xml"},
    {".png", "image/png"},
    {".ico", "image/x-icon"},
    {".json", "application/json"},
    {".txt", "text/plain; charset=utf-8"},
};

static const char *type_of(const char *name)
{
    size_t n = strlen(name);
    for (size_t i = 0; i < sizeof(types) / sizeof(types[0]); i++) {
        size_t e = strlen(types[i].ext);
        if (n > e && strcmp(name + n - e, types[i].ext) == 0)
            return types[i].type;
    }
    return NULL;
}

static bool name_ok(const char *name)
{
    if (!name[0] || name[0] == '.' || strlen(name) >= sizeof(((console__file *)0)->name))
        return false;
    for (const char *p = name; *p; p++)
        if (!((*p >= 'a' && *p <= 'z') || (*p >= 'A' && *p <= 'Z') || (*p >= '0' && *p <= '9') ||
              *p == '.' || *p == '_' || *p == '-'))
            return false;
    return true;
}

/* Reads path (a regular file, at most CONSOLE_MAX_FILE_BYTES) into f. */
static int load_file(console__file *f, const char *path, char *err, size_t cap)
{
    int rc = -1;
    FILE *fp = fopen(path, "rb");
    struct stat st;
    if (!fp || fstat(fileno(fp), &st) != 0) {
        snprintf(err, cap, "console_dir: cannot read %s: %s", path, strerror(errno));
        goto cleanup;
    }
    if (st.st_size > (off_t)CONSOLE_MAX_FILE_BYTES) {
        snprintf(err, cap, "console_dir: %s is larger than %u bytes", path, CONSOLE_MAX_FILE_BYTES);
        goto cleanup;
    }
    f->len = (size_t)st.st_size;
    f->data = malloc(f->len ? f->len : 1);
    if (!f->data || fread(f->data, 1, f->len, fp) != f->len) {
        snprintf(err, cap, "console_dir: cannot read %s", path);
        goto cleanup;
    }
    rc = 0;
cleanup:
    if (fp)
        fclose(fp);
    return rc;
}

console_state *console_new(const char *dir, const char *tls_key, char *err, size_t cap)
{
    console_state *cs = calloc(1, sizeof(*cs));
    DIR *d = NULL;
    if (!cs) {
        snprintf(err, cap, "console: out of memory");
        return NULL;
    }
    if (console__csrf_init(cs, tls_key, err, cap) != 0)
        goto fail;
    if (!dir[0] || !(d = opendir(dir))) {
        log_warn("console_off", NULL, NULL, "console_dir %s%s%s: the web console is not served",
                 dir[0] ? dir : "\"\"", dir[0] ? ": " : "", dir[0] ? strerror(errno) : "");
        return cs;
    }
    struct dirent *e;
    while ((e = readdir(d))) {
        char path[4096];
        struct stat st;
        if (!name_ok(e->d_name) || !type_of(e->d_name))
            continue;
        snprintf(path, sizeof(path), "%s/%s", dir, e->d_name);
        if (stat(path, &st) != 0 || !S_ISREG(st.st_mode))
            continue;
        if (cs->nfiles == CONSOLE_MAX_FILES) {
            snprintf(err, cap, "console_dir %s: more than %d files", dir, CONSOLE_MAX_FILES);
            goto fail;
        }
        console__file *f = &cs->files[cs->nfiles];
        snprintf(f->name, sizeof(f->name), "%s", e->d_name);
        f->content_type = type_of(e->d_name);
        if (load_file(f, path, err, cap) != 0) {
            free(f->data);
            f->data = NULL;
            goto fail;
        }
        cs->nfiles++;
    }
    closedir(d);
    log_info("console", NULL, NULL, "console_dir %s: %zu file(s) served under /console/", dir,
             cs->nfiles);
    return cs;
fail:
    if (d)
        closedir(d);
    console_free(cs);
    return NULL;
}

void console_free(console_state *cs)
{
    if (!cs)
        return;
    for (size_t i = 0; i < cs->nfiles; i++)
        free(cs->files[i].data);
    OPENSSL_cleanse(cs->secret, sizeof(cs->secret));
    free(cs);
}

size_t console_file_count(const console_state *cs)
{
    return cs ? cs->nfiles : 0;
}

int console_static(https_req *r)
{
    static const http_field headers[] = {
        {"Content-Security-Policy", CSP},
        {"X-Frame-Options", "DENY"},
        {"Referrer-Policy", "no-referrer"},
        {"Cross-Origin-Opener-Policy", "same-origin"},
        {"Cross-Origin-Resource-Policy", "same-origin"},
    };
    svc_state *st = r->ctx->svc;
    const console_state *cs = st->console;
    const char *name = r->nparams ? r->params[0] : "index.html";
    for (size_t i = 0; cs && i < cs->nfiles; i++)
        if (strcmp(cs->files[i].name, name) == 0) {
            https_reply(r, 200, cs->files[i].content_type, cs->files[i].data, cs->files[i].len,
                        headers, sizeof(headers) / sizeof(headers[0]));
            return CMS_OK;
        }
    https_reply_error(r, 404, "not_found",
                      console_file_count(cs) ? "no such file" : "the console is not installed");
    return CMS_OK;
}

int console_session(https_req *r)
{
    static const char *const roles[] = {"none", "scraper", "viewer", "operator", "admin"};
    static const char *const allowed[] = {NULL};
    svc_state *st = r->ctx->svc;
    if (!svc__query_ok(r, allowed))
        return CMS_OK;
    char fp[TLS_FINGERPRINT_HEX_SIZE], tok[65];
    tls_peer_fingerprint_hex(net_conn_peer_record(r->conn), fp);
    if (!st->console) {
        https_reply_error(r, 503, "unavailable", "console not configured");
        return CMS_OK;
    }
    console_csrf_token(st->console, fp, (long long)(time(NULL) / 86400), tok);
    https_audit(r, "console_login", NULL,
                json_pack("{s:s, s:s}", "role", roles[r->role], "fingerprint", fp));
    https_reply_json(r, 200,
                     json_pack("{s:s, s:s, s:s, s:s, s:s}", "name", r->peer_cn, "role",
                               roles[r->role], "fingerprint", fp, "csrf_token", tok, "csrf_header",
                               "X-CSRF-Token"));
    OPENSSL_cleanse(tok, sizeof(tok));
    return CMS_OK;
}
