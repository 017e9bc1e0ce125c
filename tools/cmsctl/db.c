/*
 * db.c - `cmsctl db ...`: local database administration with blocking libpq
 * (fine in a CLI; cmsd itself never blocks on the database).
 *
 *   cmsctl db migrate     apply sql/NNN_*.sql in order, one transaction each
 *   cmsctl db status      list applied and pending migrations
 *   cmsctl db device-add  register (or update) a device, audited; --cert records a
 *                         certificate made outside EST (the dev PKI's demo monitors)
 *
 * The database comes from --dsn or the environment variable CMS_DB_DSN, the
 * migrations directory from --sql-dir, CMS_SQL_DIR or ./sql.
 */
#include <dirent.h>
#include <errno.h>
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <libpq-fe.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/x509.h>

#include "cms_err.h"
#include "cmsctl.h"
#include "pki.h"

#define MIGRATE_LOCK_KEY "cms.schema_migrations"
#define MAX_IDENTS 8  /* store_device.idents */
#define MAX_ID_LEN 63 /* store_device.serial / idents */

/* ------------------------------------------------------------------------ */
/* Connection helpers                                                       */
/* ------------------------------------------------------------------------ */

static const char *dsn_from(const char *opt)
{
    if (opt && *opt)
        return opt;
    const char *env = getenv("CMS_DB_DSN");
    return env && *env ? env : NULL;
}

static void quiet_notice(void *arg, const char *msg)
{
    (void)arg;
    (void)msg;
}

static PGconn *db_connect(const char *dsn_opt)
{
    const char *dsn = dsn_from(dsn_opt);
    if (!dsn) {
        fprintf(stderr, "cmsctl: no database given: pass --dsn DSN or set CMS_DB_DSN\n");
        return NULL;
    }
    PGconn *c = PQconnectdb(dsn);
    if (!c || PQstatus(c) != CONNECTION_OK) {
        fprintf(stderr, "cmsctl: cannot connect to the database: %s",
                c ? PQerrorMessage(c) : "out of memory\n");
        PQfinish(c);
        return NULL;
    }
    PQsetNoticeProcessor(c, quiet_notice, NULL);
    return c;
}

/* Runs a parameterless command; prints the error and returns -1 on failure. */
static int exec_ok(PGconn *c, const char *sql, const char *what)
{
    PGresult *r = PQexec(c, sql);
    ExecStatusType st = PQresultStatus(r);
    int ok = st == PGRES_COMMAND_OK || st == PGRES_TUPLES_OK;
    if (!ok)
        fprintf(stderr, "cmsctl: %s: %s", what, PQresultErrorMessage(r));
    PQclear(r);
    return ok ? 0 : -1;
}

static void rollback(PGconn *c)
{
    PGresult *r = PQexec(c, "ROLLBACK");
    PQclear(r);
}

/* ------------------------------------------------------------------------ */
/* Migration files                                                          */
/* ------------------------------------------------------------------------ */

typedef struct mig_file {
    int version;
    char *name; /* file name, e.g. 001_schema.sql */
    char *path;
    char *text; /* NUL-terminated content */
    char sha[65];
} mig_file;

typedef struct mig_set {
    mig_file *v;
    size_t n;
} mig_set;

static void mig_set_free(mig_set *s)
{
    for (size_t i = 0; i < s->n; i++) {
        free(s->v[i].name);
        free(s->v[i].path);
        free(s->v[i].text);
    }
    free(s->v);
    s->v = NULL;
    s->n = 0;
}

static const char *sql_dir_from(const char *opt)
{
    if (opt && *opt)
        return opt;
    const char *env = getenv("CMS_SQL_DIR");
    return env && *env ? env : "./sql";
}

/* "NNN_name.sql" -> NNN (>= 1), or -1 when the name is not a migration. */
static int mig_version(const char *name)
{
    size_t len = strlen(name);
    size_t digits = strspn(name, "0123456789");
    if (digits == 0 || digits > 6 || name[digits] != '_' || len < digits + 6 ||
        strcmp(name + len - 4, ".sql") != 0)
        return -1;
    int v = atoi(name);
    return v >= 1 ? v : -1;
}

static int read_file(const char *path, char **out, size_t *len)
{
    int rc = -1;
    char *buf = NULL;
    FILE *f = fopen(path, "rb");
    if (!f)
        goto cleanup;
    if (fseek(f, 0, SEEK_END) != 0)
        goto cleanup;
    long sz = ftell(f);
    if (sz < 0 || fseek(f, 0, SEEK_SET) != 0)
        goto cleanup;
    buf = malloc((size_t)sz + 1);
    if (!buf || fread(buf, 1, (size_t)sz, f) != (size_t)sz)
        goto cleanup;
    buf[sz] = '\0';
    if (strlen(buf) != (size_t)sz) {
        errno = EINVAL; /* NUL byte inside */
        goto cleanup;
    }
    *out = buf;
    *len = (size_t)sz;
    buf = NULL;
    rc = 0;
cleanup:
    free(buf);
    if (f)
        fclose(f);
    return rc;
}

static int sha256_hex(const char *data, size_t len, char out[65])
{
    unsigned char md[EVP_MAX_MD_SIZE];
    unsigned mdlen = 0;
    if (!EVP_Digest(data, len, md, &mdlen, EVP_sha256(), NULL) || mdlen != 32)
        return -1;
    for (unsigned i = 0; i < mdlen; i++)
        snprintf(out + 2 * i, 3, "%02x", md[i]);
    return 0;
}

static int mig_cmp(const void *a, const void *b)
{
    const mig_file *x = a, *y = b;
    return (x->version > y->version) - (x->version < y->version);
}

/* Loads every NNN_*.sql of dir, sorted by version. Returns 0 or -1 (printed). */
static int mig_load(const char *dir, mig_set *set)
{
    int rc = -1;
    DIR *d = opendir(dir);
    if (!d) {
        fprintf(stderr, "cmsctl: cannot open migrations directory %s: %s\n", dir, strerror(errno));
        return -1;
    }
    struct dirent *e;
    while ((e = readdir(d)) != NULL) {
        int v = mig_version(e->d_name);
        if (v < 0)
            continue;
        mig_file *nv = realloc(set->v, (set->n + 1) * sizeof *nv);
        if (!nv)
            goto oom;
        set->v = nv;
        mig_file *m = &set->v[set->n];
        memset(m, 0, sizeof *m);
        set->n++;
        m->version = v;
        m->name = strdup(e->d_name);
        size_t plen = strlen(dir) + strlen(e->d_name) + 2;
        m->path = malloc(plen);
        if (!m->name || !m->path)
            goto oom;
        snprintf(m->path, plen, "%s/%s", dir, e->d_name);
        size_t len = 0;
        if (read_file(m->path, &m->text, &len) != 0) {
            fprintf(stderr, "cmsctl: cannot read %s: %s\n", m->path, strerror(errno));
            goto cleanup;
        }
        if (sha256_hex(m->text, len, m->sha) != 0) {
            fprintf(stderr, "cmsctl: sha256 failed\n");
            goto cleanup;
        }
    }
    qsort(set->v, set->n, sizeof *set->v, mig_cmp);
    for (size_t i = 1; i < set->n; i++) {
        if (set->v[i].version == set->v[i - 1].version) {
            fprintf(stderr, "cmsctl: two migrations with version %d: %s and %s\n",
                    set->v[i].version, set->v[i - 1].name, set->v[i].name);
            goto cleanup;
        }
    }
    rc = 0;
    goto cleanup;
oom:
    fprintf(stderr, "cmsctl: out of memory\n");
cleanup:
    closedir(d);
    if (rc != 0)
        mig_set_free(set);
    return rc;
}

static const char *bootstrap_sql =
    "SET client_min_messages = warning;"
    "CREATE SCHEMA IF NOT EXISTS cms;"
    "CREATE TABLE IF NOT EXISTS cms.schema_migrations ("
    "  version integer PRIMARY KEY, name text NOT NULL,"
    "  applied_at timestamptz NOT NULL DEFAULT now(), sha256 text NOT NULL)";

/* Applied migrations: rows (version, name, sha256, applied_at) ordered. */
static PGresult *mig_applied(PGconn *c)
{
    PGresult *r = PQexec(c, "SELECT version, name, sha256, "
                            "to_char(applied_at, 'YYYY-MM-DD HH24:MI:SSOF') "
                            "FROM cms.schema_migrations ORDER BY version");
    if (PQresultStatus(r) != PGRES_TUPLES_OK) {
        fprintf(stderr, "cmsctl: reading cms.schema_migrations: %s", PQresultErrorMessage(r));
        PQclear(r);
        return NULL;
    }
    return r;
}

static const mig_file *mig_find(const mig_set *set, int version)
{
    for (size_t i = 0; i < set->n; i++)
        if (set->v[i].version == version)
            return &set->v[i];
    return NULL;
}

static int applied_row(const PGresult *r, int version)
{
    for (int i = 0; i < PQntuples(r); i++)
        if (atoi(PQgetvalue(r, i, 0)) == version)
            return i;
    return -1;
}

/* Line number (1-based) of a 1-based character position in text. */
static int line_of(const char *text, long pos)
{
    int line = 1;
    for (long i = 0; text[i] && i < pos - 1; i++)
        if (text[i] == '\n')
            line++;
    return line;
}

static int apply_one(PGconn *c, const mig_file *m)
{
    if (exec_ok(c, "BEGIN", "BEGIN") != 0)
        return -1;
    PGresult *r = PQexec(c, m->text);
    ExecStatusType st = PQresultStatus(r);
    if (st != PGRES_COMMAND_OK && st != PGRES_TUPLES_OK && st != PGRES_EMPTY_QUERY) {
        const char *pos = PQresultErrorField(r, PG_DIAG_STATEMENT_POSITION);
        if (pos)
            fprintf(stderr, "cmsctl: %s:%d: %s", m->path, line_of(m->text, atol(pos)),
                    PQresultErrorMessage(r));
        else
            fprintf(stderr, "cmsctl: %s: %s", m->path, PQresultErrorMessage(r));
        PQclear(r);
        rollback(c);
        return -1;
    }
    PQclear(r);
    /* A migration must not end the transaction itself. */
    if (PQtransactionStatus(c) != PQTRANS_INTRANS) {
        fprintf(stderr, "cmsctl: %s: migrations must not contain BEGIN/COMMIT\n", m->path);
        rollback(c);
        return -1;
    }
    char ver[16];
    snprintf(ver, sizeof ver, "%d", m->version);
    const char *params[3] = {ver, m->name, m->sha};
    r = PQexecParams(c,
                     "INSERT INTO cms.schema_migrations (version, name, sha256) "
                     "VALUES ($1::integer, $2, $3)",
                     3, NULL, params, NULL, NULL, 0);
    if (PQresultStatus(r) != PGRES_COMMAND_OK) {
        fprintf(stderr, "cmsctl: recording %s: %s", m->name, PQresultErrorMessage(r));
        PQclear(r);
        rollback(c);
        return -1;
    }
    PQclear(r);
    return exec_ok(c, "COMMIT", m->name);
}

/* ------------------------------------------------------------------------ */
/* Option parsing shared by the subcommands                                 */
/* ------------------------------------------------------------------------ */

enum {
    OPT_DSN = 1000,
    OPT_SQL_DIR,
    OPT_MODEL,
    OPT_IDENT,
    OPT_STATUS,
    OPT_LOCATION,
    OPT_GROUP,
    OPT_CERT
};

static void reset_getopt(void)
{
    optind = 0; /* glibc: full re-initialisation */
    opterr = 1;
}

/* ------------------------------------------------------------------------ */
/* db migrate                                                               */
/* ------------------------------------------------------------------------ */

/*
 * The options of `db migrate` and `db status` (--dsn, --sql-dir, --help).
 * Returns -1 to go on with *dsn and *dir set (NULL when not given), else the
 * exit code (help printed, or a usage error).
 */
static int parse_dsn_dir(int argc, char **argv, const char *cmd, void (*usage)(FILE *),
                         const char **dsn, const char **dir)
{
    static const struct option opts[] = {
        {"dsn", required_argument, NULL, OPT_DSN},
        {"sql-dir", required_argument, NULL, OPT_SQL_DIR},
        {"help", no_argument, NULL, 'h'},
        {NULL, 0, NULL, 0},
    };
    int ch;
    *dsn = *dir = NULL;
    reset_getopt();
    while ((ch = getopt_long(argc, argv, "h", opts, NULL)) != -1) {
        switch (ch) {
        case OPT_DSN:
            *dsn = optarg;
            break;
        case OPT_SQL_DIR:
            *dir = optarg;
            break;
        case 'h':
            usage(stdout);
            return CMSCTL_OK;
        default:
            usage(stderr);
            return CMSCTL_EUSAGE;
        }
    }
    if (optind < argc) {
        fprintf(stderr, "cmsctl: db %s: unexpected argument '%s'\n", cmd, argv[optind]);
        return CMSCTL_EUSAGE;
    }
    return -1;
}

static void migrate_usage(FILE *f)
{
    fprintf(f, "usage: cmsctl db migrate [--dsn DSN] [--sql-dir DIR]\n"
               "\n"
               "Applies the migrations DIR/NNN_*.sql that are not yet recorded in\n"
               "cms.schema_migrations, in version order, each in its own transaction,\n"
               "and records each with its sha256. Refuses to run if a file that was\n"
               "already applied has changed.\n"
               "\n"
               "  --dsn DSN      libpq connection string (default: $CMS_DB_DSN)\n"
               "  --sql-dir DIR  migrations directory (default: $CMS_SQL_DIR or ./sql)\n");
}

static int db_migrate(int argc, char **argv)
{
    const char *dsn, *dir;
    int prc = parse_dsn_dir(argc, argv, "migrate", migrate_usage, &dsn, &dir);
    if (prc >= 0)
        return prc;

    int rc = CMSCTL_EFAIL;
    mig_set set = {0};
    PGresult *applied = NULL;
    PGconn *c = NULL;
    dir = sql_dir_from(dir);
    if (mig_load(dir, &set) != 0)
        goto cleanup;
    if (set.n == 0) {
        fprintf(stderr, "cmsctl: no migrations (NNN_*.sql) in %s\n", dir);
        goto cleanup;
    }
    c = db_connect(dsn);
    if (!c)
        goto cleanup;
    /* One migrator at a time, across hosts; released when we disconnect. */
    if (exec_ok(c, "SELECT pg_advisory_lock(hashtext('" MIGRATE_LOCK_KEY "'))",
                "taking the migration lock") != 0 ||
        exec_ok(c, bootstrap_sql, "creating cms.schema_migrations") != 0)
        goto cleanup;
    applied = mig_applied(c);
    if (!applied)
        goto cleanup;

    /* Refuse before changing anything if history was rewritten. */
    int bad = 0;
    for (int i = 0; i < PQntuples(applied); i++) {
        int v = atoi(PQgetvalue(applied, i, 0));
        const mig_file *m = mig_find(&set, v);
        if (!m) {
            fprintf(stderr, "cmsctl: warning: applied migration %s has no file in %s\n",
                    PQgetvalue(applied, i, 1), dir);
            continue;
        }
        if (strcmp(m->sha, PQgetvalue(applied, i, 2)) != 0) {
            fprintf(stderr,
                    "cmsctl: %s was changed after it was applied (sha256 %s, applied %s); "
                    "never edit a landed migration, add a new one\n",
                    m->path, m->sha, PQgetvalue(applied, i, 2));
            bad = 1;
        } else if (strcmp(m->name, PQgetvalue(applied, i, 1)) != 0) {
            fprintf(stderr, "cmsctl: migration %d was applied as %s but the file is now %s\n", v,
                    PQgetvalue(applied, i, 1), m->name);
            bad = 1;
        }
    }
    if (bad)
        goto cleanup;

    int n_applied = 0;
    for (size_t i = 0; i < set.n; i++) {
        if (applied_row(applied, set.v[i].version) >= 0)
            continue;
        if (apply_one(c, &set.v[i]) != 0)
            goto cleanup;
        printf("applied %s (sha256 %.12s)\n", set.v[i].name, set.v[i].sha);
        n_applied++;
    }
    if (n_applied == 0)
        printf("database is up to date (%zu migrations)\n", set.n);
    rc = CMSCTL_OK;
cleanup:
    PQclear(applied);
    PQfinish(c);
    mig_set_free(&set);
    return rc;
}

/* ------------------------------------------------------------------------ */
/* db status                                                                */
/* ------------------------------------------------------------------------ */

static void status_usage(FILE *f)
{
    fprintf(f, "usage: cmsctl db status [--dsn DSN] [--sql-dir DIR]\n"
               "\n"
               "Lists the applied migrations (version, name, applied at, sha256) and the\n"
               "files in DIR not applied yet. Exit status 1 if an applied file changed.\n"
               "\n"
               "  --dsn DSN      libpq connection string (default: $CMS_DB_DSN)\n"
               "  --sql-dir DIR  migrations directory (default: $CMS_SQL_DIR or ./sql)\n");
}

static int db_status(int argc, char **argv)
{
    const char *dsn, *dir_opt;
    int prc = parse_dsn_dir(argc, argv, "status", status_usage, &dsn, &dir_opt);
    if (prc >= 0)
        return prc;

    int rc = CMSCTL_EFAIL;
    mig_set set = {0};
    PGresult *applied = NULL;
    PGconn *c = db_connect(dsn);
    if (!c)
        goto cleanup;
    PGresult *t = PQexec(c, "SELECT to_regclass('cms.schema_migrations') IS NOT NULL");
    int has_table = PQresultStatus(t) == PGRES_TUPLES_OK && PQntuples(t) == 1 &&
                    strcmp(PQgetvalue(t, 0, 0), "t") == 0;
    PQclear(t);
    if (has_table) {
        applied = mig_applied(c);
        if (!applied)
            goto cleanup;
    }
    /* The files are optional for status: report what we can. */
    const char *dir = sql_dir_from(dir_opt);
    int have_files = mig_load(dir, &set) == 0;

    int changed = 0;
    printf("%-8s %-32s %-25s %s\n", "VERSION", "NAME", "APPLIED AT", "STATE");
    for (int i = 0; applied && i < PQntuples(applied); i++) {
        int v = atoi(PQgetvalue(applied, i, 0));
        const mig_file *m = have_files ? mig_find(&set, v) : NULL;
        const char *state = "applied";
        if (have_files && !m)
            state = "applied (file missing)";
        else if (m && strcmp(m->sha, PQgetvalue(applied, i, 2)) != 0) {
            state = "CHANGED SINCE APPLIED";
            changed = 1;
        }
        printf("%-8d %-32s %-25s %s\n", v, PQgetvalue(applied, i, 1), PQgetvalue(applied, i, 3),
               state);
    }
    for (size_t i = 0; i < set.n; i++)
        if (!applied || applied_row(applied, set.v[i].version) < 0)
            printf("%-8d %-32s %-25s %s\n", set.v[i].version, set.v[i].name, "-", "pending");
    if (!has_table)
        printf("(no cms.schema_migrations table: run 'cmsctl db migrate')\n");
    rc = changed ? CMSCTL_EFAIL : CMSCTL_OK;
cleanup:
    PQclear(applied);
    PQfinish(c);
    mig_set_free(&set);
    return rc;
}

/* ------------------------------------------------------------------------ */
/* db device-add                                                            */
/* ------------------------------------------------------------------------ */

static void device_add_usage(FILE *f)
{
    fprintf(f,
            "usage: cmsctl db device-add SERIAL [--model M] [--ident ID]... [--status S]\n"
            "                            [--location L] [--group G] [--cert FILE] [--dsn DSN]\n"
            "\n"
            "Registers device SERIAL (its certificate CN) directly in the database, for\n"
            "local bootstrap and tests. Idempotent: an existing device keeps the fields\n"
            "not given. Writes an audit row with actor \"local:cmsctl\".\n"
            "\n"
            "  --model M     device model\n"
            "  --ident ID    alternative identifier (e.g. EUI-64), repeatable, max %d\n"
            "  --status S    pending | active | revoked | decommissioned\n"
            "                (default for a new device: active)\n"
            "  --location L  location text\n"
            "  --group G     group text\n"
            "  --cert FILE   record the device's certificate (PEM, CN = SERIAL), made\n"
            "                outside EST, as its current one (issued_via provisioned):\n"
            "                its other current certificates are superseded, and from then\n"
            "                on only a recorded certificate is accepted for the device\n"
            "                (docs/enrollment.md). The chain is not checked here (cmsd\n"
            "                checks it at every handshake). Already recorded: no change\n"
            "  --dsn DSN     libpq connection string (default: $CMS_DB_DSN)\n",
            MAX_IDENTS);
}

static int valid_status(const char *s)
{
    static const char *const ok[] = {"pending", "active", "revoked", "decommissioned"};
    for (size_t i = 0; i < sizeof ok / sizeof ok[0]; i++)
        if (strcmp(s, ok[i]) == 0)
            return 1;
    return 0;
}

static int valid_id(const char *what, const char *s)
{
    size_t len = strlen(s);
    if (len == 0 || len > MAX_ID_LEN) {
        fprintf(stderr, "cmsctl: %s must be 1..%d characters\n", what, MAX_ID_LEN);
        return 0;
    }
    for (size_t i = 0; i < len; i++) {
        unsigned char ch = (unsigned char)s[i];
        if (ch < 0x20 || ch == 0x7f) {
            fprintf(stderr, "cmsctl: %s contains a control character\n", what);
            return 0;
        }
    }
    return 1;
}

/* Appends s to a PostgreSQL array literal in buf as a quoted element. */
static int array_append(char *buf, size_t cap, size_t *len, const char *s)
{
    size_t need = 4 + 2 * strlen(s);
    if (*len + need >= cap)
        return -1;
    if (*len > 1)
        buf[(*len)++] = ',';
    buf[(*len)++] = '"';
    for (; *s; s++) {
        if (*s == '"' || *s == '\\')
            buf[(*len)++] = '\\';
        buf[(*len)++] = *s;
    }
    buf[(*len)++] = '"';
    buf[*len] = '\0';
    return 0;
}

/* A certificate to record with --cert: the columns of cms.device_certs. */
typedef struct prov_cert {
    unsigned char *der; /* owned (OPENSSL_free) */
    int der_len;
    char fingerprint[PKI_SHA256_HEX_SIZE];
    char serial_hex[PKI_SERIAL_HEX_SIZE];
    char not_before[PKI_ISO_TIME_SIZE];
    char not_after[PKI_ISO_TIME_SIZE];
    char key_desc[32];
} prov_cert;

/* Reads the PEM certificate at path for device serial into pc. Returns 0, or -1 with a message
 * on stderr (unreadable, not a certificate, CN not serial, a key the device policy refuses). */
static int prov_cert_load(const char *path, const char *serial, prov_cert *pc)
{
    int rc = -1;
    X509 *x = NULL;
    char cn[PKI_CN_MAX + 1], why[PKI_REASON_MAX] = "";
    FILE *f = fopen(path, "r");
    if (!f) {
        fprintf(stderr, "cmsctl: --cert %s: %s\n", path, strerror(errno));
        goto cleanup;
    }
    x = PEM_read_X509(f, NULL, NULL, NULL);
    if (!x) {
        fprintf(stderr, "cmsctl: --cert %s: not a PEM certificate\n", path);
        goto cleanup;
    }
    if (pki_cert_cn(x, cn, sizeof(cn)) != CMS_OK || strcmp(cn, serial) != 0) {
        fprintf(stderr, "cmsctl: --cert %s: its subject CN is not %s\n", path, serial);
        goto cleanup;
    }
    if (pki_cert_key_desc(x, pc->key_desc, sizeof(pc->key_desc), why, sizeof(why)) != CMS_OK) {
        fprintf(stderr, "cmsctl: --cert %s: %s\n", path, why);
        goto cleanup;
    }
    if (pki_cert_fingerprint_sha256(x, pc->fingerprint) != CMS_OK ||
        pki_cert_serial_hex(x, pc->serial_hex) != CMS_OK || pc->serial_hex[0] == '-' ||
        pki_asn1_time_iso(X509_get0_notBefore(x), pc->not_before, NULL) != CMS_OK ||
        pki_asn1_time_iso(X509_get0_notAfter(x), pc->not_after, NULL) != CMS_OK) {
        fprintf(stderr, "cmsctl: --cert %s: cannot read its serial number or validity\n", path);
        goto cleanup;
    }
    pc->der_len = i2d_X509(x, &pc->der);
    if (pc->der_len <= 0) {
        pc->der = NULL;
        fprintf(stderr, "cmsctl: --cert %s: cannot encode it\n", path);
        goto cleanup;
    }
    rc = 0;
cleanup:
    X509_free(x);
    if (f)
        fclose(f);
    return rc;
}

/* Records pc for device id (in the caller's transaction). Sets *recorded when the certificate
 * is new (then the device's other current certificates are superseded). Returns 0 or -1. */
static int prov_cert_record(PGconn *c, const char *id, const char *serial, const prov_cert *pc,
                            int *recorded)
{
    int rc = -1;
    *recorded = 0;
    const char *p1[2] = {pc->fingerprint, pc->serial_hex};
    PGresult *r = PQexecParams(c,
                               "SELECT d.serial, c.fingerprint_sha256 = $1 "
                               "FROM cms.device_certs c JOIN cms.devices d ON d.id = c.device_id "
                               "WHERE c.fingerprint_sha256 = $1 OR c.serial_hex = $2",
                               2, NULL, p1, NULL, NULL, 0);
    if (PQresultStatus(r) != PGRES_TUPLES_OK) {
        fprintf(stderr, "cmsctl: looking up the certificate: %s", PQresultErrorMessage(r));
        goto cleanup;
    }
    if (PQntuples(r) > 0) {
        if (strcmp(PQgetvalue(r, 0, 0), serial) != 0 || strcmp(PQgetvalue(r, 0, 1), "t") != 0) {
            fprintf(stderr,
                    "cmsctl: a certificate with serial number %s is already recorded "
                    "for device %s\n",
                    pc->serial_hex, PQgetvalue(r, 0, 0));
            goto cleanup;
        }
        rc = 0; /* this very certificate, already recorded: keep its state */
        goto cleanup;
    }
    PQclear(r);
    const char *p2[8] = {id,           pc->serial_hex, pc->fingerprint, serial,
                         pc->key_desc, pc->not_before, pc->not_after,   (const char *)pc->der};
    const int len[8] = {0, 0, 0, 0, 0, 0, 0, pc->der_len};
    const int fmt[8] = {0, 0, 0, 0, 0, 0, 0, 1};
    r = PQexecParams(c,
                     "WITH ins AS ("
                     "  INSERT INTO cms.device_certs (device_id, serial_hex, fingerprint_sha256,"
                     "    subject_cn, key_desc, not_before, not_after, issued_via, der)"
                     "  VALUES ($1::bigint, $2, $3, $4, $5, $6::timestamptz, $7::timestamptz,"
                     "    'provisioned', $8::bytea) RETURNING id) "
                     "UPDATE cms.device_certs c SET superseded_at = now(),"
                     "  superseded_by = (SELECT id FROM ins) "
                     "WHERE c.device_id = $1::bigint AND c.superseded_at IS NULL"
                     "  AND c.revoked_at IS NULL AND (SELECT id FROM ins) IS NOT NULL",
                     8, NULL, p2, len, fmt, 0);
    if (PQresultStatus(r) != PGRES_COMMAND_OK) {
        fprintf(stderr, "cmsctl: recording the certificate: %s", PQresultErrorMessage(r));
        goto cleanup;
    }
    *recorded = 1;
    rc = 0;
cleanup:
    PQclear(r);
    return rc;
}

static int db_device_add(int argc, char **argv)
{
    static const struct option opts[] = {
        {"dsn", required_argument, NULL, OPT_DSN},
        {"model", required_argument, NULL, OPT_MODEL},
        {"ident", required_argument, NULL, OPT_IDENT},
        {"status", required_argument, NULL, OPT_STATUS},
        {"location", required_argument, NULL, OPT_LOCATION},
        {"group", required_argument, NULL, OPT_GROUP},
        {"cert", required_argument, NULL, OPT_CERT},
        {"help", no_argument, NULL, 'h'},
        {NULL, 0, NULL, 0},
    };
    const char *dsn = NULL, *model = NULL, *status = NULL, *location = NULL, *group = NULL;
    const char *cert = NULL;
    const char *idents[MAX_IDENTS];
    size_t nidents = 0;
    int ch;
    reset_getopt();
    while ((ch = getopt_long(argc, argv, "h", opts, NULL)) != -1) {
        switch (ch) {
        case OPT_DSN:
            dsn = optarg;
            break;
        case OPT_MODEL:
            model = optarg;
            break;
        case OPT_STATUS:
            status = optarg;
            break;
        case OPT_LOCATION:
            location = optarg;
            break;
        case OPT_GROUP:
            group = optarg;
            break;
        case OPT_CERT:
            cert = optarg;
            break;
        case OPT_IDENT:
            if (nidents == MAX_IDENTS) {
                fprintf(stderr, "cmsctl: at most %d --ident\n", MAX_IDENTS);
                return CMSCTL_EUSAGE;
            }
            idents[nidents++] = optarg;
            break;
        case 'h':
            device_add_usage(stdout);
            return CMSCTL_OK;
        default:
            device_add_usage(stderr);
            return CMSCTL_EUSAGE;
        }
    }
    if (optind != argc - 1) {
        fprintf(stderr, "cmsctl: db device-add needs exactly one SERIAL\n");
        device_add_usage(stderr);
        return CMSCTL_EUSAGE;
    }
    const char *serial = argv[optind];
    if (!valid_id("SERIAL", serial))
        return CMSCTL_EUSAGE;
    if (status && !valid_status(status)) {
        fprintf(stderr, "cmsctl: --status must be pending, active, revoked or decommissioned\n");
        return CMSCTL_EUSAGE;
    }
    char ident_arr[MAX_IDENTS * (2 * MAX_ID_LEN + 4) + 4] = "{";
    size_t alen = 1;
    for (size_t i = 0; i < nidents; i++) {
        if (!valid_id("--ident", idents[i]))
            return CMSCTL_EUSAGE;
        if (array_append(ident_arr, sizeof ident_arr, &alen, idents[i]) != 0)
            return CMSCTL_EUSAGE;
    }
    ident_arr[alen++] = '}';
    ident_arr[alen] = '\0';

    int rc = CMSCTL_EFAIL, cert_recorded = 0;
    PGresult *r = NULL;
    PGconn *c = NULL;
    prov_cert pc = {0};
    if (cert && prov_cert_load(cert, serial, &pc) != 0) {
        rc = CMSCTL_EUSAGE;
        goto cleanup;
    }
    c = db_connect(dsn);
    if (!c)
        goto cleanup;
    if (exec_ok(c, "BEGIN", "BEGIN") != 0)
        goto cleanup;

    /* Upsert; fields not given (NULL) keep their value. xmax = 0 <=> inserted. */
    const char *p1[5] = {serial, model, status, location, group};
    r = PQexecParams(c,
                     "INSERT INTO cms.devices AS d (serial, model, status, location, group_name) "
                     "VALUES ($1, $2, coalesce($3, 'active'), $4, $5) "
                     "ON CONFLICT (serial) DO UPDATE SET "
                     "  model = coalesce($2, d.model), status = coalesce($3, d.status), "
                     "  location = coalesce($4, d.location), "
                     "  group_name = coalesce($5, d.group_name) "
                     "RETURNING id, status, (xmax = 0)",
                     5, NULL, p1, NULL, NULL, 0);
    if (PQresultStatus(r) != PGRES_TUPLES_OK || PQntuples(r) != 1) {
        fprintf(stderr, "cmsctl: registering %s: %s", serial, PQresultErrorMessage(r));
        goto rollback;
    }
    char id[32], st[32];
    snprintf(id, sizeof id, "%s", PQgetvalue(r, 0, 0));
    snprintf(st, sizeof st, "%s", PQgetvalue(r, 0, 1));
    int created = strcmp(PQgetvalue(r, 0, 2), "t") == 0;
    PQclear(r);

    /* Identifiers: add the missing ones; one owned by another device is an error. */
    const char *p2[2] = {id, ident_arr};
    r = PQexecParams(c,
                     "WITH want AS (SELECT DISTINCT unnest($2::text[]) AS identifier), "
                     "ins AS (INSERT INTO cms.device_identifiers (device_id, identifier) "
                     "        SELECT $1::bigint, identifier FROM want "
                     "        ON CONFLICT (identifier) DO NOTHING RETURNING identifier) "
                     "SELECT w.identifier, dv.serial FROM want w "
                     "JOIN cms.device_identifiers di ON di.identifier = w.identifier "
                     "JOIN cms.devices dv ON dv.id = di.device_id "
                     "WHERE di.device_id <> $1::bigint",
                     2, NULL, p2, NULL, NULL, 0);
    if (PQresultStatus(r) != PGRES_TUPLES_OK) {
        fprintf(stderr, "cmsctl: adding identifiers: %s", PQresultErrorMessage(r));
        goto rollback;
    }
    if (PQntuples(r) > 0) {
        for (int i = 0; i < PQntuples(r); i++)
            fprintf(stderr, "cmsctl: identifier %s already belongs to device %s\n",
                    PQgetvalue(r, i, 0), PQgetvalue(r, i, 1));
        goto rollback;
    }
    PQclear(r);
    r = NULL;
    if (cert && prov_cert_record(c, id, serial, &pc, &cert_recorded) != 0)
        goto rollback;

    const char *p3[8] = {serial,    created ? "t" : "f",
                         model,     status,
                         location,  group,
                         ident_arr, cert_recorded ? pc.fingerprint : NULL};
    r = PQexecParams(c,
                     "SELECT cms.audit_append('device_add', 'local:cmsctl', $1, NULL, "
                     "  jsonb_strip_nulls(jsonb_build_object('created', $2::boolean, "
                     "    'model', $3::text, 'status', $4::text, 'location', $5::text, "
                     "    'group', $6::text, 'idents', $7::text[], "
                     "    'cert_recorded', $8::text))::text)",
                     8, NULL, p3, NULL, NULL, 0);
    if (PQresultStatus(r) != PGRES_TUPLES_OK) {
        fprintf(stderr, "cmsctl: writing the audit row: %s", PQresultErrorMessage(r));
        goto rollback;
    }
    PQclear(r);
    r = NULL;
    if (exec_ok(c, "COMMIT", "COMMIT") != 0)
        goto cleanup;
    printf("device %s id=%s status=%s (%s)\n", serial, id, st,
           created ? "created" : "already registered");
    if (cert)
        printf("device %s certificate %s (serial %s) %s\n", serial, pc.fingerprint, pc.serial_hex,
               cert_recorded ? "recorded" : "already recorded");
    rc = CMSCTL_OK;
    goto cleanup;
rollback:
    rollback(c);
cleanup:
    PQclear(r);
    PQfinish(c);
    OPENSSL_free(pc.der);
    return rc;
}

/* ------------------------------------------------------------------------ */

static const cmsctl_cmd db_commands[] = {
    {"migrate", db_migrate, "apply pending sql/NNN_*.sql migrations"},
    {"status", db_status, "list applied and pending migrations"},
    {"device-add", db_device_add, "register a device locally (bootstrap, tests)"},
};

int cmsctl_db(int argc, char **argv)
{
    return cmsctl_dispatch("cmsctl db", db_commands, sizeof db_commands / sizeof db_commands[0],
                           argc - 1, argv + 1);
}
