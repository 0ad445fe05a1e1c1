"""int8 inference: ``quantize("int8")`` on layers and models.

What is pinned here: the VNNI and portable integer products give the same
bits (on every kernel build); the integer products equal the quantization
formula computed in NumPy; one quantized step stays within the error bound
derived in :func:`step_error_bound`; the quantized char model's held-out
loss is within 1% of the float32 model's; masks, go_backwards,
Bidirectional, stacks, states; save and load; the errors.
"""
import os

import numpy as np
import pytest

import fastlstm as fl
from fastlstm import _kernels, _quantize
from fastlstm._cpu import cpu_features
from fastlstm.layers import LSTM, Bidirectional, Dense, Embedding
from fastlstm.models import Sequential, load_model


def _rng(seed=0):
    return np.random.default_rng(seed)


def _both_paths(call):
    """``call()`` on the CPU's path, then on the portable loop."""
    native = call()
    with _quantize.portable_products():
        portable = call()
    return native, portable


def _quantize_rows(a):
    """ONNX Runtime's DynamicQuantizeLinear, per row, in NumPy (float32)."""
    a = np.asarray(a, np.float32)
    low = np.minimum(a.min(axis=1), 0).astype(np.float32)
    high = np.maximum(a.max(axis=1), 0).astype(np.float32)
    scale = np.where(high > low, (high - low) / np.float32(255), np.float32(1)).astype(np.float32)
    zero = np.clip(np.rint(-low / scale), 0, 255).astype(np.float32)
    u = np.clip(np.rint(a / scale[:, None]) + zero[:, None], 0, 255).astype(np.int64)
    return u, scale, zero.astype(np.int64)


def test_cpu_features_name_the_vnni_path():
    features = cpu_features()
    assert {"avx512vnni", "avxvnni"} <= set(features)
    path = _kernels.current().int8_path()
    if features["avx512vnni"] and features["avx512bw"]:
        assert path == "avx512vnni"
    elif features["avxvnni"]:
        assert path == "avxvnni"
    else:
        assert path == "portable"


@pytest.mark.parametrize("shape", [(1, 1, 1), (7, 13, 5), (70, 130, 200), (6, 64, 64)])
def test_integer_product_is_the_quantization_formula(kernel_build, shape):
    """x @ W as the kernels compute it equals (u - zp) @ q in exact integers,
    scaled: any integer slip (one unit of the sum) would show."""
    kernels = _kernels.current()
    M, K, N = shape
    rng = _rng(1)
    x = rng.standard_normal((M, K)).astype(np.float32)
    x[0, 0] = 0.0
    q = rng.integers(-127, 128, (K, N)).astype(np.int8)
    scale = rng.uniform(0.001, 0.01, N).astype(np.float32)
    bias = rng.standard_normal(N).astype(np.float32)
    packed, colsum = kernels.int8_pack(q)
    assert np.array_equal(colsum, q.astype(np.int64).sum(axis=0))
    native = kernels.int8_matmul(x, packed, colsum, scale, bias, False)
    portable = kernels.int8_matmul(x, packed, colsum, scale, bias, True)
    assert native.tobytes() == portable.tobytes()
    u, row_scale, zero = _quantize_rows(x)
    exact = (u - zero[:, None]) @ q.astype(np.int64)
    expected = exact.astype(np.float32) * (row_scale[:, None] * scale) + bias
    np.testing.assert_allclose(native, expected, rtol=2e-6, atol=2e-6 * np.abs(expected).max())


def test_integer_product_of_a_nan_row_is_nan():
    kernels = _kernels.current()
    x = np.ones((3, 8), np.float32)
    x[1, 2] = np.nan
    x[2, 5] = np.inf
    q = np.ones((8, 4), np.int8)
    out = kernels.int8_matmul(x, *kernels.int8_pack(q), np.ones(4, np.float32), None)
    assert np.all(np.isfinite(out[0])) and np.all(np.isnan(out[1:]))


def _layer_cases():
    # (batch, timesteps, input_dim, units, options): sizes off every
    # multiple (4 inputs to a group, 64 gate columns, 6 rows to a tile).
    return [
        (1, 1, 1, 1, {}),
        (3, 5, 7, 13, {}),
        (9, 11, 30, 17, {"go_backwards": True}),
        (13, 7, 64, 48, {"activation": "hard_sigmoid", "recurrent_activation": "tanh"}),
        (20, 9, 5, 70, {"use_bias": False}),
    ]


@pytest.mark.parametrize("case", _layer_cases())
def test_vnni_and_portable_paths_agree_bit_for_bit(kernel_build, case):
    batch, timesteps, input_dim, units, options = case
    rng = _rng(2)
    x = rng.standard_normal((batch, timesteps, input_dim)).astype(np.float32)
    mask = rng.random((batch, timesteps)) < 0.7
    h0 = rng.standard_normal((batch, units)).astype(np.float32)
    c0 = rng.standard_normal((batch, units)).astype(np.float32)
    layer = LSTM(units, return_sequences=True, return_state=True, seed=3, **options)
    layer.build(input_dim)
    layer.quantize("int8")
    native, portable = _both_paths(lambda: layer(x, initial_state=[h0, c0], mask=mask))
    for a, b in zip(native, portable):
        assert a.tobytes() == b.tobytes()


def step_error_bound(x, h0, c0, float_layer, quantized_layer):
    """Elementwise bounds on |h - h_q| and |c - c_q| after one step from the
    same x, h0 and c0.

    Derivation. Each weight column n is ``w = ws_n q + e_w`` with
    ``|e_w| <= ws_n / 2``; each input row ``a = s (u - zp) + e_a`` with
    ``|e_a| <= s / 2`` (rounding to nearest on a grid of step s that covers
    the row's range). So each pre-activation z_n = sum_k a_k w_kn is off by
    at most
        E_n = sum_k (|a_k| ws_n / 2 + |w_kn| s / 2 + s ws_n / 4)
    summed over the input and the recurrent product (the integer sums are
    exact and the dequantization adds float32 rounding only). The gates are
    Lipschitz: sigmoid 1/4, tanh 1 (hard_sigmoid 1/6), so
        d_i <= E_i/4, d_f <= E_f/4, d_g <= E_g, d_o <= E_o/4,
    and with |i|, |f|, |o| <= 1, |g|, |tanh| <= 1:
        |dc| <= |c0| d_f + d_i + d_g + d_i d_g
        |dh| <= d_o + |dc| + d_o |dc|
    (|d(o tanh c)| <= |do| |tanh c| + |o + do| |d tanh c|, tanh 1-Lipschitz).
    """
    params = float_layer.params
    qparams = quantized_layer.params
    units = float_layer.units
    total = np.zeros((x.shape[0], 4 * units))
    for a, w, ws in ((x, params["kernel"], qparams["kernel_scale"]),
                     (h0, params["recurrent_kernel"], qparams["recurrent_kernel_scale"])):
        a = a.astype(np.float64)
        w = np.abs(w.astype(np.float64))
        ws = ws.astype(np.float64)
        s = (np.maximum(a.max(axis=1), 0) - np.minimum(a.min(axis=1), 0)) / 255
        total += (np.abs(a).sum(axis=1)[:, None] * ws / 2 + s[:, None] * w.sum(axis=0) / 2
                  + a.shape[1] * s[:, None] * ws / 4)
    e_i, e_f, e_g, e_o = np.split(total, 4, axis=1)
    d_i, d_f, d_g, d_o = e_i / 4, e_f / 4, e_g, e_o / 4
    d_c = np.abs(c0) * d_f + d_i + d_g + d_i * d_g
    d_h = d_o + d_c + d_o * d_c
    return d_h, d_c


@pytest.mark.parametrize("input_dim, units", [(8, 16), (64, 96)])
def test_one_quantized_step_is_within_the_derived_bound(input_dim, units):
    rng = _rng(4)
    batch = 12
    x = rng.standard_normal((batch, 1, input_dim)).astype(np.float32)
    h0 = np.tanh(rng.standard_normal((batch, units))).astype(np.float32)
    c0 = rng.standard_normal((batch, units)).astype(np.float32)
    float_layer = LSTM(units, return_state=True, seed=5)
    float_layer.build(input_dim)
    quantized = LSTM(units, return_state=True, seed=5)
    quantized.set_weights(float_layer.get_weights())
    quantized.quantize("int8")
    with fl.no_grad():
        _, h, c = float_layer(x, initial_state=[h0, c0])
        _, h_q, c_q = quantized(x, initial_state=[h0, c0])
    d_h, d_c = step_error_bound(x[:, 0], h0, c0, float_layer, quantized)
    # 1e-5: the float32 rounding of both computations, beside a bound of 1e-2 or so.
    assert np.all(np.abs(h - h_q) <= d_h + 1e-5)
    assert np.all(np.abs(c - c_q) <= d_c + 1e-5)
    # The bound is not vacuous: the errors are a sizeable part of it, and nonzero.
    assert 0 < np.abs(h - h_q).max() < d_h.max()


def _char_data():
    from fastlstm.tools import demo

    text = demo.corpus()[:60000]
    characters = sorted(set(text))
    lookup = np.zeros(128, dtype=np.int64)
    lookup[[ord(ch) for ch in characters]] = np.arange(len(characters))
    codes = lookup[np.frombuffer(text.encode("ascii"), dtype=np.uint8)]
    split = int(len(codes) * 0.9)
    x, y = demo._windows(codes[:split], 50)
    x_held, y_held = demo._windows(codes[split:], 50)
    return len(characters), x, y, x_held, y_held


def test_char_model_held_out_loss_within_one_percent():
    vocabulary, x, y, x_held, y_held = _char_data()
    from fastlstm.tools import demo

    model = demo.build_model(vocabulary, 128, seed=0)
    model.fit(x, y, batch_size=32, epochs=2, verbose=0)
    float_loss = model.evaluate(x_held, y_held, batch_size=64, verbose=0)[0]
    model.quantize("int8")
    int8_loss = model.evaluate(x_held, y_held, batch_size=64, verbose=0)[0]
    # Trained: well below uniform guessing, so the comparison means something.
    assert float_loss < 0.8 * np.log(vocabulary)
    assert abs(int8_loss - float_loss) <= 0.01 * float_loss


def _model_and_data(seed=6):
    rng = _rng(seed)
    codes = rng.integers(1, 20, (10, 12))
    codes[0, :4] = 0      # padding at the start
    codes[1, -5:] = 0     # at the end
    codes[2, 3:6] = 0     # in the middle
    model = Sequential([
        Embedding(20, 8, mask_zero=True, seed=seed),
        LSTM(24, return_sequences=True, seed=seed + 1),
        Bidirectional(LSTM(16, return_sequences=True, seed=seed + 2), merge_mode="sum"),
        LSTM(12, return_sequences=True, go_backwards=True, seed=seed + 3),
        LSTM(10, seed=seed + 4),
        Dense(5, activation="softmax", seed=seed + 5),
    ])
    model.build((None, 12))
    return model, codes


def test_quantized_model_tracks_the_float_model_with_masks_and_stacks(kernel_build):
    model, codes = _model_and_data()
    expected = model.predict(codes, verbose=0)
    model.quantize("int8")
    native, portable = _both_paths(lambda: model.predict(codes, verbose=0))
    assert native.tobytes() == portable.tobytes()
    np.testing.assert_allclose(native, expected, atol=0.02)
    assert [getattr(layer, "quantization_mode", None) for layer in model.layers] == [
        None, "int8", "int8", "int8", "int8", "int8"]


def test_masked_steps_carry_the_state_in_the_quantized_layer():
    rng = _rng(7)
    x = rng.standard_normal((4, 8, 3)).astype(np.float32)
    keep = np.ones((4, 8), bool)
    keep[:, 2:5] = False
    layer = LSTM(6, return_sequences=True, return_state=True, seed=8)
    layer.build(3)
    layer.quantize("int8")
    y, h, c = layer(x, mask=keep)
    # Masked steps repeat the previous output; the steps kept give the
    # states of the sequence without them, exactly (same quantized inputs).
    assert np.array_equal(y[:, 2], y[:, 1]) and np.array_equal(y[:, 4], y[:, 1])
    _, h_short, c_short = layer(np.ascontiguousarray(x[:, keep[0]]))
    assert np.array_equal(h, h_short) and np.array_equal(c, c_short)


def test_quantized_stateful_layer_and_cell_continue_the_sequence():
    rng = _rng(9)
    x = rng.standard_normal((2, 6, 4)).astype(np.float32)
    whole = LSTM(5, return_sequences=True, seed=10)
    whole.build(4)
    whole.quantize("int8")
    expected = whole(x)
    stateful = LSTM(5, return_sequences=True, stateful=True, seed=10)
    stateful.build(4)
    stateful.quantize("int8")
    stateful.set_weights(whole.get_weights())
    halves = np.concatenate([stateful(x[:, :3]), stateful(x[:, 3:])], axis=1)
    assert np.array_equal(halves, expected)
    h = c = np.zeros((2, 5), np.float32)
    for t in range(6):
        output, (h, c) = whole.cell(x[:, t], [h, c])
    assert np.array_equal(output, expected[:, -1])


def test_quantized_weights_are_int8_with_column_scales():
    layer = LSTM(8, seed=11)
    layer.build(5)
    kernel = layer.params["kernel"].copy()
    layer.quantize("int8")
    params = layer.params
    assert layer.quantization_mode == "int8"
    assert list(params) == ["kernel", "recurrent_kernel", "bias", "kernel_scale",
                            "recurrent_kernel_scale"]
    assert params["kernel"].dtype == np.int8 and params["recurrent_kernel"].dtype == np.int8
    assert params["kernel_scale"].shape == (32,) and params["bias"].dtype == np.float32
    assert np.abs(params["kernel"]).max(axis=0).tolist() == [127] * 32
    error = np.abs(params["kernel"] * params["kernel_scale"] - kernel)
    assert np.all(error <= params["kernel_scale"] / 2 * (1 + 1e-6))


def test_save_and_load_keep_the_quantized_model(tmp_path):
    model, codes = _model_and_data()
    model.quantize("int8")
    expected = model.predict(codes, verbose=0)
    path = os.fspath(tmp_path / "model.fastlstm")
    model.save(path)
    restored = load_model(path)
    assert restored.layers[1].quantization_mode == "int8"
    assert restored.layers[2].forward_layer.params["kernel"].dtype == np.int8
    assert restored.predict(codes, verbose=0).tobytes() == expected.tobytes()
    # Weights files too, into a quantized model of the same layers.
    weights = os.fspath(tmp_path / "weights.npz")
    model.save_weights(weights)
    other, _ = _model_and_data(seed=12)
    other.quantize("int8")
    other.load_weights(weights)
    assert other.predict(codes, verbose=0).tobytes() == expected.tobytes()


def test_changed_quantized_weights_are_repacked():
    layer = Dense(4, seed=13)
    x = _rng(14).standard_normal((3, 6)).astype(np.float32)
    layer.build(6)
    layer.quantize("int8")
    before = layer(x)
    kernel, bias, scale = layer.get_weights()
    layer.set_weights([-kernel, bias, scale])
    np.testing.assert_allclose(layer(x) - bias, -(before - bias), atol=1e-5)


def test_unknown_mode_names_the_modes():
    layer = LSTM(4, seed=0)
    layer.build(3)
    with pytest.raises(ValueError, match=r"mode must be one of \['int8'\].*'int4'"):
        layer.quantize("int4")
    model = Sequential([Dense(2)])
    model.build((None, 3))
    with pytest.raises(ValueError, match="'float8'"):
        model.quantize("float8")


def test_quantize_refuses_unbuilt_float64_and_twice():
    with pytest.raises(RuntimeError, match="not built"):
        LSTM(4).quantize("int8")
    with pytest.raises(RuntimeError, match="not built"):
        Sequential([Dense(2)]).quantize("int8")
    wide = Sequential([LSTM(4, return_sequences=True), LSTM(3, dtype="float64")])
    wide.build((None, 5, 2))
    with pytest.raises(ValueError, match="float64"):
        wide.quantize("int8")
    # Checked for every layer before any changes.
    assert wide.layers[0].quantization_mode is None
    layer = Dense(3)
    layer.build(2)
    layer.quantize("int8")
    with pytest.raises(ValueError, match="already quantized"):
        layer.quantize("int8")


def test_quantized_model_refuses_training():
    model, codes = _model_and_data()
    model.compile(optimizer="adam", loss="sparse_categorical_crossentropy")
    model.quantize("int8")
    labels = np.zeros(codes.shape[0], np.int64)
    with pytest.raises(RuntimeError, match="quantized to int8.*train the float32 model"):
        model.fit(codes, labels, epochs=1, verbose=0)
    with pytest.raises(RuntimeError, match="quantized to int8"):
        model.train_on_batch(codes, labels)
    lstm = model.layers[1]
    lstm(np.ones((2, 3, 8), np.float32))
    with pytest.raises(RuntimeError, match="quantized to int8"):
        lstm.backward(np.ones((2, 3, 24), np.float32))
    with pytest.raises(ValueError, match="training=True.*quantized"):
        lstm(np.ones((2, 3, 8), np.float32), training=True)


def test_quantized_model_exports_onnxruntime_quantized_operators(tmp_path):
    """The exported graph runs the layers' own int8 weights and scales in ONNX
    Runtime's DynamicQuantizeLSTM and DynamicQuantizeMatMul; ONNX Runtime
    quantizes activations per tensor where fastlstm does per row, so the two
    agree to int8 accuracy, not to the bit."""
    onnx = pytest.importorskip("onnx")
    onnxruntime = pytest.importorskip("onnxruntime")
    model, codes = _model_and_data()
    model.quantize("int8")
    expected = model.predict(codes, verbose=0)
    path = os.fspath(tmp_path / "model.onnx")
    model.export(path)
    graph = onnx.load(path).graph
    ops = [node.op_type for node in graph.node]
    assert ops.count("DynamicQuantizeLSTM") == 4 and ops.count("DynamicQuantizeMatMul") == 1
    assert "LSTM" not in ops and "MatMul" not in ops
    session = onnxruntime.InferenceSession(path, providers=["CPUExecutionProvider"])
    served = session.run(None, {"input": codes.astype(np.int64)})[0]
    # Softmax outputs in [0, 1], apart by the noise of two quantizations of
    # the activations (1e-5 here; the int8 model is 1e-5 from the float one).
    np.testing.assert_allclose(served, expected, atol=1e-3)
    assert np.abs(served - expected).max() > 0


def test_quantized_set_weights_checks_int8_values():
    layer = Dense(3)
    layer.build(2)
    layer.quantize("int8")
    kernel, bias, scale = layer.get_weights()
    with pytest.raises(ValueError, match="int8 values"):
        layer.set_weights([kernel + 0.5, bias, scale])
    with pytest.raises(ValueError, match="int8 values"):
        layer.set_weights([kernel.astype(np.int32) * 300, bias, scale])


def test_bench_int8_times_float_int8_and_onnxruntime(tmp_path):
    pytest.importorskip("onnxruntime")
    from fastlstm.tools.int8 import run

    import io
    import json

    out = io.StringIO()
    path = os.fspath(tmp_path / "int8.json")
    results = run(sizes=["tiny"], repeat=3, threads=1, json_path=path, file=out)
    tiny = results["sizes"]["tiny"]
    assert set(tiny["ms"]) == {"float32", "int8", "ort_int8"}
    assert tiny["int8_over_float32"] == tiny["ms"]["int8"] / tiny["ms"]["float32"]
    # Both int8 models compute the float model's outputs to int8 accuracy.
    assert 0 < tiny["max_abs_difference_from_float32"]["int8"] < 0.05
    assert 0 < tiny["max_abs_difference_from_float32"]["ort_int8"] < 0.05
    assert "tiny" in out.getvalue() and "int8/ORT" in out.getvalue()
    with open(path) as stream:
        assert json.load(stream)["sizes"]["tiny"]["ms"] == tiny["ms"]


def test_show_config_names_the_int8_path():
    import io

    out = io.StringIO()
    fl.show_config(file=out)
    assert f"int8 products {_kernels.current().int8_path()}" in out.getvalue()
