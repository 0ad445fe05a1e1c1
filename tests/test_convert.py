"""Tests of fastlstm.convert, and parity of the layers with torch.nn.LSTM through it.

The parity tests load a PyTorch LSTM's weights into fastlstm layers with
``convert.from_torch_state_dict`` and compare outputs, final states and every
gradient in float64; fastlstm's weight gradients are mapped back with
``convert.to_torch_state_dict``. Masks are compared with packed sequences.
"""
import numpy as np
import pytest

from fastlstm import convert
from fastlstm.layers import LSTM, Bidirectional

RTOL, ATOL = 1e-10, 1e-12


def torch_style_state_dict(input_size, hidden, num_layers=1, bidirectional=False, bias=True,
                           seed=0, dtype=np.float64):
    """An nn.LSTM state dict made of NumPy arrays, in nn.LSTM's key order."""
    rng = np.random.default_rng(seed)
    state_dict = {}
    for layer in range(num_layers):
        layer_input = input_size if layer == 0 else hidden * (2 if bidirectional else 1)
        for suffix in ("", "_reverse") if bidirectional else ("",):
            key = f"_l{layer}{suffix}"
            state_dict["weight_ih" + key] = rng.standard_normal((4 * hidden, layer_input))
            state_dict["weight_hh" + key] = rng.standard_normal((4 * hidden, hidden))
            if bias:
                state_dict["bias_ih" + key] = rng.standard_normal(4 * hidden)
                state_dict["bias_hh" + key] = rng.standard_normal(4 * hidden)
    return {k: v.astype(dtype) for k, v in state_dict.items()}


# -- PyTorch state dicts, without torch ---------------------------------------------

def test_from_torch_transposes_and_sums_the_biases():
    state_dict = torch_style_state_dict(3, 2)
    [[kernel, recurrent_kernel, bias]] = convert.from_torch_state_dict(state_dict)
    np.testing.assert_array_equal(kernel, state_dict["weight_ih_l0"].T)
    np.testing.assert_array_equal(recurrent_kernel, state_dict["weight_hh_l0"].T)
    np.testing.assert_array_equal(bias, state_dict["bias_ih_l0"] + state_dict["bias_hh_l0"])
    assert all(w.flags.c_contiguous for w in (kernel, recurrent_kernel, bias))
    assert not any(np.shares_memory(w, v) for w in (kernel, recurrent_kernel)
                   for v in state_dict.values())


def test_from_torch_stacked_bidirectional_gives_one_list_per_layer():
    state_dict = torch_style_state_dict(3, 2, num_layers=3, bidirectional=True)
    per_layer = convert.from_torch_state_dict(state_dict)
    assert len(per_layer) == 3
    assert [w.shape for w in per_layer[0]] == [(3, 8), (2, 8), (8,)] * 2
    assert [w.shape for w in per_layer[2]] == [(4, 8), (2, 8), (8,)] * 2
    np.testing.assert_array_equal(per_layer[1][3], state_dict["weight_ih_l1_reverse"].T)


def test_from_torch_without_bias():
    per_layer = convert.from_torch_state_dict(torch_style_state_dict(3, 2, bias=False))
    assert [w.shape for w in per_layer[0]] == [(3, 8), (2, 8)]
    layer = LSTM(2, use_bias=False)
    layer.set_weights(per_layer[0])


def test_round_trip_keeps_weights_and_the_bias_sum():
    state_dict = torch_style_state_dict(3, 2, num_layers=2, bidirectional=True)
    back = convert.to_torch_state_dict(convert.from_torch_state_dict(state_dict))
    assert list(back) == list(state_dict)
    for key, value in back.items():
        if key.startswith("weight"):
            np.testing.assert_array_equal(value, state_dict[key])
        elif key.startswith("bias_ih"):
            suffix = key[len("bias_ih"):]
            np.testing.assert_allclose(value, state_dict["bias_ih" + suffix]
                                       + state_dict["bias_hh" + suffix], rtol=1e-15)
        else:
            np.testing.assert_array_equal(value, 0.0)


def test_dtype_is_kept_or_cast():
    state_dict = torch_style_state_dict(3, 2, dtype=np.float32)
    assert all(w.dtype == np.float32 for w in convert.from_torch_state_dict(state_dict)[0])
    cast = convert.from_torch_state_dict(state_dict, dtype="float64")
    assert all(w.dtype == np.float64 for w in cast[0])
    for bad in ("int32", "nonsense"):
        with pytest.raises(ValueError, match="dtype must be 'float32'"):
            convert.from_torch_state_dict(state_dict, dtype=bad)


def test_prefix_reads_an_lstm_inside_a_larger_state_dict():
    inner = torch_style_state_dict(3, 2)
    state_dict = {f"encoder.rnn.{k}": v for k, v in inner.items()}
    state_dict["decoder.weight"] = np.zeros((2, 2))
    [weights] = convert.from_torch_state_dict(state_dict, prefix="encoder.rnn.")
    np.testing.assert_array_equal(weights[0], inner["weight_ih_l0"].T)
    with pytest.raises(ValueError, match="not nn.LSTM parameters.*prefix"):
        convert.from_torch_state_dict(state_dict)
    with pytest.raises(ValueError, match="no nn.LSTM parameters under prefix 'dec.'"):
        convert.from_torch_state_dict(state_dict, prefix="dec.")
    prefixed = convert.to_torch_state_dict([weights], prefix="encoder.rnn.")
    assert list(prefixed)[0] == "encoder.rnn.weight_ih_l0"


def test_proj_size_is_refused():
    state_dict = torch_style_state_dict(3, 2)
    state_dict["weight_hr_l0"] = np.zeros((1, 2))
    with pytest.raises(ValueError, match="proj_size"):
        convert.from_torch_state_dict(state_dict)


TORCH_DICT_ERRORS = [
    (lambda d: d.pop("bias_hh_l1"), ValueError, r"missing \['bias_hh_l1'\]"),
    (lambda d: d.pop("weight_ih_l0_reverse"), ValueError, "missing.*weight_ih_l0_reverse"),
    (lambda d: d.update(weight_hh_l0=np.zeros((8, 3))), ValueError,
     r"state_dict\['weight_hh_l0'\] must have shape \(8, 2\)"),
    (lambda d: d.update(weight_ih_l0=np.zeros((7, 3))), ValueError,
     r"state_dict\['weight_ih_l0'\] must have shape \(4 \* hidden_size"),
    (lambda d: d.update(bias_ih_l1_reverse=np.zeros(4)), ValueError, "bias_ih_l1_reverse"),
    (lambda d: d.update(weight_ih_l1=np.zeros((8, 3)), weight_ih_l1_reverse=np.zeros((8, 3))),
     ValueError, "input_dim=3.*4 features"),
    (lambda d: d.update(weight_ih_l0=np.zeros((8, 3), complex)), TypeError, "weight_ih_l0"),
    (lambda d: d.update(extra=np.zeros(2)), ValueError, r"not nn.LSTM parameters: \['extra'\]"),
]


@pytest.mark.parametrize("corrupt, error, match", TORCH_DICT_ERRORS)
def test_bad_torch_state_dicts(corrupt, error, match):
    state_dict = torch_style_state_dict(3, 2, num_layers=2, bidirectional=True)
    corrupt(state_dict)
    with pytest.raises(error, match=match):
        convert.from_torch_state_dict(state_dict)


def test_bad_torch_arguments():
    with pytest.raises(TypeError, match="state_dict must be a mapping"):
        convert.from_torch_state_dict([np.zeros(3)])
    with pytest.raises(TypeError, match="prefix"):
        convert.from_torch_state_dict({}, prefix=1)
    with pytest.raises(ValueError, match="no nn.LSTM parameters"):
        convert.from_torch_state_dict({})


def test_to_torch_from_layers():
    first = Bidirectional(LSTM(2, return_sequences=True, seed=0))
    second = Bidirectional(LSTM(2, seed=1))
    first.build(3)
    second.build(4)
    state_dict = convert.to_torch_state_dict([first, second])
    assert list(state_dict)[:4] == ["weight_ih_l0", "weight_hh_l0", "bias_ih_l0", "bias_hh_l0"]
    assert len(state_dict) == 16
    np.testing.assert_array_equal(state_dict["weight_hh_l1_reverse"],
                                  second.backward_layer.params["recurrent_kernel"].T)
    np.testing.assert_array_equal(state_dict["bias_ih_l0"], first.forward_layer.params["bias"])


TO_TORCH_ERRORS = [
    ([], ValueError, "non-empty list"),
    ([[np.ones((3, 8))] * 5], ValueError, r"layers\[0\] must be a Keras weight list"),
    ([[np.ones((3, 8)), np.ones((2, 8)), np.ones(7)]], ValueError,
     r"layers\[0\]\[2\] \(bias\) must have shape"),
    ([[np.ones((3, 8)), np.ones((2, 8))], [np.ones((3, 8)), np.ones((2, 8))]], ValueError,
     r"layers\[1\] has input_dim=3.*2 features"),
    ([[np.ones((3, 8)), np.ones((2, 8))], [np.ones((2, 12)), np.ones((3, 12))]], ValueError,
     "units=3.*units=2"),
    ([[np.ones((3, 8)), np.ones((2, 8))], [np.ones((2, 8)), np.ones((2, 8)), np.ones(8)]],
     ValueError, "bias=True"),
    ([[np.ones((3, 8)), np.ones((2, 8)), np.ones((3, 12)), np.ones((3, 12))]], ValueError,
     r"layers\[0\]\[2\] \(backward kernel\).*both directions"),
]


@pytest.mark.parametrize("layers, error, match", TO_TORCH_ERRORS)
def test_bad_to_torch_arguments(layers, error, match):
    with pytest.raises(error, match=match):
        convert.to_torch_state_dict(layers)


# -- Keras weight lists -----------------------------------------------------------------

def test_keras_weights_are_the_identity_layout():
    layer = LSTM(2, seed=0)
    layer.build(3)
    weights = convert.to_keras_weights(layer)
    for got, expected in zip(weights, layer.get_weights()):
        np.testing.assert_array_equal(got, expected)
    checked = convert.from_keras_weights([w.tolist() for w in weights])
    assert [w.dtype for w in checked] == [np.float64] * 3
    clone = LSTM(2)
    clone.set_weights(checked)
    np.testing.assert_allclose(clone.get_weights()[1], layer.get_weights()[1])
    bi = Bidirectional(LSTM(2, seed=0))
    bi.build(3)
    assert len(convert.from_keras_weights(bi.get_weights(), dtype="float32")) == 6
    assert len(convert.to_keras_weights(bi)) == 6


KERAS_ERRORS = [
    ([np.ones((3, 8))], ValueError, "Keras weight list"),
    ("weights", ValueError, "Keras weight list"),
    ([np.ones((3, 8)), np.ones((3, 8)), np.ones(8)], ValueError,
     r"weights\[1\] \(recurrent_kernel\) must have shape \(units, 4 \* units\) = \(2, 8\)"),
    ([np.ones((3, 6)), np.ones((3, 8)), np.ones(8)], ValueError,
     r"weights\[0\] \(kernel\) must have shape \(input_dim, 4 \* units\)"),
    ([np.ones((3, 8)), np.ones((2, 8)), np.ones(8, complex)], TypeError, r"weights\[2\]"),
    ([np.ones((3, 8)), np.ones((2, 8)), np.ones(8), np.ones((4, 8)), np.ones((2, 8)),
      np.ones(8)], ValueError, r"weights\[3\] \(backward kernel\)"),
]


@pytest.mark.parametrize("weights, error, match", KERAS_ERRORS)
def test_bad_keras_weights(weights, error, match):
    with pytest.raises(error, match=match):
        convert.from_keras_weights(weights)


def test_unbuilt_layer_has_no_keras_weights():
    with pytest.raises(ValueError, match="a list of 0"):
        convert.to_keras_weights(LSTM(2))


# -- parity with torch.nn.LSTM -----------------------------------------------------------

@pytest.fixture(scope="module")
def torch():
    return pytest.importorskip("torch", reason="torch is needed for the PyTorch parity tests")


def build_pair(torch, input_size, hidden, num_layers=1, bidirectional=False, bias=True):
    """A float64 torch LSTM with random weights (both biases nonzero) and the
    fastlstm stack loaded from its state dict."""
    torch.manual_seed(0)
    module = torch.nn.LSTM(input_size, hidden, num_layers, bias=bias, batch_first=True,
                           bidirectional=bidirectional, dtype=torch.float64)
    layers = []
    for weights in convert.from_torch_state_dict(module.state_dict()):
        lstm = LSTM(hidden, return_sequences=True, return_state=True, use_bias=bias,
                    dtype="float64")
        layer = Bidirectional(lstm) if bidirectional else lstm
        layer.set_weights(weights)
        layers.append(layer)
    return module, layers


def run_torch(torch, module, x, h0, c0, upstream, lengths=None):
    x_t = torch.tensor(x, requires_grad=True)
    h0_t = torch.tensor(h0, requires_grad=True)
    c0_t = torch.tensor(c0, requires_grad=True)
    if lengths is None:
        outputs, (h_n, c_n) = module(x_t, (h0_t, c0_t))
    else:
        packed = torch.nn.utils.rnn.pack_padded_sequence(x_t, torch.as_tensor(lengths),
                                                         batch_first=True, enforce_sorted=False)
        packed_outputs, (h_n, c_n) = module(packed, (h0_t, c0_t))
        outputs, _ = torch.nn.utils.rnn.pad_packed_sequence(packed_outputs, batch_first=True,
                                                            total_length=x.shape[1])
    d_outputs, d_h, d_c = (torch.from_numpy(u) for u in upstream)
    module.zero_grad()
    ((outputs * d_outputs).sum() + (h_n * d_h).sum() + (c_n * d_c).sum()).backward()
    grads = {k: p.grad.numpy().copy() for k, p in module.named_parameters()}
    return {"outputs": outputs.detach().numpy(), "h": h_n.detach().numpy(),
            "c": c_n.detach().numpy(), "x": x_t.grad.numpy(), "h0": h0_t.grad.numpy(),
            "c0": c0_t.grad.numpy(), "grads": grads}


def run_fastlstm(layers, x, h0, c0, upstream, mask=None):
    """The stack forward and backward; states stacked as torch's (layers * directions, B, H)."""
    directions = 2 if isinstance(layers[0], Bidirectional) else 1
    y, h_n, c_n = x, [], []
    for index, layer in enumerate(layers):
        start = index * directions
        initial_state = [s for d in range(directions) for s in (h0[start + d], c0[start + d])]
        y, *states = layer(y, initial_state=initial_state, mask=mask)
        h_n += states[0::2]
        c_n += states[1::2]
    d_outputs, d_h, d_c = upstream
    dy, d_h0, d_c0 = d_outputs, [None] * len(h_n), [None] * len(c_n)
    for index in reversed(range(len(layers))):
        start = index * directions
        d_states = [g for d in range(directions) for g in (d_h[start + d], d_c[start + d])]
        dy, *d_initial = layers[index].backward([dy] + d_states)
        d_h0[start:start + directions] = d_initial[0::2]
        d_c0[start:start + directions] = d_initial[1::2]
    grad_lists = []
    prefixes = ("forward_", "backward_") if directions == 2 else ("",)
    for layer in layers:
        names = [p + n for p in prefixes for n in ("kernel", "recurrent_kernel", "bias")]
        grad_lists.append([layer.grads[n] for n in names if n in layer.grads])
    return {"outputs": y, "h": np.stack(h_n), "c": np.stack(c_n), "x": dy,
            "h0": np.stack(d_h0), "c0": np.stack(d_c0),
            "grads": convert.to_torch_state_dict(grad_lists)}


def assert_weight_grads_match(got, expected):
    for key, value in expected.items():
        if key.startswith("bias_hh"):
            # Both torch biases get the same gradient: that of the summed Keras bias.
            key = key.replace("bias_hh", "bias_ih")
        np.testing.assert_allclose(got[key], value, rtol=RTOL, atol=ATOL, err_msg=key)


def random_problem(batch, steps, input_size, hidden, states, seed=3):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((batch, steps, input_size))
    h0 = 0.5 * rng.standard_normal((states, batch, hidden))
    c0 = rng.standard_normal((states, batch, hidden))
    return x, h0, c0, rng


PARITY_CASES = [
    pytest.param(1, False, True, id="1-layer"),
    pytest.param(2, False, True, id="2-layers"),
    pytest.param(1, True, True, id="bidirectional"),
    pytest.param(2, True, True, id="2-layers-bidirectional"),
    pytest.param(2, True, False, id="2-layers-bidirectional-no-bias"),
]


@pytest.mark.parametrize("num_layers, bidirectional, bias", PARITY_CASES)
def test_matches_torch(torch, num_layers, bidirectional, bias):
    directions = 2 if bidirectional else 1
    module, layers = build_pair(torch, 3, 4, num_layers, bidirectional, bias)
    x, h0, c0, rng = random_problem(2, 5, 3, 4, num_layers * directions)
    upstream = (rng.standard_normal((2, 5, 4 * directions)),
                rng.standard_normal(h0.shape), rng.standard_normal(c0.shape))
    expected = run_torch(torch, module, x, h0, c0, upstream)
    got = run_fastlstm(layers, x, h0, c0, upstream)
    for name in ("outputs", "h", "c", "x", "h0", "c0"):
        np.testing.assert_allclose(got[name], expected[name], rtol=RTOL, atol=ATOL,
                                   err_msg=name)
    assert_weight_grads_match(got["grads"], expected["grads"])


LENGTHS = [5, 3, 1, 4]
RIGHT_PADDED = np.arange(5)[None, :] < np.array(LENGTHS)[:, None]


@pytest.mark.parametrize("num_layers", [1, 2])
def test_bidirectional_mask_matches_packed_sequences(torch, num_layers):
    # Keras zeros the masked outputs of a Bidirectional, as pad_packed_sequence
    # does, so everything matches, padding and its (ignored) gradient included.
    module, layers = build_pair(torch, 3, 4, num_layers, bidirectional=True)
    x, h0, c0, rng = random_problem(4, 5, 3, 4, 2 * num_layers)
    upstream = (rng.standard_normal((4, 5, 8)), rng.standard_normal(h0.shape),
                rng.standard_normal(c0.shape))
    expected = run_torch(torch, module, x, h0, c0, upstream, lengths=LENGTHS)
    got = run_fastlstm(layers, x, h0, c0, upstream, mask=RIGHT_PADDED)
    for name in ("outputs", "h", "c", "x", "h0", "c0"):
        np.testing.assert_allclose(got[name], expected[name], rtol=RTOL, atol=ATOL,
                                   err_msg=name)
    assert_weight_grads_match(got["grads"], expected["grads"])


def test_lstm_mask_matches_packed_sequences_on_kept_steps(torch):
    # A plain Keras LSTM repeats the last kept output over the padding, where
    # torch pads with zeros: compare kept steps, with no gradient on the padding.
    module, layers = build_pair(torch, 3, 4, num_layers=2)
    x, h0, c0, rng = random_problem(4, 5, 3, 4, 2)
    d_outputs = np.where(RIGHT_PADDED[:, :, None], rng.standard_normal((4, 5, 4)), 0.0)
    upstream = (d_outputs, rng.standard_normal(h0.shape), rng.standard_normal(c0.shape))
    expected = run_torch(torch, module, x, h0, c0, upstream, lengths=LENGTHS)
    got = run_fastlstm(layers, x, h0, c0, upstream, mask=RIGHT_PADDED)
    np.testing.assert_allclose(got["outputs"][RIGHT_PADDED], expected["outputs"][RIGHT_PADDED],
                               rtol=RTOL, atol=ATOL)
    for name in ("h", "c", "x", "h0", "c0"):
        np.testing.assert_allclose(got[name], expected[name], rtol=RTOL, atol=ATOL,
                                   err_msg=name)
    assert_weight_grads_match(got["grads"], expected["grads"])


def test_float32_default_layer_matches_torch(torch):
    torch.manual_seed(0)
    module = torch.nn.LSTM(3, 4, batch_first=True)
    layer = LSTM(4, return_sequences=True)
    [weights] = convert.from_torch_state_dict(module.state_dict())
    layer.set_weights(weights)
    x = np.random.default_rng(0).standard_normal((2, 6, 3)).astype(np.float32)
    expected = module(torch.from_numpy(x))[0].detach().numpy()
    np.testing.assert_allclose(layer(x), expected, rtol=1e-5, atol=1e-6)


def test_torch_tensors_convert_and_load_back(torch):
    torch.manual_seed(1)
    module = torch.nn.LSTM(3, 4, num_layers=2, bidirectional=True, batch_first=True)
    per_layer = convert.from_torch_state_dict(module.state_dict())
    state_dict = convert.to_torch_state_dict(per_layer)
    other = torch.nn.LSTM(3, 4, num_layers=2, bidirectional=True, batch_first=True)
    other.load_state_dict({k: torch.from_numpy(v) for k, v in state_dict.items()})
    x = torch.randn(2, 5, 3)
    torch.testing.assert_close(other(x)[0], module(x)[0], rtol=1e-5, atol=1e-6)


def test_torch_proj_size_is_refused(torch):
    module = torch.nn.LSTM(3, 4, proj_size=2)
    with pytest.raises(ValueError, match="proj_size"):
        convert.from_torch_state_dict(module.state_dict())
