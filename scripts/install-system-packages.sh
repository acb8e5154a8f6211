#!/bin/sh
# Installs the Debian packages the test suites need and a fresh machine may
# lack: bubblewrap and socat (the CLI's Bash sandbox, tests/realcli), git,
# git-lfs, the ssh client and sshd (workspaces; tests/gitserver.py serves git
# over ssh on loopback), Chromium and its ChromeDriver (tests/browser drives
# the dashboard in them), and gives the run uids passwd entries as the image
# does (ssh refuses to run for a uid without one). Does nothing when all is
# there. Needs root and apt-get; elsewhere it says what is missing, and the
# suites that need it skip with the reason (or fail under CI=true).
set -eu

missing=""
for pair in bwrap:bubblewrap socat:socat git:git git-lfs:git-lfs ssh:openssh-client \
    ssh-keygen:openssh-client ssh-agent:openssh-client sshd:openssh-server \
    chromium:chromium chromedriver:chromium-driver; do
    tool=${pair%%:*}
    package=${pair#*:}
    # sshd lives in /usr/sbin, which a user's PATH may lack.
    command -v "$tool" >/dev/null 2>&1 || [ -x "/usr/sbin/$tool" ] || missing="$missing $package"
done
# shellcheck disable=SC2086 # split on purpose: one package per line
missing=$(printf '%s\n' $missing | sort -u | tr '\n' ' ')

# The run uids of the slots the tests use (10100 + slot; 10104 and up for the
# second lane of scripts/run-tests.sh), as the Dockerfile makes them: no home,
# no login shell.
add_run_users() {
    [ "$(id -u)" = 0 ] && command -v useradd >/dev/null 2>&1 || return 0
    for slot in 0 1 2 3 4 5 6 7; do
        uid=$((10100 + slot))
        getent passwd "$uid" >/dev/null && continue
        getent group "$uid" >/dev/null || groupadd --gid "$uid" "claude-run-$slot"
        useradd --uid "$uid" --gid "$uid" --no-create-home --home-dir /nonexistent \
            --shell /usr/sbin/nologin "claude-run-$slot"
    done
}
add_run_users
[ -z "${missing% }" ] && exit 0

if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null 2>&1; then
    echo "install-system-packages: missing:$missing (install them as root with apt-get)" >&2
    exit 1
fi
echo "install-system-packages: installing$missing" >&2
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq >&2
# shellcheck disable=SC2086 # one word per package
apt-get install -y -qq --no-install-recommends $missing >&2
