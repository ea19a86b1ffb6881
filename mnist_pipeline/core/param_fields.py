"""How a command parameter is declared and read: a dataclass field whose metadata holds its
help, how its command-line / MLproject string is read (``parse``) and what it allows
(``ok``, ``allowed``); and ``Params``, the base of the command dataclasses in params.py.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import MISSING, field, fields

from mnist_pipeline.core.config import ConfigError, show


def param(default, help: str, parse=str, allowed: str = "", ok=None, positional: bool = False):
    """A dataclass field with its help; ``parse(text)`` reads it (ValueError: not allowed),
    ``ok(value)`` checks it, ``allowed`` says what is allowed in the error message."""
    return field(
        default=default, metadata={"help": help, "parse": parse, "allowed": allowed, "ok": ok, "positional": positional}
    )


def text(value) -> str:
    """A field value as MLproject and the command line write it ('' for None)."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, tuple):
        return ",".join(map(str, value))
    return str(value)


def stripped(parse):
    return lambda raw: parse(raw.strip())


def optional(parse):
    """'' (after stripping) is None: "not given"."""
    return lambda raw: parse(raw.strip()) if raw.strip() else None


class Params:
    """Base of the command dataclasses: reading strings, and checks at construction."""

    def __post_init__(self):
        for f in fields(self):
            check, value = f.metadata.get("ok"), getattr(self, f.name)
            if check is not None and value is not None and not check(value):
                raise ConfigError(f"{f.name}={show(value)} is not allowed: {f.metadata['allowed']}")
        self.check()

    def check(self) -> None:
        """Checks across fields; the default has none."""

    @classmethod
    def from_strings(cls, raw: Mapping[str, str | list[str]]):
        """The command's params from its strings (a list for a positional field); a missing
        name takes the default."""
        return cls(**{f.name: _read(f, raw[f.name]) for f in fields(cls) if f.name in raw})

    @classmethod
    def defaults(cls) -> dict[str, str]:
        """Every option's default as MLproject writes it (positional fields have none)."""
        return {
            f.name: text(f.default) for f in fields(cls) if f.default is not MISSING and not f.metadata["positional"]
        }


def _read(f, raw):
    if isinstance(raw, list):
        return tuple(raw)
    meta = f.metadata
    try:
        value = meta["parse"](raw)
    except ConfigError:  # a parser with a message of its own
        raise
    except ValueError:
        raise ConfigError(f"{f.name}={raw!r} is not allowed: {meta['allowed']}") from None
    if value is not None and meta["ok"] is not None and not meta["ok"](value):
        raise ConfigError(f"{f.name}={raw!r} is not allowed: {meta['allowed']}")
    return value
