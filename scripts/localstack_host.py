#!/usr/bin/env python3
"""Runs LocalStack on this host, without Docker, for the end-to-end tests in
tests/localstack/ and for trying the node by hand (docs/localstack.md).

  install     create .cache/localstack-venv (Python 3.13)
  start       start it in the background, wait until healthy, print its endpoint URL
  stop        stop it and everything it started
  status      say whether it runs (exit 0) or not (exit 1)
  endpoint    print its endpoint URL (http://127.0.0.1:<port>)
  aws ARGS    the AWS CLI (from its venv) aimed at it, test credentials:
              AWS_CMD="scripts/localstack.sh aws" deploy/localstack/init-resources.sh

It is the same LocalStack the compose file runs (localstack/localstack:4.14.0,
the last tag that starts without an auth token), installed from PyPI as
localstack-core[runtime]==4.14.0. That release says Python >= 3.10, but its SQS
uses 3.12 syntax (class InterruptibleQueue[T] in services/sqs/queue.py): on the
project's 3.11 it installs and starts, then every SQS call fails with "invalid
syntax". So it gets its own venv on Python 3.13, the image's Python. This
program itself needs only the standard library of Python 3.11 or later.

Environment:
  LOCALSTACK_PYTHON         the Python 3.13 to build the venv with (default: the
                            newest 3.13 under `pyenv root`, else python3.13 on PATH)
  LOCALSTACK_VENV           the venv (default <repo>/.cache/localstack-venv)
  LOCALSTACK_RUN_DIR        pid, port, log and LocalStack's own files of one
                            instance (default <repo>/.cache/localstack-run/default);
                            give each concurrent instance its own
  LOCALSTACK_PORT           the port to listen on, on 127.0.0.1 (default: a free one)
  LOCALSTACK_SERVICES       default sqs,sns,s3,cloudformation,iam,sts,kms,cloudwatch,scheduler
  LOCALSTACK_GATEWAY_SERVER twisted (LocalStack's default) or hypercorn
  LOCALSTACK_START_TIMEOUT  seconds to wait for health (default 90)
  LOCALSTACK_STOP_TIMEOUT   seconds to wait after SIGTERM before SIGKILL (default 20)
  LOCALSTACK_INIT_READY     scripts (space-separated) to run as ready.d init hooks,
                            as the compose file does; they find `awslocal` on PATH,
                            and `start` waits until /_localstack/init/ready says
                            they completed (fails when one failed)
  LOCALSTACK_WATCH_PID      stop LocalStack by itself once this process is gone
                            (the test fixture passes its own pid)
  LOCALSTACK_LS_LOG, LOCALSTACK_DEBUG   passed on as LS_LOG and DEBUG
  LOCALSTACK_AUTH_TOKEN     passed on (4.14.0 does not need one)

Measured on the 2-core project machine: `install` about 40-45 s from PyPI
(about 500 MB; nothing but PyPI is contacted), a no-op once its stamp matches;
`start` about 2 s to healthy; `stop` about 2-6 s (the interpreter's exit after
LocalStack's own shutdown takes most of it).
"""

from __future__ import annotations

import argparse
import contextlib
import enum
import fcntl
import http.client
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NoReturn

LOCALSTACK_VERSION = "4.14.0"
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
REQUIREMENTS = (
    f"localstack-core[runtime]=={LOCALSTACK_VERSION}",
    "cbor2<5.7",
    "cryptography<44",
    "pyopenssl==24.2.1",
    "service_identity",
    "joserfc<1.0",
)
# kms: messaging.yaml encrypts its topics with a key of its own.
# cloudwatch: alarms.yaml (tests/localstack/test_alarms_stack.py).
# scheduler: schedules.yaml's group (tests/localstack/test_schedules_stack.py).
DEFAULT_SERVICES = "sqs,sns,s3,cloudformation,iam,sts,kms,cloudwatch,scheduler"
# What `start` waits for; iam and sts answer as soon as the gateway does.
HEALTH_SERVICES = ("sqs", "sns", "s3", "cloudformation")
REPO = Path(__file__).resolve().parents[1]
# Bind attempts when the free port we picked is taken before LocalStack binds it.
PORT_TRIES = 3
PID_FILE_WAIT = 10.0
# After it failed to bind it ignores SIGTERM: no point waiting long for it.
UNBOUND_STOP_TIMEOUT = 2.0
WATCHER_KILL_AFTER = 20.0
EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130
# pip's "Location ... is ignored" lines are noise from this machine's pip config.
PIP_NOISE = "is ignored: it is neither a file nor a directory"


class Failure(Exception):
    """One line for stderr, and the exit status."""

    def __init__(self, message: str, code: int = EXIT_FAILED) -> None:
        super().__init__(message)
        self.code = code


def say(message: str) -> None:
    print(f"localstack: {message}", file=sys.stderr, flush=True)


# ---------------------------------------------------------------- settings


@dataclass(frozen=True)
class Settings:
    """The LOCALSTACK_* environment, read once."""

    venv: Path
    run_dir: Path
    python: str | None
    port: int | None
    services: str
    gateway_server: str | None
    start_timeout: float
    stop_timeout: float
    init_ready: tuple[Path, ...]
    watch_pid: int
    ls_log: str | None
    debug: str | None
    auth_token: str | None

    @classmethod
    def from_environ(cls, env: Mapping[str, str]) -> Settings:
        def text(name: str) -> str | None:
            return env.get(name) or None

        def number(name: str, default: float, kind: type[float] | type[int] = float) -> Any:
            value = text(name)
            try:
                return default if value is None else kind(value)
            except ValueError:
                raise Failure(f"{name}={value} is not a number", EXIT_USAGE) from None

        return cls(
            venv=Path(text("LOCALSTACK_VENV") or REPO / ".cache" / "localstack-venv"),
            run_dir=Path(
                text("LOCALSTACK_RUN_DIR") or REPO / ".cache" / "localstack-run" / "default"
            ),
            python=text("LOCALSTACK_PYTHON"),
            port=number("LOCALSTACK_PORT", 0, int) or None,
            services=text("LOCALSTACK_SERVICES") or DEFAULT_SERVICES,
            gateway_server=text("LOCALSTACK_GATEWAY_SERVER"),
            start_timeout=number("LOCALSTACK_START_TIMEOUT", 90),
            stop_timeout=number("LOCALSTACK_STOP_TIMEOUT", 20),
            init_ready=tuple(Path(p) for p in (text("LOCALSTACK_INIT_READY") or "").split()),
            watch_pid=number("LOCALSTACK_WATCH_PID", 0, int),
            ls_log=text("LOCALSTACK_LS_LOG"),
            debug=text("LOCALSTACK_DEBUG"),
            auth_token=text("LOCALSTACK_AUTH_TOKEN"),
        )

    @property
    def venv_python(self) -> Path:
        return self.venv / "bin" / "python"

    @property
    def pid_file(self) -> Path:
        return self.run_dir / "localstack.pid"

    @property
    def port_file(self) -> Path:
        return self.run_dir / "localstack.port"

    @property
    def log_file(self) -> Path:
        return self.run_dir / "localstack.log"


@contextlib.contextmanager
def locked(path: Path) -> Iterator[None]:
    """An exclusive flock on `path`, held until the block ends."""
    with path.open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield


# ---------------------------------------------------------------- install


def python_says(python: str, code: str) -> str:
    return subprocess.run(
        [python, "-c", code], capture_output=True, text=True, check=True
    ).stdout.strip()


def is_python313(path: str) -> bool:
    check = "import sys, venv, ensurepip; sys.exit(sys.version_info[:2] != (3, 13))"
    if not os.access(path, os.X_OK):
        return False
    return subprocess.run([path, "-c", check], capture_output=True, check=False).returncode == 0


def _version_key(path: str) -> list[int]:
    return [int(n) for n in re.findall(r"\d+", Path(path).parents[1].name)]


def pyenv_pythons() -> list[str]:
    """The 3.13s pyenv has, newest first."""
    if not shutil.which("pyenv"):
        return []
    result = subprocess.run(["pyenv", "root"], capture_output=True, text=True, check=False)
    if result.returncode != 0:
        return []
    found = Path(result.stdout.strip()).glob("versions/3.13*/bin/python3.13")
    return sorted((str(p) for p in found), key=_version_key, reverse=True)


def find_python313(explicit: str | None) -> str | None:
    if explicit:
        if not is_python313(explicit):
            raise Failure(
                f"LOCALSTACK_PYTHON={explicit} is not a Python 3.13 with venv and ensurepip"
            )
        return explicit
    for candidate in pyenv_pythons():
        if is_python313(candidate):
            return candidate
    on_path = shutil.which("python3.13")
    if on_path and is_python313(on_path):
        # A pyenv shim is fine as long as it runs a 3.13; the venv records the
        # real interpreter.
        return python_says(on_path, "import sys; print(sys.executable)")
    return None


def stamp_text(python: str) -> str:
    """What the venv was built from: a change of Python or of REQUIREMENTS
    makes `install` build it again."""
    version = python_says(python, "import sys; print(sys.version.split()[0])")
    return "\n".join((f"python={python}", version, *REQUIREMENTS))


def build_venv(python: str, venv: Path, log: Path) -> bool:
    pip = [str(venv / "bin" / "python"), "-m", "pip", "install", "--disable-pip-version-check"]
    commands = ([python, "-m", "venv", str(venv)], [*pip, "--no-input", *REQUIREMENTS])
    with log.open("w") as out:
        for command in commands:
            result = subprocess.run(command, stdout=out, stderr=subprocess.STDOUT, check=False)
            if result.returncode != 0:
                return False
    return True


def install(settings: Settings) -> None:
    """Builds the venv unless its stamp says it is built as asked (a no-op of
    about 0.1 s then, so `start` runs it every time)."""
    python = find_python313(settings.python)
    if python is None:
        say(f"Python 3.13 not found: LocalStack {LOCALSTACK_VERSION} needs it.")
        say("Install it (for example `pyenv install 3.13`, or Debian's python3.13 and")
        raise Failure("python3.13-venv) or point LOCALSTACK_PYTHON at one.")
    venv = settings.venv
    venv.parent.mkdir(parents=True, exist_ok=True)
    stamp = venv / ".localstack-installed"
    # Two installs at once (two test sessions in one tree) take turns.
    with locked(Path(f"{venv}.lock")):
        want = stamp_text(python)
        built = stamp.is_file() and os.access(settings.venv_python, os.X_OK)
        if built and stamp.read_text().rstrip("\n") == want:
            return
        log = Path(f"{venv}.install.log")
        started = time.monotonic()
        say(f"installing LocalStack {LOCALSTACK_VERSION} into {venv} with {python} (log: {log})")
        shutil.rmtree(venv, ignore_errors=True)
        if not build_venv(python, venv, log):
            lines = log.read_text(errors="replace").splitlines()
            print(
                "\n".join([line for line in lines if PIP_NOISE not in line][-30:]), file=sys.stderr
            )
            shutil.rmtree(venv, ignore_errors=True)
            raise Failure(f"installing LocalStack failed (log: {log})")
        stamp.write_text(want + "\n")
        say(f"installed in {time.monotonic() - started:.0f} s")


def install_command(settings: Settings) -> int:
    install(settings)
    return 0


# ---------------------------------------------------------------- processes


def _stat(path: str) -> list[str] | None:
    """The fields of a /proc stat file after the command name, which may hold
    spaces and parentheses itself: fields[0] is the state, [1] the parent pid,
    [2] the process group, [19] the start time."""
    try:
        with open(path) as f:
            text = f.read()
    except OSError:
        return None
    return text.rpartition(") ")[2].split()


def start_time(pid: int) -> int | None:
    """Clock ticks since boot: tells a process from a later one that got its pid."""
    fields = _stat(f"/proc/{pid}/stat")
    return int(fields[19]) if fields else None


def exists(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def running_pid(settings: Settings) -> int | None:
    """The pid in the pid file, when that process is our LocalStack."""
    try:
        text = settings.pid_file.read_text().strip()
        if not text.isdigit():
            return None
        cmdline = Path(f"/proc/{text}/cmdline").read_bytes()
    except OSError:
        return None
    return int(text) if b"localstack.runtime.main" in cmdline else None


class Family:
    """The LocalStack process, every descendant (LocalStack may start helpers,
    some in a session of their own) and every member of its process group,
    each known by pid and start time so that a later process that got the same
    pid is never signalled."""

    def __init__(self, root: int) -> None:
        self.root = root
        self.members: set[tuple[int, int]] = set()
        self.grow()

    def grow(self) -> None:
        parent_of: dict[int, int] = {}
        found = {self.root}
        for entry in os.listdir("/proc"):
            fields = _stat(f"/proc/{entry}/stat") if entry.isdigit() else None
            if fields:
                parent_of[int(entry)] = int(fields[1])
                if int(fields[2]) == self.root:
                    found.add(int(entry))
        parents = {self.root}
        while parents:
            children = {pid for pid, ppid in parent_of.items() if ppid in parents} - found
            found |= children
            parents = children
        for pid in found:
            started = start_time(pid)
            if started is not None:
                self.members.add((pid, started))

    def _current(self) -> list[int]:
        return [pid for pid, started in self.members if start_time(pid) == started]

    def signal(self, sig: signal.Signals) -> None:
        with contextlib.suppress(OSError):
            os.killpg(self.root, sig)
        for pid in self._current():
            with contextlib.suppress(OSError):
                os.kill(pid, sig)

    def alive(self) -> bool:
        # Not gone while any of its threads runs: when the main thread of
        # LocalStack's interpreter is done its pid shows as a zombie for a few
        # seconds more, until the other threads end.
        for pid in self._current():
            with contextlib.suppress(OSError):
                for task in os.listdir(f"/proc/{pid}/task"):
                    fields = _stat(f"/proc/{pid}/task/{task}/stat")
                    if fields and fields[0] not in ("Z", "X"):
                        return True
        return False


def stop_process(pid: int, timeout: float) -> None:
    """SIGTERM to the family, SIGKILL once `timeout` seconds have passed."""
    family = Family(pid)
    family.signal(signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while family.alive():
        if time.monotonic() >= deadline:
            say(f"still running {timeout:g} s after SIGTERM; sending SIGKILL")
            family.signal(signal.SIGKILL)
            time.sleep(0.2)
            return
        # Helpers started since the first look are part of the family too.
        if exists(pid):
            family.grow()
        time.sleep(0.1)


# ---------------------------------------------------------------- launcher


def watch(leader: int, watched: int) -> NoReturn:
    """Stops the process group of `leader` as `stop` would (SIGTERM, SIGKILL 20 s
    later) once `watched` is gone: a test session killed before it could run
    `stop`. `stop` ends the watcher with the rest of the group."""
    try:
        while os.getppid() == leader and exists(watched):
            time.sleep(1)
        if os.getppid() == leader:
            signal.signal(signal.SIGTERM, signal.SIG_IGN)
            os.killpg(leader, signal.SIGTERM)
            deadline = time.monotonic() + WATCHER_KILL_AFTER
            while os.getppid() == leader and time.monotonic() < deadline:
                time.sleep(0.2)
            os.killpg(leader, signal.SIGKILL)
    finally:
        os._exit(0)


def launch_in_session(pid_file: Path, watched: int, argv: list[str]) -> NoReturn:
    """`_launch`: becomes a session leader (so `stop` can signal the whole
    process group), writes its pid, and execs LocalStack, so the pid file names
    the LocalStack process itself. With a process to watch it first forks a
    watcher into the same process group."""
    os.setsid()
    leader = os.getpid()
    new = pid_file.with_name(pid_file.name + ".new")
    new.write_text(f"{leader}\n")
    new.replace(pid_file)
    if watched and os.fork() == 0:
        watch(leader, watched)
    os.execv(argv[0], argv)  # noqa: S606 (argv is ours: the venv's python)


def write_awslocal(settings: Settings, port: int) -> None:
    """What the LocalStack image has on PATH for its hooks: awslocal, here the
    AWS CLI from the venv aimed at this instance."""
    path = settings.run_dir / "bin" / "awslocal"
    path.write_text(
        "#!/bin/sh\n"
        'export AWS_ACCESS_KEY_ID="${AWS_ACCESS_KEY_ID:-test}"'
        ' AWS_SECRET_ACCESS_KEY="${AWS_SECRET_ACCESS_KEY:-test}"\n'
        'export AWS_DEFAULT_REGION="${AWS_DEFAULT_REGION:-us-east-1}"\n'
        f'exec "{settings.venv}/bin/aws" --endpoint-url "http://127.0.0.1:{port}" "$@"\n'
    )
    path.chmod(0o755)


def runtime_environment(settings: Settings, port: int) -> dict[str, str]:
    """The runtime's whole environment: nothing of the caller's (AWS_*,
    http_proxy, a PERSISTENCE=1 or DEBUG of a user's shell) changes how it runs.

    Settings, each needed on a plain host:
      GATEWAY_LISTEN=127.0.0.1:<port>  our port (default 4566). The default gateway
          server (twisted, as in the image) takes only the port from it and listens
          on all interfaces (a TODO in LocalStack 4.14's twisted.py); with
          LOCALSTACK_GATEWAY_SERVER=hypercorn it listens on 127.0.0.1 only, but then
          its shutdown sometimes hangs until `stop` sends SIGKILL 20 s later.
      OVERRIDE_IN_DOCKER=0  these machines have /.dockerenv, which makes LocalStack
          believe it runs in its own image: it would then use /var/lib/localstack and
          /tmp/localstack and, with its DNS server, edit /etc/resolv.conf.
      DNS_ADDRESS=0  no DNS server: by default it binds port 53 (tcp and udp, on
          0.0.0.0 as root) and, when it cannot, retries through `sudo` in a child
          process.
      SKIP_SSL_CERT_DOWNLOAD=1  otherwise every start first downloads a TLS
          certificate from LocalStack's CDN (two tries with 5 s timeouts when there
          is no network) before falling back to a self-signed one.
      DISABLE_EVENTS=1  no analytics events sent to LocalStack's API.
      FILESYSTEM_ROOT  its host-mode folders (tmp, state, cache, logs, init hooks)
          under the run dir instead of inside the venv's site-packages.
      CONFIG_DIR  where it loads configuration profiles (*.env) from: the run dir,
          not the user's ~/.localstack.
      TMPDIR  anything else it puts in temporary files (S3 spools large bodies)
          stays in the run dir. LocalStack logs a deprecation warning for it (it
          once configured its own tmp folder); Python's tempfile still reads it.
      ENDPOINT_URL  not LocalStack's: the endpoint that deploy/localstack/init-resources.sh,
          run here as a ready.d hook, prints as AWS_ENDPOINT_URL (in the container
          it prints the port compose publishes, which is wrong here).
    Not needed: SKIP_INFRA_DOWNLOADS (deprecated since 1.3, only for OpenSearch; it
    prints a warning) and an auth token (4.14.0 is the last release without one).

    With SERVICES limited to the defaults nothing is downloaded on demand and
    no helper process is started (sqs, sns, s3, cloudformation, iam, sts, kms
    and cloudwatch run in process); services load lazily, so the first call to each takes 1-3 s.
    Queue URLs come back as http://sqs.<region>.localhost.localstack.cloud:<port>/
    000000000000/<name> (LOCALSTACK_HOST's default, as in the container); clients
    must send their requests to the endpoint URL, not to that host.
    """
    run_dir = settings.run_dir
    env = {
        "PATH": f"{run_dir}/bin:/usr/local/bin:/usr/bin:/bin",
        "HOME": str(run_dir),
        "LANG": "C.UTF-8",
        "GATEWAY_LISTEN": f"127.0.0.1:{port}",
        "SERVICES": settings.services,
        "OVERRIDE_IN_DOCKER": "0",
        "DNS_ADDRESS": "0",
        "SKIP_SSL_CERT_DOWNLOAD": "1",
        "DISABLE_EVENTS": "1",
        "PERSISTENCE": "0",
        "FILESYSTEM_ROOT": str(run_dir / "filesystem"),
        "CONFIG_DIR": str(run_dir / "config"),
        "TMPDIR": str(run_dir / "tmp"),
        "ENDPOINT_URL": f"http://127.0.0.1:{port}",
    }
    optional = {
        "GATEWAY_SERVER": settings.gateway_server,
        "LS_LOG": settings.ls_log,
        "DEBUG": settings.debug,
        "LOCALSTACK_AUTH_TOKEN": settings.auth_token,
    }
    env.update({name: value for name, value in optional.items() if value})
    return env


def launch(settings: Settings, port: int) -> subprocess.Popen[bytes]:
    """Starts the runtime through `_launch` and waits for its pid file."""
    settings.pid_file.unlink(missing_ok=True)
    write_awslocal(settings, port)
    python = str(settings.venv_python)
    command = [python, str(Path(__file__).resolve()), "_launch", str(settings.pid_file)]
    command += [str(settings.watch_pid), python, "-m", "localstack.runtime.main"]
    # Popen closes every other descriptor in the child, so LocalStack does not
    # hold our locks.
    with settings.log_file.open("ab") as log:
        process = subprocess.Popen(
            command,
            env=runtime_environment(settings, port),
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    deadline = time.monotonic() + PID_FILE_WAIT
    while not _nonempty(settings.pid_file):
        if time.monotonic() >= deadline:
            raise Failure(f"LocalStack did not start (log: {settings.log_file})")
        time.sleep(0.05)
    return process


def _nonempty(path: Path) -> bool:
    try:
        return path.stat().st_size > 0
    except FileNotFoundError:
        return False


# ---------------------------------------------------------------- health


class Health(enum.Enum):
    HEALTHY = enum.auto()
    EXITED = enum.auto()
    TIMED_OUT = enum.auto()
    # It could not bind its port. It does not exit then: it even prints "Ready."
    CANNOT_LISTEN = enum.auto()
    HOOK_FAILED = enum.auto()
    INTERRUPTED = enum.auto()


@dataclass
class HealthCheck:
    """Waits until the health endpoint shows the services we need and, when
    there are ready.d hooks, until /_localstack/init/ready says they completed
    (what docker-compose.yml's health check asks)."""

    url: str
    log_file: Path
    hooks: bool
    # urllib would follow http_proxy: the opener has no proxies.
    opener: urllib.request.OpenerDirector = field(
        default_factory=lambda: urllib.request.build_opener(urllib.request.ProxyHandler({}))
    )

    def get(self, path: str) -> Any:
        with self.opener.open(self.url + path, timeout=2) as response:
            return json.load(response)

    def look(self) -> tuple[Health | None, str]:
        """One look: an outcome, or None and what it is waiting for."""
        if "CannotListenError" in self.log_file.read_text(errors="replace"):
            print("it could not listen on its port", file=sys.stderr)
            return Health.CANNOT_LISTEN, ""
        try:
            state = self.get("/_localstack/health").get("services", {})
            missing = {
                name: state.get(name)
                for name in HEALTH_SERVICES
                if state.get(name) not in ("available", "running")
            }
            if missing:
                return None, f"not ready: {missing}"
            if not self.hooks:
                return Health.HEALTHY, ""
            init = self.get("/_localstack/init/ready")
        except (OSError, ValueError, http.client.HTTPException) as error:  # refused while it starts
            return None, f"{type(error).__name__}: {error}"
        failed = [s["name"] for s in init.get("scripts", []) if s.get("state") == "ERROR"]
        if failed:
            print(f"ready.d hooks failed: {failed} (their output is in the log)", file=sys.stderr)
            return Health.HOOK_FAILED, ""
        if init.get("completed"):
            return Health.HEALTHY, ""
        return None, f"ready.d hooks still running: {init}"

    def wait(self, exited: Callable[[], bool], timeout: float, stop: threading.Event) -> Health:
        deadline = time.monotonic() + timeout
        last = "no answer yet"
        while time.monotonic() < deadline:
            if exited():
                print(f"the process exited; last health: {last}", file=sys.stderr)
                return Health.EXITED
            outcome, last = self.look()
            if outcome is not None:
                return outcome
            if stop.wait(0.2):
                return Health.INTERRUPTED
        print(f"not healthy after {timeout:.0f} s; last health: {last}", file=sys.stderr)
        return Health.TIMED_OUT


@contextlib.contextmanager
def stop_on_signals() -> Iterator[threading.Event]:
    """SIGINT and SIGTERM only set an Event; the health wait looks at it, so
    Ctrl-C or a kill while waiting does not leave LocalStack running."""
    stop = threading.Event()
    previous = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
    for sig in previous:
        signal.signal(sig, lambda *_: stop.set())
    try:
        yield stop
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


# ---------------------------------------------------------------- start and stop


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def endpoint(settings: Settings) -> str | None:
    if running_pid(settings) is None or not _nonempty(settings.port_file):
        return None
    return f"http://127.0.0.1:{settings.port_file.read_text().strip()}"


def forget(settings: Settings) -> None:
    settings.pid_file.unlink(missing_ok=True)
    settings.port_file.unlink(missing_ok=True)


def prepare_run_dir(settings: Settings) -> None:
    """A fresh run dir, with the ready.d hooks in place."""
    run_dir = settings.run_dir
    forget(settings)
    for name in ("filesystem", "tmp", "config", "bin"):
        shutil.rmtree(run_dir / name, ignore_errors=True)
    for name in ("tmp", "config", "bin"):
        (run_dir / name).mkdir()
    # As docker-compose.yml mounts deploy/localstack/init-resources.sh into
    # /etc/localstack/init/ready.d; copied with their mode (LocalStack runs a
    # .sh hook directly, so it must be executable, as in the container).
    if settings.init_ready:
        ready_d = run_dir / "filesystem" / "etc" / "localstack" / "init" / "ready.d"
        ready_d.mkdir(parents=True)
        for hook in settings.init_ready:
            if not hook.is_file():
                raise Failure(f"LOCALSTACK_INIT_READY: no such file: {hook}")
            shutil.copy2(hook, ready_d)
    settings.log_file.write_bytes(b"")


def show_log_tail(log_file: Path) -> None:
    say(f"last lines of {log_file}:")
    lines = log_file.read_text(errors="replace").splitlines()[-40:]
    print("".join(f"    {line}\n" for line in lines), end="", file=sys.stderr)


def start_once(settings: Settings, port: int) -> Health:
    """Launches on `port` and waits; anything but healthy leaves it stopped."""
    settings.port_file.write_text(f"{port}\n")
    process = launch(settings, port)
    check = HealthCheck(f"http://127.0.0.1:{port}", settings.log_file, bool(settings.init_ready))
    with stop_on_signals() as stop:
        health = check.wait(lambda: process.poll() is not None, settings.start_timeout, stop)
    if health is not Health.HEALTHY:
        unbound = health is Health.CANNOT_LISTEN
        stop_process(process.pid, UNBOUND_STOP_TIMEOUT if unbound else settings.stop_timeout)
        forget(settings)
    return health


def start(settings: Settings) -> int:
    install(settings)
    settings.run_dir.mkdir(parents=True, exist_ok=True)
    with locked(settings.run_dir / "lock"):
        pid, url = running_pid(settings), endpoint(settings)
        if pid is not None and url is not None:
            say(f"already running (pid {pid})")
            print(url)
            return 0
        prepare_run_dir(settings)
        started = time.monotonic()
        for _ in range(PORT_TRIES):
            port = settings.port or free_port()
            health = start_once(settings, port)
            if health is Health.HEALTHY:
                pid = running_pid(settings)
                took = time.monotonic() - started
                say(f"ready on port {port} in {took:.0f} s (pid {pid}, log {settings.log_file})")
                print(f"http://127.0.0.1:{port}")
                return 0
            if health is Health.INTERRUPTED:
                return EXIT_INTERRUPTED
            # Another process took the free port between our look and its bind.
            if health is not Health.CANNOT_LISTEN or settings.port:
                break
            say(f"port {port} was taken; trying another")
            settings.log_file.write_bytes(b"")
    show_log_tail(settings.log_file)
    if health is Health.HOOK_FAILED:
        raise Failure(f"a ready.d hook failed (log: {settings.log_file})")
    raise Failure(f"LocalStack did not become healthy (log: {settings.log_file})")


def stop(settings: Settings) -> int:
    if not settings.run_dir.is_dir():
        say("not running")
        return 0
    with locked(settings.run_dir / "lock"):
        pid = running_pid(settings)
        if pid is None:
            say("not running")
        else:
            stop_process(pid, settings.stop_timeout)
            say(f"stopped (pid {pid})")
        forget(settings)
        for name in ("filesystem", "tmp"):
            shutil.rmtree(settings.run_dir / name, ignore_errors=True)
    return 0


# ---------------------------------------------------------------- the rest


def not_running() -> Failure:
    return Failure(f"not running (start it with: {sys.argv[0]} start)")


def status(settings: Settings) -> int:
    url = endpoint(settings)
    if url is None:
        print("not running")
        return 1
    print(f"running: {url} (pid {running_pid(settings)}, log {settings.log_file})")
    return 0


def print_endpoint(settings: Settings) -> int:
    url = endpoint(settings)
    if url is None:
        raise not_running()
    print(url)
    return 0


def aws(settings: Settings, args: list[str]) -> NoReturn:
    url = endpoint(settings)
    if url is None:
        raise not_running()
    env = dict(os.environ)
    env["AWS_ACCESS_KEY_ID"] = env.get("AWS_ACCESS_KEY_ID") or "test"
    env["AWS_SECRET_ACCESS_KEY"] = env.get("AWS_SECRET_ACCESS_KEY") or "test"
    region = env.get("AWS_DEFAULT_REGION") or env.get("AWS_REGION") or "us-east-1"
    env["AWS_DEFAULT_REGION"] = region
    # AWS CLI v1 (the one LocalStack's runtime extra brings) ignores
    # AWS_ENDPOINT_URL for at least SQS, so the endpoint goes on the command line.
    program = str(settings.venv / "bin" / "aws")
    os.execve(program, [program, "--endpoint-url", url, *args], env)  # noqa: S606


def parser() -> argparse.ArgumentParser:
    main_parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    commands = main_parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, text in (
        ("install", "create the venv"),
        ("start", "start in the background, print the endpoint URL"),
        ("stop", "stop it and everything it started"),
        ("status", "exit 0 when it runs, 1 when not"),
        ("endpoint", "print the endpoint URL"),
        ("aws", "the AWS CLI aimed at it (ARGS go to the AWS CLI)"),
    ):
        commands.add_parser(name, help=text)
    # Only for --help: main() hands what follows `aws` to the AWS CLI untouched.
    commands.choices["aws"].add_argument("args", nargs="*", metavar="ARGS")
    return main_parser


def launch_parser() -> argparse.ArgumentParser:
    """`_launch`, how `start` runs the launcher in a child: not for people, so
    not among the commands."""
    launcher = argparse.ArgumentParser(prog="_launch")
    launcher.add_argument("pid_file", type=Path)
    launcher.add_argument("watch_pid", type=int)
    launcher.add_argument("argv", nargs=argparse.REMAINDER)
    return launcher


COMMANDS: dict[str, Callable[[Settings], int]] = {
    "install": install_command,
    "start": start,
    "stop": stop,
    "status": status,
    "endpoint": print_endpoint,
}


def main(argv: list[str]) -> int:
    try:
        # The AWS CLI's own options (-h, --region ...) are not ours to parse.
        if argv[:1] == ["aws"]:
            aws(Settings.from_environ(os.environ), argv[1:])
        if argv[:1] == ["_launch"]:
            launch = launch_parser().parse_args(argv[1:])
            launch_in_session(launch.pid_file, launch.watch_pid, launch.argv)
        args = parser().parse_args(argv)
        return COMMANDS[args.command](Settings.from_environ(os.environ))
    except Failure as failure:
        say(str(failure))
        return failure.code


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
