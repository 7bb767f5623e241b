"""What a config value may be, stated beside its field, and the walk that finds every bad one.

A field carries its rules in its metadata, written with :func:`setting`::

    group_size: int = setting(8, at_least(2))
    \"\"\"episodes per group\"\"\"

:func:`problems` walks a config tree and returns one line per bad value,
``algo.group_size=1: must be an integer >= 2``. A rule that spans fields of one section
(``success_lo <= success_hi``) is that section's ``joint_problems(prefix)`` method; it runs
only when the section's fields passed their own rules, so it may compare them freely. Rules
that span sections, or need the machine or a simulator's task lists, are the launcher's
(deploy/checks.py).
"""
from __future__ import annotations

import copy
import dataclasses
import math
import re
from typing import Any, Callable, Optional

__all__ = ["Rule", "setting", "redefault", "at_least", "positive", "in_range", "one_of",
           "address", "tcp_port", "tcp_parts", "not_above", "problems", "ConfigError"]


class ConfigError(ValueError):
    """A config with bad values; ``lines``: one ``key=value: what is allowed`` each."""

    def __init__(self, lines: list[str]):
        super().__init__("\n".join(lines))
        self.lines = list(lines)


class Rule:
    """``problem(value)`` -> what the value must be (``"must be ..."``), or None if fine."""

    def __init__(self, ok: Callable[[Any], bool], what: str, nullable: bool = False):
        self.ok, self.nullable = ok, nullable
        self.what = what + (" (or null)" if nullable else "")

    def problem(self, value: Any) -> Optional[str]:
        if value is None and self.nullable:
            return None
        return None if self.ok(value) else f"must be {self.what}"

    def __repr__(self) -> str:
        return f"Rule(must be {self.what})"


def _integer(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) \
        and math.isfinite(value)


def at_least(low: int, nullable: bool = False) -> Rule:
    """An integer >= ``low``."""
    return Rule(lambda v: _integer(v) and v >= low, f"an integer >= {low}", nullable)


def in_range(low: Optional[float] = None, high: Optional[float] = None, *,
             open_low: bool = False, open_high: bool = False, nullable: bool = False,
             integer: bool = False) -> Rule:
    """A number in the interval (a bound None: unbounded on that side)."""
    def ok(v: Any) -> bool:
        return (_integer(v) if integer else _number(v)) \
            and (low is None or (v > low if open_low else v >= low)) \
            and (high is None or (v < high if open_high else v <= high))
    kind = "an integer" if integer else "a number"
    if high is None:
        what = f"{kind} {'>' if open_low else '>='} {low}"
    else:
        what = (f"{kind} in {'(' if open_low else '['}{low}, {high}"
                f"{')' if open_high else ']'}")
    return Rule(ok, what, nullable)


def positive(nullable: bool = False) -> Rule:
    """A number > 0."""
    return in_range(0, open_low=True, nullable=nullable)


def one_of(*choices: Any) -> Rule:
    return Rule(lambda v: v in choices, "one of " + ", ".join(map(str, choices)))


_TCP = re.compile(r"^tcp://(?P<host>\[[0-9a-fA-F:.]+\]|[^:/\s\[\]]+):(?P<port>\d+|\*)$")


def tcp_parts(address: str) -> Optional[tuple[str, str]]:
    """``tcp://host:port`` -> (host, port): the host as written (``*``, a name, an IPv4
    address or a bracketed IPv6 literal), the port digits or ``*``; None for any other
    address."""
    m = _TCP.match(str(address))
    return (m["host"], m["port"]) if m else None


def tcp_port(address: str) -> Optional[str]:
    """``tcp://host:port`` -> port (digits or ``*``); None for any other address."""
    parts = tcp_parts(address)
    return parts[1] if parts else None


def address(bind: bool, several: bool = False) -> Rule:
    """``tcp://HOST:PORT`` (PORT 1-65535; a server may bind any host ``*`` and a free port
    ``*``, a client must name both) or ``ipc://PATH``; ``several``: a comma-separated list."""
    def one(text: str) -> bool:
        if text.startswith("ipc://") and len(text) > len("ipc://"):
            return True
        m = _TCP.match(text)
        if m is None:
            return False
        if m["port"] == "*" or m["host"] == "*":
            return bind
        return 1 <= int(m["port"]) <= 65535
    what = ("tcp://HOST:PORT (PORT 1-65535" + (" or *" if bind else ", HOST not *")
            + ") or ipc://PATH" + (", comma-separated" if several else ""))
    return Rule(lambda v: isinstance(v, str)
                and all(one(p) for p in (v.split(",") if several else [v])), what)


def setting(default: Any, *rules: Rule) -> Any:
    """A dataclass field with its default and its rules (a list or dict default is copied
    for each instance)."""
    if isinstance(default, (list, dict)):
        return dataclasses.field(default_factory=lambda: copy.deepcopy(default),
                                 metadata={"rules": rules})
    return dataclasses.field(default=default, metadata={"rules": rules})


def redefault(base: type, name: str, default: Any) -> Any:
    """Field ``name`` of dataclass ``base`` with another default, its rules kept (for a
    subclass that changes a default)."""
    (f,) = [f for f in dataclasses.fields(base) if f.name == name]
    return dataclasses.field(default=default, metadata=f.metadata)


def not_above(section: Any, prefix: str, low: str, high: str) -> list[str]:
    """A ``joint_problems`` rule: field ``low`` of ``section`` must not exceed field
    ``high`` -> one problem line, or none."""
    a, b = getattr(section, low), getattr(section, high)
    if a <= b:
        return []
    return [f"{prefix}{low}={a!r}, {prefix}{high}={b!r}: must satisfy {low} <= {high}"]


def problems(cfg: Any, prefix: str = "") -> list[str]:
    """Every bad value of the dataclass tree ``cfg``, one ``key=value: must be ...`` line
    each, in field order; then each section's ``joint_problems(prefix)``."""
    found: list[str] = []
    for f in dataclasses.fields(cfg):
        value = getattr(cfg, f.name)
        for rule in f.metadata.get("rules", ()):
            if (why := rule.problem(value)) is not None:
                found.append(f"{prefix}{f.name}={value!r}: {why}")
                break
    own = bool(found)
    for f in dataclasses.fields(cfg):
        value = getattr(cfg, f.name)
        if dataclasses.is_dataclass(value) and not isinstance(value, type):
            found += problems(value, f"{prefix}{f.name}.")
    if not own and hasattr(cfg, "joint_problems"):
        found += cfg.joint_problems(prefix)
    return found
