"""The query language: weighted mixes of texts and images.

    red circle                      one text
    ./ref.jpg                       one image (image→image, or image→text with kind="text")
    "2:red dress" + ./ref.jpg - "stripes"
                                    2×text + image − text, summed as unit vectors

Terms are split on `` + `` / `` - `` surrounded by spaces, outside quotes. An
unquoted term that looks like an image (a path or an http(s) URL ending in an image
extension) is an image term, whether or not the file exists: the engine then says
which file is missing rather than silently searching for its name as text. Any
quoted term is text. An optional ``W:`` prefix (a number) weights a term; ``-``
negates it.

Backends that must not be parsed (a product title like ``Levi's 501 - slim fit``)
use the query builder (:meth:`mmsearch.engine.SearchIndex.query`) or
``parse_query(text, literal=True)``, which makes the whole string one text term.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mmsearch.errors import BadQueryError

MAX_QUERY_CHARS = 2000
MAX_TERMS = 16
MAX_WEIGHT = 1000.0
_WEIGHT = re.compile(r"^\s*(-?\d+(?:\.\d+)?)\s*:(.*)$", re.S)


TERM_KINDS = ("text", "image", "url")


@dataclass(frozen=True)
class QueryTerm:
    """One part of a query, with a signed ``weight``.

    ``kind`` is "text" (``value`` the text), "image" (``value`` a path, a PIL image or an
    ``(H, W, 3)`` uint8 array) or "url" (``value`` an http(s) image URL).
    """

    weight: float
    kind: str
    value: Any


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
        elif ch in "\"'" and (
            not buf
            or "".join(buf).strip() == ""
            or re.fullmatch(r"\s*-?\d+(\.\d+)?:", "".join(buf))
        ):
            quote = ch
            buf.append(ch)
        elif (
            ch in "+-"
            and i > 0
            and query[i - 1].isspace()
            and i + 1 < len(query)
            and query[i + 1].isspace()
        ):
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


_URL = re.compile(r"^https?://\S+$", re.I)


def looks_like_image_path(text: str) -> bool:
    """True for a single-line string ending in an image extension (``photo.JPG``)."""
    from mmsearch.imageformats import IMAGE_EXTENSIONS

    if "\n" in text or "\x00" in text:
        return False
    try:
        return Path(text).suffix.lower() in IMAGE_EXTENSIONS
    except ValueError:
        return False


def looks_like_image_url(text: str) -> bool:
    """True for an http(s) URL whose path ends in an image extension."""
    from urllib.parse import urlsplit

    if not _URL.match(text):
        return False
    try:
        return looks_like_image_path(urlsplit(text).path)
    except ValueError:
        return False


def classify_term(body: str, quoted: bool) -> str:
    """ "url", "image" or "text" for one unquoted/quoted term body."""
    if quoted:
        return "text"
    if looks_like_image_url(body):
        return "url"
    if looks_like_image_path(body):
        return "image"
    return "text"


def parse_query(query: str, *, literal: bool = False) -> list[QueryTerm]:
    """Parses a query string into weighted terms (``literal``: the whole string is one text).

    >>> parse_query('"2:red dress" + shoes')
    [QueryTerm(weight=2.0, kind='text', value='red dress'), QueryTerm(weight=1.0, kind='text', value='shoes')]
    >>> parse_query("Levi's 501 - slim fit", literal=True)
    [QueryTerm(weight=1.0, kind='text', value="Levi's 501 - slim fit")]
    """
    if not isinstance(query, str) or not query.strip():
        raise BadQueryError("empty query")
    if len(query) > MAX_QUERY_CHARS:
        raise BadQueryError(f"query longer than {MAX_QUERY_CHARS} characters")
    if literal:
        return [QueryTerm(1.0, "text", query.strip())]
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
            if not abs(weight) <= MAX_WEIGHT:
                raise BadQueryError(
                    f"term weights must be between -{MAX_WEIGHT:g} and {MAX_WEIGHT:g}"
                )
        if not body:
            raise BadQueryError(f"empty term in query {query!r}")
        if sign == "-":
            weight = -weight
        terms.append(QueryTerm(weight, classify_term(body, quoted), body))
    if len(terms) > MAX_TERMS:
        raise BadQueryError(f"at most {MAX_TERMS} terms in a query")
    if all(t.weight <= 0 for t in terms):
        raise BadQueryError("a query needs at least one positive term")
    return terms
