/*
 * api.h - cmsctl's client for the operator API (/api/v1 over HTTPS with the
 * operator's certificate, libcurl), shared by the command groups that talk
 * to cmsd (enroll, device, group, audit, whoami).
 *
 * Connection settings, each from the first place that has it:
 *   1. command-line flags  --server URL --cert FILE --key FILE --cacert FILE
 *                          (before the command or among its options)
 *   2. environment         CMS_SERVER, CMS_CERT, CMS_KEY, CMS_CACERT
 *   3. a config file       --config FILE, else $CMS_CONFIG, else
 *                          $XDG_CONFIG_HOME/cmsctl.conf or ~/.config/cmsctl.conf
 *                          (lines "key = value": server, cert, key, cacert,
 *                          timeout; '#' comments; relative paths are relative
 *                          to the file's directory)
 * --server accepts https://HOST:PORT or HOST:PORT; plain http is refused.
 * Without a CA file (--cacert) the system trust store verifies the server.
 *
 * Exit codes (cmsctl.h): 0 done; 1 the operation's answer is negative (e.g.
 * audit chain broken); 2 usage or configuration error; 3 the API refused the
 * request (HTTP 4xx: authentication, role, unknown name, bad value); 4 the
 * server failed (HTTP 5xx) or could not be reached (network, TLS).
 *
 * Output: human tables on stdout by default; with --json, the API's JSON
 * body as received (also for errors), for scripts. Errors always go to
 * stderr as "cmsctl: ..." with the API's error code and detail.
 *
 * Thread: main thread only.
 */
#ifndef CMSCTL_API_H
#define CMSCTL_API_H

#include <stdbool.h>
#include <stddef.h>
#include <stdio.h>

#include <jansson.h>

/* ---- command line ------------------------------------------------------- */

/* An option of a command, "--name VALUE" / "--name=VALUE" or a flag "--name". */
typedef struct api_opt {
    const char *name;   /* without the dashes */
    const char **value; /* receives the value (option with an argument), or NULL */
    bool *flag;         /* set to true (flag without an argument), or NULL */
} api_opt;

/* What a command line holds after api_args(). */
typedef struct api_args {
    char **pos; /* positional arguments (borrowed from argv) */
    int npos;
} api_args;

/*
 * Parses argv[1..argc) (argv[0] is the command's name) against opts (NULL
 * name terminated, may be NULL) plus the common options (--server, --cert,
 * --key, --cacert, --config, --timeout, --json, -h/--help). "--" ends the
 * options. usage(f) prints the command's help (on --help). Returns 0 (go
 * on), 1 (help was printed: exit 0) or -1 (usage error, printed with a hint
 * to --help: exit CMSCTL_EUSAGE).
 * Positional arguments are checked against [min_pos, max_pos] (max_pos < 0:
 * no maximum).
 */
int api_args_parse(int argc, char **argv, const api_opt *opts, int min_pos, int max_pos,
                   void (*usage)(FILE *f), api_args *out);

/*
 * Consumes the common options that come before the command name
 * (cmsctl --server URL device list). Returns the number of argv entries
 * used, or -1 after printing a usage error.
 */
int api_global_options(int argc, char **argv);

/* The help text of the common options, for usage functions. */
void api_common_usage(FILE *f);

/* True when --json was given. */
bool api_json_output(void);

/* ---- requests ----------------------------------------------------------- */

/* A URL path with escaped segments and query parameters. */
typedef struct api_path {
    char buf[2048];
    size_t len;
    bool has_query;
    bool overflow;
} api_path;

/* Starts a path with a fixed prefix ("/api/v1/devices"). */
void api_path_init(api_path *p, const char *prefix);
/* Appends "/" + the percent-encoded segment. */
void api_path_segment(api_path *p, const char *segment);
/* Appends a literal suffix ("/revoke"). */
void api_path_append(api_path *p, const char *text);
/* Appends "?name=value" / "&name=value" (percent-encoded) when value is not NULL. */
void api_path_query(api_path *p, const char *name, const char *value);

/* A completed exchange. */
typedef struct api_resp {
    long status;  /* HTTP status */
    char *body;   /* NUL-terminated, owned */
    size_t len;
    json_t *json; /* parsed body (object), or NULL */
} api_resp;

void api_resp_free(api_resp *r);

/*
 * Sends method path (body: JSON, borrowed, may be NULL) and waits for the
 * answer. On success (2xx with a JSON object) fills resp and returns
 * CMSCTL_OK. Otherwise prints the error (the API's "error: detail" for an
 * HTTP error; with --json the error body also goes to stdout) and returns
 * CMSCTL_EUSAGE (configuration), CMSCTL_EAPI (4xx) or CMSCTL_ESERVER (5xx,
 * network, TLS, not JSON); resp is then empty.
 */
int api_call(const char *method, const api_path *path, const json_t *body, api_resp *resp);

/*
 * Like api_call with a raw body instead of JSON: data[0..len) (borrowed)
 * sent as content_type, plus extra header lines ("Name: value", NULL
 * terminated, may be NULL). For uploads (firmware import).
 */
int api_call_upload(const char *method, const api_path *path, const char *content_type,
                    const void *data, size_t len, const char *const *headers, api_resp *resp);

/* ---- output ------------------------------------------------------------- */

/* Prints the raw body of resp (--json output), with a final newline. */
void api_print_raw(const api_resp *resp);

/* How a table column shows its value. */
enum api_col_kind { API_TEXT = 0, API_TIME, API_LIST };

typedef struct api_col {
    const char *header;
    const char *key; /* member of each row object ("a.b": member b of object a) */
    enum api_col_kind kind;
} api_col;

/*
 * Prints rows (array of objects) as an aligned table with the columns cols
 * (NULL header terminated). null/missing values print as "-", arrays
 * comma-joined, times as "YYYY-MM-DD HH:MM:SSZ". empty: line printed when
 * there is no row (NULL: nothing).
 */
void api_table(const json_t *rows, const api_col *cols, const char *empty);

/* Prints "key: value" lines for the members of o named in cols. */
void api_fields(const json_t *o, const api_col *cols);

/* The text form of a JSON value as the table shows it, written into buf
 * (truncated to cap); returns buf. */
const char *api_value_text(const json_t *v, enum api_col_kind kind, char *buf, size_t cap);

/* The first member of o that is an array, preferring key (NULL if none). */
json_t *api_find_array(json_t *o, const char *key);

#endif
