"""The kinds of setting the backends share, each with one rule wherever it is declared.

A setting two stores have (``document_ttl``, ``poll_interval``, a timeout) must accept and
refuse the same values on both: each store declares it with its own default and help, as a
``Seconds`` or a ``Count``, and the rule comes from here. Durations are finite; a duration
something waits for in a loop (``poll_interval``, a connection timeout) is also above 0,
since 0 would make that loop spin.
"""

from __future__ import annotations

import math
from typing import Any

from traitlets import Float, HasTraits, Int, TraitError, TraitType


class Seconds(Float):  # type: ignore[type-arg]
    """Seconds: a finite number >= 0, or > 0 with ``positive=True`` (None where allowed)."""

    def __init__(self, default_value: Any = None, *, positive: bool = False, **kwargs: Any):
        super().__init__(default_value, **kwargs)
        self.positive = positive

    def validate(self, obj: Any, value: Any) -> Any:
        value = super().validate(obj, value)
        if math.isfinite(value) and (value > 0 if self.positive else value >= 0):
            return value
        rule = "a number of seconds " + ("> 0" if self.positive else ">= 0")
        if self.allow_none:
            rule = "None or " + rule
        raise TraitError(f"{type(obj).__name__}.{self.name} must be {rule}, got {value!r}")


class Count(Int):  # type: ignore[type-arg]
    """A whole number >= 0 (None where allowed)."""

    def validate(self, obj: Any, value: Any) -> Any:
        value = super().validate(obj, value)
        if value >= 0:
            return value
        raise TraitError(f"{type(obj).__name__}.{self.name} must be >= 0, got {value!r}")


def checked(store: HasTraits, name: str) -> Any:
    """``store.<name>``, checked by the rule of the trait its class declares even where a
    subclass replaced the trait by a plain class attribute (the seed's way to configure a
    store, which traitlets does not validate)."""
    value = getattr(store, name)
    if store.has_trait(name):
        return value
    for klass in type(store).__mro__:
        trait = klass.__dict__.get(name)
        if isinstance(trait, TraitType):
            if value is None and trait.allow_none:
                return None
            return trait.validate(store, value)
    return value
