"""The settings of the libraries our stores replace, under their own names.

Users come from ypy-websocket 0.12.4, pycrdt-store 0.1.5 and jupyter-server-ydoc 3.x (the
store of jupyter-collaboration) with their config files (``c.SQLiteYStore.<name> = ...``)
and subclasses (``class MyStore(SQLiteYStore): <name> = ...``). A name they set must either
work here or stop them with a message saying what to use instead; it is never dropped with
traitlets' "not recognized" warning. Each store class declares the names that concern it
(``ttl_alias()``, ``unsupported(name)``) and calls ``apply(self)`` once at the end of its
``__init__``, when config, keyword arguments and class attributes are all in place.

- ``squash_after_inactivity_of`` (pycrdt-store, jupyter-server-ydoc) is ``document_ttl``.
  pycrdt-store lets it silently win over ``document_ttl``; here two different values are an
  error naming both (one of them is a mistake, and we cannot know which).
- pycrdt-store 0.1.5's other SQLite settings have no counterpart worth mapping (our
  compaction replaces them): only their "off" value is accepted, anything else raises a
  ``TraitError`` naming the setting to use instead (``UNSUPPORTED``).
- ``version``: both upstreams let a subclass change the format version (and then move every
  existing file aside). Our stores read and write version 2 only, so another value is
  reported once per class and value, and ignored.
"""

from __future__ import annotations

import math
import threading
from typing import Any, NoReturn

from traitlets import Float, HasTraits, TraitError, TraitType, link

#: pycrdt-store's (and jupyter-server-ydoc 3.x's) name for ``document_ttl``.
TTL_ALIAS = "squash_after_inactivity_of"

#: The format version every store of ours reads and writes (``VERSION:2`` logs, SQLite
#: ``user_version`` 2, ``BaseYStore.version``).
OUR_VERSION = 2


class Refusal:
    """Why an upstream setting is refused and what to use instead."""

    def __init__(self, off: tuple[Any, ...], off_words: str, why: str) -> None:
        self.off = off  # values meaning "off" upstream: accepted, they change nothing
        self.off_words = off_words
        self.why = why


#: pycrdt-store 0.1.5 SQLiteYStore settings that our SQLiteYStore refuses (other than off).
UNSUPPORTED: dict[str, Refusal] = {
    "squash_history_older_than": Refusal(
        (None,),
        "None (its default)",
        "pycrdt-store's age limit on history does not exist here. Our SQLiteYStore bounds "
        "history by size: once compact_after_updates updates or compact_after_bytes bytes "
        "follow a document's snapshot, they are squashed into a new one; and a write after "
        "document_ttl (alias squash_after_inactivity_of) idle seconds squashes first. Use "
        "those.",
    ),
    "squash_no_more_often_than": Refusal(
        (None, 0),
        "None or 0",
        "pycrdt-store's limit on how often squashing runs has nothing to limit here: a "
        "document_ttl squash happens at most once per idle period, and compaction "
        "(compact_after_updates, compact_after_bytes) runs in the background, off the "
        "write path. Remove it.",
    ),
    "checkpoint_interval": Refusal(
        (None, 0),
        "None or 0 (off)",
        "pycrdt-store's checkpoints (a merged copy of the document every N updates, beside "
        "the full history) are not written here: a document loads from its newest snapshot "
        "plus the updates after it, and compact_after_updates (default 1000) sets how many "
        "updates may follow a snapshot. Unlike a checkpoint, a snapshot replaces the history "
        "it covers. Use compact_after_updates.",
    ),
    "cleanup_when_db_size_above": Refusal(
        (None, 0),
        "None or 0 (off)",
        "pycrdt-store's database size limit is not needed here: every document is compacted "
        "automatically (compact_after_updates, compact_after_bytes) and the freed pages go "
        "back to the file system, so the file does not grow with history; `jupyter ystore "
        "compact --all` shrinks it at once.",
    ),
    "_compress": Refusal(
        (None,),
        "None",
        "pycrdt-store's compression callbacks are not supported: rows stay plain Yjs updates, "
        "so that ypy-websocket and pycrdt-store can still read the database (compaction "
        "keeps it small). Remove the callbacks.",
    ),
    "_decompress": Refusal(
        (None,),
        "None",
        "pycrdt-store's compression callbacks are not supported: rows stay plain Yjs updates, "
        "so that ypy-websocket and pycrdt-store can still read the database (compaction "
        "keeps it small). Remove the callbacks.",
    ),
}


def _refusal_message(cls_name: str, name: str, value: Any) -> str:
    refusal = UNSUPPORTED[name]
    return (
        f"{cls_name}.{name} = {value!r} is not supported (a pycrdt-store 0.1.5 setting). "
        f"{refusal.why} Only {refusal.off_words} is accepted."
    )


def _is_off(refusal: Refusal, value: Any) -> bool:
    return any(value is off or (off is not None and value == off) for off in refusal.off)


class Unsupported(TraitType):  # type: ignore[type-arg]
    """An upstream setting we refuse: its "off" values pass, any other value raises a
    TraitError saying what to use instead, whenever it is set (config, keyword argument,
    attribute before or after ``__init__``). Subclass attributes are checked by ``apply``."""

    default_value = None
    allow_none = True
    info_text = "refused unless off"

    def __init__(self, name: str, *, config: bool = True) -> None:
        refusal = UNSUPPORTED[name]
        help_text = (
            f"Not supported (pycrdt-store 0.1.5's SQLiteYStore setting): {refusal.why} Only "
            f"{refusal.off_words} is accepted; any other value is an error."
        )
        super().__init__(default_value=None, allow_none=True, config=config, help=help_text)
        self._upstream_name = name

    def class_init(self, cls: type[HasTraits], name: str | None) -> None:
        if name != self._upstream_name:
            raise TypeError(f"Unsupported({self._upstream_name!r}) assigned to {name!r}")
        super().class_init(cls, name)

    def validate(self, obj: Any, value: Any) -> Any:
        assert self.name is not None
        if _is_off(UNSUPPORTED[self.name], value):
            return value
        raise TraitError(_refusal_message(type(obj).__name__, self.name, value))


def unsupported(name: str) -> Unsupported:
    """The trait refusing pycrdt-store's setting ``name`` (a key of ``UNSUPPORTED``)."""
    return Unsupported(name, config=not name.startswith("_"))


def ttl_alias() -> Float:
    """The ``squash_after_inactivity_of`` trait of a store that has ``document_ttl``."""
    return Float(
        None,
        allow_none=True,
        config=True,
        help="""Alias of document_ttl: pycrdt-store's and jupyter-server-ydoc 3.x's name for
        the same setting (seconds of inactivity after which the next write first squashes
        the document's history). Set either name; both set to different values is an
        error.""",
    )


def refuse_compression(self: Any, compress: Any, decompress: Any) -> NoReturn:
    """pycrdt-store's ``register_compression_callbacks``, refused with the reason."""
    raise NotImplementedError(_refusal_message(type(self).__name__, "_compress", compress))


# ---------------------------------------------------------------------- at __init__

_warned_versions: set[tuple[type, str]] = set()
_warned_lock = threading.Lock()


def apply(store: Any) -> None:
    """Check and map the upstream names of a newly made ``store`` (end of ``__init__``)."""
    _check_version(store)
    cls = type(store)
    for name in UNSUPPORTED:
        declared = _declared_trait(cls, name)
        if isinstance(declared, Unsupported) and not store.has_trait(name):
            # a subclass replaced the trait by a plain class attribute: check its value
            value = getattr(store, name, None)
            if not _is_off(UNSUPPORTED[name], value):
                raise TraitError(_refusal_message(cls.__name__, name, value))
    if isinstance(_declared_trait(cls, TTL_ALIAS), Float):
        _resolve_ttl_alias(store)


def _declared_trait(cls: type, name: str) -> Any:
    """The trait a store class of ours declares as ``name`` (even if a subclass shadows it)."""
    for klass in cls.__mro__:
        value = klass.__dict__.get(name)
        if isinstance(value, TraitType):
            return value
    return None


def _seconds(store: Any, name: str) -> float | None:
    """``store.<name>`` as None or seconds >= 0 (a subclass attribute is not validated by
    traitlets, so it is checked here, naming the setting)."""
    value = getattr(store, name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TraitError(
            f"{type(store).__name__}.{name} must be None or a number of seconds, got {value!r}"
        )
    if not (value >= 0 and math.isfinite(value)):
        raise TraitError(
            f"{type(store).__name__}.{name} must be None or a number of seconds >= 0, "
            f"got {value!r}"
        )
    return float(value)


def _resolve_ttl_alias(store: Any) -> None:
    """Make ``document_ttl`` and its alias one setting: refuse two different values, copy
    the one set to the other, and keep them equal afterwards where both are traits."""
    cls_name = type(store).__name__
    alias = _seconds(store, TTL_ALIAS)
    ttl = _seconds(store, "document_ttl")
    if alias is not None and ttl is not None and alias != ttl:
        raise TraitError(
            f"{cls_name}.{TTL_ALIAS} = {alias:g} and {cls_name}.document_ttl = {ttl:g} are one "
            f"setting ({TTL_ALIAS} is pycrdt-store's and jupyter-server-ydoc's name for "
            "document_ttl) and they disagree: set only one of them"
        )
    value = alias if alias is not None else ttl
    if value is not None:
        for name in ("document_ttl", TTL_ALIAS):
            if getattr(store, name) is None:
                setattr(store, name, value)
    if store.has_trait(TTL_ALIAS) and store.has_trait("document_ttl"):
        link((store, "document_ttl"), (store, TTL_ALIAS))


def _check_version(store: Any) -> None:
    """Report once per class and value a ``version`` other than ours (ypy-websocket and
    pycrdt-store would write it and move older files aside; ours ignore it)."""
    version = getattr(store, "version", OUR_VERSION)
    if version == OUR_VERSION and type(version) is int:
        return
    key = (type(store), repr(version))
    with _warned_lock:
        if key in _warned_versions:
            return
        _warned_versions.add(key)
    store.log.warning(
        "YStore version mismatch ignored: %s.version = %r, but jupyter_ystore's stores "
        "always read and write format version %d (VERSION:%d logs, SQLite user_version %d) "
        "and never move a file aside for its version; remove the version attribute",
        type(store).__name__,
        version,
        OUR_VERSION,
        OUR_VERSION,
        OUR_VERSION,
    )
