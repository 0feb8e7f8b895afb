"""Load generated module text in memory, so that its layers pickle across processes.

``einstruct.compile`` builds a class by executing the generated text in a
module made in memory, ``einstruct_generated_<structure>_<hash of the text>``,
which another process cannot import. So every such class gets a ``copyreg``
reducer: an instance pickles as "execute this text (once per process) and
take this class", followed by its state. ``torch.save`` of a whole model and
``torch.load(..., weights_only=False)`` in a fresh process, spawn-based
multiprocessing, and ``copy.deepcopy`` all go through it; the class they find
is the one ``einstruct.compile`` of the same spec builds in that process. The
generated text itself imports nothing from einstruct: the reducer is attached
here, from outside.

    >>> layer = einstruct.compile("structure b = btt(d = 64)")()
    >>> type(pickle.loads(pickle.dumps(layer))) is type(layer)
    True

The class object alone pickles by reference, as every Python class does: it
unpickles in a process that has built the same class (by unpickling one of its
instances first, or by compiling the same spec).
"""

from __future__ import annotations

import builtins
import copyreg
import hashlib
import linecache
import sys
import types
from typing import Any

__all__ = ["module_name", "load_module", "restore_layer", "reduce_layer"]

#: The attribute holding a generated module's text.
SOURCE = "__source__"


def module_name(structure: str, text: str) -> str:
    """The in-memory module's name: the structure's and a hash of the text, so equal
    text means the same module and different text (another strategy, class name or
    einstruct version) never replaces it."""
    return f"einstruct_generated_{structure}_{hashlib.sha256(text.encode()).hexdigest()[:16]}"


def load_module(name: str, text: str) -> types.ModuleType:
    """The module ``name`` executing ``text``: the one already loaded when its text is
    the same, else a new one, registered in ``sys.modules`` (for pickling by reference
    within the process) and in ``linecache`` (so tracebacks and ``inspect`` show the
    generated lines). Each of its exported layer classes gets :func:`reduce_layer`."""
    module = sys.modules.get(name)
    if module is not None and module.__dict__.get(SOURCE) == text:
        return module
    module = types.ModuleType(name)
    module.__file__ = f"<{name}>"
    module.__dict__[SOURCE] = text
    linecache.cache[module.__file__] = (len(text), None, text.splitlines(keepends=True), module.__file__)
    code = builtins.compile(text, module.__file__, "exec")
    exec(code, module.__dict__)  # noqa: S102 - einstruct's own generated code
    sys.modules[name] = module
    for export in module.__dict__.get("__all__", ()):
        cls = module.__dict__[export]
        cls.__module__ = name
        copyreg.pickle(cls, reduce_layer)
    return module


def restore_layer(name: str, class_name: str, text: str) -> Any:
    """A new, uninitialized instance of ``class_name`` from the module ``text`` defines
    (pickle then restores its state). Pickles made by :func:`reduce_layer` call this:
    its name and arguments are kept stable across einstruct versions."""
    cls = getattr(load_module(name, text), class_name)
    return cls.__new__(cls)


def reduce_layer(layer: Any) -> tuple:
    """How an instance of an in-memory generated class pickles: :func:`restore_layer`
    with its module's name and text, then the state ``object.__reduce_ex__`` gives."""
    cls = type(layer)
    module = sys.modules[cls.__module__]
    _, _, state, *rest = layer.__reduce_ex__(2)
    return (restore_layer, (module.__name__, cls.__name__, module.__dict__[SOURCE]), state, *rest)
