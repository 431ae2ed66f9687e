"""Where a config was written: the file, and the keys that normalisation moved.

The one-project short form (``cloud: {project_id, ak, sk}`` + ``instances``) is rewritten into the fleet form
before validation. Its :class:`SourceMap` records each move as it is made, so that every message — a
validation error, a missing credential found later — names the key the user wrote (``cloud.sk``), not the
one it was moved to (``cloud.0.credentials.sk``).
"""

from __future__ import annotations

import difflib
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

#: A key path: mapping keys and list indices, outermost first (pydantic's ``loc``).
Loc = tuple[str | int, ...]


@dataclass(frozen=True)
class SourceMap:
    file: str = "<config>"
    #: (where normalisation put a key, where the file has it), most specific first.
    moves: tuple[tuple[Loc, Loc], ...] = ()

    def key(self, loc: Sequence[str | int]) -> str:
        """The dotted key path of ``loc`` (a path in the normalised config) as the file writes it."""
        path = tuple(loc)
        for moved, written in self.moves:
            if path[: len(moved)] == moved:
                path = written + path[len(moved) :]
                break
        return ".".join(str(part) for part in path)


@dataclass(frozen=True)
class Problem:
    """One thing wrong with a config, at a key path as written in the file (``""``: the whole file)."""

    key: str
    message: str

    def __str__(self) -> str:
        return f"{self.key}: {self.message}" if self.key else self.message


def report(file: str, problems: Iterable[Problem | str]) -> str:
    """One error for every problem found: the file, then a line per problem."""
    lines = [str(p) for p in dict.fromkeys(problems)]
    count = f"{len(lines)} problem" + ("" if len(lines) == 1 else "s")
    return "\n".join([f"{file}: invalid configuration ({count}):", *(f"  {line}" for line in lines)])


def _backticks(word: str) -> str:
    return f"`{word}`"


def did_you_mean(word: str, choices: Iterable[str], quote: Callable[[str], str] = _backticks) -> str:
    """``; did you mean `interval`?`` when one of ``choices`` is close to ``word``, else nothing."""
    close = difflib.get_close_matches(word, list(choices), n=1)
    return f"; did you mean {quote(close[0])}?" if close else ""


def unknown_key(key: object, where: str, known: Iterable[str]) -> Problem:
    """``unknown key `intervall` in poll; did you mean `interval`?`` (or the keys it could have been)."""
    choices = sorted(set(known))
    place = f"in {where}" if where else "at the top level"
    hint = did_you_mean(str(key), choices) or (f" (known: {', '.join(choices)})" if choices else "")
    shown = str(key) if len(str(key)) <= 40 else f"{str(key)[:37]}..."  # a pasted URL or token, cut short
    return Problem("", f"unknown key `{shown}` {place}{hint}")
