"""Tests of fastlstm.layers.Dense, Embedding and Dropout.

Gradients are checked against central finite differences of the whole call
(float64); forward values against NumPy written out here.
"""
import copy

import numpy as np
import pytest

from fastlstm import initializers
from fastlstm.layers import Dense, Dropout, Embedding, no_grad
from gradcheck import assert_gradient, inner

DENSE_ACTIVATIONS = [None, "relu", "sigmoid", "tanh", "softmax"]


def check_layer_gradients(layer, x, training=False, seed=1):
    """backward() agrees with finite differences of <layer(x), upstream>."""
    layer.build(np.shape(x)[-1])
    snapshot = copy.deepcopy(layer)
    x_probe = np.array(x, dtype=np.float64)
    outputs = layer(x, training=training)
    upstream = np.random.default_rng(seed).standard_normal(outputs.shape)
    dx = layer.backward(upstream)

    def loss():
        probe = copy.deepcopy(snapshot)
        with no_grad():
            return inner(probe(x_probe, training=training), upstream)

    for name, analytic in layer.grads.items():
        assert_gradient(analytic, loss, snapshot.params[name], name, rtol=1e-6, atol=1e-9)
    if dx is not None:
        assert_gradient(dx, loss, x_probe, "x", rtol=1e-6, atol=1e-9)
    return outputs


# -- Dense ------------------------------------------------------------------------

def test_dense_computes_activation_of_affine_map():
    layer = Dense(2, activation="relu", dtype="float64")
    kernel = np.array([[1.0, -1.0], [2.0, 0.5]])
    layer.set_weights([kernel, np.array([0.5, -3.0])])
    x = np.array([[1.0, 1.0], [-2.0, 0.0]])
    np.testing.assert_allclose(layer(x), np.maximum(x @ kernel + [0.5, -3.0], 0))


@pytest.mark.parametrize("activation", DENSE_ACTIVATIONS)
@pytest.mark.parametrize("shape", [(4, 3), (2, 5, 3)])
def test_dense_gradients_match_finite_differences(activation, shape):
    layer = Dense(4, activation=activation, seed=0, dtype="float64",
                  bias_initializer=initializers.RandomNormal(stddev=0.5))
    x = np.random.default_rng(0).standard_normal(shape)
    outputs = check_layer_gradients(layer, x)
    assert outputs.shape == shape[:-1] + (4,)
    assert set(layer.grads) == {"kernel", "bias"}


def test_dense_without_bias_has_only_a_kernel():
    layer = Dense(3, use_bias=False, seed=0, dtype="float64")
    check_layer_gradients(layer, np.random.default_rng(1).standard_normal((2, 4)))
    assert set(layer.params) == set(layer.grads) == {"kernel"}
    assert len(layer.get_weights()) == 1


def test_dense_softmax_rows_sum_to_one_without_overflow():
    layer = Dense(3, activation="softmax", use_bias=False, dtype="float64")
    layer.set_weights([np.array([[1000.0, 0.0, -1000.0]])])
    y = layer(np.array([[1.0], [-1.0]]))
    np.testing.assert_allclose(y, [[1, 0, 0], [0, 0, 1]])


def test_dense_same_seed_same_weights_and_float32_default():
    a, b = Dense(5, seed=3), Dense(5, seed=3)
    a.build(4)
    b.build(4)
    np.testing.assert_array_equal(a.params["kernel"], b.params["kernel"])
    assert a.params["kernel"].dtype == np.float32
    assert a(np.ones((2, 4), dtype=np.int64)).dtype == np.float32


def test_dense_set_weights_builds_and_copies_in_place():
    layer = Dense(2)
    layer.set_weights([np.ones((3, 2)), np.zeros(2)])
    kernel = layer.params["kernel"]
    layer.set_weights([np.full((3, 2), 2.0), np.ones(2)])
    assert layer.params["kernel"] is kernel and kernel[0, 0] == 2.0
    assert layer.input_dim == 3 and layer.compute_output_shape((None, 7, 3)) == (None, 7, 2)


def test_dense_errors_name_the_argument():
    layer = Dense(2)
    with pytest.raises(ValueError, match=r"weights\[0\] \(kernel\) must have shape"):
        layer.set_weights([np.ones(3), np.zeros(2)])
    with pytest.raises(ValueError, match=r"weights\[1\] \(bias\) must have shape \(2,\) \(units,\)"):
        Dense(2).set_weights([np.ones((3, 2)), np.zeros(3)])
    layer.build(3)
    with pytest.raises(ValueError, match="x has 4 features .* built for input_dim=3"):
        layer(np.ones((2, 4)))
    with pytest.raises(ValueError, match="x must have shape \\(batch, ..., features\\)"):
        layer(np.ones(3))
    with pytest.raises(ValueError, match="activation must be None or one of"):
        Dense(2, activation="gelu")
    with pytest.raises(TypeError, match="units must be a positive int"):
        Dense(2.0)
    with pytest.raises(TypeError, match="does not support the Keras argument kernel_regularizer"):
        Dense(2, kernel_regularizer="l2")
    with pytest.raises(ValueError, match=r"dy must have shape \(2, 2\) of what the call returned"):
        layer(np.ones((2, 3)))
        layer.backward(np.ones((2, 3)))


def test_backward_needs_one_recorded_call():
    layer = Dense(2, seed=0)
    with pytest.raises(RuntimeError, match="backward\\(\\) needs a forward call first"):
        layer.backward(np.ones((1, 2)))
    y = layer(np.ones((1, 3)))
    layer.backward(np.ones_like(y))
    with pytest.raises(RuntimeError, match="already called for the last call"):
        layer.backward(np.ones_like(y))
    with no_grad():
        y = layer(np.ones((1, 3)))
    with pytest.raises(RuntimeError, match="no_grad"):
        layer.backward(np.ones_like(y))


# -- Embedding ------------------------------------------------------------------------

def test_embedding_looks_up_rows():
    layer = Embedding(4, 2, dtype="float64")
    table = np.arange(8.0).reshape(4, 2)
    layer.set_weights([table])
    np.testing.assert_array_equal(layer(np.array([[3, 0], [1, 1]])), table[[[3, 0], [1, 1]]])


def test_embedding_gradient_accumulates_repeated_indices():
    layer = Embedding(5, 3, seed=0, dtype="float64")
    x = np.array([[1, 2, 1], [4, 1, 0]])
    check_layer_gradients(layer, x)
    upstream = np.ones((2, 3, 3))
    layer(x)
    assert layer.backward(upstream) is None
    np.testing.assert_array_equal(layer.grads["embeddings"][:, 0], [1, 3, 1, 0, 1])


def test_embedding_mask_zero_marks_padding():
    layer = Embedding(5, 3, mask_zero=True)
    x = np.array([[2, 4, 0, 0], [1, 0, 0, 0]])
    np.testing.assert_array_equal(layer.compute_mask(x), x != 0)
    assert Embedding(5, 3).compute_mask(x) is None
    assert layer.compute_output_shape((None, 4)) == (None, 4, 3)


def test_embedding_default_initializer_is_keras_uniform():
    layer = Embedding(100, 50, seed=0)
    layer.build()
    values = layer.params["embeddings"]
    assert values.dtype == np.float32 and values.shape == (100, 50)
    assert -0.05 <= values.min() and values.max() < 0.05


def test_embedding_rejects_bad_indices():
    layer = Embedding(5, 2)
    with pytest.raises(ValueError, match=r"indices in \[0, input_dim\) = \[0, 5\), got 5"):
        layer(np.array([[1, 5]]))
    with pytest.raises(ValueError, match=r"got -1"):
        layer(np.array([[-1, 2]]))
    with pytest.raises(ValueError, match="integer indices"):
        layer(np.array([[1.5, 2.0]]))
    np.testing.assert_array_equal(layer(np.array([[1.0, 2.0]])), layer(np.array([[1, 2]])))
    with pytest.raises(TypeError, match="does not support the Keras argument input_length"):
        Embedding(5, 2, input_length=3)


# -- Dropout ------------------------------------------------------------------------

def test_dropout_drops_the_rate_and_rescales():
    layer = Dropout(0.25, seed=0, dtype="float64")
    y = layer(np.ones((200, 100)), training=True)
    assert set(np.unique(y)) == {0.0, 1 / 0.75}
    assert np.mean(y == 0) == pytest.approx(0.25, abs=0.01)


def test_dropout_is_the_identity_in_inference():
    x = np.random.default_rng(0).standard_normal((3, 4))
    layer = Dropout(0.5, dtype="float64")
    np.testing.assert_array_equal(layer(x), x)
    np.testing.assert_array_equal(layer.backward(np.ones((3, 4))), np.ones((3, 4)))


def test_dropout_gradient_is_the_same_mask():
    layer = Dropout(0.5, seed=1, dtype="float64")
    x = np.random.default_rng(0).standard_normal((4, 6))
    y = layer(x, training=True)
    dx = layer.backward(np.ones_like(y))
    np.testing.assert_array_equal(dx, np.where(y != 0, 2.0, 0.0))
    check_layer_gradients(Dropout(0.3, seed=2, dtype="float64"), x, training=True)


def test_dropout_seed_reproduces_masks_and_rate_is_checked():
    x = np.ones((10, 10))
    np.testing.assert_array_equal(Dropout(0.5, seed=4)(x, training=True),
                                  Dropout(0.5, seed=4)(x, training=True))
    with pytest.raises(ValueError, match=r"rate must be in \[0, 1\)"):
        Dropout(1.0)
    with pytest.raises(TypeError, match="does not support the Keras argument noise_shape"):
        Dropout(0.5, noise_shape=(None, 1))
    assert Dropout(0.5).get_weights() == [] and Dropout(0.5).params == {}
