"""Sizes in bytes as people write them: ``4GB``, ``512 MB``, ``2GiB`` or a number of bytes.

Units follow SI and IEC: kB / MB / GB / TB are powers of 1000, KiB / MiB / GiB / TiB powers
of 1024 (``2GB`` is 2,000,000,000 bytes, ``2GiB`` 2,147,483,648).
"""

from __future__ import annotations

import re

UNITS = {"b": 1, "kb": 10**3, "mb": 10**6, "gb": 10**9, "tb": 10**12,
         "kib": 2**10, "mib": 2**20, "gib": 2**30, "tib": 2**40}
SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([A-Za-z]+)?\s*$")
EXAMPLES = "a size such as 4GB, 512MB or 2GiB, or a number of bytes"


def parse_size(value: object) -> int:
    """Bytes of ``value`` (an int, or a number with a unit); ValueError saying what is
    expected otherwise."""
    if isinstance(value, bool):
        raise ValueError(f"must be {EXAMPLES}")
    if isinstance(value, int):
        return value
    if isinstance(value, str) and (match := SIZE.match(value)):
        number, unit = match.groups()
        factor = UNITS.get((unit or "b").lower())
        if factor is None:
            raise ValueError(f"unknown unit {unit!r}; use one of B, kB, MB, GB, TB, KiB, MiB, "
                             "GiB, TiB")
        return int(float(number) * factor)
    raise ValueError(f"must be {EXAMPLES}")


def format_size(size: int) -> str:
    """'2 GB', '2 GiB', '512 MB': the unit the number is a whole multiple of, if any; else
    one decimal ('1.5 GB')."""
    for unit, factor in (("TiB", 2**40), ("TB", 10**12), ("GiB", 2**30), ("GB", 10**9),
                         ("MiB", 2**20), ("MB", 10**6), ("KiB", 2**10), ("kB", 10**3)):
        if size >= factor and size % factor == 0:
            return f"{size // factor} {unit}"
    for unit, factor in (("TB", 10**12), ("GB", 10**9), ("MB", 10**6), ("kB", 10**3)):
        if size >= factor:
            return f"{size / factor:.1f} {unit}"
    return f"{size} bytes"
