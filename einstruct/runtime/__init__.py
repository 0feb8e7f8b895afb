"""What users call from Python with torch installed: compile a layer, convert a model.

- :mod:`.build`: render a spec and load the generated class in this process;
- :mod:`.pickling`: in-memory modules whose layers pickle across processes;
- :mod:`.adapters`: which modules are linear layers (``nn.Linear``, Hugging Face ``Conv1D``, yours);
- :mod:`.targets`: which layers of a model to convert (select, exclude, tied weights);
- :mod:`.replace`: swap a model's linear layers for structured ones, all or nothing;
- :mod:`.summary`: what changed (``einstruct.summary``);
- :mod:`.manifest`: save the replacements and re-apply them in a new process;
- :mod:`.groups`: optimizer groups, structured muP in the layers and width muP around them;
- :mod:`.pretrained`: Hugging Face round trips (the manifest in ``config.json``, ``from_pretrained``);
- :mod:`.parallel`: tensor-parallel styles (imported on use: ``einstruct.parallel``);
- :mod:`.experts`: mixture-of-experts plumbing (aux loss in the graph, global balance, all-to-all).
"""

from __future__ import annotations

from .adapters import register_adapter
from .build import compile, compile_structure, module_source
from .groups import is_structured, param_groups
from .manifest import model_manifest, save_manifest
from .pretrained import from_pretrained, manifest_to_config, optimizer, replace_linear, restore
from .summary import ModelReport, summary

__all__ = [
    "compile",
    "compile_structure",
    "from_pretrained",
    "manifest_to_config",
    "optimizer",
    "is_structured",
    "model_manifest",
    "module_source",
    "ModelReport",
    "param_groups",
    "register_adapter",
    "replace_linear",
    "restore",
    "save_manifest",
    "summary",
]
