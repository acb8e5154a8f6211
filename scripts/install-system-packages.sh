#!/bin/sh
# Installs the Debian packages the test suites need and a fresh machine may
# lack: bubblewrap and socat (the CLI's Bash sandbox, tests/realcli) and git
# (workspaces). Does nothing when every tool is there. Needs root and apt-get;
# elsewhere it says what is missing, and the suites that need it skip with the
# reason (or fail under CI=true).
set -eu

missing=""
for pair in bwrap:bubblewrap socat:socat git:git; do
    tool=${pair%%:*}
    package=${pair#*:}
    command -v "$tool" >/dev/null 2>&1 || missing="$missing $package"
done
[ -z "$missing" ] && exit 0

if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null 2>&1; then
    echo "install-system-packages: missing:$missing (install them as root with apt-get)" >&2
    exit 1
fi
echo "install-system-packages: installing$missing" >&2
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq >&2
# shellcheck disable=SC2086 # one word per package
apt-get install -y -qq --no-install-recommends $missing >&2
