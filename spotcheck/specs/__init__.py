"""The specification catalog (spec ids, test items, limits), loaded from data files."""

from spotcheck.specs.catalog import Catalog, CatalogError, Item, Spec, load_catalog
from spotcheck.specs.limits import Bounds, Season, SeasonalLimit

__all__ = [
    "Bounds",
    "Catalog",
    "CatalogError",
    "Item",
    "Season",
    "SeasonalLimit",
    "Spec",
    "load_catalog",
]
