"""The triton backend: the torch module's contract, with fused Triton kernels for two-factor chains.

The planner decides (:func:`einstruct.planner.fusion.plan_fusion`): a two-factor
chain gets six launches of the runtime's kernels (:mod:`einstruct.nn.kernels`),
each with its configurations, and a default (``fused`` or ``torch``); any other
structure keeps the planned torch steps and says why. This module only lays the
decision out: the chain's table (:mod:`.kernels`), then the layer
(``codegen_templates/triton/``), which
extends the torch backend's templates, so everything the torch module offers
(constructor options, ``to_dense``, ``param_groups``, the dense strategy, the
planned torch steps on CPU) is the same code.

    >>> text = render(make_plan(load("examples/btt.ein")), command="...")
    >>> "_CHAIN = FusedChain(" in text, "einstruct::fused_" in text
    (True, True)
"""

from __future__ import annotations

import hashlib
import textwrap
from typing import Any

from ...planner.fusion import Fusion, NotFused, plan_fusion
from ...planner.plan_data import Plan
from ..common import class_head, string_code, tuple_code
from ..compilation import Compilation
from ..runtime_source import runtime_modules
from ..torch.render import render_context as torch_context
from ..torch.render import render_with_runtime, runtime_context
from .kernels import config_lines, interpreter_lines, layout_lines, size_lines

__all__ = ["render_context", "render"]

#: The templates: a chain with fused kernels, and any other structure.
LAYER_TEMPLATE = "triton/layer.py.j2"
BASE_TEMPLATE = "triton/base.py.j2"


def _module_doc(fused: bool, default: str) -> list[str]:
    if not fused:
        return [
            "The forward runs the planned contraction steps, each one matmul (the planner",
            "found no fused Triton path for this structure, see `kernels_note`).",
        ]
    return [
        'Runs its Triton kernels where triton is installed. With kernels="fused"',
        f'(default here: "{default}") the forward and backward run the fused kernels',
        "below on CUDA tensors, and on CPU tensors in Triton's interpreter when",
        "TRITON_INTERPRET=1 is set before import; otherwise the planned torch steps.",
    ]


def _factor_context(plan: Plan, fusion: Fusion) -> dict[str, Any]:
    """Which of the layer's factors the chain meets first, and the FLOP constants."""
    factors = [f.name for f in plan.structure.factors]
    step1, step2 = fusion.chain.flops_per_token()
    per_factor = {fusion.chain.first: step1, fusion.chain.second: step2}
    return {
        "first_index": factors.index(fusion.chain.first),
        "flops_forward": step1 + step2,
        "per_factor_flops": tuple_code(str(per_factor[n]) for n in factors),
    }


def _gpu_dtypes(fusion: Fusion) -> str:
    """The input dtypes every launch has GPU configurations for, as a tuple display."""
    dtypes = ["torch.float16", "torch.bfloat16"]
    if all(k.gpu.get(4) for k in fusion.launches):
        dtypes.append("torch.float32")
    return "(" + ", ".join(dtypes) + ")"


def _wrapped(text: str) -> list[str]:
    """A docstring note as lines that fit the generated file's width."""
    return textwrap.wrap(text, width=80)


def render_context(
    compiled: Compilation, class_name: str | None = None, command: str | None = None, runtime: str = "inline"
) -> dict[str, Any]:
    """The torch backend's context plus the fused path: kernels, ops, the default and why."""
    plan = compiled.plan
    context = torch_context(compiled, class_name, command, runtime)
    fusion = plan_fusion(plan)
    routed = plan.gate_step is not None
    context["parent"] = "torch/routed_layer.py.j2" if routed else "torch/layer.py.j2"
    bases = ["FusedStructuredLinear", *(["RoutedStructuredLinear"] if routed else [])]
    context["class_head"] = class_head(context["class_name"], bases)
    context.update(runtime_context(runtime_modules(routed=routed, fused=True), runtime))
    if isinstance(fusion, NotFused):
        context.update(
            {
                "module_doc": _module_doc(False, "torch"),
                "default_kernels": "torch",
                "kernels_note_code": string_code(f"no fused kernels: {fusion.reason}.", 4, 19),
                "kernel_choices": '("torch",)',
            }
        )
        return context
    table = {
        "size_lines": size_lines(fusion.chain),
        "layout_lines": layout_lines(fusion.chain),
        "config_lines": config_lines(fusion),
        "interpreter_lines": interpreter_lines(fusion),
    }
    text = "\n".join(line for lines in table.values() for line in lines)
    digest = hashlib.sha256("\n".join([context["spec_hash"], text]).encode()).hexdigest()[:16]
    context.update(
        {
            "module_doc": _module_doc(True, fusion.default),
            "default_kernels": fusion.default,
            "kernels_note_code": string_code(fusion.reason + ".", 4, 19),
            "kernel_choices": '("fused", "torch")',
            "op": f"fused_{digest}",
            "gpu_dtypes": _gpu_dtypes(fusion),
            **table,
            **_factor_context(plan, fusion),
        }
    )
    return context


def render(
    compiled: Compilation, class_name: str | None = None, command: str | None = None, runtime: str = "inline"
) -> str:
    """The generated module: fused kernels where the planner found a fused path."""
    context = render_context(compiled, class_name, command, runtime)
    template = BASE_TEMPLATE if "op" not in context else LAYER_TEMPLATE
    return render_with_runtime(template, context)
