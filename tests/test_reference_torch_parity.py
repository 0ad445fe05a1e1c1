"""Parity of fastlstm.reference with torch.nn.LSTM in float64.

Weight mapping: torch's gate order is also i, f, g, o, so
``weight_ih_l0 = kernel.T``, ``weight_hh_l0 = recurrent_kernel.T``,
``bias_ih_l0 = bias`` and ``bias_hh_l0 = 0``. Masks are compared as right-padded
variable lengths through ``pack_padded_sequence``.
"""
import numpy as np
import pytest

from fastlstm import reference

torch = pytest.importorskip("torch", reason="torch is needed for the PyTorch parity tests")

RTOL = 1e-10
ATOL = 1e-12
RESULT_NAMES = ("outputs", "h", "c", "x", "kernel", "recurrent_kernel", "bias", "h0", "c0")

SHAPES = [
    pytest.param((1, 1, 1, 1), id="B1-T1-I1-H1"),
    pytest.param((2, 5, 3, 4), id="B2-T5-I3-H4"),
    pytest.param((4, 7, 1, 3), id="B4-T7-I1-H3"),
    pytest.param((3, 3, 6, 1), id="B3-T3-I6-H1"),
]


def random_arrays(batch, steps, input_dim, units, seed=0):
    rng = np.random.default_rng(seed)
    return {
        "x": rng.normal(size=(batch, steps, input_dim)),
        "kernel": 0.5 * rng.normal(size=(input_dim, 4 * units)),
        "recurrent_kernel": 0.5 * rng.normal(size=(units, 4 * units)),
        "bias": 0.3 * rng.normal(size=4 * units),
        "h0": 0.5 * rng.normal(size=(batch, units)),
        "c0": rng.normal(size=(batch, units)),
    }


def random_upstream(batch, steps, units, seed=1):
    rng = np.random.default_rng(seed)
    return (rng.normal(size=(batch, steps, units)),
            rng.normal(size=(batch, units)),
            rng.normal(size=(batch, units)))


def run_reference(arrays, upstream, *, use_bias=True, use_initial_state=True, **kwargs):
    initial_state = [arrays["h0"], arrays["c0"]] if use_initial_state else None
    outputs, h_last, c_last, cache = reference.lstm_forward(
        arrays["x"], arrays["kernel"], arrays["recurrent_kernel"],
        arrays["bias"] if use_bias else None, initial_state=initial_state, **kwargs)
    grads = reference.lstm_backward(cache, *upstream)
    return dict(zip(RESULT_NAMES, (outputs, h_last, c_last) + grads))


def run_torch(arrays, upstream, *, lengths=None, use_bias=True, use_initial_state=True):
    """torch.nn.LSTM forward and backward of the same scalar loss, as NumPy.

    With ``lengths`` the batch is packed; padded outputs come back as zeros.
    Without an initial state torch starts from zero tensors that require grad,
    which is what the reference's dh0, dc0 describe.
    """
    input_dim, four_units = arrays["kernel"].shape
    lstm = torch.nn.LSTM(input_dim, four_units // 4, batch_first=True, bias=use_bias,
                         dtype=torch.float64)
    with torch.no_grad():
        lstm.weight_ih_l0.copy_(torch.from_numpy(arrays["kernel"].T))
        lstm.weight_hh_l0.copy_(torch.from_numpy(arrays["recurrent_kernel"].T))
        if use_bias:
            lstm.bias_ih_l0.copy_(torch.from_numpy(arrays["bias"]))
            lstm.bias_hh_l0.zero_()

    x = torch.tensor(arrays["x"], requires_grad=True)
    if use_initial_state:
        h0 = torch.tensor(arrays["h0"], requires_grad=True)
        c0 = torch.tensor(arrays["c0"], requires_grad=True)
    else:
        h0 = torch.zeros(arrays["h0"].shape, dtype=torch.float64, requires_grad=True)
        c0 = torch.zeros(arrays["c0"].shape, dtype=torch.float64, requires_grad=True)

    state = (h0.unsqueeze(0), c0.unsqueeze(0))
    if lengths is None:
        outputs, (h_last, c_last) = lstm(x, state)
    else:
        packed = torch.nn.utils.rnn.pack_padded_sequence(
            x, torch.as_tensor(lengths), batch_first=True, enforce_sorted=False)
        packed_outputs, (h_last, c_last) = lstm(packed, state)
        outputs, _ = torch.nn.utils.rnn.pad_packed_sequence(
            packed_outputs, batch_first=True, total_length=x.shape[1])
    grad_outputs, grad_h, grad_c = (torch.from_numpy(grad) for grad in upstream)
    loss = ((outputs * grad_outputs).sum() + (h_last[0] * grad_h).sum()
            + (c_last[0] * grad_c).sum())
    loss.backward()

    def numpy(tensor):
        return tensor.detach().numpy()

    return {
        "outputs": numpy(outputs), "h": numpy(h_last[0]), "c": numpy(c_last[0]),
        "x": numpy(x.grad),
        "kernel": numpy(lstm.weight_ih_l0.grad).T,
        "recurrent_kernel": numpy(lstm.weight_hh_l0.grad).T,
        "bias": numpy(lstm.bias_ih_l0.grad) if use_bias else None,
        "bias_hh": numpy(lstm.bias_hh_l0.grad) if use_bias else None,
        "h0": numpy(h0.grad), "c0": numpy(c0.grad),
    }


def assert_parity(got, expected, names=RESULT_NAMES):
    for name in names:
        if expected[name] is None:
            assert got[name] is None, name
            continue
        np.testing.assert_allclose(got[name], expected[name], rtol=RTOL, atol=ATOL, err_msg=name)


def right_padded(lengths, steps):
    return np.arange(steps)[None, :] < np.asarray(lengths)[:, None]


@pytest.mark.parametrize("use_initial_state", [True, False], ids=["initial_state", "zero_state"])
@pytest.mark.parametrize("shape", SHAPES)
def test_matches_torch(shape, use_initial_state):
    batch, steps, input_dim, units = shape
    arrays = random_arrays(*shape)
    upstream = random_upstream(batch, steps, units)

    got = run_reference(arrays, upstream, use_initial_state=use_initial_state)
    expected = run_torch(arrays, upstream, use_initial_state=use_initial_state)

    assert_parity(got, expected)
    # bias_hh_l0 sees the same gate gradients as bias_ih_l0.
    np.testing.assert_allclose(got["bias"], expected["bias_hh"], rtol=RTOL, atol=ATOL)


def test_matches_torch_without_bias():
    arrays = random_arrays(3, 4, 2, 3)
    upstream = random_upstream(3, 4, 3)

    assert_parity(run_reference(arrays, upstream, use_bias=False),
                  run_torch(arrays, upstream, use_bias=False))


@pytest.mark.parametrize("use_initial_state", [True, False], ids=["initial_state", "zero_state"])
@pytest.mark.parametrize("shape", SHAPES)
def test_go_backwards_matches_torch_on_reversed_input(shape, use_initial_state):
    batch, steps, input_dim, units = shape
    arrays = random_arrays(*shape)
    upstream = random_upstream(batch, steps, units)
    reversed_arrays = dict(arrays, x=arrays["x"][:, ::-1].copy())

    got = run_reference(arrays, upstream, go_backwards=True,
                        use_initial_state=use_initial_state)
    expected = run_torch(reversed_arrays, upstream, use_initial_state=use_initial_state)

    # Outputs are in processing order on both sides; dx is in input order here.
    expected["x"] = expected["x"][:, ::-1]
    assert_parity(got, expected)


MASKED_CASES = [
    pytest.param((4, 7, 3, 3), [7, 3, 1, 5], id="B4-T7-lengths-7-3-1-5"),
    pytest.param((3, 5, 2, 4), [2, 5, 4], id="B3-T5-lengths-2-5-4"),
    pytest.param((2, 4, 1, 1), [1, 1], id="B2-T4-H1-lengths-1-1"),
    pytest.param((1, 3, 2, 2), [3], id="B1-T3-full-length"),
]


@pytest.mark.parametrize("use_initial_state", [True, False], ids=["initial_state", "zero_state"])
@pytest.mark.parametrize("shape, lengths", MASKED_CASES)
def test_right_padded_mask_matches_packed_sequence(shape, lengths, use_initial_state):
    batch, steps, input_dim, units = shape
    arrays = random_arrays(*shape)
    valid = right_padded(lengths, steps)
    grad_outputs, grad_h, grad_c = random_upstream(batch, steps, units)
    upstream = (np.where(valid[:, :, None], grad_outputs, 0.0), grad_h, grad_c)

    got = run_reference(arrays, upstream, mask=valid, use_initial_state=use_initial_state)
    expected = run_torch(arrays, upstream, lengths=lengths,
                         use_initial_state=use_initial_state)

    np.testing.assert_allclose(got["outputs"][valid], expected["outputs"][valid],
                               rtol=RTOL, atol=ATOL)
    assert_parity(got, expected, names=RESULT_NAMES[1:])
    # Keras semantics past the end: each padded step repeats the last valid output.
    for row, length in enumerate(lengths):
        np.testing.assert_array_equal(
            got["outputs"][row, length:],
            np.broadcast_to(got["outputs"][row, length - 1], (steps - length, units)))


@pytest.mark.parametrize("use_initial_state", [True, False], ids=["initial_state", "zero_state"])
@pytest.mark.parametrize("shape, lengths", MASKED_CASES)
def test_go_backwards_right_padded_mask_matches_packed_reversed_sequence(
        shape, lengths, use_initial_state):
    # Keras reverses the whole padded sequence: row b first meets T - L masked
    # steps (outputs zeros, state kept at h0, c0), then its valid steps from
    # L-1 down to 0. That is torch on x[b, L-1::-1] packed to length L, with
    # torch's output k at processing position T - L + k.
    batch, steps, input_dim, units = shape
    arrays = random_arrays(*shape)
    valid = right_padded(lengths, steps)
    upstream = random_upstream(batch, steps, units)

    reversed_x = np.zeros_like(arrays["x"])
    torch_grad_outputs = np.zeros_like(upstream[0])
    for row, length in enumerate(lengths):
        reversed_x[row, :length] = arrays["x"][row, length - 1::-1]
        torch_grad_outputs[row, :length] = upstream[0][row, steps - length:]

    # The leading zero outputs are constants: their upstream gradient, left
    # nonzero here, must not reach any gradient.
    got = run_reference(arrays, upstream, mask=valid, go_backwards=True,
                        use_initial_state=use_initial_state)
    expected = run_torch(dict(arrays, x=reversed_x),
                         (torch_grad_outputs, upstream[1], upstream[2]),
                         lengths=lengths, use_initial_state=use_initial_state)

    assert_parity(got, expected, names=("h", "c", "kernel", "recurrent_kernel", "bias",
                                        "h0", "c0"))
    for row, length in enumerate(lengths):
        np.testing.assert_array_equal(got["outputs"][row, :steps - length], 0.0)
        np.testing.assert_allclose(got["outputs"][row, steps - length:],
                                   expected["outputs"][row, :length], rtol=RTOL, atol=ATOL)
        np.testing.assert_allclose(got["x"][row, :length],
                                   expected["x"][row, length - 1::-1], rtol=RTOL, atol=ATOL)
        np.testing.assert_array_equal(got["x"][row, length:], 0.0)
