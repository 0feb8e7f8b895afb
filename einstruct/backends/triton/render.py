"""The triton backend: the torch module's contract, with fused Triton kernels for two-factor chains.

The planner decides (:func:`einstruct.planner.fusion.plan_fusion`): a two-factor
chain gets four kernels (forward, the input's gradient, each factor's
gradient), each of a family with its tiles, and a default (``fused`` or
``torch``); any other structure keeps the planned torch steps and says why.
This module only lays the decision out: the kernels from the family templates
(:mod:`.kernels`), then the layer (``codegen_templates/triton/``), which
extends the torch backend's templates, so everything the torch module offers
(constructor options, ``to_dense``, ``param_groups``, the dense strategy, the
planned torch steps on CPU) is the same code.

    >>> text = render(make_plan(load("examples/btt.ein")), command="...")
    >>> "def _forward_kernel(" in text, "einstruct::fused_" in text
    (True, True)
"""

from __future__ import annotations

import hashlib
import textwrap
from typing import Any

from ...planner.fusion import Fusion, KernelPlan, NotFused, plan_fusion
from ...planner.plan_data import Plan
from ..common import dict_code, environment, quoted, string_code, tuple_code
from ..compilation import Compilation
from ..runtime_source import runtime_modules
from ..torch.render import render_context as torch_context
from ..torch.render import render_with_runtime, runtime_context
from .kernels import TEMPLATES, kernel_context

__all__ = ["render_context", "render"]

#: The templates: a chain with fused kernels, and any other structure.
LAYER_TEMPLATE = "triton/layer.py.j2"
BASE_TEMPLATE = "triton/base.py.j2"
#: Each kernel's stem: ``_<stem>_kernel``, ``_<stem>_launch``, ``_<STEM>_CONFIGS``.
STEMS = {
    "forward": "forward",
    "grad_input": "grad_input",
    "grad_first": "grad_first",
    "grad_second": "grad_second",
}


def _kernel_text(kernel: KernelPlan) -> str:
    stem = STEMS[kernel.role]
    context = kernel_context(kernel, f"_{stem}_kernel", f"_{stem}_launch")
    context["configs_name"] = f"_{stem.upper()}_CONFIGS"
    context["interpreter_name"] = f"_{stem.upper()}_INTERPRETER"
    return environment().get_template(TEMPLATES[kernel.family]).render(**context).rstrip("\n")


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
    """Which local is which factor, the gradient lines and the FLOP constants."""
    factors = [f.name for f in plan.structure.factors]
    local = {name: f"f{k}" for k, name in enumerate(factors, start=1)}
    first, second = local[fusion.chain.first], local[fusion.chain.second]
    step1, step2 = fusion.chain.flops_per_token()
    by_factor = {
        first: (fusion.grad_first, f"_grad_first_launch(g, {second}, x)", step1),
        second: (fusion.grad_second, f"_grad_second_launch(x, {first}, g)", step2),
    }
    locals_ = list(local.values())
    gemm = [name for name in locals_ if by_factor[name][0].family == "gemm"]
    lines = []
    if gemm:
        needs = ", ".join(["False", *(f"need_{n}" if n in gemm else "False" for n in locals_)])
        lines.append(f"planned = _backward(g, _steps(x, {', '.join(locals_)})[1], ({needs}))")
    for k, name in enumerate(locals_):
        kernel, call, _ = by_factor[name]
        source = f"planned[{k + 1}]" if kernel.family == "gemm" else call
        lines.append(f"g_{name} = {source} if need_{name} else {name}.new_empty(0)")
    per_factor = tuple_code(str(by_factor[n][2]) for n in locals_)
    return {
        "first_local": first,
        "second_local": second,
        "factor_params": [f"{n}: torch.Tensor" for n in locals_],
        "need_params": [f"need_{n}: bool" for n in locals_],
        "need_args": ", ".join(f"need_{n}" for n in locals_),
        "tensor_types": ", ".join("torch.Tensor" for _ in locals_),
        "grad_lines": lines,
        "fake_grads": [f"torch.empty_like({n}) if need_{n} else {n}.new_empty(0)" for n in locals_],
        "none_grads": " = ".join([*(f"g_{n}" for n in locals_), "None"]),
        "flops_forward": step1 + step2,
        "per_factor_flops": per_factor,
    }


def _gpu_dtypes(fusion: Fusion) -> str:
    """The input dtypes every kernel has GPU configurations for, as a tuple display."""
    dtypes = ["torch.float16", "torch.bfloat16"]
    if all(k.gpu_fp32 for k in fusion.kernels if k.family != "gemm"):
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
    context["bases"] = "FusedStructuredLinear" + (", RoutedStructuredLinear" if routed else "")
    context.update(runtime_context(runtime_modules(routed=routed, fused=True), runtime))
    if isinstance(fusion, NotFused):
        context.update(
            {
                "module_doc": _module_doc(False, "torch"),
                "default_kernels": "torch",
                "kernels_note_code": string_code(f"no fused kernels: {fusion.reason}.", 4, 19),
                "kernel_families": "{}",
                "kernel_choices": '("torch",)',
            }
        )
        return context
    texts = [_kernel_text(k) for k in fusion.kernels if k.family != "gemm"]
    digest = hashlib.sha256("\n".join([context["spec_hash"], *texts]).encode()).hexdigest()[:16]
    context.update(
        {
            "module_doc": _module_doc(True, fusion.default),
            "default_kernels": fusion.default,
            "kernels_note_code": string_code(fusion.reason + ".", 4, 19),
            "kernel_families": dict_code(
                [(quoted(k.role), quoted(k.family)) for k in fusion.kernels],
                4,
                len("    kernel_families: ClassVar[dict] = "),
            ),
            "kernel_choices": '("fused", "torch")',
            "kernel_texts": texts,
            "op": f"fused_{digest}",
            "gpu_dtypes": _gpu_dtypes(fusion),
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
