"""Which user names the torch backend can use as attribute and class names.

Hygiene of the generated module rests on two rules. Inside its functions every
Python name is generated (``x``, ``f1``, ``t1``..., see
:mod:`einstruct.backends.torch.steps`), so no user name can shadow a local, a
global or a builtin. A user name appears only as a quoted string, as the
attribute holding a factor (``self.A``) and as the class name. Those two are
checked here: a factor's attribute must not already be an attribute of
``nn.Module`` or of the runtime's layer classes (the language already refuses names
starting with ``_``, which covers every private attribute), and the class, a
module-level name, must not shadow a builtin or the module's imports.

    >>> factor_clash("forward")
    'an attribute of torch.nn.Module'
    >>> class_name_problem("Btt") is None
    True
"""

from __future__ import annotations

import builtins
import keyword
import unicodedata

from ...errors import CompileError
from ...planner.plan_data import Plan
from ..common import default_class_name
from ..runtime_source import layer_attributes, runtime_globals

__all__ = [
    "NN_MODULE_ATTRIBUTES",
    "LAYER_ATTRIBUTES",
    "MODULE_GLOBALS",
    "factor_clash",
    "class_name_problem",
    "checked_names",
]

#: The public attributes of a ``torch.nn.Module`` instance (torch 2.13; a test
#: checks the installed torch adds none), and ``smart_apply``, which transformers
#: sets on ``torch.nn.Module`` itself once it has built a model (a factor of that
#: name could not be registered in such a process).
NN_MODULE_ATTRIBUTES = frozenset(
    {
        "T_destination", "add_module", "apply", "bfloat16", "buffers", "call_super_init", "children",
        "compile", "cpu", "cuda", "double", "dump_patches", "eval", "extra_repr", "float", "forward",
        "get_buffer", "get_extra_state", "get_parameter", "get_submodule", "half", "ipu",
        "load_state_dict", "modules", "mtia", "named_buffers", "named_children", "named_modules",
        "named_parameters", "parameters", "register_backward_hook", "register_buffer",
        "register_forward_hook", "register_forward_pre_hook", "register_full_backward_hook",
        "register_full_backward_pre_hook", "register_load_state_dict_post_hook",
        "register_load_state_dict_pre_hook", "register_module", "register_parameter",
        "register_state_dict_post_hook", "register_state_dict_pre_hook", "requires_grad_",
        "set_extra_state", "set_submodule", "share_memory", "smart_apply", "state_dict", "to", "to_empty",
        "train", "training", "type", "xpu", "zero_grad",
    }
)  # fmt: skip

#: The public attributes of the runtime's layer classes (StructuredLinear and its
#: routed and fused kinds), read from their source: a factor may not take one.
LAYER_ATTRIBUTES = layer_attributes()

#: Names a generated module binds at its top level besides its own helpers (which
#: all start with ``_``): the runtime's, read from its source, and torch.
MODULE_GLOBALS = runtime_globals() | {"torch"}


def factor_clash(name: str) -> str | None:
    """Why a factor cannot be stored as attribute ``name``, or ``None`` when it can."""
    if name in LAYER_ATTRIBUTES:
        return "an attribute of the generated layer (einstruct's StructuredLinear)"
    if name in NN_MODULE_ATTRIBUTES:
        return "an attribute of torch.nn.Module"
    return None


def class_name_problem(name: str) -> str | None:
    """What is wrong with ``name`` as the generated class's name, or ``None``.

    The rule: a Python identifier as Python reads it (NFKC), not a keyword, not
    starting with ``_`` (the module's own helpers do), and not a name the
    module already uses at its top level (a builtin, ``torch``, a name the
    layer runtime binds such as ``nn`` or ``StructuredLinear``).
    """
    if unicodedata.normalize("NFKC", name) != name:
        return f"Python reads it as '{unicodedata.normalize('NFKC', name)}' (NFKC); write that"
    if not name.isidentifier():
        return "it is not a Python identifier (letters, digits and _, not starting with a digit)"
    if keyword.iskeyword(name) or keyword.issoftkeyword(name):
        return "it is a Python keyword"
    if name.startswith("_"):
        return "names starting with _ are reserved for the generated module's own helpers"
    if name in MODULE_GLOBALS:
        return "the generated module (its layer runtime) already binds that name"
    if hasattr(builtins, name):
        return "it is a Python builtin, which the generated module would shadow"
    return None


def checked_names(plan: Plan, class_name: str | None) -> str:
    """The class name to generate, after checking it and every factor's attribute name.

    Raises:
        CompileError: a factor name taken by nn.Module or the generated class (at
            the factor's span), or a class name that breaks the rule above.
    """
    for f in plan.structure.factors:
        clash = factor_clash(f.name)
        if clash is not None:
            raise CompileError(
                f"factor name '{f.name}' is {clash}, so the generated layer cannot store the factor "
                "under that name",
                f.span,
                f"rename the factor, e.g. to '{f.name}1'",
            )
    rule = "a Python identifier, not a keyword or builtin, not starting with _"
    if class_name is not None and not isinstance(class_name, str):
        raise CompileError(
            f"class_name must be a string, got {type(class_name).__name__}", hint=f"give {rule}"
        )
    name = class_name or default_class_name(plan.structure.name)
    problem = class_name_problem(name)
    if problem is None:
        return name
    if class_name:
        raise CompileError(f"class name '{name}' cannot be used: {problem}", hint=f"choose {rule}")
    raise CompileError(
        f"the class name '{name}' made from structure '{plan.structure.name}' cannot be used: {problem}",
        plan.structure.span,
        f'pass a class name ({rule}), e.g. --class-name {name}Layer or class_name="{name}Layer"',
    )
