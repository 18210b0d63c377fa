"""Reading Prometheus text: the metric names a scrape exports, one sample's value, and the
metric names a PromQL expression uses."""

from __future__ import annotations

import re

import promql_parser
from prometheus_client.parser import text_string_to_metric_families

#: The series each type of family exports, by suffix of the family's name.
_SUFFIXES = {
    "counter": ("_total", "_created"),
    "histogram": ("_bucket", "_sum", "_count", "_created"),
    "summary": ("", "_sum", "_count", "_created"),
    "gauge": ("",),
    "info": ("_info",),
}
_NAME = re.compile(r"\bchat_[a-z0-9_]+\b")


def exported_names(text: str) -> set[str]:
    """Every series name the scrape declares (a family with no samples yet included)."""
    names: set[str] = set()
    for family in text_string_to_metric_families(text):
        names.update(family.name + suffix for suffix in _SUFFIXES.get(family.type, ("",)))
    return names


def family_names(text: str) -> set[str]:
    """The names a reader looks up: a counter's with ``_total``, the others' as declared;
    without the ``*_created`` series prometheus_client adds to each counter and histogram."""
    return {
        family.name + ("_total" if family.type == "counter" else "")
        for family in text_string_to_metric_families(text)
        if not family.name.endswith("_created")
    }


def sample(text: str, name: str, **labels: str) -> float | None:
    """The value of the sample ``name`` with exactly these labels, or None."""
    for family in text_string_to_metric_families(text):
        for found in family.samples:
            if found.name == name and found.labels == labels:
                return float(found.value)
    return None


def promql_names(expr: str) -> set[str]:
    """The chat_* metric names an expression selects; ValueError when it is not PromQL."""
    parsed = promql_parser.parse(expr)
    return set(_NAME.findall(str(parsed)))
