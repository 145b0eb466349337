"""Text normalisation, and the resource texts behind ``_text`` and ``_content``.

https://hl7.org/fhir/R4/search.html#text: ``_text`` searches the narrative
(``text.div``), ``_content`` the whole resource. Both are stored at write time as one
normalised string per resource (tags stripped, casefolded, accents removed, whitespace
collapsed) and searched by substring, which needs no word segmentation: 高血压 is found
inside 原发性高血压.
"""

from __future__ import annotations

import html
import re
import unicodedata
from typing import Any

# Strings that are no text worth searching: base64 payloads (Attachment.data, Binary.data)
# and the narrative XHTML, which goes in stripped of its tags instead.
_SKIPPED_KEYS = frozenset({"data", "div"})
_TAG = re.compile(r"<[^>]*>")
_SPACE = re.compile(r"\s+")
# Combining marks after a Latin/Greek/Cyrillic letter (below U+0530) once decomposed: the
# accents that ``normalize`` drops, found by one regex instead of a loop per character.
_ACCENTS = re.compile(
    "(?<=[\x00-\u052f])[\u0300-\u036f\u1ab0-\u1aff\u1dc0-\u1dff\u20d0-\u20ff\ufe20-\ufe2f]+"
)


def normalize(text: str) -> str:
    """Casefold and strip accents (``Ébert`` -> ``ebert``); CJK text is left unchanged."""
    if text.isascii():
        return text.lower()
    decomposed = unicodedata.normalize("NFKD", text.casefold())
    kept: list[str] = []
    for char in decomposed:
        # Only strip marks on Latin/Greek/Cyrillic letters: kana voicing marks are not accents.
        if unicodedata.combining(char) and kept and ord(kept[-1]) < 0x530:
            continue
        kept.append(char)
    # Recompose what NFKD split apart without being an accent (Hangul syllables, kana).
    return unicodedata.normalize("NFC", "".join(kept))


def is_cjk(text: str) -> bool:
    """Whether every character is a CJK ideograph."""
    return bool(text) and all(
        "\u3400" <= c <= "\u9fff" or "\uf900" <= c <= "\ufaff" or "\U00020000" <= c <= "\U0003ffff"
        for c in text
    )


def normalize_text(text: str) -> str:
    """``normalize`` for long texts, whitespace collapsed: the form of ``_text``/``_content``."""
    if not text.isascii():
        decomposed = unicodedata.normalize("NFKD", text.casefold())
        text = unicodedata.normalize("NFC", _ACCENTS.sub("", decomposed))
    else:
        text = text.lower()
    return _SPACE.sub(" ", text).strip()


def strip_tags(xhtml: str) -> str:
    """The text of an XHTML fragment: tags removed, entities decoded."""
    return html.unescape(_TAG.sub(" ", xhtml))


def narrative_text(resource: dict[str, Any]) -> str | None:
    """The normalised narrative of a resource, for ``_text``; None when it has none."""
    narrative = resource.get("text")
    div = narrative.get("div") if type(narrative) is dict else None
    if type(div) is not str:
        return None
    return normalize_text(strip_tags(div)) or None


def _strings(node: Any, out: list[str]) -> None:
    for key, value in node.items():
        kind = type(value)
        if kind is str:
            if key not in _SKIPPED_KEYS:
                out.append(value)
        elif kind is dict:
            if key != "text":  # the narrative goes in once, stripped of its tags
                _strings(value, out)
        elif kind is list:
            for item in value:
                if type(item) is dict:
                    _strings(item, out)
                elif type(item) is str:
                    out.append(item)


def content_text(resource: dict[str, Any], narrative: str | None) -> str | None:
    """Every string value of a resource plus its (normalised) narrative, for ``_content``."""
    parts: list[str] = []
    try:
        _strings(resource, parts)
    except RecursionError:  # the validator refuses such nesting; never fail a write here
        return None
    if narrative:
        parts.append(narrative)
    # Sorted and deduplicated: the same text whatever the key order (PostgreSQL's JSONB
    # reorders keys); words are matched one by one, so the order carries no meaning.
    return normalize_text(" ".join(sorted(set(parts)))) or None


def search_words(text: str) -> list[str]:
    """The words of a ``_text``/``_content`` search value (all must occur), normalised."""
    return normalize_text(text).split(" ") if text.strip() else []
