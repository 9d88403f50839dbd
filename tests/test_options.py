"""Property tests of every script's command line (hypothesis): whatever string a flag gets, it parses to a
finite value in range, or the script stops with exit 2 and one `error:` line, never a traceback. And the
Python APIs refuse the same values with the same words."""

import argparse
import io
import math
from contextlib import redirect_stderr

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import option
import validate

PARSERS = {
    "train": (option.get_train_parser, []),
    "test": (option.get_test_parser, []),
    "video": (option.get_video_parser, []),
    "demo": (option.get_demo_parser, []),
    "evaluate": (option.get_evaluate_parser, ["--pred_dir", "out"]),
    "export": (option.get_export_parser, []),
}


def typed_flags():
    """(script, flag) for every option of every parser that converts its value (all but plain strings)."""
    for script, (make, _) in PARSERS.items():
        for action in make()._actions:
            if action.option_strings and action.type is not None and action.nargs in (None, "?"):
                yield script, action.option_strings[0]


def numbers_as_text():
    """What a user may type for a number: floats of every kind (nan, inf, huge, tiny, negative) and ints,
    written the ways Python writes them, and arbitrary text."""
    return st.one_of(
        st.floats(allow_nan=True, allow_infinity=True).map(repr),
        st.floats().map(lambda x: f"{x:.3e}"),
        st.integers(min_value=-(2**70), max_value=2**70).map(str),
        st.sampled_from(["nan", "-nan", "inf", "-inf", "1e999", "0", "-0", "0.0", "", " 3 ", "1_000", "0x10", "true"]),
        st.text(max_size=12),
    )


def parse(script, argv):
    """(namespace or None, exit status or None, stderr)."""
    make, required = PARSERS[script]
    err = io.StringIO()
    with redirect_stderr(err):
        try:
            return make().parse_args([*required, *argv]), None, err.getvalue()
        except SystemExit as e:
            return None, e.code, err.getvalue()


def assert_in_range(value):
    if isinstance(value, float):
        assert math.isfinite(value)
    if isinstance(value, tuple):
        for v in value:
            assert_in_range(v)


@pytest.mark.parametrize("script, flag", sorted(set(typed_flags())))
@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(text=numbers_as_text())
def test_every_flag_parses_to_a_finite_value_or_one_error_line(script, flag, text):
    args, status, err = parse(script, [flag, text])
    if args is None:
        lines = err.strip().splitlines()
        assert status == 2 and len(lines) == 1 and ": error: " in lines[0] and "Traceback" not in err
    else:
        dest = next(a.dest for a in PARSERS[script][0]()._actions if flag in a.option_strings)
        assert_in_range(getattr(args, dest))


def test_every_numeric_flag_has_a_validator():
    """No flag converts with a bare int or float (which take nan, inf and negative numbers)."""
    for script, (make, _) in PARSERS.items():
        for action in make()._actions:
            assert action.type not in (int, float), f"{script} {action.option_strings} has type={action.type}"


@pytest.mark.parametrize(
    "script, flag, value",
    [
        ("train", "--lr", "nan"),
        ("train", "--tv_weight", "-1"),
        ("demo", "--max_upload_mb", "-1"),
        ("demo", "--max_busy_mb", "nan"),
        ("demo", "--port", "70000"),
        ("test", "--max_mpix", "inf"),
        ("video", "--fps", "0"),
        ("video", "--crf", "52"),
        ("export", "--fixed_size", "0x10"),
        ("evaluate", "--grid_height", "-3"),
    ],
)
def test_known_bad_values_are_refused(script, flag, value):
    args, status, err = parse(script, [flag, value])
    assert args is None and status == 2 and f"argument {flag}: expected" in err


@given(value=st.one_of(st.floats(), st.integers(), st.text(max_size=6), st.booleans(), st.none()))
def test_python_apis_and_flags_agree(value):
    """validate.positive_int on a Python value says what the flag says on its text, word for word."""
    try:
        result = validate.positive_int(value, "scale_factor")
    except validate.InvalidValue as e:
        assert str(e).startswith("scale_factor: expected a positive integer, got ")
    else:
        assert isinstance(result, int) and result >= 1 and not isinstance(value, bool)


def test_argparse_adapter_reports_the_validators_words():
    with pytest.raises(argparse.ArgumentTypeError, match=r"^expected a positive finite number, got 'nan'$"):
        option.positive_finite("nan")
    with pytest.raises(ValueError, match=r"^lr: expected a positive finite number, got nan$"):
        validate.positive_float(float("nan"), "lr")
