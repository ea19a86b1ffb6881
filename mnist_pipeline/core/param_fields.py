"""How a parameter is declared and read: a dataclass field whose metadata holds its help, how
its command-line, MLproject or logged string is read (``parse``) and what it allows (``ok``,
``allowed``); and ``Params``, the base of ``config.TrainConfig`` and of the command dataclasses
in commands.py. A parser raises ValueError (or KeyError) for the field's message, ConfigError for
its own.
"""

import math
from collections.abc import Mapping
from dataclasses import MISSING, Field, field, fields

from mnist_pipeline.core.errors import UserError


class ConfigError(UserError):
    """A parameter value that is not allowed; the message is one line for the user (a parser
    raises it for a message of its own, ValueError for the field's)."""


def param(default, help: str, parse=str, allowed: str = "", ok=None, positional: bool = False, **more):
    """A dataclass field with its help; ``parse(text)`` reads it (ValueError: not allowed),
    ``ok(value)`` checks it, ``allowed`` says what is allowed in the error message; ``more``:
    further metadata (TrainConfig's knobs: ``unlogged``, ``override``). A ``default`` of
    dataclasses.MISSING: a field without one."""
    meta = {"help": help, "parse": parse, "allowed": allowed, "ok": ok, "positional": positional, **more}
    return field(default=default, metadata=meta)


def optional(parse):
    """'' (after stripping) is None: "not given"."""
    return lambda raw: parse(raw.strip()) if raw.strip() else None


_BOOLS = {"true": True, "1": True, "yes": True, "false": False, "0": False, "no": False}


def _to_bool(raw: str) -> bool:
    return _BOOLS[raw.strip().lower()]  # KeyError: not allowed


def switch(default: bool, help: str, **more):
    """A true/false field: true or false (also 1 or 0, yes or no, any case)."""
    return param(default, help, _to_bool, "must be true or false", lambda v: isinstance(v, bool), **more)


def is_int(x) -> bool:
    """An int, not a bool."""
    return isinstance(x, int) and not isinstance(x, bool)


def _finite(x) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def integer(default, help: str, allowed: str, within, parse=int, **more):
    """An integer field ``within`` its range; ``allowed`` says which, after "must be an integer"."""
    return param(default, help, parse, f"must be an integer {allowed}", lambda v: is_int(v) and within(v), **more)


def number(default, help: str, allowed: str, within, parse=float, **more):
    """A finite number ``within`` its range; ``allowed`` says which, after "must be a number"."""
    return param(default, help, parse, f"must be a number {allowed}", lambda v: _finite(v) and within(v), **more)


def text(value) -> str:
    """A field value as MLproject and the command line write it ('' for None)."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, tuple):
        return ",".join(map(str, value))
    return str(value)


def _refused(f: Field, shown: str) -> ConfigError:
    return ConfigError(f"{f.name}={shown} is not allowed: {f.metadata['allowed']}")


def read(f: Field, raw: str | list[str]):
    """``raw`` (a positional field's list of words) read by the field's parser and checked; the
    error names the field and ``raw``."""
    try:
        value = f.metadata["parse"](raw)
    except (ValueError, KeyError):  # KeyError: a look-up of a word the parser does not know
        raise _refused(f, repr(raw)) from None
    if value is not None and f.metadata["ok"] is not None and not f.metadata["ok"](value):
        raise _refused(f, repr(raw))
    return value


class Params:
    """Base of the parameter dataclasses: reading strings, and checks at construction."""

    def __post_init__(self):
        for f in fields(self):
            ok, value = f.metadata.get("ok"), getattr(self, f.name)
            # None as the default: not given; a value shown as MLproject writes it, a string quoted
            if ok is not None and (value is not None or f.default is not None) and not ok(value):
                raise _refused(f, repr(value) if isinstance(value, str) else text(value) or "''")
        self.check()

    def check(self) -> None:
        """Checks across fields; the default has none."""

    @classmethod
    def from_strings(cls, raw: Mapping[str, str | list[str]]):
        """The params from their strings (a list for a positional field); a missing name takes
        the default."""
        return cls(**{f.name: read(f, raw[f.name]) for f in fields(cls) if f.name in raw})

    @classmethod
    def defaults(cls) -> dict[str, str]:
        """Every option's default as MLproject writes it (positional fields have none)."""
        return {
            f.name: text(f.default) for f in fields(cls) if f.default is not MISSING and not f.metadata["positional"]
        }
