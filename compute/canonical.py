"""Canonical encoding of spec dicts, rational numbers and hashes.

Every hash in this package is a lowercase hex sha256 string. Specs are hashed over their
canonical msgpack encoding: map keys sorted, only str/int/bool/None/bytes/list/map values,
no floats (real numbers travel as exact rationals written as strings, e.g. "1/100"), so the
same spec gives the same bytes on every machine.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Mapping
from fractions import Fraction
from typing import Any

from gossip.envelope import packb

_HEX64 = re.compile(r"[0-9a-f]{64}")
_RATIONAL = re.compile(r"[+-]?(\d+(\.\d*)?|\.\d+)([eE][+-]?\d+)?|[+-]?\d+/\d+")
MAX_DEPTH = 16


def canonical(obj: Any, depth: int = 0) -> Any:
    """The canonical form of a spec value: maps with sorted str keys, lists, scalars. Raises ValueError."""
    if depth > MAX_DEPTH:
        raise ValueError("nested too deeply")
    if obj is None or isinstance(obj, bool | int | str | bytes):
        return obj
    if isinstance(obj, Fraction):
        return rational_str(obj)
    if isinstance(obj, Mapping):
        if not all(isinstance(k, str) for k in obj):
            raise ValueError("map keys must be strings")
        return {k: canonical(obj[k], depth + 1) for k in sorted(obj)}
    if isinstance(obj, list | tuple):
        return [canonical(v, depth + 1) for v in obj]
    raise ValueError(f"{type(obj).__name__} values cannot be encoded canonically (write reals as 'p/q')")


def encode(obj: Any) -> bytes:
    """Canonical msgpack bytes of a spec value. Raises ValueError for values with no canonical form."""
    return packb(canonical(obj))


def sha256_hex(*parts: bytes) -> str:
    h = hashlib.sha256()
    for part in parts:
        h.update(part)
    return h.hexdigest()


def is_hash(value: Any) -> bool:
    """True for a lowercase hex sha256 string."""
    return isinstance(value, str) and _HEX64.fullmatch(value) is not None


def parse_rational(value: Any) -> Fraction:
    """An exact rational from "0.01", "1e-3", "1/100", an int, a Fraction or a float (via its repr).

    Raises ValueError for anything else, including non-finite floats and zero denominators.
    """
    if isinstance(value, bool):
        raise ValueError("expected a number, got a bool")
    if isinstance(value, Fraction | int):
        return Fraction(value)
    if isinstance(value, float):
        if value != value or value in (float("inf"), float("-inf")):
            raise ValueError(f"not a finite number: {value!r}")
        return Fraction(repr(value))
    if isinstance(value, str) and len(value) <= 64 and _RATIONAL.fullmatch(value.strip()):
        try:
            return Fraction(value.strip())
        except ZeroDivisionError as e:
            raise ValueError(f"zero denominator in {value!r}") from e
    raise ValueError(f"expected a rational like '0.01' or '1/100', got {value!r}")


def rational_str(value: Fraction) -> str:
    """The one canonical text of a rational: "1/100", "3", "-1/2"."""
    return str(value)
