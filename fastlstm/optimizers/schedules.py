"""Learning-rate schedules with Keras 3's names, arguments and formulas.

A schedule is called with the optimizer's step (``optimizer.iterations``,
0 for the first update) and returns the rate of that update; pass one as an
optimizer's ``learning_rate``.

Examples
--------
>>> from fastlstm import optimizers
>>> schedule = optimizers.schedules.ExponentialDecay(0.1, decay_steps=10, decay_rate=0.5)
>>> round(schedule(20), 6)
0.025
>>> adam = optimizers.Adam(learning_rate=schedule)
"""
import math

from .._validation import check_bool, check_int, check_real, describe, is_real

__all__ = ["LearningRateSchedule", "ExponentialDecay", "CosineDecay",
           "PiecewiseConstantDecay"]


def _step(step):
    if not is_real(step) or step < 0:
        raise ValueError(f"step must be a non-negative number, got {describe(step)}")
    return float(step)


def _check_name(name):
    if not isinstance(name, str):
        raise TypeError(f"name must be a str, got {describe(name)}")
    return name


class LearningRateSchedule:
    """Base class: subclasses implement ``__call__(step)`` and ``get_config()``."""

    def __call__(self, step):
        raise NotImplementedError

    def get_config(self):
        """The constructor arguments."""
        raise NotImplementedError

    @classmethod
    def from_config(cls, config):
        """A schedule from :meth:`get_config`'s dict."""
        return cls(**config)

    def __repr__(self):
        arguments = ", ".join(f"{k}={v!r}" for k, v in self.get_config().items())
        return f"{type(self).__name__}({arguments})"


class ExponentialDecay(LearningRateSchedule):
    """``initial_learning_rate * decay_rate ** (step / decay_steps)``, as
    ``keras.optimizers.schedules.ExponentialDecay``.

    Parameters
    ----------
    initial_learning_rate : float
    decay_steps : int
        Positive.
    decay_rate : float
    staircase : bool
        Use ``floor(step / decay_steps)``: the rate changes every
        ``decay_steps`` steps. Default False.
    name : str
        Default "ExponentialDecay".
    """

    def __init__(self, initial_learning_rate, decay_steps, decay_rate, staircase=False,
                 name="ExponentialDecay"):
        self.initial_learning_rate = check_real(initial_learning_rate, "initial_learning_rate")
        self.decay_steps = check_int(decay_steps, "decay_steps")
        self.decay_rate = check_real(decay_rate, "decay_rate")
        self.staircase = check_bool(staircase, "staircase")
        self.name = _check_name(name)

    def __call__(self, step):
        progress = _step(step) / self.decay_steps
        if self.staircase:
            progress = math.floor(progress)
        return self.initial_learning_rate * self.decay_rate ** progress

    def get_config(self):
        return {"initial_learning_rate": self.initial_learning_rate,
                "decay_steps": self.decay_steps, "decay_rate": self.decay_rate,
                "staircase": self.staircase, "name": self.name}


class CosineDecay(LearningRateSchedule):
    """Cosine decay with an optional linear warmup, as
    ``keras.optimizers.schedules.CosineDecay`` (Loshchilov and Hutter, SGDR).

    Without warmup, with ``s = min(step, decay_steps)``:
    ``initial_learning_rate * ((1 - alpha) * 0.5 * (1 + cos(pi * s / decay_steps)) + alpha)``.
    With ``warmup_target``, the rate first rises linearly from
    ``initial_learning_rate`` to ``warmup_target`` over ``warmup_steps``,
    then decays from ``warmup_target`` as above over the next
    ``decay_steps``.

    Parameters
    ----------
    initial_learning_rate : float
    decay_steps : int
        Positive.
    alpha : float
        The final rate as a fraction of the decayed-from rate. Default 0.
    name : str
        Default "CosineDecay".
    warmup_target : float or None
        Default None (no warmup).
    warmup_steps : int
        Default 0.
    """

    def __init__(self, initial_learning_rate, decay_steps, alpha=0.0, name="CosineDecay",
                 warmup_target=None, warmup_steps=0):
        self.initial_learning_rate = check_real(initial_learning_rate, "initial_learning_rate")
        self.decay_steps = check_int(decay_steps, "decay_steps")
        self.alpha = check_real(alpha, "alpha")
        self.name = _check_name(name)
        self.warmup_target = check_real(warmup_target, "warmup_target", none=True)
        self.warmup_steps = check_int(warmup_steps, "warmup_steps", minimum=0)

    def _decayed(self, step, decay_from):
        cosine = 0.5 * (1.0 + math.cos(math.pi * step / self.decay_steps))
        return decay_from * ((1 - self.alpha) * cosine + self.alpha)

    def __call__(self, step):
        step = _step(step)
        if self.warmup_target is None:
            return self._decayed(min(step, self.decay_steps), self.initial_learning_rate)
        step = min(step, self.decay_steps + self.warmup_steps)
        if step < self.warmup_steps:
            rise = self.warmup_target - self.initial_learning_rate
            return rise * step / self.warmup_steps + self.initial_learning_rate
        return self._decayed(step - self.warmup_steps, self.warmup_target)

    def get_config(self):
        return {"initial_learning_rate": self.initial_learning_rate,
                "decay_steps": self.decay_steps, "alpha": self.alpha, "name": self.name,
                "warmup_target": self.warmup_target, "warmup_steps": self.warmup_steps}


class PiecewiseConstantDecay(LearningRateSchedule):
    """A constant rate between boundaries, as
    ``keras.optimizers.schedules.PiecewiseConstantDecay``: ``values[0]`` for
    ``step <= boundaries[0]``, ``values[k]`` for
    ``boundaries[k-1] < step <= boundaries[k]``, ``values[-1]`` after the
    last boundary.

    Parameters
    ----------
    boundaries : list of int
        Increasing steps.
    values : list of float
        One more than ``boundaries``.
    name : str
        Default "PiecewiseConstant".
    """

    def __init__(self, boundaries, values, name="PiecewiseConstant"):
        if not isinstance(boundaries, (list, tuple)) or not all(is_real(b) for b in boundaries):
            raise TypeError(f"boundaries must be a list of steps, got {describe(boundaries)}")
        if not isinstance(values, (list, tuple)) or not all(is_real(v) for v in values):
            raise TypeError(f"values must be a list of learning rates, got {describe(values)}")
        if len(values) != len(boundaries) + 1:
            raise ValueError(f"values must have one more entry than boundaries, got "
                             f"{len(values)} values and {len(boundaries)} boundaries")
        if any(b >= a for b, a in zip(boundaries, boundaries[1:])):
            raise ValueError(f"boundaries must increase, got {list(boundaries)}")
        self.boundaries = list(boundaries)
        self.values = [float(v) for v in values]
        self.name = _check_name(name)

    def __call__(self, step):
        step = _step(step)
        for boundary, value in zip(self.boundaries, self.values):
            if step <= boundary:
                return value
        return self.values[-1]

    def get_config(self):
        return {"boundaries": self.boundaries, "values": self.values, "name": self.name}
