"""Dense, Embedding, Dropout and Masking, as their Keras namesakes."""
import numpy as np

from .. import _kernels, _quantize, initializers
from ..functional import dense_backward, dense_forward
from .._validation import (as_real_array, check_bool, check_dtype, check_int, check_option,
                           check_rate, check_real)
from .base import REGULARIZERS_AND_CONSTRAINTS, Layer, dropout_mask, seed_sequence

__all__ = ["Dense", "Embedding", "Dropout", "Masking"]

_DENSE_ACTIVATIONS = ("linear", "relu", "sigmoid", "tanh", "softmax")
_DENSE_UNSUPPORTED = {name: REGULARIZERS_AND_CONSTRAINTS[name] for name in (
    "kernel_regularizer", "bias_regularizer", "activity_regularizer", "kernel_constraint",
    "bias_constraint", "lora_rank")}
_EMBEDDING_UNSUPPORTED = dict(
    {name: REGULARIZERS_AND_CONSTRAINTS[name] for name in (
        "embeddings_regularizer", "activity_regularizer", "embeddings_constraint", "lora_rank")},
    sparse="gradients are dense arrays",
    input_length="the layer takes sequences of any length",
)


def _sigmoid(z):
    # exp of a non-positive number only, so nothing overflows.
    e = np.exp(-np.abs(z))
    return np.where(z >= 0, 1 / (1 + e), e / (1 + e))


def _softmax(z):
    e = np.exp(z - np.max(z, axis=-1, keepdims=True))
    e /= np.sum(e, axis=-1, keepdims=True)
    return e


class Dense(Layer):
    """Densely connected layer on the last axis, as ``keras.layers.Dense``.

    ``y = activation(x @ kernel + bias)`` with ``kernel (input_dim, units)``
    and ``bias (units,)``, for inputs ``(batch, features)`` or
    ``(batch, timesteps, features)`` (any rank of at least 2: the same
    weights apply at every position). A mask passes through unchanged, as
    in Keras.

    Parameters
    ----------
    units : int
        Dimensionality of the output's last axis.
    activation : {None, "linear", "relu", "sigmoid", "tanh", "softmax"}
        Default None (linear). For a classifier, prefer None with a loss
        ``from_logits=True``: it is more accurate than a softmax or sigmoid
        followed by a cross-entropy on probabilities.
    use_bias : bool
        Default True.
    kernel_initializer, bias_initializer : str, Initializer or callable
        Defaults "glorot_uniform" and "zeros".
    seed : int, numpy.random.Generator, numpy.random.SeedSequence or None
        Makes the initial weights reproducible.
    dtype : {"float32", "float64"}
        The dtype of the weights and of the computation. Default "float32".
    name, trainable
        See :class:`~fastlstm.layers.Layer`; the default names are
        ``dense``, ``dense_1``, ...

    Examples
    --------
    >>> import numpy as np, fastlstm as fl
    >>> from fastlstm.layers import Dense
    >>> Dense(3, seed=0)(np.ones((2, 5, 4))).shape
    (2, 5, 3)
    """

    def __init__(self, units, activation=None, use_bias=True,
                 kernel_initializer="glorot_uniform", bias_initializer="zeros", *, seed=None,
                 dtype="float32", name=None, trainable=True, **kwargs):
        super().__init__(dict(units=units, activation=activation, use_bias=use_bias,
                              kernel_initializer=kernel_initializer,
                              bias_initializer=bias_initializer, seed=seed, dtype=dtype),
                         name, trainable, kwargs, _DENSE_UNSUPPORTED)
        self.units = check_int(units, "units")
        self.activation = check_option(activation, "activation", _DENSE_ACTIVATIONS,
                                       none=True) or "linear"
        self.use_bias = check_bool(use_bias, "use_bias")
        self.kernel_initializer = initializers.get(kernel_initializer, "kernel_initializer")
        self.bias_initializer = initializers.get(bias_initializer, "bias_initializer")
        self.seed = seed
        self._weights_rng = np.random.default_rng(seed_sequence(seed))
        self.dtype = check_dtype(dtype)
        self._int8 = None

    def _weight_names(self):
        names = ("kernel", "bias") if self.use_bias else ("kernel",)
        return names + ("kernel_scale",) if self.quantization_mode else names

    def _weight_shapes(self, input_dim):
        shapes = [((input_dim, self.units), "(input_dim, units)")]
        shapes += [((self.units,), "(units,)")] * (len(self._weight_names()) - 1)
        return shapes

    def _weight_dtypes(self):
        return {"kernel": np.int8} if self.quantization_mode else {}

    def _weights_note(self):
        return f" (use_bias={self.use_bias})"

    def _initial_weights(self, input_dim):
        weights = {"kernel": initializers._draw(
            self.kernel_initializer, (input_dim, self.units), self.dtype, self._weights_rng,
            "kernel_initializer")}
        if self.use_bias:
            weights["bias"] = initializers._draw(
                self.bias_initializer, (self.units,), self.dtype, self._weights_rng,
                "bias_initializer")
        if self.quantization_mode:
            weights["kernel"], weights["kernel_scale"] = _quantize.quantize_columns(
                weights["kernel"], "kernel")
        return weights

    def quantize(self, mode):
        """Quantize the kernel, as Keras 3's ``layer.quantize(mode)``.

        ``mode="int8"`` (the one fastlstm implements): ``kernel`` becomes
        int8 with one float32 scale per output column (``kernel_scale``, in
        ``params``); the bias stays float32. Calls then quantize each input
        row to uint8 and run integer products (see :doc:`/guide/serving`);
        the layer runs inference only. Build the layer first; float64
        layers are refused.
        """
        _quantize.check_mode(mode)
        if not self.built:
            raise RuntimeError(f"{self._label()} is not built yet, so it has no weights to "
                               f"quantize: call it on data or build(input_dim) first")
        _quantize.check_quantizable(self)
        kernel, scale = _quantize.quantize_columns(self._params["kernel"], "kernel")
        quantized = {"kernel": kernel}
        if self.use_bias:
            quantized["bias"] = self._params["bias"]
        quantized["kernel_scale"] = scale
        self._params = quantized
        self._grads = {}
        self.quantization_mode = mode
        self._int8 = None
        self.drop_record(_quantize.training_refused(self))

    def compute_output_shape(self, input_shape):
        """``input_shape`` with its last axis replaced by ``units``."""
        return tuple(input_shape[:-1]) + (self.units,)

    def __call__(self, x, mask=None, training=False):
        """Apply the layer to ``x`` of shape ``(batch, ..., features)``.

        ``mask`` passes through (see :meth:`compute_mask`); ``training`` is
        accepted for a uniform interface: Dense behaves the same in training
        and inference.
        """
        x = as_real_array(x, "x", self.dtype)
        if x.ndim < 2:
            raise ValueError(f"x must have shape (batch, ..., features), got an array with "
                             f"{x.ndim} dimension(s), shape {x.shape}")
        if self.built and x.shape[-1] != self.input_dim:
            raise ValueError(f"{self._label()}: x has {x.shape[-1]} features (last axis), but "
                             f"the layer was built for input_dim={self.input_dim}")
        if training is not None:
            check_bool(training, "training")
        if not self.built:
            self.build(x.shape[-1])
        if x.size == 0:
            raise ValueError(f"x must have at least one sample and one feature, got shape "
                             f"{x.shape}")
        x2 = np.ascontiguousarray(x.reshape(-1, x.shape[-1]))
        if self.quantization_mode:
            if training:
                raise ValueError(f"training=True: {_quantize.training_refused(self)}")
            params = self._params
            self._int8 = _quantize.PackedInt8.kept(self._int8, params["kernel"],
                                                   params["kernel_scale"])
            z = _kernels.current().int8_matmul(x2, *self._int8.arguments(), params.get("bias"),
                                               _quantize.use_portable())
        else:
            z = dense_forward(x2, self._params["kernel"], self._params.get("bias"))
        activation = self.activation
        if activation == "relu":
            y = np.maximum(z, 0)
        elif activation == "sigmoid":
            y = _sigmoid(z).astype(self.dtype, copy=False)
        elif activation == "tanh":
            y = np.tanh(z)
        elif activation == "softmax":
            y = _softmax(z)
        else:
            y = z
        # What backward needs: the input, and the output for the activation's derivative.
        if self.quantization_mode:
            self.drop_record(_quantize.training_refused(self))
        else:
            self._keep((x2, y, x.shape))
        return y.reshape(x.shape[:-1] + (self.units,))

    def backward(self, dy, input_gradient=True):
        """Backpropagate through the last call.

        Parameters
        ----------
        dy : array_like
            Gradient of the loss with respect to the output.
        input_gradient : bool
            Compute ``dx``; None when False.

        Returns
        -------
        ndarray
            ``dx``, the input's shape; ``grads`` holds ``kernel`` (and
            ``bias``) gradients, replaced by each backward.
        """
        x2, y, x_shape = self._take_record()
        dy = self._grad_array(dy, "dy", x_shape[:-1] + (self.units,)).reshape(-1, self.units)
        activation = self.activation
        if activation == "relu":
            dz = dy * (y > 0)
        elif activation == "sigmoid":
            dz = dy * y * (1 - y)
        elif activation == "tanh":
            dz = dy * (1 - y * y)
        elif activation == "softmax":
            dz = y * (dy - np.sum(dy * y, axis=-1, keepdims=True))
        else:
            dz = dy
        dx, dkernel, dbias = dense_backward(x2, self._params["kernel"],
                                            np.ascontiguousarray(dz), self.use_bias,
                                            input_gradient)
        self._grads = {"kernel": dkernel}
        if self.use_bias:
            self._grads["bias"] = dbias
        return None if dx is None else dx.reshape(x_shape)


class Embedding(Layer):
    """Turns integer indices into dense vectors, as ``keras.layers.Embedding``.

    ``y[..., :] = embeddings[x[...]]`` with ``embeddings (input_dim, output_dim)``.

    Parameters
    ----------
    input_dim : int
        Size of the vocabulary: indices are in ``[0, input_dim)``.
    output_dim : int
        Dimension of the vectors.
    embeddings_initializer : str, Initializer or callable
        Default "uniform" (Keras' name for ``RandomUniform(-0.05, 0.05)``).
    mask_zero : bool
        Whether index 0 is padding: :meth:`compute_mask` then returns
        ``x != 0``, the mask an LSTM consumes (``Sequential`` passes it on),
        and ``input_dim`` must count the padding index. Default False.
    seed : int, numpy.random.Generator, numpy.random.SeedSequence or None
        Makes the initial vectors reproducible.
    dtype : {"float32", "float64"}
        Default "float32".
    name, trainable
        See :class:`~fastlstm.layers.Layer`; the default names are
        ``embedding``, ``embedding_1``, ...

    Examples
    --------
    >>> import numpy as np
    >>> from fastlstm.layers import Embedding
    >>> embedding = Embedding(10, 4, mask_zero=True, seed=0)
    >>> tokens = np.array([[3, 1, 0, 0]])
    >>> embedding(tokens).shape, embedding.compute_mask(tokens).tolist()
    ((1, 4, 4), [[True, True, False, False]])
    """

    input_is_features = False

    def __init__(self, input_dim, output_dim, embeddings_initializer="uniform",
                 mask_zero=False, *, seed=None, dtype="float32", name=None, trainable=True,
                 **kwargs):
        super().__init__(dict(input_dim=input_dim, output_dim=output_dim,
                              embeddings_initializer=embeddings_initializer,
                              mask_zero=mask_zero, seed=seed, dtype=dtype), name, trainable,
                         kwargs, _EMBEDDING_UNSUPPORTED)
        self.input_dim = check_int(input_dim, "input_dim")
        self.output_dim = check_int(output_dim, "output_dim")
        if isinstance(embeddings_initializer, str) and embeddings_initializer == "uniform":
            embeddings_initializer = initializers.RandomUniform(-0.05, 0.05)
        self.embeddings_initializer = initializers.get(embeddings_initializer,
                                                       "embeddings_initializer")
        self.mask_zero = check_bool(mask_zero, "mask_zero")
        self.seed = seed
        self._weights_rng = np.random.default_rng(seed_sequence(seed))
        self.dtype = check_dtype(dtype)

    def build(self, input_dim=None):
        """Create the embeddings, ``(self.input_dim, output_dim)``.

        Their shape comes from the constructor, so the argument (a uniform
        interface with the other layers, like Keras' ``input_shape``) is
        ignored. Building a built layer again does nothing.
        """
        super().build()

    def _weight_names(self):
        return ("embeddings",)

    def _weight_shapes(self, input_dim):
        return [((self.input_dim, self.output_dim), "(input_dim, output_dim)")]

    def _initial_weights(self, input_dim):
        return {"embeddings": initializers._draw(
            self.embeddings_initializer, (self.input_dim, self.output_dim), self.dtype,
            self._weights_rng, "embeddings_initializer")}

    def compute_output_shape(self, input_shape):
        """``input_shape`` with a last axis of ``output_dim`` added."""
        return tuple(input_shape) + (self.output_dim,)

    def compute_mask(self, x, mask=None):
        """``x != 0`` with ``mask_zero``, else None (no mask)."""
        if not self.mask_zero:
            return None
        return np.asarray(x) != 0

    def _indices(self, x):
        array = as_real_array(x, "x")
        if array.dtype.kind == "f":
            if not np.all(np.isfinite(array)) or np.any(array != np.round(array)):
                raise ValueError("x must hold integer indices, got non-integer values")
        indices = array.astype(np.intp)
        if indices.size and (indices.min() < 0 or indices.max() >= self.input_dim):
            bad = indices[(indices < 0) | (indices >= self.input_dim)].flat[0]
            raise ValueError(f"x must hold indices in [0, input_dim) = [0, {self.input_dim}), "
                             f"got {bad}")
        return indices

    def __call__(self, x, mask=None, training=False):
        """Look up the vectors of the indices ``x`` (any shape): the result
        has shape ``x.shape + (output_dim,)``. ``mask`` and ``training``
        change nothing (the layer makes its own mask, see :meth:`compute_mask`)."""
        indices = self._indices(x)
        if training is not None:
            check_bool(training, "training")
        if not self.built:
            self.build()
        self._keep(indices)
        return self._params["embeddings"][indices]

    def backward(self, dy, input_gradient=True):
        """Accumulate ``grads["embeddings"]`` from the last call.

        Returns None: the indices have no gradient (``input_gradient`` is
        accepted for a uniform interface).
        """
        indices = self._take_record()
        dy = self._grad_array(dy, "dy", indices.shape + (self.output_dim,))
        grad = np.zeros_like(self._params["embeddings"])
        np.add.at(grad, indices.reshape(-1), dy.reshape(-1, self.output_dim))
        self._grads = {"embeddings": grad}
        return None


class Dropout(Layer):
    """Sets a fraction ``rate`` of the inputs to 0 in training, as ``keras.layers.Dropout``.

    Kept values are scaled by ``1 / (1 - rate)`` (inverted dropout), so
    inference (``training=False``) is the identity. A mask passes through.

    Parameters
    ----------
    rate : float in [0, 1)
        Fraction of the inputs dropped.
    seed : int, numpy.random.Generator, numpy.random.SeedSequence or None
        Makes the dropped positions reproducible.
    dtype : {"float32", "float64"}
        The dtype inputs are cast to. Default "float32".
    name, trainable
        See :class:`~fastlstm.layers.Layer`; the default names are
        ``dropout``, ``dropout_1``, ...

    Examples
    --------
    >>> import numpy as np
    >>> from fastlstm.layers import Dropout
    >>> y = Dropout(0.5, seed=0)(np.ones((2, 4)), training=True)
    >>> sorted(set(y.ravel().tolist()))
    [0.0, 2.0]
    """

    def __init__(self, rate, *, seed=None, dtype="float32", name=None, trainable=True,
                 **kwargs):
        super().__init__(dict(rate=rate, seed=seed, dtype=dtype), name, trainable, kwargs, {
            "noise_shape": "one mask per value is drawn; for a mask shared over time steps "
                           "use LSTM's dropout argument"})
        self.rate = check_rate(rate, "rate")
        self.seed = seed
        self._rng = np.random.default_rng(seed_sequence(seed))
        self.dtype = check_dtype(dtype)
        self._built = True

    def build(self, input_dim=None):
        """Dropout has no weights: nothing to build."""

    def _weights_note(self):
        return " (Dropout has no weights)"

    def __call__(self, x, mask=None, training=False):
        """Drop values when ``training`` is True; else return ``x`` (cast).
        ``mask`` passes through."""
        x = as_real_array(x, "x", self.dtype)
        training = False if training is None else check_bool(training, "training")
        keep = self.draw_mask(x.shape, training)
        if keep is not None:
            x = x * keep
        self._keep((keep, x.shape))
        return x

    def draw_mask(self, shape, training=True):
        """The scaled keep-mask of a call on an input of ``shape`` (what
        the call multiplies by), or None when nothing is dropped; drawn from
        the layer's generator, whoever runs the layer."""
        if not (training and self.rate):
            return None
        return dropout_mask(self._rng, shape, self.rate, self.dtype)

    def backward(self, dy, input_gradient=True):
        """``dy`` times the scaled mask of the last call (``dy`` itself in
        inference); None when not ``input_gradient``."""
        keep, shape = self._take_record()
        dy = self._grad_array(dy, "dy", shape)
        if not input_gradient:
            return None
        return dy if keep is None else dy * keep


class Masking(Layer):
    """Masks the time steps whose features all equal ``mask_value``, as
    ``keras.layers.Masking``.

    A step ``t`` of sample ``b`` is masked when ``x[b, t, :] == mask_value``
    everywhere; :meth:`compute_mask` returns the kept steps,
    ``any(x != mask_value, axis=-1)``, which the layers after it consume as
    they consume an ``Embedding(mask_zero=True)``'s mask (an LSTM carries
    its state over masked steps; a mask reaching the output restricts the
    loss). The output is ``x`` with masked steps set to 0, as in Keras. This
    is how padded sequences of real values are fed to an LSTM.

    Parameters
    ----------
    mask_value : float
        Default 0.0.
    dtype : {"float32", "float64"}
        The dtype inputs are cast to (and compared in). Default "float32".
    name : str or None
        Default ``masking``, numbered as other layers' names.
    trainable : bool
        Accepted for a uniform interface: Masking has no weights. Default True.

    Examples
    --------
    >>> import numpy as np, fastlstm as fl
    >>> x = np.array([[[1.0, 2.0], [-1.0, -1.0], [0.5, -1.0]]])
    >>> masking = fl.Masking(mask_value=-1.0)
    >>> masking.compute_mask(x).tolist()
    [[True, False, True]]
    >>> masking(x)[0].tolist()
    [[1.0, 2.0], [0.0, 0.0], [0.5, -1.0]]
    """

    def __init__(self, mask_value=0.0, *, dtype="float32", name=None, trainable=True,
                 **kwargs):
        super().__init__(dict(mask_value=mask_value, dtype=dtype), name, trainable, kwargs)
        self.mask_value = check_real(mask_value, "mask_value")
        self.dtype = check_dtype(dtype)
        self._built = True

    def build(self, input_dim=None):
        """Masking has no weights: nothing to build."""

    def _weights_note(self):
        return " (Masking has no weights)"

    def _kept_steps(self, x):
        return np.any(x != self.dtype.type(self.mask_value), axis=-1)

    def _features(self, x):
        x = as_real_array(x, "x", self.dtype)
        if x.ndim < 2:
            raise ValueError(f"{self._label()}: x must have shape (batch, "
                             f"timesteps, features), got shape {x.shape}")
        return x

    def compute_mask(self, x, mask=None):
        """The kept steps of ``x``, ``any(x != mask_value, axis=-1)``; the
        incoming ``mask`` is replaced, as in Keras."""
        return self._kept_steps(self._features(x))

    def __call__(self, x, mask=None, training=False):
        """``x`` with its masked steps set to 0 (a new array)."""
        x = self._features(x)
        if training is not None:
            check_bool(training, "training")
        kept = self._kept_steps(x)
        self._keep((kept, x.shape))
        # where, not a product: a masked negative value becomes 0.0, not -0.0
        return np.where(kept[..., None], x, 0)

    def backward(self, dy, input_gradient=True):
        """``dy`` with the masked steps' gradients set to 0 (None when not
        ``input_gradient``)."""
        kept, shape = self._take_record()
        dy = self._grad_array(dy, "dy", shape)
        return np.where(kept[..., None], dy, 0) if input_gradient else None
