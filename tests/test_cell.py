"""The one-step path: ``layer.cell`` and one-step calls of a layer that
records nothing, against the whole-sequence kernels, on every build."""
import numpy as np
import pytest

import fastlstm as fl


def _layer(units, input_dim, dtype="float64", **kwargs):
    layer = fl.LSTM(units, seed=0, dtype=dtype, **kwargs)
    layer.build(input_dim)
    rng = np.random.default_rng(1)
    layer.set_weights([w + rng.normal(0, 0.1, w.shape) for w in layer.get_weights()])
    return layer


# Units on whole vector panels of every build (a multiple of 16) and not
# (a last partial panel); batches of one, two and four rows (the step's
# blocks of columns), of three (two rows, then one) and over four (rows
# streamed one weight row at a time).
SHAPES = [(1, 32, 256), (3, 5, 7), (2, 16, 64), (4, 9, 37), (8, 16, 32), (7, 40, 20),
          (13, 3, 50)]


@pytest.mark.parametrize("batch, input_dim, units", SHAPES)
@pytest.mark.parametrize("activations", [("tanh", "sigmoid"), ("sigmoid", "hard_sigmoid")])
def test_a_cell_step_is_lstm_forwards_step_to_the_bit(kernel_build, batch, input_dim, units,
                                                     activations):
    rng = np.random.default_rng(2)
    layer = _layer(units, input_dim, activation=activations[0],
                   recurrent_activation=activations[1])
    x = rng.standard_normal((batch, input_dim))
    h0, c0 = rng.standard_normal((2, batch, units))
    kernel, recurrent_kernel, bias = layer.get_weights()
    _, h, c, _ = fl.lstm_forward(x[:, None], kernel, recurrent_kernel, bias, [h0, c0],
                                 return_cache=False, activation=activations[0],
                                 recurrent_activation=activations[1])
    output, (h_cell, c_cell) = layer.cell(x, [h0, c0])
    assert output is h_cell
    # At these sizes lstm_forward computes each step's input product in the
    # step, in the order the cell does: the same bits.
    np.testing.assert_array_equal(h_cell, h)
    np.testing.assert_array_equal(c_cell, c)


@pytest.mark.parametrize("dtype, tolerance", [("float64", 1e-12), ("float32", 2e-6)])
def test_a_loop_of_cell_steps_is_the_layer_over_the_sequence(dtype, tolerance):
    rng = np.random.default_rng(3)
    layer = _layer(20, 6, dtype, return_sequences=True, return_state=True)
    x = rng.standard_normal((4, 9, 6)).astype(dtype)
    expected, h_end, c_end = layer(x)
    h, c = layer.cell.get_initial_state(4)
    outputs = []
    for t in range(9):
        output, (h, c) = layer.cell(x[:, t], [h, c])
        outputs.append(output)
    np.testing.assert_allclose(np.stack(outputs, axis=1), expected, rtol=tolerance,
                               atol=tolerance)
    np.testing.assert_allclose(c, c_end, rtol=tolerance, atol=tolerance)


def test_a_stateful_layer_fed_one_step_at_a_time_is_one_call_on_the_sequence():
    rng = np.random.default_rng(4)
    x = rng.standard_normal((2, 12, 5))
    whole = _layer(16, 5)
    expected = whole(x[:, :, :], training=False)
    stepped = _layer(16, 5, stateful=True)
    with fl.no_grad():
        for t in range(12):
            output = stepped(x[:, t:t + 1])
    np.testing.assert_allclose(output, expected, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(stepped.states[0], expected, rtol=1e-12, atol=1e-12)


def test_the_cell_leaves_its_arguments_alone():
    rng = np.random.default_rng(5)
    layer = _layer(8, 3)
    x = rng.standard_normal((2, 3))
    h, c = rng.standard_normal((2, 2, 8))
    copies = [a.copy() for a in (x, h, c)]
    layer.cell(x, [h, c])
    for array, copy in zip((x, h, c), copies):
        np.testing.assert_array_equal(array, copy)


def test_bad_cell_arguments_get_clear_errors():
    layer = _layer(8, 3, dropout=0.5)
    h, c = layer.cell.get_initial_state(2)
    with pytest.raises(ValueError, match=r"inputs must have shape \(batch, input_dim\)"):
        layer.cell(np.zeros((2, 1, 3)), [h, c])
    with pytest.raises(ValueError, match="built for input_dim=3"):
        layer.cell(np.zeros((2, 4)), [h, c])
    with pytest.raises(ValueError, match=r"states\[0\] \(h\)"):
        layer.cell(np.zeros((2, 3)), [h[:1], c])
    with pytest.raises(TypeError, match=r"states must be \[h, c\], a list or tuple of 2"):
        layer.cell(np.zeros((2, 3)), h)
    with pytest.raises(ValueError, match="training=True would apply dropout"):
        layer.cell(np.zeros((2, 3)), [h, c], training=True)


def test_the_cell_describes_its_state_as_keras_does():
    layer = _layer(8, 3, dtype="float32")
    assert layer.cell.state_size == [8, 8]
    assert layer.cell.output_size == 8
    h, c = layer.cell.get_initial_state(5)
    assert h.shape == c.shape == (5, 8) and h.dtype == np.float32 and not h.any()


def test_states_in_any_memory_layout_give_the_same_step():
    # A slice of a larger state or a Fortran-ordered array is not what the
    # kernel reads: the doors make contiguous copies rather than refuse it.
    rng = np.random.default_rng(7)
    layer = _layer(6, 3)
    x = rng.standard_normal((4, 3))
    h, c = rng.standard_normal((2, 4, 6))
    expected = layer.cell(x, [h, c])[0]
    strided = [np.repeat(h, 2, axis=1)[:, ::2], np.asfortranarray(c)]
    assert not any(s.flags.c_contiguous for s in strided)
    np.testing.assert_array_equal(layer.cell(x, strided)[0], expected)
    with fl.no_grad():
        np.testing.assert_array_equal(layer(x[:, None], initial_state=strided), expected)
    packed = fl.PackedLSTM(*layer.get_weights())
    np.testing.assert_array_equal(packed.step(x, strided)[0], expected)
