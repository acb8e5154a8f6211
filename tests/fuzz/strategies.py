"""Hypothesis strategies for RunTask bodies: valid commands, documents close to
valid, and hostile text.

Strings in a valid command hold no NUL and no lone surrogate: the protocol
rejects both. JSON text is written with json.dumps' default ensure_ascii, so
NUL and surrogates travel as `\\u0000` / `\\ud800` escapes and every body is
plain ASCII, as SQS requires of a message body.
"""

from __future__ import annotations

import copy
import itertools
import json
import uuid
from datetime import datetime
from typing import Any

from hypothesis import strategies as st

from claude_code_scheduler.protocol import PERMISSION_MODES
from claude_code_scheduler.protocol.commands import EFFORT_LEVELS

RUN_ID_REGEX = r"[A-Za-z0-9._-]{1,128}"
ENV_NAME_REGEX = r"[A-Za-z_][A-Za-z0-9_]*"
MAX_TIMEOUT = 43200
MAX_OUTPUT_BYTES = 100 * 1024 * 1024

TASK_KEYS = (
    "prompt",
    "name",
    "task_id",
    "model",
    "permission_mode",
    "allowed_tools",
    "disallowed_tools",
    "max_turns",
    "timeout_seconds",
    "env",
    "secrets",
    "mock",
    "max_budget_usd",
    "system_prompt",
    "append_system_prompt",
    "json_schema",
    "mcp_servers",
    "fallback_model",
    "effort",
    "settings",
    "retry",
    "resume",
)
MOCK_KEYS = ("duration_seconds", "exit_code", "output_bytes")
TOP_KEYS = ("type", "version", "run_id", "task")
# Fields whose value is a string, and where a NUL or a surrogate can hide.
STRING_PATHS = (
    ("run_id",),
    ("task", "prompt"),
    ("task", "name"),
    ("task", "task_id"),
    ("task", "model"),
    ("task", "allowed_tools", 0),
    ("task", "disallowed_tools", 0),
    ("task", "env", "FUZZ_VALUE"),
    ("task", "system_prompt"),
    ("task", "append_system_prompt"),
    ("task", "fallback_model"),
    ("task", "resume", "session_id"),
)

# --- strings --------------------------------------------------------------------

lone_surrogates = st.integers(0xD800, 0xDFFF).map(chr)
clean_chars = st.characters(exclude_categories=("Cs",), exclude_characters="\x00")


def clean_text(min_size: int = 0, max_size: int = 30) -> st.SearchStrategy[str]:
    return st.text(clean_chars, min_size=min_size, max_size=max_size)


# Starting with '-': a child's argument parser may take it for an option.
dashed = st.builds(
    lambda dashes, rest: dashes + rest, st.sampled_from(["-", "--", "---"]), clean_text()
)
nonblank = st.one_of(
    st.builds(
        lambda a, c, b: a + c + b,
        clean_text(),
        st.characters(min_codepoint=0x21, max_codepoint=0x7E),
        clean_text(),
    ),
    dashed,
)
whitespace = st.text(
    st.sampled_from(" \t\n\r\x0b\x0c\x1c\x1d\x1e\x1f\x85\xa0\u2028\u3000"), max_size=5
)
# NUL or a lone surrogate somewhere in otherwise ordinary text.
poisoned_text = st.builds(
    lambda a, bad, b: a + bad + b,
    clean_text(max_size=10),
    st.one_of(st.just("\x00"), lone_surrogates),
    clean_text(max_size=10),
)
# At most 30,000 characters, so at most 120,000 bytes of UTF-8: under the
# kernel's 131,071-byte limit on one argument, which the node checks in bytes
# and the schema can only state in characters.
long_text = st.builds(lambda unit, count: unit * count, clean_text(1, 6), st.integers(500, 5000))

# What the CLI takes as a model name and a tool pattern, never read as a flag.
models = st.one_of(
    st.sampled_from(["sonnet", "opus", "claude-sonnet-4-5", "us.anthropic.claude-opus-4-1:0"]),
    st.from_regex(r"[A-Za-z0-9][A-Za-z0-9._:/@-]{0,30}", fullmatch=True),
)
tool_patterns = st.one_of(
    st.sampled_from(["Read", "Grep", "Bash(git log:*)", "mcp__server__tool", "WebFetch"]),
    st.from_regex(r"[A-Za-z][A-Za-z0-9_*-]{0,15}(\([a-z :*./-]{0,12}\))?", fullmatch=True),
)

fallback_models = (
    st.lists(models, min_size=1, max_size=3).map(",".join).filter(lambda value: len(value) <= 256)
)

# --- numbers ----------------------------------------------------------------------

# Beyond float range and beyond 64 bits, but under Python's 4300-digit limit
# for int <-> str, so json.dumps can still write them.
huge_ints = st.builds(
    lambda sign, exponent, low: sign * 10**exponent + low,
    st.sampled_from([1, -1]),
    st.integers(19, 800),
    st.integers(0, 9),
)
finite_floats = st.floats(allow_nan=False, allow_infinity=False)


def nested(depth: int, leaf: Any = "x") -> Any:
    value = leaf
    for level in range(depth):
        value = [value] if level % 2 else {"k": value}
    return value


deep = st.integers(2, 60).map(nested)

# --- valid commands -------------------------------------------------------------


def tasks(*, node: bool = False) -> st.SearchStrategy[dict[str, Any]]:
    """A valid task. With `node`, one a mock-mode node runs quickly and
    predictably: short, no timeout in reach, env names of our own."""
    tools = st.lists(tool_patterns, max_size=4)
    if node:
        mock = st.fixed_dictionaries(
            {},
            optional={
                "duration_seconds": st.sampled_from([0, 0.05, 0.2, 0.4]),
                "exit_code": st.one_of(st.just(0), st.integers(1, 255)),
                "output_bytes": st.one_of(st.integers(0, 30000), st.just(250_000)),
            },
        )
        env = st.dictionaries(
            st.from_regex(r"FUZZ_[A-Z0-9_]{0,12}", fullmatch=True), clean_text(), max_size=3
        )
        timeout = st.integers(120, MAX_TIMEOUT)
        max_turns = st.integers(1, 10**18)
        prompt = st.one_of(nonblank, long_text)
    else:
        mock = st.fixed_dictionaries(
            {},
            optional={
                "duration_seconds": st.one_of(st.floats(0, 3600), st.integers(0, 3600)),
                "exit_code": st.integers(0, 255),
                "output_bytes": st.integers(0, MAX_OUTPUT_BYTES),
                "write_files": st.dictionaries(
                    st.from_regex(
                        r"[A-Za-z0-9_-]{1,8}(/[A-Za-z0-9_.-]{1,8}){0,2}",
                        fullmatch=True,
                        # No "." or ".." component: the schema refuses both.
                    ).filter(lambda path: not {".", ".."} & set(path.split("/"))),
                    clean_text(),
                    max_size=3,
                ),
            },
        )
        env = st.dictionaries(
            st.from_regex(ENV_NAME_REGEX, fullmatch=True), clean_text(), max_size=3
        )
        timeout = st.one_of(
            st.floats(0, MAX_TIMEOUT, exclude_min=True), st.integers(1, MAX_TIMEOUT)
        )
        max_turns = st.one_of(st.integers(1, 1000), huge_ints.map(abs))
        prompt = nonblank
    return st.fixed_dictionaries(
        {"prompt": prompt},
        optional={
            "name": st.one_of(clean_text(), dashed),
            "task_id": st.one_of(clean_text(), dashed),
            "model": models,
            "permission_mode": st.sampled_from(PERMISSION_MODES),
            "allowed_tools": tools,
            "disallowed_tools": tools,
            "max_turns": max_turns,
            "timeout_seconds": timeout,
            "env": env,
            # Not for a node: reading them needs secrets in moto (and a
            # workspace, a git server).
            **({} if node else {"secrets": secret_maps, "workspace": workspaces}),
            "mock": mock,
            **task_controls,
            **({} if node else task_policies),
        },
    ).map(_without_shared_names)


# JSON objects for the fields the CLI takes as one argument of compact JSON:
# any JSON at all inside, NUL and lone surrogates included (they travel as
# escapes).
json_values = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(), finite_floats, st.text(max_size=10)),
    lambda children: (
        st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=8), children, max_size=3)
    ),
    max_leaves=10,
)
json_objects = st.dictionaries(st.text(max_size=8), json_values, max_size=4)
json_schemas = st.one_of(
    st.just({"type": "object", "properties": {"name": {"type": "string"}}}), json_objects
)
mcp_server_maps = st.dictionaries(
    st.text(clean_chars, min_size=1, max_size=10),
    st.one_of(
        st.fixed_dictionaries(
            {"command": clean_text(1, 20)},
            optional={"args": st.lists(clean_text(), max_size=3), "env": json_objects},
        ),
        json_objects,
    ),
    max_size=3,
)
task_controls = {
    "max_budget_usd": st.one_of(
        st.floats(0, 1_000_000, exclude_min=True), st.integers(1, 1_000_000)
    ),
    "system_prompt": clean_text(),
    "append_system_prompt": st.one_of(clean_text(), dashed),
    "json_schema": json_schemas,
    "mcp_servers": mcp_server_maps,
    "fallback_model": fallback_models,
    "effort": st.sampled_from(EFFORT_LEVELS),
    "settings": json_objects,
}
# A node would act on these (retry the message, restore a session): not for
# the mock-mode node fuzz, whose oracle does not model them.
task_policies = {
    "retry": st.fixed_dictionaries({"max_attempts": st.integers(1, 100)}),
    "resume": st.fixed_dictionaries(
        {"session_id": st.uuids().map(str)}, optional={"fork": st.booleans()}
    ),
}


# task.workspace without credentials (which must name the task's variables).
workspaces = st.one_of(
    st.fixed_dictionaries(
        {
            "url": st.sampled_from(
                ["https://github.com/a/b.git", "git@host:a/b", "file:///srv/r.git", "git://h:9/r"]
            )
        },
        optional={
            "ref": st.sampled_from(["main", "v1.0", "refs/heads/x", "a" * 40]),
            "depth": st.integers(0, 2**31 - 1),
            "submodules": st.booleans(),
            "lfs": st.booleans(),
            "push": st.fixed_dictionaries(
                {},
                optional={
                    "branch": st.sampled_from(["claude/x", "work"]),
                    "message": nonblank,
                    "allow_checked_out_branch": st.booleans(),
                },
            ),
        },
    ).map(lambda git: {"git": git}),
    st.sampled_from(["s3://bucket-1/inputs/a.tar.gz", "s3://b-2/x.zip"]).map(lambda u: {"s3": u}),
)


# References of each form task.secrets takes (aws.names.parse_secret_ref).
secret_refs = st.one_of(
    st.from_regex(r"[A-Za-z0-9/_+=.@-]{1,40}", fullmatch=True).map(
        lambda name: f"arn:aws:secretsmanager:us-east-1:123456789012:secret:{name}"
    ),
    st.from_regex(r"/?[A-Za-z0-9_.-]{1,20}(/[A-Za-z0-9_.-]{1,20}){0,3}", fullmatch=True),
    st.from_regex(r"[A-Za-z0-9_.-]{1,20}(/[A-Za-z0-9_.-]{1,20}){0,2}", fullmatch=True).map(
        lambda name: f"arn:aws:ssm:eu-west-1:123456789012:parameter/{name}"
    ),
)
secret_maps = st.dictionaries(
    st.from_regex(r"SECRET_[A-Z0-9_]{0,12}", fullmatch=True), secret_refs, max_size=3
)


def _without_shared_names(task: dict[str, Any]) -> dict[str, Any]:
    """A name in both env and secrets is invalid (the schema cannot say so)."""
    if "secrets" in task and "env" in task:
        task["secrets"] = {k: v for k, v in task["secrets"].items() if k not in task["env"]}
    return task


def commands(
    *, node: bool = False, run_id: st.SearchStrategy[str] | None = None
) -> st.SearchStrategy[dict[str, Any]]:
    """A valid command; without a `run_id` strategy, sometimes one a schedule
    fired (its run id is then the schedule's name and the execution id)."""
    plain = st.fixed_dictionaries(
        {
            "type": st.just("RunTask"),
            "version": st.sampled_from([1, 1.0]),
            "run_id": st.from_regex(RUN_ID_REGEX, fullmatch=True) if run_id is None else run_id,
            "task": tasks(node=node),
        }
    )
    if run_id is not None:
        return plain
    return st.one_of(plain, st.builds(_fired, plain, firings()))


def _fired(command: dict[str, Any], firing: dict[str, str]) -> dict[str, Any]:
    return {**command, "run_id": f"{firing['name']}-{firing['execution_id']}", "schedule": firing}


def firings() -> st.SearchStrategy[dict[str, str]]:
    """A `schedule` object as EventBridge Scheduler fills one in (protocol.schedules)."""
    times = st.builds(
        lambda moment, fraction, zone: moment.strftime("%Y-%m-%dT%H:%M:%S") + fraction + zone,
        st.datetimes(min_value=datetime(1000, 1, 1), max_value=datetime(9999, 12, 31)),
        st.sampled_from(["", ".5", ".123456789"]),
        st.sampled_from(["Z", "+00:00", "-05:30", "+14:00"]),
    )
    return st.fixed_dictionaries(
        {
            "name": st.from_regex(r"[0-9A-Za-z_.-]{1,64}", fullmatch=True),
            "execution_id": st.from_regex(r"[A-Za-z0-9._-]{1,63}", fullmatch=True),
            "scheduled_time": times,
            "arn": st.builds(lambda rest: "arn:" + rest, clean_text(max_size=60)),
        }
    )


def sns_envelope(message: str, **extra: Any) -> dict[str, Any]:
    """An SNS notification as a subscription without raw delivery writes it."""
    return {
        "Type": "Notification",
        "MessageId": str(uuid.UUID(int=len(message))),
        "TopicArn": "arn:aws:sns:us-east-1:123456789012:command-topic",
        "Message": message,
        "Timestamp": "2025-06-02T09:14:00.000Z",
        **extra,
    }


# --- close to valid ---------------------------------------------------------------

bad_run_ids = st.one_of(
    st.just(""),
    st.from_regex(RUN_ID_REGEX, fullmatch=True).map(lambda r: r + "\n"),
    st.from_regex(RUN_ID_REGEX, fullmatch=True).map(lambda r: " " + r),
    st.integers(129, 400).map(lambda n: "r" * n),
    st.sampled_from(
        ["a b", "a/b", "../etc", "run\u0661", "\uff52\uff55\uff4e", "a\tb", "run*", "\u00e9"]
    ),
    poisoned_text,
    st.none(),
    st.integers(),
    st.lists(st.just("r"), max_size=2),
)
odd_names = st.one_of(
    clean_text(),
    poisoned_text,
    st.sampled_from(
        [
            "",
            " ",
            "__proto__",
            "constructor",
            "$ref",
            "Type",
            "RUN_ID",
            "prompt ",
            "task.prompt",
            "-v",
            "--help",
        ]
    ),
    st.integers(300, 3000).map(lambda n: "n" * n),
)
hostile_values = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    huge_ints,
    finite_floats,
    clean_text(),
    whitespace,
    dashed,
    poisoned_text,
    long_text,
    deep,
    st.lists(st.one_of(clean_text(), st.integers()), max_size=3),
    st.dictionaries(clean_text(max_size=5), clean_text(max_size=5), max_size=3),
)


def _containers(document: dict[str, Any]) -> list[tuple[dict[str, Any], tuple[str, ...]]]:
    """The objects in a command a mutation can change, and their usual keys."""
    found: list[tuple[dict[str, Any], tuple[str, ...]]] = [(document, TOP_KEYS)]
    task = document.get("task")
    if isinstance(task, dict):
        found.append((task, TASK_KEYS))
        for key, keys in (
            ("mock", MOCK_KEYS),
            ("env", ("FUZZ_A", "PATH", "a b", "")),
            ("secrets", ("SECRET_A", "PATH", "a b", "")),
            ("retry", ("max_attempts", "delay")),
            ("resume", ("session_id", "fork", "path")),
            ("mcp_servers", ("db", "", "mcpServers")),
        ):
            if isinstance(task.get(key), dict):
                found.append((task[key], keys))
    return found


@st.composite
def mutated(draw: st.DrawFn, document: dict[str, Any]) -> dict[str, Any]:
    """`document` with one change: a field set to a hostile value, removed, or
    added under an odd name; a bad run_id; a retyped object."""
    document = copy.deepcopy(document)
    container, keys = draw(st.sampled_from(_containers(document)))
    kind = draw(st.sampled_from(["set", "delete", "unknown", "run_id", "retype"]))
    if kind == "set":
        container[draw(st.sampled_from(keys))] = draw(hostile_values)
    elif kind == "delete" and container:
        del container[draw(st.sampled_from(sorted(container)))]
    elif kind == "unknown":
        container[draw(odd_names)] = draw(hostile_values)
    elif kind == "run_id":
        document["run_id"] = draw(bad_run_ids)
    elif kind == "retype":
        key = draw(
            st.sampled_from(
                ["task", "mock", "env", "secrets", "json_schema", "mcp_servers", "settings"]
            )
        )
        target = document if key == "task" else document.get("task")
        if isinstance(target, dict):
            target[key] = draw(hostile_values)
    return document


@st.composite
def near_valid(draw: st.DrawFn) -> dict[str, Any]:
    """A valid command with one to three mutations."""
    document = draw(commands())
    for _ in range(draw(st.sampled_from([1, 1, 1, 2, 3]))):
        document = draw(mutated(document))
    return document


def set_path(document: dict[str, Any], path: tuple[str | int, ...], value: Any) -> None:
    """Put `value` at `path`, making the objects and lists on the way; an int
    step appends to a list."""
    target: Any = document
    for step, following in itertools.pairwise(path):
        if not isinstance(target.get(step), dict | list):
            target[step] = [] if isinstance(following, int) else {}
        target = target[step]
    if isinstance(target, list):
        target.append(value)
    else:
        target[path[-1]] = value


@st.composite
def poisoned(draw: st.DrawFn, document: dict[str, Any]) -> tuple[dict[str, Any], tuple[Any, ...]]:
    """`document` with a NUL or a lone surrogate in one of its strings, and where."""
    document = copy.deepcopy(document)
    path = draw(st.sampled_from(STRING_PATHS))
    set_path(document, path, draw(poisoned_text))
    return document, path


# Line ends and blanks: what an anchored pattern may let through at either end
# (in Python's re, `$` also matches just before a final newline).
edges = st.sampled_from(["\n", "\r\n", "\r", " ", "\t", "\x0c", "\x0b", "\x85", "\u2028"])


@st.composite
def edged(draw: st.DrawFn, document: dict[str, Any]) -> tuple[dict[str, Any], str]:
    """`document` with a blank or a line end before or after one of the values
    a pattern constrains: run_id, model, a tool pattern, an env name."""
    document = copy.deepcopy(document)
    field = draw(st.sampled_from(["run_id", "model", "allowed_tools", "env"]))
    edge = draw(edges)

    def around(value: str) -> str:
        return draw(st.sampled_from([value + edge, edge + value]))

    if field == "run_id":
        document["run_id"] = around(document["run_id"])
    elif field == "model":
        document["task"]["model"] = around(draw(models))
    elif field == "allowed_tools":
        document["task"]["allowed_tools"] = [around(draw(tool_patterns))]
    else:
        name = draw(st.from_regex(ENV_NAME_REGEX, fullmatch=True))
        document["task"]["env"] = {around(name): "value"}
    return document, field


json_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    finite_floats,
    st.text(),
    st.sampled_from(["RunTask", 1]),
)
json_keys = st.one_of(st.sampled_from(TOP_KEYS + TASK_KEYS + MOCK_KEYS), st.text(max_size=10))
json_documents = st.recursive(
    json_scalars,
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(json_keys, children, max_size=6)
    ),
    max_leaves=25,
)

# --- text no JSON writer would produce --------------------------------------------


@st.composite
def hostile_text(draw: st.DrawFn) -> str:
    """A command's JSON text, damaged: cut short, an odd character put in, a
    number with thousands of digits, nesting a hundred thousand deep, JSON's
    non-numbers, a byte-order mark, a duplicate key, wrapped in an envelope."""
    text = json.dumps(draw(st.one_of(commands(), near_valid())))
    kind = draw(
        st.sampled_from(
            [
                "cut",
                "insert",
                "digits",
                "nesting",
                "nan",
                "bom",
                "duplicate",
                "envelope",
                "trailing",
            ]
        )
    )
    if kind == "cut":
        return text[: draw(st.integers(0, len(text)))]
    if kind == "insert":
        at = draw(st.integers(0, len(text)))
        return text[:at] + draw(st.text(min_size=1, max_size=3)) + text[at:]
    if kind == "digits":
        digits = "9" * draw(st.integers(4000, 20000))
        field = draw(st.sampled_from(["max_turns", "timeout_seconds", "name"]))
        return text.replace('"task": {', f'"task": {{"{field}": {digits}, ', 1)
    if kind == "nesting":
        depth = draw(st.integers(2000, 100_000))
        return text.replace('"task": {', f'"task": {{"env": {"[" * depth}{"]" * depth}, ', 1)
    if kind == "nan":
        token = draw(st.sampled_from(["NaN", "Infinity", "-Infinity", "1e400", "-1e400", "1E+999"]))
        field = draw(st.sampled_from(["timeout_seconds", "max_turns"]))
        return text.replace('"task": {', f'"task": {{"{field}": {token}, ', 1)
    if kind == "bom":
        return "\ufeff" + text
    if kind == "duplicate":
        return text.replace('"task": {', '"run_id": "dup", "task": {', 1)
    if kind == "envelope":
        return json.dumps(sns_envelope(text))
    return text + draw(st.sampled_from(["\n", " ", "x", "}", "{}", "\x00"]))


# --- messages for a node --------------------------------------------------------

# Stands for the run_id in a message template: each send puts a fresh one in,
# so that a replayed example does not meet a node that remembers its runs.
RUN_ID_SLOT = "RUNIDSLOT"

# Characters SQS accepts in a message body.
sqs_chars = st.one_of(
    st.sampled_from("\t\n\r"),
    st.characters(
        min_codepoint=0x20, exclude_categories=("Cs",), exclude_characters="\ufffe\uffff"
    ),
)


NODE_KINDS = (
    "valid",
    "garbage",
    "near valid",
    "odd field",
    "huge field name",
    "poisoned",
    "huge number",
    "digits",
    "nesting",
    "not a number",
    "bad run_id",
)


@st.composite
def node_bodies(draw: st.DrawFn, kinds: tuple[str, ...] = NODE_KINDS) -> tuple[str, str]:
    """A message body for a mock-mode node with RUN_ID_SLOT for its run_id
    (unless the run_id is what is wrong), and what kind of case it is."""
    valid = draw(
        commands(
            node=True,
            run_id=st.sampled_from(["", "-", "--", "_", "."]).map(
                lambda prefix: prefix + RUN_ID_SLOT
            ),
        )
    )
    kind = draw(st.sampled_from(kinds))
    document: Any = valid
    if kind == "garbage":
        return draw(st.text(sqs_chars, min_size=1, max_size=300)), kind
    if kind == "near valid":
        document = draw(mutated(valid))
    elif kind in ("odd field", "huge field name"):
        container, _ = draw(st.sampled_from(_containers(valid)))
        name = (
            "n" * draw(st.integers(200_000, 400_000))
            if kind == "huge field name"
            else draw(odd_names)
        )
        container[name] = draw(hostile_values)
    elif kind == "poisoned":
        document, _ = draw(poisoned(valid))
    elif kind == "huge number":
        path = draw(
            st.sampled_from(
                [
                    ("version",),
                    ("task", "timeout_seconds"),
                    ("task", "mock", "duration_seconds"),
                    ("task", "mock", "exit_code"),
                    ("task", "mock", "output_bytes"),
                ]
            )
        )
        set_path(document, path, draw(huge_ints))
    elif kind == "bad run_id":
        document["run_id"] = draw(bad_run_ids)
    elif kind in ("digits", "not a number"):
        valid["task"].pop("timeout_seconds", None)  # a later duplicate would win
    elif kind == "nesting":
        valid["task"].pop("env", None)
    text = json.dumps(document)
    # Damage that makes the text unreadable to Python's json module, in
    # fields that are wrong whatever a reader makes of them.
    if kind == "digits":
        digits = "9" * draw(st.integers(4400, 6000))
        text = text.replace('"task": {', f'"task": {{"timeout_seconds": {digits}, ', 1)
    elif kind == "nesting":
        depth = draw(st.integers(5000, 100_000))
        text = text.replace('"task": {', f'"task": {{"env": {"[" * depth}{"]" * depth}, ', 1)
    elif kind == "not a number":
        token = draw(st.sampled_from(["NaN", "Infinity", "-Infinity", "1e400"]))
        text = text.replace('"task": {', f'"task": {{"timeout_seconds": {token}, ', 1)
    return text, kind


class NodeMessage:
    """A body template (RUN_ID_SLOT for the run_id), how it is sent, and what
    kind of case it is. Route `queue` is SendMessage of the body, raw or inside
    an envelope of our own; `topic` publishes it on the command topic, whose
    subscription wraps it in a real SNS envelope. Not a dataclass: hypothesis
    prints a failing example with its own repr of those, every byte of a
    400 kB body included."""

    def __init__(self, template: str, route: str, kind: str) -> None:
        self.template = template
        self.route = route
        self.kind = kind

    def __repr__(self) -> str:
        body = self.template if len(self.template) <= 200 else self.template[:200] + "..."
        return f"NodeMessage({self.kind!r}, {self.route!r}, {len(self.template)} chars: {body!r})"


@st.composite
def node_messages(draw: st.DrawFn, kinds: tuple[str, ...] = NODE_KINDS) -> NodeMessage:
    body, kind = draw(node_bodies(kinds))
    if draw(st.booleans()):
        return NodeMessage(json.dumps(sns_envelope(body)), "queue", f"{kind}, enveloped")
    if len(body.encode()) < 200_000 and draw(st.booleans()):
        return NodeMessage(body, "topic", f"{kind}, via the topic")
    return NodeMessage(body, "queue", kind)
