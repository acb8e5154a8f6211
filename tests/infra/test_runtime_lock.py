"""requirements/runtime.txt, the image's hash-locked runtime dependencies,
stays in step with pyproject.toml. No network: the lock, pyproject.toml and
the metadata of what the venv has installed are all it reads.

The lock is made by `uv pip compile` (its first lines give the command); the
Dockerfile installs it with `pip install --require-hashes`, so a pin without a
hash, or a dependency missing from the lock, breaks the image build: these
tests say so before a build does, and say which.
"""

from __future__ import annotations

import re
import tomllib
from dataclasses import dataclass
from importlib import metadata

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

from tests.infra import support

LOCK = support.REPO / "requirements" / "runtime.txt"
# The image's interpreter and platforms (Dockerfile: python:3.13-slim on
# linux/amd64 and linux/arm64), for evaluating environment markers.
IMAGE_ENVIRONMENT = {
    "python_version": "3.13",
    "python_full_version": "3.13.0",
    "sys_platform": "linux",
    "platform_system": "Linux",
    "os_name": "posix",
    "platform_python_implementation": "CPython",
    "implementation_name": "cpython",
}
SHA256 = re.compile(r"--hash=sha256:[0-9a-f]{64}")


@dataclass(frozen=True)
class Pin:
    name: str  # canonical
    version: Version
    hashes: tuple[str, ...]


def parse_lock(text: str) -> tuple[dict[str, Pin], list[str]]:
    """The lock's pins by canonical name, and what in it is not a hashed `==` pin."""
    pins: dict[str, Pin] = {}
    problems: list[str] = []
    logical = re.sub(r"\\\n", " ", text)
    for raw in logical.splitlines():
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        hashes = tuple(SHA256.findall(line))
        requirement = Requirement(SHA256.sub("", line).strip())
        name = canonicalize_name(requirement.name)
        specifiers = list(requirement.specifier)
        if len(specifiers) != 1 or specifiers[0].operator != "==" or "*" in specifiers[0].version:
            problems.append(f"{name}: not pinned to one version ({requirement.specifier})")
            continue
        if not hashes:
            problems.append(f"{name}: no sha256 hash")
        pins[name] = Pin(name, Version(specifiers[0].version), hashes)
    return pins, problems


def runtime_dependencies() -> list[Requirement]:
    project = tomllib.loads((support.REPO / "pyproject.toml").read_text())["project"]
    return [Requirement(text) for text in project["dependencies"]]


def lock_problems(text: str, dependencies: list[Requirement]) -> list[str]:
    """Everything that keeps the lock from being the image's complete, hashed
    set of what pyproject.toml asks for."""
    pins, problems = parse_lock(text)
    for dependency in dependencies:
        name = canonicalize_name(dependency.name)
        pin = pins.get(name)
        if pin is None:
            problems.append(f"{name}: in pyproject.toml, not in the lock")
        elif not dependency.specifier.contains(pin.version, prereleases=True):
            problems.append(f"{name}: locked {pin.version} is outside {dependency.specifier}")
    return problems


@pytest.fixture(scope="module")
def lock_text() -> str:
    return LOCK.read_text()


def test_every_runtime_dependency_is_pinned_with_hashes(lock_text: str) -> None:
    assert lock_problems(lock_text, runtime_dependencies()) == []


def test_the_check_catches_a_lock_out_of_step(lock_text: str) -> None:
    """The control case: the same check on doctored locks and a doctored
    pyproject finds each fault, so the test above would have failed."""
    without_click = re.sub(r"^click==.*?(?=^\S)", "", lock_text, flags=re.M | re.S)
    unhashed = re.sub(r"^(tenacity==\S+)( \\\n\s+--hash=\S+)+", r"\1", lock_text, flags=re.M)
    unpinned = re.sub(r"^rfc8785==", "rfc8785>=", lock_text, flags=re.M)
    dependencies = runtime_dependencies()
    assert "click: in pyproject.toml, not in the lock" in lock_problems(without_click, dependencies)
    assert "tenacity: no sha256 hash" in lock_problems(unhashed, dependencies)
    assert any(p.startswith("rfc8785: not pinned") for p in lock_problems(unpinned, dependencies))
    raised = [*dependencies, Requirement("boto3>=999")]
    assert any(p.startswith("boto3: locked") for p in lock_problems(lock_text, raised))


def test_the_lock_holds_the_whole_closure_for_the_image(lock_text: str) -> None:
    """What each locked package requires (with the extras pyproject.toml asks
    for, markers judged for the image) is locked too: `--require-hashes`
    installs nothing unlisted. Read from the venv's metadata where the venv
    has the locked version, which `pip install -e '.[dev]'` resolves alike."""
    pins, _ = parse_lock(lock_text)
    extras = {canonicalize_name(r.name): r.extras for r in runtime_dependencies()}
    checked, missing = [], []
    for pin in pins.values():
        try:
            distribution = metadata.distribution(pin.name)
        except metadata.PackageNotFoundError:
            continue
        if Version(distribution.version) != pin.version:
            continue
        checked.append(pin.name)
        for text in distribution.requires or []:
            requirement = Requirement(text)
            wanted = extras.get(pin.name, set()) | {""}
            if requirement.marker and not any(
                requirement.marker.evaluate({**IMAGE_ENVIRONMENT, "extra": extra})
                for extra in wanted
            ):
                continue
            locked = pins.get(canonicalize_name(requirement.name))
            if locked is None or not requirement.specifier.contains(locked.version, True):
                missing.append(f"{pin.name} needs {requirement}")
    assert missing == []
    assert {"boto3", "pyjwt", "cryptography"} <= set(checked), "the venv should match the lock"


def test_the_lock_is_made_for_the_images_python(lock_text: str) -> None:
    """The header names the command that made it: from pyproject.toml, with
    hashes, for every platform (--universal) of the image's Python."""
    [command] = [line for line in lock_text.splitlines()[:3] if "uv pip compile" in line]
    words = command.lstrip("# ").split()
    assert "pyproject.toml" in words
    assert {"--generate-hashes", "--universal"} <= set(words)
    assert words[words.index("--python-version") + 1] == IMAGE_ENVIRONMENT["python_version"]
    runtime_from = [i.arguments for i in support.dockerfile() if i.keyword == "FROM"][-1]
    assert runtime_from.startswith(f"python:{IMAGE_ENVIRONMENT['python_version']}-")
