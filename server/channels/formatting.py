"""Text formatting per platform, and splitting long texts at word boundaries.

Replies are written in a small Markdown subset: **bold**, *italic* or _italic_, ~~strike~~,
`code` and [text](url). Each platform gets its own form of it.
"""

from __future__ import annotations

import re

from chat.v1 import common_pb2

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


def media_label(media: common_pb2.MediaContent) -> str:
    """Media where the file itself cannot go: its caption and its name, as text."""
    return " ".join(filter(None, [media.caption, f"[{media.file_name or media.mime_type}]"]))


def _slack_escape(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


#: Slack's <url|text> links and &amp;-style entities: a piece never ends inside one.
SLACK_ATOMS = re.compile(r"<[^<>\n]*>|&(?:amp|lt|gt);")


def split_text(text: str, limit: int, atoms: re.Pattern[str] | None = None) -> list[str]:
    """Pieces of at most ``limit`` characters, cut at a paragraph, line or word boundary
    where there is one (a single overlong word is cut where it must be). No cut falls inside
    a match of ``atoms`` (a link, an entity) unless that match alone is longer than a piece."""
    pieces: list[str] = []
    rest = text.strip()
    while len(rest) > limit:
        spans = []
        for match in atoms.finditer(rest) if atoms else ():
            if match.start() > limit:
                break
            spans.append(match.span())

        def inside(cut: int, spans: list[tuple[int, int]] = spans) -> bool:
            return any(start < cut < end for start, end in spans)

        window = rest[: limit + 1]
        cut = -1
        for boundary in ("\n\n", "\n", " "):
            at = window.rfind(boundary)
            while at > 0 and inside(at):
                at = window.rfind(boundary, 0, at)
            cut = max(cut, at)
        if cut <= limit // 2:
            cut = limit
            straddling = [start for start, end in spans if start < cut < end]
            if straddling and straddling[0] > 0:
                cut = straddling[0]  # the link or entity starts the next piece
        pieces.append(rest[:cut].rstrip())
        rest = rest[cut:].lstrip()
    if rest:
        pieces.append(rest)
    return pieces
