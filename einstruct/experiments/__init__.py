"""Experiments that check the papers' predictions with einstruct's layers (needs torch).

- :mod:`.scaling`: one run of the teacher-student scaling experiment;
- :mod:`.sweep`: the sweep (widths x learning rates x seeds) in worker processes,
  resumable through a JSON-lines file;
- :mod:`.frontier`: the compute-optimal frontier per structure, as a table and a plot.

``einstruct experiment scaling`` runs them from the command line.
"""

from __future__ import annotations

__all__: list[str] = []
