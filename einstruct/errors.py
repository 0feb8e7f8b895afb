"""The one error root of einstruct, and the source spans errors point at.

Every problem with a spec raises a subclass of :class:`EinstructError`. An error
carries the :class:`Span` of the offending text, so its message can show
``file:line:column``, the source line and a caret under the spot, followed by
what is wrong and what to do::

    btt.ein:3:34: error: index 'q' has no size
        y[f, e] = x[g, a] * A[g, a, f, q] * B[f, g, q, e]
                                       ^
    hint: give it one in a where clause, e.g. `where q = 4`
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = [
    "Span",
    "EinstructError",
    "SpecSyntaxError",
    "UnknownNameError",
    "InvalidNameError",
    "SizeError",
    "IndexUsageError",
    "WidthError",
    "RouteError",
    "StructureNotFoundError",
    "ParameterError",
    "CompileError",
    "OutputError",
    "MissingExtraError",
    "EinstructWarning",
    "NoSavingsWarning",
]


#: The most characters of a source line an error shows (around the spot).
CARET_WINDOW = 120


@dataclass(frozen=True)
class Span:
    """A place in a spec: 1-based line and column, and the text of that line.

    ``length`` is how many characters the caret underlines (at least one).
    """

    file: str
    line: int
    column: int
    length: int = 1
    source_line: str = ""

    @classmethod
    def at(cls, file: str, lines: list[str], line: int | None, column: int | None, length: int = 1) -> Span:
        """The span at 1-based ``line`` and ``column`` of a source split into ``lines``
        (missing positions count as 1; the one way einstruct builds a span from a place).

        >>> Span.at("s.ein", ["structure s:"], 1, 11, 1).source_line
        'structure s:'
        """
        line = line or 1
        text = lines[line - 1] if 0 < line <= len(lines) else ""
        return cls(file=file, line=line, column=column or 1, length=max(1, length), source_line=text)

    def __str__(self) -> str:
        return f"{self.file}:{self.line}:{self.column}"

    def caret(self) -> str:
        """The source line and a caret line under the spot, indented by four.

        Columns count characters; the caret is placed by display width, so it
        stays under the spot after tabs, wide (East Asian) and combining
        characters. Characters that would move the cursor or break the line
        are shown escaped.
        """
        if not self.source_line:
            return ""
        text = _printable(self.source_line.rstrip("\r\n").expandtabs(1))
        column = self.column - 1
        head = tail = ""
        if len(text) > CARET_WINDOW:  # a long line: the part around the spot, marked as cut
            start = max(0, min(column - CARET_WINDOW // 2, len(text) - CARET_WINDOW))
            head = "..." if start else ""
            tail = "..." if start + CARET_WINDOW < len(text) else ""
            text, column = text[start : start + CARET_WINDOW], column - start
        before = head + text[:column]
        spot = text[column : column + max(1, self.length)] or " "
        pad = " " * _width(before)
        return f"    {head}{text}{tail}\n    {pad}{'^' * max(1, _width(spot))}"


class EinstructError(Exception):
    """Root of every error einstruct raises for a bad spec or bad arguments.

    Args:
        message: what is wrong, one sentence.
        span: where it is; ``None`` for errors without a place in a file.
        hint: what to do about it.
    """

    exit_code = 2

    def __init__(self, message: str, span: Span | None = None, hint: str | None = None):
        super().__init__(message)
        self.message = message
        self.span = span
        self.hint = hint

    def __str__(self) -> str:
        head = f"{self.span}: error: {self.message}" if self.span else f"error: {self.message}"
        parts = [head]
        if self.span is not None and self.span.source_line:
            parts.append(self.span.caret())
        if self.hint:
            parts.append(f"hint: {self.hint}")
        return "\n".join(parts)

    def __reduce__(self) -> tuple[type, tuple[str, Span | None, str | None]]:
        """Keep the error picklable with its fields."""
        return (self.__class__, (self.message, self.span, self.hint))


class EinstructWarning(UserWarning):
    """Root of einstruct's warnings: something worked, but probably not as you meant."""


class NoSavingsWarning(EinstructWarning):
    """A conversion that saves no FLOPs (every layer as costly as the dense one it replaced)."""


class SpecSyntaxError(EinstructError, SyntaxError):
    """The text is not in the structure language."""

    def __str__(self) -> str:  # SyntaxError has its own __str__; use ours
        return EinstructError.__str__(self)


class UnknownNameError(EinstructError, NameError):
    """A parameter, index, class, catalog entry or option that does not exist."""


class InvalidNameError(EinstructError, ValueError):
    """A name that cannot be used (keyword, dunder, clash with another name)."""


class SizeError(EinstructError, ValueError):
    """An index size that is missing, not a positive integer, or contradictory."""


class IndexUsageError(EinstructError, ValueError):
    """An index used in a way that has no meaning (repeated, dangling, a silent sum)."""


class WidthError(EinstructError, ValueError):
    """Input or output axes that do not multiply to the declared width."""


class RouteError(EinstructError, ValueError):
    """A ``route`` line that does not name a valid rank index or top-k."""


class StructureNotFoundError(EinstructError, LookupError):
    """A structure name asked for that the file does not have."""


class ParameterError(EinstructError, ValueError):
    """A bad parameter value or override (``--set``, keyword arguments)."""


class CompileError(EinstructError, ValueError):
    """A structure that the compiler cannot turn into a layer, or a bad option."""


class OutputError(EinstructError, OSError):
    """An output file einstruct will not write (it would destroy something) or cannot write."""

    def __str__(self) -> str:  # OSError has its own __str__; use ours
        return EinstructError.__str__(self)


class MissingExtraError(EinstructError, ImportError):
    """An optional dependency is not installed (the hint names the extra to install)."""


def _printable(text: str) -> str:
    """``text`` with each character that is not printable shown as ``?`` (columns stay aligned)."""
    return "".join(ch if ch.isprintable() else "?" for ch in text)


def _width(text: str) -> int:
    """Terminal columns ``text`` takes: wide characters 2, combining marks 0."""
    import unicodedata

    return sum(
        0 if unicodedata.combining(ch) else 2 if unicodedata.east_asian_width(ch) in "WF" else 1
        for ch in text
    )
