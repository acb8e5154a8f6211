#!/usr/bin/env bash
# Runs LocalStack on this host, without Docker, for the end-to-end tests in
# tests/localstack/ and for trying the node by hand.
#
#   scripts/localstack.sh install     create .cache/localstack-venv (Python 3.13)
#   scripts/localstack.sh start       start it in the background, wait until healthy,
#                                     print its endpoint URL
#   scripts/localstack.sh stop        stop it and everything it started
#   scripts/localstack.sh status      say whether it runs (exit 0) or not (exit 1)
#   scripts/localstack.sh endpoint    print its endpoint URL (http://127.0.0.1:<port>)
#   scripts/localstack.sh aws ARGS    the AWS CLI (from its venv) aimed at it, test credentials:
#                                     AWS_CMD="scripts/localstack.sh aws" deploy/localstack/init-resources.sh
#
# It is the same LocalStack the compose file runs (localstack/localstack:4.14.0,
# the last tag that starts without an auth token), installed from PyPI as
# localstack-core[runtime]==4.14.0. That release says Python >= 3.10, but its SQS
# uses 3.12 syntax (class InterruptibleQueue[T] in services/sqs/queue.py): on the
# project's 3.11 it installs and starts, then every SQS call fails with "invalid
# syntax". So it gets its own venv on Python 3.13, the image's Python.
#
# Environment:
#   LOCALSTACK_PYTHON         the Python 3.13 to build the venv with (default: the
#                             newest 3.13 under `pyenv root`, else python3.13 on PATH)
#   LOCALSTACK_VENV           the venv (default <repo>/.cache/localstack-venv)
#   LOCALSTACK_RUN_DIR        pid, port, log and LocalStack's own files of one
#                             instance (default <repo>/.cache/localstack-run/default);
#                             give each concurrent instance its own
#   LOCALSTACK_PORT           the port to listen on, on 127.0.0.1 (default: a free one)
#   LOCALSTACK_SERVICES       default sqs,sns,s3,cloudformation,iam,sts
#   LOCALSTACK_GATEWAY_SERVER twisted (LocalStack's default) or hypercorn (see launch())
#   LOCALSTACK_START_TIMEOUT  seconds to wait for health (default 90)
#   LOCALSTACK_STOP_TIMEOUT   seconds to wait after SIGTERM before SIGKILL (default 20)
#   LOCALSTACK_INIT_READY     scripts (space-separated) to run as ready.d init hooks,
#                             as the compose file does; they find `awslocal` on PATH,
#                             and `start` waits until /_localstack/init/ready says
#                             they completed (fails when one failed)
#   LOCALSTACK_WATCH_PID      stop LocalStack by itself once this process is gone
#                             (the test fixture passes its own pid)
#   LOCALSTACK_LS_LOG, LOCALSTACK_DEBUG   passed on as LS_LOG and DEBUG
#
# Measured on the 2-core project machine: `install` about 40-45 s from PyPI
# (about 500 MB; nothing but PyPI is contacted), a no-op once its stamp matches;
# `start` about 2 s to healthy; `stop` about 2-6 s (the interpreter's exit after
# LocalStack's own shutdown takes most of it).
set -euo pipefail

LOCALSTACK_VERSION=4.14.0
# What LocalStack 4.14.0's own requirements get wrong; each was seen to break
# `python -m localstack.runtime.main` when left to the resolver:
# - cbor2 5.7+ dropped the private cbor2._decoder module LocalStack imports:
#   "No component plugins found in namespace localstack.runtime.components".
# - pyOpenSSL 25+ removed X509.add_extensions, which LocalStack's self-signed
#   gateway certificate uses: the runtime dies at start.
# - pyOpenSSL 24.2.1 needs cryptography < 44 (with cryptography 50 it fails
#   with "module 'lib' has no attribute 'GEN_EMAIL'").
# - joserfc 1.x requires cryptography >= 45, so it has to stay below 1.0.
# - service_identity is imported by the Twisted gateway but not required by
#   LocalStack: "No module named 'service_identity'" at start.
# They must be resolved together, in one pip call: installing service_identity
# on its own upgrades cryptography again.
REQUIREMENTS=(
    "localstack-core[runtime]==$LOCALSTACK_VERSION"
    "cbor2<5.7"
    "cryptography<44"
    "pyopenssl==24.2.1"
    "service_identity"
    "joserfc<1.0"
)

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="${LOCALSTACK_VENV:-$repo/.cache/localstack-venv}"
run_dir="${LOCALSTACK_RUN_DIR:-$repo/.cache/localstack-run/default}"
stamp="$venv/.localstack-installed"
pid_file="$run_dir/localstack.pid"
port_file="$run_dir/localstack.port"
log_file="$run_dir/localstack.log"
services="${LOCALSTACK_SERVICES:-sqs,sns,s3,cloudformation,iam,sts}"

say() { echo "localstack: $*" >&2; }
die() {
    say "$*"
    exit 1
}

# ---------------------------------------------------------------- install

is_python313() {
    [[ -x "$1" ]] && "$1" -c 'import sys, venv, ensurepip; sys.exit(sys.version_info[:2] != (3, 13))' \
        >/dev/null 2>&1
}

find_python313() {
    local candidate root
    if [[ -n "${LOCALSTACK_PYTHON:-}" ]]; then
        is_python313 "$LOCALSTACK_PYTHON" || die "LOCALSTACK_PYTHON=$LOCALSTACK_PYTHON is not a Python 3.13 with venv and ensurepip"
        echo "$LOCALSTACK_PYTHON"
        return
    fi
    if command -v pyenv >/dev/null 2>&1 && root="$(pyenv root 2>/dev/null)"; then
        # Newest 3.13.x first.
        while read -r candidate; do
            if is_python313 "$candidate"; then
                echo "$candidate"
                return
            fi
        done < <(compgen -G "$root/versions/3.13*/bin/python3.13" | sort -rV)
    fi
    candidate="$(command -v python3.13 || true)"
    if [[ -n "$candidate" ]] && is_python313 "$candidate"; then
        # A pyenv shim is fine as long as it runs a 3.13; the venv records the
        # real interpreter.
        "$candidate" -c 'import sys; print(sys.executable)'
        return
    fi
    return 1
}

stamp_text() {
    printf '%s\n' "python=$1" "$("$1" -c 'import sys; print(sys.version.split()[0])')" \
        "${REQUIREMENTS[@]}"
}

cmd_install() {
    local python
    if ! python="$(find_python313)"; then
        say "Python 3.13 not found: LocalStack $LOCALSTACK_VERSION needs it."
        say "Install it (for example \`pyenv install 3.13\`, or Debian's python3.13 and"
        say "python3.13-venv) or point LOCALSTACK_PYTHON at one."
        exit 1
    fi
    mkdir -p "$(dirname "$venv")"
    # Two installs at once (two test sessions in one tree) take turns.
    exec 8>"$venv.lock"
    flock 8
    local want
    want="$(stamp_text "$python")"
    if [[ -f "$stamp" && -x "$venv/bin/python" ]] && [[ "$(cat "$stamp")" == "$want" ]]; then
        flock -u 8
        return 0
    fi
    local log="$venv.install.log" started=$SECONDS
    say "installing LocalStack $LOCALSTACK_VERSION into $venv with $python (log: $log)"
    rm -rf "$venv"
    if ! "$python" -m venv "$venv" >"$log" 2>&1 ||
        ! "$venv/bin/python" -m pip install --disable-pip-version-check --no-input \
            "${REQUIREMENTS[@]}" >>"$log" 2>&1; then
        # pip's "Location ... is ignored" lines are noise from this machine's pip config.
        grep -v "is ignored: it is neither a file nor a directory" "$log" | tail -n 30 >&2 || true
        rm -rf "$venv"
        die "installing LocalStack failed (log: $log)"
    fi
    echo "$want" >"$stamp"
    say "installed in $((SECONDS - started)) s"
    flock -u 8
}

# `start` installs first (a no-op of about 0.1 s when the stamp matches, so a
# change of REQUIREMENTS or of the Python reinstalls).
require_installed() {
    cmd_install
}

# ---------------------------------------------------------------- processes

# The start time of a process (clock ticks since boot), to tell it from a later
# process that got the same pid.
start_time() {
    local stat
    stat="$(cat "/proc/$1/stat" 2>/dev/null)" || return 1
    stat="${stat##*) }"
    # shellcheck disable=SC2086
    set -- $stat
    echo "${20}"
}

# Is the pid in the pid file our LocalStack?
running_pid() {
    local pid
    [[ -f "$pid_file" ]] || return 1
    pid="$(cat "$pid_file")"
    [[ "$pid" =~ ^[0-9]+$ ]] || return 1
    local cmdline
    cmdline="$(tr '\0' ' ' 2>/dev/null <"/proc/$pid/cmdline")" || return 1
    [[ $cmdline == *localstack.runtime.main* ]] || return 1
    echo "$pid"
}

# "pid:starttime" of the LocalStack process, every descendant (LocalStack may
# start helpers, some in a session of their own) and every member of its
# process group.
family() {
    local root=$1
    local -A parent_of=() seen=()
    local pid ppid pgid queue
    while read -r pid ppid pgid; do
        parent_of[$pid]=$ppid
        if [[ $pgid == "$root" ]]; then seen[$pid]=1; fi
    done < <(ps -e -o pid=,ppid=,pgid=)
    seen[$root]=1
    queue="$root"
    while [[ -n $queue ]]; do
        local next=""
        for pid in "${!parent_of[@]}"; do
            for ppid in $queue; do
                if [[ ${parent_of[$pid]} == "$ppid" && -z ${seen[$pid]:-} ]]; then
                    seen[$pid]=1
                    next+=" $pid"
                fi
            done
        done
        queue="${next# }"
    done
    for pid in "${!seen[@]}"; do
        local t
        t="$(start_time "$pid")" && echo "$pid:$t"
    done
}

# Send a signal to each member of a family that is still the same process.
signal_family() {
    local sig=$1 entry pid t
    shift
    for entry in "$@"; do
        pid=${entry%%:*}
        t="$(start_time "$pid" 2>/dev/null)" || continue
        [[ "$t" == "${entry#*:}" ]] && kill "-$sig" "$pid" 2>/dev/null || true
    done
}

alive_in_family() {
    local entry pid t
    for entry in "$@"; do
        pid=${entry%%:*}
        t="$(start_time "$pid" 2>/dev/null)" || continue
        # Not gone while any of its threads runs: when the main thread of
        # LocalStack's interpreter is done its pid shows as a zombie for a few
        # seconds more, until the other threads end.
        [[ "$t" == "${entry#*:}" ]] || continue
        local task stat
        for task in "/proc/$pid/task/"*/stat; do
            stat="$(cat "$task" 2>/dev/null)" || continue
            stat="${stat##*) }"
            [[ $stat == [ZX]* ]] || return 0
        done
    done
    return 1
}

stop_pid() {
    local pid=$1 timeout=${2:-${LOCALSTACK_STOP_TIMEOUT:-20}} members=()
    mapfile -t members < <(family "$pid")
    kill -TERM -- "-$pid" 2>/dev/null || true
    signal_family TERM "${members[@]}"
    local deadline=$((SECONDS + timeout))
    while alive_in_family "${members[@]}"; do
        if ((SECONDS >= deadline)); then
            say "still running ${timeout} s after SIGTERM; sending SIGKILL"
            kill -KILL -- "-$pid" 2>/dev/null || true
            signal_family KILL "${members[@]}"
            sleep 0.2
            break
        fi
        # Helpers started since the first look are part of the family too.
        if kill -0 "$pid" 2>/dev/null; then
            local more=()
            mapfile -t more < <(family "$pid")
            members+=("${more[@]}")
        fi
        sleep 0.1
    done
}

# ---------------------------------------------------------------- start

free_port() {
    "$venv/bin/python" -c 'import socket
s = socket.socket()
s.bind(("127.0.0.1", 0))
print(s.getsockname()[1])
s.close()'
}

# Waits until the health endpoint shows the services we need and, when there
# are ready.d hooks, until /_localstack/init/ready says they completed (what
# docker-compose.yml's health check asks). Exit 0 healthy, 3 when the process
# ended, 4 on timeout, 5 when it could not bind its port (it does not exit then:
# it even prints "Ready."), 6 when a hook failed. urllib would follow
# http_proxy, so the opener has no proxies.
wait_healthy() {
    "$venv/bin/python" - "$1" "$2" "$3" "sqs,sns,s3,cloudformation" "$log_file" "$4" <<'EOF'
import json, os, sys, time, urllib.request

url, pid, timeout, needed, log, hooks = sys.argv[1:]
pid, timeout, hooks = int(pid), float(timeout), hooks == "1"
opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
deadline = time.monotonic() + timeout
last = "no answer yet"


def get(path):
    with opener.open(url + path, timeout=2) as response:
        return json.load(response)


while time.monotonic() < deadline:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        print(f"the process exited; last health: {last}", file=sys.stderr)
        sys.exit(3)
    with open(log, errors="replace") as f:
        if "CannotListenError" in f.read():
            print("it could not listen on its port", file=sys.stderr)
            sys.exit(5)
    try:
        state = get("/_localstack/health").get("services", {})
        missing = {n: state.get(n) for n in needed.split(",") if state.get(n) not in ("available", "running")}
        if missing:
            last = f"not ready: {missing}"
        elif not hooks:
            sys.exit(0)
        else:
            init = get("/_localstack/init/ready")
            failed = [s["name"] for s in init.get("scripts", []) if s.get("state") == "ERROR"]
            if failed:
                print(f"ready.d hooks failed: {failed} (their output is in the log)", file=sys.stderr)
                sys.exit(6)
            if init.get("completed"):
                sys.exit(0)
            last = f"ready.d hooks still running: {init}"
    except Exception as error:  # refused while it starts
        last = f"{type(error).__name__}: {error}"
    time.sleep(0.2)
print(f"not healthy after {timeout:.0f} s; last health: {last}", file=sys.stderr)
sys.exit(4)
EOF
}

# Becomes a session leader, writes its pid, and execs LocalStack. With a
# process to watch (LOCALSTACK_WATCH_PID), it first forks a watcher into the same
# process group: when the watched process is gone (a test session that was
# killed before it could run `stop`), the watcher stops LocalStack as `stop`
# would: SIGTERM to the group, SIGKILL 20 s later. `stop` ends the watcher with
# the rest of the group.
LAUNCHER='import os, signal, sys, time

pid_file, watched, argv = sys.argv[1], int(sys.argv[2]), sys.argv[3:]
os.setsid()
leader = os.getpid()
with open(pid_file + ".new", "w") as f:
    f.write(f"{leader}\n")
os.replace(pid_file + ".new", pid_file)


def gone(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        pass
    return False


if watched and os.fork() == 0:
    try:
        while os.getppid() == leader and not gone(watched):
            time.sleep(1)
        if os.getppid() == leader:
            signal.signal(signal.SIGTERM, signal.SIG_IGN)
            os.killpg(leader, signal.SIGTERM)
            deadline = time.monotonic() + 20
            while os.getppid() == leader and time.monotonic() < deadline:
                time.sleep(0.2)
            os.killpg(leader, signal.SIGKILL)
    finally:
        os._exit(0)
os.execv(argv[0], argv)
'

# Starts the runtime in a session of its own (so `stop` can signal the whole
# process group) and returns its pid. The launcher writes its own pid before it
# execs, so the pid file names the LocalStack process itself.
launch() {
    local port=$1
    rm -f "$pid_file"
    printf '%s' "$LAUNCHER" >"$run_dir/launcher.py"
    # What the LocalStack image has on PATH for its hooks: awslocal, here the AWS
    # CLI from the venv aimed at this instance.
    cat >"$run_dir/bin/awslocal" <<EOF
#!/bin/sh
export AWS_ACCESS_KEY_ID="\${AWS_ACCESS_KEY_ID:-test}" AWS_SECRET_ACCESS_KEY="\${AWS_SECRET_ACCESS_KEY:-test}"
export AWS_DEFAULT_REGION="\${AWS_DEFAULT_REGION:-us-east-1}"
exec "$venv/bin/aws" --endpoint-url "http://127.0.0.1:$port" "\$@"
EOF
    chmod +x "$run_dir/bin/awslocal"
    # A clean environment: nothing of the caller's (AWS_*, http_proxy, a
    # PERSISTENCE=1 or DEBUG of a user's shell) changes how it runs.
    # Settings, each needed on a plain host:
    #   GATEWAY_LISTEN=127.0.0.1:<port>  our port (default 4566). The default gateway
    #       server (twisted, as in the image) takes only the port from it and listens
    #       on all interfaces (a TODO in LocalStack 4.14's twisted.py); with
    #       LOCALSTACK_GATEWAY_SERVER=hypercorn it listens on 127.0.0.1 only, but then
    #       its shutdown sometimes hangs until `stop` sends SIGKILL 20 s later.
    #   OVERRIDE_IN_DOCKER=0  these machines have /.dockerenv, which makes LocalStack
    #       believe it runs in its own image: it would then use /var/lib/localstack and
    #       /tmp/localstack and, with its DNS server, edit /etc/resolv.conf.
    #   DNS_ADDRESS=0  no DNS server: by default it binds port 53 (tcp and udp, on
    #       0.0.0.0 as root) and, when it cannot, retries through `sudo` in a child
    #       process.
    #   SKIP_SSL_CERT_DOWNLOAD=1  otherwise every start first downloads a TLS
    #       certificate from LocalStack's CDN (two tries with 5 s timeouts when there
    #       is no network) before falling back to a self-signed one.
    #   DISABLE_EVENTS=1  no analytics events sent to LocalStack's API.
    #   FILESYSTEM_ROOT  its host-mode folders (tmp, state, cache, logs, init hooks)
    #       under the run dir instead of inside the venv's site-packages.
    #   CONFIG_DIR  where it loads configuration profiles (*.env) from: the run dir,
    #       not the user's ~/.localstack.
    #   TMPDIR  anything else it puts in temporary files (S3 spools large bodies)
    #       stays in the run dir. LocalStack logs a deprecation warning for it (it
    #       once configured its own tmp folder); Python's tempfile still reads it.
    # Not needed: SKIP_INFRA_DOWNLOADS (deprecated since 1.3, only for OpenSearch; it
    # prints a warning) and an auth token (4.14.0 is the last release without one).
    # With SERVICES limited to these six nothing is downloaded on demand and no
    # helper process is started (sqs, sns, s3, cloudformation, iam and sts run in
    # process); services load lazily, so the first call to each takes 1-3 s.
    # Queue URLs come back as http://sqs.<region>.localhost.localstack.cloud:<port>/
    # 000000000000/<name> (LOCALSTACK_HOST's default, as in the container); clients
    # must send their requests to the endpoint URL, not to that host.
    env -i \
        PATH="$run_dir/bin:/usr/local/bin:/usr/bin:/bin" \
        HOME="$run_dir" \
        LANG=C.UTF-8 \
        GATEWAY_LISTEN="127.0.0.1:$port" \
        SERVICES="$services" \
        ${LOCALSTACK_GATEWAY_SERVER:+GATEWAY_SERVER="$LOCALSTACK_GATEWAY_SERVER"} \
        OVERRIDE_IN_DOCKER=0 \
        DNS_ADDRESS=0 \
        SKIP_SSL_CERT_DOWNLOAD=1 \
        DISABLE_EVENTS=1 \
        PERSISTENCE=0 \
        FILESYSTEM_ROOT="$run_dir/filesystem" \
        CONFIG_DIR="$run_dir/config" \
        TMPDIR="$run_dir/tmp" \
        ${LOCALSTACK_LS_LOG:+LS_LOG="$LOCALSTACK_LS_LOG"} \
        ${LOCALSTACK_DEBUG:+DEBUG="$LOCALSTACK_DEBUG"} \
        ${LOCALSTACK_AUTH_TOKEN:+LOCALSTACK_AUTH_TOKEN="$LOCALSTACK_AUTH_TOKEN"} \
        "$venv/bin/python" "$run_dir/launcher.py" \
        "$pid_file" "${LOCALSTACK_WATCH_PID:-0}" "$venv/bin/python" -m localstack.runtime.main \
        </dev/null >>"$log_file" 2>&1 8>&- 9>&- & # not the lock fds: it would hold the locks
    local waited=0
    until [[ -s "$pid_file" ]]; do
        sleep 0.05
        waited=$((waited + 1))
        ((waited < 200)) || die "LocalStack did not start (log: $log_file)"
    done
    cat "$pid_file"
}

show_log_tail() {
    say "last lines of $log_file:"
    tail -n 40 "$log_file" | sed 's/^/    /' >&2 || true
}

cmd_start() {
    require_installed
    mkdir -p "$run_dir"
    exec 9>"$run_dir/lock"
    flock 9
    local pid
    if pid="$(running_pid)" && [[ -s "$port_file" ]]; then
        say "already running (pid $pid)"
        echo "http://127.0.0.1:$(cat "$port_file")"
        return 0
    fi
    rm -f "$pid_file" "$port_file"
    rm -rf "${run_dir:?}/filesystem" "${run_dir:?}/tmp" "${run_dir:?}/config" "${run_dir:?}/bin"
    mkdir -p "$run_dir/tmp" "$run_dir/config" "$run_dir/bin"
    # ready.d hooks, as docker-compose.yml mounts deploy/localstack/init-resources.sh
    # into /etc/localstack/init/ready.d; copied with their mode (LocalStack runs a
    # .sh hook directly, so it must be executable, as in the container).
    local hook hooks=()
    read -r -a hooks <<<"${LOCALSTACK_INIT_READY:-}"
    if ((${#hooks[@]})); then
        mkdir -p "$run_dir/filesystem/etc/localstack/init/ready.d"
        for hook in "${hooks[@]}"; do
            [[ -f "$hook" ]] || die "LOCALSTACK_INIT_READY: no such file: $hook"
            cp -p "$hook" "$run_dir/filesystem/etc/localstack/init/ready.d/"
        done
    fi
    : >"$log_file"

    local port status started=$SECONDS
    for _ in 1 2 3; do
        port="${LOCALSTACK_PORT:-$(free_port)}"
        echo "$port" >"$port_file"
        pid="$(launch "$port")"
        # Ctrl-C or a kill while waiting must not leave it running.
        trap 'stop_pid '"$pid"'; rm -f "$pid_file" "$port_file"; exit 130' INT TERM
        status=0
        wait_healthy "http://127.0.0.1:$port" "$pid" "${LOCALSTACK_START_TIMEOUT:-90}" \
            "$([[ -n "${LOCALSTACK_INIT_READY:-}" ]] && echo 1 || echo 0)" || status=$?
        trap - INT TERM
        if ((status == 0)); then
            say "ready on port $port in $((SECONDS - started)) s (pid $pid, log $log_file)"
            echo "http://127.0.0.1:$port"
            return 0
        fi
        # Having failed to bind, it ignores SIGTERM: no point waiting long.
        if ((status == 5)); then stop_pid "$pid" 2; else stop_pid "$pid"; fi
        rm -f "$pid_file" "$port_file"
        # Another process took the free port between our look and its bind: retry.
        if ((status == 5)) && [[ -z "${LOCALSTACK_PORT:-}" ]]; then
            say "port $port was taken; trying another"
            : >"$log_file"
            continue
        fi
        break
    done
    show_log_tail
    ((status == 6)) && die "a ready.d hook failed (log: $log_file)"
    die "LocalStack did not become healthy (log: $log_file)"
}

# ---------------------------------------------------------------- the rest

cmd_stop() {
    [[ -d "$run_dir" ]] || {
        say "not running"
        return 0
    }
    exec 9>"$run_dir/lock"
    flock 9
    local pid
    if pid="$(running_pid)"; then
        stop_pid "$pid"
        say "stopped (pid $pid)"
    else
        say "not running"
    fi
    rm -f "$pid_file" "$port_file"
    rm -rf "${run_dir:?}/filesystem" "${run_dir:?}/tmp"
}

endpoint() {
    running_pid >/dev/null && [[ -s "$port_file" ]] || return 1
    echo "http://127.0.0.1:$(cat "$port_file")"
}

cmd_endpoint() {
    endpoint || die "not running (start it with: $0 start)"
}

cmd_status() {
    local url
    if url="$(endpoint)"; then
        echo "running: $url (pid $(cat "$pid_file"), log $log_file)"
    else
        echo "not running"
        return 1
    fi
}

cmd_aws() {
    local url
    url="$(endpoint)" || die "not running (start it with: $0 start)"
    # AWS CLI v1 (the one LocalStack's runtime extra brings) ignores
    # AWS_ENDPOINT_URL for at least SQS, so the endpoint goes on the command line.
    AWS_ACCESS_KEY_ID="${AWS_ACCESS_KEY_ID:-test}" \
        AWS_SECRET_ACCESS_KEY="${AWS_SECRET_ACCESS_KEY:-test}" \
        AWS_DEFAULT_REGION="${AWS_DEFAULT_REGION:-${AWS_REGION:-us-east-1}}" \
        exec "$venv/bin/aws" --endpoint-url "$url" "$@"
}

usage() {
    sed -n '2,/^set -euo/p' "$0" | sed -e '/^set -euo/d' -e 's/^# \{0,1\}//'
}

case "${1:-}" in
    install) cmd_install ;;
    start) cmd_start ;;
    stop) cmd_stop ;;
    status) cmd_status ;;
    endpoint) cmd_endpoint ;;
    aws)
        shift
        cmd_aws "$@"
        ;;
    -h | --help | help) usage ;;
    *)
        usage >&2
        exit 2
        ;;
esac
