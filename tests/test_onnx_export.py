"""Tests of Sequential.export(path, format="onnx"): ONNX Runtime computes
what predict computes, for every layer, any batch size and sequence length,
and masks wherever the masked steps lie; every LSTM is an ONNX LSTM node;
a model that cannot be exported raises before anything is written."""
import os
import sys

import numpy as np
import pytest

import fastlstm as fl
from fastlstm import Sequential
from fastlstm._onnx import lstm_weights

onnx = pytest.importorskip("onnx", reason="the export needs onnx (the onnx extra)")
onnxruntime = pytest.importorskip("onnxruntime",
                                  reason="the exported models run in ONNX Runtime (the bench "
                                         "extra)")

# The model is built for BUILD = (batch, timesteps); it runs on batches of 1
# and of more, on sequences shorter and longer.
BUILD = (2, 5)
SHAPES = [(1, 3), (4, 8)]
FEATURES = 3
VOCABULARY = 9
ACTIVATIONS = ("tanh", "sigmoid", "hard_sigmoid")
MERGE_MODES = ("concat", "sum", "mul", "ave")
# Where the masked steps lie.
PATTERNS = ("end", "start", "middle")


def _keep(batch, timesteps, pattern, rng):
    """A mask (batch, timesteps): each sequence keeps between one step and
    all of them, its masked steps at the end, at the start or in the middle;
    with several sequences, the last keeps none."""
    keep = np.ones((batch, timesteps), bool)
    for row in range(batch):
        kept = int(rng.integers(1, timesteps + 1))
        if pattern == "end":
            keep[row, kept:] = False
        elif pattern == "start":
            keep[row, :timesteps - kept] = False
        else:
            # A gap between kept steps: the first and the last are kept.
            start = int(rng.integers(1, timesteps - 1))
            keep[row, start:start + max(1, timesteps - 1 - kept)] = False
            keep[row, -1] = True
    if batch > 1:
        keep[-1] = False
    return keep


def _features(batch, timesteps, rng, keep=None, mask_value=0.0):
    x = rng.standard_normal((batch, timesteps, FEATURES)).astype(np.float32)
    if keep is not None:
        x[~keep] = mask_value
    return x


def _tokens(batch, timesteps, rng, keep=None):
    tokens = rng.integers(1, VOCABULARY, (batch, timesteps))
    if keep is not None:
        tokens[~keep] = 0
    return tokens


def _built(layers, first_input):
    """The model of ``layers``, built on a BUILD-shaped input, with every
    weight drawn at random (biases and normalisation weights too, so that
    each of them shows in the outputs)."""
    model = Sequential(layers)
    model(first_input)
    rng = np.random.default_rng(1)
    model.set_weights([rng.uniform(-0.8, 0.8, w.shape) for w in model.get_weights()])
    return model


def _session(path):
    return onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])


def _lstm_nodes(path):
    return sum(node.op_type == "LSTM" for node in onnx.load(str(path)).graph.node)


def _check_export(tmp_path, layers, make_input, patterns=(None,)):
    """Export ``layers`` and compare ONNX Runtime with predict on every
    shape and mask pattern; ``make_input(batch, timesteps, rng, keep)``."""
    rng = np.random.default_rng(0)
    model = _built(layers, make_input(*BUILD, rng, None))
    path = tmp_path / "model.onnx"
    model.export(path, format="onnx")
    onnx.checker.check_model(str(path), full_check=True)
    recurrent = sum(isinstance(layer, (fl.LSTM, fl.Bidirectional)) for layer in model.layers)
    assert _lstm_nodes(path) == recurrent
    session = _session(path)
    for batch, timesteps in SHAPES:
        for pattern in patterns:
            keep = None if pattern is None else _keep(batch, timesteps, pattern, rng)
            x = make_input(batch, timesteps, rng, keep)
            expected = model.predict(x, verbose=0)
            (outputs,) = session.run(None, {"input": x})
            assert outputs.shape == expected.shape
            np.testing.assert_allclose(outputs, expected, rtol=1e-4, atol=2e-5,
                                       err_msg=f"batch {batch}, timesteps {timesteps}, "
                                               f"mask {pattern}")


# -- every layer, without masks ---------------------------------------------

@pytest.mark.parametrize("return_sequences", [True, False])
@pytest.mark.parametrize("go_backwards", [False, True])
def test_lstm_matches_predict(tmp_path, return_sequences, go_backwards):
    _check_export(tmp_path, [fl.LSTM(4, return_sequences=return_sequences,
                                     go_backwards=go_backwards, seed=0)], _features)


@pytest.mark.parametrize("activation", ACTIVATIONS)
@pytest.mark.parametrize("recurrent_activation", ACTIVATIONS)
def test_every_lstm_activation_matches_predict(tmp_path, activation, recurrent_activation):
    _check_export(tmp_path, [fl.LSTM(4, activation=activation,
                                     recurrent_activation=recurrent_activation,
                                     return_sequences=True, seed=0)], _features)


def test_lstm_without_bias_matches_predict(tmp_path):
    _check_export(tmp_path, [fl.LSTM(4, use_bias=False, return_sequences=True, seed=0)],
                  _features)


@pytest.mark.parametrize("merge_mode", MERGE_MODES)
@pytest.mark.parametrize("return_sequences", [True, False])
def test_bidirectional_matches_predict(tmp_path, merge_mode, return_sequences):
    _check_export(tmp_path, [fl.Bidirectional(
        fl.LSTM(4, return_sequences=return_sequences, activation="hard_sigmoid", seed=0),
        merge_mode=merge_mode)], _features)


def test_stacked_lstms_with_the_other_layers_match_predict(tmp_path):
    layers = [fl.LSTM(5, return_sequences=True, seed=0), fl.Dropout(0.5, seed=1),
              fl.LayerNormalization(), fl.LSTM(4, return_sequences=True, go_backwards=True,
                                               seed=2),
              fl.LayerNormalization(center=False, epsilon=0.1), fl.LSTM(3, seed=3),
              fl.Dense(2, seed=4)]
    _check_export(tmp_path, layers, _features)


@pytest.mark.parametrize("activation", [None, "relu", "sigmoid", "tanh", "softmax"])
def test_dense_matches_predict(tmp_path, activation):
    _check_export(tmp_path, [fl.LSTM(4, return_sequences=True, seed=0),
                             fl.Dense(3, activation=activation, seed=1),
                             fl.Dense(2, activation=activation, use_bias=False, seed=2)],
                  _features)


def test_layer_normalization_without_scale_matches_predict(tmp_path):
    _check_export(tmp_path, [fl.LayerNormalization(scale=False), fl.Dense(2, seed=0)],
                  _features)


def test_embedding_matches_predict(tmp_path):
    _check_export(tmp_path, [fl.Embedding(VOCABULARY, 4, seed=0), fl.LSTM(3, seed=1)],
                  _tokens)


# -- masks: at the end, at the start, in the middle -----------------------------

@pytest.mark.parametrize("return_sequences", [True, False])
@pytest.mark.parametrize("go_backwards", [False, True])
def test_masked_lstm_matches_predict(tmp_path, return_sequences, go_backwards):
    def make_input(batch, timesteps, rng, keep):
        return _features(batch, timesteps, rng, keep, mask_value=-1.0)

    _check_export(tmp_path, [fl.Masking(mask_value=-1.0),
                             fl.LSTM(4, return_sequences=return_sequences,
                                     go_backwards=go_backwards, seed=0)],
                  make_input, PATTERNS)


@pytest.mark.parametrize("merge_mode", MERGE_MODES)
@pytest.mark.parametrize("return_sequences", [True, False])
def test_masked_bidirectional_matches_predict(tmp_path, merge_mode, return_sequences):
    _check_export(tmp_path, [fl.Masking(), fl.Bidirectional(
        fl.LSTM(4, return_sequences=return_sequences, seed=0), merge_mode=merge_mode)],
        _features, PATTERNS)


def test_masked_stack_from_an_embedding_matches_predict(tmp_path):
    # The mask travels: reversed by go_backwards, through Dropout, Dense,
    # LayerNormalization and a Bidirectional, to the last LSTM.
    layers = [fl.Embedding(VOCABULARY, 4, mask_zero=True, seed=0),
              fl.LSTM(5, return_sequences=True, go_backwards=True, seed=1),
              fl.Dropout(0.3, seed=2), fl.Dense(4, activation="tanh", seed=3),
              fl.LayerNormalization(),
              fl.Bidirectional(fl.LSTM(3, return_sequences=True, seed=4)),
              fl.LSTM(3, return_sequences=True, seed=5),
              fl.Dense(VOCABULARY, activation="softmax", seed=6)]
    _check_export(tmp_path, layers, _tokens, PATTERNS)


def test_masked_steps_are_computed_not_only_cut_off(tmp_path):
    # A gap in the middle changes the result: the export follows the mask
    # rather than running over the padded steps.
    rng = np.random.default_rng(0)
    model = _built([fl.Masking(), fl.LSTM(4, seed=0)], _features(*BUILD, rng))
    path = tmp_path / "model.onnx"
    model.export(path)
    x = _features(1, 6, rng)
    gapped = x.copy()
    gapped[0, 2:4] = 0.0
    session = _session(path)
    with_gap = session.run(None, {"input": gapped})[0]
    np.testing.assert_allclose(with_gap, model.predict(gapped, verbose=0), rtol=1e-4, atol=2e-5)
    kept_only = model.predict(x[:, [0, 1, 4, 5]], verbose=0)
    np.testing.assert_allclose(with_gap, kept_only, rtol=1e-4, atol=2e-5)
    assert not np.allclose(with_gap, session.run(None, {"input": x})[0], atol=1e-3)


# -- the file ------------------------------------------------------------------

def test_batch_and_time_axes_are_dynamic(tmp_path):
    model = _built([fl.Embedding(VOCABULARY, 4), fl.LSTM(3, return_sequences=True)],
                   _tokens(*BUILD, np.random.default_rng(0)))
    path = tmp_path / "model.onnx"
    model.export(path)
    graph = onnx.load(str(path)).graph
    (given,), (output,) = graph.input, graph.output
    assert given.type.tensor_type.elem_type == onnx.TensorProto.INT64
    assert [d.dim_param for d in given.type.tensor_type.shape.dim] == ["batch", "timesteps"]
    dims = output.type.tensor_type.shape.dim
    assert [d.dim_param or d.dim_value for d in dims] == ["batch", "timesteps", 3]


def test_lstm_weights_reorder_the_gates_for_onnx():
    units = 2
    kernel = np.arange(3 * 4 * units, dtype=np.float32).reshape(3, 4 * units)
    recurrent_kernel = np.arange(units * 4 * units, dtype=np.float32).reshape(units, 4 * units)
    bias = np.arange(4 * units, dtype=np.float32)
    W, R, B = lstm_weights(kernel, recurrent_kernel, bias)
    i, f, c, o = np.split(kernel.T, 4)
    np.testing.assert_array_equal(W[0], np.concatenate([i, o, f, c]))
    assert R.shape == (1, 4 * units, units) and B.shape == (1, 8 * units)
    np.testing.assert_array_equal(B[0], [0, 1, 6, 7, 2, 3, 4, 5] + [0] * 8)
    assert not lstm_weights(kernel, recurrent_kernel, None)[2].any()


def test_export_replaces_an_existing_file(tmp_path):
    path = tmp_path / "model.onnx"
    path.write_bytes(b"old")
    model = _built([fl.LSTM(3)], _features(*BUILD, np.random.default_rng(0)))
    model.export(str(path))
    assert _lstm_nodes(path) == 1
    assert os.listdir(tmp_path) == ["model.onnx"]


# -- errors, before anything is written --------------------------------------------

def _exported_nothing(tmp_path, model, error, match, **kwargs):
    path = tmp_path / kwargs.pop("name", "model.onnx")
    with pytest.raises(error, match=match):
        model.export(path, **kwargs)
    assert os.listdir(tmp_path) == []


def _built_lstm(**kwargs):
    return _built([fl.LSTM(3, **kwargs)], _features(*BUILD, np.random.default_rng(0)))


def test_unbuilt_model_is_refused(tmp_path):
    _exported_nothing(tmp_path, Sequential([fl.LSTM(3)]), RuntimeError,
                      r"not built yet.*build\(input_shape\)")


def test_unknown_format_names_the_formats(tmp_path):
    _exported_nothing(tmp_path, _built_lstm(), ValueError,
                      r"format must be one of \['onnx'\], got str 'tf_saved_model'",
                      format="tf_saved_model")


def test_path_must_end_in_onnx(tmp_path):
    _exported_nothing(tmp_path, _built_lstm(), ValueError, r"filepath must end in '\.onnx'",
                      name="model.keras")


def test_float64_model_is_refused(tmp_path):
    model = _built([fl.LSTM(3, dtype="float64", name="wide")],
                   _features(*BUILD, np.random.default_rng(0)))
    _exported_nothing(tmp_path, model, ValueError,
                      r"layer 'wide' \(LSTM\) computes in float64, and ONNX Runtime's LSTM "
                      r"runs float32 only")


def test_float64_weights_export_from_a_float32_model(tmp_path):
    # What the float64 error advises.
    x = _features(*BUILD, np.random.default_rng(0))
    wide = _built([fl.LSTM(3, dtype="float64", return_sequences=True)], x)
    model = _built([fl.LSTM(3, return_sequences=True)], x)
    model.set_weights(wide.get_weights())
    path = tmp_path / "model.onnx"
    model.export(path)
    np.testing.assert_allclose(_session(path).run(None, {"input": x})[0],
                               wide.predict(x, verbose=0), rtol=1e-4, atol=2e-5)


def test_stateful_layer_is_refused(tmp_path):
    _exported_nothing(tmp_path, _built_lstm(stateful=True, name="carry"), ValueError,
                      r"layer 'carry' \(LSTM\) is stateful")


def test_other_layer_classes_are_refused_by_name(tmp_path):
    class Scaled(fl.Dense):
        pass

    model = _built([fl.LSTM(3), Scaled(2, name="scaled")],
                   _features(*BUILD, np.random.default_rng(0)))
    _exported_nothing(tmp_path, model, TypeError,
                      r"layer 'scaled' \(Scaled\) cannot be exported to ONNX: export writes "
                      r"fastlstm's own Embedding, Masking, Dropout, Dense")


def test_missing_onnx_says_what_to_install(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "onnx", None)
    _exported_nothing(tmp_path, _built_lstm(), ImportError, r'pip install "fastlstm\[onnx\]"')


def test_failed_write_leaves_no_file(tmp_path):
    # The path is a folder: the rename fails, and the temporary file goes.
    (tmp_path / "model.onnx").mkdir()
    with pytest.raises(OSError, match="cannot write filepath"):
        _built_lstm().export(tmp_path / "model.onnx")
    assert os.listdir(tmp_path) == ["model.onnx"]
    assert os.listdir(tmp_path / "model.onnx") == []
