"""The ``einstruct`` command line: ``analyze``, ``compare``, ``theta``, ``plan``, ``compile``,
``search``, ``plot``, ``draw``, ``experiment``.

User mistakes (any :class:`~einstruct.errors.EinstructError`) print as
``file:line:column: error: ...`` with the line and a caret, and exit with
status 2; there is no traceback. A bug in einstruct itself prints one line and
exits with :data:`INTERNAL_ERROR` (``EINSTRUCT_DEBUG=1`` shows the traceback).
``analyze`` and ``search`` (without ``--measure``) never import torch.

- :mod:`.arguments`: the parser, options and help texts;
- :mod:`.commands`: what each command does;
- :mod:`.explore`, :mod:`.figures`, :mod:`.search_options`: ``search``, ``plot`` and ``draw``.
- :mod:`.experiment`: ``experiment scaling`` (imports torch when it runs).
"""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence

from ..errors import EinstructError
from .arguments import SettingRefused, build_parser

__all__ = ["main", "build_parser", "INTERNAL_ERROR"]

#: Exit status for a bug in einstruct itself (bad input exits with 2).
INTERNAL_ERROR = 3


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit status."""
    parser = build_parser()
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        args = parser.parse_args(argv)
    except SettingRefused as refused:  # a bad EINSTRUCT_MAX_* met while reading an argument
        print(str(refused.error), file=sys.stderr)
        return refused.error.exit_code
    args.argv = argv
    try:
        status: int = args.handler(args)
        return status
    except EinstructError as exc:
        print(str(exc), file=sys.stderr)
        return exc.exit_code
    except BrokenPipeError:
        return 0
    except KeyboardInterrupt:
        return 130
    except Exception as exc:  # a bug in einstruct, not in the user's spec
        if os.environ.get("EINSTRUCT_DEBUG"):
            raise
        print(
            f"einstruct: internal error: {type(exc).__name__}: {exc}\n"
            "This is a bug in einstruct, not in your input; please report it with the spec. "
            "Set EINSTRUCT_DEBUG=1 to see the traceback.",
            file=sys.stderr,
        )
        return INTERNAL_ERROR
