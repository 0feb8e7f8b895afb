"""The torch backend: a plan rendered into a PyTorch module on einstruct's layer runtime.

- :mod:`.render`: the render context and :func:`render` (the module text);
- :mod:`.steps`: the planned steps (and their backward) as torch calls;
- :mod:`.projection`: ``from_dense``: which closed form, as lines;
- :mod:`.routed`: the routed (BTT-MoE) parts: router, gate, experts;
- :mod:`.names`: the generated names, checked against everything they could shadow.
"""

from __future__ import annotations

from .render import render, render_context

__all__ = ["render", "render_context"]
