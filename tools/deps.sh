#!/usr/bin/env bash
# deps.sh - make sure the Debian 12 packages needed to build, run and test are installed.
#
#   tools/deps.sh          as root: install what is missing (apt-get update only when needed)
#                          as another user: print the exact sudo apt-get line, exit 1
#   tools/deps.sh --list   print the package list and exit
#
# Exit 0 when everything is installed (or was just installed).
set -euo pipefail

PROG=${0##*/}

PACKAGES=(
	# build
	build-essential pkg-config make
	clang libclang-rt-14-dev # ASan/UBSan runtimes and libFuzzer (make asan, make fuzz)
	libuv1-dev libssl-dev libpq-dev libhttp-parser-dev libjansson-dev libcurl4-openssl-dev
	libcmocka-dev # unit tests
	# run
	postgresql postgresql-client openssl curl
	util-linux # runuser, flock (tools/pg.sh, certs/mkpki.sh)
	# black-box tests
	python3 python3-pytest python3-hl7 python3-psycopg2
	systemd    # systemd-analyze verify/security, systemd-sysusers (test_systemd_unit.py)
	prometheus # promtool check metrics, and a real Prometheus scraping cmsd (test_metrics.py)
	# scale-out and HA tests (issue 15): real engines on loopback
	haproxy patroni etcd-server
	# the web console in a real browser (test_console_browser.py): Debian's chromium,
	# driven by playwright-core from npm (installed under build/node by the test)
	chromium nodejs
)
# npm: Debian's package, unless an npm is already there (a NodeSource nodejs ships its own,
# and conflicts with Debian's npm package).
command -v npm >/dev/null 2>&1 || PACKAGES+=(npm)

if [[ ${1:-} == --list ]]; then
	printf '%s\n' "${PACKAGES[@]}"
	exit 0
fi

missing() {
	local p st
	for p in "${PACKAGES[@]}"; do
		st=$(dpkg-query -W -f='${db:Status-Status}' "$p" 2>/dev/null || true)
		[[ $st == installed ]] || echo "$p"
	done
}

mapfile -t MISSING < <(missing)
if ((${#MISSING[@]} == 0)); then
	echo "$PROG: all ${#PACKAGES[@]} packages installed"
	exit 0
fi

if ((EUID != 0)); then
	echo "$PROG: missing packages: ${MISSING[*]}" >&2
	echo "$PROG: install them with:" >&2
	echo "sudo apt-get update && sudo apt-get install -y --no-install-recommends ${MISSING[*]}"
	exit 1
fi

export DEBIAN_FRONTEND=noninteractive
# Refresh the package lists only when apt does not know a candidate for a missing package.
need_update=0
for p in "${MISSING[@]}"; do
	cand=$(apt-cache policy "$p" 2>/dev/null | awk '/Candidate:/ { print $2 }')
	if [[ -z $cand || $cand == "(none)" ]]; then
		need_update=1
		break
	fi
done
if ((need_update)); then
	echo "$PROG: apt-get update"
	apt-get update -qq
fi
echo "$PROG: installing: ${MISSING[*]}"
if ! apt-get install -y -qq --no-install-recommends "${MISSING[@]}"; then
	# The lists may be stale (a version no longer on the mirror): refresh once and retry.
	((need_update)) && exit 1
	apt-get update -qq
	apt-get install -y -qq --no-install-recommends "${MISSING[@]}"
fi

mapfile -t STILL < <(missing)
if ((${#STILL[@]} > 0)); then
	echo "$PROG: still missing after apt-get install: ${STILL[*]}" >&2
	exit 1
fi
echo "$PROG: all ${#PACKAGES[@]} packages installed"
