"""Numbers out of Flower records: a record's values are typed as numbers, lists, strings or bytes together,
so a value that must be one number is checked (and named) once it is read."""

from __future__ import annotations


def number(value: object, key: str) -> float:
    """``value`` (the record's ``key``) as a float: an int, a float or a numeric string; else a TypeError."""
    if isinstance(value, (int, float, str)):
        return float(value)
    raise TypeError(f"record value {key!r}: expected a number, got {value!r}")
