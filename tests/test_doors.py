"""One rule and one message for one bad argument, at every door to the LSTM.

The doors: ``fl.lstm_forward`` / ``fl.lstm_backward``, ``fl.lstm_stack_forward``
/ ``fl.lstm_stack_backward``, ``fl.PackedLSTM``, the ``fl.LSTM`` layer (alone, in a
``Sequential``, inside ``Bidirectional``) and ``fastlstm.torch.LSTM``. Each
door spells its arguments in its own words (``initial_state``,
``initial_states[0]``, ``hx``); after that name, every door raises the same
exception with the same message. A door without the argument (the functional
API has no ``training``, PyTorch's module no ``mask``) is left out; so is a
rule a door's own convention sets otherwise: ``fastlstm.torch.LSTM`` takes
2-D input as one unbatched sequence and, as ``torch.nn.LSTM``, requires tensors
of its parameters' dtype instead of casting.

Masks: integers 0 and 1 are accepted as False and True at every door, as a
mask built from lengths or token ids (``(tokens != 0).astype(int)``) often
is, and as Keras' layers accept a mask they cast to bool; other integers and
floats are refused rather than guessed at.
"""
import re

import numpy as np
import pytest

import fastlstm as fl

BATCH, TIMESTEPS, FEATURES, UNITS = 2, 5, 3, 4


def _weights(seed=0):
    rng = np.random.default_rng(seed)
    return (0.3 * rng.standard_normal((FEATURES, 4 * UNITS)),
            0.3 * rng.standard_normal((UNITS, 4 * UNITS)), np.zeros(4 * UNITS))


def _x(shape=(BATCH, TIMESTEPS, FEATURES), dtype=np.float64):
    return np.random.default_rng(1).standard_normal(shape).astype(dtype)


def _state(batch=BATCH, dtype=np.float64):
    return np.zeros((batch, UNITS), dtype)


class Functional:
    """fl.lstm_forward and fl.lstm_backward."""
    x, state, entry = "x", "initial_state", "initial_state[0] (h0)"
    grad, spelled = "grad_outputs", r"\[h0, c0\]"

    def states(self, entries):
        return entries

    def forward(self, x=None, initial_state=None, mask=None, **flags):
        return fl.lstm_forward(_x() if x is None else x, *_weights(),
                               initial_state=initial_state, mask=mask, **flags)

    def backward(self, grad=None, input_gradient=True):
        cache = self.forward()[3]
        return fl.lstm_backward(cache, grad_outputs=grad, input_gradient=input_gradient)


class Stack(Functional):
    """fl.lstm_stack_forward and fl.lstm_stack_backward, with one layer."""
    state, entry = "initial_states[0]", "initial_states[0][0] (h0)"

    def forward(self, x=None, initial_state=None, mask=None, **flags):
        return fl.lstm_stack_forward(_x() if x is None else x, [_weights()],
                                     initial_states=[initial_state], mask=mask, **flags)

    def backward(self, grad=None, input_gradient=True):
        cache = self.forward()[2]
        return fl.lstm_stack_backward(cache, grad_outputs=grad, input_gradient=input_gradient)


class Packed(Functional):
    """fl.PackedLSTM: activations given to its constructor, the rest to its call."""

    def forward(self, x=None, initial_state=None, mask=None, activation="tanh",
                recurrent_activation="sigmoid", **flags):
        lstm = fl.PackedLSTM(*_weights(), activation=activation,
                             recurrent_activation=recurrent_activation)
        return lstm(_x() if x is None else x, initial_state=initial_state, mask=mask, **flags)


class Layer(Functional):
    """The fl.LSTM layer; its flags are arguments of its constructor."""
    grad = "dy"

    def make(self, **flags):
        layer = fl.LSTM(UNITS, return_sequences=True, seed=0, **flags)
        layer.build(FEATURES)
        return layer

    def forward(self, x=None, initial_state=None, mask=None, training=False, **flags):
        return self.make(**flags)(_x() if x is None else x, initial_state=initial_state,
                                  mask=mask, training=training)

    def backward(self, grad=None, input_gradient=True):
        layer = self.make()
        layer(_x())
        return layer.backward(grad, input_gradient=input_gradient)


class InSequential(Layer):
    """Two LSTM layers in a Sequential model, which runs them as one call."""

    def make(self, **flags):
        model = fl.Sequential([fl.LSTM(UNITS, return_sequences=True, seed=0, **flags),
                               fl.LSTM(UNITS, return_sequences=True, seed=1)])
        model.build((None, TIMESTEPS, FEATURES))
        return model

    def forward(self, x=None, initial_state=None, mask=None, training=False, **flags):
        return self.make(**flags)(_x() if x is None else x, mask=mask, training=training)


class InBidirectional(Layer):
    """fl.Bidirectional over an fl.LSTM layer."""
    entry, spelled = "initial_state[0] (h_fw)", r"\[h_fw, c_fw, h_bw, c_bw\]"

    def states(self, entries):
        return entries + [_state(), _state()]

    def make(self, **flags):
        layer = fl.Bidirectional(fl.LSTM(UNITS, return_sequences=True, seed=0, **flags))
        layer.build(FEATURES)
        return layer


class Torch:
    """fastlstm.torch.LSTM (batch first, so that its input is the others' x)."""
    x, state, entry, spelled = "input", "hx", r"hx\[0\] \(h_0\)", r"\(h_0, c_0\)"
    grad = None  # gradients go through autograd

    def states(self, entries):
        torch = pytest.importorskip("torch")
        return [e[None] if isinstance(e, np.ndarray) and e.ndim == 2 else e for e in
                [torch.from_numpy(e) if isinstance(e, np.ndarray) else e for e in entries]]

    def forward(self, x=None, initial_state=None):
        torch = pytest.importorskip("torch")
        import fastlstm.torch

        module = fastlstm.torch.LSTM(FEATURES, UNITS, batch_first=True).double()
        return module(torch.from_numpy(_x() if x is None else x), initial_state)


DOORS = {"lstm_forward": Functional(), "lstm_stack_forward": Stack(),
         "PackedLSTM": Packed(), "LSTM": Layer(),
         "Sequential": InSequential(), "Bidirectional": InBidirectional(),
         "fastlstm.torch.LSTM": Torch()}
LAYERS = ("LSTM", "Sequential", "Bidirectional")
NUMPY = ("lstm_forward", "lstm_stack_forward", "PackedLSTM") + LAYERS
WITH_STATE = ("lstm_forward", "lstm_stack_forward", "PackedLSTM", "LSTM", "Bidirectional",
              "fastlstm.torch.LSTM")
WITH_FLAGS = ("lstm_forward", "lstm_stack_forward", "PackedLSTM", "LSTM")
BACKWARD = ("lstm_forward", "lstm_stack_forward", "LSTM", "Bidirectional")

ACTIVATIONS = r"\['tanh', 'sigmoid', 'hard_sigmoid'\] \(the activations the kernels implement\)"

# (case, doors, error, call(door), message after the door's name for the
# argument, as a regular expression; {x}, {state}, {entry}, {spelled} and
# {grad} stand for the door's spellings).
CASES = [
    ("x of two dimensions", NUMPY, ValueError,
     lambda d: d.forward(x=_x((BATCH, TIMESTEPS))),
     r"{x} must have shape \(batch, timesteps, features\), three dimensions: the sequences, "
     r"the steps of each, the features of each step; got an array with 2 dimension\(s\), "
     r"shape \(2, 5\); a 2-D input is usually the last output of an LSTM below this one: "
     r"give that layer return_sequences=True so that it returns every step"),
    ("x without sequences", tuple(DOORS), ValueError,
     lambda d: d.forward(x=_x((0, TIMESTEPS, FEATURES))),
     r"{x} must have at least one sequence, one timestep and one feature, got shape "
     r"\(0, 5, 3\)"),
    ("x of complex numbers", NUMPY, TypeError,
     lambda d: d.forward(x=_x().astype(complex)),
     r"{x} must hold real numbers \(float, int or bool\), got dtype complex128"),
    ("x of other features", tuple(DOORS), ValueError,
     lambda d: d.forward(x=_x((BATCH, TIMESTEPS, FEATURES + 1))),
     r"{x} must have 3 features \(last axis\), [^,]+, got 4"),
    ("initial_state not a list", WITH_STATE, TypeError,
     lambda d: d.forward(initial_state=5),
     r"{state} must be {spelled}, a list or tuple of \d (arrays|tensors), got int 5"),
    ("initial_state of one entry", WITH_STATE, ValueError,
     lambda d: d.forward(initial_state=d.states([_state()])[:1]),
     r"{state} must be {spelled}, a list or tuple of \d (arrays|tensors), got a list of 1"),
    ("initial_state of another batch", WITH_STATE, ValueError,
     lambda d: d.forward(initial_state=d.states([_state(BATCH + 1), _state()])),
     r"{entry} must have shape \((1, )?2, 4\) \([^)]*batch[^)]*\), got \((1, )?3, 4\)"),
    ("initial_state of complex numbers", WITH_STATE[:-1], TypeError,
     lambda d: d.forward(initial_state=d.states([_state(dtype=complex), _state()])),
     r"{entry} must hold real numbers \(float, int or bool\), got dtype complex128"),
    ("mask of another shape", NUMPY, ValueError,
     lambda d: d.forward(mask=np.ones((BATCH, TIMESTEPS + 1), bool)),
     r"mask must have shape \(2, 5\) \(batch, timesteps\), got \(2, 6\)"),
    ("mask of floats", NUMPY, TypeError,
     lambda d: d.forward(mask=np.ones((BATCH, TIMESTEPS))),
     r"mask must be boolean, True keeping a step \(or integers 0 and 1\), got dtype float64"),
    ("mask of integers other than 0 and 1", NUMPY, ValueError,
     lambda d: d.forward(mask=np.full((BATCH, TIMESTEPS), 2)),
     r"mask must hold booleans \(or 0 and 1\), got integers other than 0 and 1"),
    ("go_backwards not a bool", WITH_FLAGS, TypeError,
     lambda d: d.forward(go_backwards=1),
     r"go_backwards must be True or False, got int 1"),
    ("unknown activation", WITH_FLAGS, ValueError,
     lambda d: d.forward(activation="relu"),
     rf"activation must be one of {ACTIVATIONS}, got str 'relu'"),
    ("unknown recurrent_activation", WITH_FLAGS, ValueError,
     lambda d: d.forward(recurrent_activation="softmax"),
     rf"recurrent_activation must be one of {ACTIVATIONS}, got str 'softmax'"),
    ("training not a bool", LAYERS, TypeError,
     lambda d: d.forward(training="yes"),
     r"training must be True or False, got str 'yes'"),
    ("gradient of another shape", BACKWARD, ValueError,
     lambda d: d.backward(grad=np.ones((BATCH, TIMESTEPS, UNITS + 1))),
     r"{grad} must have shape \(2, 5, (4|8)\) .+, got \(2, 5, 5\)"),
    ("input_gradient not a bool", BACKWARD, TypeError,
     lambda d: d.backward(input_gradient=1),
     r"input_gradient must be True or False, got int 1"),
]


@pytest.mark.parametrize("case, door, error, call, message", [
    (case, door, error, call, message)
    for case, doors, error, call, message in CASES for door in doors
], ids=[f"{case[0]}-{door}" for case in CASES for door in case[1]])
def test_every_door_refuses_a_bad_argument_with_one_error(case, door, error, call, message):
    spellings = DOORS[door]
    expected = message.format(x=spellings.x, state=re.escape(spellings.state),
                              entry=spellings.entry if door == "fastlstm.torch.LSTM"
                              else re.escape(spellings.entry),
                              spelled=spellings.spelled, grad=spellings.grad)
    with pytest.raises(error) as raised:
        call(spellings)
    # A layer's label may lead the message ("layer 'lstm_3' (LSTM): x must have ...").
    assert re.fullmatch(rf"(layer '\w+' \(LSTM\): )?{expected}", str(raised.value)), \
        str(raised.value)


@pytest.mark.parametrize("door", NUMPY)
def test_every_door_takes_a_mask_of_zeros_and_ones_as_the_boolean_mask(door):
    keep = np.array([[True, True, False, True, False], [False, True, True, True, True]])
    forward = DOORS[door].forward
    expected, given = forward(mask=keep), forward(mask=keep.astype(np.int64))
    expected, given = (expected[0], given[0]) if isinstance(expected, tuple) else (expected, given)
    np.testing.assert_array_equal(given, expected)


@pytest.mark.parametrize("door", ["LSTM", "Bidirectional"])
def test_a_refused_backward_leaves_the_call_to_backpropagate(door):
    layer = DOORS[door].make()
    y = layer(_x())
    with pytest.raises(TypeError, match="input_gradient"):
        layer.backward(np.ones_like(y), input_gradient="yes")
    assert layer.backward(np.ones_like(y)).shape == (BATCH, TIMESTEPS, FEATURES)
