"""task.workspace: what a run starts from (a git repository or an archive in
S3), its wire form and its parsing from an untrusted command. No I/O here.

Credentials are named, never carried: `password_from` and friends name a
task.env or task.secrets variable, so a command can be logged, echoed and
signed without a token in it, and a URL with a password in it is refused.
`schemas/RunTask.json` describes the same shape; the patterns below are the
ones it carries.
"""

from __future__ import annotations

import re
from collections.abc import Collection
from dataclasses import dataclass
from typing import Any

from claude_code_scheduler.protocol.commands import (
    MAX_ARGUMENT_BYTES,
    MAX_MOCK_FILE_CHARS,
    MAX_MOCK_FILES,
    MAX_MOCK_FILES_BYTES,
    MAX_MOCK_PATH_CHARS,
    InvalidCommand,
)
from claude_code_scheduler.protocol.fields import check_text, quote, reject_unknown

# Transports git may use for the clone; submodules get the same list
# (GIT_ALLOW_PROTOCOL), so a .gitmodules cannot reach ext:: or fd::.
URL_SCHEMES = ("https", "http", "ssh", "git", "file")
MAX_URL_CHARS = 2048
MAX_REF_CHARS = 255
MAX_DEPTH = 2**31 - 1
MAX_USERNAME_CHARS = 256
MAX_COMMIT_MESSAGE_CHARS = 16384
ARCHIVE_SUFFIXES = (".tar.gz", ".tgz", ".tar", ".zip")
DEFAULT_HTTPS_USERNAME = "x-access-token"
# A git ref name as `git check-ref-format --allow-onelevel` accepts it, and
# never one starting with "-" (git would read it as an option). `(?![\s\S])`
# ends the string in both Python and ECMA regexes (`$` would allow a "\n").
REF_PATTERN = re.compile(
    r"^(?!-)(?!\.)(?!.*/\.)(?!.*\.\.)(?!.*@\{)(?!@(?![\s\S]))(?!.*\.lock(?:/|(?![\s\S])))"
    r"(?!.*\.(?![\s\S]))[^\x00-\x20\x7f~^:?*\[\\/]+(?:/[^\x00-\x20\x7f~^:?*\[\\/]+)*(?![\s\S])"
)
# The URLs a clone may use, one pattern for the parser and the schema: https,
# http, ssh and git URLs with a host, file:/// URLs, and git's "scp-like"
# [user@]host:path. No credentials in them (an http(s) URL takes no user at
# all, ssh a user but no password; an scp-like path with "@" in its first part
# is refused, as "user:password@host:path" is one), no host or user that ssh
# could read as an option, and no "transport::address" (ext::, fd::).
_HOST = r"(?:[A-Za-z0-9_][A-Za-z0-9._-]*|\[[0-9A-Fa-f:.]+\])"
_USER = r"[A-Za-z0-9._][A-Za-z0-9._-]*@"
_REST = r"[^\x00-\x20\x7f]"
URL_PATTERN = re.compile(
    rf"^(?:https?://(?![^/?#]*@){_HOST}(?::[0-9]{{1,5}})?(?:[/?#]{_REST}*)?"
    rf"|(?:ssh|git)://(?:{_USER})?{_HOST}(?::[0-9]{{1,5}})?(?:/{_REST}*)?"
    rf"|file:///{_REST}*"
    rf"|(?!{_REST}*://)(?:{_USER})?[A-Za-z0-9_][A-Za-z0-9._-]*:(?!:)(?![^/]*@){_REST}+)"
    r"(?![\s\S])"
)
_PASSWORD_IN_URL = re.compile(r"^(?:[a-z]+://[^/?#@]*@|[^@/:]+:[^@/]*@)")
# mock.write_files paths: relative, slash-separated, no empty, "." or ".."
# part, no control characters (a file name the demo's reader can print).
_PATH_PART = r"(?!\.\.?(?:/|(?![\s\S])))[^\x00-\x1f\x7f/]+"
MOCK_PATH_PATTERN = re.compile(rf"^{_PATH_PART}(?:/{_PATH_PART})*(?![\s\S])")
_CONTROL = re.compile(r"[\x00-\x20\x7f]")
# s3://bucket/key of an archive; the key is at most 1024 characters (S3's limit).
ARCHIVE_PATTERN = re.compile(
    r"^s3://([a-z0-9][a-z0-9.-]{1,61}[a-z0-9])/((?=[^\x00-\x1f\x7f]{1,1024}(?![\s\S]))"
    r"[^\x00-\x1f\x7f]*(?:\.tar\.gz|\.tgz|\.tar|\.zip))(?![\s\S])"
)
_GIT_KEYS = frozenset({"url", "ref", "depth", "submodules", "lfs", "credentials", "push"})
_CREDENTIAL_KEYS = frozenset({"username", "password_from", "ssh_key_from", "known_hosts_from"})
_PUSH_KEYS = frozenset({"branch", "message", "allow_checked_out_branch"})


@dataclass(frozen=True)
class GitCredentials:
    """Names of task.env / task.secrets variables, never their values."""

    username: str | None = None  # default "x-access-token" for https tokens
    password_from: str | None = None  # a token or password (http/https URLs)
    ssh_key_from: str | None = None  # a private key (ssh URLs)
    known_hosts_from: str | None = None  # known_hosts lines (ssh URLs)


@dataclass(frozen=True)
class PushSpec:
    branch: str | None = None  # default: claude/<run_id>
    message: str | None = None  # commit message for uncommitted work
    allow_checked_out_branch: bool = False


@dataclass(frozen=True)
class GitWorkspace:
    url: str
    ref: str | None = None  # branch, tag or commit; None: the default branch
    depth: int = 1  # 0: full history
    submodules: bool = False
    lfs: bool = False
    credentials: GitCredentials | None = None
    push: PushSpec | None = None

    def to_wire(self) -> dict[str, Any]:
        git: dict[str, Any] = {"url": self.url}
        if self.ref is not None:
            git["ref"] = self.ref
        if self.depth != 1:
            git["depth"] = self.depth
        if self.submodules:
            git["submodules"] = True
        if self.lfs:
            git["lfs"] = True
        if self.credentials is not None:
            git["credentials"] = _set_fields(self.credentials)
        if self.push is not None:
            git["push"] = _set_fields(self.push)
        return {"git": git}


@dataclass(frozen=True)
class ArchiveWorkspace:
    bucket: str
    key: str  # ends .tar.gz, .tgz, .tar or .zip

    @property
    def uri(self) -> str:
        return f"s3://{self.bucket}/{self.key}"

    def to_wire(self) -> dict[str, Any]:
        return {"s3": self.uri}


Workspace = GitWorkspace | ArchiveWorkspace


def _set_fields(spec: GitCredentials | PushSpec) -> dict[str, Any]:
    return {key: value for key, value in vars(spec).items() if value not in (None, False)}


def default_push_branch(run_id: str) -> str:
    """claude/<run_id>, made a valid ref name: a run id may hold '..', or start
    or end with '.', which a ref name may not."""
    name = re.sub(r"\.{2,}", "-", run_id)
    if name.startswith("."):
        name = "-" + name[1:]
    if name.endswith(".") or name.endswith(".lock"):
        name += "-"
    return f"claude/{name}"


# --- parsing ---------------------------------------------------------------------


def parse_workspace(value: Any, variable_names: Collection[str]) -> Workspace:
    """task.workspace from an untrusted command. `variable_names` are the
    task.env and task.secrets names a credential may name."""
    where = "task.workspace"
    if not isinstance(value, dict) or len(value) != 1 or next(iter(value)) not in ("git", "s3"):
        raise InvalidCommand(f'{where} must be an object with one key, "git" or "s3"')
    if "s3" in value:
        return _archive(value["s3"])
    return _git(value["git"], variable_names)


def _archive(uri: Any) -> ArchiveWorkspace:
    what = "task.workspace.s3"
    if not isinstance(uri, str):
        raise InvalidCommand(f"{what} must be a string s3://bucket/key")
    check_text(uri, what)
    match = ARCHIVE_PATTERN.match(uri)
    if match is None:
        raise InvalidCommand(
            f"{what} {quote(uri)} is not s3://bucket/key with a key of at most 1024 "
            f"characters ending {', '.join(ARCHIVE_SUFFIXES)}"
        )
    return ArchiveWorkspace(bucket=match.group(1), key=match.group(2))


def _git(git: Any, variable_names: Collection[str]) -> GitWorkspace:
    where = "task.workspace.git"
    _object(git, where, _GIT_KEYS)
    url = _string(git, "url", where, MAX_URL_CHARS)
    if url is None:
        raise InvalidCommand(f"{where}.url is required")
    check_url(url)
    ref = _string(git, "ref", where, MAX_REF_CHARS)
    if ref is not None and not REF_PATTERN.match(ref):
        raise InvalidCommand(
            f"{where}.ref {quote(ref)} is not a git ref name or commit (no leading '-', "
            "no spaces or control characters)"
        )
    depth = git.get("depth", 1)
    if isinstance(depth, float) and depth.is_integer():
        depth = int(depth)
    if isinstance(depth, bool) or not isinstance(depth, int) or not 0 <= depth <= MAX_DEPTH:
        raise InvalidCommand(f"{where}.depth must be an integer from 0 (full history) up")
    credentials = _credentials(git, _scheme(url), variable_names)
    return GitWorkspace(
        url=url,
        ref=ref,
        depth=depth,
        submodules=_flag(git, "submodules", where),
        lfs=_flag(git, "lfs", where),
        credentials=credentials,
        push=_push(git),
    )


def check_url(url: str) -> None:
    """Refuses what URL_PATTERN (and so the schema) refuses, saying why."""
    what = "task.workspace.git.url"
    if len(url) > MAX_URL_CHARS:
        raise InvalidCommand(f"{what} must be at most {MAX_URL_CHARS} characters")
    if URL_PATTERN.match(url):
        return
    if _CONTROL.search(url):
        raise InvalidCommand(f"{what} must not contain spaces or control characters")
    if _PASSWORD_IN_URL.match(url):
        raise InvalidCommand(
            f"{what} must not carry credentials: name a task.env or task.secrets variable "
            "in credentials.password_from (and the user in credentials.username)"
        )
    raise InvalidCommand(
        f"{what} {quote(url)} is not an https://, http://, ssh://, git:// or file:/// URL "
        "with a host (file: none), nor user@host:path"
    )


def _scheme(url: str) -> str:
    if "://" in url:
        return url.split("://", 1)[0].lower()
    return "scp"


def _credentials(
    git: dict[str, Any], scheme: str, variable_names: Collection[str]
) -> GitCredentials | None:
    if "credentials" not in git:
        return None
    where = "task.workspace.git.credentials"
    value = git["credentials"]
    _object(value, where, _CREDENTIAL_KEYS)
    username = _string(value, "username", where, MAX_USERNAME_CHARS)
    if username is not None and (not username or _CONTROL.search(username)):
        raise InvalidCommand(f"{where}.username must be non-empty, without spaces or controls")
    names = {
        key: _string(value, key, where, 256) for key in sorted(_CREDENTIAL_KEYS - {"username"})
    }
    for key, name in names.items():
        if name is not None and name not in variable_names:
            raise InvalidCommand(
                f"{where}.{key} {quote(name)} must name a variable in task.env or task.secrets"
            )
    over_ssh = scheme in ("ssh", "scp")
    if names["password_from"] is not None and scheme not in ("http", "https"):
        raise InvalidCommand(f"{where}.password_from is for http:// and https:// URLs")
    for key in ("ssh_key_from", "known_hosts_from"):
        if names[key] is not None and not over_ssh:
            raise InvalidCommand(f"{where}.{key} is for ssh:// and user@host:path URLs")
    return GitCredentials(username=username, **names)


def _push(git: dict[str, Any]) -> PushSpec | None:
    if "push" not in git:
        return None
    where = "task.workspace.git.push"
    value = git["push"]
    _object(value, where, _PUSH_KEYS)
    branch = _string(value, "branch", where, MAX_REF_CHARS)
    if branch is not None and not REF_PATTERN.match(branch):
        raise InvalidCommand(
            f"{where}.branch {quote(branch)} is not a valid git branch name "
            "(git check-ref-format, and no leading '-')"
        )
    message = _string(value, "message", where, MAX_COMMIT_MESSAGE_CHARS)
    if message is not None and not message.strip():
        raise InvalidCommand(f"{where}.message must not be blank")
    return PushSpec(
        branch=branch,
        message=message,
        allow_checked_out_branch=_flag(value, "allow_checked_out_branch", where),
    )


def parse_mock_files(value: Any) -> dict[str, str]:
    """task.mock.write_files: relative path -> text for the mock CLI to write."""
    where = "task.mock.write_files"
    if not isinstance(value, dict):
        raise InvalidCommand(f"{where} must be an object of relative path: text")
    if len(value) > MAX_MOCK_FILES:
        raise InvalidCommand(f"{where} may hold at most {MAX_MOCK_FILES} files")
    for path in value:
        check_text(path, f"{where} path")
        if len(path) > MAX_MOCK_PATH_CHARS or not MOCK_PATH_PATTERN.match(path):
            raise InvalidCommand(
                f"{where} path {quote(path)} must be relative, without '.', '..' or empty "
                f"parts or control characters, at most {MAX_MOCK_PATH_CHARS} characters"
            )
        _string(value, path, where, MAX_MOCK_FILE_CHARS)
    # They travel as one JSON argument of the mock CLI: the kernel's limit.
    size = sum(len(path.encode()) + len(text.encode()) for path, text in value.items())
    if size > min(MAX_MOCK_FILES_BYTES, MAX_ARGUMENT_BYTES):
        raise InvalidCommand(f"{where} must hold at most {MAX_MOCK_FILES_BYTES} bytes in all")
    return dict(value)


def _object(value: Any, where: str, allowed: frozenset[str]) -> None:
    if not isinstance(value, dict):
        raise InvalidCommand(f"{where} must be an object")
    reject_unknown(value, allowed, where)


def _string(obj: dict[str, Any], key: str, where: str, max_chars: int) -> str | None:
    if key not in obj:
        return None
    value = obj[key]
    if not isinstance(value, str):
        raise InvalidCommand(f"{where}.{key} must be a string")
    check_text(value, f"{where}.{quote(key)[1:-1]}")
    if len(value) > max_chars:
        raise InvalidCommand(f"{where}.{key} must be at most {max_chars} characters")
    return value


def _flag(obj: dict[str, Any], key: str, where: str) -> bool:
    value = obj.get(key, False)
    if not isinstance(value, bool):
        raise InvalidCommand(f"{where}.{key} must be a boolean")
    return value
