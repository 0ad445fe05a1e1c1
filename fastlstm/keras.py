"""``keras.layers.LSTM`` on fastlstm's kernels: a drop-in layer for Keras 3.

:class:`LSTM` is ``keras.layers.LSTM`` with its time loop replaced: the
constructor, weights (names, order and shapes), configuration, masks,
states, dropout, ``stateful`` and ``Bidirectional`` are Keras' own, and the
loop over the steps runs as one call into fastlstm's kernels, with its
gradient, on the backend Keras runs on:

- ``torch``: a ``torch.library`` custom operator (``torch.ops.fastlstm``)
  with autograd and fake registrations (``fastlstm/_torch_ops.py``);
- ``jax``: a ``jax.custom_vjp`` around ``jax.pure_callback`` calls, under
  ``jit`` (``fastlstm/_jax_ops.py``);
- ``tensorflow``: a ``tf.custom_gradient`` around ``tf.numpy_function``
  calls, eagerly and in ``tf.function`` graphs (``fastlstm/_tf_ops.py``).
  XLA cannot compile those, so a model holding the layer runs Keras'
  ``fit`` and ``predict`` without ``jit_compile``.

Importing :mod:`fastlstm` never
imports Keras; this module needs it (``pip install "fastlstm[keras]"``) and
registers the layer as ``fastlstm>LSTM``, so ``keras.models.load_model``
restores it once this module is imported.
"""
try:
    import keras
except ImportError as error:
    raise ImportError('fastlstm.keras needs Keras 3; install it with '
                      'pip install "fastlstm[keras]"') from error

from ._validation import describe
from ._validation import ACTIVATIONS

__all__ = ["LSTM"]

# Backends whose gradient plumbing fastlstm provides, by Keras' backend name.
_BACKENDS = ("torch", "jax", "tensorflow")


def _backend_ops():
    """The ``lstm`` function of the backend Keras runs on."""
    backend = keras.backend.backend()
    if backend == "torch":
        from . import _torch_ops

        return _torch_ops.lstm
    if backend == "jax":
        from . import _jax_ops

        return _jax_ops.lstm
    if backend == "tensorflow":
        from . import _tf_ops

        return _tf_ops.lstm
    raise RuntimeError(f"fastlstm.keras.LSTM runs on the Keras backends {list(_BACKENDS)}; "
                       f"Keras runs on {backend!r} (set KERAS_BACKEND before importing "
                       f"keras)")


def _activation_name(value, name):
    """The kernels' name of a Keras activation, or a ValueError naming ``name``."""
    serialized = keras.activations.serialize(keras.activations.get(value))
    label = serialized if isinstance(serialized, str) else serialized.get("config", serialized)
    if label not in ACTIVATIONS:
        raise ValueError(f"{name} must be one of {list(ACTIVATIONS)} (the activations "
                         f"fastlstm's kernels implement), got {describe(value)}")
    return label


def _first(mask):
    """The one dropout mask the kernels apply: Keras draws four (one per
    gate) when recurrent_dropout > 0, and fastlstm uses the first for all."""
    return mask[0] if isinstance(mask, (list, tuple)) else mask


@keras.saving.register_keras_serializable(package="fastlstm")
class LSTM(keras.layers.LSTM):
    """Long Short-Term Memory layer, ``keras.layers.LSTM`` run by fastlstm.

    Takes ``keras.layers.LSTM``'s arguments and holds the same weights
    (``get_weights()`` of either layer loads into the other with
    ``set_weights``); see its documentation. Regularizers, constraints,
    masks, ``initial_state``, ``stateful`` and ``Bidirectional`` work as
    there.

    Parameters
    ----------
    units : int
        Dimensionality of the output space.
    activation, recurrent_activation : {"tanh", "sigmoid", "hard_sigmoid"}
        The activations the kernels implement; defaults "tanh" and "sigmoid".
    unroll : False
        True is refused: the time loop is one compiled kernel.
    use_cudnn : "auto" or False
        True is refused: fastlstm runs on the CPU.
    **kwargs
        The other arguments of ``keras.layers.LSTM``; ``implementation``
        must be 2 (its default).

    Notes
    -----
    With ``recurrent_dropout``, one mask per sequence is shared by the four
    gates, for the input and for the recurrent state (Keras draws one per
    gate then); ``dropout`` alone uses Keras' very mask.

    Examples
    --------
    >>> import keras
    >>> import fastlstm.keras
    >>> inputs = keras.Input((10, 8))
    >>> outputs = fastlstm.keras.LSTM(16, return_sequences=True)(inputs)
    >>> tuple(outputs.shape)
    (None, 10, 16)
    """

    def __init__(self, units, activation="tanh", recurrent_activation="sigmoid", unroll=False,
                 use_cudnn="auto", **kwargs):
        # By the kernels' names, found once (not under a tracing compiler).
        activations = (_activation_name(activation, "activation"),
                       _activation_name(recurrent_activation, "recurrent_activation"))
        # name: (value, the accepted values, why the others are refused)
        options = {"unroll": (unroll, (False,), "the time loop is one compiled kernel"),
                   "use_cudnn": (use_cudnn, ("auto", False), "fastlstm runs on the CPU"),
                   "implementation": (kwargs.pop("implementation", 2), (2,),
                                      "the fused kernel is the only implementation")}
        for name, (value, accepted, why) in options.items():
            if not any(type(value) is type(a) and value == a for a in accepted):
                raise ValueError(f"fastlstm.keras.LSTM does not support {name}={value!r} "
                                 f"({why}); accepted: {', '.join(map(repr, accepted))}")
        super().__init__(units, activation=activation,
                         recurrent_activation=recurrent_activation, **kwargs)
        # Keeps Bidirectional from replacing both directions by Keras' own
        # fused LSTM: this layer's loop is inner_loop.
        self.use_cudnn = False
        self._activations = activations
        self._lstm = _backend_ops()
        if keras.backend.backend() == "tensorflow":
            # The kernels run in tf.numpy_function, which XLA cannot
            # compile: Keras then resolves jit_compile "auto" to False, and
            # turns True into False with a warning.
            self.supports_jit = False

    def inner_loop(self, sequences, initial_state, mask, training=False):
        """The whole sequence in one call to fastlstm's kernels.

        Returns
        -------
        tuple
            ``(last_output, outputs, [h, c])`` as Keras' loop returns them:
            ``outputs`` in processing order (reversed with ``go_backwards``).
        """
        if isinstance(mask, (list, tuple)):
            mask = mask[0]
        cell = self.cell
        ops = keras.ops
        # The kernels compute in float32 or float64: a float16 or bfloat16
        # policy (mixed precision) runs them in float32.
        dtype = "float64" if cell.compute_dtype == "float64" else "float32"
        x = ops.cast(sequences, dtype)
        h0, c0 = (ops.cast(state, dtype) for state in initial_state)
        weights = [ops.cast(w, dtype) for w in (cell.kernel, cell.recurrent_kernel)]
        bias = ops.cast(cell.bias, dtype) if cell.use_bias else None
        recurrent_dropout_mask = None
        if training and 0.0 < cell.dropout < 1.0:
            x = x * ops.expand_dims(ops.cast(_first(cell.get_dropout_mask(sequences[:, 0, :])),
                                             dtype), 1)
        if training and 0.0 < cell.recurrent_dropout < 1.0:
            recurrent_dropout_mask = ops.cast(
                _first(cell.get_recurrent_dropout_mask(initial_state[0])), dtype)
        if mask is not None:
            mask = ops.cast(mask, "bool")
        outputs, h, c = self._lstm(
            x, *weights, bias, h0, c0, mask, recurrent_dropout_mask, self.go_backwards,
            *self._activations)
        if mask is not None:
            kept = ops.flip(mask, axis=1) if self.go_backwards else mask
            if self.zero_output_for_mask:
                # Bidirectional's setting: masked steps output zeros.
                return outputs[:, -1], ops.where(ops.expand_dims(kept, -1), outputs,
                                                 ops.zeros_like(outputs)), [h, c]
            if keras.backend.backend() == "jax":
                # Keras' JAX loop outputs the initial h at the masked steps
                # before the first kept one, where its other backends (and
                # the kernels) output zeros: do as the backend's LSTM does.
                started = ops.cumsum(ops.cast(kept, "int32"), axis=1) > 0
                outputs = ops.where(ops.expand_dims(started, -1), outputs,
                                    ops.expand_dims(h0, 1))
        return outputs[:, -1], outputs, [h, c]
