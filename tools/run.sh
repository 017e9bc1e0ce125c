#!/usr/bin/env bash
# run.sh - `make run`: everything needed to run cmsd locally, then cmsd in the foreground.
#
#   1. tools/deps.sh                         missing Debian packages (installs them as root)
#   2. make                                  build/cmsd, build/cmsctl, build/cms-monitor
#   3. certs/mkpki.sh dev var/pki            dev PKI (reused when present)
#   4. tools/pg.sh start var/pg PG_PORT      private PostgreSQL 15 (Unix socket only)
#   5. cmsctl db migrate; pg.sh setup        schema, then GRANT cms_server TO cmsd
#   6. cmsctl db device-add MON-0001..0003   demo monitors, each with its certificate from
#                                            var/pki/devices recorded in the registry (--cert)
#   7. var/cmsd.conf                         written when missing (CMS_RECONFIG=1 rewrites it)
#   8. exec build/cmsd --config var/cmsd.conf   Ctrl-C stops it cleanly
#
# Re-running reuses the PKI, the database and var/cmsd.conf. The database keeps running after
# cmsd stops: `tools/pg.sh stop var/pg 5433` stops it; `rm -rf var` starts over.
#
# Environment: PG_PORT (5433; the socket file's name, there is no TCP), MLLP_PORT (2575),
# HTTPS_PORT (8443), BUILD (build), CMS_RECONFIG=1. For the documentation tests
# (tests/blackbox/test_docs_examples.py), which run this script in a directory of their own:
# CMS_RUN_NO_BUILD=1 (skip steps 1-2: the binaries in $BUILD are used as they are) and
# CMS_RUN_PREPARE_ONLY=1 (stop before step 8; the caller starts cmsd).
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"

PG_PORT=${PG_PORT:-5433}
MLLP_PORT=${MLLP_PORT:-2575}
HTTPS_PORT=${HTTPS_PORT:-8443}
BUILD=${BUILD:-build}
VAR=$ROOT/var
PKI=$VAR/pki
PGDIR=$VAR/pg
CONF=$VAR/cmsd.conf
DEMO_DEVICES=(MON-0001 MON-0002 MON-0003)

say() { echo "run.sh: $*"; }

if [[ ${CMS_RUN_NO_BUILD:-0} != 1 ]]; then
	tools/deps.sh
	make -j"$(nproc)" BUILD="$BUILD"
fi
mkdir -p "$VAR"
certs/mkpki.sh dev "$PKI"
tools/pg.sh start "$PGDIR" "$PG_PORT"

DSN_ADMIN=$(tools/pg.sh dsn "$PGDIR" "$PG_PORT")
DSN_CMSD=$(tools/pg.sh dsn "$PGDIR" "$PG_PORT" cmsd)
"$BUILD/cmsctl" db migrate --dsn "$DSN_ADMIN" --sql-dir sql
tools/pg.sh setup "$PGDIR" "$PG_PORT"
# Each demo monitor's certificate is recorded (issued_via provisioned), as EST would have: it
# shows in `cmsctl device certs` and can be revoked on its own (`cmsctl device cert-revoke`).
for serial in "${DEMO_DEVICES[@]}"; do
	"$BUILD/cmsctl" db device-add "$serial" --model "CMS Demo Monitor" \
		--cert "$PKI/devices/$serial.crt" --dsn "$DSN_ADMIN"
done

if [[ ! -s $CONF || ${CMS_RECONFIG:-0} == 1 ]]; then
	cat >"$CONF.tmp" <<EOF
# var/cmsd.conf - written by tools/run.sh (make run) for the dev setup. Kept across runs;
# CMS_RECONFIG=1 make run rewrites it. Every key is documented in etc/cmsd.conf.example.
mllp_listen = 127.0.0.1:$MLLP_PORT
https_listen = 127.0.0.1:$HTTPS_PORT
workers = 0
tls_cert = $PKI/server.crt
tls_key = $PKI/server.key
tls_device_ca = $PKI/device-ca-bundle.pem
tls_operator_ca = $PKI/operator-ca-bundle.pem
tls_crl = $PKI/crl.pem
db_conninfo = "$DSN_CMSD"
# EST enrollment (RFC 7030): cmsd issues device certificates with the dev device CA.
est_ca_cert = $PKI/device-ca.crt
est_ca_key = $PKI/device-ca.key
est_ca_chain = $PKI/device-ca-bundle.pem
# Firmware: releases must be signed by the dev publisher; manifests are signed with the
# dev distribution key (docs/firmware.md).
fw_publisher_keys = $PKI/publisher.pub
fw_distribution_key = $PKI/fw-distribution.key
fw_cache_dir = $VAR/fw-cache
# The web console (https://127.0.0.1:$HTTPS_PORT/console/): this checkout's files.
console_dir = $ROOT/console
log_level = info
EOF
	mv -f "$CONF.tmp" "$CONF"
	say "wrote $CONF"
else
	say "keeping $CONF (CMS_RECONFIG=1 rewrites it)"
fi

"$BUILD/cmsd" --check-config "$CONF"
# cmsctl talks to the admin API as the dev operator (role admin); a second operator
# (role operator) approves firmware that the first imported (two-person rule).
for who in operator operator2; do
	conf=$VAR/cmsctl.conf
	[[ $who == operator ]] || conf=$VAR/cmsctl-$who.conf
	cat >"$conf" <<EOF
server = https://127.0.0.1:$HTTPS_PORT
cert = $PKI/operators/$who.crt
key = $PKI/operators/$who.key
cacert = $PKI/ca.pem
EOF
done

if [[ ${CMS_RUN_PREPARE_ONLY:-0} == 1 ]]; then
	say "prepared (CMS_RUN_PREPARE_ONLY=1): start cmsd with $BUILD/cmsd --config $CONF"
	exit 0
fi

DEV=$PKI/devices/MON-0001
cat <<EOF

run.sh: cmsd starts in the foreground now (Ctrl-C stops it). In another terminal:
  simulate monitor MON-0001 (10 messages, 1/s):
    $BUILD/cms-monitor --host 127.0.0.1 --port $MLLP_PORT --ca $PKI/ca.pem \\
        --cert $DEV.crt --key $DEV.key --count 10 --rate 1
  look at the stored vitals:
    tools/pg.sh psql $PGDIR $PG_PORT -c 'SELECT * FROM cms.vitals ORDER BY received_at DESC LIMIT 20'
    (or: psql '$DSN_ADMIN')
  TLS by hand:
    openssl s_client -connect 127.0.0.1:$MLLP_PORT -CAfile $PKI/ca.pem -cert $DEV.crt -key $DEV.key
  operate through the admin API (as the dev operator, role admin):
    export CMS_CONFIG=$VAR/cmsctl.conf
    $BUILD/cmsctl device list;  $BUILD/cmsctl enroll token create --serial MON-0100 --model X
  stop the database after cmsd:
    tools/pg.sh stop $PGDIR $PG_PORT

EOF
exec "$BUILD/cmsd" --config "$CONF"
