"""Range checks for numeric settings, shared by the training configs of both tasks.

A bad value is reported once, before any data is loaded, by its setting name and its command-line
option, so a ``nan`` learning rate or a negative seed never reaches the training loop.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from numbers import Real
from typing import Any, Optional

__all__ = ["check_number", "check_numbers"]


def _option(name: str) -> str:
    return "--" + name.replace("_", "-")


def _number(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else f"{value:g}"


def _describe(
    integer: bool, minimum: Optional[float], maximum: Optional[float], above: Optional[float], below: Optional[float]
) -> str:
    bounds = [
        f"{sign} {_number(bound)}"
        for sign, bound in ((">=", minimum), (">", above), ("<=", maximum), ("<", below))
        if bound is not None
    ]
    kind = "an integer" if integer else "a finite number"
    return " ".join([kind, " and ".join(bounds)]).strip()


def check_number(
    name: str,
    value: Any,
    *,
    integer: bool = False,
    minimum: Optional[float] = None,
    maximum: Optional[float] = None,
    above: Optional[float] = None,
    below: Optional[float] = None,
    option: Optional[str] = None,
) -> None:
    """Raise ``ValueError`` naming setting ``name`` (and its option, default ``--name``) unless ``value`` is a
    finite number in range."""
    number = isinstance(value, int) if integer else isinstance(value, Real)
    valid = number and not isinstance(value, bool) and math.isfinite(value)
    valid = valid and (minimum is None or value >= minimum) and (maximum is None or value <= maximum)
    valid = valid and (above is None or value > above) and (below is None or value < below)
    if not valid:
        expected = _describe(integer, minimum, maximum, above, below)
        raise ValueError(f"{name} ({option or _option(name)}) must be {expected}; got {value!r}.")


def check_numbers(config: Any, rules: dict[str, dict[str, Any]], optional: Iterable[str] = ()) -> None:
    """:func:`check_number` for each ``config`` field in ``rules``; fields in ``optional`` may be ``None``."""
    optional = set(optional)
    for name, bounds in rules.items():
        value = getattr(config, name)
        if value is None and name in optional:
            continue
        check_number(name, value, **bounds)
