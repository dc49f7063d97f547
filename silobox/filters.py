"""Docker's list and prune filters that every kind of object shares."""

from __future__ import annotations

from typing import Iterable, Mapping


def label_matches(labels: Mapping[str, str], wanted: str) -> bool:
    """One ``label`` filter value: ``key`` (the label is set) or ``key=value`` (set to value)."""
    key, eq, value = wanted.partition("=")
    return key in labels and (not eq or labels[key] == value)


def labels_match(labels: Mapping[str, str] | None, wanted: Iterable[str],
                 any_of: bool = False) -> bool:
    """``label`` filters hold together (all of them); with ``any_of``, whether one holds, which
    is what ``label!`` excludes on."""
    labels = labels or {}
    results = (label_matches(labels, w) for w in wanted)
    return any(results) if any_of else all(results)
