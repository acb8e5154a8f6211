"""The Dockerfile, .dockerignore and the workflows that build the image."""

from __future__ import annotations

import re

import pytest

from claude_code_scheduler.cli import cli
from claude_code_scheduler.node.config import default
from tests.infra import support
from tests.infra.support import Instruction


@pytest.fixture(scope="module")
def instructions() -> list[Instruction]:
    return support.dockerfile()


@pytest.fixture(scope="module")
def runtime(instructions: list[Instruction]) -> list[Instruction]:
    last_stage = instructions[-1].stage
    return [i for i in instructions if i.stage == last_stage]


def env_of(stage: list[Instruction]) -> dict[str, str]:
    env: dict[str, str] = {}
    for instruction in stage:
        if instruction.keyword == "ENV":
            for word in support.shell_words(instruction.arguments):
                name, _, value = word.partition("=")
                env[name] = value
    return env


def test_the_cli_version_comes_from_the_pin_file(instructions: list[Instruction]) -> None:
    # No version written into the Dockerfile: a plain `docker build` reads the pin.
    args = [i.arguments for i in instructions if i.keyword == "ARG"]
    assert "CLAUDE_CODE_VERSION=" in args
    assert not [a for a in args if a.startswith("CLAUDE_CODE_VERSION=") and a.split("=", 1)[1]]
    stage = [i for i in instructions if i.stage == "claude-code"]
    copies = [i.arguments for i in stage if i.keyword == "COPY"]
    assert copies == ["claude-code.version ./"]
    [install] = [i.arguments for i in stage if i.keyword == "RUN" and "npm install" in i.arguments]
    assert "${CLAUDE_CODE_VERSION:-$(tr -d '[:space:]' < claude-code.version)}" in install
    assert '"@anthropic-ai/claude-code@${version}"' in install
    # Not --ignore-scripts or --omit=optional: the postinstall links the native binary.
    assert "--ignore-scripts" not in install and "--omit" not in install
    assert "!claude-code.version" in support.DOCKERIGNORE.read_text().splitlines()


def test_workflows_build_with_the_pin_file_and_label_its_version() -> None:
    version = support.claude_code_version()
    for workflow in support.WORKFLOWS.glob("*.yml"):
        text = workflow.read_text()
        assert version not in text, f"{workflow.name} writes the CLI version down again"
        assert "build-args: CLAUDE_CODE_VERSION" not in text, f"{workflow.name} overrides the pin"
    release = (support.WORKFLOWS / "release.yml").read_text()
    assert "claude-code.version=${{ steps.claude.outputs.version }}" in release
    assert "< claude-code.version)" in release


def test_multi_stage_with_a_slim_python_313_runtime(instructions: list[Instruction]) -> None:
    froms = [i.arguments for i in instructions if i.keyword == "FROM"]
    assert len(froms) >= 3
    runtime_image = froms[-1].split()[0].split("@")[0]
    assert re.fullmatch(r"python:3\.13(\.\d+)?-slim(-\w+)?", runtime_image), runtime_image
    assert any(f.split()[-1] == "wheel" for f in froms)
    assert any(re.match(r"node:\d+", f) for f in froms)


def test_base_images_are_pinned_by_digest_with_the_tag_beside_it() -> None:
    """Each FROM names an image by tag and index digest, and the comment line
    above it gives the full version the digest was taken for."""
    lines = support.DOCKERFILE.read_text().splitlines()
    froms = [(n, line) for n, line in enumerate(lines) if line.startswith("FROM ")]
    assert len(froms) >= 3
    for number, line in froms:
        image = next(w for w in line.split()[1:] if not w.startswith("--"))
        name_and_tag, _, digest = image.partition("@")
        assert re.fullmatch(r"sha256:[0-9a-f]{64}", digest), f"line {number + 1}: {image}"
        name, tag = name_and_tag.split(":")
        comment = lines[number - 1]
        assert re.fullmatch(rf"# {re.escape(name)}:[\w.-]+\b.*", comment), (number + 1, comment)
        # The same variant, at a full version within the tag's: 3.13.15-slim-trixie
        # for 3.13-slim-trixie.
        full_version, _, variant = comment.split()[1].rstrip(",").split(":")[1].partition("-")
        version, _, tag_variant = tag.partition("-")
        assert variant == tag_variant and f"{full_version}.".startswith(f"{version}."), comment


def test_stages_built_per_platform_check_their_base_images_architecture(
    instructions: list[Instruction],
) -> None:
    """A digest of one platform's image would build arm64 on amd64 with only
    a warning; each stage that is built per target platform fails instead."""
    froms = {i.stage: i.arguments for i in instructions if i.keyword == "FROM"}
    per_platform = [stage for stage, args in froms.items() if "$BUILDPLATFORM" not in args]
    assert {"claude-code", "runtime"} <= set(per_platform)
    check = 'test "$(dpkg --print-architecture)" = "$TARGETARCH"'
    for stage in per_platform:
        own = [i for i in instructions if i.stage == stage]
        assert "TARGETARCH" in [i.arguments for i in own if i.keyword == "ARG"], stage
        assert any(i.keyword == "RUN" and i.arguments.startswith(check) for i in own), stage


def test_runtime_has_no_node_and_only_the_cli_binary(runtime: list[Instruction]) -> None:
    copies = [i.arguments for i in runtime if i.keyword == "COPY"]
    from_node = [c for c in copies if "--from=claude-code" in c]
    assert len(from_node) == 1
    source, target = from_node[0].split()[-2:]
    assert source.endswith("node_modules/@anthropic-ai/claude-code/bin/claude.exe")
    assert target == "/usr/local/bin/claude"
    runs = " ".join(i.arguments for i in runtime if i.keyword == "RUN")
    assert "npm" not in runs
    assert "nodejs" not in runs


def test_dependencies_install_before_the_application(runtime: list[Instruction]) -> None:
    pip = [i.arguments for i in runtime if i.keyword == "RUN" and "pip install" in i.arguments]
    assert len(pip) == 2
    # The hash-locked set (tests/infra/test_runtime_lock.py keeps it in step),
    # then the wheel alone, then proof that the set is what the wheel asks for.
    assert "source=requirements/runtime.txt" in pip[0]
    assert "--require-hashes" in pip[0].split()
    assert "--no-deps" not in pip[0], "pip must see every dependency is in the lock"
    assert "--no-deps" in pip[1]
    assert ".whl" in pip[1]
    assert pip[1].endswith("&& pip check")


def test_runtime_environment(runtime: list[Instruction]) -> None:
    env = env_of(runtime)
    assert env["PYTHONUNBUFFERED"] == "1"
    assert env["DISABLE_AUTOUPDATER"] == "1"
    assert env["CLAUDE_NODE_WORK_DIR"] == "/work"
    assert env.get("PIP_NO_CACHE_DIR") == "1"


def test_the_node_runs_as_root_and_the_image_names_the_run_uids(
    runtime: list[Instruction],
) -> None:
    """Root in the container, so that each run gets a uid of its own (and the
    CLI, run as that uid, accepts bypassPermissions); said with a reason."""
    (user,) = [i.arguments for i in runtime if i.keyword == "USER"]
    assert user.split(":")[0] in ("root", "0")
    text = support.DOCKERFILE.read_text()
    assert "# hadolint ignore=DL3002" in text
    # One passwd and group entry per run slot, from the default --run-uid-base:
    # no login shell, no home.
    runs = " ".join(i.arguments for i in runtime if i.keyword == "RUN")
    assert "seq 0 31" in runs and f"uid=$(({default('run_uid_base')} + slot))" in runs
    assert "--shell /usr/sbin/nologin" in runs and "--no-create-home" in runs
    assert "install -d -o root -g root -m 0711 /work" in runs
    env = env_of(runtime)
    assert "HOME" not in env, "each run has a HOME of its own"


def test_tini_from_debian_and_the_entrypoint(runtime: list[Instruction]) -> None:
    runs = " ".join(i.arguments for i in runtime if i.keyword == "RUN")
    assert re.search(r"apt-get install .*\btini\b", runs)
    # What the CLI's Bash sandbox (--bash-sandbox) runs.
    assert re.search(r"apt-get install .*\bbubblewrap\b", runs)
    assert re.search(r"apt-get install .*\bsocat\b", runs)
    assert "rm -rf /var/lib/apt/lists/*" in runs
    (entrypoint,) = [i.arguments for i in runtime if i.keyword == "ENTRYPOINT"]
    assert support.exec_form(entrypoint) == ["tini", "--", "claude-code-scheduler"]
    (cmd,) = [i.arguments for i in runtime if i.keyword == "CMD"]
    assert support.exec_form(cmd) == ["node"]


def test_the_runtime_has_what_tasks_need_to_work_on_code(runtime: list[Instruction]) -> None:
    """git (and LFS) over https and ssh, for the node's git workspaces and the
    CLI's own git commands; no ripgrep, which the native CLI embeds."""
    installs = [
        i.arguments for i in runtime if i.keyword == "RUN" and "apt-get install" in i.arguments
    ]
    packages = set(support.shell_words(" ".join(installs)))
    assert {"git", "git-lfs", "openssh-client", "ca-certificates"} <= packages
    assert "--no-install-recommends" in packages
    assert "ripgrep" not in packages
    assert "embeds it" in support.DOCKERFILE.read_text()


def test_healthcheck_runs_the_healthcheck_subcommand(runtime: list[Instruction]) -> None:
    (healthcheck,) = [i.arguments for i in runtime if i.keyword == "HEALTHCHECK"]
    command = healthcheck[healthcheck.index("CMD") + len("CMD") :].strip()
    assert support.exec_form(command) == ["claude-code-scheduler", "healthcheck"]
    assert "healthcheck" in cli.commands


def test_volumes_are_the_writable_paths_of_the_ecs_task(runtime: list[Instruction]) -> None:
    volumes = set()
    for instruction in runtime:
        if instruction.keyword == "VOLUME":
            volumes |= set(support.exec_form(instruction.arguments))
    assert env_of(runtime)["CLAUDE_NODE_WORK_DIR"] in volumes
    task = support.read_json(support.TASK_DEFINITION)
    (container,) = task["containerDefinitions"]
    assert {m["containerPath"] for m in container["mountPoints"]} == volumes


def test_ignored_rules_say_why() -> None:
    lines = support.DOCKERFILE.read_text().splitlines()
    for number, line in enumerate(lines):
        match = re.search(r"hadolint ignore=([\w,]+)", line)
        if not match:
            continue
        for rule in match.group(1).split(","):
            before = "\n".join(lines[max(0, number - 8) : number])
            assert f"{rule} (" in before, f"line {number + 1}: no reason given for ignoring {rule}"


def test_dockerignore_keeps_the_context_small() -> None:
    patterns = [
        line.strip()
        for line in support.DOCKERIGNORE.read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    # An allow-list: everything is out unless listed.
    assert patterns[0] == "*"
    allowed = {p[1:].rstrip("/") for p in patterns if p.startswith("!")}
    assert allowed == {
        "pyproject.toml",
        "README.md",
        "app",
        "claude-code.version",
        "requirements/runtime.txt",
    }
    copied = set()
    for instruction in support.dockerfile():
        if instruction.keyword == "COPY" and "--from" not in instruction.arguments:
            copied |= {w.rstrip("/") for w in instruction.arguments.split()[:-1]}
    assert copied <= allowed, f"COPY of files the context does not hold: {copied - allowed}"
