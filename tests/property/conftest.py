"""Hypothesis profiles: `ci` (the default) is bounded and derandomized, so CI is repeatable;
`fuzz` (`make fuzz`, HYPOTHESIS_PROFILE=fuzz) runs a long random campaign and keeps what it
finds in .hypothesis/ to replay first next time. Whatever it finds becomes a regression test."""

from __future__ import annotations

import os

from hypothesis import settings

# No per-example deadline: the examples are calls to real servers on a shared machine.
settings.register_profile("ci", max_examples=100, derandomize=True, deadline=None, database=None)
settings.register_profile("fuzz", max_examples=3000, deadline=None)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))
