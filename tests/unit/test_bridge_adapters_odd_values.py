"""Every platform sample with each of its values, one at a time, replaced by an odd one (null,
booleans, huge or non-finite numbers, a lone surrogate, a long string, a list or an object
where a scalar was): each adapter parses it without raising (but for the platform's shape as a
whole) and every event it makes can be encoded. The adapters' own checks handle all of these;
the per-entry guard is a backstop for what they do not foresee."""

from __future__ import annotations

import copy
import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from webhook_bridge.adapters import MalformedPayloadError, Parsed, messenger, slack, teams, whatsapp

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "platforms"
ODD: list[Any] = [
    None,
    True,
    0,
    -1,
    1e308,
    float("inf"),
    float("nan"),
    int("9" * 400),
    "",
    "\ud800",
    "x" * 20000,
    "NaN",
    "1e400",
    [],
    {},
    [[1]],
    {"a": {"b": {}}},
]


def samples() -> Iterator[tuple[str, str]]:
    for platform in ("whatsapp", "messenger", "slack", "teams"):
        for path in sorted((FIXTURES / platform).glob("*.json")):
            if "signature" not in path.name and path.name != "SOURCES.json":
                yield platform, path.name


def parser(platform: str, name: str) -> Callable[[Any], Parsed]:
    if platform == "whatsapp":
        return whatsapp.parse
    if platform == "messenger":
        if "entry" in name:
            return lambda entry: messenger.parse({"object": "page", "entry": [entry]})
        return lambda item: messenger.parse(
            {"object": "page", "entry": [{"id": "PAGE", "messaging": [item]}]}
        )
    if platform == "slack":
        return slack.parse_interaction if "interactivity" in name else slack.parse_event
    return teams.parse


def paths(value: Any, path: tuple[Any, ...] = ()) -> Iterator[tuple[Any, ...]]:
    yield path
    if isinstance(value, dict | list):
        children = value.items() if isinstance(value, dict) else enumerate(value)
        for key, child in children:
            yield from paths(child, (*path, key))


def replaced(value: Any, path: tuple[Any, ...], new: Any) -> Any:
    if not path:
        return new
    result = copy.deepcopy(value)
    parent = result
    for key in path[:-1]:
        parent = parent[key]
    parent[path[-1]] = new
    return result


@pytest.mark.parametrize(("platform", "name"), list(samples()))
def test_each_value_replaced_by_an_odd_one(platform: str, name: str) -> None:
    sample = json.loads((FIXTURES / platform / name).read_text())
    if platform == "messenger" and "value" in sample and "entry" not in name:
        sample = sample["value"]  # a notification's messaging item
    parse = parser(platform, name)
    for path in list(paths(sample)):
        for odd in ODD:
            try:
                parsed = parse(replaced(sample, path, odd))
            except MalformedPayloadError:
                continue  # not the platform's shape as a whole: acknowledged as rejected
            for event in parsed.events:
                event.SerializeToString()  # a lone surrogate failed here (or earlier)
            assert not parsed.rejected, (path, odd, parsed.rejected)
