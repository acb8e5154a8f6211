"""A real mock-mode node process on the moto server, fed batches of hostile
messages with valid ones among and behind them. Judged on what arrives on the
control bus, what is left in the queue and what is in the bucket: the node
stays up, every message gets exactly one terminal event, each valid command
runs once, and nothing lands outside logs/ and runs/."""

from __future__ import annotations

import json
import signal
import uuid
from dataclasses import dataclass
from typing import Any

from hypothesis import example, given
from hypothesis import strategies as st

from tests.chaos.history import (
    COMPLETED,
    History,
    attempt_problems,
    bucket_problems,
    log_problems,
    queue_problems,
    sequence_problems,
)
from tests.fuzz.conftest import FuzzNode, fuzz_settings
from tests.fuzz.oracle import readable_run_ids, schema_error, strict_json, unwrapped
from tests.fuzz.strategies import RUN_ID_SLOT, NodeMessage, node_messages, sns_envelope

INVALID = "TaskFailed/InvalidCommand"
# Seconds for a batch to be answered in full: a mock run takes about one.
SETTLE_SECONDS = 60.0


@dataclass(frozen=True)
class Sent:
    body: str
    route: str
    kind: str
    run_id: str | None  # the run_id its terminal event must name; None: null
    may_be_null: bool  # the node may be unable to read run_id, and answer null
    outcomes: frozenset[str]
    starts: bool

    def describe(self) -> str:
        excerpt = self.body[:160] + ("..." if len(self.body) > 160 else "")
        return f"[{self.kind}] run_id={self.run_id} expects {sorted(self.outcomes)}: {excerpt!r}"


def expectation(message: NodeMessage) -> Sent:
    """What the protocol says the node must answer: the run_id as the oracle
    reads it, the outcome as the shipped schema judges the command."""
    template, route, kind = message.template, message.route, message.kind
    fresh = f"fz{uuid.uuid4().hex[:16]}"
    body = template.replace(RUN_ID_SLOT, fresh)
    # What the node receives: through the topic, an SNS envelope around the body.
    received = json.dumps(sns_envelope(body)) if route == "topic" else body
    readable = readable_run_ids(received)
    if readable is None:  # JSON that Python's json module cannot read
        run_id, may_be_null = (fresh if RUN_ID_SLOT in template else None), True
    else:
        run_id, may_be_null = max(readable, key=bool), None in readable and len(readable) > 1
    try:
        command = unwrapped(strict_json(received))
    except (ValueError, RecursionError):
        return Sent(body, route, kind, run_id, may_be_null, frozenset({INVALID}), False)
    if schema_error(command) is not None:
        return Sent(body, route, kind, run_id, may_be_null, frozenset({INVALID}), False)
    exit_code = command["task"].get("mock", {}).get("exit_code", 0)
    outcome = COMPLETED if exit_code == 0 else "TaskFailed/ClaudeError"
    return Sent(body, route, kind, run_id, may_be_null, frozenset({outcome}), True)


def send(fuzz: FuzzNode, message: Sent) -> None:
    if message.route == "topic":
        fuzz.stack.sns.publish(TopicArn=fuzz.stack.command_topic_arn, Message=message.body)
    else:
        fuzz.stack.sqs.send_message(QueueUrl=fuzz.stack.queue_url, MessageBody=message.body)


def answered(history: History, sent: list[Sent], nulls_before: int) -> bool:
    """As many terminal events as messages sent, counting those that name one
    of their run_ids and the run_id-null ones since the batch went out. Who
    got which is answer_problems's to judge."""
    named = sum(len(history.terminals_of(m.run_id)) for m in sent if m.run_id is not None)
    nulls = len(history.terminals_of(None)) - nulls_before
    return named + nulls >= len(sent)


def answer_problems(history: History, sent: list[Sent], nulls_before: int) -> list[str]:
    """Exactly one terminal event per message, of an outcome it allows; a
    start for each valid command and none for the others."""
    problems = []
    owed = sum(m.run_id is None for m in sent)
    for message in sent:
        if message.run_id is None:
            continue
        terminals = history.terminals_of(message.run_id)
        outcomes = [
            e["event_type"]
            if e["event_type"] == COMPLETED
            else f"TaskFailed/{e['data']['error']['type']}"
            for e in terminals
        ]
        if not terminals and message.may_be_null:
            owed += 1
        elif len(terminals) != 1 or outcomes[0] not in message.outcomes:
            problems.append(f"got {outcomes} for {message.describe()}")
        started = history.attempts_of(message.run_id)
        if message.starts and len(started) != 1:
            problems.append(f"started {len(started)} times: {message.describe()}")
        if not message.starts and started:
            problems.append(f"started though invalid: {message.describe()}")
    nulls = history.terminals_of(None)[nulls_before:]
    if len(nulls) != owed:
        problems.append(f"{len(nulls)} TaskFailed with run_id null, expected {owed}")
    for event in nulls:
        error = event["data"]["error"]
        if error["type"] != "InvalidCommand" or event["data"]["retryable"] is not False:
            problems.append(f"a run_id-null TaskFailed that is not InvalidCommand: {error}")
    return problems


def _explicit() -> list[NodeMessage]:
    """One message of each hostile kind, tried first in every run."""
    base: dict[str, Any] = {
        "type": "RunTask",
        "version": 1,
        "run_id": RUN_ID_SLOT,
        "task": {"prompt": "--help", "name": "-n", "mock": {"duration_seconds": 0.1}},
    }

    def with_task(**fields: Any) -> str:
        return json.dumps({**base, "task": {**base["task"], **fields}})

    text = json.dumps(base)
    return [
        NodeMessage("not JSON at all", "queue", "garbage"),
        NodeMessage(with_task(**{"n" * 300_000: 1}), "queue", "huge field name"),
        NodeMessage(with_task(prompt="a\x00b"), "queue", "poisoned: NUL"),
        NodeMessage(with_task(name="\ud800"), "topic", "poisoned: lone surrogate"),
        NodeMessage(with_task(timeout_seconds=10**400), "queue", "huge number"),
        NodeMessage(
            text.replace('"task": {', '"task": {"timeout_seconds": ' + "9" * 5000 + ", ", 1),
            "queue",
            "digits",
        ),
        NodeMessage(
            text.replace('"task": {', '"task": {"env": ' + "[" * 50_000 + "]" * 50_000 + ", ", 1),
            "queue",
            "nesting",
        ),
        NodeMessage(text.replace('"task": {', '"task": {"max_turns": NaN, ', 1), "queue", "NaN"),
        NodeMessage(json.dumps({**base, "run_id": "r\n"}), "queue", "bad run_id"),
        NodeMessage(json.dumps(sns_envelope(text)), "queue", "valid, enveloped"),
    ]


@fuzz_settings(node=True)
@example(
    batch=_explicit(),
    behind=NodeMessage(
        json.dumps(
            {"type": "RunTask", "version": 1, "run_id": RUN_ID_SLOT, "task": {"prompt": "-"}}
        ),
        "topic",
        "valid, via the topic",
    ),
)
@given(
    batch=st.lists(node_messages(), min_size=2, max_size=7),
    behind=node_messages(kinds=("valid",)),
)
def test_every_message_gets_one_answer_and_valid_ones_run(
    fuzz_node: FuzzNode, batch: list[NodeMessage], behind: NodeMessage
) -> None:
    fuzz = fuzz_node
    assert fuzz.node.process.poll() is None, f"the node died:\n{fuzz.node.stderr[-4000:]}"
    sent = [expectation(message) for message in [*batch, behind]]
    assert sent[-1].starts, f"the strategy's valid command is not valid: {sent[-1].describe()}"
    runs = [m.run_id for m in sent if m.starts and m.run_id]
    fuzz.started.update(runs)
    nulls_before = len(fuzz.collector.history().terminals_of(None))
    for message in sent:
        send(fuzz, message)
    try:
        fuzz.collector.wait(
            lambda h: answered(h, sent, nulls_before), SETTLE_SECONDS, "every message answered"
        )
    except AssertionError as exc:
        history = fuzz.collector.history()
        problems = answer_problems(history, sent, nulls_before)
        raise AssertionError(f"{exc}\n" + "\n".join(problems) + f"\n{_tail(fuzz)}") from None
    history = fuzz.collector.quiet(2.0)
    problems = answer_problems(history, sent, nulls_before)
    problems += attempt_problems(history, runs)
    problems += log_problems(history, fuzz.stack, runs)
    problems += sequence_problems(history, nodes=[fuzz.node.node_id])
    problems += queue_problems(fuzz.stack, 30)
    problems += bucket_problems(fuzz.stack, fuzz.started)
    if fuzz.node.process.poll() is not None:
        problems.append(f"the node exited with {fuzz.node.process.returncode}")
    assert not problems, "\n".join(problems) + f"\n{_tail(fuzz)}"


def test_the_node_then_stops_cleanly(fuzz_node: FuzzNode) -> None:
    fuzz = fuzz_node
    assert fuzz.node.process.poll() is None, f"the node died:\n{fuzz.node.stderr[-4000:]}"
    fuzz.node.signal(signal.SIGTERM)
    assert fuzz.node.wait(30) == 0
    history = fuzz.collector.quiet(2.0)
    problems = sequence_problems(history, clean=[fuzz.node.node_id])
    problems += queue_problems(fuzz.stack, 10)
    problems += bucket_problems(fuzz.stack, fuzz.started)
    assert not problems, "\n".join(problems)


def _tail(fuzz: FuzzNode, lines: int = 15) -> str:
    """The node's last warnings and errors."""
    picked: list[Any] = []
    for line in fuzz.node.stderr.splitlines():
        try:
            record = json.loads(line)
        except ValueError:
            picked.append(line[:300])
            continue
        if record.get("level") in ("WARNING", "ERROR", "CRITICAL"):
            picked.append(line[:300])
    return "node log (warnings and errors, last lines):\n  " + "\n  ".join(picked[-lines:])
