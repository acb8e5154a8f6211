"""Reading one field of an untrusted JSON object: its type, text a process
can be given, bounds, and a short quote of a bad value for the message. Each
problem is an InvalidCommand in one bounded line. Shared by the command
parser (protocol.parsing) and the workspace parser (protocol.workspace).
No I/O here.
"""

from __future__ import annotations

from typing import Any

from claude_code_scheduler.protocol.commands import InvalidCommand

# How much of a value an error message quotes.
QUOTE_CHARS = 60


def quote(value: Any) -> str:
    """A short, printable, escaped excerpt of `value` for an error message."""
    text = ascii(value)
    return text if len(text) <= QUOTE_CHARS else text[: QUOTE_CHARS - 3] + "..."


def optional_text(
    obj: dict[str, Any],
    key: str,
    *,
    max_chars: int | None = None,
    max_bytes: int | None = None,
    where: str = "task",
) -> str | None:
    """An optional string field that a process can be given: no NUL (an argv
    or environment string ends at one), no lone surrogate (not UTF-8)."""
    value: str | None = optional(obj, key, str, where)
    if value is not None:
        check_text(value, f"{where}.{key}", max_chars=max_chars, max_bytes=max_bytes)
    return value


def check_text(
    value: str, what: str, *, max_chars: int | None = None, max_bytes: int | None = None
) -> None:
    if "\x00" in value:
        raise InvalidCommand(f"{what} must not contain a NUL character")
    try:
        size = len(value.encode("utf-8"))
    except UnicodeEncodeError:
        raise InvalidCommand(f"{what} must not contain a lone surrogate") from None
    if max_chars is not None and len(value) > max_chars:
        raise InvalidCommand(f"{what} must be at most {max_chars} characters, got {len(value)}")
    if max_bytes is not None and size > max_bytes:
        raise InvalidCommand(
            f"{what} must be at most {max_bytes} bytes of UTF-8 (the kernel's limit on one "
            f"argument of a process), got {size}"
        )


def reject_unknown(obj: dict[str, Any], allowed: frozenset[str], where: str) -> None:
    unknown = sorted(set(obj) - allowed)
    if unknown:
        named = ", ".join(quote(name) for name in unknown[:5])
        more = f" and {len(unknown) - 5} more" if len(unknown) > 5 else ""
        raise InvalidCommand(f"{where} has unknown field(s): {named}{more}")


def optional(obj: dict[str, Any], key: str, kind: type[Any], where: str = "task") -> Any:
    """An optional field: absent is None; present, it must have the right type
    (null is not absent, as in the schema)."""
    if key not in obj:
        return None
    value = obj[key]
    if kind is str and isinstance(value, str):
        return value
    if kind is int and is_integer(value):
        return int(value)
    raise InvalidCommand(f"{where}.{key} must be {kind_name(kind)}, got {json_type(value)}")


def is_integer(value: Any) -> bool:
    # JSON Schema counts 3.0 as an integer; bool is an int in Python but
    # `"max_turns": true` is not a number of turns.
    if isinstance(value, bool):
        return False
    return isinstance(value, int) or (isinstance(value, float) and value.is_integer())


def json_type(value: Any) -> str:
    names = {type(None): "null", bool: "a boolean", str: "a string", list: "an array"}
    return names.get(type(value), "an object" if isinstance(value, dict) else "a number")


def optional_object(obj: dict[str, Any], key: str, where: str = "task") -> dict[str, Any] | None:
    """An optional field that must be a JSON object when present."""
    if key not in obj:
        return None
    value = obj[key]
    if not isinstance(value, dict):
        raise InvalidCommand(f"{where}.{key} must be an object, got {json_type(value)}")
    return value


def optional_number(obj: dict[str, Any], key: str, where: str = "task") -> float | None:
    if key not in obj:
        return None
    value = obj[key]
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise InvalidCommand(f"{where}.{key} must be a number, got {json_type(value)}")
    try:
        return float(value)
    except OverflowError:  # an integer of hundreds of digits
        raise InvalidCommand(f"{where}.{key} is out of range") from None


def kind_name(kind: type[Any]) -> str:
    return {str: "a string", int: "an integer"}.get(kind, kind.__name__)
