"""Settings defined once: a config dataclass's field carries its default, its help and its flag.

`monovl serve` derives its options from the fields (`add_arguments`) and builds the configs back
from the parsed namespace (`from_arguments`), so a default cannot differ between the command line
and the code that runs without one (tests, benchmarks, `monovl generate`). A field's range is
declared with it (`minimum`, or `positive` for more than 0), and a value outside it is refused when
the command line is parsed: exit 2, naming the flag, before anything loads.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Callable
from dataclasses import MISSING, field, fields
from typing import Any

_TYPES = {"int": int, "float": float, "str": str}


def setting(
    default: Any,
    help: str,
    *,
    flag: str | None = None,
    negate: bool = False,
    choices=None,
    minimum: float | None = None,
    maximum: float | None = None,
    positive: bool = False,
    env: str | None = None,
    parse: Callable[[str], Any] | None = None,
) -> Any:
    """A field with a command-line option. `negate`: a True default that the flag turns off
    (`--enforce-eager` for `cuda_graphs`). `minimum`, `maximum` (inclusive) or `positive` (more
    than 0): the values the option accepts. `env`: a variable that overrides the default. `parse`:
    the option's text to the field's value, where the field's type does not say it."""
    metadata = {"help": help, "flag": flag, "negate": negate, "choices": choices, "env": env, "parse": parse}
    limits = {"minimum": minimum, "maximum": maximum, "positive": positive}
    return field(default=default, metadata={**metadata, **limits})


def in_range(
    kind: Callable[[str], Any], minimum: float | None = None, maximum: float | None = None, positive: bool = False
) -> Callable[[str], Any]:
    """An argparse `type` that parses with `kind` and refuses what is outside the range (NaN too)."""

    def parse(text: str) -> Any:
        value = kind(text)
        problem = out_of_range(value, minimum, maximum, positive)
        if problem is not None:
            raise argparse.ArgumentTypeError(f"{problem}, not {text}")
        return value

    parse.__name__ = kind.__name__  # argparse names the type in "invalid int value"
    return parse


def out_of_range(value: float, minimum: float | None, maximum: float | None, positive: bool) -> str | None:
    """What is wrong with `value` for the range (NaN is outside every range); None if nothing."""
    if positive and not value > 0:
        return "must be more than 0"
    if minimum is not None and not value >= minimum:
        return f"must be at least {minimum:g}"
    if maximum is not None and not value <= maximum:
        return f"must be at most {maximum:g}"
    return None


def flag(config: type, name: str) -> str:
    """The command-line option of `config`'s field `name`."""
    return _flag(next(f for f in fields(config) if f.name == name))


def _flag(f) -> str:
    return f.metadata["flag"] or "--" + f.name.replace("_", "-")


def add_arguments(parser: argparse.ArgumentParser, config: type) -> None:
    for f in fields(config):
        if "help" not in f.metadata:
            continue
        meta = f.metadata
        if meta["negate"]:
            parser.add_argument(_flag(f), dest=f.name, action="store_false", default=f.default, help=meta["help"])
        elif f.type == "bool":
            parser.add_argument(_flag(f), dest=f.name, action="store_true", default=f.default, help=meta["help"])
        else:
            kind = meta["parse"] or _TYPES[f.type.removesuffix(" | None")]
            if meta["minimum"] is not None or meta["maximum"] is not None or meta["positive"]:
                kind = in_range(kind, meta["minimum"], meta["maximum"], meta["positive"])
            shown = [] if f.default in (None, ()) else [f"default: {f.default}"]
            if meta["env"]:
                shown.append(f"or {meta['env']}")
            # argparse parses a default given as text, so a variable's value is checked as the flag's is.
            default = os.environ.get(meta["env"], f.default) if meta["env"] else f.default
            help = meta["help"] + (f" ({'; '.join(shown)})" if shown else "")
            parser.add_argument(_flag(f), dest=f.name, type=kind, default=default, choices=meta["choices"], help=help)


def from_arguments(config: type, args: argparse.Namespace, **others: Any) -> Any:
    """`config` from the parsed options of its fields; `others` for the fields without one, or to
    override an option by what the command makes of it."""
    values = {f.name: getattr(args, f.name) for f in fields(config) if "help" in f.metadata}
    return config(**{**values, **others})


def defaults(config: type) -> dict[str, Any]:
    """Each field's default, for the fields that have a command-line option."""
    return {f.name: f.default for f in fields(config) if "help" in f.metadata and f.default is not MISSING}


def configured(config: type, values: dict[str, Any]) -> Any:
    """`config` from keyword values, each checked as its flag is (type, range, choices): what the
    library takes where the command line takes flags. ValueError names the keyword; TypeError an
    unknown one."""
    known = {f.name: f for f in fields(config)}
    for name, value in values.items():
        f = known.get(name)
        if f is None:
            raise TypeError(f"unknown setting {name!r}")
        meta = f.metadata
        if value is None or "help" not in meta or isinstance(value, bool):
            continue
        if meta["choices"] is not None and value not in meta["choices"]:
            raise ValueError(f"{name} must be one of {', '.join(map(str, meta['choices']))}, not {value!r}")
        problem = out_of_range(value, meta["minimum"], meta["maximum"], meta["positive"])
        if problem is not None:
            raise ValueError(f"{name} {problem}, not {value!r}")
    return config(**values)
