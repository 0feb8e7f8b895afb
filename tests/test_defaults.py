"""Defaults that follow the papers, and the diagnostic where psi and the rank bound disagree."""

from __future__ import annotations

import numpy as np

from einstruct.analysis.analyze import analyze_structure
from einstruct.language.load import load

#: What `einstruct search --d-in 1024 --d-out 1024 --flops-ratio 0.1` emits as its 4th candidate.
ROUNDED_FULL_RANK = """\
structure btt_a32_g32_e64_f16_r2(d = 1024):
    y[phi, epsilon] = x[gamma, alpha] * A[gamma, alpha, phi, rho] * B[phi, gamma, rho, epsilon]
    where gamma = alpha = d^(1/2), phi = d^(2/5), rho = round(d^(1/12)), epsilon = d^(3/5)
"""


def _materialized_rank(structure, seed: int = 0) -> int:
    """The numerical rank of W (the factors contracted, random entries): an independent check."""
    rng = np.random.default_rng(seed)
    size = {i.name: i.size for i in structure.indices}
    letter = {n: chr(97 + k) for k, n in enumerate(size)}
    word = lambda idx: "".join(letter[i] for i in idx)  # noqa: E731
    factors = [rng.standard_normal([size[i] for i in f.indices]) for f in structure.factors]
    inputs, outputs = word(structure.input.indices), word(structure.output.indices)
    spec = ",".join(word(f.indices) for f in structure.factors) + f"->{inputs}{outputs}"
    dense = np.einsum(spec, *factors, optimize=True)
    return int(np.linalg.matrix_rank(dense.reshape(structure.in_features, structure.out_features)))


def test_a_full_rank_layer_with_psi_below_one_says_psi_is_nominal():
    result = analyze_structure(load(ROUNDED_FULL_RANK))
    assert result.taxonomy.psi < 1 and result.rank_bound == 1024
    assert _materialized_rank(result.structure) == 1024  # the layer really is full rank
    codes = [d.code for d in result.diagnostics]
    assert "nominal_psi" in codes and "rank_deficient" not in codes
    (message,) = [d.message for d in result.diagnostics if d.code == "nominal_psi"]
    assert "psi = 59/60" in message and "1024 of 1024" in message


def test_a_low_rank_layer_is_rank_deficient_not_nominal():
    result = analyze_structure(load("structure l = low_rank(rank = 8, d = 256)"))
    assert _materialized_rank(result.structure) == 8
    codes = [d.code for d in result.diagnostics]
    assert "rank_deficient" in codes and "nominal_psi" not in codes
