"""Mutated specs either compile to exactly their dense matrix or are refused with an einstruct
error (``tests/fuzzing.py``). CI runs a fixed, derandomized budget; ``tests/fuzz_long.py``
runs the same check for as long as you like (CONTRIBUTING.md)."""

from __future__ import annotations

import pytest
from fuzzing import MAX_PARAMS, SEEDS, check_spec, mutated_specs
from hypothesis import given


@given(text=mutated_specs())
def test_mutated_specs_compile_exactly_or_are_refused(text):
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("EINSTRUCT_MAX_PARAMS", str(MAX_PARAMS))
        check_spec(text)


def test_the_fuzzer_reaches_both_outcomes(monkeypatch):
    """The seeds compile and a broken one is refused, so both branches of the check run."""
    monkeypatch.setenv("EINSTRUCT_MAX_PARAMS", str(MAX_PARAMS))
    accepted = sum(check_spec(seed).accepted for seed in SEEDS)
    refused = check_spec(SEEDS[0].replace("d = 16", "d = 16 *")).refused
    assert accepted >= len(SEEDS) and refused == 1
