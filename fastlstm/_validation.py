"""Argument checks shared by the public functions and classes.

Every message names the argument, says what was received and what was
expected, as DESIGN.md asks of every error fastlstm raises.
"""
import numpy as np


def describe(value):
    """A short description of ``value`` for an error message."""
    if isinstance(value, np.ndarray):
        return f"an array of shape {value.shape} and dtype {value.dtype}"
    return f"{type(value).__name__} {value!r}"[:200]


def check_bool(value, name):
    """``value`` as a bool; only True, False and NumPy booleans are accepted."""
    if not isinstance(value, (bool, np.bool_)):
        raise TypeError(f"{name} must be True or False, got {describe(value)}")
    return bool(value)


def as_real_array(value, name, dtype=None):
    """``value`` as an ndarray of real numbers, cast to ``dtype`` if given.

    Lists and other array-likes are converted; the result is a new array
    whenever a conversion or cast is needed, and ``value`` is never written
    to. Ragged nesting raises ``ValueError``; None, object, string and
    complex data raise ``TypeError``.
    """
    if value is None:
        raise TypeError(f"{name} must be an array of real numbers, got None")
    try:
        array = np.asarray(value)
    except ValueError as error:  # ragged nesting
        raise ValueError(f"{name} must be a rectangular array, got {describe(value)} "
                         f"({error})") from None
    if array.dtype.kind not in "fiub":
        raise TypeError(f"{name} must hold real numbers (float, int or bool), got "
                        f"dtype {array.dtype}")
    if dtype is not None:
        array = array.astype(dtype, copy=False)
    return array
