"""reaper.py with real processes: finding a run's processes by its marker, and
adopting, killing and reaping orphans as a child subreaper.

The subreaper cases run in a child interpreter: becoming a subreaper would
make the test runner itself adopt every orphan of the session.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from tests.conftest import IN_CI, wait_until

from claude_code_scheduler.node.process import reaper
from claude_code_scheduler.node.process.reaper import RUN_MARKER

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="needs /proc")


def start_sleeper(env: dict[str, str], *, new_session: bool = True) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-c", "import time; time.sleep(300)"],
        env=env,
        start_new_session=new_session,
    )


def test_run_processes_are_the_marked_ones_and_their_descendants() -> None:
    marked_env = {**os.environ, RUN_MARKER: "run-a"}
    # A marked parent whose child clears its environment: found through the parent.
    parent = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import subprocess, sys, time\n"
            "c = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(300)'], env={})\n"
            "print(c.pid, flush=True)\n"
            "time.sleep(300)\n",
        ],
        env=marked_env,
        stdout=subprocess.PIPE,
    )
    other = start_sleeper({**os.environ, RUN_MARKER: "run-b"})
    unmarked = start_sleeper(dict(os.environ))
    try:
        assert parent.stdout is not None
        grandchild = int(parent.stdout.readline())
        assert reaper.run_processes("run-a") == {parent.pid, grandchild}
        assert reaper.run_processes("run-b") == {other.pid}
        assert reaper.run_processes("run-c") == set()
        assert reaper.kill_run("run-a") == 2
        assert parent.wait(10) == -9
        assert reaper.run_processes("run-a") == set()
        assert other.poll() is None and unmarked.poll() is None, "only run-a's were killed"
    finally:
        for p in (parent, other, unmarked):
            p.kill()
            p.wait()


def test_two_attempts_of_one_run_never_kill_each_other() -> None:
    """Two nodes on one host (or a partition) running the same run: the end of
    one attempt must leave the other's processes alone."""
    first, second = reaper.new_marker("run-a"), reaper.new_marker("run-a")
    assert first != second and first.startswith("run-a/")
    mine = start_sleeper({**os.environ, RUN_MARKER: first})
    theirs = start_sleeper({**os.environ, RUN_MARKER: second})
    try:
        assert wait_until(lambda: reaper.run_processes(first) == {mine.pid}, timeout=10)
        assert reaper.kill_run(first) == 1
        assert mine.wait(10) == -9
        assert theirs.poll() is None, "the other attempt's process lives"
    finally:
        for p in (mine, theirs):
            p.kill()
            p.wait()


def test_a_marker_that_only_starts_with_the_run_id_is_not_the_run() -> None:
    longer = start_sleeper({**os.environ, RUN_MARKER: "run-a-2"})
    try:
        deadline = time.monotonic() + 10
        while longer.pid not in reaper.run_processes("run-a-2"):
            assert time.monotonic() < deadline, "the sleeper never showed up"
            time.sleep(0.02)
        assert longer.pid not in reaper.run_processes("run-a")
    finally:
        longer.kill()
        longer.wait()


SUBREAPER_SCRIPT = """
import json, os, subprocess, sys, time
from claude_code_scheduler.node.process import reaper

assert reaper.orphans() == set() and reaper.reap_zombies() == 0, "inert until asked"
assert reaper.become_subreaper()

def orphan(code):
    # A child that starts `code` in a session of its own and exits at once,
    # leaving it to the nearest subreaper: this process.
    starter = (
        "import subprocess as s, sys; "
        f"p = s.Popen([sys.executable, '-c', {code!r}], start_new_session=True, env={{}}, "
        "stdout=s.DEVNULL, stderr=s.DEVNULL); "
        "print(p.pid)"
    )
    return int(subprocess.run([sys.executable, "-c", starter], capture_output=True,
                              text=True, check=True).stdout)

def ppid(pid):
    stat = open(f"/proc/{pid}/stat").read()
    return int(stat.rsplit(")", 1)[1].split()[1])

report = {}
long_lived = orphan("import time; time.sleep(300)")
short_lived = orphan("pass")
with reaper.spawning() as own:
    mine = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(300)"])
    own.add(mine.pid)
time.sleep(0.5)  # the short one has ended by now: a zombie of ours
report["adopted"] = ppid(long_lived) == os.getpid()
report["orphans"] = sorted(reaper.orphans()) == [long_lived]
report["killed"] = reaper.kill_orphans()
report["long_gone"] = not os.path.exists(f"/proc/{long_lived}")
report["short_gone"] = not os.path.exists(f"/proc/{short_lived}")
report["mine_running"] = mine.poll() is None
mine.kill()
report["mine_status"] = mine.wait()
reaper.forget(mine.pid)
print(json.dumps(report))
"""


def test_a_subreaper_adopts_kills_and_reaps_orphans_but_not_its_own_children() -> None:
    done = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(SUBREAPER_SCRIPT)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert report == {
        "adopted": True,
        "orphans": True,
        "killed": 1,
        "long_gone": True,  # killed, and reaped: not even a zombie left
        "short_gone": True,  # ended on its own, and reaped
        "mine_running": True,  # a registered child is neither killed nor reaped
        "mine_status": -9,  # and its Popen still gets its exit status
    }


def test_the_table_reader_copes_with_odd_command_names(tmp_path: Path) -> None:
    proc = tmp_path / "proc"
    for pid, stat in {
        "10": "10 (a) b) c) S 1 10 10",
        "11": "11 (sleep 300) Z 10 11 11",
        "self": "ignored",
    }.items():
        (proc / pid).mkdir(parents=True)
        (proc / pid / "stat").write_text(stat)
    (proc / "10" / "environ").write_bytes(f"A=1\0{RUN_MARKER}=r\0".encode())
    (proc / "11" / "environ").write_bytes(b"")
    assert reaper.run_processes("r", proc) == {10}, "a zombie is dead already"


ONE_READ_SCRIPT = """
import json, os, subprocess, sys, time
from claude_code_scheduler.node.process import reaper
from claude_code_scheduler.node.process.reaper import RUN_MARKER

assert reaper.become_subreaper()
reads = []
read_table = reaper._read_table
reaper._read_table = lambda proc: (reads.append(proc), read_table(proc))[1]

def start(code, marker):
    with reaper.spawning() as own:
        child = subprocess.Popen(
            [sys.executable, "-c", code], env={**os.environ, RUN_MARKER: marker},
            stdout=subprocess.PIPE,
        )
        own.add(child.pid)
    return child

report = {}
# A run whose CLI exits cleanly: the supervisor's clean-up at its exit, then
# the worker's once no run is active.
cli = start("pass", "run-a/1")
cli.wait()
report["run_killed"] = reaper.kill_run("run-a/1")
reaper.forget(cli.pid)
report["orphans_killed"] = reaper.kill_orphans()
report["reads_per_run"] = len(reads)

# A run whose CLI leaves an orphan behind, with the marker cleared: the
# worker's clean-up reads /proc again, and finds it.
orphaning = (
    "import subprocess as s, sys; "
    "p = s.Popen([sys.executable, '-c', 'import time; time.sleep(300)'], "
    "start_new_session=True, env={}, stdout=s.DEVNULL, stderr=s.DEVNULL); "
    "print(p.pid)"
)
cli = start(orphaning, "run-b/1")
orphan = int(cli.stdout.read())
cli.wait()
reads.clear()
report["run_b_killed"] = reaper.kill_run("run-b/1")
reaper.forget(cli.pid)
report["orphan_killed"] = reaper.kill_orphans()
report["reads_run_b"] = len(reads)
report["orphan_gone"] = not os.path.exists(f"/proc/{orphan}")

# Under a subreaper only its own descendants are looked at: a marked process
# of another tree (another node on the host) is not this node's.
report["outsider"] = sorted(reaper.run_processes(sys.argv[1]))
insider = start("import time; time.sleep(300)", sys.argv[1])
time.sleep(0.3)
report["insider"] = sorted(reaper.run_processes(sys.argv[1])) == [insider.pid]
insider.kill()
insider.wait()
reaper.forget(insider.pid)
print(json.dumps(report))
"""


def test_proc_is_read_only_when_a_run_can_have_left_something_and_only_below_the_node() -> None:
    marker = reaper.new_marker("run-outside")
    outsider = start_sleeper({**os.environ, RUN_MARKER: marker})
    try:
        assert wait_until(lambda: reaper.run_processes(marker) == {outsider.pid}, timeout=10)
        done = subprocess.run(
            [sys.executable, "-c", textwrap.dedent(ONE_READ_SCRIPT), marker],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert done.returncode == 0, done.stderr
        assert outsider.poll() is None, "another tree's process was left alone"
    finally:
        outsider.kill()
        outsider.wait()
    report = json.loads(done.stdout)
    assert report == {
        "run_killed": 0,
        "orphans_killed": 0,
        # A subreaper without a child has no descendant: a run that left
        # nothing behind costs no read of /proc at all.
        "reads_per_run": 0,
        "run_b_killed": 0,  # the orphan shed the marker
        "orphan_killed": 1,
        "reads_run_b": 3,  # the run's; the worker's, and its look that the orphan is gone
        "orphan_gone": True,
        "outsider": [],
        "insider": True,
    }


UID_SCRIPT = """
import json, os, subprocess, sys, time
from claude_code_scheduler.node.process import reaper

uid = int(sys.argv[1])
assert reaper.become_subreaper()
# As the run's uid: a child that double-forks a sleeper with an empty
# environment in a session of its own, then exits; the sleeper reparents to
# this process. It carries no marker: only its uid says whose it is.
escape = (
    "import os, subprocess as s, sys\\n"
    "if os.fork() == 0:\\n"
    "    p = s.Popen([sys.executable, '-c', 'import time; time.sleep(300)'], env={},\\n"
    "                start_new_session=True, stdout=s.DEVNULL, stderr=s.DEVNULL)\\n"
    "    print(p.pid, flush=True)\\n"
    "    os._exit(0)\\n"
    "os.wait()\\n"
)
with reaper.spawning() as own:
    cli = subprocess.Popen([sys.executable, "-c", escape], stdout=subprocess.PIPE, env={},
                           user=uid, group=uid, extra_groups=[], cwd="/")
    own.add(cli.pid)
    neighbour = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(300)"],
                                 user=uid + 1, group=uid + 1, extra_groups=[], cwd="/")
    own.add(neighbour.pid)
escaped = int(cli.stdout.readline())
cli.wait()
reaper.forget(cli.pid)
report = {
    "found": sorted(reaper.run_processes("", uid=uid)) == [escaped],
    "killed": reaper.kill_run("", uid=uid),
    "escaped_gone": not os.path.exists(f"/proc/{escaped}"),
    "neighbour_lives": neighbour.poll() is None,
}
neighbour.kill()
neighbour.wait()
reaper.forget(neighbour.pid)
print(json.dumps(report))
"""


def test_a_run_of_its_own_uid_is_killed_by_uid_whatever_it_did_to_escape() -> None:
    """No marker, no session, no parent of the run's: the uid finds it. A
    process of the next slot's uid is left alone."""
    if os.geteuid() != 0:
        if IN_CI:
            pytest.fail("CI=true: changing uids needs root")
        pytest.skip("changing uids needs root")
    done = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(UID_SCRIPT), "10977"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == {
        "found": True,
        "killed": 1,
        "escaped_gone": True,
        "neighbour_lives": True,
    }


def test_the_uid_comes_from_status_which_an_undumpable_process_cannot_hide(
    tmp_path: Path,
) -> None:
    """/proc/<pid> of an undumpable process belongs to root; its status still
    says its uids."""
    proc = tmp_path / "proc"
    for pid, uids in {"20": "10100\t10100\t10100\t10100", "21": "0\t0\t0\t0"}.items():
        (proc / pid).mkdir(parents=True)
        (proc / pid / "stat").write_text(f"{pid} (sh) S 1 {pid} {pid}")
        (proc / pid / "status").write_text(f"Name:\tsh\nUid:\t{uids}\nGid:\t0\t0\t0\t0\n")
    assert reaper.run_processes("", proc, uid=10100) == {20}
    assert reaper.run_processes("", proc, uid=10101) == set()
