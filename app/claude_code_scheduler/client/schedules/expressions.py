"""When a schedule fires: EventBridge Scheduler's cron, rate and at
expressions, given without their wrapper and checked before any call, so a
bad one is one line naming the option (docs/schedules.md)."""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from claude_code_scheduler.errors import ConfigError

_RATE = re.compile(r"^(?P<count>[0-9]+) (?P<unit>minute|minutes|hour|hours|day|days)$")
_AT = re.compile(r"^[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}$")
# Each cron field's characters (the user guide's table of fields, values and
# wildcards): minutes, hours, day-of-month, month, day-of-week, year.
_CRON_FIELDS = (
    ("minutes", re.compile(r"^[0-9,*/-]+$"), 59),
    ("hours", re.compile(r"^[0-9,*/-]+$"), 23),
    ("day-of-month", re.compile(r"^[0-9,*?/LW-]+$"), 31),
    ("month", re.compile(r"^[0-9A-Za-z,*/-]+$"), 12),
    ("day-of-week", re.compile(r"^[0-9A-Za-z,*?L#-]+$"), 7),
    ("year", re.compile(r"^[0-9,*/-]+$"), 2199),
)


_STORED = re.compile(r"^(?P<kind>cron|rate|at)\((?P<text>.*)\)$")


@dataclass(frozen=True)
class When:
    """A schedule expression without its wrapper: kind "cron", "rate" or "at"."""

    kind: str
    text: str

    @property
    def expression(self) -> str:
        return f"{self.kind}({self.text})"

    @classmethod
    def stored(cls, expression: str) -> When:
        """A ScheduleExpression as the API stores it."""
        match = _STORED.fullmatch(expression)
        if not match:
            return cls("", expression)
        return cls(match.group("kind"), match.group("text"))


def check_cron(text: str) -> str:
    """Six fields in EventBridge Scheduler's cron syntax; one of day-of-month
    and day-of-week must be "?"."""
    fields = text.split()
    if len(fields) != len(_CRON_FIELDS):
        raise ConfigError(
            f"--cron: {text!r} has {len(fields)} fields; it needs 6 (minutes hours "
            'day-of-month month day-of-week year), e.g. "0 9 ? * MON-FRI *"'
        )
    for value, (field, allowed, highest) in zip(fields, _CRON_FIELDS, strict=True):
        if not allowed.fullmatch(value):
            raise ConfigError(f"--cron: {value!r} is not a valid {field} field")
        if field in ("minutes", "hours"):
            for number in re.findall(r"[0-9]+", value):
                if int(number) > highest:
                    raise ConfigError(f"--cron: {field} go from 0 to {highest}, not {number}")
    if "?" not in (fields[2], fields[4]) or fields[2] == fields[4]:
        raise ConfigError(
            "--cron: exactly one of day-of-month (3rd field) and day-of-week (5th) must be ?, "
            'e.g. "0 9 ? * MON-FRI *" or "0 9 1 * ? *"'
        )
    return " ".join(fields)


def check_rate(text: str) -> str:
    """'N minute(s)|hour(s)|day(s)', singular for 1 only, as the service takes it."""
    match = _RATE.fullmatch(text.strip())
    if not match:
        raise ConfigError(
            f'--rate: {text!r} must be "<N> minutes", "<N> hours" or "<N> days" '
            '(e.g. "5 minutes"); seconds are not supported'
        )
    count, unit = int(match.group("count")), match.group("unit")
    if count < 1:
        raise ConfigError("--rate: the value must be 1 or more")
    singular = unit.rstrip("s")
    if count == 1 and unit != singular:
        raise ConfigError(f'--rate: write "1 {singular}", not "1 {unit}"')
    if count > 1 and unit == singular:
        raise ConfigError(f'--rate: write "{count} {unit}s", not "{count} {unit}"')
    return f"{count} {unit}"


def check_at(text: str, zone: ZoneInfo, now: float) -> datetime:
    """A naive ISO time (YYYY-MM-DDTHH:MM:SS) in `zone`, not in the past; the
    aware time it names."""
    if not _AT.fullmatch(text):
        raise ConfigError(
            f"--at: {text!r} must be YYYY-MM-DDTHH:MM:SS, without a zone (give --timezone)"
        )
    try:
        moment = datetime.fromisoformat(text).replace(tzinfo=zone)
    except ValueError as exc:
        raise ConfigError(f"--at: {text!r}: {exc}") from None
    if moment.timestamp() <= now:
        raise ConfigError(f"--at: {text} ({zone.key}) is in the past: it would never fire")
    return moment


def check_timezone(name: str) -> ZoneInfo:
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        raise ConfigError(
            f"--timezone: {name!r} is not an IANA time zone name (e.g. Europe/Berlin, UTC)"
        ) from None


def when_of(options: Mapping[str, Any], zone: ZoneInfo, now: float) -> When:
    """Exactly one of --cron, --rate and --at, checked."""
    given = [kind for kind in ("cron", "rate", "at") if options.get(kind)]
    if len(given) != 1:
        raise ConfigError("give exactly one of --cron, --rate and --at")
    kind = given[0]
    text = options[kind]
    if kind == "cron":
        return When("cron", check_cron(text))
    if kind == "rate":
        return When("rate", check_rate(text))
    check_at(text, zone, now)
    return When("at", text)


def iso(moment: datetime) -> str:
    """A moment as the commands print it: UTC, to the second."""
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
