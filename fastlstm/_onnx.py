"""ONNX export of a built :class:`~fastlstm.models.Sequential` (``model.export``).

The graph is written with ``onnx.helper`` alone, layer after layer, from the
model's weights and configuration; it never runs the kernels. Every LSTM
becomes one ONNX ``LSTM`` node (a ``Bidirectional`` one node with
``direction="bidirectional"``), time-major inside the graph, with the batch
and time axes dynamic.

Masks. A fastlstm LSTM carries its states over a masked step and repeats the
previous output there (zeros before the first kept step). ONNX's LSTM node
knows only ``sequence_lens``: the first ``n`` steps of each sequence. So a
masked LSTM becomes:

1. each sequence's kept steps moved to the front, in time order (``TopK`` of
   the mask: equal values keep the order of their indices), and
   ``sequence_lens`` = ``n``, the number of kept steps;
2. the LSTM node on that: forward, its ``Y[j]`` is the output after the kept
   steps ``0..j``; reverse, after the kept steps ``n-1..j``;
3. each step's output gathered back from ``Y`` with one row of zeros after
   its end: forward, step ``t`` reads row ``kept_through[t] - 1`` (the number
   of kept steps up to ``t``, minus one), or the zeros when no step up to
   ``t`` was kept; reverse, row ``kept_through[t] - keep[t]`` (the kept steps
   before ``t``), or the zeros when no step from ``t`` on was kept.

That is the layer's own result for any mask: padding at the end, at the start
(Keras' ``pad_sequences`` default) or gaps between kept steps.

int8. A model after ``quantize("int8")`` is written with ONNX Runtime's
quantized operators (domain ``com.microsoft``): each LSTM a
``DynamicQuantizeLSTM`` node, each Dense a ``DynamicQuantizeMatMul``, with
the layers' int8 weights and per-column scales as they are (zero points 0).
ONNX Runtime quantizes the activations its own way (per tensor, not per
row), so its outputs are close to ``predict``'s, not equal.
"""
import numpy as np

from ._model_files import _write_atomically
from ._version import __version__
from .layers import LSTM, Bidirectional, Dense, Dropout, Embedding, LayerNormalization, Masking
from .layers.base import layer_label

__all__ = ["OPSET", "IR_VERSION", "lstm_weights", "export"]

# LayerNormalization came with opset 17; IR version 8 is the one of opset 17,
# which every ONNX Runtime since 1.12 reads.
OPSET = 17
IR_VERSION = 8

_LSTM_ACTIVATIONS = {"sigmoid": "Sigmoid", "tanh": "Tanh", "hard_sigmoid": "HardSigmoid"}
# Keras 3's hard_sigmoid, clip(x / 6 + 1/2, 0, 1), is ONNX's HardSigmoid with
# alpha 1/6 and beta 1/2 (ONNX's defaults, 0.2 and 0.5, are Keras 2's).
_HARD_SIGMOID_ALPHA_BETA = (1 / 6, 0.5)
_DENSE_ACTIVATIONS = {"relu": "Relu", "sigmoid": "Sigmoid", "tanh": "Tanh"}
# ONNX Runtime's quantized operators.
_MICROSOFT = "com.microsoft"


def lstm_weights(kernel, recurrent_kernel, bias):
    """fastlstm's weights of one direction as the inputs ``W``, ``R``, ``B``
    of ONNX's LSTM.

    ONNX orders the gates i, o, f, c (fastlstm: i, f, c, o) and keeps each
    weight as ``(num_directions, 4 * units, in_features)``; ``B`` holds the
    input biases then the recurrent ones (zero here).

    Parameters
    ----------
    kernel : ndarray, shape (input_dim, 4 * units)
    recurrent_kernel : ndarray, shape (units, 4 * units)
    bias : ndarray, shape (4 * units,), or None
        None (a layer without a bias) gives zeros.

    Returns
    -------
    W : ndarray, shape (1, 4 * units, input_dim)
    R : ndarray, shape (1, 4 * units, units)
    B : ndarray, shape (1, 8 * units)
    """
    units = recurrent_kernel.shape[0]
    # fastlstm's gate blocks i, f, c, o are 0, 1, 2, 3; ONNX wants i, o, f, c.
    order = np.concatenate([np.arange(g * units, (g + 1) * units) for g in (0, 3, 1, 2)])
    W = np.ascontiguousarray(kernel.T[order][None])
    R = np.ascontiguousarray(recurrent_kernel.T[order][None])
    input_bias = np.zeros(4 * units, kernel.dtype) if bias is None else bias[order]
    B = np.concatenate([input_bias, np.zeros_like(input_bias)])[None]
    return W, R, B


def _quantized_lstm_weights(layer):
    """A quantized layer's weights of one direction as the inputs of ONNX
    Runtime's ``DynamicQuantizeLSTM``: ``W (1, input_dim, 4 * units)`` and
    ``R (1, units, 4 * units)`` int8, ``B (1, 8 * units)``, and the scales of
    W's and R's columns ``(1, 4 * units)``, gates in ONNX's order i, o, f, c."""
    params = layer.params
    units = layer.units
    order = np.concatenate([np.arange(g * units, (g + 1) * units) for g in (0, 3, 1, 2)])
    bias = params.get("bias")
    input_bias = np.zeros(4 * units, np.float32) if bias is None else bias[order]
    return (np.ascontiguousarray(params["kernel"][:, order][None]),
            np.ascontiguousarray(params["recurrent_kernel"][:, order][None]),
            np.concatenate([input_bias, np.zeros_like(input_bias)])[None],
            params["kernel_scale"][order][None], params["recurrent_kernel_scale"][order][None])


def _check_exportable(layers):
    """Raise, naming the layer, if one of ``layers`` cannot be exported."""
    names = ", ".join(cls.__name__ for cls in _EXPORTERS)
    for index, layer in enumerate(layers):
        label = f"layer {layer_label(layer, index)}"
        # The exact classes: a subclass may compute something else.
        if type(layer) not in _EXPORTERS:
            raise TypeError(f"{label} cannot be exported to ONNX: export writes fastlstm's "
                            f"own {names} layers")
        if layer.dtype != np.float32:
            raise ValueError(f"{label} computes in {layer.dtype}, and ONNX Runtime's LSTM runs "
                             f"float32 only: export a float32 model (the same layers with "
                             f"dtype='float32', the default, given the weights with "
                             f"set_weights(model.get_weights()))")
        lstm = layer.forward_layer if isinstance(layer, Bidirectional) else layer
        if getattr(lstm, "proj_units", None) is not None:
            raise ValueError(f"{label} is a projected LSTM (proj_units={lstm.proj_units}), "
                             f"and ONNX's LSTM operator has no projection of the hidden "
                             f"state: a projected LSTM cannot be exported to ONNX")
        if getattr(layer, "stateful", False):
            raise ValueError(f"{label} is stateful: its states outlive a call, which an "
                             f"exported graph cannot carry; export the same layers with "
                             f"stateful=False")


class _Graph:
    """The nodes and weights of the graph being written, with unique names."""

    def __init__(self, onnx):
        self._helper = onnx.helper
        self._from_array = onnx.numpy_helper.from_array
        self.types = onnx.TensorProto
        self.nodes = []
        self.initializers = []
        self._small_constants = {}
        self._count = 0
        # The layer being written, which names its nodes and weights.
        self.scope = None

    def _name(self, hint):
        self._count += 1
        return f"{self.scope}/{hint}_{self._count}"

    def constant(self, value, hint):
        """The name of a weight of the graph holding ``value`` (one for each
        value of a few numbers: the axes and shapes the nodes share)."""
        value = np.asarray(value)
        key = (value.dtype.str, value.shape, value.tobytes()) if value.size <= 8 else None
        if key in self._small_constants:
            return self._small_constants[key]
        name = self._name(hint)
        self.initializers.append(self._from_array(value, name))
        if key is not None:
            self._small_constants[key] = name
        return name

    def op(self, op_type, inputs, outputs=1, **attributes):
        """Add an ``op_type`` node and return the name of its output.

        ``outputs`` is how many outputs the node has (a list of their names
        when several), or one bool for each, False for an optional output
        left out (its name is then "").
        """
        count = outputs if isinstance(outputs, int) else len(outputs)
        wanted = [True] * count if isinstance(outputs, int) else outputs
        names = [self._name(op_type) if keep else "" for keep in wanted]
        self.nodes.append(self._helper.make_node(
            op_type, inputs, names, name=next(name for name in names if name), **attributes))
        return names[0] if count == 1 else names


# Layer by layer: each takes the graph, the layer and the names of its input
# and of its mask (bool (batch, timesteps), or None), and returns the names of
# its output and of the mask it passes on, as Sequential passes masks.

def _embedding(graph, layer, x, mask):
    y = graph.op("Gather", [graph.constant(layer.params["embeddings"], "embeddings"), x])
    if not layer.mask_zero:
        return y, None
    zero = graph.constant(np.array(0, np.int64), "padding")
    return y, graph.op("Not", [graph.op("Equal", [x, zero])])


def _masking(graph, layer, x, mask):
    value = graph.constant(np.array(layer.mask_value, np.float32), "mask_value")
    differs = graph.op("Cast", [graph.op("Not", [graph.op("Equal", [x, value])])],
                       to=graph.types.FLOAT)
    kept = graph.op("Cast", [graph.op("ReduceMax", [differs], axes=[-1], keepdims=0)],
                    to=graph.types.BOOL)
    last_axis = graph.constant(np.array([-1], np.int64), "features_axis")
    zero = graph.constant(np.array(0, np.float32), "zero")
    return graph.op("Where", [graph.op("Unsqueeze", [kept, last_axis]), x, zero]), kept


def _dropout(graph, layer, x, mask):
    # Inference: the identity.
    return x, mask


def _dense(graph, layer, x, mask):
    if layer.quantization_mode:
        # y = x @ (kernel * kernel_scale) + bias, x quantized by ONNX Runtime.
        params = layer.params
        inputs = [x, graph.constant(params["kernel"], "kernel"),
                  graph.constant(params["kernel_scale"], "kernel_scale"),
                  graph.constant(np.zeros(layer.units, np.int8), "kernel_zero_point")]
        if layer.use_bias:
            inputs.append(graph.constant(params["bias"], "bias"))
        y = graph.op("DynamicQuantizeMatMul", inputs, domain=_MICROSOFT)
    else:
        y = graph.op("MatMul", [x, graph.constant(layer.params["kernel"], "kernel")])
        if layer.use_bias:
            y = graph.op("Add", [y, graph.constant(layer.params["bias"], "bias")])
    if layer.activation == "softmax":
        y = graph.op("Softmax", [y], axis=-1)
    elif layer.activation in _DENSE_ACTIVATIONS:
        y = graph.op(_DENSE_ACTIVATIONS[layer.activation], [y])
    return y, mask


def _layer_normalization(graph, layer, x, mask):
    params = layer.params
    gamma = params.get("gamma", np.ones(layer.input_dim, np.float32))
    inputs = [x, graph.constant(gamma, "gamma")]
    if layer.center:
        inputs.append(graph.constant(params["beta"], "beta"))
    return graph.op("LayerNormalization", inputs, axis=-1, epsilon=layer.epsilon), mask


class _KeptSteps:
    """What a masked LSTM needs from its mask ``(batch, timesteps)``: the
    input's steps in the order kept first, ``sequence_lens``, and where each
    step's output lies in the node's ``Y`` (see the module's docstring).

    Both reorderings are one ``Gather`` of whole rows (features or units)
    from the tensor seen as a matrix, at indices computed on the mask's
    small integer tensors.
    """

    def __init__(self, graph, mask):
        self.graph = graph
        int64 = graph.types.INT64
        keep = graph.op("Cast", [mask], to=int64)
        time_axis = graph.constant(np.array([1], np.int64), "time_axis")
        self.kept_through = graph.op("CumSum", [keep, graph.constant(np.array(1, np.int64),
                                                                     "time")])
        self.kept_before = graph.op("Sub", [self.kept_through, keep])
        self.count = graph.op("ReduceSum", [keep, time_axis], keepdims=1)   # (batch, 1)
        self.lengths = graph.op("Cast", [graph.op("Squeeze", [self.count, time_axis])],
                                to=graph.types.INT32)
        shape = graph.op("Shape", [mask])
        ends = graph.constant(np.array([2], np.int64), "time_axis_end")
        self.timesteps = graph.op("Slice", [shape, time_axis, ends])      # (1,)
        self.batch = graph.op("Gather", [shape, graph.constant(np.array(0, np.int64),
                                                               "batch_axis")])
        self.sequence = graph.op("Unsqueeze", [
            graph.op("Range", [graph.constant(np.array(0, np.int64), "batch_axis"),
                               self.batch, graph.constant(np.array(1, np.int64), "time")]),
            time_axis])                                                   # (batch, 1)
        _, self.order = graph.op("TopK", [graph.op("Cast", [mask], to=graph.types.FLOAT),
                                          self.timesteps], outputs=2, axis=1, largest=1,
                                 sorted=1)

    def kept_first(self, x, features):
        """``x (batch, timesteps, features)`` as the node's input
        ``(timesteps, batch, features)``, each sequence's kept steps first."""
        graph = self.graph
        # Step order[b, t] of sequence b is row b * timesteps + order[b, t] of x's rows.
        rows = graph.op("Add", [graph.op("Mul", [self.sequence, self.timesteps]), self.order])
        rows = graph.op("Transpose", [rows], perm=[1, 0])
        flat = graph.op("Reshape", [x, graph.constant(np.array([-1, features], np.int64),
                                                      "rows_of_features")])
        return graph.op("Gather", [flat, rows])

    def in_place(self, Y, directions, units):
        """``Y (timesteps, D, batch, units)`` of the node on the kept steps
        as the layer's outputs ``(batch, timesteps, D, units)``, each step's
        from the ``directions`` ("forward", "reverse") of the node."""
        graph = self.graph
        after_end = graph.constant(np.array([0, 0, 0, 0, 1, 0, 0, 0], np.int64), "zero_row")
        flat = graph.op("Reshape", [graph.op("Pad", [Y, after_end]),
                                    graph.constant(np.array([-1, units], np.int64),
                                                   "rows_of_units")])
        last_axis = graph.constant(np.array([-1], np.int64), "last_axis")
        steps = graph.op("Concat", [graph.op("Unsqueeze", [self.rows(d), last_axis])
                                    for d in directions], axis=-1)       # (batch, timesteps, D)
        # Step s of direction d of sequence b is row (s * D + d) * batch + b of Y's rows.
        count = len(directions)
        step_rows = graph.op("Add", [graph.op("Mul", [steps, graph.constant(
            np.array(count, np.int64), "directions")]), graph.constant(
                np.arange(count, dtype=np.int64), "direction_index")])
        sequence = graph.op("Unsqueeze", [self.sequence, last_axis])   # (batch, 1, 1)
        rows = graph.op("Add", [graph.op("Mul", [step_rows, self.batch]), sequence])
        return graph.op("Gather", [flat, rows])

    def rows(self, direction):
        """The step of ``Y`` each step's output is, ``timesteps`` (the zeros
        after ``Y``) for an output of zeros; ``direction`` "forward" or "reverse"."""
        graph = self.graph
        if direction == "forward":
            one = graph.constant(np.array(1, np.int64), "time")
            any_kept = graph.op("Greater", [self.kept_through,
                                            graph.constant(np.array(0, np.int64), "none")])
            return graph.op("Where", [any_kept, graph.op("Sub", [self.kept_through, one]),
                                      self.timesteps])
        any_after = graph.op("Less", [self.kept_before, self.count])
        return graph.op("Where", [any_after, self.kept_before, self.timesteps])


def _recurrent(graph, layer, x, mask):
    """An LSTM or a Bidirectional as one ONNX LSTM node and what lines its
    outputs up with the layer's."""
    bidirectional = isinstance(layer, Bidirectional)
    directions = [layer.forward_layer, layer.backward_layer] if bidirectional else [layer]
    if bidirectional:
        direction = "bidirectional"
    else:
        direction = "reverse" if layer.go_backwards else "forward"
    first = directions[0]
    quantized = bool(first.quantization_mode)
    if quantized:
        W, R, B, W_scale, R_scale = (np.concatenate(parts) for parts in zip(*(
            _quantized_lstm_weights(d) for d in directions)))
    else:
        W, R, B = (np.concatenate(parts) for parts in zip(*(
            lstm_weights(*d.kernel_weights) for d in directions)))
    names = [_LSTM_ACTIVATIONS[name] for name in (first.recurrent_activation, first.activation,
                                                  first.activation)] * len(directions)
    attributes = dict(hidden_size=first.units, direction=direction, activations=names)
    hard = names.count("HardSigmoid")
    if hard:
        # One alpha and one beta for each activation that takes them, in order.
        attributes.update(activation_alpha=[_HARD_SIGMOID_ALPHA_BETA[0]] * hard,
                          activation_beta=[_HARD_SIGMOID_ALPHA_BETA[1]] * hard)

    if mask is None:
        steps = None
        sequence = graph.op("Transpose", [x], perm=[1, 0, 2])
    else:
        steps = _KeptSteps(graph, mask)
        sequence = steps.kept_first(x, first.input_dim)
    inputs = [sequence, graph.constant(W, "W"), graph.constant(R, "R"), graph.constant(B, "B")]
    if steps is not None:
        inputs.append(steps.lengths)
    op_type = "LSTM"
    if quantized:
        # DynamicQuantizeLSTM: the LSTM's inputs (no initial states nor
        # peepholes), then the weights' scales and zero points.
        zero_point = np.zeros(W_scale.shape, np.int8)
        inputs += [""] * (8 - len(inputs)) + [
            graph.constant(W_scale, "W_scale"), graph.constant(zero_point, "W_zero_point"),
            graph.constant(R_scale, "R_scale"), graph.constant(zero_point, "R_zero_point")]
        op_type = "DynamicQuantizeLSTM"
        attributes["domain"] = _MICROSOFT
    zero = np.array(0, np.float32)
    if layer.return_sequences:
        Y = graph.op(op_type, inputs, outputs=[True], **attributes)
        if steps is None:
            y = graph.op("Transpose", [Y], perm=[2, 0, 1, 3])    # (batch, timesteps, D, units)
        else:
            y = steps.in_place(Y, ["forward", "reverse"] if bidirectional else [direction],
                               first.units)
            if bidirectional:
                # As Keras: a Bidirectional outputs zeros at masked steps.
                axes = graph.constant(np.array([2, 3], np.int64), "direction_unit_axes")
                y = graph.op("Where", [graph.op("Unsqueeze", [mask, axes]), y,
                                       graph.constant(zero, "zero")])
        if direction == "reverse":
            # go_backwards: the outputs in processing order, and their mask too.
            y = _reversed_in_time(graph, y)
            mask = None if mask is None else _reversed_in_time(graph, mask)
        return _merged(graph, layer, y, axis=2), mask
    Y_h = graph.op(op_type, inputs, outputs=[False, True], **attributes)[1]  # (D, batch, units)
    if steps is not None:
        # No kept step: the output is zeros, whatever a runtime leaves in Y_h.
        any_kept = graph.op("Greater", [steps.count, graph.constant(np.array(0, np.int64),
                                                                   "none")])
        first_axis = graph.constant(np.array([0], np.int64), "direction_axis")
        Y_h = graph.op("Where", [graph.op("Unsqueeze", [any_kept, first_axis]), Y_h,
                                 graph.constant(zero, "zero")])
    return _merged(graph, layer, graph.op("Transpose", [Y_h], perm=[1, 0, 2]), axis=1), None


def _reversed_in_time(graph, y):
    constant = graph.constant
    return graph.op("Slice", [y, constant(np.array([-1], np.int64), "last"),
                              constant(np.array([np.iinfo(np.int64).min], np.int64), "before_first"),
                              constant(np.array([1], np.int64), "time_axis"),
                              constant(np.array([-1], np.int64), "backwards")])


def _merged(graph, layer, y, axis):
    """The directions at ``axis`` of ``y`` merged as ``layer.merge_mode`` (a
    single direction: that axis dropped)."""
    merge_mode = getattr(layer, "merge_mode", "concat")
    if merge_mode != "concat":
        forward, backward = graph.op("Split", [y], outputs=2, axis=axis)
        if merge_mode == "sum":
            y = graph.op("Add", [forward, backward])
        elif merge_mode == "mul":
            y = graph.op("Mul", [forward, backward])
        else:
            half = graph.constant(np.array(0.5, np.float32), "half")
            y = graph.op("Mul", [graph.op("Add", [forward, backward]), half])
    # Reshape's 0 keeps a dimension: the directions' units side by side.
    shape = graph.constant(np.array([0] * axis + [-1], np.int64), "merged_shape")
    return graph.op("Reshape", [y, shape])


_EXPORTERS = {Embedding: _embedding, Masking: _masking, Dropout: _dropout, Dense: _dense,
              LayerNormalization: _layer_normalization, LSTM: _recurrent,
              Bidirectional: _recurrent}


def _symbolic_shape(layers, input_shape):
    """The input's and the output's shapes, batch and time axes named."""
    features = getattr(layers[0], "input_is_features", True)
    dims = ["batch"] + [("timesteps" if axis == 1 else f"axis_{axis}")
                        for axis in range(1, len(input_shape))]
    if features:
        dims[-1] = input_shape[-1]
    shape = tuple(dims)
    for layer in layers:
        shape = tuple(layer.compute_output_shape(shape))
    return dims, list(shape)


def _graph(onnx, layers, input_shape, name):
    """The ONNX model of ``layers`` (a built Sequential's) for inputs of ``input_shape``."""
    graph = _Graph(onnx)
    x = "input"
    mask = None
    for layer in layers:
        graph.scope = layer.name
        x, mask = _EXPORTERS[type(layer)](graph, layer, x, mask)
    # The last layer's output under the name the graph gives it.
    graph.nodes.append(onnx.helper.make_node("Identity", [x], ["output"], name="output"))
    input_dims, output_dims = _symbolic_shape(layers, input_shape)
    element = onnx.TensorProto.INT64 if type(layers[0]) is Embedding \
        else onnx.TensorProto.FLOAT
    model = onnx.helper.make_model(
        onnx.helper.make_graph(
            graph.nodes, name,
            initializer=graph.initializers,
            inputs=[onnx.helper.make_tensor_value_info("input", element, input_dims)],
            outputs=[onnx.helper.make_tensor_value_info("output", onnx.TensorProto.FLOAT,
                                                        output_dims)]),
        opset_imports=[onnx.helper.make_opsetid("", OPSET)] + (
            [onnx.helper.make_opsetid(_MICROSOFT, 1)]
            if any(node.domain == _MICROSOFT for node in graph.nodes) else []),
        producer_name="fastlstm", producer_version=__version__)
    model.ir_version = IR_VERSION
    return model


def export(layers, input_shape, name, path):
    """Write ``layers`` (a built Sequential's, for inputs of ``input_shape``)
    to ``path`` as an ONNX model; nothing is written unless all of it can be.

    See :meth:`fastlstm.Sequential.export`.
    """
    _check_exportable(layers)
    try:
        import onnx
    except ImportError:
        raise ImportError('exporting to ONNX needs the onnx package: pip install '
                          '"fastlstm[onnx]"') from None
    model = _graph(onnx, layers, input_shape, name)
    onnx.checker.check_model(model, full_check=True)
    data = model.SerializeToString()
    _write_atomically(path, True, lambda stream: stream.write(data))
