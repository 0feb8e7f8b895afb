"""Experiments that check the papers' predictions with einstruct's layers (needs torch).

- :mod:`.scaling`: one run of the teacher-student experiment (its loss curve);
- :mod:`.sweep`: the sweep (structures x widths x learning rates x seeds) in
  worker processes, resumable through a JSON-lines file;
- :mod:`.laws`: compute-optimal frontiers from the curves, power-law fits with
  intervals over seeds;
- :mod:`.report`: the scaling summary (JSON, markdown, plot) with omega, psi, nu;
- :mod:`.frontier`: the final-loss frontier and the leader's verdict;
- :mod:`.moe`: the standard top-k MoE over whole FFNs (the baseline of ``--moe``);
- :mod:`.transfer`: learning-rate transfer across widths;
- :mod:`.presets`: the sizes and default structures.

``einstruct experiment scaling`` and ``einstruct experiment lr-transfer`` run
them from the command line.
"""

from __future__ import annotations

__all__: list[str] = []
