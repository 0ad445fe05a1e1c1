"""The projected LSTM (LSTMP): h_t = (o_t * tanh(c_t)) @ projection_kernel.

The NumPy reference against finite differences, the kernels of every build
against the reference, fastlstm.torch.LSTM(proj_size=...) against
torch.nn.LSTM(proj_size=...), and the fl.LSTM layer with proj_units."""
import numpy as np
import pytest

import fastlstm as fl
from fastlstm import reference

from gradcheck import assert_gradient

B, T, I, H, P = 3, 5, 4, 6, 3


def weights(dtype=np.float64, seed=0, units=H, proj=P, input_dim=I):
    rng = np.random.default_rng(seed)
    kernel = rng.uniform(-0.5, 0.5, (input_dim, 4 * units)).astype(dtype)
    recurrent_kernel = rng.uniform(-0.5, 0.5, (proj, 4 * units)).astype(dtype)
    bias = rng.uniform(-0.5, 0.5, 4 * units).astype(dtype)
    projection_kernel = rng.uniform(-0.5, 0.5, (units, proj)).astype(dtype)
    return kernel, recurrent_kernel, bias, projection_kernel


def inputs(dtype=np.float64, seed=1, batch=B, steps=T, units=H, proj=P, input_dim=I):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((batch, steps, input_dim)).astype(dtype)
    h0 = rng.standard_normal((batch, proj)).astype(dtype) * 0.5
    c0 = rng.standard_normal((batch, units)).astype(dtype) * 0.5
    return x, h0, c0


def a_mask(batch=B, steps=T, seed=2):
    mask = np.random.default_rng(seed).random((batch, steps)) > 0.3
    mask[0] = False          # a sequence with no kept step
    mask[1, 0] = False       # a masked first step
    return mask


def run(backend, x, w, state, mask, go_backwards, dropout, upstream):
    kernel, recurrent_kernel, bias, projection_kernel = w
    outputs, h, c, cache = fl.lstm_forward(
        x, kernel, recurrent_kernel, bias, initial_state=state, mask=mask,
        go_backwards=go_backwards, backend=backend, recurrent_dropout_mask=dropout,
        projection_kernel=projection_kernel)
    grads = fl.lstm_backward(cache, *upstream)
    return (outputs, h, c), grads


CASES = [dict(), dict(mask=True), dict(go_backwards=True), dict(mask=True, go_backwards=True),
         dict(dropout=True), dict(state=True, mask=True, dropout=True)]
CASE_IDS = ["plain", "mask", "backwards", "mask_backwards", "dropout", "state_mask_dropout"]


def case_arguments(case, dtype, batch=B, steps=T):
    x, h0, c0 = inputs(dtype, batch=batch, steps=steps)
    rng = np.random.default_rng(5)
    state = [h0, c0] if case.get("state") else None
    mask = a_mask(batch, steps) if case.get("mask") else None
    dropout = ((rng.random((batch, P)) > 0.4) / 0.6).astype(dtype) if case.get("dropout") else None
    upstream = [rng.standard_normal(s).astype(dtype) for s in
                ((batch, steps, P), (batch, P), (batch, H))]
    return x, state, mask, case.get("go_backwards", False), dropout, upstream


@pytest.mark.parametrize("case", CASES, ids=CASE_IDS)
def test_reference_gradients_match_finite_differences(case):
    w = weights()
    x, state, mask, go_backwards, dropout, upstream = case_arguments(case, np.float64)
    _, grads = run("reference", x, w, state, mask, go_backwards, dropout, upstream)

    def loss():
        outputs, h, c, _ = reference.lstm_forward(
            x, w[0], w[1], w[2], initial_state=state, mask=mask, go_backwards=go_backwards,
            recurrent_dropout_mask=dropout, projection_kernel=w[3])
        return sum(float(np.sum(a * u)) for a, u in zip((outputs, h, c), upstream))

    for name, array in (("x", x), ("kernel", w[0]), ("recurrent_kernel", w[1]),
                        ("bias", w[2]), ("projection_kernel", w[3])):
        assert_gradient(getattr(grads, name), loss, array, name)
    if state is not None:
        assert_gradient(grads.h0, loss, state[0], "h0")
        assert_gradient(grads.c0, loss, state[1], "c0")


def test_reference_without_projection_is_unchanged_by_an_identity_projection():
    """With P = H and the identity as projection the LSTMP is the LSTM."""
    kernel, _, bias, _ = weights(proj=H)
    recurrent_kernel = np.random.default_rng(9).uniform(-0.5, 0.5, (H, 4 * H))
    x, _, _ = inputs()
    plain = reference.lstm_forward(x, kernel, recurrent_kernel, bias)
    projected = reference.lstm_forward(x, kernel, recurrent_kernel, bias,
                                       projection_kernel=np.eye(H))
    for a, b in zip(plain[:3], projected[:3]):
        np.testing.assert_allclose(a, b, rtol=1e-14, atol=1e-15)


@pytest.mark.parametrize("case", CASES, ids=CASE_IDS)
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_kernels_match_reference(kernel_build, case, dtype):
    w = weights(dtype)
    args = case_arguments(case, dtype)
    got_out, got = run("fast", args[0], w, *args[1:])
    want_out, want = run("reference", args[0], w, *args[1:])
    # float32: a few ulp per step of products whose terms are O(1).
    rtol, atol = (1e-12, 1e-12) if dtype == np.float64 else (2e-5, 2e-5)
    for a, b in zip(got_out, want_out):
        assert a.dtype == dtype
        np.testing.assert_allclose(a, b, rtol=rtol, atol=atol)
    assert type(got) is fl.ProjectedLSTMGradients
    for name in got._fields:
        np.testing.assert_allclose(getattr(got, name), getattr(want, name), rtol=rtol,
                                   atol=atol * 10, err_msg=name)


@pytest.mark.parametrize("threads", [1, 2, 3])
def test_kernels_match_reference_on_threads(threads, monkeypatch):
    """Batch rows split among threads, and weight gradients by columns."""
    from fastlstm import _plan

    w = weights(units=40, proj=20, input_dim=24)
    rng = np.random.default_rng(3)
    x = rng.standard_normal((7, 9, 24))
    mask = rng.random((7, 9)) > 0.2
    upstream = [rng.standard_normal(s) for s in ((7, 9, 20), (7, 20), (7, 40))]
    # Threads even for a call this small.
    monkeypatch.setattr(_plan, "PARALLEL_MIN_FLOPS", 0)
    previous = fl.num_threads()
    fl.set_num_threads(threads)
    try:
        got_out, got = run("fast", x, w, None, mask, False, None, upstream)
    finally:
        fl.set_num_threads(previous)
    want_out, want = run("reference", x, w, None, mask, False, None, upstream)
    for a, b in zip(got_out, want_out):
        np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-12)
    for name in got._fields:
        np.testing.assert_allclose(getattr(got, name), getattr(want, name), rtol=1e-11,
                                   atol=1e-11, err_msg=name)


def test_inference_path_matches_training_path():
    w = weights()
    x, h0, c0 = inputs()
    trained = fl.lstm_forward(x, *w[:3], initial_state=[h0, c0], projection_kernel=w[3])
    inferred = fl.lstm_forward(x, *w[:3], initial_state=[h0, c0], projection_kernel=w[3],
                               return_cache=False)
    assert inferred[3] is None
    for a, b in zip(trained[:3], inferred[:3]):
        np.testing.assert_array_equal(a, b)


def test_inputs_are_not_written():
    w = weights()
    x, h0, c0 = inputs()
    copies = [a.copy() for a in (x, h0, c0, *w)]
    out = fl.lstm_forward(x, *w[:3], initial_state=[h0, c0], projection_kernel=w[3])
    fl.lstm_backward(out[3], np.ones_like(out[0]))
    for a, b in zip((x, h0, c0, *w), copies):
        np.testing.assert_array_equal(a, b)


def test_functional_errors_name_the_argument():
    kernel, recurrent_kernel, bias, projection_kernel = weights()
    x, h0, c0 = inputs()
    with pytest.raises(ValueError, match=r"projection_kernel must have shape \(units, proj_units\)"):
        fl.lstm_forward(x, kernel, recurrent_kernel, bias, projection_kernel=projection_kernel.T)
    with pytest.raises(ValueError, match=r"recurrent_kernel.*\(proj_units, 4 \* units\)"):
        fl.lstm_forward(x, kernel, np.zeros((H, 4 * H)), bias,
                        projection_kernel=projection_kernel)
    with pytest.raises(TypeError, match="projection_kernel must have the dtype of kernel"):
        fl.lstm_forward(x, kernel, recurrent_kernel, bias,
                        projection_kernel=projection_kernel.astype(np.float32))
    with pytest.raises(ValueError, match=r"initial_state\[0\] \(h0\).*\(batch, proj_units\)"):
        fl.lstm_forward(x, kernel, recurrent_kernel, bias, initial_state=[c0, c0],
                        projection_kernel=projection_kernel)
    cache = fl.lstm_forward(x, kernel, recurrent_kernel, bias,
                            projection_kernel=projection_kernel)[3]
    with pytest.raises(ValueError, match=r"grad_outputs.*\(batch, timesteps, proj_units\)"):
        fl.lstm_backward(cache, np.zeros((B, T, H)))


# -- the layer -------------------------------------------------------------------


def test_layer_shapes_weights_and_config():
    layer = fl.LSTM(H, proj_units=P, return_sequences=True, return_state=True, seed=0,
                    dtype="float64")
    x, h0, c0 = inputs()
    y, h, c = layer(x)
    assert y.shape == (B, T, P) and h.shape == (B, P) and c.shape == (B, H)
    assert [w.shape for w in layer.get_weights()] == [(I, 4 * H), (P, 4 * H), (4 * H,), (H, P)]
    assert layer.compute_output_shape((B, T, I)) == (B, T, P)
    clone = fl.LSTM.from_config(layer.get_config())
    clone.set_weights(layer.get_weights())
    for a, b in zip(clone(x), (y, h, c)):
        np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(y, fl.lstm_forward(x, *layer.get_weights()[:3],
                                                     projection_kernel=layer.get_weights()[3])[0])


@pytest.mark.parametrize("options", [dict(), dict(go_backwards=True), dict(use_bias=False),
                                     dict(return_sequences=True)],
                         ids=["last", "backwards", "no_bias", "sequences"])
def test_layer_backward_matches_finite_differences(options):
    layer = fl.LSTM(H, proj_units=P, seed=0, dtype="float64", return_state=True, **options)
    x, h0, c0 = inputs()
    mask = a_mask()
    out = layer(x, initial_state=[h0, c0], mask=mask)
    rng = np.random.default_rng(7)
    upstream = [rng.standard_normal(a.shape) for a in out]
    dx, dh0, dc0 = layer.backward(upstream)
    grads = dict(layer.grads)

    def loss():
        with fl.no_grad():
            result = layer(x, initial_state=[h0, c0], mask=mask)
        return sum(float(np.sum(a * u)) for a, u in zip(result, upstream))

    assert sorted(grads) == sorted(layer.params)
    for name, array in layer.params.items():
        assert_gradient(grads[name], loss, array, name)
    assert_gradient(dx, loss, x, "x")
    assert_gradient(dh0, loss, h0, "h0")
    assert_gradient(dc0, loss, c0, "c0")


def test_stateful_layer_carries_projected_states():
    whole = fl.LSTM(H, proj_units=P, return_sequences=True, seed=0, dtype="float64")
    halves = fl.LSTM(H, proj_units=P, return_sequences=True, seed=0, dtype="float64",
                     stateful=True)
    x, _, _ = inputs()
    want = whole(x)
    got = np.concatenate([halves(x[:, :2]), halves(x[:, 2:])], axis=1)
    np.testing.assert_allclose(got, want, rtol=1e-13, atol=1e-15)
    h, c = halves.states
    assert h.shape == (B, P) and c.shape == (B, H)


def test_recurrent_dropout_masks_the_projected_state():
    layer = fl.LSTM(H, proj_units=P, recurrent_dropout=0.5, seed=0, dtype="float64")
    x, _, _ = inputs()
    dropped = layer(x, training=True)
    layer.backward(np.ones_like(dropped))
    assert layer.grads["recurrent_kernel"].shape == (P, 4 * H)
    assert not np.allclose(dropped, layer(x))
    _, recurrent = layer.dropout_masks(B, True)
    assert recurrent.shape == (B, P)


def test_bidirectional_projected_matches_two_layers():
    bi = fl.Bidirectional(fl.LSTM(H, proj_units=P, return_sequences=True, return_state=True,
                                  seed=0, dtype="float64"))
    x, _, _ = inputs()
    mask = a_mask()
    y, h_fw, c_fw, h_bw, c_bw = bi(x, mask=mask)
    assert y.shape == (B, T, 2 * P)
    assert h_fw.shape == h_bw.shape == (B, P) and c_fw.shape == c_bw.shape == (B, H)
    fw, bw = bi.forward_layer, bi.backward_layer
    want_fw = fl.lstm_forward(x, *fw.get_weights()[:3], mask=mask,
                              projection_kernel=fw.get_weights()[3])
    want_bw = fl.lstm_forward(x, *bw.get_weights()[:3], mask=mask, go_backwards=True,
                              projection_kernel=bw.get_weights()[3])
    np.testing.assert_allclose(h_fw, want_fw[1], rtol=1e-13)
    np.testing.assert_allclose(c_bw, want_bw[2], rtol=1e-13)
    np.testing.assert_allclose(y[..., :P], np.where(mask[..., None], want_fw[0], 0),
                               rtol=1e-13, atol=1e-15)
    dy = [np.ones_like(y), None, None, np.ones_like(h_bw), None]
    dx = bi.backward(dy)
    assert dx.shape == x.shape
    assert bi.forward_layer.grads["projection_kernel"].shape == (H, P)


def test_sequential_stack_with_projection_trains(tmp_path):
    rng = np.random.default_rng(0)
    x = rng.standard_normal((32, 6, I)).astype(np.float32)
    y = x.sum(axis=(1, 2))[:, None] * 0.1
    model = fl.Sequential([fl.LSTM(16, proj_units=8, return_sequences=True, seed=0),
                           fl.LSTM(12, proj_units=4, seed=1), fl.Dense(1, seed=2)])
    model.compile(optimizer="adam", loss="mse")
    history = model.fit(x, y, epochs=15, batch_size=8, verbose=0)
    losses = history.history["loss"]
    assert losses[-1] < 0.5 * losses[0]
    path = tmp_path / "projected.fastlstm"
    model.save(path)
    loaded = fl.models.load_model(path)
    np.testing.assert_array_equal(loaded.predict(x, verbose=0), model.predict(x, verbose=0))
    assert loaded.layers[0].proj_units == 8


def test_layer_errors(tmp_path):
    with pytest.raises(ValueError, match="proj_units"):
        fl.LSTM(4, proj_units=0)
    layer = fl.LSTM(H, proj_units=P, dtype="float64")
    x, h0, c0 = inputs()
    with pytest.raises(ValueError, match=r"initial_state\[0\] \(h0\).*proj_units"):
        layer(x, initial_state=[c0, c0])
    with pytest.raises(ValueError, match="projection_kernel"):
        layer.set_weights(layer.get_weights()[:3] + [np.zeros((P, H))])
    with pytest.raises(NotImplementedError, match="projected LSTM"):
        layer.cell(x[:, 0], [h0, c0])
    model = fl.Sequential([fl.LSTM(H, proj_units=P)])
    model.build((None, T, I))
    with pytest.raises(ValueError, match="projected LSTM.*ONNX"):
        model.export(str(tmp_path / "unused.onnx"), format="onnx")
    assert not (tmp_path / "unused.onnx").exists()
    from fastlstm import convert
    with pytest.raises(ValueError, match="projected LSTM"):
        convert.to_keras_weights(layer)


# -- the PyTorch adapter ------------------------------------------------------------

torch = pytest.importorskip("torch", reason="fastlstm.torch needs PyTorch")
import fastlstm.torch as fltorch  # noqa: E402
from torch.nn.utils.rnn import pack_padded_sequence  # noqa: E402

TOLERANCE = {torch.float64: 1e-10, torch.float32: 2e-5}


def pair(dtype=torch.float64, input_size=I, hidden_size=H, proj_size=P, **options):
    expected = torch.nn.LSTM(input_size, hidden_size, proj_size=proj_size, dtype=dtype,
                             **options)
    got = fltorch.LSTM(input_size, hidden_size, proj_size=proj_size, dtype=dtype, **options)
    got.load_state_dict(expected.state_dict())
    return got, expected


def results(module, input, hx=None, seed=4):
    module.zero_grad(set_to_none=True)
    packed = not isinstance(input, torch.Tensor)
    leaves = {}
    if not packed:
        leaves["input"] = input = input.detach().clone().requires_grad_(True)
    if hx is not None:
        leaves["h_0"], leaves["c_0"] = (s.detach().clone().requires_grad_(True) for s in hx)
        hx = (leaves["h_0"], leaves["c_0"])
    output, (h_n, c_n) = module(input, hx)
    if packed:
        output = output.data
    generator = torch.Generator().manual_seed(seed)
    loss = sum((value * torch.randn(value.shape, generator=generator, dtype=value.dtype)).sum()
               for value in (output, h_n, c_n))
    loss.backward()
    found = {"output": output, "h_n": h_n, "c_n": c_n}
    found.update({f"grad {name}": leaf.grad for name, leaf in leaves.items()})
    found.update({f"grad {name}": p.grad for name, p in module.named_parameters()})
    return {name: value.detach().clone() for name, value in found.items()}


def assert_close(got, expected, dtype):
    assert got.keys() == expected.keys()
    for name, value in expected.items():
        assert got[name].shape == value.shape, name
        scale = value.abs().max().item() or 1.0
        error = (got[name] - value).abs().max().item() / scale
        assert error <= TOLERANCE[dtype], f"{name}: relative error {error:.2e}"


def hx_for(module, batch, seed=3):
    generator = torch.Generator().manual_seed(seed)
    layers = module.num_layers * (2 if module.bidirectional else 1)
    dtype = module.weight_ih_l0.dtype
    return (torch.randn((layers, batch, module.proj_size), generator=generator, dtype=dtype),
            torch.randn((layers, batch, module.hidden_size), generator=generator, dtype=dtype))


def test_adapter_parameters_have_torch_names_shapes_and_draws():
    got, expected = pair(num_layers=2, bidirectional=True)
    assert [(n, p.shape) for n, p in got.named_parameters()] == \
        [(n, p.shape) for n, p in expected.named_parameters()]
    assert got.weight_hr_l1_reverse.shape == (P, H)
    assert got.weight_hh_l0.shape == (4 * H, P)
    assert got.weight_ih_l1.shape == (4 * H, 2 * P)
    assert repr(got).endswith(f"LSTM({I}, {H}, num_layers=2, bidirectional=True, proj_size={P})")
    torch.manual_seed(0)
    drawn = fltorch.LSTM(I, H, proj_size=P, dtype=torch.float64)
    torch.manual_seed(0)
    reference = torch.nn.LSTM(I, H, proj_size=P, dtype=torch.float64)
    for a, b in zip(drawn.parameters(), reference.parameters()):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


@pytest.mark.parametrize("with_hx", [False, True], ids=["zero_state", "hx"])
@pytest.mark.parametrize("batch_first", [False, True], ids=["seq_first", "batch_first"])
@pytest.mark.parametrize("bidirectional", [False, True], ids=["uni", "bi"])
@pytest.mark.parametrize("num_layers", [1, 2])
def test_adapter_matches_torch_float64(num_layers, bidirectional, batch_first, with_hx):
    got, expected = pair(num_layers=num_layers, bidirectional=bidirectional,
                         batch_first=batch_first)
    x = torch.randn((B, T, I) if batch_first else (T, B, I), dtype=torch.float64,
                    generator=torch.Generator().manual_seed(0))
    hx = hx_for(got, B) if with_hx else None
    assert_close(results(got, x, hx), results(expected, x, hx), torch.float64)


@pytest.mark.parametrize("bidirectional", [False, True], ids=["uni", "bi"])
def test_adapter_matches_torch_float32(bidirectional):
    got, expected = pair(dtype=torch.float32, num_layers=2, bidirectional=bidirectional,
                         input_size=16, hidden_size=32, proj_size=16)
    x = torch.randn((4, 7, 16), generator=torch.Generator().manual_seed(0))
    assert_close(results(got, x), results(expected, x), torch.float32)


def test_adapter_without_bias_and_unbatched_match_torch():
    got, expected = pair(bias=False, num_layers=2)
    x = torch.randn((T, I), dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    hx = tuple(s[:, 0] for s in hx_for(got, 1))
    assert_close(results(got, x, hx), results(expected, x, hx), torch.float64)


@pytest.mark.parametrize("enforce_sorted", [True, False], ids=["sorted", "unsorted"])
@pytest.mark.parametrize("bidirectional", [False, True], ids=["uni", "bi"])
def test_adapter_packed_sequence_matches_torch(kernel_build, bidirectional, enforce_sorted):
    got, expected = pair(num_layers=2, bidirectional=bidirectional)
    lengths = [5, 3, 4, 1] if not enforce_sorted else [5, 4, 3, 1]
    x = torch.randn((4, T, I), dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    packed = pack_padded_sequence(x, lengths, batch_first=True, enforce_sorted=enforce_sorted)
    hx = hx_for(got, 4)
    assert_close(results(got, packed, hx), results(expected, packed, hx), torch.float64)


def test_adapter_gradcheck():
    got, _ = pair(num_layers=2, bidirectional=True, input_size=2, hidden_size=3, proj_size=2)
    x = torch.randn((2, 3, 2), dtype=torch.float64, requires_grad=True)
    h0, c0 = (s.requires_grad_(True) for s in hx_for(got, 3))
    params = list(got.parameters())

    def function(x, h0, c0, *weights):
        with torch.nn.utils.stateless._reparametrize_module(
                got, dict(zip([n for n, _ in got.named_parameters()], weights))):
            output, (h_n, c_n) = got(x, (h0, c0))
        return output, h_n, c_n

    assert torch.autograd.gradcheck(function, (x, h0, c0, *params))


def test_adapter_training_gives_torch_weights():
    got, expected = pair(num_layers=2, dropout=0.0)
    x = torch.randn((T, B, I), dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    for module in (got, expected):
        optimizer = torch.optim.Adam(module.parameters(), lr=0.01)
        for _ in range(3):
            optimizer.zero_grad()
            output, (h_n, c_n) = module(x)
            (output.square().sum() + c_n.sum()).backward()
            optimizer.step()
    for a, b in zip(got.parameters(), expected.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)


def test_adapter_dropout_matches_torch_under_the_same_seed():
    got, expected = pair(num_layers=2, dropout=0.5, bidirectional=True)
    x = torch.randn((T, B, I), dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    torch.manual_seed(5)
    want = expected(x)[0]
    torch.manual_seed(5)
    torch.testing.assert_close(got(x)[0], want, rtol=1e-10, atol=1e-12)


def test_adapter_inference_matches_torch():
    got, expected = pair(num_layers=2)
    x = torch.randn((T, B, I), dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        for a, b in zip(got(x)[1], expected(x)[1]):
            torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)


def test_adapter_second_order_gradients_raise():
    got, _ = pair()
    x = torch.randn((T, B, I), dtype=torch.float64, requires_grad=True)
    output = got(x)[0]
    (grad,) = torch.autograd.grad(output.sum(), got.weight_hr_l0, create_graph=True)
    with pytest.raises(RuntimeError, match="first-order gradients only"):
        grad.square().sum().backward()


def test_adapter_argument_errors_as_torch():
    for proj_size, message in ((-1, "proj_size must be a positive int"),
                               (H, "proj_size must be smaller than hidden_size")):
        with pytest.raises(ValueError, match=message):
            fltorch.LSTM(I, H, proj_size=proj_size)
        with pytest.raises(ValueError):
            torch.nn.LSTM(I, H, proj_size=proj_size)
    got, expected = pair()
    x = torch.zeros((T, B, I), dtype=torch.float64)
    wrong = (torch.zeros((1, B, H), dtype=torch.float64),) * 2
    with pytest.raises(RuntimeError, match="proj_size"):
        got(x, wrong)
    with pytest.raises(RuntimeError):
        expected(x, wrong)


def test_adapter_onnx_export_refuses_a_projection(tmp_path):
    got, _ = pair(dtype=torch.float32)
    x = torch.zeros((T, B, I))
    with pytest.raises(Exception, match="ONNX's LSTM operator has no projection"):
        torch.onnx.export(got, (x,), str(tmp_path / "lstm.onnx"), dynamo=False)


def test_bench_times_a_projected_training_step(monkeypatch, capsys):
    from fastlstm.tools import torch_adapter

    monkeypatch.setattr(torch_adapter, "PROJECTION_SIZES", ("tiny",))
    results = torch_adapter.run(sizes=["tiny"], repeat=2)
    printed = capsys.readouterr().out
    assert "tiny, projected: B=8 T=20 I=16 H=32 proj_size=16" in printed
    assert "ERROR" not in printed
    row = results["projection"]["tiny"]
    assert row["errors"] == [] and row["proj_size"] == 16
    assert set(row["median_ms"]) == {"adapter", "torch"}
    assert row["ratios"]["adapter_over_torch"] > 0


def test_adapter_under_torch_compile_matches_eager():
    """The projected path compiles with graph breaks around its kernels."""
    got, _ = pair(num_layers=2)
    x = torch.randn((B, T, I), dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    want = results(got, x)
    compiled = torch.compile(got)
    found = {name.replace("_orig_mod.", ""): value
             for name, value in results(compiled, x).items()}
    assert_close(found, want, torch.float64)


def test_adapter_torch_export_refuses_a_projection():
    got, _ = pair()
    with pytest.raises(RuntimeError, match="torch.export cannot export.*proj_size=3"):
        torch.export.export(got.eval(), (torch.zeros((T, B, I), dtype=torch.float64),))
