"""`schedule`: recurring tasks on EventBridge Scheduler (docs/schedules.md).

expressions.py checks when a schedule fires; definition.py makes what is
sent (the target, the signed template, the end date); views.py says what a
stored schedule is; commands.py holds the click commands. AWS I/O is
aws.schedules'.
"""

from claude_code_scheduler.client.schedules.commands import schedule

__all__ = ["schedule"]
