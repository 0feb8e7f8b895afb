"""Pictures made from the analyzer's numbers (needs matplotlib: ``pip install 'einstruct[plot]'``).

- :mod:`.mpl`: matplotlib, imported on first use with a clear error when it is
  missing, and saving figures under the overwrite rule of
  :mod:`einstruct.space.emit`;
- :mod:`.taxonomy`: :func:`plot_taxonomy`, the (omega, psi, nu) picture and the
  params-vs-FLOPs view;
- :mod:`.network`: :func:`draw`, a structure's tensor network with its min cut and
  contraction order.

Importing this package imports no matplotlib; the functions do.
"""

from __future__ import annotations

__all__: list[str] = []
