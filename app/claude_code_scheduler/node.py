"""The node: registration, the poll loop, heartbeats and the shutdown order.

Threads and what each owns:
- main: waits for a stop signal, then runs the shutdown order below;
- poller: ReceiveMessage, only while a run slot is free;
- leases: extends, deletes and releases messages (the one SQS writer);
- heartbeat: NodeHeartbeat every interval, during runs too;
- outbox: the one SNS publisher, in order, through outages;
- one thread per run: the child process, its log and its terminal event.

Shutdown order (SIGTERM or SIGINT):
1. stop receiving: the poller issues no new receive; what the poll in flight
   brings back is made visible again at once;
2. idle: go straight to 4;
3. busy: let runs finish for up to `shutdown_timeout` (a second signal skips
   this); then terminate what is left, upload its log, publish TaskFailed
   NodeShutdown and hand its message back;
4. stop heartbeats, publish NodeDeregistered, close the outbox (nothing is
   published after this);
5. wait for the poll in flight to return, stop the lease keeper, exit 0.
"""

from __future__ import annotations

import logging
import random
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from claude_code_scheduler import health, reaper
from claude_code_scheduler.aws import LogStore, QueueClient, ReceivedMessage, error_code
from claude_code_scheduler.config import ConfigError, NodeConfig
from claude_code_scheduler.leases import LeaseKeeper
from claude_code_scheduler.outbox import Outbox
from claude_code_scheduler.protection import TaskProtection
from claude_code_scheduler.protocol import (
    ErrorType,
    Event,
    InvalidCommand,
    RunTask,
    iso,
    parse_command,
    task_failed,
)
from claude_code_scheduler.runs import RunControl, TaskRun

log = logging.getLogger(__name__)

# How long start-up waits for the bus to take NodeRegistered.
REGISTRATION_SECONDS = 30.0
# How long the closing events may wait for the bus before the node gives up.
FINAL_PUBLISH_SECONDS = 5.0
# Runs remembered after they ended here, so a late duplicate is not run again.
REMEMBERED_RUNS = 1024
# Extra time for a terminated run to upload its log and publish its event.
HAND_BACK_SECONDS = 10.0
IDLE_WAIT = 0.5


def receive_backoff(failures: int) -> float:
    """Seconds to wait after `failures` receives in a row failed (full jitter)."""
    return random.uniform(0, min(30.0, 2.0 ** min(failures, 5)))


@dataclass
class NodeStats:
    started: float = field(default_factory=time.monotonic)
    completed: int = 0
    failed: int = 0


@dataclass
class _ActiveRun:
    thread: threading.Thread
    control: RunControl


class Node:
    def __init__(
        self,
        config: NodeConfig,
        *,
        queue: QueueClient,
        outbox: Outbox,
        logs: LogStore,
        leases: LeaseKeeper,
        registration: dict[str, Any],
        protection: TaskProtection | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._config = config
        self._protection = protection or TaskProtection(None, 1)
        self._queue = queue
        self._outbox = outbox
        self._logs = logs
        self._leases = leases
        self._registration = registration
        self._clock = clock
        self._stats = NodeStats(started=clock())
        self._stop = threading.Event()
        self._force = threading.Event()
        self._stop_reason = "stopped"
        self._lock = threading.Condition()
        self._active: dict[str, _ActiveRun] = {}
        self._finished: OrderedDict[str, None] = OrderedDict()
        self._poller = threading.Thread(target=self._poll_loop, name="poller", daemon=True)
        self._heartbeat = threading.Thread(
            target=self._heartbeat_loop, name="heartbeat", daemon=True
        )
        self._heartbeat_stop = threading.Event()

    # --- signals: only set events ------------------------------------------

    def request_stop(self, reason: str) -> None:
        """Called from a signal handler: sets events and nothing else."""
        if self._stop.is_set():
            self._force.set()
        else:
            self._stop_reason = reason
            self._stop.set()

    # --- main ---------------------------------------------------------------

    def run(self) -> int:
        self._outbox.start()
        registered = self._outbox.publish(
            Event("NodeRegistered", self._registration), caller_reports_drop=True
        )
        if not registered.wait(REGISTRATION_SECONDS):
            # A node that cannot speak on the bus must not take work: every
            # run's terminal event would be lost.
            self._outbox.close(self._clock())
            raise ConfigError(
                f"--topic-arn: could not publish NodeRegistered: {registered.error or 'timed out'}"
            )
        log.info("node registered", extra={"node_id": self._config.node_id})
        self._write_state("idle")
        self._leases.start()
        self._heartbeat.start()
        self._poller.start()
        while not self._stop.wait(IDLE_WAIT):
            pass
        return self._shutdown()

    def _shutdown(self) -> int:
        log.info("stopping (%s)", self._stop_reason)
        with self._lock:
            busy = bool(self._active)
        if busy:
            self._drain()
        self._heartbeat_stop.set()
        self._heartbeat.join(5.0)
        self._outbox.publish(
            Event(
                "NodeDeregistered",
                {"reason": self._stop_reason, **self._counters()},
            )
        )
        self._outbox.close(self._clock() + FINAL_PUBLISH_SECONDS)
        self._write_state("deregistered")
        log.info("node deregistered")
        # boto3 cannot cancel a long poll; abandoning it would hide what it
        # returns for a whole visibility timeout, so wait for it to come back.
        self._poller.join(self._config.poll_wait_seconds + 10.0)
        self._leases.stop()
        return 0

    def _drain(self) -> None:
        deadline = self._clock() + self._config.shutdown_timeout
        log.info("waiting up to %gs for runs to finish", self._config.shutdown_timeout)
        with self._lock:
            while self._active and not self._force.is_set() and self._clock() < deadline:
                self._lock.wait(0.2)
            left = list(self._active.items())
        for run_id, active in left:
            log.warning("terminating run at shutdown", extra={"run_id": run_id})
            active.control.cancel.set()
        hard_deadline = self._clock() + self._config.kill_grace + HAND_BACK_SECONDS
        for _, active in left:
            active.thread.join(max(0.0, hard_deadline - self._clock()))
        for _, active in left:
            active.control.give_up.set()
            active.thread.join(5.0)

    # --- polling ------------------------------------------------------------

    def _free_slots(self) -> int:
        return self._config.max_concurrent_tasks - len(self._active)

    def _poll_loop(self) -> None:
        failures = 0
        while not self._stop.is_set():
            with self._lock:
                while self._free_slots() <= 0 and not self._stop.is_set():
                    self._lock.wait(IDLE_WAIT)
                free = self._free_slots()
            if self._stop.is_set():
                return
            try:
                messages = self._queue.receive(free, self._config.poll_wait_seconds)
                failures = 0
            except Exception as exc:
                failures += 1
                log.warning("receive failed: %s", error_code(exc))
                self._stop.wait(receive_backoff(failures))
                continue
            for message in messages:
                self._accept(message)

    def _accept(self, message: ReceivedMessage) -> None:
        extra = {"message_id": message.message_id}
        try:
            command = parse_command(message.body)
        except InvalidCommand as exc:
            self._reject(message, exc)
            return
        except Exception:
            log.exception("unexpected error reading a command", extra=extra)
            self._reject(message, InvalidCommand("the node could not read this command"))
            return
        run_id = command.run_id
        with self._lock:
            if self._stop.is_set():
                start = None
            elif run_id in self._active:
                self._leases.hold(run_id, message)
                log.info("duplicate delivery of a running run", extra={"run_id": run_id})
                return
            elif run_id in self._finished:
                start = False
            else:
                start = True
                self._leases.hold(run_id, message)
                self._start_run(command, message.receive_count)
        if start is None:
            log.info("stopping: released a message for other nodes", extra={"run_id": run_id})
            self._leases.release_message(message.receipt_handle, run_id)
        elif start is False:
            log.info("duplicate delivery of a finished run; deleting", extra={"run_id": run_id})
            key = f"message:{message.message_id}"
            self._leases.hold(key, message)
            self._leases.finish(key)

    def _reject(self, message: ReceivedMessage, exc: InvalidCommand) -> None:
        """Tell the bus why, then delete: a bad command never comes back."""
        log.warning("invalid command: %s", exc, extra={"run_id": exc.run_id})
        key = f"message:{message.message_id}"
        self._leases.hold(key, message)
        event = task_failed(exc.run_id, ErrorType.INVALID_COMMAND, str(exc), retryable=False)
        with self._lock:
            self._stats.failed += 1
        if self._outbox.publish(event).wait():
            self._leases.finish(key)
        else:
            self._leases.release(key)

    def _start_run(self, command: RunTask, attempt: int) -> None:
        control = RunControl()
        run = TaskRun(
            self._config,
            command,
            attempt,
            outbox=self._outbox,
            logs=self._logs,
            leases=self._leases,
            control=control,
            clock=self._clock,
        )
        thread = threading.Thread(
            target=self._run_thread, args=(run,), name=f"run-{command.run_id}", daemon=True
        )
        self._active[command.run_id] = _ActiveRun(thread, control)
        thread.start()

    def _busy(self) -> bool:
        with self._lock:
            return bool(self._active)

    def _run_thread(self, run: TaskRun) -> None:
        completed = handed_back = False
        self._protection.sync(self._busy)
        try:
            report = run.execute()
            completed, handed_back = report.completed, report.handed_back
        except Exception:
            log.exception("run crashed", extra={"run_id": run.run_id})
            self._leases.release(run.run_id)
            handed_back = True
        finally:
            with self._lock:
                self._active.pop(run.run_id, None)
                # A duplicate that arrived after the run let go of its lease.
                late_duplicate = run.run_id in self._leases.held()
                if not handed_back:
                    # Its message is deleted: a late duplicate is deleted, not run.
                    self._finished[run.run_id] = None
                    while len(self._finished) > REMEMBERED_RUNS:
                        self._finished.popitem(last=False)
                if completed:
                    self._stats.completed += 1
                else:
                    self._stats.failed += 1
                self._lock.notify_all()
            if late_duplicate:
                (self._leases.release if handed_back else self._leases.finish)(run.run_id)
            if not self._busy():
                # Every orphan now is a leftover of a run that ended, even one
                # that shed the run's marker.
                reaper.kill_orphans()
            self._protection.sync(self._busy)

    # --- heartbeats -------------------------------------------------------------

    def _heartbeat_loop(self) -> None:
        while not self._heartbeat_stop.wait(self._config.heartbeat_interval):
            beat = self.heartbeat()
            self._outbox.publish(Event("NodeHeartbeat", beat))
            self._write_state(beat["status"])

    def _write_state(self, status: str) -> None:
        """The health check's view of this node; a failure to write is logged,
        and shows up as an unhealthy container rather than a dead node."""
        try:
            health.write_state(
                self._config.state_file,
                {
                    "node_id": self._config.node_id,
                    "status": status,
                    "last_heartbeat": time.time(),
                    "heartbeat_interval": self._config.heartbeat_interval,
                },
            )
        except OSError as exc:
            log.warning("could not write the state file: %s", exc)

    def heartbeat(self) -> dict[str, Any]:
        with self._lock:
            running = sorted(self._active)
        status = "busy" if running else "idle"
        if self._stop.is_set():
            status = "draining"
        return {"status": status, "running": running, **self._counters()}

    def _counters(self) -> dict[str, Any]:
        with self._lock:
            return {
                "uptime_seconds": round(self._clock() - self._stats.started, 3),
                "tasks_completed": self._stats.completed,
                "tasks_failed": self._stats.failed,
            }


def registration_data(
    config: NodeConfig,
    *,
    hostname: str,
    version: str,
    claude_version: str | None,
    ecs: dict[str, Any] | None,
) -> dict[str, Any]:
    return {
        "hostname": hostname,
        "version": version,
        "mock_mode": config.mock_mode,
        "heartbeat_interval": config.heartbeat_interval,
        "max_concurrent_tasks": config.max_concurrent_tasks,
        "claude_version": claude_version,
        "started_at": iso(time.time()),
        "ecs": ecs,
    }
