"""`claude-code-scheduler`: the command group and the one place errors become
exit codes (errors.EXIT_*): a user's error is one line and exit 2, never a
traceback; an unexpected one is logged and exit 1.
"""

from __future__ import annotations

import logging
import sys

import click

from claude_code_scheduler import __version__
from claude_code_scheduler.client.cancel import cancel
from claude_code_scheduler.client.commands import COMMANDS
from claude_code_scheduler.client.dashboard import dashboard
from claude_code_scheduler.client.keys import keys
from claude_code_scheduler.client.runs import runs
from claude_code_scheduler.client.schedules import schedule
from claude_code_scheduler.errors import (
    EXIT_FAILURE,
    EXIT_INTERRUPTED,
    EXIT_OK,
    EXIT_USAGE,
    ConfigError,
)
from claude_code_scheduler.node.command import healthcheck, node

log = logging.getLogger("claude_code_scheduler")


@click.group()
@click.version_option(__version__, prog_name="claude-code-scheduler")
def cli() -> None:
    """Run Claude Code tasks from an SQS queue and report on an SNS control bus."""


def _show_envvars(command: click.Command) -> None:
    """--help names each option's environment variable, for every command."""
    for param in command.params:
        if isinstance(param, click.Option) and param.envvar:
            param.show_envvar = True
    if isinstance(command, click.Group):
        for sub in command.commands.values():
            _show_envvars(sub)


for _command in (node, healthcheck, *COMMANDS, cancel, keys, runs, schedule, dashboard):
    cli.add_command(_command)
_show_envvars(cli)


def main(argv: list[str] | None = None) -> None:
    try:
        code = cli.main(args=argv, prog_name="claude-code-scheduler", standalone_mode=False)
    except ConfigError as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(EXIT_USAGE)
    except click.exceptions.NoArgsIsHelpError as exc:
        click.echo(exc.format_message(), err=True)
        sys.exit(EXIT_USAGE)
    except click.UsageError as exc:
        click.echo(f"error: {exc.format_message()}", err=True)
        sys.exit(EXIT_USAGE)
    except click.exceptions.Abort:
        sys.exit(EXIT_INTERRUPTED)
    except Exception:
        log.exception("unexpected error")
        sys.exit(EXIT_FAILURE)
    sys.exit(code if isinstance(code, int) else EXIT_OK)
