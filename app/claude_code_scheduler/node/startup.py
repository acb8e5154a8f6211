"""Start-up checks that need the outside world: the queue, the Claude CLI, what
each run uid can execute, and the warnings a real-mode node gives about its
environment.

Each failure becomes a ConfigError naming the option, so the command line can
print one line and exit 2 instead of a traceback.
"""

from __future__ import annotations

import logging
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import botocore.exceptions
import tenacity

from claude_code_scheduler.aws.errors import describe_error, explain, is_transient
from claude_code_scheduler.aws.queue import MessageQueue, QueueAttributes
from claude_code_scheduler.errors import ConfigError
from claude_code_scheduler.node.config import NodeConfig
from claude_code_scheduler.node.leases import LEASE_CALL_SECONDS, MIN_VISIBILITY_SECONDS
from claude_code_scheduler.node.process import mockcli
from claude_code_scheduler.node.process.isolation import (
    IsolationPolicy,
    RunIdentity,
    unreachable_reason,
)

log = logging.getLogger(__name__)

CLI_VERSION_TIMEOUT_SECONDS = 30
PROBE_TIMEOUT_SECONDS = 30
REACH_ADVICE = "install the node where other users can reach it, as the image does"
# Backoff between tries to reach the queue: 0.5 s doubling to 5 s, plus up to
# 0.5 s of jitter so that a fleet restarting together does not call in step.
STARTUP_BACKOFF_FIRST = 0.5
STARTUP_BACKOFF_CAP = 5.0
STARTUP_BACKOFF_JITTER = 0.5


def startup_wait(timeout: float) -> Callable[[tenacity.RetryCallState], float]:
    """The pause before the next try to reach the queue: the backoff, cut
    short so that the last try is made when `timeout` is up, not after."""
    backoff = tenacity.wait_exponential_jitter(
        multiplier=STARTUP_BACKOFF_FIRST, max=STARTUP_BACKOFF_CAP, jitter=STARTUP_BACKOFF_JITTER
    )

    def wait(state: tenacity.RetryCallState) -> float:
        left = timeout - (state.seconds_since_start or 0.0)
        return max(0.0, min(backoff(state), left))

    return wait


def check_queue(
    queue: MessageQueue, timeout: float, *, sleep: Callable[[float], None] = time.sleep
) -> QueueAttributes:
    """GetQueueAttributes; returns the queue's visibility timeout, which sizes
    the lease steps, once it is known to be large enough for them, and its
    dead-letter queue's maxReceiveCount, which bounds the fleet's retries.

    A transient failure (the endpoint refuses, or does not answer, or SQS
    throttles) is retried for `timeout` seconds (--startup-timeout), each one
    logged; the last try starts by then and takes at most one call's bound. A
    missing queue or a denied permission fails at once. (A plain sleep between
    tries: the signal handlers are not installed yet, so SIGTERM ends the
    process at once.)"""

    def log_retry(state: tenacity.RetryCallState) -> None:
        exc = state.outcome.exception() if state.outcome else None
        log.warning(
            "the queue is not reachable (%s); trying again in %.1fs (try %d, giving up "
            "after %gs, --startup-timeout)",
            describe_error(exc) if exc else "?",
            state.upcoming_sleep,
            state.attempt_number,
            timeout,
        )

    retrying = tenacity.Retrying(
        retry=tenacity.retry_if_exception(is_transient),
        wait=startup_wait(timeout),
        stop=tenacity.stop_after_delay(timeout),
        sleep=sleep,
        before_sleep=log_retry,
        reraise=True,
    )
    try:
        attributes: QueueAttributes = retrying(queue.attributes)
    except (botocore.exceptions.BotoCoreError, botocore.exceptions.ClientError) as exc:
        error = explain(exc, "--queue-url", f"the queue {queue.url}")
        if not is_transient(exc):
            raise error from None
        tries = retrying.statistics["attempt_number"]
        took = retrying.statistics.get("delay_since_first_attempt", 0.0)
        raise ConfigError(
            f"{error} (gave up after {took:.0f}s and "
            f"{tries} {'try' if tries == 1 else 'tries'}, --startup-timeout {timeout:g})"
        ) from None
    if attributes.visibility_timeout < MIN_VISIBILITY_SECONDS:
        raise ConfigError(
            f"--queue-url: the queue's VisibilityTimeout is {attributes.visibility_timeout}s, "
            f"below the {MIN_VISIBILITY_SECONDS}s the node needs (a lease renewal may hang "
            f"for {LEASE_CALL_SECONDS:g}s and must still be retried within one timeout)"
        )
    return attributes


def check_claude(claude_bin: str) -> tuple[str, str]:
    """The CLI's full path and its version line."""
    path = shutil.which(claude_bin)
    if path is None:
        raise ConfigError(
            f"--claude-bin: {claude_bin!r} was not found or is not executable "
            "(install @anthropic-ai/claude-code or use --mock-mode)"
        )
    try:
        done = subprocess.run(
            [path, "--version"],
            capture_output=True,
            text=True,
            timeout=CLI_VERSION_TIMEOUT_SECONDS,
            stdin=subprocess.DEVNULL,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise ConfigError(f"--claude-bin: {path} --version failed: {exc}") from None
    if done.returncode != 0:
        detail = (done.stderr or done.stdout).strip().splitlines()
        raise ConfigError(
            f"--claude-bin: {path} --version exited {done.returncode}"
            + (f": {detail[-1]}" if detail else "")
        )
    return path, (done.stdout.strip().splitlines() or ["unknown"])[0]


# Any one of these lets the CLI reach a model without a `claude login`.
CLAUDE_CREDENTIAL_VARS = (
    "ANTHROPIC_API_KEY",
    "ANTHROPIC_AUTH_TOKEN",
    "CLAUDE_CODE_OAUTH_TOKEN",
    "CLAUDE_CODE_USE_BEDROCK",
    "CLAUDE_CODE_USE_VERTEX",
)


def real_mode_warnings(config: NodeConfig, environ: Mapping[str, str]) -> list[str]:
    """What a real-mode node should tell its operator at start-up. None of it
    stops the node: a task may bring its own key. (No word about root: a root
    node never runs the CLI as root, so bypassPermissions works.)"""
    warnings = []
    if not any(environ.get(name) for name in CLAUDE_CREDENTIAL_VARS):
        warnings.append(
            "no Claude credentials in the environment ("
            + ", ".join(CLAUDE_CREDENTIAL_VARS)
            + "): runs fail with 'Not logged in' unless their task's env brings a key"
        )
    if config.pass_aws_credentials:
        warnings.append(
            "--pass-aws-credentials: the CLI and every tool it runs act with the node's "
            "AWS credentials"
        )
    return warnings


def run_programs(claude_path: str | None) -> tuple[list[str], list[Path]]:
    """What a run executes, as a probe argv, and the files a run uid must reach:
    the CLI in real mode; in mock mode the node's own interpreter and package."""
    if claude_path is not None:
        return [claude_path, "--version"], [Path(claude_path)]
    return [sys.executable, "-c", f"import {mockcli.__name__}"], [
        Path(sys.executable),
        Path(mockcli.__file__),
    ]


def check_run_identities(
    policy: IsolationPolicy,
    probe_argv: Sequence[str],
    reached: Sequence[Path],
    work_dir: Path,
    env: Mapping[str, str],
) -> None:
    """Each run uid can execute what its runs will execute and reach the work
    root: proved by running `probe_argv` as that uid, explained (when it
    fails) by the mode bits on the way. A ConfigError of one line otherwise."""
    if not policy.isolated:
        return
    for identity in policy.identities():
        failure = _probe(identity, probe_argv, env)
        if failure is not None:
            raise ConfigError(_unreachable(identity, probe_argv, reached, failure))
        assert identity.uid is not None and identity.gid is not None
        reason = unreachable_reason(work_dir, identity.uid, identity.gid)
        if reason is not None:
            raise ConfigError(
                f"--work-dir: run {identity.describe()} cannot reach {work_dir}: {reason}; "
                "choose a work folder every user can pass through"
            )


def _probe(identity: RunIdentity, argv: Sequence[str], env: Mapping[str, str]) -> str | None:
    try:
        done = subprocess.run(
            list(argv),
            cwd="/",
            env=dict(env),
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=PROBE_TIMEOUT_SECONDS,
            check=False,
            **identity.popen_options(),
        )
    except (OSError, subprocess.SubprocessError) as exc:
        return str(exc)
    if done.returncode != 0:
        detail = (done.stderr or done.stdout).strip().splitlines()
        return f"exited {done.returncode}" + (f": {detail[-1]}" if detail else "")
    return None


def _unreachable(
    identity: RunIdentity, argv: Sequence[str], reached: Sequence[Path], failure: str
) -> str:
    assert identity.uid is not None and identity.gid is not None
    for path in reached:
        bits = 1 if path.suffix != ".py" else 4
        reason = unreachable_reason(path, identity.uid, identity.gid, bits=bits)
        if reason is not None:
            return f"run {identity.describe()} cannot execute {path}: {reason}; {REACH_ADVICE}"
    return f"run {identity.describe()} cannot run {' '.join(argv)}: {failure}"
