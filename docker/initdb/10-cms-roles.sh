#!/bin/bash
# Runs once, when the postgres:15 container initializes an empty data directory.
# Creates the login role cmsd (password from CMSD_DB_PASSWORD) as a member of cms_server.
# The migrations create cms_server only when it is missing, so creating it here first is
# compatible with them; cmsctl db migrate then grants the table privileges to it.
set -euo pipefail
: "${CMSD_DB_PASSWORD:?CMSD_DB_PASSWORD is not set}"
psql -v ON_ERROR_STOP=1 --username "$POSTGRES_USER" --dbname "$POSTGRES_DB" \
	-v pw="$CMSD_DB_PASSWORD" <<'EOSQL'
CREATE ROLE cms_server NOLOGIN;
CREATE ROLE cmsd LOGIN PASSWORD :'pw' IN ROLE cms_server;
EOSQL
