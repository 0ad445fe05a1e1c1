"""Optimizers with Keras 3's names, defaults and update formulas.

An optimizer updates arrays in place: ``optimizer.apply(grads, variables)``
changes each variable (a layer's ``params`` entry, an ndarray) by its
gradient. The first ``apply`` builds the optimizer for that list of
variables (its slots: momentum, moment estimates, ...); later calls must pass
the same arrays in the same order, as with a Keras optimizer.

Before the update, gradients may be clipped, as Keras does (at most one of):

- ``clipnorm``: each gradient is rescaled so that its L2 norm is at most
  ``clipnorm``;
- ``global_clipnorm``: all gradients are rescaled together so that the L2
  norm of their concatenation is at most ``global_clipnorm``;
- ``clipvalue``: each entry is clipped to ``[-clipvalue, clipvalue]``.

``learning_rate`` is a float or a schedule: a callable of the step number
(``optimizer.iterations``, 0 for the first update) returning the rate, such
as those of :mod:`fastlstm.optimizers.schedules`. A float rate can be
assigned (``optimizer.learning_rate = 0.01``), as callbacks such as
:class:`~fastlstm.callbacks.ReduceLROnPlateau` do.

:class:`AdamW` adds Keras' decoupled weight decay to Adam: before each
update, every updated variable shrinks by ``variable -= learning_rate *
weight_decay * variable``.

Examples
--------
>>> import numpy as np
>>> from fastlstm import optimizers
>>> weight = np.array([1.0, 2.0])
>>> sgd = optimizers.SGD(learning_rate=0.1)
>>> sgd.apply([np.array([1.0, -1.0])], [weight])
>>> weight
array([0.9, 2.1])
>>> decay = optimizers.Adam(learning_rate=lambda step: 0.01 * 0.5 ** step)
"""
import math

import numpy as np

from .. import _plan
from .._optim import adam, rmsprop, sgd
from .._validation import (as_real_array, check_bool, check_real, describe, from_identifier,
                           reject_kwargs)
from . import schedules

__all__ = ["Optimizer", "SGD", "Adam", "AdamW", "RMSprop", "get", "schedules"]

# Keras optimizer arguments with no fastlstm equivalent, and why.
_UNSUPPORTED = {
    "weight_decay": "use AdamW for decoupled weight decay, or add an L2 term to your loss "
                    "(and its gradient to the layers' grads)",
    "use_ema": "keep a moving average of layer.params yourself",
    "ema_momentum": "keep a moving average of layer.params yourself",
    "ema_overwrite_frequency": "keep a moving average of layer.params yourself",
    "loss_scale_factor": "fastlstm computes in float32 or float64, which need no loss scaling",
    "gradient_accumulation_steps": "use a larger batch_size",
}


def _fusable(variable, gradient):
    """Whether the fused updates (fastlstm/_optim.pyx: one pass instead of
    one per operation, the same operations to the bit) take these arrays:
    C-contiguous, of one float dtype."""
    return (variable.dtype in (np.float32, np.float64) and gradient.dtype == variable.dtype
            and variable.flags.c_contiguous and gradient.flags.c_contiguous)


def _threads(variable):
    """Threads for a fused update of ``variable``: a dozen operations per
    element, under the small-call threshold on one thread."""
    return _plan.call_threads(12 * variable.size)[0]


def _check_clip(value, name):
    if value is None:
        return None
    return check_real(value, name, 0.0, math.inf, low_open=True, high_open=True)


def check_gradients(grads, variables):
    """``[(k, gradient), ...]``: each entry of ``grads`` that is not None, as
    an array of its variable's dtype and shape (checked), with its index."""
    if isinstance(grads, np.ndarray) or not isinstance(grads, (list, tuple)) \
            or len(grads) != len(variables):
        raise ValueError(f"grads must be a list of {len(variables)} gradients, one per "
                         f"variable, got {describe(grads)}")
    pairs = []
    for k, (gradient, variable) in enumerate(zip(grads, variables)):
        if gradient is None:
            continue
        if not isinstance(variable, np.ndarray) or variable.dtype.kind != "f":
            raise TypeError(f"variables[{k}] must be a float ndarray (updated in place), "
                            f"got {describe(variable)}")
        gradient = as_real_array(gradient, f"grads[{k}]", variable.dtype)
        if gradient.shape != variable.shape:
            raise ValueError(f"grads[{k}] must have its variable's shape {variable.shape}, "
                             f"got {gradient.shape}")
        pairs.append((k, gradient))
    return pairs


class Optimizer:
    """Base class: subclasses implement ``_slots(variable)`` and
    ``_update(variable, gradient, slots, learning_rate)``.

    Parameters
    ----------
    learning_rate : float or callable
        A non-negative float, or a schedule ``f(step) -> float`` called with
        the number of updates applied so far.
    clipnorm, clipvalue, global_clipnorm : float or None
        Gradient clipping (see the module docstring); at most one may be set.
    weight_decay : float or None
        Decoupled weight decay (see the module docstring), which
        :class:`AdamW` sets. Default None.
    name : str or None
    """

    def __init__(self, learning_rate, *, clipnorm=None, clipvalue=None, global_clipnorm=None,
                 weight_decay=None, name=None):
        self._learning_rate = None
        self.learning_rate = learning_rate
        self.weight_decay = check_real(weight_decay, "weight_decay", 0.0, math.inf,
                                       high_open=True, none=True)
        self.clipnorm = _check_clip(clipnorm, "clipnorm")
        self.clipvalue = _check_clip(clipvalue, "clipvalue")
        self.global_clipnorm = _check_clip(global_clipnorm, "global_clipnorm")
        given = [f"{n}={v}" for n, v in (("clipnorm", clipnorm), ("clipvalue", clipvalue),
                                         ("global_clipnorm", global_clipnorm)) if v is not None]
        if len(given) > 1:
            raise ValueError(f"only one of clipnorm, clipvalue and global_clipnorm can be set, "
                             f"got {', '.join(given)}")
        if name is not None and not isinstance(name, str):
            raise TypeError(f"name must be a str or None, got {describe(name)}")
        self.name = name or type(self).__name__.lower()
        self.iterations = 0
        self._variables = None
        self._slot_list = None

    def __repr__(self):
        return f"{type(self).__name__}(learning_rate={self._learning_rate!r})"

    @property
    def learning_rate(self):
        """The rate of the next update (a schedule evaluated at ``iterations``)."""
        if not callable(self._learning_rate):
            return self._learning_rate
        value = self._learning_rate(self.iterations)
        if isinstance(value, np.ndarray) and value.shape == ():
            value = value.item()
        return check_real(value, f"learning_rate({self.iterations}) (the schedule's value)",
                           0.0, math.inf, high_open=True)

    @learning_rate.setter
    def learning_rate(self, value):
        if callable(value):
            self._learning_rate = value
            return
        if callable(self._learning_rate):
            raise TypeError("this optimizer's learning_rate is a schedule, so it cannot be set "
                            "to a number (as in Keras): assign another schedule, or make the "
                            "optimizer with a float learning_rate")
        self._learning_rate = check_real(value, "learning_rate", 0.0, math.inf, high_open=True)

    @property
    def variables(self):
        """The arrays the optimizer was built for (None before it is built)."""
        return None if self._variables is None else list(self._variables)

    def build(self, variables):
        """Create the slots for ``variables`` (a list of float ndarrays).

        ``apply`` builds on its first call; building again starts over (new
        slots, ``iterations`` back to 0).
        """
        if isinstance(variables, np.ndarray) or not isinstance(variables, (list, tuple)):
            raise TypeError(f"variables must be a list of arrays, got {describe(variables)}")
        for k, variable in enumerate(variables):
            if not isinstance(variable, np.ndarray) or variable.dtype.kind != "f":
                raise TypeError(f"variables[{k}] must be a float ndarray (updated in place), "
                                f"got {describe(variable)}")
            if not variable.flags.writeable:
                raise ValueError(f"variables[{k}] must be writeable: the optimizer updates it "
                                 f"in place")
        self._variables = list(variables)
        self._slot_list = [self._slots(v) for v in self._variables]
        self.iterations = 0

    def get_state(self):
        """The optimizer's progress as plain data (what a backup records):
        its class, ``iterations`` (where a schedule is), the float learning
        rate (None for a schedule) and every slot, keyed
        ``"<variable index>/<slot>"`` (None before the first update)."""
        return {"class": type(self).__name__, "iterations": self.iterations,
                "learning_rate": None if callable(self._learning_rate) else self._learning_rate,
                "slots": None if self._slot_list is None else self._state_slots(self._slot_list)}

    @staticmethod
    def _state_slots(slot_list):
        """The slots of ``slot_list`` that hold state, keyed ``"<variable index>/<slot>"``
        (scratch slots are working memory)."""
        return {f"{k}/{name}": array for k, variable_slots in enumerate(slot_list)
                for name, array in variable_slots.items() if name != "scratch"}

    def set_state(self, state, variables, check_only=False):
        """Continue from :meth:`get_state`'s ``state``, built for
        ``variables`` (those of the next ``apply``).

        Every name, shape and dtype is checked before anything changes;
        ``check_only`` stops there. Raises ValueError naming what does not
        match (another optimizer, other variables).
        """
        expected = self._state_slots(self._slot_list if self._variables is not None
                                     else [self._slots(v) for v in variables])
        problems = []
        if state["class"] != type(self).__name__:
            problems.append(f"it is {state['class']}, the model's is {type(self).__name__}")
        elif state["slots"] is not None:
            if sorted(state["slots"]) != sorted(expected):
                problems.append(f"its slots are {sorted(state['slots'])}, the model's "
                                f"{sorted(expected)}")
            else:
                problems.extend(f"slot {name} is {describe(state['slots'][name])}, the model's "
                                f"has shape {array.shape} and dtype {array.dtype}"
                                for name, array in expected.items()
                                if state["slots"][name].shape != array.shape
                                or state["slots"][name].dtype != array.dtype)
        if (state["learning_rate"] is None) != callable(self._learning_rate):
            problems.append("one learning rate is a schedule and the other a float")
        if problems:
            raise ValueError(f"the backup's optimizer does not match the model's: "
                             f"{'; '.join(problems)}")
        if check_only:
            return
        if state["slots"] is None:
            self._variables = self._slot_list = None
        else:
            if self._variables is None:
                self.build(variables)
            for name, array in self._state_slots(self._slot_list).items():
                np.copyto(array, state["slots"][name])
        self.iterations = int(state["iterations"])
        if state["learning_rate"] is not None:
            self._learning_rate = float(state["learning_rate"])

    def apply(self, grads, variables=None):
        """Clip ``grads``, then update each variable in place by its gradient.

        Parameters
        ----------
        grads : list of array_like
            One gradient per variable, each of its variable's shape; None
            entries leave their variable unchanged (as Keras skips missing
            gradients).
        variables : list of ndarray or None
            The arrays to update. The first call builds the optimizer for
            them; later calls must pass the same arrays in the same order, or
            None for those the optimizer was built with.
        """
        if variables is None:
            if self._variables is None:
                raise RuntimeError("the optimizer is not built: pass the variables to the "
                                   "first apply(), or call build(variables)")
            variables = self._variables
        elif self._variables is None:
            self.build(variables)
        else:
            self._check_known(variables)
        pairs = check_gradients(grads, variables)
        if not pairs:
            return
        clipped = self._clip([g for _, g in pairs])
        learning_rate = self.learning_rate
        if self.weight_decay:
            for k, _ in pairs:
                variable = self._variables[k]
                variable -= variable * variable.dtype.type(self.weight_decay) \
                    * variable.dtype.type(learning_rate)
        for (k, _), gradient in zip(pairs, clipped):
            self._update(self._variables[k], gradient, self._slot_list[k], learning_rate)
        self.iterations += 1

    def apply_gradients(self, grads_and_vars):
        """``apply`` for a list of ``(gradient, variable)`` pairs, as Keras."""
        pairs = list(grads_and_vars)
        self.apply([g for g, _ in pairs], [v for _, v in pairs])

    def _check_known(self, variables):
        if isinstance(variables, np.ndarray) or not isinstance(variables, (list, tuple)) \
                or len(variables) != len(self._variables) \
                or any(v is not known for v, known in zip(variables, self._variables)):
            raise ValueError(f"variables must be the {len(self._variables)} arrays the "
                             f"optimizer was built for, in the same order; make a new "
                             f"optimizer (or call build()) for other variables, got "
                             f"{describe(variables)}")

    def _clip(self, grads):
        if self.clipnorm is not None:
            return [self._scaled(g, self.clipnorm, np.sqrt(np.sum(g * g))) for g in grads]
        if self.global_clipnorm is not None:
            norm = math.sqrt(sum(float(np.sum(g * g)) for g in grads))
            return [self._scaled(g, self.global_clipnorm, norm) for g in grads]
        if self.clipvalue is not None:
            return [np.clip(g, -self.clipvalue, self.clipvalue) for g in grads]
        return grads

    @staticmethod
    def _scaled(gradient, limit, norm):
        """``gradient * limit / max(norm, limit)``: unchanged within the limit."""
        if norm <= limit:
            return gradient
        return gradient * gradient.dtype.type(limit / norm)

    def _slots(self, variable):
        raise NotImplementedError

    def _update(self, variable, gradient, slots, learning_rate):
        raise NotImplementedError


class SGD(Optimizer):
    """Gradient descent with optional (Nesterov) momentum, as ``keras.optimizers.SGD``.

    Without momentum ``w -= learning_rate * g``. With momentum,
    ``velocity = momentum * velocity - learning_rate * g``, then
    ``w += velocity`` or, with ``nesterov``,
    ``w += momentum * velocity - learning_rate * g``.

    Parameters
    ----------
    learning_rate : float or callable
        Default 0.01.
    momentum : float in [0, 1]
        Default 0.
    nesterov : bool
        Default False.
    clipnorm, clipvalue, global_clipnorm, name
        See :class:`Optimizer`.
    """

    def __init__(self, learning_rate=0.01, momentum=0.0, nesterov=False, *, clipnorm=None,
                 clipvalue=None, global_clipnorm=None, name=None, **kwargs):
        reject_kwargs(kwargs, "SGD", _UNSUPPORTED)
        super().__init__(learning_rate, clipnorm=clipnorm, clipvalue=clipvalue,
                         global_clipnorm=global_clipnorm, name=name)
        self.momentum = check_real(momentum, "momentum", 0.0, 1.0)
        self.nesterov = check_bool(nesterov, "nesterov")

    def _slots(self, variable):
        return {"velocity": np.zeros_like(variable)} if self.momentum else {}

    def _update(self, variable, gradient, slots, learning_rate):
        if self.momentum and _fusable(variable, gradient):
            sgd(variable.reshape(-1), gradient.reshape(-1),
                       slots["velocity"].reshape(-1), learning_rate, self.momentum,
                       self.nesterov, _threads(variable))
            return
        step = gradient * variable.dtype.type(learning_rate)
        if not self.momentum:
            variable -= step
            return
        velocity = slots["velocity"]
        velocity *= self.momentum
        velocity -= step
        if self.nesterov:
            variable += self.momentum * velocity - step
        else:
            variable += velocity


class Adam(Optimizer):
    """Adam, as ``keras.optimizers.Adam``.

    With ``t = iterations + 1``:
    ``m += (1 - beta_1) * (g - m)``, ``v += (1 - beta_2) * (g ** 2 - v)``,
    ``w -= learning_rate * sqrt(1 - beta_2 ** t) / (1 - beta_1 ** t) * m / (sqrt(v) + epsilon)``
    (with ``amsgrad``, ``v`` in the last term is the running maximum of ``v``).

    Parameters
    ----------
    learning_rate : float or callable
        Default 0.001.
    beta_1, beta_2 : float in [0, 1)
        Decay rates of the first and second moment estimates. Defaults 0.9
        and 0.999.
    epsilon : float
        Keras' "epsilon hat". Default 1e-7.
    amsgrad : bool
        Default False.
    clipnorm, clipvalue, global_clipnorm, name
        See :class:`Optimizer`.
    """

    def __init__(self, learning_rate=0.001, beta_1=0.9, beta_2=0.999, epsilon=1e-7,
                 amsgrad=False, *, clipnorm=None, clipvalue=None, global_clipnorm=None,
                 name=None, **kwargs):
        reject_kwargs(kwargs, type(self).__name__, _UNSUPPORTED)
        super().__init__(learning_rate, clipnorm=clipnorm, clipvalue=clipvalue,
                         global_clipnorm=global_clipnorm, name=name)
        self.beta_1 = check_real(beta_1, "beta_1", 0.0, 1.0, high_open=True)
        self.beta_2 = check_real(beta_2, "beta_2", 0.0, 1.0, high_open=True)
        self.epsilon = check_real(epsilon, "epsilon", 0.0, math.inf, high_open=True)
        self.amsgrad = check_bool(amsgrad, "amsgrad")

    def _slots(self, variable):
        slots = {"m": np.zeros_like(variable), "v": np.zeros_like(variable),
                 "scratch": np.empty_like(variable)}
        if self.amsgrad:
            slots["v_hat"] = np.zeros_like(variable)
        return slots

    def _update(self, variable, gradient, slots, learning_rate):
        step = self.iterations + 1
        alpha = learning_rate * math.sqrt(1 - self.beta_2 ** step) / (1 - self.beta_1 ** step)
        m, v, scratch = slots["m"], slots["v"], slots["scratch"]
        if _fusable(variable, gradient):
            # One pass instead of a dozen, the same operations to the bit.
            adam(variable.reshape(-1), gradient.reshape(-1), m.reshape(-1),
                        v.reshape(-1), slots["v_hat"].reshape(-1) if self.amsgrad else None,
                        alpha, self.beta_1, self.beta_2, self.epsilon, _threads(variable))
            return
        np.subtract(gradient, m, out=scratch)
        scratch *= 1 - self.beta_1
        m += scratch
        np.multiply(gradient, gradient, out=scratch)
        scratch -= v
        scratch *= 1 - self.beta_2
        v += scratch
        if self.amsgrad:
            np.maximum(slots["v_hat"], v, out=slots["v_hat"])
            v = slots["v_hat"]
        np.sqrt(v, out=scratch)
        scratch += self.epsilon
        np.divide(m, scratch, out=scratch)
        scratch *= alpha
        variable -= scratch


class AdamW(Adam):
    """Adam with decoupled weight decay, as ``keras.optimizers.AdamW``.

    Before each Adam update, ``w -= learning_rate * weight_decay * w`` (the
    decay does not pass through the moment estimates, unlike an L2 term in
    the loss).

    Parameters
    ----------
    learning_rate : float or callable
        Default 0.001.
    weight_decay : float
        Default 0.004.
    beta_1, beta_2, epsilon, amsgrad
        As for :class:`Adam`.
    clipnorm, clipvalue, global_clipnorm, name
        See :class:`Optimizer`.

    Examples
    --------
    >>> import numpy as np
    >>> from fastlstm import optimizers
    >>> weight = np.array([1.0])
    >>> optimizers.AdamW(learning_rate=0.1, weight_decay=0.5).apply([np.array([0.0])], [weight])
    >>> weight
    array([0.95])
    """

    def __init__(self, learning_rate=0.001, weight_decay=0.004, beta_1=0.9, beta_2=0.999,
                 epsilon=1e-7, amsgrad=False, *, clipnorm=None, clipvalue=None,
                 global_clipnorm=None, name=None, **kwargs):
        if weight_decay is None:
            raise TypeError("weight_decay must be a real number for AdamW (Keras' rule), got "
                            "None; use Adam for no decay")
        super().__init__(learning_rate, beta_1, beta_2, epsilon, amsgrad, clipnorm=clipnorm,
                         clipvalue=clipvalue, global_clipnorm=global_clipnorm, name=name,
                         **kwargs)
        self.weight_decay = check_real(weight_decay, "weight_decay", 0.0, math.inf,
                                       high_open=True)


class RMSprop(Optimizer):
    """RMSprop, as ``keras.optimizers.RMSprop``.

    ``velocity = rho * velocity + (1 - rho) * g ** 2``;
    ``increment = learning_rate * g / sqrt(velocity + epsilon)`` (with
    ``centered``, ``velocity - mean_g ** 2 + epsilon`` under the root, where
    ``mean_g = rho * mean_g + (1 - rho) * g``); then ``w -= increment``, or
    with momentum ``buffer = momentum * buffer + increment; w -= buffer``.

    Parameters
    ----------
    learning_rate : float or callable
        Default 0.001.
    rho : float in [0, 1)
        Default 0.9.
    momentum : float in [0, 1]
        Default 0.
    epsilon : float
        Default 1e-7.
    centered : bool
        Default False.
    clipnorm, clipvalue, global_clipnorm, name
        See :class:`Optimizer`.
    """

    def __init__(self, learning_rate=0.001, rho=0.9, momentum=0.0, epsilon=1e-7,
                 centered=False, *, clipnorm=None, clipvalue=None, global_clipnorm=None,
                 name=None, **kwargs):
        reject_kwargs(kwargs, "RMSprop", _UNSUPPORTED)
        super().__init__(learning_rate, clipnorm=clipnorm, clipvalue=clipvalue,
                         global_clipnorm=global_clipnorm, name=name)
        self.rho = check_real(rho, "rho", 0.0, 1.0, high_open=True)
        self.momentum = check_real(momentum, "momentum", 0.0, 1.0)
        self.epsilon = check_real(epsilon, "epsilon", 0.0, math.inf, high_open=True)
        self.centered = check_bool(centered, "centered")

    def _slots(self, variable):
        slots = {"velocity": np.zeros_like(variable), "scratch": np.empty_like(variable)}
        if self.momentum:
            slots["momentum"] = np.zeros_like(variable)
        if self.centered:
            slots["average_gradient"] = np.zeros_like(variable)
        return slots

    def _update(self, variable, gradient, slots, learning_rate):
        rho = self.rho
        velocity, scratch = slots["velocity"], slots["scratch"]
        if _fusable(variable, gradient):
            rmsprop(variable.reshape(-1), gradient.reshape(-1), velocity.reshape(-1),
                           slots["average_gradient"].reshape(-1) if self.centered else None,
                           slots["momentum"].reshape(-1) if self.momentum else None,
                           learning_rate, rho, self.momentum, self.epsilon, _threads(variable))
            return
        velocity *= rho
        np.multiply(gradient, gradient, out=scratch)
        scratch *= 1 - rho
        velocity += scratch
        if self.centered:
            average = slots["average_gradient"]
            average *= rho
            average += (1 - rho) * gradient
            np.multiply(average, average, out=scratch)
            np.subtract(velocity, scratch, out=scratch)
        else:
            scratch[...] = velocity
        scratch += self.epsilon
        np.sqrt(scratch, out=scratch)
        np.divide(gradient, scratch, out=scratch)
        scratch *= learning_rate
        if self.momentum:
            buffer = slots["momentum"]
            buffer *= self.momentum
            buffer += scratch
            variable -= buffer
        else:
            variable -= scratch


_BY_NAME = {"sgd": SGD, "adam": Adam, "adamw": AdamW, "rmsprop": RMSprop}


def get(identifier):
    """The optimizer an argument names.

    Parameters
    ----------
    identifier : str or Optimizer
        ``"sgd"``, ``"adam"``, ``"adamw"`` or ``"rmsprop"`` (Keras'
        defaults), or an :class:`Optimizer`.

    Returns
    -------
    Optimizer
    """
    return from_identifier(identifier, "optimizer", _BY_NAME, Optimizer, lower=True)
