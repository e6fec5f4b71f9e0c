"""Typed values from command lines and overrides: text and fire's values parsed into their type, one line when bad."""

from __future__ import annotations

import argparse

import pytest

from lckd_med.utils.parse import (
    OneLineArgumentParser,
    arg_type,
    optional,
    parse_bool,
    parse_choice,
    parse_float,
    parse_int,
    parse_int_list,
    parse_str_list,
    parse_text,
)

GOOD = [
    (parse_bool, ("false",), {}, False),
    (parse_bool, ("False",), {}, False),
    (parse_bool, ("no",), {}, False),
    (parse_bool, (0,), {}, False),
    (parse_bool, ("TRUE",), {}, True),
    (parse_bool, (True,), {}, True),
    (parse_int, ("3",), {"minimum": 1}, 3),
    (parse_int, (4.0,), {}, 4),
    (parse_float, ("1e-3",), {"low": 0, "low_open": True}, 1e-3),
    (parse_float, (0,), {"low": 0, "high": 1, "high_open": True}, 0.0),
    (parse_choice, ("sgd",), {"choices": ("sgd", "adamw")}, "sgd"),
    (parse_int_list, ("[16,16,8]",), {"length": 3, "minimum": 1}, [16, 16, 8]),
    (parse_int_list, ("16, 16, 8",), {"length": 3}, [16, 16, 8]),
    (parse_int_list, ((1, -1),), {}, [1, -1]),
    (parse_str_list, ("[t1ce]",), {"choices": ("t1", "t1ce")}, ["t1ce"]),
    (parse_str_list, ([],), {}, []),
    (parse_text, (123,), {}, "123"),
    (optional(parse_int), ("null",), {}, None),
    (optional(parse_int), (None,), {}, None),
]


@pytest.mark.parametrize(("parser", "args", "kwargs", "expected"), GOOD)
def test_values_are_parsed_into_their_type(parser, args, kwargs, expected):
    got = parser(*args, "--x", **kwargs)
    assert got == expected and type(got) is type(expected)


BAD = [
    (parse_bool, "maybe", {}, "--x must be true or false, got 'maybe'"),
    (parse_bool, 2, {}, "true or false"),
    (parse_bool, None, {}, "true or false"),
    (parse_int, "abc", {}, "whole number"),
    (parse_int, "1.5", {}, "whole number"),
    (parse_int, True, {}, "whole number"),
    (parse_int, "0", {"minimum": 1}, "whole number >= 1, got '0'"),
    (parse_int, -1, {"minimum": 0}, ">= 0"),
    (parse_int, 9, {"minimum": 0, "maximum": 4}, "in [0, 4]"),
    (parse_int, "nan", {}, "whole number"),
    (parse_float, "nan", {"low": 0, "high": 1}, "not a finite number"),
    (parse_float, "inf", {}, "not a finite number"),
    (parse_float, "abc", {"low": 0, "low_open": True}, "a number > 0, got 'abc'"),
    (parse_float, 1, {"low": 0, "high": 1, "high_open": True}, "in [0, 1)"),
    (parse_float, 0, {"low": 0, "low_open": True}, "> 0"),
    (parse_choice, "sgdd", {"choices": ("sgd", "adamw")}, "one of sgd, adamw"),
    (parse_int_list, "[16,16]", {"length": 3}, "list of 3 whole numbers"),
    (parse_int_list, "[16,x,16]", {"length": 3}, "list of 3"),
    (parse_int_list, "[16,16,0]", {"length": 3, "minimum": 1}, ">= 1"),
    (parse_int_list, "[1,2", {}, "list of"),
    (parse_str_list, "[t3]", {"choices": ("t1", "t1ce")}, "each one of t1, t1ce"),
    (parse_text, "  ", {}, "non-empty"),
]


@pytest.mark.parametrize(("parser", "value", "kwargs", "match"), BAD)
def test_bad_values_give_one_line_naming_the_setting(parser, value, kwargs, match):
    with pytest.raises(ValueError) as info:
        parser(value, "--x", **kwargs)
    message = str(info.value)
    assert match in message and "--x" in message and "\n" not in message


def test_argparse_adapter_and_one_line_errors(capsys):
    p = OneLineArgumentParser(prog="tool")
    p.add_argument("--overlap", type=arg_type(parse_float, "--overlap", low=0.0, high=1.0, high_open=True))
    assert p.parse_args(["--overlap", "0.25"]).overlap == 0.25
    with pytest.raises(SystemExit) as info:
        p.parse_args(["--overlap", "nan"])
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "tool: error: argument --overlap: must be a number in [0, 1)" in err
    assert isinstance(arg_type(parse_int, "--n")("3"), int)
    with pytest.raises(argparse.ArgumentTypeError, match="^must be a whole number"):
        arg_type(parse_int, "--n")("x")
