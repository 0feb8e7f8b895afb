"""What users call from Python with torch installed: compile a layer, convert a model.

- :mod:`.build`: render a spec and load the generated class in this process;
- :mod:`.pickling`: in-memory modules whose layers pickle across processes;
- :mod:`.replace`: swap a model's linear layers for structured ones;
- :mod:`.groups`: optimizer groups, structured muP in the layers and width muP around them.
"""

from __future__ import annotations

from .build import compile, compile_structure, module_source
from .groups import is_structured, param_groups
from .replace import replace_linear

__all__ = ["compile", "compile_structure", "is_structured", "module_source", "param_groups", "replace_linear"]
