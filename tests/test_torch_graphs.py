"""fastlstm.torch.LSTM in PyTorch's graph tools: torch.compile with no graph
break, torch.export, both ONNX exporters (the graph run by ONNX Runtime),
torch.jit.trace, and a clear refusal from torch.jit.script."""
import warnings

import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="fastlstm.torch needs PyTorch")

import fastlstm.torch as fltorch  # noqa: E402
from fastlstm import _handles  # noqa: E402

INPUT_SIZE, HIDDEN_SIZE, BATCH, STEPS = 3, 4, 2, 5
# The stack runs through one operator call, the bidirectional module through
# one per layer and direction.
MODULES = {"stack": dict(num_layers=2), "bidirectional": dict(bidirectional=True)}


def module(batch_first=True, **options):
    torch.manual_seed(0)
    return fltorch.LSTM(INPUT_SIZE, HIDDEN_SIZE, batch_first=batch_first, **options)


def example(lstm):
    """An input and a random initial state for ``lstm``, float32."""
    generator = torch.Generator().manual_seed(1)
    shape = (BATCH, STEPS) if lstm.batch_first else (STEPS, BATCH)
    x = torch.randn(*shape, INPUT_SIZE, generator=generator)
    layers = lstm.num_layers * (2 if lstm.bidirectional else 1)
    hx = tuple(torch.randn(layers, BATCH, HIDDEN_SIZE, generator=generator) for _ in range(2))
    return x, hx


def flat(result):
    output, (h_n, c_n) = result
    return output, h_n, c_n


def gradients(lstm, call, x, hx):
    """The results of ``call(x, hx)`` and the gradients of a random linear
    loss of them with respect to x, hx and the parameters."""
    leaves = [t.detach().clone().requires_grad_(True) for t in (x, *hx)]
    lstm.zero_grad(set_to_none=True)
    results = flat(call(leaves[0], tuple(leaves[1:])))
    generator = torch.Generator().manual_seed(2)
    sum(torch.randn(r.shape, generator=generator).mul(r).sum() for r in results).backward()
    return ([r.detach() for r in results]
            + [t.grad for t in leaves] + [p.grad.clone() for p in lstm.parameters()])


def assert_float32_close(got, expected):
    """Equal within float32 rounding: the same kernels, or ONNX Runtime's LSTM
    against fastlstm's (a few units in the last place of each value)."""
    assert len(got) == len(expected)
    for found, wanted in zip(got, expected):
        np.testing.assert_allclose(np.asarray(found), np.asarray(wanted), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("options", MODULES.values(), ids=MODULES.keys())
def test_compile_fullgraph_matches_eager(options):
    lstm = module(**options)
    x, hx = example(lstm)
    explanation = torch._dynamo.explain(lstm)(x, hx)
    assert explanation.graph_break_count == 0, explanation.break_reasons
    compiled = torch.compile(lstm, fullgraph=True, backend="aot_eager")
    assert_float32_close(gradients(lstm, compiled, x, hx), gradients(lstm, lstm, x, hx))
    with torch.no_grad():
        assert_float32_close(flat(compiled(x, hx)), flat(lstm(x, hx)))
    # Every cache the compiled forward passes kept was taken by a backward pass.
    assert _handles.pending() == 0


def test_compile_with_inductor_matches_eager():
    lstm = module(**MODULES["stack"])
    x, hx = example(lstm)
    compiled = torch.compile(lstm, fullgraph=True)
    assert_float32_close(gradients(lstm, compiled, x, hx), gradients(lstm, lstm, x, hx))


@pytest.mark.parametrize("options", MODULES.values(), ids=MODULES.keys())
def test_export_holds_the_operator_and_matches_eager(options):
    lstm = module(**options).eval()
    x, hx = example(lstm)
    program = torch.export.export(lstm, (x, hx))
    targets = {str(node.target) for node in program.graph.nodes if node.op == "call_function"}
    assert "fastlstm.lstm_stack.default" in targets
    with torch.no_grad():
        assert_float32_close(flat(program.module()(x, hx)), flat(lstm(x, hx)))


ONNX_CASES = {"stack_batch_first": dict(num_layers=2),
              "bidirectional_seq_first": dict(bidirectional=True, batch_first=False)}


@pytest.mark.parametrize("dynamo", [True, False], ids=["dynamo", "torchscript"])
@pytest.mark.parametrize("options", ONNX_CASES.values(), ids=ONNX_CASES.keys())
def test_onnx_export_runs_in_onnxruntime_as_eager(options, dynamo, tmp_path):
    onnx = pytest.importorskip("onnx")
    onnxruntime = pytest.importorskip("onnxruntime")
    if dynamo:
        pytest.importorskip("onnxscript", reason="the dynamo exporter needs onnxscript")
    lstm = module(**options).eval()
    x, hx = example(lstm)
    path = tmp_path / "lstm.onnx"
    with warnings.catch_warnings():
        # The TorchScript exporter's deprecation notice, and its own notes.
        warnings.simplefilter("ignore")
        torch.onnx.export(lstm, (x, hx), path, dynamo=dynamo, input_names=["x", "h0", "c0"],
                          output_names=["y", "h_n", "c_n"])
    nodes = [node.op_type for node in onnx.load(path).graph.node]
    assert nodes.count("LSTM") == lstm.num_layers, nodes
    session = onnxruntime.InferenceSession(path, providers=["CPUExecutionProvider"])
    found = session.run(None, {"x": x.numpy(), "h0": hx[0].numpy(), "c0": hx[1].numpy()})
    with torch.no_grad():
        assert_float32_close(found, flat(lstm(x, hx)))


def test_packed_sequences_in_an_onnx_export_raise(monkeypatch):
    # torch.nn.LSTM's operator over the padded batch would ignore the lengths.
    lstm = module()
    packed = torch.nn.utils.rnn.pack_padded_sequence(example(lstm)[0], [STEPS, 2],
                                                     batch_first=True)
    monkeypatch.setattr(torch.onnx, "is_in_onnx_export", lambda: True)
    with pytest.raises(ValueError, match="input must be a tensor in an ONNX export, got a "
                                         "PackedSequence"):
        lstm(packed)


# The argument checks compare sizes, which a trace records as constants.
@pytest.mark.filterwarnings("ignore::torch.jit.TracerWarning")
@pytest.mark.parametrize("options", MODULES.values(), ids=MODULES.keys())
def test_jit_trace_matches_eager_in_training_and_inference(options):
    lstm = module(**options)
    x, hx = example(lstm)
    traced = torch.jit.trace(lstm, (x, hx))
    assert_float32_close(gradients(lstm, traced, x, hx), gradients(lstm, lstm, x, hx))
    with torch.no_grad():
        assert_float32_close(flat(traced(x, hx)), flat(lstm(x, hx)))


@pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated:DeprecationWarning")
def test_jit_script_raises_and_names_the_alternatives():
    model = torch.nn.Sequential(module())
    with pytest.raises(RuntimeError, match=r"torch.jit.script cannot compile "
                                           r"fastlstm.torch.LSTM.*torch.compile\(model\), "
                                           r"torch.export.export"):
        torch.jit.script(model)


@pytest.mark.parametrize("options", MODULES.values(), ids=MODULES.keys())
def test_compiled_inference_keeps_the_packed_weights_until_a_weight_changes(options,
                                                                            monkeypatch):
    packed = []
    packed_lstm = fltorch.PackedLSTM

    def counting(*args, **kwargs):
        packed.append(args[0].shape)
        return packed_lstm(*args, **kwargs)

    monkeypatch.setattr(fltorch, "PackedLSTM", counting)
    lstm = module(**options).eval()
    x, hx = example(lstm)
    compiled = torch.compile(lstm, fullgraph=True, backend="aot_eager")
    with torch.no_grad():
        first = flat(compiled(x, hx))
        assert_float32_close(flat(compiled(x, hx)), first)
        assert len(packed) == 2                  # one per layer and direction, once
        lstm.weight_hh_l0.add_(0.1)
        changed = flat(compiled(x, hx))
        assert len(packed) == 3                  # that layer's again
        assert_float32_close(changed, flat(lstm(x, hx)))
    assert not torch.equal(changed[0], first[0])
