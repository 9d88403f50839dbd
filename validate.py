"""The validators of every value a user gives: the scripts' flags (option.py wraps each one as an argparse
`type=`) and the Python APIs' arguments (hubconf.sgz, enhance.Enhancer, test.Tester, model.EnhanceNet).
One function per kind of value, so a bad value reads the same wherever it is given:

    positive_int("0")            -> InvalidValue: expected a positive integer, got '0'
    positive_float(nan, "lr")    -> InvalidValue: lr: expected a positive finite number, got nan

Each takes a string (from a command line) or a number (from Python) and returns the value converted,
finite and in range, or raises InvalidValue, which is both a runtime.UserError (a script prints it as one
line and exits 2) and a ValueError (what Python code expects of a bad argument). Booleans are not numbers
here (True is an int to Python, never what a user means by a count). Stdlib only, like runtime.py.
"""

import math
import numbers
import re

from runtime import UserError


class InvalidValue(UserError, ValueError):
    """A value out of range, not finite, or of the wrong type; the message says what was expected."""


def _fail(name, expected, value):
    raise InvalidValue(f"{name + ': ' if name else ''}expected {expected}, got {value!r}")


def _number(value, name, expected, kind):
    """value as `kind` (int or float), or InvalidValue. Strings are parsed; an integer-valued float (12.0)
    is an integer; booleans, None and non-integer floats are refused where an integer is needed."""
    if isinstance(value, bool) or value is None:
        _fail(name, expected, value)
    try:
        if kind is int:
            if isinstance(value, numbers.Integral):
                return int(value)
            if isinstance(value, str):
                return int(value.strip(), 10)
            x = float(value)
            if math.isfinite(x) and x.is_integer():
                return int(x)
            _fail(name, expected, value)
        return float(value.strip() if isinstance(value, str) else value)
    except (TypeError, ValueError, OverflowError) as e:
        if isinstance(e, InvalidValue):
            raise
        _fail(name, expected, value)


def integer(value, name=None, low=None, high=None):
    """An integer in [low, high] (either bound may be None: unbounded)."""
    if low is not None and high is not None:
        expected = f"an integer from {low} to {high}"
    elif low is not None:
        expected = {0: "0 or a positive integer", 1: "a positive integer"}.get(low, f"an integer >= {low}")
    else:
        expected = "an integer" if high is None else f"an integer <= {high}"
    n = _number(value, name, expected, int)
    if (low is not None and n < low) or (high is not None and n > high):
        _fail(name, expected, value)
    return n


def real(value, name=None, low=None, high=None, low_open=False, high_open=False, expected=None):
    """A finite number in the interval from low to high (open at an end where *_open; None: unbounded).
    nan and infinities are always refused (nan compares false with any limit, so it would pass one)."""
    if expected is None:
        lo = "" if low is None else ("(" if low_open else "[") + f"{low:g}"
        hi = "" if high is None else f"{high:g}" + (")" if high_open else "]")
        expected = "a finite number" + (f" in {lo or '(-inf'}, {hi or 'inf)'}" if lo or hi else "")
    x = _number(value, name, expected, float)
    if not math.isfinite(x):
        _fail(name, expected, value)
    if low is not None and (x < low or (low_open and x == low)):
        _fail(name, expected, value)
    if high is not None and (x > high or (high_open and x == high)):
        _fail(name, expected, value)
    return x


def positive_int(value, name=None):
    return integer(value, name, low=1)


def non_negative_int(value, name=None):
    return integer(value, name, low=0)


def positive_float(value, name=None):
    """A finite number > 0 (learning rates, sizes in MB, frame rates)."""
    return real(value, name, low=0, low_open=True, expected="a positive finite number")


def non_negative_float(value, name=None):
    """A finite number >= 0 (loss weights, weight decay)."""
    return real(value, name, low=0, expected="a finite number >= 0")


def unit_interval(value, name=None):
    """A finite number in [0, 1] (a probability, a level in [0, 1])."""
    return real(value, name, low=0, high=1)


def port(value, name=None):
    """A TCP port: 0 (pick a free one) to 65535."""
    return integer(value, name, low=0, high=65535)


def quality(value, name=None):
    return integer(value, name, low=1, high=100)


def seed(value, name=None):
    """A random seed every generator takes (numpy's: 0 to 2**32 - 1)."""
    return integer(value, name, low=0, high=2**32 - 1)


DEVICE = re.compile(r"auto|cpu|mps|cuda(:\d+)?|xpu(:\d+)?")


def device(value, name=None):
    """auto, cpu, mps, cuda, cuda:N (what model.get_device takes), as a string."""
    if not (isinstance(value, str) and DEVICE.fullmatch(value.strip())):
        _fail(name, "a device: auto, cpu, cuda, cuda:N or mps", value)
    return value.strip()


def one_of(value, choices, name=None):
    if value not in choices:
        _fail(name, f"one of {', '.join(map(str, choices))}", value)
    return value


def host(value, name=None):
    """A host name or address to listen on: letters, digits, dots, colons, hyphens, underscores and the
    brackets of an IPv6 address (what an address or a DNS name can hold)."""
    if not (isinstance(value, str) and re.fullmatch(r"[A-Za-z0-9.:\[\]_-]{1,253}", value)):
        _fail(name, "a host name or IP address", value)
    return value


def host_list(value, name=None):
    """Comma-separated host names ('' for none, `*` for any), each as `host` takes it."""
    if not isinstance(value, str):
        _fail(name, "comma-separated host names", value)
    for item in value.split(","):
        if item.strip() not in ("", "*") and not re.fullmatch(r"[A-Za-z0-9.:\[\]_-]{1,253}", item.strip()):
            _fail(name, "comma-separated host names", value)
    return value


def label(value, name=None):
    """A short name for tables and pictures: 1-100 printable characters."""
    if not (isinstance(value, str) and 0 < len(value) <= 100 and value.isprintable()):
        _fail(name, "a name of 1 to 100 printable characters", value)
    return value


def path_text(value, name=None):
    """A path as given: a non-empty string without NUL characters (which no file system takes)."""
    if not isinstance(value, str) or not value or "\0" in value:
        _fail(name, "a path", value)
    return value
