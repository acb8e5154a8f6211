#!/bin/sh
# Every test, in two pytest processes at once: the suites that mostly wait
# (LocalStack, chaos, network outages: a third of the time, little CPU), with
# the fuzzers and the browser suite to even the two out, beside the rest. The second lane's nodes run their runs under uids of their own
# (CLAUDE_TEST_RUN_UID_BASE, tests/conftest.py), because a root node kills
# and cleans up by uid, and it has its own base folder, because pytest resets
# the mode of its default one when a session starts. Its output comes after
# the first lane's; the script fails if either lane does.
set -u
PYTEST=${PYTEST:-.venv/bin/pytest}
SLOW="tests/localstack tests/chaos tests/outage tests/fuzz tests/browser"
lane_dir=$(mktemp -d /tmp/claude-code-scheduler-lane.XXXXXX)
chmod 755 "$lane_dir"
trap 'rm -rf "$lane_dir"' EXIT

# shellcheck disable=SC2086 # SLOW is a list of paths on purpose
CLAUDE_TEST_RUN_UID_BASE=10104 "$PYTEST" -q -p no:cacheprovider \
    --basetemp "$lane_dir/tmp" $SLOW >"$lane_dir/slow.log" 2>&1 &
slow=$!

ignore=""
for suite in $SLOW; do ignore="$ignore --ignore=$suite"; done
# shellcheck disable=SC2086
"$PYTEST" -q $ignore
fast_rc=$?

wait "$slow"
slow_rc=$?
echo "--- $SLOW:"
cat "$lane_dir/slow.log"
[ "$fast_rc" -eq 0 ] && [ "$slow_rc" -eq 0 ]
