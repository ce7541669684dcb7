"""Argument checks shared across the kit; each error names the argument.

Numbers may be Python or NumPy scalars (a value read from an array); bools
are refused. Checked values come back as Python `int` or `float` (-0.0 as
0.0)."""

import numbers


def is_integer(value):
    """Whether `value` is an integer (Python or NumPy), not a bool."""
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def is_real(value):
    """Whether `value` is a real number (Python or NumPy), not a bool."""
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def check_positive_int(name, value):
    if not is_integer(value) or value < 1:
        raise ValueError(
            f"`{name}` must be a positive integer. Received: {name}={value!r}"
        )
    return int(value)


def check_positive_float(name, value):
    """Returns `value` as a float if it is a finite number above zero."""
    if not is_real(value) or not 0 < value < float("inf"):
        raise ValueError(
            f"`{name}` must be a positive finite number. "
            f"Received: {name}={value!r}"
        )
    return float(value) + 0.0


def check_rate(name, value):
    if not is_real(value) or not 0.0 <= value < 1.0:
        raise ValueError(
            f"`{name}` must be a number in [0, 1). Received: {name}={value!r}"
        )
    return float(value) + 0.0


def check_number_in(name, value, low, high):
    """Returns `value` as a float if it is a number in `[low, high]`."""
    if not is_real(value) or not low <= value <= high:
        raise ValueError(
            f"`{name}` must be a number in [{low:g}, {high:g}]. "
            f"Received: {name}={value!r}"
        )
    return float(value) + 0.0


def check_int_in(name, value, low, high):
    """Returns `value` if it is an integer in `[low, high]`."""
    if not is_integer(value) or not low <= value <= high:
        raise ValueError(
            f"`{name}` must be an integer in [{low}, {high}]. "
            f"Received: {name}={value!r}"
        )
    return int(value)


def check_choice(name, value, choices):
    if value not in choices:
        raise ValueError(
            f"`{name}` must be one of {tuple(choices)}. "
            f"Received: {name}={value!r}"
        )
    return value
