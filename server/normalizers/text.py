"""Text normalization: Unicode NFC, control characters removed, whitespace collapsed."""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass

# Zero-width joiner and non-joiner are format characters that carry meaning (emoji sequences,
# Persian and Indic scripts); every other control or format character goes.
_KEEP_FORMAT = {"\u200c", "\u200d"}
_WHITESPACE_CONTROLS = str.maketrans({"\t": " ", "\v": " ", "\f": " "})
_SPACES = re.compile(r"[^\S\n]+")
_BLANK_LINES = re.compile(r"\n{3,}")


@dataclass(frozen=True, slots=True)
class NormalizedText:
    """The normalized text and what normalization found."""

    text: str
    removed_characters: int
    words: int


def normalize_text(raw: str) -> NormalizedText:
    """NFC, drop control/format characters (keeping newlines and ZWJ/ZWNJ), collapse runs of
    spaces within lines and of blank lines, trim."""
    # Tabs and other whitespace controls are spacing, not junk: they collapse like spaces.
    spaced = raw.replace("\r\n", "\n").replace("\r", "\n").translate(_WHITESPACE_CONTROLS)
    composed = unicodedata.normalize("NFC", spaced)
    kept = [
        ch
        for ch in composed
        if ch == "\n" or ch in _KEEP_FORMAT or unicodedata.category(ch) not in ("Cc", "Cf", "Cs")
    ]
    removed = len(composed) - len(kept)
    lines = [_SPACES.sub(" ", line).strip() for line in "".join(kept).split("\n")]
    text = _BLANK_LINES.sub("\n\n", "\n".join(lines)).strip()
    return NormalizedText(text=text, removed_characters=removed, words=len(text.split()))
