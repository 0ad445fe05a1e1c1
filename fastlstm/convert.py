"""LSTM weights to and from PyTorch and Keras.

fastlstm stores an LSTM's weights as Keras does, so one layer's weights are
the list ``layer.get_weights()`` returns:

* :class:`~fastlstm.layers.LSTM`: ``[kernel, recurrent_kernel, bias]``, with
  ``kernel (input_dim, 4 * units)``, ``recurrent_kernel (units, 4 * units)``,
  ``bias (4 * units,)`` and gates in the order i, f, c, o; without a bias,
  ``[kernel, recurrent_kernel]``;
* :class:`~fastlstm.layers.Bidirectional`: the forward direction's list, then
  the backward direction's (six arrays, or four without a bias).

A stack of layers is a list of such lists, one per layer. That is what
:func:`from_torch_state_dict` returns and :func:`to_torch_state_dict` takes.

PyTorch's ``nn.LSTM`` keeps, for layer ``k``, ``weight_ih_lk (4 * units,
input_dim)``, ``weight_hh_lk (4 * units, units)``, ``bias_ih_lk`` and
``bias_hh_lk (4 * units,)``, with the suffix ``_reverse`` for the backward
direction, and the same gate order (i, f, g, o). So ``weight_ih_lk`` is
``kernel.T``, ``weight_hh_lk`` is ``recurrent_kernel.T``, and the Keras bias is
``bias_ih_lk + bias_hh_lk``. A bidirectional ``nn.LSTM`` concatenates the two
directions' outputs, as ``Bidirectional(..., merge_mode="concat")`` with
``return_sequences=True`` does. PyTorch's ``proj_size`` (``weight_hr_lk``) has
no Keras equivalent and is refused.

Examples
--------
A two-layer bidirectional PyTorch LSTM as two fastlstm layers, and back:

>>> import torch, fastlstm as fl
>>> from fastlstm import convert
>>> torch_lstm = torch.nn.LSTM(3, 8, num_layers=2, bidirectional=True, batch_first=True)
>>> per_layer = convert.from_torch_state_dict(torch_lstm.state_dict())
>>> layers = [fl.Bidirectional(fl.LSTM(8, return_sequences=True)) for _ in per_layer]
>>> for layer, weights in zip(layers, per_layer):
...     layer.set_weights(weights)
>>> state_dict = convert.to_torch_state_dict(layers)
>>> torch_lstm.load_state_dict({k: torch.from_numpy(v) for k, v in state_dict.items()})
<All keys matched successfully>
"""
import re

import numpy as np

from ._validation import as_real_array, describe

__all__ = ["from_torch_state_dict", "to_torch_state_dict", "from_keras_weights",
           "to_keras_weights"]

_TORCH_KEY = re.compile(r"(weight_ih|weight_hh|bias_ih|bias_hh)_l(\d+)(_reverse)?")
_PROJECTION_KEY = re.compile(r"weight_hr_l\d+(_reverse)?")
# Length of a Keras weight list -> (directions, has bias).
_LAYOUTS = {2: (1, False), 3: (1, True), 4: (2, False), 6: (2, True)}


def _to_numpy(value, name):
    """A NumPy view or copy of an array or a tensor, never writable back to it."""
    if hasattr(value, "detach") and hasattr(value, "cpu"):
        value = value.detach().cpu().numpy()
    return as_real_array(value, name)


def _result_dtype(arrays, dtype):
    if dtype is not None:
        try:
            chosen = np.dtype(dtype)
        except TypeError:
            chosen = None
        if chosen is None or chosen not in (np.dtype(np.float32), np.dtype(np.float64)):
            raise ValueError(f"dtype must be 'float32', 'float64' or None, got {dtype!r}")
        return chosen
    return np.result_type(np.float32, *[a.dtype for a in arrays])


def _split_directions(weights, where):
    """A Keras weight list as ``[(kernel, recurrent_kernel, bias or None), ...]``,
    one tuple per direction, with every shape checked."""
    if hasattr(weights, "get_weights"):
        layer = getattr(weights, "forward_layer", weights)
        if getattr(layer, "proj_units", None) is not None:
            raise ValueError(f"{where} is a projected LSTM (proj_units={layer.proj_units}): "
                             f"Keras' LSTM has no projection, and these conversions write "
                             f"the unprojected layout; use the layer's get_weights() "
                             f"(projection_kernel last) directly")
        weights = weights.get_weights()
    if not isinstance(weights, (list, tuple)) or len(weights) not in _LAYOUTS:
        got = (f"a list of {len(weights)}" if isinstance(weights, (list, tuple))
               else describe(weights))
        raise ValueError(f"{where} must be a Keras weight list: [kernel, recurrent_kernel, "
                         f"bias] (LSTM; 2 arrays without bias) or 6 arrays (Bidirectional; 4 "
                         f"without bias), got {got}")
    directions, has_bias = _LAYOUTS[len(weights)]
    per_direction = len(weights) // directions
    labels = ["kernel", "recurrent_kernel", "bias"][:per_direction]
    result = []
    for d in range(directions):
        prefix = ("forward ", "backward ")[d] if directions == 2 else ""
        names = [f"{where}[{d * per_direction + k}] ({prefix}{label})"
                 for k, label in enumerate(labels)]
        arrays = [_to_numpy(w, name) for w, name in
                  zip(weights[d * per_direction:(d + 1) * per_direction], names)]
        kernel = arrays[0]
        if kernel.ndim != 2 or kernel.shape[0] < 1 or kernel.shape[1] < 4 \
                or kernel.shape[1] % 4:
            raise ValueError(f"{names[0]} must have shape (input_dim, 4 * units), got "
                             f"{kernel.shape}")
        units = kernel.shape[1] // 4
        expected = [((units, 4 * units), "(units, 4 * units)"), ((4 * units,), "(4 * units,)")]
        for array, name, (shape, meaning) in zip(arrays[1:], names[1:], expected):
            if array.shape != shape:
                raise ValueError(f"{name} must have shape {meaning} = {shape} (units={units} "
                                 f"from the kernel), got {array.shape}")
        if result and kernel.shape != result[0][0].shape:
            raise ValueError(f"{names[0]} has shape {kernel.shape}, but the forward kernel "
                             f"has shape {result[0][0].shape}; both directions must agree")
        result.append((kernel, arrays[1], arrays[2] if has_bias else None))
    return result


def from_keras_weights(weights, dtype=None):
    """Check a Keras ``get_weights()`` list of one LSTM or Bidirectional layer.

    The layout is fastlstm's own, so this validates and copies.

    Parameters
    ----------
    weights : list of array_like
        ``[kernel, recurrent_kernel, bias]`` of a ``keras.layers.LSTM``
        (``[kernel, recurrent_kernel]`` with ``use_bias=False``), or the six
        (four) arrays of a ``keras.layers.Bidirectional`` around one.
    dtype : {"float32", "float64"} or None
        The result's dtype; None keeps float32/float64 (other types become
        the smallest float of at least 32 bits that holds them).

    Returns
    -------
    list of ndarray
        New C-contiguous arrays, ready for ``set_weights``.

    Examples
    --------
    >>> import numpy as np
    >>> from fastlstm import convert
    >>> weights = [np.zeros((3, 8)), np.zeros((2, 8)), np.zeros(8)]
    >>> [w.shape for w in convert.from_keras_weights(weights)]
    [(3, 8), (2, 8), (8,)]
    """
    directions = _split_directions(weights, "weights")
    arrays = [a for direction in directions for a in direction if a is not None]
    dtype = _result_dtype(arrays, dtype)
    return [np.array(a, dtype=dtype, order="C") for a in arrays]


def to_keras_weights(layer):
    """The Keras ``set_weights()`` list of a fastlstm layer (or a weight list).

    Parameters
    ----------
    layer : fastlstm.LSTM, fastlstm.Bidirectional or list of array_like
        A built layer, or its ``get_weights()`` list.

    Returns
    -------
    list of ndarray
        Copies, in Keras' order and shapes: ``keras_layer.set_weights(result)``.
    """
    directions = _split_directions(layer, "layer")
    arrays = [a for direction in directions for a in direction if a is not None]
    return [np.array(a, order="C") for a in arrays]


def from_torch_state_dict(state_dict, prefix="", dtype=None):
    """Keras weight lists, one per layer, from a PyTorch ``nn.LSTM`` state dict.

    Parameters
    ----------
    state_dict : mapping of str to tensor or array_like
        ``torch_lstm.state_dict()`` (any number of layers, uni- or
        bidirectional, with or without bias), or a larger module's state
        dict together with ``prefix``.
    prefix : str
        Only keys starting with it are read, without it (e.g. ``"encoder."``
        for a submodule's LSTM).
    dtype : {"float32", "float64"} or None
        The result's dtype; None keeps the tensors' float dtype.

    Returns
    -------
    list of list of ndarray
        For each layer, the list its fastlstm layer's ``set_weights`` takes:
        ``[kernel, recurrent_kernel, bias]`` for an LSTM, six arrays (forward
        then backward) for a ``Bidirectional``. ``bias = bias_ih + bias_hh``.

    Raises
    ------
    ValueError
        For ``proj_size != 0`` (``weight_hr_l*`` keys), missing or unexpected
        keys, or shapes that do not form an ``nn.LSTM``.

    Examples
    --------
    >>> import torch, numpy as np, fastlstm as fl
    >>> from fastlstm import convert
    >>> torch_lstm = torch.nn.LSTM(5, 4, batch_first=True, dtype=torch.float64)
    >>> [weights] = convert.from_torch_state_dict(torch_lstm.state_dict())
    >>> layer = fl.LSTM(4, return_sequences=True, dtype="float64")
    >>> layer.set_weights(weights)
    >>> x = np.random.default_rng(0).random((2, 7, 5))
    >>> expected = torch_lstm(torch.from_numpy(x))[0].detach().numpy()
    >>> np.allclose(layer(x), expected)
    True
    """
    if not isinstance(prefix, str):
        raise TypeError(f"prefix must be a str, got {describe(prefix)}")
    if not hasattr(state_dict, "items"):
        raise TypeError(f"state_dict must be a mapping of parameter names to tensors, got "
                        f"{describe(state_dict)}")
    entries = {}
    unexpected = []
    for key, value in state_dict.items():
        if not isinstance(key, str) or not key.startswith(prefix):
            if not prefix:
                unexpected.append(key)
            continue
        name = key[len(prefix):]
        if _PROJECTION_KEY.fullmatch(name):
            raise ValueError(f"state_dict has {key!r}: the PyTorch LSTM was built with "
                             f"proj_size != 0 (a projected hidden state), which Keras' and "
                             f"fastlstm's LSTM do not have; use proj_size=0")
        match = _TORCH_KEY.fullmatch(name)
        if match is None:
            unexpected.append(key)
            continue
        kind, layer, reverse = match.group(1), int(match.group(2)), bool(match.group(3))
        entries[(layer, reverse, kind)] = (key, value)
    if unexpected:
        raise ValueError(f"state_dict has keys that are not nn.LSTM parameters: "
                         f"{unexpected[:5]}{' ...' if len(unexpected) > 5 else ''} (pass "
                         f"prefix= to read an LSTM inside a larger module)")
    if not entries:
        raise ValueError(f"state_dict has no nn.LSTM parameters under prefix {prefix!r} "
                         f"(expected keys like {prefix + 'weight_ih_l0'!r})")

    num_layers = 1 + max(layer for layer, _, _ in entries)
    bidirectional = any(reverse for _, reverse, _ in entries)
    has_bias = any(kind.startswith("bias") for _, _, kind in entries)
    kinds = ("weight_ih", "weight_hh") + (("bias_ih", "bias_hh") if has_bias else ())
    directions = (False, True) if bidirectional else (False,)
    expected = {(layer, reverse, kind) for layer in range(num_layers)
                for reverse in directions for kind in kinds}
    missing = sorted(expected - set(entries))
    if missing:
        names = [f"{prefix}{kind}_l{layer}{'_reverse' if reverse else ''}"
                 for layer, reverse, kind in missing]
        raise ValueError(f"state_dict is missing {names[:5]}{' ...' if len(names) > 5 else ''} "
                         f"for a {num_layers}-layer {'bi' if bidirectional else 'uni'}"
                         f"directional LSTM {'with' if has_bias else 'without'} bias")

    arrays = {index: _to_numpy(value, f"state_dict[{key!r}]")
              for index, (key, value) in entries.items()}
    for layer in range(num_layers):
        for reverse in directions:
            _check_torch_shapes(arrays, entries, layer, reverse, has_bias)
    dtype = _result_dtype(list(arrays.values()), dtype)
    result = []
    for layer in range(num_layers):
        weights = []
        for reverse in directions:
            direction = _keras_from_torch(*(
                arrays[(layer, reverse, kind)].astype(dtype, copy=False) if kind in kinds
                else None for kind in ("weight_ih", "weight_hh", "bias_ih", "bias_hh")))
            weights += [w for w in direction if w is not None]
        layer_directions = _split_directions(weights, f"layer {layer}")
        if result:
            _check_stack(layer_directions, layer, _split_directions(result[0], "layer 0"),
                         f"layer {layer} ({prefix}*_l{layer})")
        # Copies: a transposed view would keep the caller's tensors' memory alive.
        result.append([np.array(w, order="C") for w in weights])
    return result


def _keras_from_torch(weight_ih, weight_hh, bias_ih=None, bias_hh=None):
    """One direction of an ``nn.LSTM`` layer as ``(kernel, recurrent_kernel,
    bias)``: transposed views of the weights and the sum of the two biases
    (None without biases). Arrays or tensors alike; shapes are not checked."""
    bias = None if bias_ih is None else bias_ih + bias_hh
    return weight_ih.T, weight_hh.T, bias


def _torch_gradients_from_keras(kernel, recurrent_kernel, bias=None):
    """Gradients of ``(kernel, recurrent_kernel, bias)`` as those of
    ``(weight_ih, weight_hh, bias_ih, bias_hh)``, the adjoint of
    :func:`_keras_from_torch`: transposed views, and, as ``bias = bias_ih +
    bias_hh``, the bias gradient for each bias (a copy for the second, so
    that the two never share memory)."""
    if bias is None:
        return kernel.T, recurrent_kernel.T, None, None
    return kernel.T, recurrent_kernel.T, bias, bias.copy()


def _check_torch_shapes(arrays, entries, layer, reverse, has_bias):
    def key(kind):
        return entries[(layer, reverse, kind)][0]

    weight_ih = arrays[(layer, reverse, "weight_ih")]
    if weight_ih.ndim != 2 or weight_ih.shape[0] < 4 or weight_ih.shape[0] % 4 \
            or weight_ih.shape[1] < 1:
        raise ValueError(f"state_dict[{key('weight_ih')!r}] must have shape "
                         f"(4 * hidden_size, input_size), got {weight_ih.shape}")
    hidden = weight_ih.shape[0] // 4
    expected = {"weight_hh": (4 * hidden, hidden), "bias_ih": (4 * hidden,),
                "bias_hh": (4 * hidden,)}
    for kind, shape in expected.items():
        if kind.startswith("bias") and not has_bias:
            continue
        array = arrays[(layer, reverse, kind)]
        if array.shape != shape:
            raise ValueError(f"state_dict[{key(kind)!r}] must have shape {shape} "
                             f"(hidden_size={hidden} from {key('weight_ih')!r}), "
                             f"got {array.shape}")


def _check_stack(directions, index, first, where):
    """Refuse a layer that cannot follow the first ones in one ``nn.LSTM``:
    one hidden size, the same directions and bias in every layer, and the
    input of layer k > 0 the output of layer k - 1 (``directions * units`` wide).
    """
    units, first_units = directions[0][1].shape[0], first[0][1].shape[0]
    count, has_bias = len(first), first[0][2] is not None
    if len(directions) != count or (directions[0][2] is not None) != has_bias:
        raise ValueError(f"{where} has {len(directions)} direction(s) and bias="
                         f"{directions[0][2] is not None}, but layer 0 has {count} and "
                         f"bias={has_bias}; every layer of a PyTorch LSTM has the same")
    if units != first_units:
        raise ValueError(f"{where} has units={units}, but layer 0 has units={first_units}; "
                         f"a PyTorch LSTM has one hidden_size")
    input_dim = directions[0][0].shape[0]
    if input_dim != count * units:
        raise ValueError(f"{where} has input_dim={input_dim}, but layer {index - 1} outputs "
                         f"{count} x {units} = {count * units} features")


def to_torch_state_dict(layers, prefix=""):
    """A PyTorch ``nn.LSTM`` state dict (of NumPy arrays) from fastlstm layers.

    Parameters
    ----------
    layers : list of (fastlstm.LSTM, fastlstm.Bidirectional or Keras weight list)
        The stack, first layer first; every layer has the same units, the same
        directions and bias or no bias, and layer k > 0 takes the previous
        layer's (concatenated) output, as one ``nn.LSTM(num_layers=len(layers))``.
    prefix : str
        Prepended to every key.

    Returns
    -------
    dict of str to ndarray
        ``weight_ih_l{k}[_reverse] = kernel.T``, ``weight_hh_l{k}[_reverse] =
        recurrent_kernel.T``, ``bias_ih_l{k}[_reverse] = bias`` and
        ``bias_hh_l{k}[_reverse] = 0``, in ``nn.LSTM``'s key order. Load it
        with ``torch_lstm.load_state_dict({k: torch.from_numpy(v) for k, v
        in state_dict.items()})``.

    Examples
    --------
    >>> import numpy as np, fastlstm as fl
    >>> from fastlstm import convert
    >>> layer = fl.LSTM(4, seed=0)
    >>> layer.build(5)
    >>> {k: v.shape for k, v in convert.to_torch_state_dict([layer]).items()}
    {'weight_ih_l0': (16, 5), 'weight_hh_l0': (16, 4), 'bias_ih_l0': (16,), 'bias_hh_l0': (16,)}
    """
    if not isinstance(prefix, str):
        raise TypeError(f"prefix must be a str, got {describe(prefix)}")
    if not isinstance(layers, (list, tuple)) or not layers:
        raise ValueError(f"layers must be a non-empty list of layers or Keras weight lists, "
                         f"one per layer of the stack, got {describe(layers)}")
    state_dict = {}
    first = None
    for index, layer in enumerate(layers):
        where = f"layers[{index}]"
        directions = _split_directions(layer, where)
        if first is None:
            first = directions
        else:
            _check_stack(directions, index, first, where)
        for reverse, (kernel, recurrent_kernel, bias) in enumerate(directions):
            suffix = f"_l{index}{'_reverse' if reverse else ''}"
            state_dict[f"{prefix}weight_ih{suffix}"] = np.array(kernel.T, order="C")
            state_dict[f"{prefix}weight_hh{suffix}"] = np.array(recurrent_kernel.T, order="C")
            if bias is not None:
                state_dict[f"{prefix}bias_ih{suffix}"] = np.array(bias, order="C")
                state_dict[f"{prefix}bias_hh{suffix}"] = np.zeros_like(bias)
    return state_dict
