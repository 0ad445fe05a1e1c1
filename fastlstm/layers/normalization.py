"""LayerNormalization, as its Keras namesake."""
import numpy as np

from .. import initializers
from .._validation import as_real_array, check_bool, check_dtype, check_real, describe, is_int
from .base import REGULARIZERS_AND_CONSTRAINTS, Layer, seed_sequence

__all__ = ["LayerNormalization"]

_UNSUPPORTED = {name: REGULARIZERS_AND_CONSTRAINTS[name] for name in (
    "gamma_regularizer", "beta_regularizer", "gamma_constraint", "beta_constraint")}


class LayerNormalization(Layer):
    """Normalise each position over its features, as ``keras.layers.LayerNormalization``.

    For every position (all axes but the last), with ``mean`` and
    ``variance`` (the biased one, ``mean((x - mean) ** 2)``) taken over the
    last axis:
    ``y = gamma * (x - mean) / sqrt(variance + epsilon) + beta``, with
    ``gamma (features,)`` and ``beta (features,)`` learned. A mask passes
    through unchanged. Placed between recurrent layers it keeps the scale of
    what each one reads steady.

    Parameters
    ----------
    axis : int
        -1: the last axis (the only one supported).
    epsilon : float
        Added to the variance. Default 1e-3, Keras' default.
    center : bool
        Learn ``beta`` (else ``beta = 0`` and there is no such weight).
        Default True.
    scale : bool
        Learn ``gamma`` (else ``gamma = 1`` and there is no such weight).
        Default True.
    rms_scaling : bool
        Must be False: Keras' root-mean-square variant is not implemented.
    beta_initializer, gamma_initializer : str, Initializer or callable
        Defaults "zeros" and "ones".
    dtype : {"float32", "float64"}
        Default "float32".
    name : str or None
        Default ``layer_normalization``, numbered as other layers' names.
    trainable : bool
        Whether training updates ``gamma`` and ``beta``. Default True.

    Examples
    --------
    >>> import numpy as np, fastlstm as fl
    >>> norm = fl.LayerNormalization(dtype="float64")
    >>> y = norm(np.array([[[1.0, 2.0, 3.0]]]))
    >>> np.round(y, 4).tolist()
    [[[-1.2238, 0.0, 1.2238]]]
    >>> [w.shape for w in norm.get_weights()]
    [(3,), (3,)]
    """

    def __init__(self, axis=-1, epsilon=1e-3, center=True, scale=True, rms_scaling=False,
                 beta_initializer="zeros", gamma_initializer="ones", *, dtype="float32",
                 name=None, trainable=True, **kwargs):
        super().__init__(dict(axis=axis, epsilon=epsilon, center=center, scale=scale,
                              rms_scaling=rms_scaling, beta_initializer=beta_initializer,
                              gamma_initializer=gamma_initializer, dtype=dtype),
                         name, trainable, kwargs, _UNSUPPORTED)
        if not is_int(axis) or axis != -1:
            raise ValueError(f"axis must be -1 (fastlstm normalises over the last axis, the "
                             f"features), got {describe(axis)}")
        self.axis = -1
        self.epsilon = check_real(epsilon, "epsilon", 0.0, np.inf, low_open=True,
                                  high_open=True)
        self.center = check_bool(center, "center")
        self.scale = check_bool(scale, "scale")
        if check_bool(rms_scaling, "rms_scaling"):
            raise ValueError("rms_scaling must be False: the root-mean-square variant is not "
                             "implemented")
        self.beta_initializer = initializers.get(beta_initializer, "beta_initializer")
        self.gamma_initializer = initializers.get(gamma_initializer, "gamma_initializer")
        self.dtype = check_dtype(dtype)
        self._weights_rng = np.random.default_rng(seed_sequence(None))

    def _weight_names(self):
        return tuple(name for name, used in (("gamma", self.scale), ("beta", self.center))
                     if used)

    def _weight_shapes(self, input_dim):
        return [((input_dim,), "(features,)")] * len(self._weight_names())

    def _weights_note(self):
        return f" (scale={self.scale}, center={self.center})"

    def _input_dim_of(self, first_weight, label):
        if first_weight.ndim != 1 or first_weight.shape[0] < 1:
            raise ValueError(f"{label} must have shape (features,), got {first_weight.shape}")
        return first_weight.shape[0]

    def _initial_weights(self, input_dim):
        initializer = {"gamma": self.gamma_initializer, "beta": self.beta_initializer}
        return {name: initializers._draw(initializer[name], (input_dim,), self.dtype,
                                         self._weights_rng, f"{name}_initializer")
                for name in self._weight_names()}

    def __call__(self, x, mask=None, training=False):
        """Normalise ``x`` of shape ``(batch, ..., features)`` over its last
        axis; ``mask`` passes through and ``training`` changes nothing."""
        x = as_real_array(x, "x", self.dtype)
        if x.ndim < 2 or x.size == 0:
            raise ValueError(f"{self._label()}: x must have shape "
                             f"(batch, ..., features) with at least one value, got shape "
                             f"{x.shape}")
        if training is not None:
            check_bool(training, "training")
        if self.built and x.shape[-1] != self.input_dim:
            raise ValueError(f"{self._label()}: x has {x.shape[-1]} "
                             f"features (last axis), but the layer was built for "
                             f"input_dim={self.input_dim}")
        if not self.built:
            self.build(x.shape[-1])
        rows = x.reshape(-1, x.shape[-1])
        centered = rows - rows.mean(axis=1, keepdims=True)
        variance = np.mean(centered * centered, axis=1, keepdims=True)
        inverse_std = 1 / np.sqrt(variance + self.dtype.type(self.epsilon))
        normalized = centered * inverse_std
        y = normalized
        if self.scale:
            y = y * self._params["gamma"]
        if self.center:
            y = y + self._params["beta"]
        self._keep((normalized, inverse_std, x.shape))
        return y.reshape(x.shape)

    def backward(self, dy, input_gradient=True):
        """Backpropagate through the last call; ``dx`` is None when not
        ``input_gradient`` (the weights' gradients are computed either way).

        With ``n`` features, ``g = dy * gamma`` and ``x_hat`` the normalised
        input: ``dx = (g - mean(g) - x_hat * mean(g * x_hat)) / sqrt(variance + epsilon)``
        (means over the last axis); ``grads`` gets ``gamma = sum(dy * x_hat)``
        and ``beta = sum(dy)`` over the positions.
        """
        normalized, inverse_std, shape = self._take_record()
        dy = self._grad_array(dy, "dy", shape).reshape(normalized.shape)
        self._grads = {}
        if self.scale:
            self._grads["gamma"] = np.sum(dy * normalized, axis=0)
            d_normalized = dy * self._params["gamma"]
        else:
            d_normalized = dy
        if self.center:
            self._grads["beta"] = np.sum(dy, axis=0)
        if not input_gradient:
            return None
        dx = inverse_std * (d_normalized - d_normalized.mean(axis=1, keepdims=True)
                            - normalized * np.mean(d_normalized * normalized, axis=1,
                                                   keepdims=True))
        return dx.reshape(shape)
