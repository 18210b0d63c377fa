"""Text formatting per platform, and splitting long texts at word boundaries.

Replies are written in a small Markdown subset: **bold**, *italic* or _italic_, ~~strike~~,
`code` and [text](url). Each platform gets its own form of it.
"""

from __future__ import annotations

import re

_BOLD = re.compile(r"\*\*(.+?)\*\*", re.DOTALL)
_STAR_ITALIC = re.compile(r"(?<![*\w])\*(?!\s)(.+?)(?<!\s)\*(?![*\w])", re.DOTALL)
_STRIKE = re.compile(r"~~(.+?)~~", re.DOTALL)
_LINK = re.compile(r"\[([^\]]+)\]\((https?://[^)\s]+)\)")
_BOLD_MARK = "\x00B\x00"


def to_whatsapp(text: str) -> str:
    """WhatsApp: *bold*, _italic_, ~strike~; links as "text (url)"."""
    text = _LINK.sub(r"\1 (\2)", text)
    text = _BOLD.sub(lambda m: _BOLD_MARK + m.group(1) + _BOLD_MARK, text)
    text = _STAR_ITALIC.sub(r"_\1_", text)
    text = _STRIKE.sub(r"~\1~", text)
    return text.replace(_BOLD_MARK, "*")


def to_slack(text: str) -> str:
    """Slack mrkdwn: *bold*, _italic_, ~strike~, <url|text>; &, < and > escaped."""
    links: list[str] = []

    def keep(match: re.Match[str]) -> str:
        links.append(f"<{match.group(2)}|{_slack_escape(match.group(1))}>")
        return f"\x00L{len(links) - 1}\x00"

    text = _LINK.sub(keep, text)
    text = _slack_escape(text)
    text = to_whatsapp(text)  # the same bold, italic and strike marks
    for index, link in enumerate(links):
        text = text.replace(f"\x00L{index}\x00", link)
    return text


def to_plain(text: str) -> str:
    """Messenger: no formatting; the marks are removed, links kept as "text (url)"."""
    text = _LINK.sub(r"\1 (\2)", text)
    text = _BOLD.sub(r"\1", text)
    text = _STAR_ITALIC.sub(r"\1", text)
    return _STRIKE.sub(r"\1", text)


def _slack_escape(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def split_text(text: str, limit: int) -> list[str]:
    """Pieces of at most ``limit`` characters, cut at a paragraph, line or word boundary
    where there is one (a single overlong word is cut where it must be)."""
    pieces: list[str] = []
    rest = text.strip()
    while len(rest) > limit:
        window = rest[: limit + 1]
        cut = max(window.rfind("\n\n"), window.rfind("\n"), window.rfind(" "))
        if cut <= limit // 2:
            cut = limit
        pieces.append(rest[:cut].rstrip())
        rest = rest[cut:].lstrip()
    if rest:
        pieces.append(rest)
    return pieces
