#!/usr/bin/env bash
# Builds punie and its tests with AddressSanitizer + UndefinedBehaviorSanitizer into build-asan (or
# $BUILD_DIR) and runs the whole ctest suite there. Every sanitizer report fails the run, including
# reports from the punie binary started by the Python tests (which may expect a non-zero exit and would
# not notice an abort): all reports are written under one log folder that must stay empty.
set -euo pipefail
cd "$(dirname "$0")/.."
build=${BUILD_DIR:-build-asan}
BUILD_DIR=$build scripts/build.sh -DPUNIE_SANITIZE=ON
logs=$(mktemp -d)
trap 'rm -rf "$logs"' EXIT
export ASAN_OPTIONS="detect_leaks=1:abort_on_error=1:halt_on_error=1:strict_string_checks=1:check_initialization_order=1:detect_stack_use_after_return=1:log_path=$logs/asan"
export UBSAN_OPTIONS="halt_on_error=1:print_stacktrace=1:log_path=$logs/ubsan"
export LSAN_OPTIONS="log_path=$logs/lsan"
export PUNIE_SANITIZED=1  # lets slow tests shorten their loops
status=0
(cd "$build" && ctest --output-on-failure -j"$(nproc)" "$@") || status=$?
if compgen -G "$logs/*" >/dev/null; then
  for f in "$logs"/*; do echo "==== sanitizer report ${f##*/}" >&2; cat "$f" >&2; done
  echo "test-sanitize: sanitizer reports found (above)" >&2
  status=1
fi
exit $status
