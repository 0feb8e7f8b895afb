"""einstruct's settings from the environment: the one parser for every ``EINSTRUCT_*`` number.

The CLI, the library (``einstruct/limits.py``) and generated layers read
``EINSTRUCT_MAX_*`` through this module, so a value means the same everywhere
and a bad one is refused the same way: plain ASCII digits (``_`` allowed
between digits, as in ``2_000_000``), at most :data:`MAX_SETTING_CHARS`
characters, greater than zero. Anything else (a sign, a space inside, a
superscript or Arabic-Indic digit, a thousand-digit number) raises
:class:`SettingError`; it never falls back to a default silently, and never
switches a guard off.

    >>> positive_setting("EINSTRUCT_MAX_EXAMPLE", 7, {"EINSTRUCT_MAX_EXAMPLE": "1_000"})
    1000
    >>> positive_setting("EINSTRUCT_MAX_EXAMPLE", 7, {})
    7

This module uses only the standard library and imports nothing from einstruct:
standalone generated files include its source verbatim.
"""

import os
from collections.abc import Mapping

__all__ = [
    "MAX_PARAMS_DEFAULT",
    "MAX_SETTING_CHARS",
    "LimitError",
    "SettingError",
    "env_flag",
    "inside_transform",
    "max_params",
    "parse_positive",
    "positive_setting",
    "shown_value",
]

#: Parameters (or dense entries) a generated layer allocates unless
#: EINSTRUCT_MAX_PARAMS says otherwise (8 GiB in float32).
MAX_PARAMS_DEFAULT = 2**31
#: The longest value accepted (characters, underscores included).
MAX_SETTING_CHARS = 1000

_DIGITS = frozenset("0123456789")


class SettingError(ValueError):
    """An environment variable einstruct reads holds a value it does not accept.

    ``variable`` is the variable's name and ``value`` its text, as found.
    """

    def __init__(self, variable: str, value: str, problem: str):
        self.variable = variable
        self.value = value
        self.problem = problem
        super().__init__(
            f"{variable}={shown_value(value)} is not accepted: {problem}; "
            f"give a positive whole number in plain digits, e.g. {variable}=4096 "
            f"(underscores between digits are allowed), or unset it for the default"
        )


class LimitError(ValueError):
    """A size over the limit an environment variable sets (``variable``, e.g.
    EINSTRUCT_MAX_PARAMS): the setting, not the input, decides; raising it allows
    the size."""

    def __init__(self, message: str, variable: str):
        self.variable = variable
        super().__init__(message)


def shown_value(value: str, limit: int = 40) -> str:
    """``value`` quoted and escaped for a message, cut to about ``limit`` characters.

    >>> shown_value("12\\x1b[31m")
    "'12\\\\x1b[31m'"
    """
    cut = value if len(value) <= limit else value[:limit]
    text = cut.encode("ascii", "backslashreplace").decode("ascii")
    text = "".join(ch if ch.isprintable() else f"\\x{ord(ch):02x}" for ch in text)
    more = f"... ({len(value):,} characters)" if len(value) > limit else ""
    return f"'{text}'{more}"


def parse_positive(variable: str, text: str) -> int:
    """``text`` (the value of ``variable``) as a positive int, or :class:`SettingError`.

    Surrounding spaces and tabs are ignored.

    >>> parse_positive("EINSTRUCT_MAX_EXAMPLE", " 2_048 ")
    2048
    """
    value = text.strip(" \t")
    if not value:
        raise SettingError(variable, text, "it is empty")
    if len(value) > MAX_SETTING_CHARS:
        raise SettingError(
            variable, text, f"it is longer than {MAX_SETTING_CHARS} characters"
        )
    if not set(value) <= _DIGITS | {"_"}:
        raise SettingError(
            variable, text, "it holds characters other than the digits 0-9 and _"
        )
    if value.startswith("_") or value.endswith("_") or "__" in value:
        raise SettingError(
            variable, text, "an underscore must stand between two digits"
        )
    number = int(value.replace("_", ""))
    if number <= 0:
        raise SettingError(variable, text, "it must be greater than zero")
    return number


def positive_setting(
    variable: str, default: int, environ: "Mapping[str, str] | None" = None
) -> int:
    """The positive int ``variable`` is set to, or ``default`` when it is unset or blank.

    ``environ`` defaults to ``os.environ``. A value that is set but not
    accepted raises :class:`SettingError` (a ``ValueError``) naming the variable.
    """
    source = os.environ if environ is None else environ
    text = source.get(variable)
    if text is None or not text.strip(" \t"):
        return default
    return parse_positive(variable, text)


def max_params() -> int:
    """EINSTRUCT_MAX_PARAMS: the most parameters (or dense W entries) a layer allocates."""
    return positive_setting("EINSTRUCT_MAX_PARAMS", MAX_PARAMS_DEFAULT)


def env_flag(variable: str) -> bool:
    """Whether ``variable`` is set to ``1`` (how TRITON_INTERPRET is read)."""
    return os.environ.get(variable, "").strip() == "1"


def inside_transform() -> bool:
    """Inside a torch.func transform (grad, vmap, jacrev) or under saved-tensors hooks
    (non-reentrant activation checkpointing): timing runs a forward and backward of
    its own, which those refuse or cut short."""
    import torch  # only where a layer runs: env itself stays standard library only

    if torch._C._functorch.maybe_current_level() is not None:
        return True
    top = getattr(torch._C._autograd, "_top_saved_tensors_default_hooks", None)
    if top is None:
        return False
    try:
        return top(False) is not None
    except TypeError:  # an older signature
        return top() is not None
