#!/usr/bin/env bash
# test.sh - `make test`: the whole suite against real binaries and a real PostgreSQL.
#
#   1. tools/deps.sh                  missing Debian packages (installs them as root)
#   2. make (or make asan)            build/ (ASAN=1: build/asan/, ASan+UBSan, clang)
#   3. unit tests                     make unit (ASAN=1: every build/asan/tests/test_*)
#   4. black-box tests                CMS_BUILD=<build> /usr/bin/python3 -m pytest -q tests/blackbox
#                                     (its conftest starts its own PostgreSQL and cmsd under
#                                     <build>/test-run; nothing here needs to be running)
#   5. short fuzz run                 make fuzz, then each build/fuzz/fuzz_NAME for FUZZ_SECONDS
#                                     on tests/fuzz/corpus/NAME (new inputs go to
#                                     build/fuzz-work/NAME, crashes to build/fuzz-artifacts/)
#
# Every stage runs even when an earlier test stage failed; the exit status is non-zero if any
# failed (a build failure stops at once).
#
# Environment: ASAN=1, FUZZ_SECONDS (20; 0 skips fuzzing), PYTEST_ARGS (extra pytest
# arguments, e.g. "-x -k vitals"), WERROR=1 (passed to make), STAGES (default
# "unit blackbox fuzz": a subset runs only those).
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"

ASAN=${ASAN:-0}
FUZZ_SECONDS=${FUZZ_SECONDS:-20}
STAGES=${STAGES:-unit blackbox fuzz}
JOBS=$(nproc)

say() { echo "test.sh: $*"; }

PASSED=() FAILED=() SKIPPED=()
stage_result() { # stage_result NAME STATUS
	case $2 in
	0) PASSED+=("$1") ;;
	skip) SKIPPED+=("$1") ;;
	*) FAILED+=("$1") ;;
	esac
}
want() { [[ " $STAGES " == *" $1 "* ]]; }

tools/deps.sh

if [[ $ASAN == 1 ]]; then
	BUILD=build/asan
	say "building with ASan+UBSan into $BUILD"
	make -j"$JOBS" asan
	# cmsd under the black-box tests and the unit tests report to stderr/their log and stop.
	export ASAN_OPTIONS=${ASAN_OPTIONS:-detect_leaks=1:abort_on_error=0:halt_on_error=1:strict_string_checks=1:detect_stack_use_after_return=1}
	export UBSAN_OPTIONS=${UBSAN_OPTIONS:-print_stacktrace=1:halt_on_error=1}
	export LSAN_OPTIONS=${LSAN_OPTIONS:-}
else
	BUILD=build
	make -j"$JOBS"
fi

# --- unit -------------------------------------------------------------------------------------
if want unit; then
	say "== unit tests ($BUILD)"
	rc=0
	# test_store_pg drives the async store against a real, private PostgreSQL.
	UNIT_PG_DIR=$ROOT/build/test-unit-pg
	UNIT_PG_PORT=${UNIT_PG_PORT:-55434}
	if tools/pg.sh start "$UNIT_PG_DIR" "$UNIT_PG_PORT" >/dev/null; then
		CMS_TEST_DSN=$(tools/pg.sh dsn "$UNIT_PG_DIR" "$UNIT_PG_PORT")
		export CMS_TEST_DSN
		"$BUILD/cmsctl" db migrate --dsn "$CMS_TEST_DSN" --sql-dir sql >/dev/null || rc=1
	else
		say "cannot start the unit-test PostgreSQL"
		rc=1
	fi
	if [[ $ASAN == 1 ]]; then
		shopt -s nullglob
		units=("$BUILD"/tests/test_*)
		shopt -u nullglob
		for t in "${units[@]}"; do
			[[ -x $t && $t != *.d ]] || continue
			echo "== $t"
			"$t" || rc=1
		done
		((${#units[@]} > 0)) || say "no unit tests under $BUILD/tests"
	else
		make -j"$JOBS" unit || rc=1
	fi
	tools/pg.sh stop "$UNIT_PG_DIR" "$UNIT_PG_PORT" >/dev/null 2>&1 || true
	stage_result unit "$rc"
fi

# --- black box --------------------------------------------------------------------------------
if want blackbox; then
	say "== black-box tests (CMS_BUILD=$BUILD)"
	rc=0
	read -r -a extra <<<"${PYTEST_ARGS:-}"
	CMS_BUILD=$BUILD PYTHONDONTWRITEBYTECODE=1 \
		/usr/bin/python3 -m pytest -q -rs -p no:cacheprovider tests/blackbox "${extra[@]}" || rc=$?
	if ((rc == 5)); then
		say "WARNING: pytest collected no tests in tests/blackbox"
		rc=skip
	fi
	stage_result blackbox "$rc"
fi

# --- fuzz -------------------------------------------------------------------------------------
if want fuzz; then
	if ((FUZZ_SECONDS == 0)); then
		say "== fuzz: skipped (FUZZ_SECONDS=0)"
		stage_result fuzz skip
	else
		say "== fuzz (${FUZZ_SECONDS}s per target)"
		make -j"$JOBS" fuzz
		rc=0
		shopt -s nullglob
		targets=(build/fuzz/fuzz_*)
		shopt -u nullglob
		n=0
		for bin in "${targets[@]}"; do
			[[ -x $bin && -f $bin ]] || continue
			name=${bin##*/fuzz_}
			seeds=tests/fuzz/corpus/$name
			work=build/fuzz-work/$name
			mkdir -p "$work" build/fuzz-artifacts
			corpus=("$work")
			if [[ -d $seeds ]]; then corpus+=("$seeds"); else say "note: no seed corpus $seeds"; fi
			n=$((n + 1))
			log=build/fuzz-work/$name.log
			if "$bin" -max_total_time="$FUZZ_SECONDS" -timeout=10 -rss_limit_mb=2048 \
				-print_final_stats=1 -artifact_prefix="build/fuzz-artifacts/$name-" \
				"${corpus[@]}" >"$log" 2>&1; then
				echo "fuzz $name: ok ($(grep -Eo 'stat::number_of_executed_units: *[0-9]+' "$log" |
					grep -Eo '[0-9]+$' || echo '?') runs)"
			else
				echo "fuzz $name: FAILED (log $log, artifacts build/fuzz-artifacts/$name-*)"
				tail -n 40 "$log"
				rc=1
			fi
		done
		if ((n == 0)); then
			say "no fuzz targets under build/fuzz"
			stage_result fuzz skip
		else
			stage_result fuzz "$rc"
		fi
	fi
fi

say "passed: ${PASSED[*]:-none}; failed: ${FAILED[*]:-none}; skipped: ${SKIPPED[*]:-none}"
echo "stages: ${#PASSED[@]} passed, ${#FAILED[@]} failed, ${#SKIPPED[@]} skipped"
((${#FAILED[@]} == 0))
