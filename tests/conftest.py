"""Shared test setup: Hypothesis profiles and small helpers.

CI runs the ``ci`` profile: derandomized, no example database, and a fixed
example budget from ``HYPOTHESIS_MAX_EXAMPLES`` (default 25). Locally the
``dev`` profile runs more examples; ``HYPOTHESIS_PROFILE=long`` runs many.

``TRITON_INTERPRET=1`` is set here, before any test module is collected: Triton
reads it when it is first imported, and other test modules (transformers, torch's
inductor) import Triton before ``tests/test_triton.py`` would set it, after which
the generated kernels' helpers would not run in the interpreter.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

os.environ.setdefault("TRITON_INTERPRET", "1")

from hypothesis import HealthCheck, settings

_budget = int(os.environ.get("HYPOTHESIS_MAX_EXAMPLES", "25"))
settings.register_profile(
    "ci",
    max_examples=_budget,
    derandomize=True,
    database=None,
    deadline=None,
    print_blob=True,
    suppress_health_check=[HealthCheck.too_slow],
)
settings.register_profile(
    "dev", max_examples=max(_budget, 100), deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
settings.register_profile(
    "long", max_examples=2000, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "examples"
TESTS = ROOT / "tests"


def fresh_python(code: str) -> str:
    """Run ``code`` in a new interpreter that imports this checkout's einstruct and the test models."""
    path = os.pathsep.join([str(ROOT), str(TESTS), os.environ.get("PYTHONPATH", "")])
    result = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": path},
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    return result.stdout
