"""Values from the command line or a config override, parsed into their type with one clear line for a bad value.

Command lines and bundle overrides hand over text (``"false"``, ``"nan"``, ``"abc"``) or whatever ``fire`` made of it
(``False``, ``1e-3``, ``[1, 2]``). Every flag of ``lckd-med``, ``data_prep`` and every bundle setting goes through
these parsers, so ``"false"`` is ``False`` everywhere, ``nan`` is refused where a number must mean something, and the
message names the setting, what it must be and what it got. :func:`arg_type` adapts a parser to ``argparse``;
:class:`OneLineArgumentParser` prints argument errors as one line.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from collections.abc import Callable, Sequence
from typing import Any, NoReturn

__all__ = [
    "TRUE_WORDS",
    "FALSE_WORDS",
    "parse_bool",
    "parse_int",
    "parse_float",
    "parse_choice",
    "parse_int_list",
    "parse_str_list",
    "parse_text",
    "optional",
    "arg_type",
    "OneLineArgumentParser",
]

#: Words read as ``True`` / ``False`` (any case).
TRUE_WORDS: tuple[str, ...] = ("true", "yes", "on", "1")
FALSE_WORDS: tuple[str, ...] = ("false", "no", "off", "0")
_NONE_WORDS = ("none", "null")


def _shown(value: object) -> str:
    return repr(value) if not isinstance(value, str) else f"'{value}'"


def parse_bool(value: object, name: str) -> bool:
    """``value`` as a bool: ``True``/``False``, ``1``/``0`` or one of :data:`TRUE_WORDS` / :data:`FALSE_WORDS`.

    Raises:
        ValueError: anything else (``"maybe"``, ``2``, ``None``), naming ``name``.
    """
    if isinstance(value, bool):
        return value
    if isinstance(value, int) and value in (0, 1):
        return bool(value)
    if isinstance(value, str):
        word = value.strip().lower()
        if word in TRUE_WORDS:
            return True
        if word in FALSE_WORDS:
            return False
    raise ValueError(f"{name} must be true or false, got {_shown(value)}")


def _bounds(minimum: int | None, maximum: int | None) -> str:
    if minimum is not None and maximum is not None:
        return f" in [{minimum}, {maximum}]"
    if minimum is not None:
        return f" >= {minimum}"
    return f" <= {maximum}" if maximum is not None else ""


def _number(value: object, name: str, what: str) -> float:
    if isinstance(value, bool) or value is None:
        raise ValueError(f"{name} must be {what}, got {_shown(value)}")
    if isinstance(value, (int, float)):
        return float(value)
    if isinstance(value, str):
        try:
            return float(value.strip())
        except ValueError:
            pass
    raise ValueError(f"{name} must be {what}, got {_shown(value)}")


def parse_int(value: object, name: str, minimum: int | None = None, maximum: int | None = None) -> int:
    """``value`` as an int within ``[minimum, maximum]`` (a whole-number float or text is accepted, ``True`` is not).

    Raises:
        ValueError: not a whole number, or out of range, naming ``name``.
    """
    what = "a whole number" + _bounds(minimum, maximum)
    if isinstance(value, int) and not isinstance(value, bool):
        number = value
    else:
        x = _number(value, name, what)
        if not math.isfinite(x) or x != int(x):
            raise ValueError(f"{name} must be {what}, got {_shown(value)}")
        number = int(x)
    if (minimum is not None and number < minimum) or (maximum is not None and number > maximum):
        raise ValueError(f"{name} must be {what}, got {_shown(value)}")
    return number


def parse_float(
    value: object,
    name: str,
    low: float | None = None,
    high: float | None = None,
    low_open: bool = False,
    high_open: bool = False,
) -> float:
    """``value`` as a finite float within the given bounds (NaN and infinities are always refused).

    Args:
        low, high: bounds (None: unbounded); ``low_open``/``high_open`` exclude them.

    Raises:
        ValueError: not a number, not finite, or out of range, naming ``name`` and the interval.
    """
    if low is not None and high is not None:
        what = f"a number in {'(' if low_open else '['}{low:g}, {high:g}{')' if high_open else ']'}"
    elif low is not None:
        what = f"a number {'>' if low_open else '>='} {low:g}"
    elif high is not None:
        what = f"a number {'<' if high_open else '<='} {high:g}"
    else:
        what = "a finite number"
    x = _number(value, name, what)
    if not math.isfinite(x):
        raise ValueError(f"{name} must be {what}, got {_shown(value)} (not a finite number)")
    if low is not None and (x <= low if low_open else x < low):
        raise ValueError(f"{name} must be {what}, got {_shown(value)}")
    if high is not None and (x >= high if high_open else x > high):
        raise ValueError(f"{name} must be {what}, got {_shown(value)}")
    return x


def parse_choice(value: object, name: str, choices: Sequence[str]) -> str:
    """``value`` when it is one of ``choices`` (exact text).

    Raises:
        ValueError: naming ``name`` and listing the choices.
    """
    if isinstance(value, str) and value in choices:
        return value
    raise ValueError(f"{name} must be one of {', '.join(choices)}; got {_shown(value)}")


def _sequence(value: object, name: str, what: str) -> list[Any]:
    if isinstance(value, str):
        text = value.strip()
        if text.startswith("[") != text.endswith("]"):
            raise ValueError(f"{name} must be {what}, got {_shown(text)}")
        try:
            value = json.loads(text)
        except json.JSONDecodeError:  # [t1ce] or 1,2,3: unquoted items, separated by commas or spaces
            value = [v for v in text.removeprefix("[").removesuffix("]").replace(",", " ").split() if v]
    if isinstance(value, tuple):
        value = list(value)
    if not isinstance(value, list):
        raise ValueError(f"{name} must be {what}, got {_shown(value)}")
    return value


def parse_int_list(
    value: object, name: str, length: int | None = None, minimum: int | None = None, allow_empty: bool = False
) -> list[int]:
    """``value`` as a list of ints: a list, a tuple, or text ``"[1,2,3]"`` / ``"1,2,3"`` / ``"1 2 3"``.

    Args:
        length: the number of entries required (None: any).
        minimum: smallest value allowed per entry.
        allow_empty: accept ``[]``.

    Raises:
        ValueError: naming ``name``, what it must be and the value given.
    """
    count = f"{length} " if length is not None else ""
    example = ", e.g. [160,160,80]" if length == 3 else ""
    what = f"a list of {count}whole numbers{_bounds(minimum, None)}{example}"
    items = _sequence(value, name, what)
    if (length is not None and len(items) != length) or (not items and not allow_empty):
        raise ValueError(f"{name} must be {what}, got {_shown(value)}")
    try:
        return [parse_int(v, name, minimum) for v in items]
    except ValueError:
        raise ValueError(f"{name} must be {what}, got {_shown(value)}") from None


def parse_str_list(value: object, name: str, choices: Sequence[str] | None = None) -> list[str]:
    """``value`` as a list of strings (from a list or text ``"[a,b]"`` / ``"a,b"``), each one of ``choices`` if given.

    Raises:
        ValueError: naming ``name`` and the bad entry.
    """
    items = _sequence(value, name, "a list of names, e.g. [t1ce]")
    for v in items:
        if not isinstance(v, str) or (choices is not None and v not in choices):
            allowed = f" (each one of {', '.join(choices)})" if choices is not None else ""
            raise ValueError(f"{name} must be a list of names{allowed}; got {_shown(value)}")
    return list(items)


def parse_text(value: object, name: str) -> str:
    """``value`` as non-empty text (a path, a name); a number given on the command line becomes its text.

    Raises:
        ValueError: empty, or not text or a number.
    """
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        value = str(value)
    if isinstance(value, str) and value.strip():
        return value
    raise ValueError(f"{name} must be a non-empty name or path, got {_shown(value)}")


def optional(parser: Callable[..., Any]) -> Callable[..., Any]:
    """``parser`` that also accepts ``None`` (and the words ``none``/``null``) and returns ``None`` for them."""

    def parse(value: object, name: str, *args: Any, **kwargs: Any) -> Any:
        if value is None or (isinstance(value, str) and value.strip().lower() in _NONE_WORDS):
            return None
        return parser(value, name, *args, **kwargs)

    parse.__name__ = f"optional_{getattr(parser, '__name__', 'value')}"
    parse.__doc__ = f"``None`` or :func:`{getattr(parser, '__name__', 'parser')}`."
    return parse


def arg_type(parser: Callable[..., Any], name: str, **kwargs: Any) -> Callable[[str], Any]:
    """An ``argparse`` ``type=`` from a parser of this module: ``type=arg_type(parse_float, "--overlap", low=0)``.

    The parser's message becomes argparse's one error line (exit status 2).
    """

    def convert(text: str) -> Any:
        try:
            return parser(text, name, **kwargs)
        except ValueError as e:  # argparse says "argument --x: " itself
            message = str(e).removeprefix(f"{name}: ").removeprefix(f"{name} ")
            raise argparse.ArgumentTypeError(message) from None

    convert.__name__ = name.lstrip("-")  # argparse names the type in some messages
    return convert


class OneLineArgumentParser(argparse.ArgumentParser):
    """``argparse.ArgumentParser`` whose errors are one line, ``<prog>: error: <message> (see <prog> --help)``,
    exit status 2, instead of the usage block followed by the error."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")

    def exit(self, status: int = 0, message: str | None = None) -> NoReturn:
        if message:
            sys.stderr.write(message)
        raise SystemExit(status)
