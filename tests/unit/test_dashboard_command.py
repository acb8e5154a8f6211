"""`dashboard`'s user errors are one line and exit 2, before anything is
served or subscribed; and the rest of the CLI does not need the extra."""

from __future__ import annotations

import socket
import subprocess
import sys

import pytest

from claude_code_scheduler.cli import main
from claude_code_scheduler.client import dashboard as dashboard_package

BUS = "arn:aws:sns:us-east-1:123456789012:claude-code-scheduler-control-bus"


def run_dashboard(
    args: list[str], capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> tuple[int, str]:
    for name in ("CLAUDE_DASHBOARD_TOKEN", "CLAUDE_CONTROL_BUS_ARN", "CLAUDE_NODE_TOPIC_ARN"):
        monkeypatch.delenv(name, raising=False)
    with pytest.raises(SystemExit) as caught:
        main(["dashboard", *args])
    code = caught.value.code
    return int(code) if isinstance(code, int) else -1, capsys.readouterr().err


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ([], "--control-bus-arn is required"),
        (["--control-bus-arn", "not-an-arn"], "--control-bus-arn"),
        (["--control-bus-arn", BUS, "--host", "0.0.0.0"], "give --token"),
        (["--control-bus-arn", BUS, "--token", "short"], "at least 16"),
        (["--control-bus-arn", BUS, "--log-bucket", "Not_A_Bucket"], "--log-bucket"),
        (["--control-bus-arn", BUS, "--port", "70000"], "--port"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(
    args: list[str],
    message: str,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    code, err = run_dashboard(args, capsys, monkeypatch)
    assert code == 2
    assert err.count("\n") == 1 and message in err, err


def test_a_port_in_use_is_one_line(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        code, err = run_dashboard(
            ["--control-bus-arn", BUS, "--port", str(port)], capsys, monkeypatch
        )
    assert code == 2
    assert err.count("\n") == 1 and "cannot listen" in err, err


def test_without_the_extra_it_says_how_to_install_it(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    # None in sys.modules makes an import fail as a missing package does; the
    # part that needs the extra must be imported again to notice.
    monkeypatch.setitem(sys.modules, "uvicorn", None)
    monkeypatch.delitem(sys.modules, "claude_code_scheduler.client.dashboard.server", raising=False)
    monkeypatch.delattr(dashboard_package, "server", raising=False)
    code, err = run_dashboard(["--control-bus-arn", BUS], capsys, monkeypatch)
    assert code == 2
    assert err.count("\n") == 1, err
    assert "pip install 'claude-code-scheduler[dashboard]'" in err


def test_the_cli_imports_neither_starlette_nor_uvicorn() -> None:
    probe = (
        "import sys, claude_code_scheduler.cli; "
        "print(sorted(m for m in ('starlette', 'uvicorn') if m in sys.modules))"
    )
    out = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, check=True
    ).stdout
    assert out.strip() == "[]"
