"""The runtime of generated layers: what every structured layer shares, as real Python.

- :mod:`.env`: the one reader of einstruct's environment values (standard library only);
- :mod:`.layer`: :class:`~einstruct.nn.layer.StructuredLinear`, the base class of every
  generated layer (init, normalization, checks, dense strategy, ``from_dense``, optimizer
  groups), and the helpers its planned steps use;
- :mod:`.routed`: the base class of routed (BTT-MoE) layers and their sparse path;
- :mod:`.fused`: launching the fused Triton kernels (the triton backend);
- :mod:`.measured`: choosing a layer's path by timing the candidates on this machine
  (``strategy="measured"``), with a private on-disk cache.

Generated modules import these (``einstruct.compile``) or carry their text verbatim
(``einstruct compile -o``, so the file needs only torch). Nothing here imports the rest
of einstruct.
"""

__all__: list[str] = []
