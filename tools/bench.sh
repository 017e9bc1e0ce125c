#!/usr/bin/env bash
# bench.sh - `make bench`: every scenario of issues 5 and 15 (P1..P6) side by side, in one run.
#
#   tools/bench.sh                  all scenarios, 3 runs each (~10-15 min)
#   BENCH_QUICK=1 tools/bench.sh    one short run of each (~4 min)
#   tools/bench.sh --only P3        one scenario (P1, P1M, W, P2, A, P2V, P3..P6; comma-separated); --runs N
#   tools/bench.sh --only P6        30 000 live monitors on 2 cmsd processes vs Mosquitto
#                                   (P6 runs once unless --runs is given; ~6 min)
#   tools/bench.sh --sweep          cmsd config variations under P1 (and P4 for workers)
#   tools/bench.sh --cmsd workers=2 a cmsd config override for every scenario (repeatable)
#   tools/bench.sh --keep-pg        reuse the bench PostgreSQL cluster instead of a fresh one
#   tools/bench.sh --only P1 --runs 1 --profile P1   perf profile of cmsd under that load
#                                   (build/bench/profile-P1.txt; BENCH_PERF_CALLGRAPH=dwarf)
#
# Set-up (idempotent): the Debian packages of tools/deps.sh plus nginx and mosquitto (installed
# as root when missing; never started as services: the bench runs them in the foreground with
# its own configs on loopback high ports), the build, the bench's handshake client, a PKI
# under build/bench/pki (dev PKI + 10 000 minted device certificates MON-0001..MON-10000,
# reused when present; P6 mints MON-10001..MON-30000 the first time it runs;
# BENCH_FRESH_PKI=1 makes a new one), a fresh PostgreSQL cluster under
# build/bench/pg (as the postgres account, stopped at the end unless --keep-pg).
# Results: build/bench/results.json and results.csv; docs/benchmarks.md explains them.
#
# File descriptors: 10 000 held sessions need ~10 000 descriptors in the server and in the
# client. The script raises the soft limit (ulimit -n) to the hard limit, and the hard limit
# to BENCH_NOFILE (default 65536) where the kernel lets it (CAP_SYS_RESOURCE); it stops with a
# message when fewer than 20 000 are available.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
BUILD=${BUILD:-build}
BENCH=$BUILD/bench
say() { echo "bench.sh: $*" >&2; }

# --- packages ---------------------------------------------------------------------------------
tools/deps.sh >/dev/null
need=()
for p in nginx mosquitto curl; do
	st=$(dpkg-query -W -f='${db:Status-Status}' "$p" 2>/dev/null || true)
	[[ $st == installed ]] || need+=("$p")
done
if ((${#need[@]})); then
	if ((EUID != 0)); then
		say "missing packages: ${need[*]}; install them with:"
		echo "sudo apt-get update && sudo apt-get install -y --no-install-recommends ${need[*]}"
		exit 1
	fi
	say "installing ${need[*]}"
	export DEBIAN_FRONTEND=noninteractive
	# policy-rc.d 101: the packages must not start their system services (ports 80, 1883).
	prc=/usr/sbin/policy-rc.d
	made_prc=0
	if [[ ! -e $prc ]]; then
		printf '#!/bin/sh\nexit 101\n' >"$prc" && chmod 0755 "$prc" && made_prc=1
	fi
	apt-get install -y --no-install-recommends "${need[@]}" >/dev/null ||
		{ apt-get update >/dev/null && apt-get install -y --no-install-recommends "${need[@]}" >/dev/null; }
	((made_prc)) && rm -f "$prc"
fi

# --- limits -----------------------------------------------------------------------------------
want=${BENCH_NOFILE:-65536}
ulimit -Hn "$want" 2>/dev/null || true
ulimit -n "$(ulimit -Hn)"
nofile=$(ulimit -n)
if [[ $nofile != unlimited ]] && ((nofile < 20000)); then
	say "only $nofile file descriptors per process (ulimit -Hn); 10 000 sessions need 20 000"
	exit 1
fi
export BENCH_NOFILE=$nofile
ulimit -c unlimited 2>/dev/null || true # a server that crashes leaves build/bench/run/core*
say "file descriptors per process: $nofile"

# --- build ------------------------------------------------------------------------------------
make -j"$(nproc)" BUILD="$BUILD" >/dev/null
mkdir -p "$BENCH/bin" "$BENCH/run"
# A snapshot of the binaries: the whole run measures one build, even if build/ is rebuilt
# meanwhile (a checkout shared with other work).
for b in cmsd cms-monitor cmsctl hsbench; do
	cp -f "$BUILD/$b" "$BENCH/bin/$b.tmp" && mv -f "$BENCH/bin/$b.tmp" "$BENCH/bin/$b"
done

# --- PKI: dev PKI + minted devices (reused when present; mkpki.sh is idempotent) ---------------
if [[ ${BENCH_FRESH_PKI:-0} == 1 ]]; then
	say "BENCH_FRESH_PKI=1: a new PKI"
	rm -rf "$BENCH/pki" "$BENCH/run/root-crl.pem"
fi
# test = dev + operator1/operator2 (firmware import and approval: two people) + hostile certs
certs/mkpki.sh test "$BENCH/pki" >/dev/null
if [[ ! -s $BENCH/pki/devices/MON-10000.crt ]]; then
	say "minting 10 000 device certificates (shared key; ~30-50 s, once)"
fi
minted=$(certs/mkpki.sh mint "$BENCH/pki" MON- 1 10000)
echo "${minted%%$'\n'*}" >&2

exec /usr/bin/python3 tools/bench/bench.py "$@"
