"""The one reader of einstruct's environment values (``EINSTRUCT_MAX_*``).

Standard library only, and nothing from einstruct: generated files carry this text
verbatim, so the analyzer and every generated layer read a value the same way.

    >>> env_limit("EINSTRUCT_MAX_PARAMS", 2**31, {"EINSTRUCT_MAX_PARAMS": "1_000"})
    1000
"""

import os
from collections.abc import Mapping

__all__ = [
    "MAX_PARAMS_DEFAULT",
    "EnvironmentValueError",
    "env_flag",
    "env_limit",
    "max_params",
]

#: Parameters a generated layer may allocate unless EINSTRUCT_MAX_PARAMS says otherwise.
MAX_PARAMS_DEFAULT = 2**31
#: The longest value read (digits and underscores): far beyond any real limit.
_MAX_LENGTH = 40


class EnvironmentValueError(ValueError):
    """An EINSTRUCT_* environment value that is not a positive integer written in plain digits."""


def env_limit(name: str, default: int, environ: Mapping[str, str] | None = None) -> int:
    """The positive integer in ``name``, else ``default`` when it is unset or blank.

    Accepts ASCII digits with single underscores between them (``1_000_000``);
    anything else raises :class:`EnvironmentValueError` naming the variable.
    """
    text = (os.environ if environ is None else environ).get(name, "").strip()
    if not text:
        return default
    plain = text.replace("_", "")
    ok = (
        len(text) <= _MAX_LENGTH
        and plain.isascii()
        and plain.isdigit()
        and "__" not in text
        and not text.startswith("_")
        and not text.endswith("_")
        and int(plain) > 0
    )
    if not ok:
        shown = ascii(text[:_MAX_LENGTH]) + ("..." if len(text) > _MAX_LENGTH else "")
        raise EnvironmentValueError(
            f"{name}={shown} is not a positive integer: write it in plain digits, "
            f"e.g. {name}={default}, or unset it for the default"
        )
    return int(plain)


def max_params() -> int:
    """EINSTRUCT_MAX_PARAMS: the most parameters (or dense entries) a layer allocates."""
    return env_limit("EINSTRUCT_MAX_PARAMS", MAX_PARAMS_DEFAULT)


def env_flag(name: str) -> bool:
    """Whether ``name`` is set to ``1`` (as TRITON_INTERPRET is read)."""
    return os.environ.get(name, "").strip() == "1"
