"""The documentation agrees with the code and with itself.

docs/options.md must be what scripts/options_table.py makes of the click
definitions today, and every relative link in README.md and docs/*.md must lead
to a file, and to a heading when it names one.
"""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path
from types import ModuleType

import click
import pytest

from claude_code_scheduler.cli import cli

ROOT = Path(__file__).resolve().parents[2]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]

FENCE = re.compile(r"^\s*(```|~~~)")
HEADING = re.compile(r"^#{1,6}\s+(.*?)\s*#*\s*$")
# [text](target) and ![alt](target); the target stops at a space (a title follows).
LINK = re.compile(r"!?\[(?:[^\[\]]|\[[^\]]*\])*\]\(\s*<?([^)\s>]+)>?(?:\s+[^)]*)?\)")
CODE_SPAN = re.compile(r"`+[^`]*`+")
EXTERNAL = re.compile(r"^[a-z][a-z0-9+.-]*:", re.IGNORECASE)


def load_generator() -> ModuleType:
    path = ROOT / "scripts" / "options_table.py"
    spec = importlib.util.spec_from_file_location("options_table", path)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def prose_lines(text: str, *, keep_code: bool = False) -> list[str]:
    """The lines outside fenced code blocks; code spans blanked out unless
    `keep_code` (a heading's `code` is part of its anchor)."""
    lines, fenced = [], False
    for line in text.splitlines():
        if FENCE.match(line):
            fenced = not fenced
        elif not fenced:
            lines.append(line if keep_code else CODE_SPAN.sub("", line))
    return lines


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to '-'."""
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", heading)  # a link keeps its text
    text = re.sub(r"<[^>]+>", "", text).strip().lower()
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


def anchors(page: Path) -> set[str]:
    found: set[str] = set()
    seen: dict[str, int] = {}
    for line in prose_lines(page.read_text(), keep_code=True):
        match = HEADING.match(line)
        if not match:
            continue
        base = slug(match.group(1))
        count = seen.get(base, 0)
        seen[base] = count + 1
        found.add(base if count == 0 else f"{base}-{count}")
    return found


def links(page: Path) -> list[str]:
    return [m.group(1) for line in prose_lines(page.read_text()) for m in LINK.finditer(line)]


def test_options_page_matches_the_click_definitions() -> None:
    generator = load_generator()
    page = ROOT / "docs" / "options.md"
    assert page.exists(), "docs/options.md is missing: run `make docs`"
    assert page.read_text() == generator.render(), (
        "docs/options.md differs from the click definitions: run `make docs` "
        "(python scripts/options_table.py --check shows the diff)"
    )


def test_the_generator_covers_every_command_and_option() -> None:
    generator = load_generator()
    text = generator.render(cli)
    for path, command in generator.walk(cli, (generator.PROG,)):
        assert f"\n## {path}\n" in text
        for param in command.params:
            # An argument (cancel's RUN_ID) is shown by its name, an option by its flags.
            shown = [param.human_readable_name] if isinstance(param, click.Argument) else param.opts
            for flag in shown:
                assert f"`{flag}`" in text, f"{path}: {flag} is not in the page"


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_relative_links_lead_somewhere(page: Path) -> None:
    broken = []
    for target in links(page):
        if EXTERNAL.match(target):
            continue
        path_part, _, anchor = target.partition("#")
        destination = (page.parent / path_part).resolve() if path_part else page
        if not destination.exists():
            broken.append(f"{target}: no such file")
            continue
        if anchor and destination.suffix == ".md" and anchor not in anchors(destination):
            broken.append(f"{target}: no heading #{anchor} in {destination.relative_to(ROOT)}")
    assert not broken, f"{page.relative_to(ROOT)}: " + "; ".join(broken)


def test_the_link_checker_sees_links_and_anchors() -> None:
    assert slug("Each run's folders") == "each-runs-folders"
    assert slug("ECS/Fargate") == "ecsfargate"
    assert slug("`claude-code-scheduler node`") == "claude-code-scheduler-node"
    line = 'See [a](docs/a.md#x), ![b](img.png "t") and `[c](not-a-link.md)`.'
    assert [m.group(1) for m in LINK.finditer(CODE_SPAN.sub("", line))] == [
        "docs/a.md#x",
        "img.png",
    ]


def test_the_generator_renders_each_kind_of_option() -> None:
    @click.group()
    def top() -> None:
        """Top."""

    @top.group()
    def sub() -> None:
        """A group inside the group."""

    @sub.command()
    @click.option("--color/--no-color", default=True, envvar="COLOR")
    @click.option("--when", default=lambda: 42, help="When.")
    @click.option("--host", default=lambda: "x", help="Host. Default: the host name.")
    @click.option("--share", type=click.FloatRange(0, 1, min_open=True), default=0.5)
    @click.option("--tag", multiple=True, envvar=["TAG", "TAGS"])
    @click.option("--note", help="a | b <c>")
    @click.option("-q", "--quiet", is_flag=True)
    @click.option("--must", required=True)
    def leaf(**_: object) -> None:
        """The leaf."""

    @top.command(hidden=True)
    def secret() -> None:
        """Not shown."""

    text = load_generator().render(top)
    assert "\n## claude-code-scheduler sub leaf\n" in text
    assert "secret" not in text
    for row in (
        "| `--color` / `--no-color` | `COLOR` | `--color` | - |",
        "| `--when` | - | `42` | When. |",
        "| `--host` | - | the host name | Host. |",
        "| `--share` | - | `0.5` | Above 0 and at most 1. |",
        "| `--tag` | `TAG`, `TAGS` | - | - |",
        r"| `--note` | - | - | a \| b &lt;c&gt; |",
        "| `-q`, `--quiet` | - | off | - |",
        "| `--must` | - | required | - |",
    ):
        assert row in text
