"""How ``make test`` spreads the suite over pytest-xdist workers (``-n 2 --dist loadfile``).

Each test file runs whole on one worker, so its module-scoped fixtures (a shared app, a
server process, a fitted model) are made once; the browser folder is one unit, so that its
session-wide ``hpo serve`` and Chromium start once. Units go out in collection order, and
``long_first`` puts the files holding a ``slow`` or ``browser`` test first: the long units
start at once, and the many short files fill in around them (no long file left for the end,
with one worker idle).
"""

from __future__ import annotations

import pytest

LONG_MARKERS = ("slow", "browser")
# Test folders whose files share session-scoped fixtures: one unit each.
UNITS_OF_FOLDERS = ("tests/browser/",)


def unit_of(nodeid: str) -> str:
    """The unit of work a test belongs to: its folder in ``UNITS_OF_FOLDERS``, else its file."""
    path = nodeid.split("::", 1)[0]
    return next((folder for folder in UNITS_OF_FOLDERS if path.startswith(folder)), path)


def long_first(items: list[pytest.Item]) -> None:
    """Reorder ``items`` in place: the units holding a long test first, each unit's tests
    together and in their order, the units otherwise in collection order."""
    first_seen: dict[str, int] = {}
    long_units: set[str] = set()
    for index, item in enumerate(items):
        unit = unit_of(item.nodeid)
        first_seen.setdefault(unit, index)
        if any(item.get_closest_marker(name) for name in LONG_MARKERS):
            long_units.add(unit)
    items.sort(key=lambda item: (unit_of(item.nodeid) not in long_units, first_seen[unit_of(item.nodeid)]))


def make_scheduler(config: pytest.Config, log):
    """``--dist loadfile`` with the units of ``unit_of``, sent out in collection order (xdist's
    own orders them by their number of tests); other modes: xdist's own scheduler."""
    if config.getvalue("dist") != "loadfile":
        return None
    from xdist.scheduler import LoadScopeScheduling

    class UnitScheduling(LoadScopeScheduling):
        def _split_scope(self, nodeid: str) -> str:
            return unit_of(nodeid)

    config.option.loadscopereorder = False
    return UnitScheduling(config, log)
