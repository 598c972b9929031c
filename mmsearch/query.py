"""The query language: weighted mixes of texts and images.

    red circle                      one text
    ./ref.jpg                       one image (image→image, or image→text with kind="text")
    "2:red dress" + ./ref.jpg - "stripes"
                                    2×text + image − text, summed as unit vectors

Terms are split on `` + `` / `` - `` surrounded by spaces, outside quotes. A term
is an image when it names an existing image file, or text otherwise. An optional
``W:`` prefix (a number) weights a term; ``-`` negates it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from mmsearch.errors import BadQueryError

MAX_QUERY_CHARS = 2000
MAX_TERMS = 16
_WEIGHT = re.compile(r"^\s*(-?\d+(?:\.\d+)?)\s*:(.*)$", re.S)


@dataclass(frozen=True)
class QueryTerm:
    """One part of a query: ``kind`` is "text" or "image"; ``value`` the text or the path."""

    weight: float
    kind: str
    value: str


def _split(query: str) -> list[tuple[str, str]]:
    """Splits on unquoted `` + `` / `` - ``; returns (sign, raw term) pairs."""
    parts: list[tuple[str, str]] = []
    sign, buf, quote = "+", [], ""
    lead = re.match(r"^\s*([+-])\s+", query)
    if lead:  # a leading sign: "- stripes"
        sign, query = lead.group(1), query[lead.end() :]
    i = 0
    while i < len(query):
        ch = query[i]
        if quote:
            if ch == quote:
                quote = ""
            buf.append(ch)
        elif ch in "\"'" and (not buf or "".join(buf).strip() == "" or re.fullmatch(r"\s*-?\d+(\.\d+)?:", "".join(buf))):
            quote = ch
            buf.append(ch)
        elif ch in "+-" and i > 0 and query[i - 1].isspace() and i + 1 < len(query) and query[i + 1].isspace():
            parts.append((sign, "".join(buf)))
            sign, buf = ch, []
        else:
            buf.append(ch)
        i += 1
    if quote:
        raise BadQueryError("unbalanced quote in query")
    parts.append((sign, "".join(buf)))
    return parts


def _unquote(text: str) -> str:
    text = text.strip()
    if len(text) >= 2 and text[0] == text[-1] and text[0] in "\"'":
        return text[1:-1]
    return text


def looks_like_image_path(text: str) -> bool:
    from mmsearch.imageio import IMAGE_EXTENSIONS

    return Path(text).suffix.lower() in IMAGE_EXTENSIONS and "\n" not in text


def parse_query(query: str) -> list[QueryTerm]:
    """Parses a query string into weighted terms.

    >>> parse_query('"2:red dress" + shoes')
    [QueryTerm(weight=2.0, kind='text', value='red dress'), QueryTerm(weight=1.0, kind='text', value='shoes')]
    """
    if not isinstance(query, str) or not query.strip():
        raise BadQueryError("empty query")
    if len(query) > MAX_QUERY_CHARS:
        raise BadQueryError(f"query longer than {MAX_QUERY_CHARS} characters")
    terms: list[QueryTerm] = []
    for sign, raw in _split(query):
        raw = raw.strip()
        if not raw:
            raise BadQueryError(f"empty term in query {query!r}")
        quoted = raw[0] in "\"'"
        body = _unquote(raw)
        weight = 1.0
        match = _WEIGHT.match(body)
        if match:
            weight, body = float(match.group(1)), match.group(2).strip()
        if not body:
            raise BadQueryError(f"empty term in query {query!r}")
        if sign == "-":
            weight = -weight
        kind = "image" if (not quoted and looks_like_image_path(body) and Path(body).is_file()) else "text"
        terms.append(QueryTerm(weight, kind, body))
    if len(terms) > MAX_TERMS:
        raise BadQueryError(f"at most {MAX_TERMS} terms in a query")
    if all(t.weight <= 0 for t in terms):
        raise BadQueryError("a query needs at least one positive term")
    return terms
