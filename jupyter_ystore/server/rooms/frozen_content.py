"""A document's content kept as text between saves, not as Python objects.

A room keeps the content it last saved to or loaded from its file (the *base*) for as long as
it is open, to merge a change made to the file on disk and to skip saves that would write
the same content again. Kept as Python objects, a notebook's content is hundreds of dicts and
lists (653 for 150 cells with outputs), and every full garbage collection walks each of them
while the event loop stands still: the pause grew with every notebook open. As canonical
JSON text it is one string the collector does not track. Comparing costs a ``json.dumps``
(0.4 ms for those 150 cells, against 8 ms to read the content out of the document), and
the objects come back only for a merge.
"""

from __future__ import annotations

import json
from typing import Any

_SEPARATORS = (",", ":")


def _json(content: Any) -> str:
    # sort_keys: the same content always gives the same text (a document's maps and the
    # file's JSON may list their keys in different orders).
    return json.dumps(content, sort_keys=True, separators=_SEPARATORS, ensure_ascii=False)


class FrozenContent:
    """Content as ``file_document(...).get()`` gives it: a notebook's dict kept as JSON text;
    text (str) and bytes kept as they are (neither is tracked by the collector)."""

    __slots__ = ("_text", "_raw")

    def __init__(self, content: Any) -> None:
        if isinstance(content, (dict, list)):
            self._text: str | None = _json(content)
            self._raw: Any = None
        else:
            self._text = None
            self._raw = content

    def content(self) -> Any:
        """The content again (a fresh copy of a notebook's dicts and lists)."""
        return json.loads(self._text) if self._text is not None else self._raw

    def json_text(self) -> str | None:
        """A notebook's content as JSON text; None for text and bytes."""
        return self._text

    def matches(self, content: Any) -> bool:
        """Whether ``content`` is this content (what it would be saved as, key order aside)."""
        if self._text is not None:
            return isinstance(content, (dict, list)) and _json(content) == self._text
        return not isinstance(content, (dict, list)) and content == self._raw

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, FrozenContent):
            return NotImplemented
        return self._text == other._text and (self._text is not None or self._raw == other._raw)

    def __repr__(self) -> str:
        size = len(self._text) if self._text is not None else len(self._raw or "")
        kind = "json" if self._text is not None else type(self._raw).__name__
        return f"FrozenContent({kind}, {size} chars)"
