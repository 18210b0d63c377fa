"""chat-server's process setup."""

from __future__ import annotations

import gc
from collections.abc import Iterator

import pytest

from server.main import GC_YOUNG_THRESHOLD, tune_gc


@pytest.fixture
def restored_gc() -> Iterator[None]:
    threshold = gc.get_threshold()
    yield
    gc.unfreeze()
    gc.set_threshold(*threshold)


@pytest.mark.usefixtures("restored_gc")
def test_startup_objects_are_frozen_and_young_collections_are_rarer() -> None:
    _, older, oldest = gc.get_threshold()
    tune_gc()
    assert gc.get_freeze_count() > 0  # what exists now is left out of collections
    assert gc.get_threshold() == (GC_YOUNG_THRESHOLD, older, oldest)
