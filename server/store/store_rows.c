/*
 * store_rows.c - the read-only view of a statement's result that
 * store_query callbacks get (store.h): rows, columns, text values, SQL NULL,
 * SQLSTATE and message. A thin layer over the PGresult the connection
 * collected, so that no layer above the store sees libpq.
 */
#include "store_int.h"

static const PGresult *res_of(const store_rows *rows)
{
    return rows ? rows->res : NULL;
}

static bool in_range(const PGresult *res, int row, int col)
{
    return res && row >= 0 && col >= 0 && row < PQntuples(res) && col < PQnfields(res);
}

int store_rows_count(const store_rows *rows)
{
    const PGresult *res = res_of(rows);
    return res ? PQntuples(res) : 0;
}

int store_rows_col(const store_rows *rows, const char *name)
{
    const PGresult *res = res_of(rows);
    return res && name ? PQfnumber(res, name) : -1;
}

const char *store_rows_text(const store_rows *rows, int row, int col)
{
    const PGresult *res = res_of(rows);
    return in_range(res, row, col) ? PQgetvalue(res, row, col) : "";
}

bool store_rows_null(const store_rows *rows, int row, int col)
{
    const PGresult *res = res_of(rows);
    return !in_range(res, row, col) || PQgetisnull(res, row, col);
}

const char *store_rows_get(const store_rows *rows, int row, const char *name)
{
    int col = store_rows_col(rows, name);
    return store_rows_null(rows, row, col) ? NULL : PQgetvalue(rows->res, row, col);
}

const char *store_rows_sqlstate(const store_rows *rows)
{
    const PGresult *res = res_of(rows);
    return res ? PQresultErrorField(res, PG_DIAG_SQLSTATE) : NULL;
}

const char *store_rows_error(const store_rows *rows)
{
    const PGresult *res = res_of(rows);
    return res ? PQresultErrorField(res, PG_DIAG_MESSAGE_PRIMARY) : NULL;
}
