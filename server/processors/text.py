"""Text processing: language detection (py3langid's bundled model, offline) and entities
(phone numbers in E.164 via phonenumbers, e-mail addresses, URLs, dates, amounts)."""

from __future__ import annotations

import datetime as dt
import functools
import re
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation

import phonenumbers
from py3langid.langid import MODEL_FILE, LanguageIdentifier

from chat.v1 import common_pb2

# Short texts ("ok", "hi") carry too little signal; below these the language stays unknown.
MIN_LETTERS_FOR_LANGUAGE = 12
MIN_LANGUAGE_CONFIDENCE = 0.7

_EMAIL = re.compile(r"(?<![\w.+-])[\w.+-]+@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*\.[A-Za-z]{2,}\b")
_URL = re.compile(r"\bhttps?://[^\s<>\"']+", re.IGNORECASE)
_ISO_DATE = re.compile(r"\b(\d{4})-(\d{2})-(\d{2})\b")
_MONTHS = "january|february|march|april|may|june|july|august|september|october|november|december"
_DAY_MONTH_YEAR = re.compile(rf"\b(\d{{1,2}}) ({_MONTHS}) (\d{{4}})\b", re.IGNORECASE)
_MONTH_DAY_YEAR = re.compile(rf"\b({_MONTHS}) (\d{{1,2}}),? (\d{{4}})\b", re.IGNORECASE)
_SYMBOLS = {"$": "USD", "€": "EUR", "£": "GBP", "¥": "JPY", "₹": "INR"}
_CODES = "USD|EUR|GBP|JPY|INR|CHF|CAD|AUD|BRL|MXN"
_NUMBER = r"\d{1,3}(?:[,.]\d{3})*(?:[.,]\d{1,2})?|\d+(?:[.,]\d{1,2})?"
_AMOUNT_BEFORE = re.compile(rf"(?:([$€£¥₹])\s?|\b({_CODES})\s)({_NUMBER})\b")
_AMOUNT_AFTER = re.compile(rf"\b({_NUMBER})\s?(?:([€£¥₹])|({_CODES})\b)")
_TRAILING_PUNCTUATION = ".,;:!?)]}'\""


@dataclass(frozen=True, slots=True)
class TextAnalysis:
    """What the processor found in one text."""

    language: str
    entities: tuple[common_pb2.Entity, ...]


@functools.cache
def _language_model() -> LanguageIdentifier:
    # Read-only once loaded, and 0.4 s to load: one copy per process, on first use.
    return LanguageIdentifier.from_model_file(MODEL_FILE, norm_probs=True)


class TextProcessor:
    """Detects language and extracts entities."""

    def __init__(self, *, default_phone_region: str = "") -> None:
        self._identifier = _language_model()
        self._region = default_phone_region.upper() or None

    def analyse(self, text: str) -> TextAnalysis:
        """Language and entities of normalized text (offsets in code points)."""
        return TextAnalysis(language=self._language(text), entities=tuple(self._entities(text)))

    def _language(self, text: str) -> str:
        if sum(ch.isalpha() for ch in text) < MIN_LETTERS_FOR_LANGUAGE:
            return ""
        language, confidence = self._identifier.classify(text)
        return str(language) if confidence >= MIN_LANGUAGE_CONFIDENCE else ""

    def _entities(self, text: str) -> list[common_pb2.Entity]:
        found: list[common_pb2.Entity] = []
        taken: list[tuple[int, int]] = []

        def add(
            kind: common_pb2.EntityType.ValueType, start: int, end: int, normalized: str
        ) -> None:
            if any(start < t_end and t_start < end for t_start, t_end in taken):
                return  # already part of an earlier entity (a URL's digits are no phone number)
            taken.append((start, end))
            found.append(
                common_pb2.Entity(
                    type=kind, text=text[start:end], normalized=normalized, start=start, end=end
                )
            )

        for match in _URL.finditer(text):
            end = match.end()
            while end > match.start() and text[end - 1] in _TRAILING_PUNCTUATION:
                end -= 1
            add(common_pb2.ENTITY_TYPE_URL, match.start(), end, text[match.start() : end])
        for match in _EMAIL.finditer(text):
            add(common_pb2.ENTITY_TYPE_EMAIL, match.start(), match.end(), match.group().lower())
        for date_match, day in self._dates(text):
            add(common_pb2.ENTITY_TYPE_DATE, date_match.start(), date_match.end(), day.isoformat())
        for start, end, normalized in _amounts(text):
            add(common_pb2.ENTITY_TYPE_AMOUNT, start, end, normalized)
        for phone in phonenumbers.PhoneNumberMatcher(text, self._region or "ZZ"):
            if phonenumbers.is_valid_number(phone.number):
                e164 = phonenumbers.format_number(phone.number, phonenumbers.PhoneNumberFormat.E164)
                add(common_pb2.ENTITY_TYPE_PHONE_NUMBER, phone.start, phone.end, e164)
        return sorted(found, key=lambda entity: entity.start)

    @staticmethod
    def _dates(text: str) -> list[tuple[re.Match[str], dt.date]]:
        months = {name: index for index, name in enumerate(_MONTHS.split("|"), start=1)}
        dates: list[tuple[re.Match[str], dt.date]] = []
        candidates: list[tuple[re.Match[str], int, int, int]] = []
        candidates += [(m, int(m[1]), int(m[2]), int(m[3])) for m in _ISO_DATE.finditer(text)]
        candidates += [
            (m, int(m[3]), months[m[2].lower()], int(m[1])) for m in _DAY_MONTH_YEAR.finditer(text)
        ]
        candidates += [
            (m, int(m[3]), months[m[1].lower()], int(m[2])) for m in _MONTH_DAY_YEAR.finditer(text)
        ]
        for match, year, month, day in candidates:
            try:
                dates.append((match, dt.date(year, month, day)))
            except ValueError:
                continue  # 2026-02-30 is no date
        return dates


def _amounts(text: str) -> list[tuple[int, int, str]]:
    amounts: list[tuple[int, int, str]] = []
    for match in _AMOUNT_BEFORE.finditer(text):
        currency = _SYMBOLS.get(match[1] or "") or match[2]
        value = _decimal(match[3])
        if currency and value is not None:
            amounts.append((match.start(), match.end(), f"{currency.upper()} {value}"))
    for match in _AMOUNT_AFTER.finditer(text):
        currency = _SYMBOLS.get(match[2] or "") or match[3]
        value = _decimal(match[1])
        if currency and value is not None:
            amounts.append((match.start(), match.end(), f"{currency.upper()} {value}"))
    return amounts


def _decimal(raw: str) -> str | None:
    # "1,234.50" and "1.234,50" both mean 1234.50: the last separator followed by one or two
    # digits is the decimal point; the others group thousands.
    separators = [i for i, ch in enumerate(raw) if ch in ",."]
    if separators and len(raw) - separators[-1] - 1 in (1, 2):
        whole = re.sub(r"[,.]", "", raw[: separators[-1]])
        number = f"{whole}.{raw[separators[-1] + 1 :]}"
    else:
        number = re.sub(r"[,.]", "", raw)
    try:
        return f"{Decimal(number):.2f}"
    except InvalidOperation:
        return None
