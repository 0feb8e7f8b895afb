"""What every code generator shares: names, the header's stamp and metrics, the templates.

>>> default_class_name("low_rank")
'LowRank'
"""

from __future__ import annotations

import hashlib
import keyword
import re
from functools import lru_cache
from typing import TYPE_CHECKING, Any

from ..analysis.analyze import analyze_structure
from ..errors import CompileError
from ..planner.model import Plan
from ..resources import templates_dir

if TYPE_CHECKING:
    import jinja2

__all__ = [
    "RESERVED_NAMES",
    "default_class_name",
    "check_names",
    "spec_hash",
    "metrics",
    "strategy_note",
    "number_code",
    "tuple_code",
    "quoted",
    "environment",
]

#: Names a factor cannot have: attributes of the generated module or of nn.Module.
RESERVED_NAMES = frozenset(
    {
        "bias", "forward", "to_dense", "reset_parameters", "lr_multipliers", "param_groups",
        "extra_repr", "in_features", "out_features", "input_axes", "output_axes", "factor_axes",
        "index_sizes", "init_std", "lr_mult", "normalize", "zero_init_last", "gain", "training",
        "strategy", "default_strategy", "save_intermediate", "dense_weight", "ctx", "operands",
        "g_out", "g_x", "g_y", "factors", "w", "eye", "router", "aux_loss", "gate", "experts",
        "top_k", "sparse_experts", "rows", "part", "e",
        "to", "cpu", "cuda", "float", "double", "half", "type", "train", "eval", "apply",
        "parameters", "buffers", "children", "modules", "state_dict", "zero_grad", "register_buffer",
        "register_parameter", "add_module", "requires_grad_", "named_parameters", "dump_patches",
        "torch", "math", "F", "nn", "self", "x", "y", "lead",
    }
)  # fmt: skip

#: Local names the generated steps use: l<k>, r<k>, t<k>, g<k>, w<k>, wl<k>, wr<k>, eye<k>, g_<name>.
_GENERATED_NAME = re.compile(r"^(?:[lrtgw]\d+|w[lr]\d+|eye\d+|g_\w*)$")


def default_class_name(structure_name: str) -> str:
    """``btt`` -> ``Btt``, ``low_rank`` -> ``LowRank``."""
    return "".join(part[:1].upper() + part[1:] for part in structure_name.split("_") if part) or "Layer"


def check_names(plan: Plan, class_name: str | None) -> str:
    """The class name to generate, after checking it and the factor names; raises CompileError."""
    for f in plan.structure.factors:
        if f.name in RESERVED_NAMES or _GENERATED_NAME.match(f.name):
            raise CompileError(
                f"factor name '{f.name}' clashes with a name the generated module uses",
                f.span,
                "rename the factor, e.g. to W or A1",
            )
    name = class_name or default_class_name(plan.structure.name)
    if not name.isidentifier() or keyword.iskeyword(name):
        raise CompileError(f"class name '{name}' is not a valid Python class name")
    return name


def spec_hash(plan: Plan) -> str:
    """sha256 of the resolved structure's source (parameter values included)."""
    return hashlib.sha256(plan.structure.to_source().encode()).hexdigest()[:16]


def metrics(plan: Plan) -> dict[str, str]:
    """Key metrics for the header and extra_repr, exact, from the analyzer.

    Reads the analysis' fields directly (``to_dict`` would also plan the memory
    traffic, a second plan of the structure that the header does not show).
    """
    a = analyze_structure(plan.structure)
    out = {"params": str(a.params), "flops": str(a.counts.flops)}
    for key in ("omega", "psi", "nu"):
        value = getattr(a.taxonomy, key)
        if value is not None:
            out[key] = str(value)
    return out


def strategy_note(plan: Plan) -> str:
    """Why the strategy was chosen, for the generated docstring."""
    e = plan.estimate
    how = "forced" if plan.forced else "cost model"
    if e is None:
        return how
    dense = "n/a" if e.dense_ms is None else f"{e.dense_ms:.1f} ms"
    estimate = f"structured {e.structured_ms:.1f} ms, dense {dense}"
    return f"{how}; estimated fwd+bwd at {plan.batch} tokens: {estimate}"


def number_code(value: Any) -> str:
    """A number as Python source: floats by ``repr`` (round-trips exactly), ints as digits."""
    if isinstance(value, float):
        return repr(value)
    return str(value)


def tuple_code(items: Any) -> str:
    """A tuple display of already-rendered items: ``(a,)``, ``(a, b)``, ``()``."""
    items = list(items)
    return "(" + ", ".join(items) + ("," if len(items) == 1 else "") + ")"


def quoted(name: str) -> str:
    """A validated identifier as a string literal."""
    return f'"{name}"'


@lru_cache(maxsize=1)
def environment() -> jinja2.Environment:
    """The Jinja environment over ``codegen_templates/`` (loaded once)."""
    import jinja2

    return jinja2.Environment(
        loader=jinja2.FileSystemLoader(str(templates_dir())),
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
        autoescape=False,
    )
