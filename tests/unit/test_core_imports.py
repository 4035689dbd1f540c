"""The core imports no broker, database or HTTP library (STYLE.md, habit 1)."""

from __future__ import annotations

import json
import subprocess
import sys

CORE = (
    "spotcheck.rounding",
    "spotcheck.specs",
    "spotcheck.verdict",
    "spotcheck.events",
    "spotcheck.topics",
    "spotcheck.settings",
    "spotcheck.samples",
    "spotcheck.sample_cache",
    "spotcheck.tasks",
    "spotcheck.labs",
    "spotcheck.centers",
    "spotcheck.custody",
    "spotcheck.scheduling",
    "spotcheck.deadlines",
    "spotcheck.cases",
    "spotcheck.case_model",
    "spotcheck.case_rules",
    "spotcheck.clock",
    "spotcheck.draws",
    "spotcheck.draw_stats",
    "spotcheck.registry",
    "spotcheck.registry_demo",
    "spotcheck.lims",
    "spotcheck.units",
    "spotcheck.cli",
)
FORBIDDEN = ("aiokafka", "faust", "asyncpg", "aiohttp")

PROBE = f"""
import importlib, json, sys
for name in {CORE!r}:
    importlib.import_module(name)
loaded = sorted({{m.split(".")[0] for m in sys.modules}} & set({FORBIDDEN!r}))
print(json.dumps(loaded))
"""


def test_core_modules_import_no_io_library() -> None:
    done = subprocess.run(
        [sys.executable, "-c", PROBE], capture_output=True, text=True, timeout=120, check=False
    )
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == []
