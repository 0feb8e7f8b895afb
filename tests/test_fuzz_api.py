"""Mutated manifests and hostile API calls (``tests/fuzz_api.py``): an einstruct error with the
model untouched, or a result that is exactly what was asked. CI runs a fixed, derandomized
budget; ``tests/fuzz_long.py`` runs the same checks for as long as you like."""

from __future__ import annotations

import tempfile
from pathlib import Path

from fuzz_api import api_calls, check_call, check_manifest, mutated_manifests, saved
from hypothesis import given


@given(source=mutated_manifests())
def test_mutated_manifests_are_refused_untouched_or_applied_exactly(source):
    with tempfile.TemporaryDirectory() as tmp:
        check_manifest(source, Path(tmp))


@given(call=api_calls())
def test_hostile_api_calls_are_refused_or_sound(call):
    with tempfile.TemporaryDirectory() as tmp:
        check_call(call, Path(tmp))


def test_the_fuzz_targets_reach_both_outcomes(tmp_path):
    """The unmutated manifest restores and a broken one is refused, so both branches run."""
    manifest = saved()[0]
    assert check_manifest(manifest, tmp_path).accepted == 1
    assert check_manifest({**manifest, "format": "1"}, tmp_path).refused == 1
    assert check_call(("param_groups", {"lr": 1e-3}), tmp_path).accepted == 1
    assert check_call(("param_groups", {"lr": 1e-3, "fixed": "nope"}), tmp_path).refused == 1
