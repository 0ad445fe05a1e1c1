"""fastlstm.torch.LSTM against torch.nn.LSTM: the same state_dict gives the
same outputs, final states and gradients, for every layout and option."""
import json
import subprocess
import sys

import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="fastlstm.torch needs PyTorch")

import fastlstm.torch as fltorch  # noqa: E402
from torch.nn.utils.rnn import pack_padded_sequence  # noqa: E402

# max |got - expected| / max |expected|, per array.
TOLERANCE = {torch.float64: 1e-10, torch.float32: 1e-5}
INPUT_SIZE, HIDDEN_SIZE = 3, 4


def pair(dtype=torch.float64, **options):
    """torch.nn.LSTM and fastlstm.torch.LSTM with the same parameters."""
    expected = torch.nn.LSTM(INPUT_SIZE, HIDDEN_SIZE, dtype=dtype, **options)
    got = fltorch.LSTM(INPUT_SIZE, HIDDEN_SIZE, dtype=dtype, **options)
    got.load_state_dict(expected.state_dict())
    return got, expected


def initial_state(module, batch, seed=3):
    generator = torch.Generator().manual_seed(seed)
    layers = module.num_layers * (2 if module.bidirectional else 1)
    units = module.hidden_size
    shape = (layers, units) if batch is None else (layers, batch, units)
    dtype = module.weight_ih_l0.dtype
    return tuple(torch.randn(shape, generator=generator, dtype=dtype) for _ in range(2))


def results(module, input, hx=None, seed=4):
    """Outputs, final states and the gradients of a random linear loss of all
    three with respect to the input, hx and every parameter."""
    module.zero_grad(set_to_none=True)
    leaves = {"input": input.detach().clone().requires_grad_(True)}
    if hx is not None:
        leaves["h_0"], leaves["c_0"] = (s.detach().clone().requires_grad_(True) for s in hx)
        hx = (leaves["h_0"], leaves["c_0"])
    output, (h_n, c_n) = module(leaves["input"], hx)
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
        assert got[name].dtype == value.dtype, name
        scale = value.abs().max().item() or 1.0
        error = (got[name] - value).abs().max().item() / scale
        assert error <= TOLERANCE[dtype], f"{name}: relative error {error:.2e}"


def random_input(shape, dtype=torch.float64, seed=0):
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed), dtype=dtype)


@pytest.mark.parametrize("with_hx", [False, True], ids=["zero_state", "hx"])
@pytest.mark.parametrize("batch_first", [False, True], ids=["seq_first", "batch_first"])
@pytest.mark.parametrize("bidirectional", [False, True], ids=["uni", "bi"])
@pytest.mark.parametrize("num_layers", [1, 2, 3])
def test_matches_torch_float64(num_layers, bidirectional, batch_first, with_hx):
    got, expected = pair(num_layers=num_layers, bidirectional=bidirectional,
                         batch_first=batch_first)
    batch, steps = 3, 5
    x = random_input((batch, steps, INPUT_SIZE) if batch_first else (steps, batch, INPUT_SIZE))
    hx = initial_state(got, batch) if with_hx else None
    assert_close(results(got, x, hx), results(expected, x, hx), torch.float64)


@pytest.mark.parametrize("batch_first", [False, True], ids=["seq_first", "batch_first"])
@pytest.mark.parametrize("bidirectional", [False, True], ids=["uni", "bi"])
def test_matches_torch_float32(bidirectional, batch_first):
    got, expected = pair(torch.float32, num_layers=2, bidirectional=bidirectional,
                         batch_first=batch_first)
    x = random_input((4, 6, INPUT_SIZE), torch.float32)
    hx = initial_state(got, 6 if not batch_first else 4)
    assert_close(results(got, x, hx), results(expected, x, hx), torch.float32)


@pytest.mark.parametrize("with_hx", [False, True], ids=["zero_state", "hx"])
@pytest.mark.parametrize("bidirectional", [False, True], ids=["uni", "bi"])
def test_unbatched_input_matches_torch(bidirectional, with_hx):
    got, expected = pair(num_layers=2, bidirectional=bidirectional)
    x = random_input((5, INPUT_SIZE))
    hx = initial_state(got, None) if with_hx else None
    found = results(got, x, hx)
    assert found["output"].shape == (5, (2 if bidirectional else 1) * HIDDEN_SIZE)
    assert_close(found, results(expected, x, hx), torch.float64)


@pytest.mark.parametrize("bidirectional", [False, True], ids=["uni", "bi"])
def test_without_bias_matches_torch(bidirectional):
    got, expected = pair(num_layers=2, bias=False, bidirectional=bidirectional,
                         batch_first=True)
    assert not any("bias" in name for name in got.state_dict())
    x = random_input((2, 4, INPUT_SIZE))
    hx = initial_state(got, 2)
    assert_close(results(got, x, hx), results(expected, x, hx), torch.float64)


def packed_results(module, x, lengths, enforce_sorted, hx=None):
    """``results`` of a packed batch: the packed output's data and indices,
    and the gradient with respect to the padded input."""
    module.zero_grad(set_to_none=True)
    x = x.detach().clone().requires_grad_(True)
    leaves = [x]
    if hx is not None:
        hx = tuple(s.detach().clone().requires_grad_(True) for s in hx)
        leaves += list(hx)
    packed = pack_padded_sequence(x, lengths, batch_first=True, enforce_sorted=enforce_sorted)
    output, (h_n, c_n) = module(packed, hx)
    assert isinstance(output, torch.nn.utils.rnn.PackedSequence)
    generator = torch.Generator().manual_seed(5)
    loss = sum((value * torch.randn(value.shape, generator=generator, dtype=value.dtype)).sum()
               for value in (output.data, h_n, c_n))
    loss.backward()
    found = {"output": output.data, "h_n": h_n, "c_n": c_n, "batch_sizes": output.batch_sizes}
    for name in ("sorted_indices", "unsorted_indices"):
        if getattr(output, name) is not None:
            found[name] = getattr(output, name)
    found.update({f"grad input {k}": leaf.grad for k, leaf in enumerate(leaves)})
    found.update({f"grad {name}": p.grad for name, p in module.named_parameters()})
    return {name: value.detach().clone() for name, value in found.items()}


@pytest.mark.parametrize("with_hx", [False, True], ids=["zero_state", "hx"])
@pytest.mark.parametrize("bidirectional", [False, True], ids=["uni", "bi"])
@pytest.mark.parametrize("enforce_sorted", [True, False], ids=["sorted", "unsorted"])
@pytest.mark.parametrize("num_layers", [1, 2])
def test_packed_sequence_matches_torch(num_layers, enforce_sorted, bidirectional, with_hx):
    got, expected = pair(num_layers=num_layers, bidirectional=bidirectional)
    # Lengths with a tie and with the longest not first, so that the
    # unsorted case permutes the batch.
    lengths = [6, 5, 5, 3, 1] if enforce_sorted else [3, 6, 1, 5, 5]
    x = random_input((5, 6, INPUT_SIZE))
    hx = initial_state(got, 5) if with_hx else None
    assert_close(packed_results(got, x, lengths, enforce_sorted, hx),
                 packed_results(expected, x, lengths, enforce_sorted, hx), torch.float64)


def test_packed_sequence_matches_torch_float32():
    got, expected = pair(torch.float32, num_layers=2, bidirectional=True)
    x = random_input((4, 7, INPUT_SIZE), torch.float32)
    lengths = [4, 7, 2, 5]
    assert_close(packed_results(got, x, lengths, False), packed_results(expected, x, lengths,
                                                                        False), torch.float32)


def test_wide_weights_match_torch():
    # 4 * 33 = 132 gate rows and 130 inputs: copied into fastlstm's layout by blocks.
    expected = torch.nn.LSTM(130, 33, batch_first=True, dtype=torch.float64)
    got = fltorch.LSTM(130, 33, batch_first=True, dtype=torch.float64)
    got.load_state_dict(expected.state_dict())
    x = torch.randn((2, 3, 130), generator=torch.Generator().manual_seed(0),
                    dtype=torch.float64)
    assert_close(results(got, x), results(expected, x), torch.float64)


def test_c_order_copies_a_transposed_matrix_exactly():
    matrix = np.arange(300 * 200, dtype=np.float32).reshape(300, 200)
    copied = fltorch._c_order(matrix.T)
    assert copied.flags.c_contiguous
    assert np.array_equal(copied, matrix.T)
    assert fltorch._c_order(matrix) is matrix


def test_initialisation_draws_as_torch():
    torch.manual_seed(7)
    expected = torch.nn.LSTM(INPUT_SIZE, HIDDEN_SIZE, num_layers=2, bidirectional=True)
    torch.manual_seed(7)
    got = fltorch.LSTM(INPUT_SIZE, HIDDEN_SIZE, num_layers=2, bidirectional=True)
    assert list(got.state_dict()) == list(expected.state_dict())
    for name, value in expected.state_dict().items():
        assert torch.equal(got.state_dict()[name], value), name
    bound = 1 / HIDDEN_SIZE ** 0.5
    assert all(p.abs().max() <= bound for p in got.parameters())


def test_state_dict_loads_into_torch():
    got = fltorch.LSTM(INPUT_SIZE, HIDDEN_SIZE, num_layers=2, bidirectional=True,
                       bias=False, dtype=torch.float64)
    expected = torch.nn.LSTM(INPUT_SIZE, HIDDEN_SIZE, num_layers=2, bidirectional=True,
                             bias=False, dtype=torch.float64)
    expected.load_state_dict(got.state_dict())
    x = random_input((5, 2, INPUT_SIZE))
    assert_close(results(got, x), results(expected, x), torch.float64)


def test_gradcheck():
    module = fltorch.LSTM(2, 3, num_layers=2, bidirectional=True, batch_first=True,
                          dtype=torch.float64)
    names = [name for name, _ in module.named_parameters()]

    def run(x, h_0, c_0, *parameters):
        output, (h_n, c_n) = torch.func.functional_call(
            module, dict(zip(names, parameters)), (x, (h_0, c_0)))
        return output, h_n, c_n

    x = random_input((2, 3, 2)).requires_grad_(True)
    states = [s.requires_grad_(True) for s in initial_state(module, 2)]
    parameters = [p.detach().clone().requires_grad_(True) for p in module.parameters()]
    assert torch.autograd.gradcheck(run, (x, *states, *parameters))


def test_gradcheck_packed():
    module = fltorch.LSTM(2, 3, bidirectional=True, dtype=torch.float64)
    lengths = torch.tensor([2, 4, 1])

    def run(x, weight_ih_l0_reverse):
        packed = pack_padded_sequence(x, lengths, batch_first=True, enforce_sorted=False)
        output, (h_n, c_n) = torch.func.functional_call(
            module, {"weight_ih_l0_reverse": weight_ih_l0_reverse}, (packed,))
        return output.data, h_n, c_n

    x = random_input((3, 4, 2)).requires_grad_(True)
    weight = module.weight_ih_l0_reverse.detach().clone().requires_grad_(True)
    assert torch.autograd.gradcheck(run, (x, weight))


def test_adam_training_gives_torch_weights():
    got, expected = pair(num_layers=2, bidirectional=True, batch_first=True)
    initial = {name: value.clone() for name, value in expected.state_dict().items()}
    x = random_input((4, 6, INPUT_SIZE))
    target = random_input((4, 6, 2 * HIDDEN_SIZE), seed=1)
    for module in (got, expected):
        optimizer = torch.optim.Adam(module.parameters(), lr=0.05)
        for _ in range(5):
            optimizer.zero_grad()
            loss = ((module(x)[0] - target) ** 2).mean()
            loss.backward()
            optimizer.step()
    trained = expected.state_dict()
    for name, value in got.state_dict().items():
        # Five Adam steps of 0.05 move every weight by far more than rounding.
        assert (trained[name] - initial[name]).abs().max() > 0.1, name
        error = (value - trained[name]).abs().max() / trained[name].abs().max()
        assert error <= TOLERANCE[torch.float64], name


@pytest.mark.parametrize("bidirectional", [False, True], ids=["uni", "bi"])
def test_dropout_matches_torch_under_the_same_seed(bidirectional):
    got, expected = pair(num_layers=3, dropout=0.4, bidirectional=bidirectional)
    x = random_input((5, 3, INPUT_SIZE))
    torch.manual_seed(11)
    found = results(got, x)
    torch.manual_seed(11)
    assert_close(found, results(expected, x), torch.float64)
    torch.manual_seed(11)
    assert_close(results(got, x), found, torch.float64)
    assert not torch.equal(results(got, x)["output"], found["output"])


def test_dropout_on_packed_sequences_matches_torch():
    got, expected = pair(num_layers=2, dropout=0.5)
    x = random_input((3, 5, INPUT_SIZE))
    torch.manual_seed(12)
    found = packed_results(got, x, [2, 5, 4], False)
    torch.manual_seed(12)
    assert_close(found, packed_results(expected, x, [2, 5, 4], False), torch.float64)


def test_dropout_only_in_training_mode():
    got, _ = pair(num_layers=2, dropout=0.5)
    without, _ = pair(num_layers=2)
    without.load_state_dict(got.state_dict())
    x = random_input((4, 2, INPUT_SIZE))
    got.eval()
    assert torch.equal(got(x)[0], without(x)[0])
    got.train()
    assert not torch.equal(got(x)[0], without(x)[0])


def test_a_unidirectional_stack_is_one_call_of_the_stack_kernels(monkeypatch):
    got, _ = pair(num_layers=3, batch_first=True)
    calls = []
    lstm_stack_forward = fltorch.lstm_stack_forward

    def recording(x_array, layers, **kwargs):
        calls.append(len(layers))
        return lstm_stack_forward(x_array, layers, **kwargs)

    monkeypatch.setattr(fltorch, "lstm_stack_forward", recording)
    got(random_input((2, 4, INPUT_SIZE)))[0].sum().backward()
    assert calls == [3]


@pytest.mark.parametrize("case", ["hx", "dropout", "packed"])
def test_pipelined_stack_matches_torch(case, monkeypatch):
    # The planner pipelines larger stacks on two threads; here it is told to.
    from fastlstm import _plan

    monkeypatch.setattr(_plan, "pipeline_stack", lambda *args: True)
    pipelined = []
    lstm_stack_forward = fltorch.lstm_stack_forward

    def recording(*args, **kwargs):
        returned = lstm_stack_forward(*args, **kwargs)
        pipelined.append(returned[2].pipelined)
        return returned

    monkeypatch.setattr(fltorch, "lstm_stack_forward", recording)
    options = dict(dropout=0.3) if case == "dropout" else {}
    got, expected = pair(num_layers=3, **options)
    x = random_input((5, 3, INPUT_SIZE))
    if case == "packed":
        assert_close(packed_results(got, x.transpose(0, 1), [2, 5, 4], False),
                     packed_results(expected, x.transpose(0, 1), [2, 5, 4], False),
                     torch.float64)
    else:
        hx = initial_state(got, 3) if case == "hx" else None
        torch.manual_seed(13)
        found = results(got, x, hx)
        torch.manual_seed(13)
        assert_close(found, results(expected, x, hx), torch.float64)
    assert pipelined == [True]


@pytest.mark.parametrize("case", ["zeros", "hx", "packed"])
def test_pipelined_inference_reads_the_packed_weights_and_matches_torch(case, monkeypatch):
    # Inference of a stack the planner pipelines is one pipelined call on the
    # layers' kept PackedLSTMs (no copy or packing per call).
    from fastlstm import _plan

    monkeypatch.setattr(_plan, "pipeline_stack", lambda *args: True)
    calls = []
    served_stack_forward = fltorch.served_stack_forward

    def recording(x, served, *args):
        calls.append([id(layer) for layer in served])
        return served_stack_forward(x, served, *args)

    monkeypatch.setattr(fltorch, "served_stack_forward", recording)
    got, expected = pair(num_layers=3)
    x = random_input((5, 3, INPUT_SIZE))
    hx = initial_state(got, 3) if case == "hx" else None
    with torch.no_grad():
        for _ in range(2):
            if case == "packed":
                packed = pack_padded_sequence(x.transpose(0, 1), [2, 5, 4], batch_first=True,
                                              enforce_sorted=False)
                found, expect = got(packed), expected(packed)
                found = (found[0].data, *found[1])
                expect = (expect[0].data, *expect[1])
            else:
                found, expect = got(x, hx), expected(x, hx)
                found, expect = (found[0], *found[1]), (expect[0], *expect[1])
            for value, reference in zip(found, expect, strict=True):
                scale = reference.abs().max().item()
                assert (value - reference).abs().max().item() <= TOLERANCE[torch.float64] * scale
    assert len(calls) == 2 and calls[0] == calls[1]


def test_batch_first_input_and_output_share_memory(monkeypatch):
    module = fltorch.LSTM(INPUT_SIZE, HIDDEN_SIZE, batch_first=True, dtype=torch.float64)
    x = random_input((2, 5, INPUT_SIZE)).requires_grad_(True)
    seen = {}
    lstm_stack_forward = fltorch.lstm_stack_forward

    def recording(x_array, *args, **kwargs):
        returned = lstm_stack_forward(x_array, *args, **kwargs)
        seen["x"], seen["outputs"] = x_array, returned[0]
        return returned

    monkeypatch.setattr(fltorch, "lstm_stack_forward", recording)
    output, _ = module(x)
    assert np.shares_memory(seen["x"], x.detach().numpy())
    assert output.data_ptr() == seen["outputs"].ctypes.data


def test_input_gradient_is_skipped_when_the_input_needs_none(monkeypatch):
    got, expected = pair(num_layers=2, batch_first=True)
    x = random_input((3, 4, INPUT_SIZE))
    asked = []
    lstm_stack_backward = fltorch.lstm_stack_backward

    def recording(*args, input_gradient=True, **kwargs):
        asked.append(input_gradient)
        return lstm_stack_backward(*args, input_gradient=input_gradient, **kwargs)

    monkeypatch.setattr(fltorch, "lstm_stack_backward", recording)
    for module in (got, expected):
        module(x)[0].sum().backward()
    # One call for the stack, whose input is data.
    assert asked == [False]
    for name, parameter in expected.named_parameters():
        error = (getattr(got, name).grad - parameter.grad).abs().max() / parameter.grad.abs().max()
        assert error <= TOLERANCE[torch.float64], name


def test_input_and_state_are_not_modified():
    module = fltorch.LSTM(INPUT_SIZE, HIDDEN_SIZE, num_layers=2, bidirectional=True,
                          dtype=torch.float64)
    x = random_input((4, 3, INPUT_SIZE))
    hx = initial_state(module, 3)
    copies = [t.clone() for t in (x, *hx)]
    output, (h_n, c_n) = module(x, hx)
    (output.sum() + h_n.sum() + c_n.sum()).backward()
    assert all(torch.equal(a, b) for a, b in zip((x, *hx), copies))


def test_retained_graph_gives_the_same_gradients_twice():
    module = fltorch.LSTM(INPUT_SIZE, HIDDEN_SIZE, bidirectional=True, dtype=torch.float64)
    x = random_input((4, 3, INPUT_SIZE)).requires_grad_(True)
    output, _ = module(x)
    first = torch.autograd.grad(output.sum(), [x, *module.parameters()], retain_graph=True)
    second = torch.autograd.grad(output.sum(), [x, *module.parameters()])
    assert all(torch.equal(a, b) for a, b in zip(first, second))


@pytest.mark.parametrize("bidirectional", [False, True], ids=["uni", "bi"])
@pytest.mark.parametrize("shape", [(3, 1, INPUT_SIZE), (1, INPUT_SIZE)],
                         ids=["batch", "unbatched"])
def test_one_step_matches_torch(shape, bidirectional):
    got, expected = pair(num_layers=2, bidirectional=bidirectional, batch_first=True)
    x = random_input(shape)
    assert_close(results(got, x), results(expected, x), torch.float64)


def test_gradient_with_create_graph_matches_torch():
    got, expected = pair(bidirectional=True, batch_first=True)
    x = random_input((3, 4, INPUT_SIZE))
    gradients = []
    for module in (got, expected):
        output, _ = module(x)
        gradients.append(torch.autograd.grad(output.sum(), list(module.parameters()),
                                             create_graph=True))
    for found, wanted in zip(*gradients):
        assert found.requires_grad
        torch.testing.assert_close(found.detach(), wanted.detach(), rtol=0, atol=1e-10)


@pytest.mark.parametrize("differentiate", ["weights", "input"])
def test_second_order_gradient_raises_instead_of_dropping_its_term(differentiate):
    module = fltorch.LSTM(INPUT_SIZE, HIDDEN_SIZE, batch_first=True, dtype=torch.float64)
    x = random_input((3, 4, INPUT_SIZE)).requires_grad_(True)
    output, _ = module(x)
    wrt = module.weight_ih_l0 if differentiate == "weights" else x
    gradient, = torch.autograd.grad(output.sum(), wrt, create_graph=True)
    penalty = (gradient ** 2).sum()
    with pytest.raises(RuntimeError, match="first-order gradients only"):
        (output.sum() + penalty).backward()


def test_inference_under_no_grad_matches_training_forward():
    module = fltorch.LSTM(INPUT_SIZE, HIDDEN_SIZE, num_layers=2, dtype=torch.float64)
    x = random_input((4, 3, INPUT_SIZE))
    with torch.no_grad():
        inferred, (h_n, _) = module(x)
    assert not inferred.requires_grad
    trained, (h_trained, _) = module(x)
    assert torch.equal(inferred, trained.detach()) and torch.equal(h_n, h_trained.detach())


# Errors

def _module(**options):
    return fltorch.LSTM(INPUT_SIZE, HIDDEN_SIZE, **options)


@pytest.mark.parametrize("options, error, message", [
    (dict(proj_size=HIDDEN_SIZE), ValueError,
     r"proj_size must be smaller than hidden_size \(4\), got 4"),
    (dict(proj_size=-1), ValueError, r"proj_size must be a positive int, or 0.*got int -1"),
    (dict(device="meta"), ValueError, r"device must be the CPU.*'meta'"),
    (dict(dtype=torch.float16), TypeError, r"dtype must be torch.float32 or torch.float64.*"
                                           r"float16"),
    (dict(dropout=1.5), ValueError, r"dropout must be a number between 0 and 1.*1.5"),
    (dict(num_layers=0), ValueError, r"num_layers must be a positive int.*0"),
    (dict(bidirectional="yes"), TypeError, r"bidirectional must be True or False.*'yes'"),
], ids=["proj_size", "negative_proj_size", "device", "dtype", "dropout", "num_layers",
        "bidirectional"])
def test_unsupported_arguments_raise(options, error, message):
    with pytest.raises(error, match=message):
        _module(**options)


def test_hidden_size_must_be_positive():
    with pytest.raises(ValueError, match=r"hidden_size must be a positive int.*-1"):
        fltorch.LSTM(INPUT_SIZE, -1)


def test_dropout_with_one_layer_warns():
    with pytest.warns(UserWarning, match="dropout=0.5 does nothing with num_layers=1"):
        _module(dropout=0.5)


@pytest.mark.parametrize("make_input, error, message", [
    (lambda: torch.zeros(2, 3, INPUT_SIZE, dtype=torch.float64), TypeError,
     r"input must have the parameters' dtype torch.float32, got torch.float64"),
    (lambda: torch.zeros(2, 3, INPUT_SIZE, dtype=torch.int64), TypeError,
     r"input must have the parameters' dtype torch.float32, got torch.int64"),
    (lambda: torch.zeros(2, 3, INPUT_SIZE, device="meta"), ValueError,
     r"input is on device meta; fastlstm.torch.LSTM runs on the CPU only"),
    (lambda: torch.zeros(2, 3, 5), ValueError,
     r"input must have 3 features \(last axis\), the module's input_size, got 5"),
    (lambda: torch.zeros(1, 2, 3, INPUT_SIZE), ValueError,
     r"input must have shape .*got \(1, 2, 3, 3\)"),
    (lambda: torch.zeros(0, 3, INPUT_SIZE), ValueError,
     r"input must have at least one sequence, one timestep and one feature, got shape "
     r"\(0, 3, 3\)"),
    (lambda: np.zeros((2, 3, INPUT_SIZE), np.float32), TypeError,
     r"input must be a torch.Tensor, got an array of shape \(2, 3, 3\)"),
], ids=["float64", "int64", "meta_device", "input_size", "rank", "empty", "ndarray"])
def test_bad_input_raises(make_input, error, message):
    with pytest.raises(error, match=message):
        _module()(make_input())


@pytest.mark.parametrize("hx, error, message", [
    (lambda: torch.zeros(1, 3, HIDDEN_SIZE), TypeError,
     r"hx must be \(h_0, c_0\), a list or tuple of 2 tensors, got a Tensor of shape"),
    (lambda: (torch.zeros(1, 3, HIDDEN_SIZE),) * 3, ValueError,
     r"hx must be \(h_0, c_0\), a list or tuple of 2 tensors, got a tuple of 3"),
    (lambda: (torch.zeros(1, 2, HIDDEN_SIZE), torch.zeros(1, 3, HIDDEN_SIZE)), ValueError,
     r"hx\[0\] \(h_0\) must have shape \(1, 3, 4\) \(num_directions \* num_layers, batch, "
     r"hidden_size\), got \(1, 2, 4\)"),
    (lambda: (torch.zeros(1, 3, HIDDEN_SIZE), torch.zeros(3, HIDDEN_SIZE)), ValueError,
     r"hx\[1\] \(c_0\) must have shape \(1, 3, 4\) .*, got \(3, 4\)"),
    (lambda: (torch.zeros(1, 3, HIDDEN_SIZE, dtype=torch.float64),
              torch.zeros(1, 3, HIDDEN_SIZE)), TypeError,
     r"hx\[0\] \(h_0\) must have the parameters' dtype torch.float32, got torch.float64"),
], ids=["tensor", "three", "h_0_shape", "c_0_shape", "dtype"])
def test_bad_hx_raises(hx, error, message):
    with pytest.raises(error, match=message):
        _module()(torch.zeros(2, 3, INPUT_SIZE), hx())


def _states(layers=2, batch=2, hidden=HIDDEN_SIZE, dtype=torch.float32):
    return torch.zeros(layers, batch, hidden, dtype=dtype)


# (input, hx) of calls torch.nn.LSTM(3, 4, num_layers=2) refuses.
_BAD_CALLS = {
    "input_rank_4": lambda: (torch.zeros(1, 2, 3, INPUT_SIZE), None),
    "input_rank_1": lambda: (torch.zeros(INPUT_SIZE), None),
    "input_size": lambda: (torch.zeros(5, 2, INPUT_SIZE + 2), None),
    "no_steps": lambda: (torch.zeros(0, 2, INPUT_SIZE), None),
    "input_dtype": lambda: (torch.zeros(5, 2, INPUT_SIZE, dtype=torch.float64), None),
    "input_int": lambda: (torch.zeros(5, 2, INPUT_SIZE, dtype=torch.int64), None),
    "hx_tensor": lambda: (torch.zeros(5, 2, INPUT_SIZE), _states()),
    "hx_three": lambda: (torch.zeros(5, 2, INPUT_SIZE), (_states(),) * 3),
    "h0_batch": lambda: (torch.zeros(5, 2, INPUT_SIZE), (_states(batch=3), _states())),
    "c0_hidden": lambda: (torch.zeros(5, 2, INPUT_SIZE), (_states(), _states(hidden=5))),
    "h0_layers": lambda: (torch.zeros(5, 2, INPUT_SIZE), (_states(layers=1), _states())),
    "h0_rank": lambda: (torch.zeros(5, 2, INPUT_SIZE), (_states()[:, 0], _states())),
    "h0_dtype": lambda: (torch.zeros(5, 2, INPUT_SIZE), (_states(dtype=torch.float64),
                                                         _states())),
    "c0_dtype": lambda: (torch.zeros(5, 2, INPUT_SIZE), (_states(),
                                                         _states(dtype=torch.float64))),
    "unbatched_with_batched_hx": lambda: (torch.zeros(5, INPUT_SIZE), (_states(batch=1),) * 2),
    "batched_with_unbatched_hx": lambda: (torch.zeros(5, 2, INPUT_SIZE), (_states()[:, 0],) * 2),
}


@pytest.mark.parametrize("call", _BAD_CALLS.values(), ids=_BAD_CALLS.keys())
def test_bad_call_raises_what_torch_raises(call):
    with pytest.raises(Exception) as expected:
        torch.nn.LSTM(INPUT_SIZE, HIDDEN_SIZE, num_layers=2)(*call())
    assert type(expected.value) in (RuntimeError, ValueError)
    with pytest.raises(type(expected.value)):
        fltorch.LSTM(INPUT_SIZE, HIDDEN_SIZE, num_layers=2)(*call())


def test_unbatched_input_needs_unbatched_hx():
    hx = (torch.zeros(1, 1, HIDDEN_SIZE), torch.zeros(1, 1, HIDDEN_SIZE))
    with pytest.raises(ValueError, match=r"shape \(1, 4\) .* for unbatched input, got \(1, 1, 4\)"):
        _module()(torch.zeros(5, INPUT_SIZE), hx)


def test_converted_parameters_raise():
    module = _module().half()
    with pytest.raises(TypeError, match=r"parameter weight_ih_l0 has dtype torch.float16"):
        module(torch.zeros(2, 3, INPUT_SIZE, dtype=torch.float16))
    module = _module().to("meta")
    with pytest.raises(ValueError, match=r"parameter weight_ih_l0 is on device meta"):
        module(torch.zeros(2, 3, INPUT_SIZE))


def test_packed_input_with_wrong_features_raises():
    packed = pack_padded_sequence(torch.zeros(2, 3, 5), [3, 2], batch_first=True)
    with pytest.raises(ValueError, match=r"input.data .* input_size=3\), got \(5, 5\)"):
        _module()(packed)


def test_importing_fastlstm_does_not_import_torch():
    code = "import sys, fastlstm; assert 'torch' not in sys.modules, 'torch was imported'"
    subprocess.run([sys.executable, "-c", code], check=True)


def test_without_torch_the_import_error_says_what_to_install():
    code = ("import sys; sys.modules['torch'] = None\n"
            "try:\n    import fastlstm.torch\nexcept ImportError as error:\n"
            "    print(error)\n")
    found = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True,
                           text=True).stdout
    assert 'pip install "fastlstm[torch]"' in found


# The benchmark

@pytest.mark.slow
def test_bench_times_the_adapter_padded_and_packed(tmp_path, capsys):
    from fastlstm.__main__ import main

    path = tmp_path / "bench.json"
    assert main(["bench", "--sizes", "tiny", "--repeat", "2", "--no-reference",
                 "--torch-adapter", "--json", str(path)]) == 0
    printed = capsys.readouterr().out
    assert "fastlstm.torch.LSTM in a PyTorch training step" in printed
    assert "ERROR" not in printed
    tiny = json.loads(path.read_text())["torch_adapter"]["sizes"]["tiny"]
    assert tiny["errors"] == []
    assert set(tiny["median_ms"]) == {"functional", "adapter", "torch", "adapter packed",
                                      "torch packed"}
    assert all(value > 0 for value in tiny["median_ms"].values())
    # Random lengths uniform between T/4 and T, T = 20.
    assert 5 <= tiny["mean_length"] <= 20
    assert tiny["ratios"]["packed_over_padded_adapter"] > 0


def test_bench_does_not_time_an_adapter_that_disagrees(monkeypatch, capsys):
    from fastlstm.tools import torch_adapter

    modules = torch_adapter._modules

    def wrong_adapter(*args):
        adapter, reference = modules(*args)
        with torch.no_grad():
            adapter.weight_hh_l0.add_(0.1)
        return adapter, reference

    monkeypatch.setattr(torch_adapter, "_modules", wrong_adapter)
    results = torch_adapter.run(sizes=["tiny"], repeat=2)
    assert capsys.readouterr().out.count("disagrees with torch.nn.LSTM") == 2
    assert results["sizes"]["tiny"]["median_ms"] == {}


def test_bench_has_rounds_for_every_size():
    from fastlstm.tools import torch_adapter
    from fastlstm.tools.sizes import SIZES

    assert set(torch_adapter.ROUNDS) == set(torch_adapter.PACKED_TORCH_ROUNDS) == set(SIZES)


@pytest.mark.slow
def test_bench_times_the_stacked_and_the_compiled_adapter(capsys):
    from fastlstm.tools import torch_graphs

    results = torch_graphs.run(repeat=2)
    printed = capsys.readouterr().out
    assert "ERROR" not in printed
    stack = results["stack"]
    assert stack["errors"] == []
    assert set(stack["median_ms"]) == {"num_layers=2", "two layers chained"}
    assert stack["ratio"] == stack["median_ms"]["num_layers=2"] / stack["median_ms"][
        "two layers chained"]
    assert set(results["compile"]) == set(torch_graphs.COMPILE_SIZES)
    for result in results["compile"].values():
        assert result["errors"] == []
        assert set(result["median_ms"]) == {"eager", "compiled"}


def test_bench_does_not_time_a_stack_that_disagrees(monkeypatch):
    from fastlstm.tools import torch_graphs

    chained = torch_graphs._Chained.__init__

    def wrong_chain(self, stacked):
        chained(self, stacked)
        with torch.no_grad():
            self.layers[1].weight_hh_l0.add_(0.1)

    monkeypatch.setattr(torch_graphs._Chained, "__init__", wrong_chain)
    result = torch_graphs._stack(torch.float64, 2, 1)
    assert "num_layers=2 disagrees with two chained layers" in result["errors"][0]
    assert "median_ms" not in result
