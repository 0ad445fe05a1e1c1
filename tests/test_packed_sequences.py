"""Packed batches on the packed kernels: step t touches only the
batch_sizes[t] sequences still running. fastlstm.torch.LSTM on a
PackedSequence against torch.nn.LSTM, every build; the kernels' own checks,
threads and record."""
import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="fastlstm.torch needs PyTorch")

import fastlstm.torch as fltorch  # noqa: E402
import fastlstm  # noqa: E402
from fastlstm import _config, _kernels, _sequences  # noqa: E402
from torch.nn.utils.rnn import PackedSequence, pack_padded_sequence  # noqa: E402

# max |got - expected| / max |expected|, per array: float64 to the last few
# bits; float32 within its rounding over a few steps of a few layers.
TOLERANCE = {torch.float64: 1e-10, torch.float32: 2e-5}
INPUT_SIZE, HIDDEN_SIZE, TIMESTEPS = 5, 6, 7
# Every length from 1 to T, some twice, not in order.
LENGTHS = [3, 7, 1, 5, 7, 2, 4, 6, 1]


def pair(dtype, **options):
    expected = torch.nn.LSTM(INPUT_SIZE, HIDDEN_SIZE, dtype=dtype, **options)
    got = fltorch.LSTM(INPUT_SIZE, HIDDEN_SIZE, dtype=dtype, **options)
    got.load_state_dict(expected.state_dict())
    return got, expected


def packed_results(module, x, lengths, enforce_sorted, hx):
    """Packed outputs, h_n, c_n and the gradients of a random linear loss of
    all three with respect to the packed data, h_0, c_0 and every parameter."""
    module.zero_grad(set_to_none=True)
    packed = pack_padded_sequence(x, lengths, batch_first=True, enforce_sorted=enforce_sorted)
    data = packed.data.detach().clone().requires_grad_(True)
    leaves = {"data": data}
    if hx is not None:
        hx = tuple(s.detach().clone().requires_grad_(True) for s in hx)
        leaves["h_0"], leaves["c_0"] = hx
    output, (h_n, c_n) = module(PackedSequence(data, packed.batch_sizes, packed.sorted_indices,
                                               packed.unsorted_indices), hx)
    assert isinstance(output, PackedSequence)
    assert torch.equal(output.batch_sizes, packed.batch_sizes)
    generator = torch.Generator().manual_seed(5)
    loss = sum((value * torch.randn(value.shape, generator=generator, dtype=value.dtype)).sum()
               for value in (output.data, h_n, c_n))
    loss.backward()
    found = {"output": output.data, "h_n": h_n, "c_n": c_n}
    found.update({f"grad {name}": leaf.grad for name, leaf in leaves.items()})
    found.update({f"grad {name}": p.grad for name, p in module.named_parameters()})
    return {name: value.detach().clone() for name, value in found.items()}


def assert_close(got, expected, dtype):
    assert got.keys() == expected.keys()
    for name, value in expected.items():
        assert got[name].shape == value.shape, name
        assert got[name].dtype == value.dtype, name
        scale = value.abs().max().item() or 1.0
        error = (got[name] - value).abs().max().item() / scale
        assert error <= TOLERANCE[dtype], f"{name}: relative error {error:.2e}"


@pytest.fixture
def packed_calls(monkeypatch):
    """The packed kernels' forward calls, counted: proof that a test ran on
    them, not on the masked kernels."""
    calls = []
    original = fltorch.packed_forward

    def counted(*args, **kwargs):
        calls.append(kwargs.get("reverse"))
        return original(*args, **kwargs)

    monkeypatch.setattr(fltorch, "packed_forward", counted)
    return calls


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["f64", "f32"])
@pytest.mark.parametrize("with_hx", [False, True], ids=["zero_state", "hx"])
@pytest.mark.parametrize("enforce_sorted", [True, False], ids=["sorted", "unsorted"])
@pytest.mark.parametrize("bidirectional", [False, True], ids=["uni", "bi"])
@pytest.mark.parametrize("num_layers", [1, 2])
def test_packed_batch_matches_torch(kernel_build, num_layers, bidirectional, enforce_sorted,
                                    with_hx, dtype, packed_calls):
    got, expected = pair(dtype, num_layers=num_layers, bidirectional=bidirectional)
    lengths = sorted(LENGTHS, reverse=True) if enforce_sorted else LENGTHS
    generator = torch.Generator().manual_seed(0)
    x = torch.randn((len(lengths), TIMESTEPS, INPUT_SIZE), generator=generator, dtype=dtype)
    hx = None
    if with_hx:
        shape = (num_layers * (2 if bidirectional else 1), len(lengths), HIDDEN_SIZE)
        hx = tuple(torch.randn(shape, generator=generator, dtype=dtype) for _ in range(2))
    found = packed_results(got, x, lengths, enforce_sorted, hx)
    assert_close(found, packed_results(expected, x, lengths, enforce_sorted, hx), dtype)
    directions = [False, True] if bidirectional else [False]
    assert packed_calls == directions * num_layers


def test_packed_dropout_matches_torch(packed_calls):
    got, expected = pair(torch.float64, num_layers=3, bidirectional=True, dropout=0.4)
    x = torch.randn((len(LENGTHS), TIMESTEPS, INPUT_SIZE), dtype=torch.float64)
    torch.manual_seed(11)
    found = packed_results(got, x, LENGTHS, False, None)
    torch.manual_seed(11)
    assert_close(found, packed_results(expected, x, LENGTHS, False, None), torch.float64)
    assert len(packed_calls) == 6


def test_packed_inference_matches_training_forward(packed_calls):
    got, _ = pair(torch.float64, num_layers=2, bidirectional=True)
    packed = pack_padded_sequence(torch.randn((len(LENGTHS), TIMESTEPS, INPUT_SIZE),
                                              dtype=torch.float64),
                                  LENGTHS, batch_first=True, enforce_sorted=False)
    with torch.no_grad():
        output, (h_n, c_n) = got(packed)
    trained, (h_t, c_t) = got(packed)
    assert trained.data.requires_grad
    for a, b in ((output.data, trained.data), (h_n, h_t), (c_n, c_t)):
        assert torch.equal(a, b.detach())


def test_second_backward_through_retained_graph_runs_forward_again():
    got, _ = pair(torch.float64, bidirectional=True)
    packed = pack_padded_sequence(torch.randn((len(LENGTHS), TIMESTEPS, INPUT_SIZE),
                                              dtype=torch.float64),
                                  LENGTHS, batch_first=True, enforce_sorted=False)
    output, _ = got(packed)
    output.data.sum().backward(retain_graph=True)
    first = [p.grad.clone() for p in got.parameters()]
    got.zero_grad()
    output.data.sum().backward()
    for a, p in zip(first, got.parameters()):
        assert torch.allclose(a, p.grad, rtol=1e-12, atol=1e-12)


def test_double_backward_through_packed_batch_raises():
    got, _ = pair(torch.float64)
    packed = pack_padded_sequence(torch.randn((3, 4, INPUT_SIZE), dtype=torch.float64), [4, 2, 1],
                                  batch_first=True)
    output, _ = got(packed)
    (grad,) = torch.autograd.grad(output.data.pow(2).sum(), got.weight_ih_l0, create_graph=True)
    with pytest.raises(RuntimeError, match="first-order gradients only"):
        grad.pow(2).sum().backward()


def _packed_problem(dtype, batch, timesteps, input_dim, units, seed=0):
    rng = np.random.default_rng(seed)
    lengths = np.sort(rng.integers(1, timesteps + 1, batch))[::-1]
    lengths[0] = timesteps
    batch_sizes = (lengths[None, :] > np.arange(timesteps)[:, None]).sum(1)
    rows = int(batch_sizes.sum())
    scale = 1 / np.sqrt(units)
    return (rng.standard_normal((rows, input_dim)).astype(dtype), batch_sizes,
            (rng.uniform(-scale, scale, (input_dim, 4 * units))).astype(dtype),
            (rng.uniform(-scale, scale, (units, 4 * units))).astype(dtype),
            (rng.uniform(-scale, scale, 4 * units)).astype(dtype))


@pytest.mark.parametrize("reverse", [False, True], ids=["forward", "reverse"])
def test_threads_split_sequences_without_changing_results(reverse):
    # Large enough for the planner to run on two threads.
    data, batch_sizes, kernel, recurrent_kernel, bias = _packed_problem(np.float64, 48, 60, 32, 64)
    results = []
    try:
        for threads in (1, 2):
            _config.set_num_threads(threads)
            outputs, h, c, record = _sequences.packed_forward(data, batch_sizes, kernel,
                                                              recurrent_kernel, bias,
                                                              reverse=reverse)
            grad = np.cos(outputs)
            results.append([outputs, h, c, *(g for g in _sequences.packed_backward(
                record, grad, np.ones_like(h), None) if g is not None)])
    finally:
        _config.set_num_threads(None)
    for one, two in zip(*results):
        np.testing.assert_allclose(two, one, rtol=1e-12, atol=1e-12)


def test_sequence_bounds_balance_valid_steps():
    batch_sizes = np.array([8, 8, 6, 4, 2, 1, 1, 1])
    bounds = _sequences.sequence_bounds(batch_sizes, 2)
    assert bounds[0] == 0 and bounds[-1] == 8 and len(bounds) == 3
    lengths = (batch_sizes[:, None] > np.arange(8)[None, :]).sum(0)
    first, second = lengths[:bounds[1]].sum(), lengths[bounds[1]:].sum()
    assert abs(int(first) - int(second)) <= lengths.max()
    assert list(_sequences.sequence_bounds(batch_sizes, 1)) == [0, 8]
    assert list(_sequences.sequence_bounds(np.array([1, 1]), 4)) == [0, 1]


@pytest.mark.parametrize("batch_sizes, message", [
    ([3, 4], "non-increasing"),
    ([3, 0], "positive"),
    ([2, 3], "start with the batch size 3"),
    ([3, 1], "sum to the 5 rows"),
])
def test_kernel_refuses_batch_sizes_it_cannot_trust(batch_sizes, message):
    kernels = _kernels.current()
    dtype = np.float64
    rows, units = 5, 2
    h, c = np.zeros((3, units), dtype), np.zeros((3, units), dtype)
    with pytest.raises(ValueError, match=message):
        kernels.packed_forward(np.zeros((rows, 1), dtype), np.zeros((1, 4 * units), dtype),
                               np.zeros((units, 4 * units), dtype), np.zeros(4 * units, dtype),
                               np.array(batch_sizes, np.int64), np.array([0, 3], np.int64),
                               False, h, c, np.empty((rows, units), dtype),
                               np.empty((rows, 4 * units), dtype),
                               np.empty((rows, units), dtype), np.empty((rows, units), dtype),
                               0, 1, 1)


def test_record_is_used_once():
    data, batch_sizes, kernel, recurrent_kernel, bias = _packed_problem(np.float32, 4, 5, 3, 2)
    outputs, h, c, record = _sequences.packed_forward(data, batch_sizes, kernel,
                                                      recurrent_kernel, bias)
    _sequences.packed_backward(record, np.ones_like(outputs))
    with pytest.raises(ValueError, match="already run"):
        _sequences.packed_backward(record, np.ones_like(outputs))


def test_every_build_has_the_packed_kernels():
    for name in _kernels.available():
        module = _kernels.use(name)
        assert callable(module.packed_forward) and callable(module.packed_backward)
    _kernels.use(None)


# fastlstm's own calls: a mask that is a trailing padding runs packed.

def _trailing_mask(lengths, timesteps):
    return np.arange(timesteps)[None, :] < np.asarray(lengths)[:, None]


def _masked_call_inputs(rng, dtype):
    """x, the weights (Keras' layout) and the initial states of a call over
    len(LENGTHS) sequences."""
    batch, units = len(LENGTHS), HIDDEN_SIZE
    x = rng.standard_normal((batch, TIMESTEPS, INPUT_SIZE)).astype(dtype)
    weights = [(rng.standard_normal(shape) * 0.4).astype(dtype) for shape in
               ((INPUT_SIZE, 4 * units), (units, 4 * units), (4 * units,))]
    state = [rng.standard_normal((batch, units)).astype(dtype) for _ in range(2)]
    return x, weights, state


def _functional_step(x, weights, state, mask, go_backwards, upstream):
    outputs, h, c, cache = fastlstm.lstm_forward(x, *weights, initial_state=state, mask=mask,
                                                 go_backwards=go_backwards, return_cache=True)
    grads = fastlstm.lstm_backward(cache, *upstream)
    return [outputs, h, c, *grads], type(cache.state).__name__


@pytest.mark.parametrize("dtype", [np.float64, np.float32], ids=["f64", "f32"])
@pytest.mark.parametrize("go_backwards", [False, True], ids=["forward", "backwards"])
def test_trailing_mask_runs_packed_and_matches_masked_kernels(kernel_build, go_backwards, dtype,
                                                              monkeypatch):
    from fastlstm import _plan

    rng = np.random.default_rng(2)
    batch, units = len(LENGTHS), HIDDEN_SIZE
    x, weights, state = _masked_call_inputs(rng, dtype)
    upstream = [rng.standard_normal(shape).astype(dtype)
                for shape in ((batch, TIMESTEPS, units), (batch, units), (batch, units))]
    mask = _trailing_mask(LENGTHS, TIMESTEPS)
    results = {}
    for packs in (True, False):
        monkeypatch.setattr(_plan, "pack_masked_batch", lambda *args, packs=packs: packs)
        results[packs], record = _functional_step(x, weights, state, mask, go_backwards,
                                                  upstream)
        assert record == ("PaddedRecord" if packs else "FastRecord")
    tolerance = 1e-12 if dtype == np.float64 else 1e-5
    for got, expected in zip(results[True], results[False], strict=True):
        np.testing.assert_allclose(got, expected, rtol=tolerance,
                                   atol=tolerance * np.abs(expected).max())


def test_fl_layer_with_trailing_mask_matches_masked_kernels(monkeypatch):
    from fastlstm import _plan
    from fastlstm.layers import LSTM

    rng = np.random.default_rng(3)
    x = rng.standard_normal((len(LENGTHS), TIMESTEPS, INPUT_SIZE))
    mask = _trailing_mask(LENGTHS, TIMESTEPS)
    upstream = rng.standard_normal((len(LENGTHS), TIMESTEPS, HIDDEN_SIZE))
    layer = LSTM(HIDDEN_SIZE, return_sequences=True, dtype="float64", seed=0)
    layer.build(INPUT_SIZE)
    results, records = {}, []
    original = _sequences.padded_forward

    def recording(*args, **kwargs):
        records.append(True)
        return original(*args, **kwargs)

    monkeypatch.setattr(_sequences, "padded_forward", recording)
    for packs in (True, False):
        monkeypatch.setattr(_plan, "pack_masked_batch", lambda *args, packs=packs: packs)
        outputs = layer(x, mask=mask, training=True)
        dx = layer.backward(upstream)
        results[packs] = [outputs, dx, *(layer.grads[name] for name in sorted(layer.grads))]
    assert records == [True]
    for got, expected in zip(results[True], results[False], strict=True):
        np.testing.assert_allclose(got, expected, rtol=1e-12, atol=1e-12)


def test_only_trailing_masks_that_pay_run_packed():
    from fastlstm import _plan

    timesteps = 50
    gaps = _trailing_mask([50, 20, 30], timesteps)
    gaps[1, 5] = False
    assert _sequences.trailing_lengths(gaps) is None
    assert list(_sequences.trailing_lengths(_trailing_mask([50, 20, 30], timesteps))) == [50, 20,
                                                                                          30]
    empty_row = _trailing_mask([50, 0, 30], timesteps)
    assert _sequences.serves_mask(empty_row, 32, 64, False) is None
    # At most PACKED_MAX_VALID of the steps valid, and enough work for two threads.
    batch, input_dim, units = 32, 32, 64
    assert _plan.pack_masked_batch(batch, timesteps, input_dim, units, batch * timesteps * 0.6)
    assert not _plan.pack_masked_batch(batch, timesteps, input_dim, units, batch * timesteps)
    assert not _plan.pack_masked_batch(2, 10, 4, 8, 10)
    assert _sequences.serves_mask(_trailing_mask([50] * 31 + [1], timesteps), input_dim, units,
                                  True) is None


def test_compiled_module_on_packed_batch_matches_eager(packed_calls):
    # Traced by torch.compile, a PackedSequence runs padded on the masked
    # kernels; the results are those of the eager packed kernels.
    got, _ = pair(torch.float64, bidirectional=True)
    x = torch.randn((len(LENGTHS), TIMESTEPS, INPUT_SIZE), dtype=torch.float64)
    eager = packed_results(got, x, LENGTHS, False, None)
    eager_calls = len(packed_calls)
    compiled = torch.compile(got, backend="eager")
    found = packed_results(compiled, x, LENGTHS, False, None)
    assert len(packed_calls) == eager_calls == 2
    found = {name.replace("_orig_mod.", ""): value for name, value in found.items()}
    assert_close(found, eager, torch.float64)


@pytest.mark.parametrize("dtype", [np.float64, np.float32], ids=["f64", "f32"])
@pytest.mark.parametrize("go_backwards", [False, True], ids=["forward", "backwards"])
def test_inference_with_trailing_mask_runs_packed_as_the_masked_kernels(kernel_build,
                                                                       go_backwards, dtype,
                                                                       monkeypatch):
    # A call that records nothing (PackedLSTM, and so a layer's predict) takes
    # the packed kernels where the planner says so, with the masked kernels'
    # outputs at every step, kept or masked, and final states.
    from fastlstm import _plan

    x, weights, state = _masked_call_inputs(np.random.default_rng(4), dtype)
    mask = _trailing_mask(LENGTHS, TIMESTEPS)
    served = fastlstm.PackedLSTM(*weights)
    calls = []
    original = _sequences.padded_forward

    def recording(*args, **kwargs):
        calls.append(args[8])  # training
        return original(*args, **kwargs)

    monkeypatch.setattr(_sequences, "padded_forward", recording)
    results = {}
    for packs in (True, False):
        monkeypatch.setattr(_plan, "pack_masked_batch", lambda *args, packs=packs: packs)
        results[packs] = served(x, initial_state=[s.copy() for s in state], mask=mask,
                                go_backwards=go_backwards)
        functional = fastlstm.lstm_forward(x, *weights, initial_state=state, mask=mask,
                                     go_backwards=go_backwards, return_cache=False)
        for got, expected in zip(functional[:3], results[packs]):
            np.testing.assert_array_equal(got, expected)
    assert calls == [False, False]
    tolerance = 1e-12 if dtype == np.float64 else 1e-5
    for got, expected in zip(results[True], results[False], strict=True):
        np.testing.assert_allclose(got, expected, rtol=tolerance,
                                   atol=tolerance * np.abs(expected).max())


def test_layer_predict_with_trailing_mask_runs_packed(monkeypatch):
    from fastlstm import _plan
    from fastlstm.layers import LSTM, Masking
    from fastlstm.models import Sequential

    rng = np.random.default_rng(5)
    x = rng.standard_normal((len(LENGTHS), TIMESTEPS, INPUT_SIZE)).astype(np.float32)
    x[~_trailing_mask(LENGTHS, TIMESTEPS)] = 0.0
    model = Sequential([Masking(0.0), LSTM(HIDDEN_SIZE, return_sequences=True, seed=0)])
    model.build((None, TIMESTEPS, INPUT_SIZE))
    calls = []
    original = _sequences.padded_forward
    monkeypatch.setattr(_sequences, "padded_forward",
                        lambda *args, **kwargs: calls.append(1) or original(*args, **kwargs))
    results = {}
    for packs in (True, False):
        monkeypatch.setattr(_plan, "pack_masked_batch", lambda *args, packs=packs: packs)
        results[packs] = model.predict(x)
    assert calls == [1]
    np.testing.assert_allclose(results[True], results[False], rtol=1e-5, atol=1e-6)


def test_inference_packs_only_where_each_thread_has_enough_rows_and_units(monkeypatch):
    # The planner's rule for calls that keep no record, on two threads: the
    # benchmark's small and long sizes ran as fast masked as packed; medium
    # and large ran at 0.72 to 0.73 of the masked time packed.
    from fastlstm import _plan
    from fastlstm.tools.sizes import SIZES

    monkeypatch.setattr(_plan, "call_threads", lambda flops: (2, True))
    for name, packs in (("small", False), ("long", False), ("medium", True), ("large", True)):
        batch, timesteps, input_dim, units = SIZES[name]
        valid = 0.62 * batch * timesteps
        assert _plan.pack_masked_batch(batch, timesteps, input_dim, units, valid,
                                       training=False) is packs, name
        assert _plan.pack_masked_batch(batch, timesteps, input_dim, units, valid), name
