"""Argument checks shared by every public function and class.

One vocabulary, so that every entry point rejects bad input the same way:
``TypeError`` for the wrong kind of value, ``ValueError`` for a value out of
range, and a message that names the argument, says what was received and
what was expected.
"""
import math
import numbers
import os

import numpy as np

from .reference import ACTIVATIONS as _REFERENCE_ACTIVATIONS

# The activations, by the names of the reference's definitions; each kernel
# build knows them by the codes of its ``Activation`` enum, named as these in
# upper case.
ACTIVATIONS = tuple(_REFERENCE_ACTIVATIONS)
_FLOAT_DTYPES = (np.dtype(np.float32), np.dtype(np.float64))


def describe(value):
    """A short description of ``value`` for an error message."""
    if isinstance(value, np.ndarray):
        return f"an array of shape {value.shape} and dtype {value.dtype}"
    if hasattr(value, "shape") and hasattr(value, "dtype"):  # a tensor of another library
        return f"a {type(value).__name__} of shape {tuple(value.shape)} and dtype {value.dtype}"
    return f"{type(value).__name__} {value!r}"[:200]


def describe_list(value):
    """Like :func:`describe`, but a list or tuple is described by its length."""
    if isinstance(value, (list, tuple)):
        return f"a {type(value).__name__} of {len(value)}"
    return describe(value)


def is_int(value):
    """Whether ``value`` is an integer scalar; bools are not."""
    return isinstance(value, numbers.Integral) and not isinstance(value, (bool, np.bool_))


def is_real(value):
    """Whether ``value`` is a real scalar; bools are not."""
    return isinstance(value, numbers.Real) and not isinstance(value, (bool, np.bool_))


def check_bool(value, name):
    """``value`` as a bool; only True, False and NumPy booleans are accepted."""
    if not isinstance(value, (bool, np.bool_)):
        raise TypeError(f"{name} must be True or False, got {describe(value)}")
    return bool(value)


def check_int(value, name, minimum=1):
    """``value`` as an int of at least ``minimum`` (0: non-negative, 1: positive)."""
    kind = {0: "a non-negative int", 1: "a positive int"}.get(minimum, f"an int >= {minimum}")
    if not is_int(value):
        raise TypeError(f"{name} must be {kind}, got {describe(value)}")
    if value < minimum:
        raise ValueError(f"{name} must be {kind}, got {value}")
    return int(value)


def check_real(value, name, low=-math.inf, high=math.inf, low_open=False, high_open=False,
               meaning="", none=False):
    """``value`` as a float in the interval from ``low`` to ``high``.

    The interval is closed unless ``low_open`` / ``high_open``; NaN is never
    in it. ``meaning`` is added to the range error; with ``none`` None is
    accepted and returned.
    """
    if value is None and none:
        return None
    if not is_real(value):
        kind = "a real number or None" if none else "a real number"
        raise TypeError(f"{name} must be {kind}, got {describe(value)}")
    value = float(value)
    if math.isinf(low) and math.isinf(high):
        return value
    too_low = value <= low if low_open else value < low
    too_high = value >= high if high_open else value > high
    if math.isnan(value) or too_low or too_high:
        interval = f"{'(' if low_open else '['}{low}, {high}{')' if high_open else ']'}"
        raise ValueError(f"{name} must be in {interval}{meaning}, got {value!r}")
    return value


def check_rate(value, name):
    """A fraction of values dropped: a float in [0, 1)."""
    if not is_real(value):
        raise TypeError(f"{name} must be a float in [0, 1), got {describe(value)}")
    if not 0.0 <= value < 1.0:
        raise ValueError(f"{name} must be in [0, 1) (the fraction of units dropped), "
                         f"got {value!r}")
    return float(value)


def check_option(value, name, options, meaning="", none=False):
    """``value`` if it is one of ``options`` (strings, or None), else ValueError.

    With ``none``, None is accepted too, and the message says so.
    """
    if value is None and none:
        return None
    if not (value is None or isinstance(value, str)) or value not in options:
        lead = "None or one of" if none else "one of"
        raise ValueError(f"{name} must be {lead} {list(options)}{meaning}, got "
                         f"{describe(value)}")
    return value


def check_str(value, name, meaning="a str"):
    """``value`` if it is a non-empty str, else TypeError."""
    if not isinstance(value, str) or not value:
        raise TypeError(f"{name} must be {meaning}, got {describe(value)}")
    return value


def from_identifier(identifier, name, by_name, base, why="", lower=False):
    """An instance of ``base`` given as itself or by a name in ``by_name``
    (a mapping of names to classes, instantiated with their defaults).

    ``name`` is the argument ("loss", "optimizer"); ``why`` is added to the
    TypeError for anything that is neither; ``lower`` folds the name's case.
    """
    kind = f"{base.__module__}.{base.__name__}"
    if isinstance(identifier, base):
        return identifier
    if isinstance(identifier, str):
        key = identifier.lower() if lower else identifier
        if key not in by_name:
            raise ValueError(f"{name} must be one of {sorted(by_name)} or a {kind}, got "
                             f"{identifier!r}")
        return by_name[key]()
    raise TypeError(f"{name} must be {'an' if name[0] in 'aeiou' else 'a'} {name} name or a "
                    f"{kind}{why}, got {describe(identifier)}")


def check_dtype(value, name="dtype"):
    """float32 or float64, as a NumPy dtype."""
    try:
        dtype = None if value is None else np.dtype(value)
    except TypeError:
        dtype = None
    # Checked against None first: np.dtype(None) is float64, so None == float64.
    if dtype is None or dtype not in _FLOAT_DTYPES:
        raise ValueError(f"{name} must be 'float32' or 'float64', got {describe(value)}")
    return dtype


def check_shape(array, name, expected, meaning):
    """ValueError unless ``array.shape == expected``; ``meaning`` names the axes.
    ``array`` may be a NumPy array or a torch tensor."""
    shape = tuple(array.shape)
    if shape != tuple(expected):
        raise ValueError(f"{name} must have shape {tuple(expected)} {meaning}, got {shape}")


def as_path(value, name):
    """``value`` (a str or os.PathLike) as a path."""
    try:
        return os.fspath(value)
    except TypeError:
        raise TypeError(f"{name} must be a str or os.PathLike, got {describe(value)}") from None


def check_path(value, name, suffix, meaning):
    """``value`` as a str path ending in ``suffix``."""
    path = as_path(value, name)
    if not isinstance(path, str) or not path.endswith(suffix):
        raise ValueError(f"{name} must end in {suffix!r} ({meaning}), got {path!r}")
    return path


def reject_kwargs(kwargs, owner, unsupported=None):
    """TypeError for the first keyword argument ``owner`` does not take,
    saying why when ``unsupported`` explains it (a Keras argument fastlstm
    has no use for)."""
    unsupported = unsupported or {}
    for name in kwargs:
        if name in unsupported:
            raise TypeError(f"{owner} does not support the Keras argument {name}: "
                            f"{unsupported[name]}")
        raise TypeError(f"{owner} got an unexpected keyword argument {name!r}")


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


# The checks below are those of the arguments every LSTM door takes (the
# functional API, the stack, the layers, fastlstm.torch): one rule and one
# message for each, the door naming the argument in its own words.

def as_sequences(value, name, dtype=None, owner=""):
    """``value`` as a (batch, timesteps, features) array of real numbers, no
    axis empty, cast to ``dtype`` if given; ``owner`` (a layer's label)
    leads the shape errors."""
    array = as_real_array(value, name, dtype)
    if array.ndim != 3:
        hint = ""
        if array.ndim == 2:
            hint = ("; a 2-D input is usually the last output of an LSTM below this one: "
                    "give that layer return_sequences=True so that it returns every step")
        elif array.ndim > 3:
            hint = ("; fastlstm has no TimeDistributed wrapper: to run the LSTM over "
                    "sequences held in more axes, merge the leading ones into the batch, "
                    f"x.reshape(-1, {array.shape[-2]}, {array.shape[-1]}), and reshape the "
                    f"output back")
        raise ValueError(f"{owner}{': ' if owner else ''}{name} must have shape (batch, "
                         f"timesteps, features), three dimensions: the sequences, the steps "
                         f"of each, the features of each step; got an array with "
                         f"{array.ndim} dimension(s), shape {array.shape}{hint}")
    check_not_empty(array.shape, name)
    return array


def check_not_empty(shape, name):
    """ValueError if a batch of sequences of ``shape`` has no value."""
    if min(shape) == 0:
        raise ValueError(f"{name} must have at least one sequence, one timestep and one "
                         f"feature, got shape {tuple(shape)}")


def check_features(features, name, expected, source, owner=""):
    """ValueError unless the sequences ``name`` have ``expected`` features;
    ``source`` says where that number comes from ("the kernel's rows")."""
    if features != expected:
        raise ValueError(f"{owner}{': ' if owner else ''}{name} must have {expected} features "
                         f"(last axis), {source}, got {features}")


def check_state_list(value, name, spelled, kind="arrays"):
    """``value`` as a list of the entries ``spelled`` (``"[h0, c0]"``): a list
    or tuple of that many; anything else is the wrong kind (TypeError), a
    list of another length a wrong value (ValueError)."""
    count = spelled.count(",") + 1
    return check_list(value, count, f"{name} must be {spelled}, a list or tuple of {count} {kind}")


def check_list(value, count, rule):
    """``value`` as a list of ``count`` entries: TypeError unless it is a list
    or tuple, ValueError for another length; ``rule`` ("x must be ...")
    leads the message."""
    if isinstance(value, np.ndarray) or not isinstance(value, (list, tuple)):
        raise TypeError(f"{rule}, got {describe(value)}")
    if len(value) != count:
        raise ValueError(f"{rule}, got {describe_list(value)}")
    return list(value)


def as_state(value, name, dtype, shape, meaning):
    """A state (or a state's gradient) as an array of ``dtype`` and ``shape``."""
    array = as_real_array(value, name, dtype)
    check_shape(array, name, shape, meaning)
    return array


def as_step_states(states, dtype, shape):
    """``[h, c]`` of a one-step call (``states``) as C-contiguous arrays of
    ``dtype`` and ``shape``: as given when they already are (the loop of a
    sampler passes back what the last step returned), checked and cast
    otherwise."""
    if (isinstance(states, (list, tuple)) and len(states) == 2
            and all(type(s) is np.ndarray and s.dtype == dtype and s.flags.c_contiguous
                    and s.shape == shape for s in states)):
        return list(states)
    return [np.ascontiguousarray(as_state(s, name, dtype, shape, "(batch, units)"))
            for s, name in zip(check_state_list(states, "states", "[h, c]"),
                               ("states[0] (h)", "states[1] (c)"))]


def as_mask(value, name, shape):
    """A boolean mask of ``shape`` (batch, timesteps), True keeping a step.

    Integers 0 and 1 are accepted as False and True, as a mask built from
    lengths or token ids often is; any other integer, and floats, are refused
    rather than guessed at.
    """
    mask = as_real_array(value, name)
    if mask.dtype.kind in "iu":
        if not np.isin(mask, (0, 1)).all():
            raise ValueError(f"{name} must hold booleans (or 0 and 1), got integers other "
                             f"than 0 and 1")
        mask = mask.astype(bool)
    if mask.dtype != np.bool_:
        raise TypeError(f"{name} must be boolean, True keeping a step (or integers 0 and 1), "
                        f"got dtype {mask.dtype}")
    check_shape(mask, name, shape, "(batch, timesteps)")
    return mask


def check_activation(value, name):
    """``value`` if it names an activation the kernels implement."""
    return check_option(value, name, ACTIVATIONS, " (the activations the kernels implement)")
