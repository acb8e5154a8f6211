"""`make bench`: figures, not pass/fail.

1. Output pipeline: MB/s through the decoder, redactor, spool and batcher (no
   network), redacting the token shapes only and then 20 values too.
2. The node side by side with a plain loop, on one local moto server, in the
   same run. The plain loop ("loop") makes the calls a run needs one after the
   other (ReceiveMessage, Publish TaskStarted, Publish TaskOutput, PutObject of
   the log, Publish TaskCompleted, DeleteMessage); "loop+child" also starts the
   same mock CLI child for each task. Every figure is a median over
   interleaved repetitions, with the spread [min..max]:
   - throughput of zero-work mock tasks at 1 and 4 slots, and the node's ratio
     to each loop;
   - queue-to-TaskStarted latency of one task sent to an idle subscriber;
   - start-up (process start to its first event on the bus), SIGTERM to the
     deregistration event, and SIGTERM to exit;
   - one 50 MB run: SNS calls per MB of output and the growth of the peak RSS,
     with the bus at moto's speed and slowed down to SLOW_BUS_SECONDS a call;
   - idle API calls per hour, counted by a proxy over the whole bench.
3. The same task latency in real mode, with the pinned Claude CLI against the
   scripted API stand-in on loopback: what a run costs beyond the model's own
   time. Skipped, with the reason, when the CLI is not installed
   (scripts/install-claude.sh).

`python scripts/bench.py loop ...` is the plain loop itself, run as a process
of its own like the node.
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import io
import itertools
import json
import os
import re
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

REGION = "us-east-1"
TERMINAL = ("TaskCompleted", "TaskFailed")
# Zero-work mock tasks: the child starts, prints a small session and exits.
ZERO_WORK = {"duration_seconds": 0, "output_bytes": 2000}
BIG_OUTPUT_BYTES = 50 * 1024 * 1024
SLOW_BUS_SECONDS = 0.05
REPEATS = 5
TASKS_PER_SLOT = {1: 20, 4: 40}
LATENCY_SAMPLES = 6
LIFECYCLE_SAMPLES = 3
# Long enough that an idle node's next poll is under way when SIGTERM comes.
LIFECYCLE_POLL_WAIT = 2
# What the plain loop publishes chunks of: the protocol's chunk size.
LOOP_CHUNK_BYTES = 192 * 1024


# --- the plain loop ------------------------------------------------------------


def plain_loop(argv: list[str]) -> int:
    """One process, `--slots` threads, each receiving one message at a time and
    making a run's calls in a row. Runs until SIGTERM; then publishes its
    deregistration, as the node does, and exits."""
    import boto3  # noqa: PLC0415 - a plain loop imports what a plain loop needs

    from claude_code_scheduler.aws.clients import STANDARD_RETRIES  # noqa: PLC0415
    from claude_code_scheduler.protocol import events as ev  # noqa: PLC0415
    from claude_code_scheduler.protocol import parse_command  # noqa: PLC0415

    parser = argparse.ArgumentParser(prog="bench.py loop")
    parser.add_argument("--queue-url", required=True)
    parser.add_argument("--topic-arn", required=True)
    parser.add_argument("--bucket", required=True)
    parser.add_argument("--node-id", required=True)
    parser.add_argument("--slots", type=int, default=1)
    parser.add_argument("--poll-wait", type=int, default=20)
    parser.add_argument("--child", action="store_true")
    parser.add_argument("--work-dir", type=Path, required=True)
    args = parser.parse_args(argv)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())

    from botocore.config import Config  # noqa: PLC0415

    session = boto3.Session(region_name=REGION)
    config = Config(retries=STANDARD_RETRIES, connect_timeout=5, read_timeout=60)
    sqs = session.client("sqs", config=config)
    sns = session.client("sns", config=config)
    s3 = session.client("s3", config=config)
    sequence = itertools.count(1)
    lock = threading.Lock()
    started = time.monotonic()
    done = [0]

    def publish(event: Any) -> None:
        with lock:
            number = next(sequence)
        sns.publish(
            TopicArn=args.topic_arn,
            Message=ev.encode_event(event.body(args.node_id, "plain loop", number)),
            MessageAttributes={
                k: {"DataType": "String", "StringValue": v}
                for k, v in event.attributes(args.node_id).items()
            },
        )

    def run_child(run_id: str, task: Any) -> tuple[Path, int]:
        from claude_code_scheduler.node.process.result import mock_argv  # noqa: PLC0415

        spool = args.work_dir / f"{run_id}.log"
        with spool.open("wb") as out:
            subprocess.run(
                mock_argv(task),
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                check=False,
            )
        return spool, spool.stat().st_size

    def one_task(message: dict[str, Any]) -> None:
        command = parse_command(message["Body"])
        run_id = command.run_id
        began = time.monotonic()
        publish(
            ev.task_started(run_id, task_id=None, task_name=None, attempt=1, started_at=time.time())
        )
        key = f"logs/{run_id}.log"
        if args.child:
            spool, size = run_child(run_id, command.task)
            with spool.open("rb") as log:
                index = 0
                while piece := log.read(LOOP_CHUNK_BYTES):
                    text = piece.decode("utf-8", errors="replace")
                    publish(ev.task_output(run_id, index, "stdout", text))
                    index += 1
                log.seek(0)
                s3.put_object(Bucket=args.bucket, Key=key, Body=log)
            spool.unlink()
        else:
            text = ("Mock output line, standing in for the model's work. " * 40)[:2000]
            size = len(text)
            publish(ev.task_output(run_id, 0, "stdout", text))
            s3.put_object(Bucket=args.bucket, Key=key, Body=text.encode())
        publish(
            ev.task_completed(
                run_id,
                exit_code=0,
                duration_seconds=time.monotonic() - began,
                log_uri=f"s3://{args.bucket}/{key}",
                output_bytes=size,
                result=None,
            )
        )
        sqs.delete_message(QueueUrl=args.queue_url, ReceiptHandle=message["ReceiptHandle"])
        with lock:
            done[0] += 1

    def slot() -> None:
        while not stop.is_set():
            got = sqs.receive_message(
                QueueUrl=args.queue_url,
                MaxNumberOfMessages=1,
                WaitTimeSeconds=args.poll_wait,
                MessageSystemAttributeNames=["ApproximateReceiveCount"],
            )
            for message in got.get("Messages", []):
                one_task(message)

    sqs.get_queue_attributes(QueueUrl=args.queue_url, AttributeNames=["VisibilityTimeout"])
    publish(
        ev.node_registered(
            hostname=socket.gethostname(),
            version="loop",
            mock_mode=True,
            heartbeat_interval=30.0,
            max_concurrent_tasks=args.slots,
            claude_version=None,
            started_at=time.time(),
            ecs=None,
        )
    )
    threads = [threading.Thread(target=slot, daemon=True) for _ in range(args.slots)]
    for thread in threads:
        thread.start()
    while not stop.wait(0.5):
        pass
    counters = ev.NodeCounters(time.monotonic() - started, done[0], 0)
    publish(ev.node_deregistered("SIGTERM", counters))
    for thread in threads:
        thread.join(args.poll_wait + 10)
    return 0


# --- measuring -----------------------------------------------------------------


def spread(values: list[float], digits: int = 1) -> str:
    if not values:
        return "-"
    low, mid, high = min(values), statistics.median(values), max(values)
    return f"{mid:.{digits}f} [{low:.{digits}f}..{high:.{digits}f}]"


def median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


@dataclass(frozen=True)
class Seen:
    event_type: str
    run_id: str | None
    node_id: str | None
    at: float
    size: int


class Watcher:
    """Every event on a stack's control bus, as it arrives (a thread long-polls
    the server queue and batch-deletes what it read)."""

    def __init__(self, stack: Any) -> None:
        self._stack = stack
        self._cond = threading.Condition()
        self.events: list[Seen] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self._thread.start()

    def _loop(self) -> None:
        sqs, url = self._stack.sqs, self._stack.server_queue_url
        while not self._stop.is_set():
            try:
                got = sqs.receive_message(
                    QueueUrl=url,
                    MaxNumberOfMessages=10,
                    WaitTimeSeconds=1,
                    MessageAttributeNames=["All"],
                )
            except Exception:
                if self._stop.wait(0.2):
                    return
                continue
            now = time.monotonic()
            messages = got.get("Messages", [])
            if not messages:
                continue
            sqs.delete_message_batch(
                QueueUrl=url,
                Entries=[
                    {"Id": str(i), "ReceiptHandle": m["ReceiptHandle"]}
                    for i, m in enumerate(messages)
                ],
            )
            seen = []
            for m in messages:
                attrs = {k: v.get("StringValue") for k, v in m.get("MessageAttributes", {}).items()}
                seen.append(
                    Seen(
                        attrs.get("event_type", "?"),
                        attrs.get("run_id"),
                        attrs.get("node_id"),
                        now,
                        len(m["Body"].encode()),
                    )
                )
            with self._cond:
                self.events.extend(seen)
                self._cond.notify_all()

    def wait(self, predicate: Callable[[list[Seen]], Any], timeout: float = 120.0) -> Any:
        deadline = time.monotonic() + timeout
        with self._cond:
            while not (found := predicate(self.events)):
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError("the expected events did not arrive")
                self._cond.wait(left)
            return found

    def first(
        self,
        event_type: str,
        *,
        run_id: str | None = None,
        node_id: str | None = None,
        timeout: float = 120.0,
    ) -> Seen:
        def match(events: list[Seen]) -> Seen | None:
            for e in events:
                if (
                    e.event_type == event_type
                    and (run_id is None or e.run_id == run_id)
                    and (node_id is None or e.node_id == node_id)
                ):
                    return e
            return None

        found: Seen = self.wait(match, timeout)
        return found

    def completed(self, run_ids: set[str], timeout: float = 120.0) -> float:
        """When the last of `run_ids` had its terminal event seen."""

        def done(events: list[Seen]) -> float | None:
            at = {e.run_id: e.at for e in events if e.event_type in TERMINAL}
            return max(at[r] for r in run_ids) if run_ids <= at.keys() else None

        last: float = self.wait(done, timeout)
        return last

    def failed(self, run_ids: set[str]) -> int:
        with self._cond:
            return sum(e.event_type == "TaskFailed" and e.run_id in run_ids for e in self.events)

    def close(self) -> None:
        self._stop.set()
        self._thread.join(3)


class CountingProxy:
    """An HTTP proxy in front of the moto server that counts AWS calls by
    operation, and can slow the bus down (`sns_delay` seconds a call)."""

    def __init__(self, upstream: str) -> None:
        target = urlsplit(upstream)
        self.calls: list[tuple[float, str]] = []
        self.sns_delay = 0.0
        lock = threading.Lock()
        proxy = self
        local = threading.local()

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: Any) -> None:
                pass

            def _body(self) -> bytes:
                if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
                    parts = []
                    while size := int(self.rfile.readline().split(b";")[0], 16):
                        parts.append(self.rfile.read(size))
                        self.rfile.readline()
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass
                    return b"".join(parts)
                return self.rfile.read(int(self.headers.get("Content-Length") or 0))

            def _forward(self) -> None:
                body = self._body()
                operation = proxy.operation(self.command, self.path, self.headers, body)
                with lock:
                    proxy.calls.append((time.monotonic(), operation))
                if operation.startswith("sns:") and proxy.sns_delay:
                    time.sleep(proxy.sns_delay)
                skip = {"transfer-encoding", "connection", "keep-alive", "expect", "content-length"}
                headers = {k: v for k, v in self.headers.items() if k.lower() not in skip}
                headers["Content-Length"] = str(len(body))
                connection = getattr(local, "connection", None)
                if connection is None:
                    connection = http.client.HTTPConnection(target.hostname, target.port)
                    local.connection = connection
                try:
                    connection.request(self.command, self.path, body, headers)
                    response = connection.getresponse()
                    payload = response.read()
                except (OSError, http.client.HTTPException):
                    local.connection = None
                    raise
                self.send_response(response.status)
                for key, value in response.getheaders():
                    if key.lower() not in skip:
                        self.send_header(key, value)
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(payload)

            do_GET = do_POST = do_PUT = do_HEAD = do_DELETE = _forward

        class Server(ThreadingHTTPServer):
            def handle_error(self, request: Any, client_address: Any) -> None:
                pass  # a client that went away mid-call: a killed subject

        self._server = Server(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        self.endpoint = f"http://127.0.0.1:{self._server.server_address[1]}"

    @staticmethod
    def operation(method: str, path: str, headers: Any, body: bytes) -> str:
        credential = re.search(
            r"Credential=[^/]+/[^/]+/[^/]+/([^/]+)/", headers.get("Authorization", "")
        )
        service = credential.group(1) if credential else "?"
        target = headers.get("X-Amz-Target")
        if target:
            return f"{service}:{target.rsplit('.', 1)[-1]}"
        action = re.search(rb"(?:^|&)Action=(\w+)", body)
        if action:
            return f"{service}:{action.group(1).decode()}"
        if service == "s3":
            query = urlsplit(path).query
            if "partNumber=" in query:
                return "s3:UploadPart"
            if "uploads" in query.split("&"):
                return "s3:CreateMultipartUpload"
            if "uploadId=" in query:
                return (
                    "s3:CompleteMultipartUpload" if method == "POST" else "s3:AbortMultipartUpload"
                )
            return {"PUT": "s3:PutObject", "GET": "s3:GetObject"}.get(method, f"s3:{method}")
        return f"{service}:{method}"

    def count(self, since: float, until: float | None = None, prefix: str = "") -> Counter[str]:
        end = time.monotonic() if until is None else until
        return Counter(
            op for at, op in list(self.calls) if since <= at <= end and op.startswith(prefix)
        )

    def close(self) -> None:
        self._server.shutdown()


def rss_kib(pid: int) -> dict[str, int]:
    fields: dict[str, int] = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            fields[key] = int(value.split()[0])
    return fields


def reset_peak(pid: int) -> bool:
    """Resets the process's peak RSS (VmHWM) to its current RSS (Linux 4.0+)."""
    try:
        Path(f"/proc/{pid}/clear_refs").write_text("5")
    except OSError:
        return False
    return True


# --- subjects: the node, and the plain loop --------------------------------------------


@dataclass
class Subject:
    """One process that takes tasks from its own stack: a node or a loop."""

    name: str
    stack: Any
    watcher: Watcher
    process: subprocess.Popen[bytes]
    node_id: str
    spawned: float
    proxy: CountingProxy | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def registered(self, timeout: float = 60.0) -> float:
        return self.watcher.first("NodeRegistered", node_id=self.node_id, timeout=timeout).at

    def send(self, tasks: list[dict[str, Any]]) -> float:
        """Sends the commands, ten at a time; when the first left."""
        first = time.monotonic()
        for start in range(0, len(tasks), 10):
            self.stack.sqs.send_message_batch(
                QueueUrl=self.stack.queue_url,
                Entries=[
                    {"Id": str(i), "MessageBody": json.dumps(task)}
                    for i, task in enumerate(tasks[start : start + 10])
                ],
            )
        return first

    def stop(self) -> None:
        with contextlib.suppress(ProcessLookupError):
            self.process.kill()
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.process.wait(10)
        self.watcher.close()
        if self.proxy is not None:
            self.proxy.close()


class Bench:
    def __init__(self, endpoint: str, tmp: Path) -> None:
        self.endpoint = endpoint
        self.tmp = tmp
        self.subjects: list[Subject] = []

    def _stack(self, proxy: bool) -> tuple[Any, CountingProxy | None]:
        from tests.integration.conftest import make_stack  # noqa: PLC0415

        return make_stack(self.endpoint), CountingProxy(self.endpoint) if proxy else None

    def node(
        self, name: str, args: list[str], *, proxy: bool = False, log: bool = False
    ) -> Subject:
        from tests.integration.conftest import NodeProcess, node_env  # noqa: PLC0415

        stack, counting = self._stack(proxy)
        extra = {"AWS_ENDPOINT_URL": counting.endpoint} if counting else {}
        watcher = Watcher(stack)
        spawned = time.monotonic()
        node = NodeProcess(stack, self.tmp, ["--mock-mode", *args], node_env(stack, extra))
        subject = Subject(name, stack, watcher, node.process, node.node_id, spawned, counting)
        subject.extra["node"] = node
        self.subjects.append(subject)
        return subject

    def loop(
        self,
        name: str,
        *,
        slots: int = 1,
        child: bool = False,
        poll_wait: int = 20,
        proxy: bool = False,
    ) -> Subject:
        from tests.integration.conftest import node_env  # noqa: PLC0415

        stack, counting = self._stack(proxy)
        extra = {"AWS_ENDPOINT_URL": counting.endpoint} if counting else {}
        node_id = f"loop-{uuid.uuid4().hex[:8]}"
        work = self.tmp / node_id
        work.mkdir()
        argv = [
            sys.executable,
            str(Path(__file__).resolve()),
            "loop",
            "--queue-url", stack.queue_url,
            "--topic-arn", stack.topic_arn,
            "--bucket", stack.bucket,
            "--node-id", node_id,
            "--slots", str(slots),
            "--poll-wait", str(poll_wait),
            "--work-dir", str(work),
            *(["--child"] if child else []),
        ]  # fmt: skip
        watcher = Watcher(stack)
        spawned = time.monotonic()
        process = subprocess.Popen(argv, env=node_env(stack, extra), stdout=subprocess.DEVNULL)
        subject = Subject(name, stack, watcher, process, node_id, spawned, counting)
        self.subjects.append(subject)
        return subject

    def close(self) -> None:
        for subject in self.subjects:
            subject.stop()


def zero_work_tasks(count: int) -> list[dict[str, Any]]:
    from tests.integration.conftest import command  # noqa: PLC0415

    return [command(mock=dict(ZERO_WORK)) for _ in range(count)]


def throughput(subject: Subject, count: int) -> float:
    tasks = zero_work_tasks(count)
    first = subject.send(tasks)
    run_ids = {t["run_id"] for t in tasks}
    last = subject.watcher.completed(run_ids)
    if failed := subject.watcher.failed(run_ids):
        print(f"  ({subject.name}: {failed} of {count} runs failed)")
    return count / (last - first)


def latency_to_started(subject: Subject) -> float:
    (task,) = zero_work_tasks(1)
    sent = subject.send([task])
    started = subject.watcher.first("TaskStarted", run_id=task["run_id"]).at
    subject.watcher.completed({task["run_id"]})
    return started - sent


# --- the sections ------------------------------------------------------------------


def bench_output(megabytes: int = 64) -> None:
    """Through the recorder as a run has it: with the token shapes only, and
    with 20 values to redact (a task's env and secrets, the node's credentials)."""
    from claude_code_scheduler.redaction import Redactor  # noqa: PLC0415

    values = [uuid.uuid4().hex + uuid.uuid4().hex[:8] for _ in range(20)]
    for label, redactor in (("token shapes", Redactor()), ("20 values", Redactor(values))):
        bench_output_with(redactor, label, megabytes)


def bench_output_with(redactor: Any, label: str, megabytes: int) -> None:
    from claude_code_scheduler.node.output import OutputBatcher, OutputRecorder  # noqa: PLC0415

    chunks: list[int] = []
    recorder = OutputRecorder(
        io.BytesIO(), OutputBatcher(lambda _stream, text: chunks.append(len(text))), redactor
    )
    block = ("héllo wörld, " * 5000).encode()[: 64 * 1024]
    total = megabytes * 1024 * 1024
    started = time.perf_counter()
    for offset in range(0, total, len(block)):
        recorder.feed("stdout" if offset % (1 << 20) else "stderr", block, time.monotonic())
    recorder.finish(time.monotonic())
    elapsed = time.perf_counter() - started
    print(f"output pipeline ({label}): {megabytes / elapsed:.0f} MB/s, {len(chunks)} chunks")


@contextlib.contextmanager
def moto_server() -> Iterator[str]:
    from tests.integration.conftest import free_port  # noqa: PLC0415

    port = free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    endpoint = f"http://127.0.0.1:{port}"
    try:
        for _ in range(200):
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                time.sleep(0.05)
        yield endpoint
    finally:
        process.terminate()
        process.wait(10)


class Table:
    """Rows of figures, printed as they come, one column per subject."""

    def __init__(self, columns: list[str]) -> None:
        self.columns = columns
        print(f"{'':34}" + "".join(f"{c:>26}" for c in columns))

    def row(self, label: str, cells: list[str]) -> None:
        print(f"{label:34}" + "".join(f"{c:>26}" for c in cells), flush=True)


def bench_against_loop(endpoint: str, tmp: Path) -> None:
    bench = Bench(endpoint, tmp)
    try:
        # Idle subscribers with the node's defaults, counted through a proxy
        # for as long as the rest of the bench runs.
        idle_node = bench.node("node", [], proxy=True)
        idle_loop = bench.loop("loop", proxy=True)
        idle_since = {s.name: s.registered() for s in (idle_node, idle_loop)}

        print("\nnode against a plain loop on one moto server (median [min..max])")
        section_throughput(bench)
        section_latency(bench)
        section_lifecycle(bench)
        section_big_output(bench)

        table = Table(["node", "loop"])
        cells, details = [], []
        for subject in (idle_node, idle_loop):
            assert subject.proxy is not None
            since = idle_since[subject.name]
            window = time.monotonic() - since
            calls = subject.proxy.count(since)
            cells.append(f"{sum(calls.values()) * 3600 / window:.0f}")
            listed = ", ".join(f"{op} {n}" for op, n in sorted(calls.items()))
            details.append(f"  {subject.name}, {window:.0f} s idle: {listed}")
        table.row("idle API calls per hour", cells)
        print("\n".join(details))
    finally:
        bench.close()


def section_throughput(bench: Bench) -> None:
    table = Table(["node", "loop", "loop+child"])
    for slots, count in TASKS_PER_SLOT.items():
        subjects = [
            bench.node("node", ["--max-concurrent-tasks", str(slots)]),
            bench.loop("loop", slots=slots),
            bench.loop("loop+child", slots=slots, child=True),
        ]
        for subject in subjects:
            subject.registered()
            throughput(subject, 2 * slots)  # warm-up
        rates: dict[str, list[float]] = {s.name: [] for s in subjects}
        for repeat in range(REPEATS):
            order = subjects if repeat % 2 == 0 else subjects[::-1]
            for subject in order:
                rates[subject.name].append(throughput(subject, count))
        table.row(
            f"tasks/s, {slots} slot(s), {count} tasks", [spread(rates[s.name]) for s in subjects]
        )
        node = median(rates["node"])
        table.row(
            "  node's ratio to it",
            [
                "",
                f"{node / median(rates['loop']):.2f}",
                f"{node / median(rates['loop+child']):.2f}",
            ],
        )
        for subject in subjects:
            subject.stop()
        bench.subjects = [s for s in bench.subjects if s not in subjects]


def section_latency(bench: Bench) -> None:
    table = Table(["node", "loop"])
    subjects = [bench.node("node", []), bench.loop("loop")]
    for subject in subjects:
        subject.registered()
        latency_to_started(subject)
    samples: dict[str, list[float]] = {s.name: [] for s in subjects}
    for _ in range(LATENCY_SAMPLES):
        for subject in subjects:
            samples[subject.name].append(1000 * latency_to_started(subject))
    table.row("queue -> TaskStarted (ms)", [spread(samples[s.name], 0) for s in subjects])
    for subject in subjects:
        subject.stop()
    bench.subjects = [s for s in bench.subjects if s not in subjects]


def section_lifecycle(bench: Bench) -> None:
    table = Table(["node", "loop"])
    figures: dict[str, dict[str, list[float]]] = {}
    for _ in range(LIFECYCLE_SAMPLES):
        for make in (
            lambda: bench.node("node", ["--poll-wait-seconds", str(LIFECYCLE_POLL_WAIT)]),
            lambda: bench.loop("loop", poll_wait=LIFECYCLE_POLL_WAIT),
        ):
            subject = make()
            mine = figures.setdefault(subject.name, {"start": [], "dereg": [], "exit": []})
            mine["start"].append(1000 * (subject.registered() - subject.spawned))
            time.sleep(0.5)
            signalled = time.monotonic()
            subject.process.send_signal(signal.SIGTERM)
            dereg = subject.watcher.first("NodeDeregistered", node_id=subject.node_id).at
            subject.process.wait(60)
            exited = time.monotonic()
            mine["dereg"].append(1000 * (dereg - signalled))
            mine["exit"].append(1000 * (exited - signalled))
            subject.stop()
            bench.subjects.remove(subject)
    names = ["node", "loop"]
    table.row("start -> registered (ms)", [spread(figures[n]["start"], 0) for n in names])
    table.row("SIGTERM -> deregistered (ms)", [spread(figures[n]["dereg"], 0) for n in names])
    table.row(
        f"SIGTERM -> exit (ms, poll {LIFECYCLE_POLL_WAIT} s)",
        [spread(figures[n]["exit"], 0) for n in names],
    )


def big_run(subject: Subject) -> tuple[float, float, float, bool]:
    """One BIG_OUTPUT_BYTES run: SNS calls per MB, peak RSS growth (MB),
    seconds, and whether it completed."""
    from tests.integration.conftest import command  # noqa: PLC0415

    assert subject.proxy is not None
    pid = subject.process.pid
    before = rss_kib(pid)["VmRSS"]
    if not reset_peak(pid):
        before = rss_kib(pid)["VmHWM"]
    task = command(mock={"duration_seconds": 1, "output_bytes": BIG_OUTPUT_BYTES})
    first = subject.send([task])
    last = subject.watcher.completed({task["run_id"]}, timeout=600)
    peak = rss_kib(pid)["VmHWM"]
    calls = subject.proxy.count(first, last, prefix="sns:")
    megabytes = BIG_OUTPUT_BYTES / (1024 * 1024)
    completed = not subject.watcher.failed({task["run_id"]})
    return sum(calls.values()) / megabytes, (peak - before) / 1024, last - first, completed


def section_big_output(bench: Bench) -> None:
    table = Table(["node", "loop+child"])
    subjects = [
        bench.node("node", ["--poll-wait-seconds", "1"], proxy=True),
        bench.loop("loop+child", child=True, poll_wait=1, proxy=True),
    ]
    for subject in subjects:
        subject.registered()
        throughput(subject, 2)  # warm-up: every code path has run once
    results: dict[tuple[str, float], tuple[float, float, float, bool]] = {}
    for delay in (0.0, SLOW_BUS_SECONDS):
        for subject in subjects:
            assert subject.proxy is not None
            subject.proxy.sns_delay = delay
            results[(subject.name, delay)] = big_run(subject)
    names = [s.name for s in subjects]
    table.row("SNS calls per MB (50 MB run)", [f"{results[(n, 0.0)][0]:.1f}" for n in names])
    for delay in (0.0, SLOW_BUS_SECONDS):
        bus = "moto" if not delay else f"{1000 * delay:.0f} ms/call"
        table.row(
            f"peak RSS growth, 50 MB, {bus} (MB)",
            [
                f"{growth:.0f} in {seconds:.1f} s" + ("" if completed else " (failed)")
                for _, growth, seconds, completed in (results[(n, delay)] for n in names)
            ],
        )
    for subject in subjects:
        subject.stop()
    bench.subjects = [s for s in bench.subjects if s not in subjects]


def bench_real_tasks(count: int = 10) -> None:
    from tests.integration.conftest import (  # noqa: PLC0415
        NodeProcess,
        command,
        make_stack,
        node_env,
    )
    from tests.realcli.anthropic_standin import AnthropicStandin, Text  # noqa: PLC0415
    from tests.realcli.claude_cli import pinned_binary, probe  # noqa: PLC0415

    binary = pinned_binary()
    reason = probe(binary)
    if reason is not None:
        print(f"real mode: skipped: {reason}")
        return
    with (
        moto_server() as endpoint,
        tempfile.TemporaryDirectory() as tmp,
        AnthropicStandin([Text("Hello from the stand-in.")] * count) as api,
    ):
        stack = make_stack(endpoint)
        home = Path(tmp) / "home"
        home.mkdir()
        env = {**node_env(stack), **api.cli_env(), "HOME": str(home)}
        args = ["--claude-bin", str(binary), "--poll-wait-seconds", "1"]
        watcher = Watcher(stack)
        node = NodeProcess(stack, Path(tmp), args, env)
        try:
            watcher.first("NodeRegistered", node_id=node.node_id, timeout=60)
            tasks = [command(prompt="Say hello") for _ in range(count)]
            sent = {}
            for task in tasks:
                sent[task["run_id"]] = time.monotonic()
                stack.send(task)
            last = watcher.completed(set(sent), timeout=300)
            starts = [watcher.first("TaskStarted", run_id=r).at - at for r, at in sent.items()]
            ends = [watcher.first("TaskCompleted", run_id=r).at - at for r, at in sent.items()]
            print(
                f"\n{count} real-mode tasks (one text reply each), 1 slot: "
                f"send->TaskStarted median {statistics.median(starts):.2f}s, "
                f"send->TaskCompleted median {statistics.median(ends):.2f}s, "
                f"{count / (last - min(sent.values())):.1f} tasks/s"
            )
        finally:
            node.kill()
            watcher.close()


def main() -> int:
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    started = time.monotonic()
    bench_output()
    with moto_server() as endpoint, tempfile.TemporaryDirectory() as tmp:
        bench_against_loop(endpoint, Path(tmp))
    bench_real_tasks()
    print(f"\nmake bench took {time.monotonic() - started:.0f} s")
    return 0


if __name__ == "__main__":
    if sys.argv[1:2] == ["loop"]:
        sys.exit(plain_loop(sys.argv[2:]))
    sys.exit(main())
