"""Units as written by labs and in the catalog, compared by meaning rather than by spelling."""

from __future__ import annotations

import unicodedata


def unit_key(unit: str) -> str:
    """A unit as compared: compatibility forms folded (℃, µ, ³), case, spaces and brackets ignored,
    so "% (m/m)", "%m/m" and "% M/M" are one unit."""
    folded = unicodedata.normalize("NFKC", unit).casefold()
    return "".join(c for c in folded if not c.isspace() and c not in "()[]")
