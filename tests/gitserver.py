"""Real git servers on loopback for the workspace tests, and a repository to
serve: `git daemon` (git:// URLs, no authentication, push enabled),
`git http-backend` behind a small threaded HTTP server that asks for HTTP
basic auth (http:// URLs), OpenSSH's sshd with one authorized key (ssh:// and
scp-like URLs), plus the same repository as a file:// URL.

git, ssh and sshd come from scripts/install-system-packages.sh (`make test`
runs it); without them the tests skip, or fail under CI=true.
"""

from __future__ import annotations

import base64
import contextlib
import os
import pwd
import secrets
import shutil
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from tests.conftest import IN_CI

USER = "robot"
# The password a test expects never to see outside the server: distinctive.
PASSWORD = "gitpw-3f9c1e7a5b2d4c6e8f0a"
GIT_ENV = {
    "GIT_CONFIG_NOSYSTEM": "1",
    "GIT_CONFIG_GLOBAL": "/dev/null",
    "GIT_AUTHOR_NAME": "Test",
    "GIT_AUTHOR_EMAIL": "test@example.com",
    "GIT_COMMITTER_NAME": "Test",
    "GIT_COMMITTER_EMAIL": "test@example.com",
    "GIT_TERMINAL_PROMPT": "0",
}
BINARY = bytes(range(256)) * 4
SSHD = "/usr/sbin/sshd"
# The run uids the tests' nodes use (two slots): ssh needs their passwd entries.
RUN_UIDS = (10100, 10101)


def require_git() -> str:
    git = shutil.which("git")
    if git is None:
        if IN_CI:
            pytest.fail("git is needed (scripts/install-system-packages.sh installs it)")
        pytest.skip("git is not installed (scripts/install-system-packages.sh installs it)")
    return git


def git(*args: str, cwd: Path | None = None) -> str:
    done = subprocess.run(
        ["git", *args],
        cwd=cwd,
        env={**os.environ, **GIT_ENV},
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )
    if done.returncode != 0:
        raise AssertionError(f"git {' '.join(args)} failed: {done.stderr}")
    return done.stdout.strip()


@dataclass(frozen=True)
class Repository:
    """A bare repository `<root>/<name>` made by `make_repository`: three
    commits on main, the first tagged v1, a branch `feature` from the first."""

    root: Path
    name: str
    first: str
    main: str
    feature: str

    @property
    def path(self) -> Path:
        return self.root / self.name

    def ls_remote(self) -> dict[str, str]:
        """ref -> commit, as the server has them now."""
        lines = git("ls-remote", str(self.path)).splitlines()
        return {ref: commit for commit, ref in (line.split("\t") for line in lines)}

    def show(self, commit: str, path: str) -> str:
        return git("--git-dir", str(self.path), "show", f"{commit}:{path}")


def make_repository(root: Path, name: str = "project.git") -> Repository:
    """Readable by every uid (a run clones file:// URLs as its own)."""
    work = root / "source"
    work.mkdir(parents=True)
    git("init", "-q", "-b", "main", cwd=work)
    (work / "README.md").write_text("# project\n")
    (work / "data.bin").write_bytes(BINARY)
    git("add", "-A", cwd=work)
    git("commit", "-q", "-m", "first", cwd=work)
    first = git("rev-parse", "HEAD", cwd=work)
    git("tag", "-a", "v1", "-m", "version 1", cwd=work)
    git("checkout", "-q", "-b", "feature", cwd=work)
    (work / "feature.txt").write_text("feature work\n")
    git("add", "-A", cwd=work)
    git("commit", "-q", "-m", "feature", cwd=work)
    feature = git("rev-parse", "HEAD", cwd=work)
    git("checkout", "-q", "main", cwd=work)
    for index in (2, 3):
        (work / "history.txt").write_text(f"change {index}\n")
        git("add", "-A", cwd=work)
        git("commit", "-q", "-m", f"change {index}", cwd=work)
    main = git("rev-parse", "HEAD", cwd=work)
    bare = root / name
    git("clone", "-q", "--bare", str(work), str(bare))
    git("config", "http.receivepack", "true", cwd=bare)
    # What GitHub and GitLab allow: fetching a commit by its name.
    git("config", "uploadpack.allowAnySHA1InWant", "true", cwd=bare)
    for path in (root, *root.rglob("*")):
        path.chmod(path.stat().st_mode | 0o755 if path.is_dir() else path.stat().st_mode | 0o644)
    return Repository(root=root, name=name, first=first, main=main, feature=feature)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _wait_for_port(port: int, process: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + 15
    while True:
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.5):
            return
        if process.poll() is not None or time.monotonic() > deadline:
            process.kill()
            raise AssertionError("git daemon did not start")
        time.sleep(0.05)


@contextlib.contextmanager
def git_daemon(base: Path) -> Iterator[str]:
    """git://127.0.0.1:<port>/ serving every repository under `base`, push included."""
    port = free_port()
    process = subprocess.Popen(
        [
            "git",
            "daemon",
            "--reuseaddr",
            "--export-all",
            "--enable=receive-pack",
            f"--base-path={base}",
            "--listen=127.0.0.1",
            f"--port={port}",
            str(base),
        ],
        env={**os.environ, **GIT_ENV},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        _wait_for_port(port, process)
        yield f"git://127.0.0.1:{port}"
    finally:
        process.terminate()
        process.wait(10)


class _GitHandler(BaseHTTPRequestHandler):
    """git's smart HTTP protocol through `git http-backend` (a CGI program)."""

    server: _GitHTTPServer

    def do_GET(self) -> None:
        self._backend()

    def do_POST(self) -> None:
        self._backend()

    def log_message(self, format: str, *args: object) -> None:
        self.server.requests.append(self.path)

    def _backend(self) -> None:
        user = self._authenticated_user()
        if user is None:
            self.send_response(401)
            self.send_header("WWW-Authenticate", 'Basic realm="git"')
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        path, _, query = self.path.partition("?")
        env = {
            **os.environ,
            **GIT_ENV,
            "GIT_PROJECT_ROOT": str(self.server.base),
            "GIT_HTTP_EXPORT_ALL": "1",
            "PATH_INFO": path,
            "QUERY_STRING": query,
            "REQUEST_METHOD": self.command,
            "REMOTE_USER": user,
            "REMOTE_ADDR": self.client_address[0],
            "CONTENT_TYPE": self.headers.get("Content-Type", ""),
            "GIT_PROTOCOL": self.headers.get("Git-Protocol", ""),
        }
        if self.headers.get("Content-Encoding"):
            env["HTTP_CONTENT_ENCODING"] = self.headers["Content-Encoding"]
        body = self._body()
        env["CONTENT_LENGTH"] = str(len(body))
        done = subprocess.run(
            ["git", "http-backend"], input=body, env=env, capture_output=True, check=False
        )
        head, _, payload = done.stdout.partition(b"\r\n\r\n")
        status = 200
        headers = []
        for line in head.decode("latin-1").split("\r\n"):
            name, _, value = line.partition(":")
            if name.lower() == "status":
                status = int(value.split()[0])
            elif name:
                headers.append((name, value.strip()))
        self.send_response(status)
        for name, value in headers:
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    def _authenticated_user(self) -> str | None:
        header = self.headers.get("Authorization", "")
        if not header.startswith("Basic "):
            return None
        user, _, password = base64.b64decode(header[6:]).decode().partition(":")
        return user if (user, password) == (USER, PASSWORD) else None

    def _body(self) -> bytes:
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            chunks = []
            while size := int(self.rfile.readline().split(b";")[0], 16):
                chunks.append(self.rfile.read(size))
                self.rfile.readline()
            self.rfile.readline()
            return b"".join(chunks)
        return self.rfile.read(int(self.headers.get("Content-Length") or 0))


class _GitHTTPServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, base: Path) -> None:
        super().__init__(("127.0.0.1", 0), _GitHandler)
        self.base = base
        self.requests: list[str] = []


@contextlib.contextmanager
def git_http(base: Path) -> Iterator[str]:
    """http://127.0.0.1:<port>/ serving every repository under `base`, push
    included, to USER with PASSWORD only (HTTP basic auth)."""
    server = _GitHTTPServer(base)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def require_ssh() -> None:
    """The ssh client, its agent, ssh-keygen and sshd, and the passwd entries
    ssh needs for the run uids (scripts/install-system-packages.sh)."""
    require_git()
    tools = [shutil.which(tool) for tool in ("ssh", "ssh-agent", "ssh-add", "ssh-keygen")]
    problems = [] if all(tools) and Path(SSHD).is_file() else ["ssh, ssh-keygen or sshd"]
    for uid in RUN_UIDS:
        try:
            pwd.getpwuid(uid)
        except KeyError:
            problems.append(f"a passwd entry for uid {uid}")
    if problems:
        reason = f"{', '.join(problems)} missing (scripts/install-system-packages.sh)"
        if IN_CI:
            pytest.fail(reason)
        pytest.skip(reason)


def keygen(path: Path, comment: str = "test") -> str:
    """A new ed25519 key pair at `path` (and path.pub); the private key's text."""
    subprocess.run(
        ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", comment, "-f", str(path)],
        check=True,
        timeout=30,
    )
    return path.read_text()


@dataclass(frozen=True)
class SshServer:
    """sshd on loopback: `ssh://root@127.0.0.1:<port>` and, on port 22 of
    another loopback address, `root@<scp_host>` for scp-like URLs (which
    cannot name a port). `known_hosts`: the lines that accept its host key."""

    port: int
    scp_host: str
    known_hosts: str

    def ssh_url(self, path: Path) -> str:
        return f"ssh://root@127.0.0.1:{self.port}{path}"

    def scp_url(self, path: Path) -> str:
        return f"root@{self.scp_host}:{path}"


@contextlib.contextmanager
def sshd(folder: Path, authorized_key: Path) -> Iterator[SshServer]:
    """A real OpenSSH server, as root on loopback, that lets root in with the
    key whose public half is `authorized_key` and nothing else; its shell
    runs the git-upload-pack and git-receive-pack git asks for. Root, for the
    test only: no user to create, and every repository is reachable."""
    folder.mkdir(parents=True, exist_ok=True)
    host_key = folder / "host_key"
    keygen(host_key, "host")
    host_key.chmod(0o600)
    port = free_port()
    # A loopback address of its own, where port 22 is free.
    scp_host = ".".join(["127", *(str(secrets.randbelow(250) + 2) for _ in range(3))])
    config = folder / "sshd_config"
    config.write_text(
        f"ListenAddress 127.0.0.1:{port}\n"
        f"ListenAddress {scp_host}:22\n"
        f"HostKey {host_key}\n"
        f"AuthorizedKeysFile {authorized_key}\n"
        f"PidFile {folder / 'sshd.pid'}\n"
        "PermitRootLogin prohibit-password\n"
        "PasswordAuthentication no\n"
        "KbdInteractiveAuthentication no\n"
        "UsePAM no\n"
        "StrictModes no\n"
        "LogLevel VERBOSE\n"
    )
    # sshd's privilege separation needs it; a machine without a running sshd lacks it.
    Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)
    process = subprocess.Popen(
        [SSHD, "-D", "-e", "-f", str(config)],
        stdout=subprocess.DEVNULL,
        stderr=(folder / "sshd.log").open("wb"),
    )
    public = " ".join(Path(f"{host_key}.pub").read_text().split()[:2])
    try:
        _wait_for_port(port, process)
        yield SshServer(
            port=port,
            scp_host=scp_host,
            known_hosts=f"[127.0.0.1]:{port} {public}\n{scp_host} {public}\n",
        )
    finally:
        process.terminate()
        process.wait(10)
