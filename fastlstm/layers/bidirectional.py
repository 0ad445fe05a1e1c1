"""The Bidirectional wrapper, as ``keras.layers.Bidirectional``."""
import numpy as np

from .._validation import (as_real_array, check_bool, check_option, check_state_list, describe,
                           describe_list)
from .base import Layer, grad_enabled, seed_children, seed_sequence
from .lstm import LSTM

__all__ = ["Bidirectional"]

_MERGE_MODES = ("concat", "sum", "mul", "ave", None)


class Bidirectional(Layer):
    """Bidirectional wrapper, as ``keras.layers.Bidirectional``.

    Runs a copy of ``layer``'s configuration forwards and another with
    ``go_backwards=True``, and merges their outputs. The wrapped layer itself
    is not used: both copies get fresh weights (from seeds derived from
    ``layer.seed``, different for the two directions).

    Parameters
    ----------
    layer : LSTM
        The configuration of both directions (``go_backwards`` must be False).
    merge_mode : {"concat", "sum", "mul", "ave", None}
        How the two outputs combine; None returns them as a list
        ``[forward, backward]``. Default "concat".
    name : str or None
        Default ``bidirectional``, numbered as other layers' names. The
        directions are named ``forward_<layer.name>`` and
        ``backward_<layer.name>``, as in Keras.
    trainable : bool
        Whether training updates both directions' weights; a wrapped layer
        made with ``trainable=False`` makes the wrapper frozen too. Setting
        the wrapper's ``trainable`` sets both directions'. Default True.

    Notes
    -----
    Outputs follow Keras: with ``return_sequences`` the backward layer's
    outputs are reversed to line up with the input's time axis, and masked
    steps output zeros in both directions (for right-padded sequences the
    backward direction reads each sequence's kept steps from its last to its
    first, like a packed bidirectional PyTorch LSTM). With ``return_state``
    the call returns ``[output, h_fw, c_fw, h_bw, c_bw]`` (two outputs first
    when ``merge_mode`` is None); ``initial_state`` is ``[h_fw, c_fw, h_bw, c_bw]``.
    ``get_weights()`` lists the forward layer's three arrays, then the
    backward layer's.

    Examples
    --------
    >>> import numpy as np, fastlstm as fl
    >>> x = np.random.default_rng(0).random((2, 5, 3))
    >>> bi = fl.Bidirectional(fl.LSTM(8, return_sequences=True, seed=0))
    >>> bi(x).shape
    (2, 5, 16)
    >>> y, h_fw, c_fw, h_bw, c_bw = fl.Bidirectional(fl.LSTM(8, return_state=True))(x)
    >>> y.shape, h_bw.shape
    ((2, 16), (2, 8))
    """

    _sample_axes = ("timesteps", "features")

    def __init__(self, layer, merge_mode="concat", *, name=None, trainable=True, **kwargs):
        if not isinstance(layer, LSTM):
            raise TypeError(f"layer must be a fastlstm.LSTM, got {describe(layer)}")
        check_option(merge_mode, "merge_mode", _MERGE_MODES)
        if layer.go_backwards:
            raise ValueError("layer must have go_backwards=False: Bidirectional makes the "
                             "backward direction itself, got go_backwards=True")
        config = layer.get_config()
        trainable = check_bool(trainable, "trainable") and layer.trainable
        # The wrapped layer as Keras serialises it: {"class_name": ..., "config": ...}.
        super().__init__({"layer": {"class_name": "LSTM", "config": config},
                          "merge_mode": merge_mode}, name, trainable, kwargs)
        if self._input_shape_arg is None:
            # Bidirectional(LSTM(..., input_shape=...)): the wrapped layer's (it warned).
            self._input_shape_arg = layer._input_shape_arg
        self._layer_repr = repr(layer)
        forward_seed, backward_seed = self._direction_seeds(config["seed"])
        self.forward_layer = LSTM(**dict(config, seed=forward_seed, trainable=trainable,
                                         name=f"forward_{layer.name}"))
        self.backward_layer = LSTM(**dict(config, seed=backward_seed, go_backwards=True,
                                          trainable=trainable, name=f"backward_{layer.name}"))
        self.merge_mode = merge_mode
        self.return_sequences = layer.return_sequences
        self.return_state = layer.return_state
        self.stateful = layer.stateful
        self.units = layer.units
        # The size of each direction's outputs and h: proj_units when projected.
        self._output_units = layer.output_units
        self.dtype = layer.dtype
        for direction in (self.forward_layer, self.backward_layer):
            direction._zero_output_for_mask = self.return_sequences
        self._merge_operands = None
        self._shape = None

    @staticmethod
    def _direction_seeds(seed):
        if seed is None:
            return None, None
        return seed_children(seed_sequence(seed), 2)

    def __repr__(self):
        return f"Bidirectional({self._layer_repr}, merge_mode={self.merge_mode!r})"

    def get_config(self):
        """``{"name": ..., "trainable": ..., "layer": ..., "merge_mode": ...}``,
        the wrapped layer as ``{"class_name": "LSTM", "config": {...}}``, as
        Keras serialises it."""
        layer = self._config["layer"]
        return {"name": self.name, "trainable": self.trainable,
                "layer": {"class_name": "LSTM", "config": dict(layer["config"])},
                "merge_mode": self.merge_mode}

    def _sublayers(self):
        # The base's constructor sets the flag before the directions exist.
        return [layer for layer in (getattr(self, "forward_layer", None),
                                    getattr(self, "backward_layer", None)) if layer is not None]

    @classmethod
    def from_config(cls, config):
        """A new, unbuilt wrapper from :meth:`get_config`'s dict."""
        if not isinstance(config, dict) or not isinstance(config.get("layer"), dict):
            raise TypeError(f"config must be a dict with a 'layer' entry "
                            f"{{'class_name': 'LSTM', 'config': {{...}}}}, got "
                            f"{describe(config)}")
        layer = dict(config["layer"])
        if layer.get("class_name") != "LSTM":
            raise ValueError(f"config['layer']['class_name'] must be 'LSTM', got "
                             f"{describe(layer.get('class_name'))}")
        return cls(LSTM.from_config(layer["config"]),
                   **{k: v for k, v in config.items() if k != "layer"})

    @property
    def built(self):
        return self.forward_layer.built

    @property
    def input_dim(self):
        return self.forward_layer.input_dim

    @property
    def returns_list(self):
        return self.return_state or self.merge_mode is None

    def compute_output_shape(self, input_shape):
        """As :meth:`LSTM.compute_output_shape`, with twice the units for "concat"."""
        units = self._output_units * (2 if self.merge_mode == "concat" else 1)
        if self.return_sequences:
            return tuple(input_shape[:2]) + (units,)
        return (input_shape[0], units)

    def compute_mask(self, x, mask=None):
        """The mask itself with ``return_sequences`` (the outputs are in input
        order), else None."""
        return mask if self.return_sequences else None

    def build(self, input_dim):
        """Create both directions' weights for inputs with ``input_dim`` features."""
        self.forward_layer.build(input_dim)
        self.backward_layer.build(input_dim)

    @property
    def params(self):
        """The two layers' weights, keyed ``forward_kernel``, ...,
        ``backward_bias`` (the layers' own arrays, not copies)."""
        return self._prefixed("params")

    @property
    def grads(self):
        """The gradients of the last backward, keyed as :attr:`params`."""
        return self._prefixed("grads")

    def _prefixed(self, attribute):
        merged = {}
        for prefix, layer in (("forward", self.forward_layer), ("backward", self.backward_layer)):
            for key, value in getattr(layer, attribute).items():
                merged[f"{prefix}_{key}"] = value
        return merged

    def get_weights(self):
        """The forward layer's weights, then the backward layer's (copies)."""
        return self.forward_layer.get_weights() + self.backward_layer.get_weights()

    def set_weights(self, weights):
        """Set the forward layer's weights, then the backward layer's; builds
        both when they are not built yet."""
        names = self.forward_layer._weight_names()
        count = 2 * len(names)
        if not isinstance(weights, (list, tuple)) or len(weights) != count:
            raise ValueError(f"weights must be a list of {count} arrays (forward "
                             f"{', '.join(names)}, then backward), got {describe_list(weights)}")
        half = len(names)
        self.forward_layer._assign(list(weights[:half]), [
            f"weights[{k}] (forward {name})" for k, name in enumerate(names)])
        self.backward_layer._assign(list(weights[half:]), [
            f"weights[{k + half}] (backward {name})" for k, name in enumerate(names)])

    @property
    def quantization_mode(self):
        """That of the two wrapped layers (``"int8"`` or None)."""
        return self.forward_layer.quantization_mode

    def quantize(self, mode):
        """Quantize both directions (see :meth:`LSTM.quantize`)."""
        for layer in (self.forward_layer, self.backward_layer):
            layer.quantize(mode)

    def reset_state(self):
        """Reset both directions' states (see :meth:`LSTM.reset_state`)."""
        self.forward_layer.reset_state()
        self.backward_layer.reset_state()

    def __call__(self, x, initial_state=None, mask=None, training=False):
        """Run both directions and merge (see the class docstring).

        Parameters are those of :meth:`LSTM.__call__`, except that
        ``initial_state`` is ``[h_fw, c_fw, h_bw, c_bw]``.
        """
        forward_state = backward_state = None
        if initial_state is not None:
            initial_state = check_state_list(initial_state, "initial_state",
                                             "[h_fw, c_fw, h_bw, c_bw]")
            forward_state, backward_state = initial_state[:2], initial_state[2:]
        x = as_real_array(x, "x", self.dtype)
        y = self.forward_layer._call(x, forward_state, mask, training,
                                     ("initial_state[0] (h_fw)", "initial_state[1] (c_fw)"))
        y_rev = self.backward_layer._call(x, backward_state, mask, training,
                                          ("initial_state[2] (h_bw)", "initial_state[3] (c_bw)"))
        states = []
        if self.return_state:
            states = y[1:] + y_rev[1:]
            y, y_rev = y[0], y_rev[0]
        if self.return_sequences:
            y_rev = y_rev[:, ::-1]
        self._shape = y.shape
        self._merge_operands = (y, y_rev) if self.merge_mode == "mul" and grad_enabled() \
            else None

        if self.merge_mode == "concat":
            outputs = [np.concatenate([y, y_rev], axis=-1)]
        elif self.merge_mode == "sum":
            outputs = [y + y_rev]
        elif self.merge_mode == "ave":
            outputs = [(y + y_rev) * self.dtype.type(0.5)]
        elif self.merge_mode == "mul":
            outputs = [y * y_rev]
        else:
            outputs = [y, np.ascontiguousarray(y_rev)]
        if self.return_state or self.merge_mode is None:
            return outputs + states
        return outputs[0]

    def backward(self, dy, input_gradient=True):
        """Backpropagate through both directions.

        Parameters
        ----------
        dy : array_like or list
            Mirrors what the call returned: the merged output's gradient;
            ``[d_fw, d_bw]`` when ``merge_mode`` is None; followed by
            ``d_h_fw, d_c_fw, d_h_bw, d_c_bw`` with ``return_state``. None
            entries are zeros.
        input_gradient : bool
            Compute ``dx`` (see :meth:`LSTM.backward`); None when False.

        Returns
        -------
        ndarray or list
            ``dx``, or ``[dx, dh_fw, dc_fw, dh_bw, dc_bw]`` when the call was
            given an ``initial_state``.
        """
        input_gradient = check_bool(input_gradient, "input_gradient")
        if self._shape is None:
            raise RuntimeError("backward() needs a forward call first: call the layer")
        output_count = 2 if self.merge_mode is None else 1
        if self.return_state or self.merge_mode is None:
            count = output_count + (4 if self.return_state else 0)
            if not isinstance(dy, (list, tuple)) or len(dy) != count:
                raise ValueError(f"dy must be a list of {count} gradients mirroring the "
                                 f"call's outputs (entries may be None), got {describe(dy)}")
            d_outputs, d_states = list(dy[:output_count]), list(dy[output_count:])
        else:
            d_outputs, d_states = [dy], []
        d_y, d_y_rev = self._split_output_grad(d_outputs)
        if self.return_sequences and d_y_rev is not None:
            d_y_rev = d_y_rev[:, ::-1]
        if self.return_state:
            shapes = [(self._shape[0], size) for size in (self._output_units, self.units) * 2]
            names = ["d_h_fw", "d_c_fw", "d_h_bw", "d_c_bw"]
            d_states = [None if d is None else
                        self._grad_array(d, f"dy[{output_count + k}] ({name})", shape)
                        for k, (d, name, shape) in enumerate(zip(d_states, names, shapes))]
            forward_dy, backward_dy = [d_y] + d_states[:2], [d_y_rev] + d_states[2:]
        else:
            forward_dy, backward_dy = d_y, d_y_rev
        forward_grads = self.forward_layer.backward(forward_dy, input_gradient)
        backward_grads = self.backward_layer.backward(backward_dy, input_gradient)
        self._merge_operands = None
        if isinstance(forward_grads, list):
            dx = forward_grads[0] + backward_grads[0] if input_gradient else None
            return [dx] + forward_grads[1:] + backward_grads[1:]
        return forward_grads + backward_grads if input_gradient else None

    def _split_output_grad(self, d_outputs):
        """The gradients reaching the forward and (re-aligned) backward outputs."""
        shape = self._shape
        if self.merge_mode is None:
            names = ["dy[0] (d_forward)", "dy[1] (d_backward)"]
            return [None if d is None else self._grad_array(d, name, shape)
                    for d, name in zip(d_outputs, names)]
        d = d_outputs[0]
        if d is None:
            return None, None
        name = "dy[0] (d_output)" if self.return_state else "dy"
        if self.merge_mode == "concat":
            d = self._grad_array(d, name, shape[:-1] + (2 * shape[-1],))
            return d[..., :self._output_units], d[..., self._output_units:]
        d = self._grad_array(d, name, shape)
        if self.merge_mode == "sum":
            return d, d
        if self.merge_mode == "ave":
            half = d * self.dtype.type(0.5)
            return half, half
        if self._merge_operands is None:
            # The layers below raise the reason (no_grad, or a second backward).
            return d, d
        y, y_rev = self._merge_operands
        return d * y_rev, d * y
