#!/usr/bin/env bash
# The README's test command: every check the project has, in one go.
#
#   1. test dependencies (self-hosting/deps.sh --test)
#   2. plain build in build/ and its ctest (unit tests, fuzz seed replays)
#   3. ASan+UBSan build in build-asan/ and its ctest
#   4. integration tests (tests/integration/test_*.py) against both builds
#   5. clang libFuzzer build in build-fuzz/, each target run FUZZ_SECONDS
#      (default 20) on a scratch copy of its seed corpus
#
# A failing step does not stop the others. At the end: a table of steps and
# the line "N passed, N failed"; the exit code is 1 if any step failed.
# Environment: FUZZ_SECONDS, JOBS (default 2).
set -uo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
jobs="${JOBS:-2}"
fuzz_seconds="${FUZZ_SECONDS:-20}"
logdir="$(mktemp -d "${TMPDIR:-/tmp}/sealmail-run-all.XXXXXX")"
trap 'rm -rf "$logdir"' EXIT

names=()
results=()
times=()

# step NAME COMMAND...: runs it, output to the terminal and a log, records the result.
step() {
	local name="$1" start rc
	shift
	echo
	echo "=== $name"
	start=$(date +%s)
	"$@"
	rc=$?
	names+=("$name")
	times+=("$(( $(date +%s) - start ))s")
	if [ $rc -eq 0 ]; then
		results+=("PASS")
	else
		results+=("FAIL($rc)")
		echo "=== $name: FAILED (exit $rc)"
	fi
	return 0
}

build() {  # build DIR CMAKE-ARGS...
	local dir="$1"
	shift
	cmake -S . -B "$dir" "$@" && cmake --build "$dir" -j"$jobs"
}

run_ctest() {
	ctest --test-dir "$1" --output-on-failure -j"$jobs"
}

integration() {  # integration BUILD-DIR
	local bin="$root/$1/bin" rc=0 t
	if [ ! -x "$bin/sealmail" ]; then
		echo "no $bin/sealmail: the build failed"
		return 1
	fi
	for t in tests/integration/test_*.py; do
		[ -e "$t" ] || continue
		echo "--- $t ($1)"
		SEALMAIL_BIN_DIR="$bin" SEALMAIL_SOURCE_DIR="$root" \
			timeout 900 python3 "$t" -v || rc=1
	done
	return $rc
}

fuzz_all() {
	local rc=0 n=0 target name corpus dict work
	for target in build-fuzz/bin/fuzz_*; do
		[ -x "$target" ] || continue
		name="$(basename "$target")"
		name="${name#fuzz_}"
		corpus="fuzz/corpus/$name"
		work="$logdir/corpus-$name"
		mkdir -p "$work"
		[ -d "$corpus" ] && cp -r "$corpus"/. "$work"/
		dict=()
		[ -f "fuzz/$name.dict" ] && dict=(-dict="fuzz/$name.dict")
		echo "--- fuzz_$name for ${fuzz_seconds}s"
		# -error_exitcode makes a finding fail the step; crash files go to the log dir
		if ! "$target" -max_total_time="$fuzz_seconds" -error_exitcode=77 \
			-artifact_prefix="$logdir/crash-$name-" -print_final_stats=1 \
			"${dict[@]}" "$work" >"$logdir/fuzz-$name.log" 2>&1; then
			echo "fuzz_$name FAILED:"
			tail -n 60 "$logdir/fuzz-$name.log"
			mkdir -p "$root/build-fuzz/findings"
			cp "$logdir"/crash-"$name"-* "$root/build-fuzz/findings/" 2>/dev/null
			rc=1
		else
			grep -E '^(stat::number_of_executed_units|Done )' "$logdir/fuzz-$name.log" | tail -n 1
		fi
		n=$((n + 1))
	done
	if [ $n -eq 0 ]; then
		echo "no fuzz targets were built"
		return 1
	fi
	return $rc
}

export ASAN_OPTIONS="detect_leaks=1:abort_on_error=1"
export UBSAN_OPTIONS="print_stacktrace=1:halt_on_error=1"

step "deps (--test)" bash self-hosting/deps.sh --test
step "build" build build -DCMAKE_BUILD_TYPE=RelWithDebInfo
step "ctest" run_ctest build
step "build-asan" build build-asan -DCMAKE_BUILD_TYPE=Debug -DSEALMAIL_SANITIZE=ON
step "ctest-asan" run_ctest build-asan
# The two integration runs are independent (own temporary directories, free
# ports) and mostly wait on daemons, kill -9 loops and clients: they run side
# by side, each into its own log, printed whole when both are done.
integration_bg() {  # integration_bg BUILD-DIR LOG
	integration "$1" >"$2" 2>&1
	echo $? >"$2.rc"
}
wait_integration() {  # wait_integration PID LOG
	wait "$1"
	cat "$2"
	return "$(cat "$2.rc" 2>/dev/null || echo 1)"
}
integration_bg build "$logdir/integration-build.log" &
int_plain=$!
integration_bg build-asan "$logdir/integration-asan.log" &
int_asan=$!
step "integration" wait_integration "$int_plain" "$logdir/integration-build.log"
step "integration-asan (ran alongside)" wait_integration "$int_asan" "$logdir/integration-asan.log"
step "build-fuzz" cmake -S . -B build-fuzz -DCMAKE_C_COMPILER=clang -DCMAKE_BUILD_TYPE=RelWithDebInfo \
	-DSEALMAIL_FUZZ=ON
# Only the fuzz targets: the rest of the tree is built and tested above.
build_fuzz_targets() {
	local targets
	targets=$(cmake --build build-fuzz --target help | sed -n 's/^\.\.\. \(fuzz_[a-z0-9_]*\).*/\1/p')
	[ -n "$targets" ] || { echo "no fuzz targets found"; return 1; }
	# shellcheck disable=SC2086
	cmake --build build-fuzz -j"$jobs" --target $targets
}
step "build-fuzz (compile)" build_fuzz_targets
step "fuzz (${fuzz_seconds}s each)" fuzz_all

passed=0
failed=0
echo
echo "=== summary"
printf '%-28s %-10s %s\n' step result time
for i in "${!names[@]}"; do
	printf '%-28s %-10s %s\n' "${names[$i]}" "${results[$i]}" "${times[$i]}"
	if [ "${results[$i]}" = PASS ]; then
		passed=$((passed + 1))
	else
		failed=$((failed + 1))
	fi
done
echo "$passed passed, $failed failed"
[ $failed -eq 0 ]
