"""Test-wide setup: logs go to stderr, as in the real processes."""

from __future__ import annotations

from adapters.runtime import configure_logging
from spotcheck.settings import Settings

configure_logging(Settings())
