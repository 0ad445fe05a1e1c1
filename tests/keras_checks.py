"""fastlstm.keras.LSTM against keras.layers.LSTM on the backend Keras runs on.

Run as a script by tests/test_keras_layer.py, in a process of its own per
backend (Keras picks its backend when first imported, from KERAS_BACKEND).
It runs every check of :data:`CHECKS` and prints one JSON line: per check,
None when it passed, else the text of its failure.
"""
import itertools
import json
import os
import sys
import tempfile
import traceback

import numpy as np

# max |got - expected| of float32 results, as the issue asks: the kernels and
# Keras' loop sum the same products in other orders.
TOLERANCE = 1e-5
BATCH, TIMESTEPS, FEATURES, UNITS = 4, 7, 3, 5


def _keras():
    import keras

    return keras


def _numpy(value):
    return _keras().ops.convert_to_numpy(value)


def _as_list(value):
    return list(value) if isinstance(value, (list, tuple)) else [value]


def assert_close(got, expected, what, tolerance=TOLERANCE):
    got, expected = _as_list(got), _as_list(expected)
    assert len(got) == len(expected), f"{what}: {len(got)} results, expected {len(expected)}"
    for k, (g, e) in enumerate(zip(got, expected)):
        g, e = _numpy(g), _numpy(e)
        assert g.shape == e.shape, f"{what}[{k}]: shape {g.shape}, expected {e.shape}"
        error = float(np.max(np.abs(g - e))) if g.size else 0.0
        assert error <= tolerance, f"{what}[{k}]: max |difference| {error:.3g} > {tolerance}"


def masks():
    """Boolean masks by name: steps dropped at the start, the end, the
    middle, and one sequence with no step kept (each masks all but the first
    of its sequences)."""
    result = {"none": None}
    for name, steps in (("start", slice(0, 2)), ("end", slice(-3, None)),
                        ("middle", slice(3, 5))):
        mask = np.ones((BATCH, TIMESTEPS), bool)
        mask[1:, steps] = False
        result[name] = mask
    empty = np.ones((BATCH, TIMESTEPS), bool)
    empty[2] = False
    empty[3, ::2] = False
    result["a sequence fully masked, one every other step"] = empty
    return result


def inputs(seed=0, shape=(BATCH, TIMESTEPS, FEATURES)):
    return np.random.default_rng(seed).standard_normal(shape).astype(np.float32)


def pair(batch=None, **options):
    """keras.layers.LSTM and fastlstm.keras.LSTM with the same weights, built
    for inputs of ``batch`` sequences (None: any)."""
    keras = _keras()
    import fastlstm.keras

    expected = keras.layers.LSTM(UNITS, **options)
    got = fastlstm.keras.LSTM(UNITS, **options)
    expected.build((batch, TIMESTEPS, FEATURES))
    got.build((batch, TIMESTEPS, FEATURES))
    # Random biases, so that every gate's bias is tested.
    weights = expected.get_weights()
    if len(weights) == 3:
        weights[2] = np.random.default_rng(9).standard_normal(weights[2].shape).astype("float32")
        expected.set_weights(weights)
    got.set_weights(expected.get_weights())
    return got, expected


def check_outputs_and_states():
    """Every combination of return_sequences, return_state, go_backwards and
    initial_state gives Keras' outputs and states, each call on the
    sequences of every mask of :func:`masks` at once."""
    kinds = [mask for mask in masks().values() if mask is not None]
    x = np.concatenate([inputs(seed) for seed in range(len(kinds))])
    mask = np.concatenate(kinds)
    rng = np.random.default_rng(1)
    state = [rng.standard_normal((len(x), UNITS)).astype(np.float32) for _ in range(2)]
    for sequences, with_state, backwards in itertools.product((False, True), repeat=3):
        options = dict(return_sequences=sequences, return_state=with_state,
                       go_backwards=backwards)
        got, expected = pair(**options)
        for given_mask, initial in itertools.product((None, mask), (None, state)):
            assert_close(got(x, mask=given_mask, initial_state=initial),
                         expected(x, mask=given_mask, initial_state=initial),
                         f"{options}, mask {given_mask is not None}, "
                         f"initial_state {initial is not None}")


def check_other_arguments():
    """use_bias=False, the other activations, unit_forget_bias=False."""
    x = inputs()
    mask = masks()["middle"]
    for options in (dict(use_bias=False), dict(activation="hard_sigmoid"),
                    dict(activation="sigmoid", recurrent_activation="hard_sigmoid"),
                    dict(recurrent_activation="tanh", unit_forget_bias=False)):
        got, expected = pair(return_sequences=True, return_state=True, **options)
        assert_close(got(x, mask=mask), expected(x, mask=mask), str(options))


def check_weights_both_ways():
    """Same weight shapes and order; weights move from either layer to the other."""
    got, expected = pair()
    assert [w.shape for w in got.weights] == [w.shape for w in expected.weights]
    assert [w.path.split("/")[-1] for w in got.weights] == ["kernel", "recurrent_kernel",
                                                            "bias"]
    x = inputs()
    weights = [w * 0.5 for w in got.get_weights()]
    got.set_weights(weights)
    expected.set_weights(got.get_weights())
    assert_close(got(x), expected(x), "after keras_lstm.set_weights(fastlstm_lstm.get_weights())")


def _models(layer_class, seed=0):
    """Models built the same way from either LSTM class, by name."""
    keras = _keras()
    keras.utils.set_random_seed(seed)
    models = {}
    tokens = keras.Input((TIMESTEPS,), dtype="int32")
    y = keras.layers.Embedding(10, FEATURES, mask_zero=True)(tokens)
    y = layer_class(6, return_sequences=True, kernel_regularizer="l2")(y)
    y = layer_class(UNITS)(y)
    models["embedding mask_zero, stacked"] = keras.Model(tokens, keras.layers.Dense(2)(y))

    models["Masking, Bidirectional, Sequential"] = keras.Sequential([
        keras.Input((TIMESTEPS, FEATURES)), keras.layers.Masking(0.0),
        keras.layers.Bidirectional(layer_class(UNITS, return_sequences=True)),
        layer_class(UNITS, go_backwards=True, return_sequences=True),
        keras.layers.Bidirectional(layer_class(UNITS), merge_mode="sum"),
        keras.layers.Dense(2)])

    encoder_inputs = keras.Input((TIMESTEPS, FEATURES))
    _, h, c = layer_class(UNITS, return_state=True)(encoder_inputs)
    decoder_inputs = keras.Input((TIMESTEPS - 2, FEATURES))
    decoded = layer_class(UNITS, return_sequences=True)(decoder_inputs, initial_state=[h, c])
    models["encoder-decoder, initial_state"] = keras.Model(
        [encoder_inputs, decoder_inputs], keras.layers.Dense(2)(decoded))
    return models


def _data(name, seed=0):
    rng = np.random.default_rng(seed)
    if name.startswith("embedding"):
        x = rng.integers(1, 10, (BATCH * 2, TIMESTEPS))
        x[1, :2] = x[2, -3:] = x[3, 2:4] = 0
        return x.astype("int32"), rng.standard_normal((BATCH * 2, 2)).astype("float32")
    x = inputs(seed, (BATCH * 2, TIMESTEPS, FEATURES))
    if name.startswith("Masking"):
        x[1, :2] = x[2, -3:] = x[3, 2:4] = 0.0
        return x, rng.standard_normal((BATCH * 2, 2)).astype("float32")
    decoder = inputs(seed + 1, (BATCH * 2, TIMESTEPS - 2, FEATURES))
    return [x, decoder], rng.standard_normal((BATCH * 2, TIMESTEPS - 2, 2)).astype("float32")


def _model_pairs(seed=0):
    import fastlstm.keras

    keras = _keras()
    expected = _models(keras.layers.LSTM, seed)
    got = _models(fastlstm.keras.LSTM, seed)
    for name in expected:
        got[name].set_weights(expected[name].get_weights())
        yield name, got[name], expected[name]


def check_models_predict_and_sgd_step():
    """Sequential and functional models (masks from Embedding and Masking,
    Bidirectional, stacked, encoder-decoder): the same predictions, and one
    SGD step of train_on_batch gives the same weights."""
    keras = _keras()
    for name, got, expected in _model_pairs():
        x, y = _data(name)
        assert_close(got.predict(x, verbose=0), expected.predict(x, verbose=0),
                     f"{name}: predict")
        for model in (got, expected):
            model.compile(optimizer=keras.optimizers.SGD(0.5), loss="mse")
        losses = [model.train_on_batch(x, y) for model in (got, expected)]
        assert_close(losses[0], losses[1], f"{name}: loss")
        assert_close(got.get_weights(), expected.get_weights(), f"{name}: weights after a step")


def check_fit_loss_history():
    """A few epochs of fit with Adam give the same loss history; fit frees
    every cache it made, and predict and evaluate keep none."""
    import gc

    from fastlstm import _handles

    keras = _keras()
    for name, got, expected in _model_pairs(seed=1):
        x, y = _data(name, seed=2)
        histories = []
        for model in (got, expected):
            model.compile(optimizer=keras.optimizers.Adam(0.01), loss="mse")
            histories.append(model.fit(x, y, batch_size=BATCH, epochs=3, shuffle=False,
                                       verbose=0).history["loss"])
        assert_close(np.array(histories[0]), np.array(histories[1]), f"{name}: loss history")
        assert_close(got.get_weights(), expected.get_weights(), f"{name}: weights after fit")
        got.predict(x, verbose=0)
        got.evaluate(x, y, verbose=0)
        gc.collect()
        assert _handles.pending() == 0, f"{name}: {_handles.pending()} caches left"


def check_stateful():
    """A stateful layer carries its states between calls until reset_state."""
    x = inputs()
    got, expected = pair(BATCH, stateful=True, return_sequences=True)
    for call in range(3):
        assert_close(got(x[:, call:]), expected(x[:, call:]), f"call {call}")
    assert_close(got.states, expected.states, "states")
    got.reset_state()
    expected.reset_state()
    assert_close(got(x), expected(x), "after reset_state")


def check_keras_file_round_trip():
    """model.save to a .keras file, then keras.models.load_model without
    custom_objects: the same class, configuration and predictions."""
    keras = _keras()
    import fastlstm.keras

    name, got, _ = next(_model_pairs())
    x, _ = _data(name)
    with tempfile.TemporaryDirectory() as directory:
        path = os.path.join(directory, "m.keras")
        got.save(path)
        loaded = keras.models.load_model(path)
    lstms = [layer for layer in loaded.layers if isinstance(layer, keras.layers.LSTM)]
    assert [type(layer) for layer in lstms] == [fastlstm.keras.LSTM] * 2, lstms
    assert lstms[0].get_config() == got.layers[2].get_config()
    assert_close(loaded.predict(x, verbose=0), got.predict(x, verbose=0), "predictions")


def check_dropout_follows_training():
    """Dropout applies in training only; dropout alone draws Keras' masks."""
    x = inputs()
    import fastlstm.keras

    layer = fastlstm.keras.LSTM(UNITS, dropout=0.4, recurrent_dropout=0.4, seed=3,
                                return_sequences=True)
    inference = _numpy(layer(x, training=False))
    assert_close(layer(x), inference, "two inference calls")
    trained = [_numpy(layer(x, training=True)) for _ in range(2)]
    for output in trained:
        assert np.max(np.abs(output - inference)) > 1e-3, "training output equals inference"
    assert np.max(np.abs(trained[0] - trained[1])) > 1e-3, "two training calls, one mask"
    got, expected = pair(dropout=0.4, seed=5, return_sequences=True)
    assert_close(got(x, training=True), expected(x, training=True), "dropout=0.4, seed=5")


def check_dropout_masks_applied_as_keras_applies_them():
    """Training with dropout and recurrent_dropout, both classes given the
    same masks (one per sequence, shared by the four gates, the case where
    the two agree): the same outputs and states, and one SGD step of
    train_on_batch gives the same weights, through a masked sequence."""
    keras = _keras()
    rng = np.random.default_rng(4)
    masks_by_rate = {rate: (rng.random(shape) > rate).astype("float32") / (1 - rate)
                     for rate, shape in ((0.3, (BATCH, FEATURES)), (0.4, (BATCH, UNITS)))}
    x = inputs()
    mask = masks()["middle"]
    y = np.random.default_rng(5).standard_normal((BATCH, 2)).astype("float32")

    def given_masks(layer):
        cell = layer.cell
        cell.get_dropout_mask = lambda step_input: [keras.ops.convert_to_tensor(
            masks_by_rate[0.3])] * 4
        cell.get_recurrent_dropout_mask = lambda step_input: [keras.ops.convert_to_tensor(
            masks_by_rate[0.4])] * 4
        return layer

    got, expected = (given_masks(layer) for layer in pair(
        dropout=0.3, recurrent_dropout=0.4, return_sequences=True, return_state=True))
    trained = got(x, mask=mask, training=True)
    assert_close(trained, expected(x, mask=mask, training=True), "training outputs")
    assert np.max(np.abs(_numpy(trained[0]) - _numpy(got(x, mask=mask)[0]))) > 1e-3
    models = []
    for layer in pair(dropout=0.3, recurrent_dropout=0.4):
        model = keras.Sequential([keras.Input((TIMESTEPS, FEATURES)), keras.layers.Masking(0.0),
                                  given_masks(layer), keras.layers.Dense(2)])
        model.compile(optimizer=keras.optimizers.SGD(0.5), loss="mse")
        models.append(model)
    models[0].set_weights(models[1].get_weights())
    x_padded = x.copy()
    x_padded[~mask] = 0.0
    losses = [model.train_on_batch(x_padded, y) for model in models]
    assert_close(losses[0], losses[1], "loss")
    assert_close(models[0].get_weights(), models[1].get_weights(), "weights after a step")


def check_mixed_precision():
    """Under mixed_float16 the layer computes in float32 and returns float16."""
    keras = _keras()
    x = inputs()
    _, expected = pair(return_sequences=True)
    keras.mixed_precision.set_dtype_policy("mixed_float16")
    try:
        import fastlstm.keras

        got = fastlstm.keras.LSTM(UNITS, return_sequences=True)
        got.build((None, TIMESTEPS, FEATURES))
    finally:
        keras.mixed_precision.set_dtype_policy("float32")
    got.set_weights(expected.get_weights())
    output = got(x)
    assert keras.backend.standardize_dtype(output.dtype) == "float16", output.dtype
    # The input and the result are rounded to float16 (11 significant bits).
    assert_close(keras.ops.cast(output, "float32"), expected(x), "mixed_float16", 2e-3)


def check_unsupported_arguments_are_named():
    import fastlstm.keras

    for options, named in ((dict(unroll=True), "unroll=True"),
                           (dict(use_cudnn=True), "use_cudnn=True"),
                           (dict(implementation=1), "implementation=1"),
                           (dict(activation="relu"), "activation"),
                           (dict(recurrent_activation="softmax"), "recurrent_activation")):
        try:
            fastlstm.keras.LSTM(UNITS, **options)
        except ValueError as error:
            assert named in str(error), f"{options}: {error}"
        else:
            raise AssertionError(f"{options} was accepted")
    fastlstm.keras.LSTM(UNITS, use_cudnn=False, unroll=False, implementation=2)


def torch_check_compiled_model_gradients():
    """torch.compile of a Keras model using the layer (dynamo through Keras,
    then AOT autograd on the operator's fake and autograd registrations)
    gives the eager gradients of keras.layers.LSTM."""
    import torch

    name, got, expected = next(_model_pairs())
    x, _ = _data(name)
    x = torch.from_numpy(x)
    compiled = torch.compile(got, backend="aot_eager")
    gradients = []
    for model in (compiled, expected):
        loss = (model(x) ** 2).sum()
        weights = [w.value for w in expected.trainable_weights] if model is expected else \
            [w.value for w in got.trainable_weights]
        gradients.append(torch.autograd.grad(loss, weights))
    assert_close(list(gradients[0]), list(gradients[1]), "gradients")


def float64_check():
    """dtype="float64" computes in float64: Keras' results without a mask,
    and with one fastlstm's float64 NumPy reference (Keras' masked loop on
    PyTorch rounds through float32 somewhere: 1.4e-8 away from it)."""
    import fastlstm

    keras = _keras()
    x = inputs().astype("float64")
    mask = masks()["middle"]
    got, expected = pair(return_sequences=True, return_state=True, dtype="float64")
    results = got(x)
    assert [keras.backend.standardize_dtype(r.dtype) for r in results] == ["float64"] * 3
    assert_close(results, expected(x), "float64", 1e-12)
    reference = fastlstm.lstm_forward(x, *got.get_weights(), mask=mask, backend="reference",
                                      return_cache=False)[:3]
    assert_close(got(x, mask=mask), list(reference), "float64, masked", 1e-12)


def _gradients(layer, x, mode):
    """Gradients of a loss through ``layer`` with respect to its input and
    its weights, by ``mode``: "eager"; "tape inside" a tf.function, as
    Keras' fit does; "tape outside" a tf.function traced under it; "traced
    without a tape" (called once for inference), then differentiated from
    outside; "traced under a tape, run without", three inference runs of a
    function traced under a tape, then differentiated."""
    import tensorflow as tf

    from fastlstm import _handles

    x = tf.constant(x)
    weights = [w.value for w in layer.trainable_weights]

    def loss(x):
        return tf.reduce_sum(tf.concat([tf.reshape(t, [-1]) for t in layer(x)], 0) ** 2)

    if mode == "tape inside":
        @tf.function(autograph=False)
        def step(x):
            with tf.GradientTape() as tape:
                tape.watch(x)
                value = loss(x)
            return tape.gradient(value, [x, *weights])

        return step(x)
    if mode != "eager":
        loss = tf.function(loss, autograph=False)
    if mode == "traced without a tape":
        loss(x)
    if mode == "traced under a tape, run without":
        with tf.GradientTape():
            loss(x)
        for _ in range(3):
            loss(x)
        # Each run forgets the cache its predecessor kept for nothing.
        assert _handles.pending() <= 1, f"{mode}: {_handles.pending()} caches"
    with tf.GradientTape() as tape:
        tape.watch(x)
        value = loss(x)
    return tape.gradient(value, [x, *weights])


def tensorflow_check_gradients_eager_and_in_graphs():
    """Keras' gradients eagerly and in tf.function graphs however traced and
    differentiated (see _gradients); no cache is left behind."""
    import gc

    from fastlstm import _handles

    x = inputs()
    keeps = []
    forward = _handles.forward

    def counted(*arguments):
        keeps.append(arguments[-1])
        return forward(*arguments)

    for mode in ("eager", "tape inside", "tape outside", "traced without a tape",
                 "traced under a tape, run without"):
        got, expected = pair(return_sequences=True, return_state=True)
        keeps.clear()
        _handles.forward = counted
        try:
            gradients = list(_gradients(got, x, mode))
        finally:
            _handles.forward = forward
        assert_close(gradients, list(_gradients(expected, x, mode)), mode)
        if mode in ("eager", "tape inside", "tape outside"):
            # One forward pass, which keeps its cache for the backward pass.
            assert keeps == [True], f"{mode}: forward passes keeping a cache: {keeps}"
        if mode == "traced without a tape":
            # Inference, the forward pass differentiated, run again by the backward.
            assert keeps == [False, False, True], f"{mode}: {keeps}"
        del got
        gc.collect()
        assert _handles.pending() == 0, f"{mode}: {_handles.pending()} caches"


def tensorflow_check_fit_runs_each_forward_pass_once():
    """Keras' compiled fit runs each layer's forward pass once a step, keeping
    its cache for the backward pass; predict keeps none."""
    keras = _keras()
    import fastlstm.keras
    from fastlstm import _handles

    model = keras.Sequential([keras.Input((TIMESTEPS, FEATURES)),
                              fastlstm.keras.LSTM(UNITS, return_sequences=True),
                              fastlstm.keras.LSTM(UNITS), keras.layers.Dense(1)])
    model.compile(optimizer="adam", loss="mse")
    x = inputs(shape=(2 * BATCH, TIMESTEPS, FEATURES))
    keeps = []
    forward = _handles.forward

    def counted(*arguments):
        keeps.append(arguments[-1])
        return forward(*arguments)

    _handles.forward = counted
    try:
        model.fit(x, np.zeros((2 * BATCH, 1), "float32"), batch_size=BATCH, epochs=1,
                  verbose=0)
        assert keeps == [True] * 4, f"fit, 2 steps of 2 layers: {keeps}"
        keeps.clear()
        model.predict(x, batch_size=BATCH, verbose=0)
        assert keeps == [False] * 4, f"predict, 2 batches of 2 layers: {keeps}"
    finally:
        _handles.forward = forward
    assert _handles.pending() == 0, _handles.pending()


def tensorflow_check_savedmodel_export_is_refused():
    """model.export (a SavedModel) fails when it is written, saying why,
    rather than writing a file no other process can run."""
    keras = _keras()
    import fastlstm.keras

    model = keras.Sequential([keras.Input((TIMESTEPS, FEATURES)), fastlstm.keras.LSTM(UNITS),
                              keras.layers.Dense(1)])
    with tempfile.TemporaryDirectory() as directory:
        path = os.path.join(directory, "exported")
        try:
            model.export(path, verbose=False)
        except ValueError as error:
            causes = []
            while error is not None:
                causes.append(str(error))
                error = error.__cause__
            assert any("fastlstm.keras.LSTM cannot be exported to a SavedModel" in text
                       for text in causes), causes
        else:
            raise AssertionError("model.export wrote a SavedModel")
        assert not os.path.exists(os.path.join(path, "saved_model.pb"))


def tensorflow_check_dropped_tape_frees_its_cache():
    """An eager forward pass recorded by a tape that never backpropagates
    keeps its cache only as long as the tape (and the outputs) live."""
    import gc

    import tensorflow as tf

    from fastlstm import _handles

    got, _ = pair()
    with tf.GradientTape() as tape:
        outputs = got(inputs())
    assert _handles.pending() == 1, _handles.pending()
    del tape, outputs
    gc.collect()
    assert _handles.pending() == 0, _handles.pending()


def tensorflow_check_static_shapes_in_graphs():
    """Traced for any batch and length, the results' shapes keep what is known."""
    import tensorflow as tf

    got, _ = pair(return_sequences=True, return_state=True)
    shapes = []

    @tf.function(input_signature=[tf.TensorSpec((None, None, FEATURES), tf.float32)],
                 autograph=False)
    def call(x):
        results = got(x)
        shapes.extend(tuple(r.shape.as_list()) for r in results)
        return results

    call(inputs())
    assert shapes == [(None, None, UNITS), (None, UNITS), (None, UNITS)], shapes


def tensorflow_check_models_opt_out_of_xla():
    """tf.numpy_function cannot be XLA-compiled: a model holding the layer
    (directly or in Bidirectional) does not support jit_compile, so
    jit_compile=True falls back to False with Keras' warning, and fit runs."""
    import warnings

    keras = _keras()
    from keras.src.trainers.trainer import model_supports_jit

    import fastlstm.keras

    for layer in (fastlstm.keras.LSTM(UNITS), keras.layers.Bidirectional(
            fastlstm.keras.LSTM(UNITS))):
        model = keras.Sequential([keras.Input((TIMESTEPS, FEATURES)), layer,
                                  keras.layers.Dense(1)])
        assert not model_supports_jit(model)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            model.compile(optimizer="sgd", loss="mse", jit_compile=True)
        assert model.jit_compile is False
        assert any("jit_compile" in str(w.message) for w in caught), caught
        history = model.fit(inputs(), np.zeros((BATCH, 1), "float32"), epochs=2, verbose=0)
        assert np.all(np.isfinite(history.history["loss"]))


CHECKS = {name[len("check_"):]: value for name, value in dict(globals()).items()
          if name.startswith("check_")}
# Checks of some backends only, by backend (JAX computes in float32 unless
# jax_enable_x64 is set).
BACKEND_CHECKS = {
    "torch": {"compiled_model_gradients": torch_check_compiled_model_gradients,
              "float64": float64_check},
    "tensorflow": {"float64": float64_check,
                   **{name[len("tensorflow_check_"):]: value
                      for name, value in dict(globals()).items()
                      if name.startswith("tensorflow_check_")}},
}


def main():
    results = {}
    backend = _keras().backend.backend()
    for name, check in {**CHECKS, **BACKEND_CHECKS.get(backend, {})}.items():
        try:
            check()
        except Exception:  # noqa: BLE001 -- every failure is reported by name
            results[name] = traceback.format_exc(limit=-3)
        else:
            results[name] = None
    print(json.dumps({"backend": backend, "results": results}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
