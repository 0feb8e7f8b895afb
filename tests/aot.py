"""Ahead-of-time compilation of generated Triton kernels, without a GPU: registers, spills, shared memory.

Triton compiles for a ``GPUTarget`` on any machine: its bundled ptxas assembles
the PTX for sm_80 or sm_90 and reports, per kernel, the registers it used and
the bytes it spilled. :func:`compile_report` compiles every GPU configuration a
generated module ships (each launch's rows in its ``FusedChain`` table, with the
sizes and strides that launch passes) and reads those numbers from ptxas' own
log (``TRITON_DUMP_PTXAS_LOG``, a fresh compile forced); ``tests/aot_long.py``
sweeps many structures, ``tests/test_triton_aot.py`` checks a representative set.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import inspect
import io
import os
import re
import sys
from dataclasses import dataclass

#: The largest shared memory one block may use on sm_80 (A100: 163 KiB); sm_90 allows more.
MAX_SHARED = 163 * 1024
#: Bytes per entry of each dtype: which of a kernel's GPU tables ships for it.
_ITEMSIZE = {"bf16": 2, "fp16": 2, "fp32": 4}
_REGISTERS = re.compile(r"Used (\d+) registers")
_SPILLS = re.compile(r"(\d+) bytes spill stores, (\d+) bytes spill loads")


@dataclass(frozen=True)
class Compiled:
    """One kernel configuration compiled for one target."""

    kernel: str
    config: tuple
    arch: int
    dtype: str
    registers: int
    spill_stores: int
    spill_loads: int
    shared: int
    #: SASS instruction counts: tensor-core products (HMMA on sm_80, HGMMA: Hopper's wgmma),
    #: asynchronous copies global -> shared (LDGSTS: cp.async; UTMALDG: TMA), plain global loads.
    hmma: int = 0
    hgmma: int = 0
    ldgsts: int = 0
    tma: int = 0
    ldg: int = 0

    def line(self) -> str:
        spills = f"spills {self.spill_stores}/{self.spill_loads} B"
        return (
            f"{self.kernel} {self.config} sm_{self.arch} {self.dtype}: {self.registers} registers, "
            f"{spills}, {self.shared} B shared, HMMA {self.hmma} HGMMA {self.hgmma} "
            f"LDGSTS {self.ldgsts} TMA {self.tma} LDG {self.ldg}"
        )


def _signature(fn, dtype: str) -> dict[str, str]:
    sig = {}
    for p in fn.params:
        if p.is_constexpr:
            sig[p.name] = "constexpr"
        elif p.name == "o_ptr" and fn.__name__ == "_factor_grad_kernel":  # fp32 partial sums
            sig[p.name] = "*fp64" if dtype == "fp64" else "*fp32"
        elif p.name.endswith("_ptr"):
            sig[p.name] = f"*{dtype}"
        else:
            sig[p.name] = "i32"
    return sig


def specializations(fn, arguments: tuple) -> dict:
    """The attributes a JIT launch specializes its arguments with, for :func:`triton.compile`:
    16-byte divisibility on every pointer (torch's allocations are aligned) and on every
    run-time integer that is a multiple of 16 (the token count, a factor gradient's shares).
    Without them the compiler must assume 2-byte alignment: scalar loads, no async copies."""
    attrs = {}
    for k, (p, value) in enumerate(zip(fn.params, arguments)):
        if p.is_constexpr:
            continue
        if p.name.endswith("_ptr") or (isinstance(value, int) and value % 16 == 0):
            attrs[(k,)] = [["tt.divisibility", 16]]
    return attrs


def _runtime(layer_class):
    """The module whose ``launch`` the layer's chain calls: the runtime's kernels module, or
    the generated module itself when it carries the runtime's text."""
    chain = sys.modules[layer_class.__module__]._CHAIN
    return sys.modules[type(chain).__module__], chain


def launch_arguments(layer_class, tokens: int = 16384) -> dict:
    """Each launch's (kernel, arguments, table) as the runtime passes them (sizes and strides
    are compile-time constants), found by running the chain on meta tensors with the launch
    intercepted."""
    import torch

    runtime, chain = _runtime(layer_class)
    names = {id(table): name for name, table in chain.tables.items()}
    found = {}

    def record(kernel, grid, args, dtype, table, config):
        found[names[id(table)]] = (kernel, args, table)

    x = torch.empty(tokens, chain.widths["x"], device="meta")
    g = torch.empty(tokens, chain.widths["y"], device="meta")
    p = torch.empty(chain.widths["p"], device="meta")
    q = torch.empty(chain.widths["q"], device="meta")
    saved, runtime.launch = runtime.launch, record
    try:
        chain.forward(x, p, q)
        chain.backward(x, g, p, q, (True, True, True))
    finally:
        runtime.launch = saved
    return found


def compile_report(layer_class, archs=(80, 90), dtypes=("bf16",), seen: set | None = None) -> list[Compiled]:
    """Compile every GPU configuration of ``layer_class``'s launches for each arch and dtype.

    ``seen`` (kernel source + constants + target) skips what an earlier call compiled.
    """
    from triton.runtime.jit import JITFunction

    if getattr(sys.modules[layer_class.__module__], "_CHAIN", None) is None:
        return []
    runtime, _ = _runtime(layer_class)
    seen = set() if seen is None else seen
    out = []
    for name, (kernel, arguments, (blocks, tables, _)) in launch_arguments(layer_class).items():
        fn = kernel if isinstance(kernel, JITFunction) else JITFunction(kernel.fn)
        constants = {p.name: v for p, v in zip(fn.params, arguments) if p.is_constexpr}
        body = inspect.getsource(fn.fn)
        for dtype in dtypes:
            for row in tables.get(_ITEMSIZE[dtype], ()):
                for arch in archs:
                    key = hashlib.sha256(f"{body}{constants}{row}{arch}{dtype}".encode()).hexdigest()
                    if key in seen:
                        continue
                    seen.add(key)
                    constexprs = {**constants, **dict(zip(blocks, row))}
                    attrs = specializations(fn, arguments)
                    compiled = _compile(fn, constexprs, attrs, row, arch, dtype, runtime._MAX_REGISTERS)
                    out.append(dataclasses.replace(compiled, kernel=name))
    return out


def _sass_counts(compiled) -> dict[str, int]:
    """Instruction counts from the cubin's SASS (Triton's bundled nvdisasm), or from the PTX
    when nvdisasm is missing."""
    import shutil
    import subprocess
    import tempfile

    import triton

    tool = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "nvdisasm")
    if not os.path.exists(tool):  # Triton's bundled copy, else one on the PATH
        tool = shutil.which("nvdisasm")
    if tool is not None:
        with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
            f.write(compiled.asm["cubin"])
            f.flush()
            sass = subprocess.run([tool, "-c", f.name], capture_output=True, text=True).stdout
        if sass:
            ops = re.findall(r"^\s*/\*[0-9a-f]+\*/\s+(?:@!?U?P\w+\s+)?([A-Z][A-Z0-9_]*)", sass, re.M)
            return {
                "hmma": sum(op == "HMMA" for op in ops),
                "hgmma": sum(op == "HGMMA" for op in ops),
                "ldgsts": sum(op == "LDGSTS" for op in ops),
                "tma": sum(op.startswith("UTMALDG") for op in ops),
                "ldg": sum(op == "LDG" for op in ops),
            }
    ptx = compiled.asm["ptx"]
    return {
        "hmma": len(re.findall(r"\bmma\.sync", ptx)),
        "hgmma": len(re.findall(r"\bwgmma\.mma_async", ptx)),
        "ldgsts": len(re.findall(r"\bcp\.async\.c[ag]", ptx)),
        "tma": len(re.findall(r"\bcp\.async\.bulk\.tensor", ptx)),
        "ldg": len(re.findall(r"\bld\.global", ptx)),
    }


def _compile(fn, constants: dict, attrs: dict, row: tuple, arch: int, dtype: str, maxnreg: int) -> Compiled:
    import triton
    import triton.language as tl
    from triton.backends.compiler import GPUTarget

    constants = dict(constants)
    constants["ACC_DTYPE"] = tl.float64 if dtype == "fp64" else tl.float32
    constants["DOT_PRECISION"] = "tf32" if dtype == "fp32" else "ieee"
    source = triton.compiler.ASTSource(
        fn=fn, signature=_signature(fn, dtype), constexprs=constants, attrs=attrs
    )
    log = io.StringIO()
    # a fresh compile with ptxas' report printed, and outside the interpreter (CI sets TRITON_INTERPRET)
    settings = {"TRITON_DUMP_PTXAS_LOG": "1", "TRITON_ALWAYS_COMPILE": "1", "TRITON_INTERPRET": "0"}
    saved = {k: os.environ.get(k) for k in settings}
    os.environ.update(settings)
    try:
        with contextlib.redirect_stdout(log):
            compiled = triton.compile(
                source,
                target=GPUTarget("cuda", arch, 32),
                options={"num_warps": row[-2], "num_stages": row[-1], "maxnreg": maxnreg},
            )
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    text = log.getvalue()
    registers, spills = _REGISTERS.search(text), _SPILLS.search(text)
    assert registers and spills, f"no ptxas report for {fn.__name__} {row} sm_{arch}:\n{text[-2000:]}"
    stores, loads = (int(v) for v in spills.groups())
    shared = compiled.metadata.shared
    counts = _sass_counts(compiled)
    return Compiled(
        fn.__name__, tuple(row), arch, dtype, int(registers.group(1)), stores, loads, shared, **counts
    )
