"""Text cleaning for catalog fields: HTML, entities, Unicode NFKC, control characters and whitespace.

:func:`clean_text` returns the cleaned text and the names of the cleanings that changed it, so that
ingestion can count them per kind (``CatalogReport.cleaned``).
"""
from __future__ import annotations

import html
import re
import unicodedata
from html.parser import HTMLParser

HTML_STRIPPED = "html_stripped"
ENTITIES_DECODED = "entities_decoded"
UNICODE_NORMALISED = "unicode_normalised"
CONTROL_REMOVED = "control_chars_removed"
WHITESPACE_NORMALISED = "whitespace_normalised"

# Only real HTML tag names count as markup, so "size <Large>" or "5 <10 mm" stay as they are.
_TAGS = (
    "a|abbr|b|big|blockquote|body|br|center|code|dd|div|dl|dt|em|font|h[1-6]|head|hr|html|i|img|li|"
    "meta|ol|p|pre|s|section|small|span|strike|strong|style|sub|sup|script|table|tbody|td|tfoot|th|"
    "thead|title|tr|tt|u|ul|article|header|footer|nav|main|figure|figcaption|label|link|noscript|wbr"
)
_TAG_NAMES = frozenset(re.sub(r"h\[1-6\]", "h1|h2|h3|h4|h5|h6", _TAGS).split("|"))
_TAG_RE = re.compile(rf"<\s*/?\s*(?:{_TAGS})\b[^<>]*>|<!--.*?-->", re.IGNORECASE | re.DOTALL)
_ENTITY_RE = re.compile(r"&(?:#[0-9]{1,7}|#[xX][0-9a-fA-F]{1,6}|[A-Za-z][A-Za-z0-9]{1,31});")
_SKIP_CONTENT = frozenset({"script", "style", "head", "title", "noscript"})
_INLINE = frozenset({"a", "abbr", "b", "big", "code", "em", "font", "i", "s", "small", "span", "strike",
                     "strong", "sub", "sup", "tt", "u", "label", "wbr"})
# Format characters that are invisible noise in product text (zero-width space, BOM, soft hyphen, word joiner).
_INVISIBLE = frozenset({"\u200b", "\ufeff", "\u00ad", "\u2060"})


class _Stripper(HTMLParser):
    """Collects text; block tags become spaces, script/style content is dropped, unknown tags kept as text."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.parts: list[str] = []
        self._skip = 0

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag not in _TAG_NAMES:
            self.parts.append(self.get_starttag_text() or "")
        elif tag in _SKIP_CONTENT:
            self._skip += 1
        elif tag not in _INLINE:
            self.parts.append(" ")

    def handle_startendtag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag not in _TAG_NAMES:
            self.parts.append(self.get_starttag_text() or "")
        elif tag not in _INLINE:
            self.parts.append(" ")

    def handle_endtag(self, tag: str) -> None:
        if tag not in _TAG_NAMES:
            self.parts.append(f"</{tag}>")
        elif tag in _SKIP_CONTENT:
            self._skip = max(0, self._skip - 1)
        elif tag not in _INLINE:
            self.parts.append(" ")

    def handle_data(self, data: str) -> None:
        if not self._skip:
            self.parts.append(data)


def strip_html(s: str) -> tuple[str, set[str]]:
    """Remove HTML markup and decode entities; returns the text and ``{HTML_STRIPPED, ENTITIES_DECODED}`` as applied."""
    applied: set[str] = set()
    if _TAG_RE.search(s):
        parser = _Stripper()
        parser.feed(s)
        parser.close()
        s = "".join(parser.parts)
        applied.add(HTML_STRIPPED)
    if "&" in s:
        decoded = _ENTITY_RE.sub(lambda m: html.unescape(m.group(0)), s)
        if decoded != s:
            s = decoded
            applied.add(ENTITIES_DECODED)
    return s, applied


def clean_text(s: str) -> tuple[str, set[str]]:
    """Clean one text value for the catalog.

    Steps, in order: HTML stripped (tags removed, ``<br>``/``<p>``/``<li>`` become spaces, script and
    style content dropped) and entities decoded; Unicode NFKC (full-width letters, non-breaking spaces,
    ligatures); control and invisible format characters removed; whitespace collapsed and stripped.
    Returns the text and the set of cleaning names (module constants) that changed it.
    """
    s, applied = strip_html(s)
    normalised = unicodedata.normalize("NFKC", s)
    if normalised != s:
        applied.add(UNICODE_NORMALISED)
        s = normalised
    if not s.isprintable():
        s, removed, spaced = _drop_control(s)
        if removed:
            applied.add(CONTROL_REMOVED)
        if spaced:
            applied.add(WHITESPACE_NORMALISED)
    collapsed = " ".join(s.split())
    if collapsed != s:
        applied.add(WHITESPACE_NORMALISED)
    return collapsed, applied


def _drop_control(s: str) -> tuple[str, bool, bool]:
    """Drop control and invisible format characters; tabs and newlines become spaces.

    Returns the text, whether anything was removed and whether any whitespace control was replaced.
    """
    out: list[str] = []
    removed = spaced = False
    for ch in s:
        if ch in _INVISIBLE:
            removed = True
        elif unicodedata.category(ch) == "Cc":
            if ch.isspace():
                out.append(" ")
                spaced = True
            else:
                removed = True
        else:
            out.append(ch)
    return "".join(out), removed, spaced


TRUE_WORDS = frozenset({"1", "true", "yes", "y", "on", "in stock", "in_stock", "instock"})
FALSE_WORDS = frozenset({"0", "false", "no", "n", "off", "out of stock", "out_of_stock", "outofstock"})


def parse_bool(text: str) -> bool:
    """The engine's one reading of a yes/no text (settings, query strings, catalog stock flags, the CLI):
    case and surrounding space do not matter; anything else raises ``ValueError``."""
    word = text.strip().lower()
    if word in TRUE_WORDS:
        return True
    if word in FALSE_WORDS:
        return False
    raise ValueError(f"expected true or false, got {text!r}")


_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f]")  # Unicode category Cc: NUL, tab, newline, DEL, C1 codes


def text_problem(text: str, *, controls: bool = True) -> str | None:
    """Why ``text`` is not clean text, or None. Clean text encodes as UTF-8 (a lone surrogate, as from a
    JSON ``"\\ud800"``, does not) and, with ``controls=False``, holds no control character (Unicode Cc:
    NUL, tab, newline, ...)."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return "must be valid Unicode text (it holds a lone surrogate)"
    if not controls and _CONTROL.search(text):
        return "must not hold control characters (newline, tab, NUL, ...)"
    return None
