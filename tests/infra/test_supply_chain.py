"""The workflows and Dependabot: every action pinned by commit SHA, no token
left behind by a checkout, a release that publishes only after CI passed on
the tagged commit and cannot half-publish, and Dependabot watching every pin.

actionlint (tests/infra/test_lint_infra.py) checks the workflows' syntax and
their shell; these tests check what actionlint has no opinion about.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.infra import support

DEPENDABOT = support.REPO / ".github" / "dependabot.yml"
NPM_PIN = support.REPO / "requirements" / "claude-code" / "package.json"
# `uses: owner/repo[/path]@<40 hex> # v1.2.3`: the SHA is what runs, the comment
# is what Dependabot and a reader go by.
PINNED = re.compile(r"^[\w.-]+/[\w./-]+@[0-9a-f]{40} # v\d+(\.\d+)*$")


def workflow_files() -> list[Path]:
    return sorted(support.WORKFLOWS.glob("*.yml"))


def load(path: Path) -> dict[Any, Any]:
    data = yaml.safe_load(path.read_text())
    assert isinstance(data, dict)
    # PyYAML reads the key `on` as True (YAML 1.1).
    if True in data:
        data["on"] = data.pop(True)
    return data


def steps(workflow: dict[str, Any]) -> list[dict[str, Any]]:
    return [step for job in workflow["jobs"].values() for step in job.get("steps", [])]


def uses_lines(path: Path) -> list[str]:
    """Each `uses:` as written, comment included (YAML loading drops comments)."""
    return [
        match.group(1).strip()
        for match in re.finditer(r"^\s*(?:-\s+)?uses:\s*(.+)$", path.read_text(), re.M)
    ]


@pytest.fixture(scope="module")
def release() -> dict[str, Any]:
    return load(support.WORKFLOWS / "release.yml")


@pytest.fixture(scope="module")
def ci() -> dict[str, Any]:
    return load(support.WORKFLOWS / "ci.yml")


def test_every_action_is_pinned_by_commit_sha_with_its_version() -> None:
    unpinned = [
        f"{path.name}: {line}"
        for path in workflow_files()
        for line in uses_lines(path)
        if not line.startswith("./") and not PINNED.match(line)
    ]
    assert unpinned == []


def test_one_action_one_pin_across_the_workflows() -> None:
    """Two SHAs for one action would mean one of them was missed by an update."""
    pins: dict[str, set[str]] = {}
    for path in workflow_files():
        for line in uses_lines(path):
            action, _, pin = line.partition("@")
            pins.setdefault(action, set()).add(pin)
    assert {a: p for a, p in pins.items() if len(p) > 1} == {}


def test_the_check_catches_a_tag_a_short_sha_and_a_missing_comment() -> None:
    """The control case for the pin rule above."""
    assert PINNED.match("actions/checkout@11bd71901bbe5b1630ceea73d27597364c9af683 # v4.2.2")
    for line in (
        "actions/checkout@v4",
        "actions/checkout@11bd719",
        "actions/checkout@11bd71901bbe5b1630ceea73d27597364c9af683",
        "pypa/gh-action-pypi-publish@release/v1",
    ):
        assert not PINNED.match(line), line


def test_service_containers_are_pinned_by_digest(ci: dict[str, Any]) -> None:
    for job in ci["jobs"].values():
        for service in (job.get("services") or {}).values():
            assert re.search(r"@sha256:[0-9a-f]{64}$", service["image"]), service["image"]


def test_every_checkout_leaves_no_credentials_behind() -> None:
    """persist-credentials: false keeps the job's token out of .git/config,
    where any later step (a test, a build script) could read it."""
    checkouts = [
        (path.name, step)
        for path in workflow_files()
        for step in steps(load(path))
        if str(step.get("uses", "")).startswith("actions/checkout@")
    ]
    assert checkouts
    for name, step in checkouts:
        assert (step.get("with") or {}).get("persist-credentials") is False, name


def needs(job: dict[str, Any]) -> set[str]:
    value = job.get("needs", [])
    return {value} if isinstance(value, str) else set(value)


def ancestors(jobs: dict[str, Any], name: str) -> set[str]:
    found: set[str] = set()
    pending = list(needs(jobs[name]))
    while pending:
        job = pending.pop()
        if job not in found:
            found.add(job)
            pending += needs(jobs[job])
    return found


def test_the_release_runs_ci_on_the_tagged_commit_first(
    release: dict[str, Any], ci: dict[str, Any]
) -> None:
    jobs = release["jobs"]
    assert jobs["ci"]["uses"] == "./.github/workflows/ci.yml"
    assert "workflow_call" in ci["on"]
    assert release["on"] == {"push": {"tags": ["v*.*.*"]}}
    for name in jobs:
        if name != "ci":
            assert "ci" in ancestors(jobs, name), f"{name} does not wait for CI"


def step_using(job: dict[str, Any], action: str) -> list[dict[str, Any]]:
    return [s for s in job.get("steps", []) if str(s.get("uses", "")).startswith(action + "@")]


def test_the_release_cannot_half_publish(release: dict[str, Any]) -> None:
    """PyPI, which cannot be undone, publishes only once the image is pushed,
    scanned and attested; the image gets its tags only after PyPI; and only
    the tag step names a tag."""
    jobs = release["jobs"]
    publishers = {
        name for name, job in jobs.items() if step_using(job, "pypa/gh-action-pypi-publish")
    }
    assert publishers == {"pypi"}
    assert {"dist", "image"} <= ancestors(jobs, "pypi")
    assert "pypi" in ancestors(jobs, "tags")

    (build,) = step_using(jobs["image"], "docker/build-push-action")
    assert "push-by-digest=true" in build["with"]["outputs"]
    assert "tags" not in build["with"] and "push" not in build["with"]
    for name, job in jobs.items():
        for step in job.get("steps", []):
            if "imagetools create" in step.get("run", ""):
                assert name == "tags"
    (tagging,) = [s for s in jobs["tags"]["steps"] if "imagetools create" in s.get("run", "")]
    assert "needs.image.outputs.digest" in tagging["env"]["SOURCE"]


def test_the_image_is_scanned_and_gets_an_sbom_before_anything_is_published(
    release: dict[str, Any],
) -> None:
    image = release["jobs"]["image"]
    order = [s.get("uses", s.get("run", "")).split("@")[0] for s in image["steps"]]
    scans = step_using(image, "aquasecurity/trivy-action")
    gate = [s for s in scans if s["with"].get("exit-code") == "1"]
    assert len(gate) == 1
    assert {"HIGH", "CRITICAL"} <= set(gate[0]["with"]["severity"].split(","))
    assert "steps.build.outputs.digest" in gate[0]["with"]["image-ref"]
    sboms = [s for s in scans if s["with"].get("format") in ("cyclonedx", "spdx-json")]
    assert len(sboms) == 1
    (upload,) = step_using(image, "actions/upload-artifact")
    assert upload["with"]["path"] == sboms[0]["with"]["output"]
    # The scan judges the digest before the provenance is attested to it.
    assert order.index("aquasecurity/trivy-action") < order.index("actions/attest-build-provenance")
    (build,) = step_using(image, "docker/build-push-action")
    assert build["with"]["sbom"] is True and build["with"]["no-cache"] is True


def test_dependabot_watches_every_kind_of_pin() -> None:
    config = yaml.safe_load(DEPENDABOT.read_text())
    by_ecosystem = {u["package-ecosystem"]: u for u in config["updates"]}
    assert set(by_ecosystem) == {"pip", "npm", "docker", "github-actions"}
    # Each directory holds what that ecosystem reads.
    root = support.REPO
    assert (root / by_ecosystem["pip"]["directory"].lstrip("/") / "runtime.txt").is_file()
    assert (root / by_ecosystem["npm"]["directory"].lstrip("/") / "package.json") == NPM_PIN
    assert (root / by_ecosystem["docker"]["directory"].lstrip("/") / "Dockerfile").is_file()
    assert by_ecosystem["github-actions"]["directory"] == "/"


def test_the_npm_pin_dependabot_reads_is_the_cli_pin() -> None:
    """claude-code.version is what the image, the tests and the install script
    use; the package.json beside it exists so Dependabot can see the pin."""
    dependencies = json.loads(NPM_PIN.read_text())["dependencies"]
    assert dependencies == {"@anthropic-ai/claude-code": support.claude_code_version()}, (
        "set claude-code.version to the version Dependabot proposed in "
        f"{NPM_PIN.relative_to(support.REPO)}"
    )
