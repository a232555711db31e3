"""The seed article's claims set side by side with a run's measurements (report section)."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from unified.report import RunFolder


def article_sections(run: RunFolder) -> list[tuple[str, str]]:
    """(title, HTML) sections comparing the seed article's tables with ``run``; none when
    the run has nothing the article measured."""
    return []
