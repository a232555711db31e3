"""Which backends exist: the entry points of the group ``squeezelab.backends``.

Reading them is metadata only (no adapter is imported here), so the scenario model can check
backend names at the lowest layer; ``adapters.registry`` loads the adapters themselves. A
package that declares one more entry point adds a backend without editing this repository.
"""

from __future__ import annotations

from functools import cache
from importlib.metadata import EntryPoint, entry_points

GROUP = "squeezelab.backends"


@cache
def backend_entry_points() -> dict[str, EntryPoint]:
    """Backend name → entry point (``module:ATTRIBUTE``), the first one declared per name."""
    found: dict[str, EntryPoint] = {}
    for point in entry_points(group=GROUP):
        found.setdefault(point.name, point)
    return found


def backend_names() -> list[str]:
    """Every registered backend name, in declaration order."""
    return list(backend_entry_points())
