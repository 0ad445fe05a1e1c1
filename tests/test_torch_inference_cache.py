"""fastlstm.torch.LSTM keeps each layer's packed weights for inference
calls until a parameter changes, and sees every way one can change."""
import numpy as np
import pytest

torch = pytest.importorskip("torch")
import fastlstm.torch as flt  # noqa: E402


def _pair(**kwargs):
    torch.manual_seed(0)
    ours = flt.LSTM(5, 7, batch_first=True, dtype=torch.float64, **kwargs)
    theirs = torch.nn.LSTM(5, 7, batch_first=True, dtype=torch.float64, **kwargs)
    theirs.load_state_dict(ours.state_dict())
    return ours, theirs


def _check(ours, theirs, x, hx=None):
    with torch.no_grad():
        y, (h, c) = ours(x, hx)
        y_ref, (h_ref, c_ref) = theirs(x, hx)
    for a, b in ((y, y_ref), (h, h_ref), (c, c_ref)):
        np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=1e-10, atol=1e-12)


def _optimizer_step(ours, theirs):
    for module in (ours, theirs):
        optimizer = torch.optim.SGD(module.parameters(), lr=0.5)
        for p in module.parameters():
            p.grad = torch.ones_like(p)
        optimizer.step()


def _load_state_dict(ours, theirs):
    state = {k: v + 0.25 for k, v in theirs.state_dict().items()}
    theirs.load_state_dict(state)
    ours.load_state_dict(state)


def _copy_in_place(ours, theirs):
    with torch.no_grad():
        for module in (ours, theirs):
            module.weight_hh_l0.mul_(-1.0)


def _replace_data(ours, theirs):
    for module in (ours, theirs):
        module.weight_ih_l0.data = module.weight_ih_l0.data * 2.0


@pytest.mark.parametrize("change", [_optimizer_step, _load_state_dict, _copy_in_place,
                                    _replace_data])
@pytest.mark.parametrize("kwargs", [{}, dict(num_layers=2, bidirectional=True)])
def test_a_changed_parameter_is_seen_by_the_next_inference_call(change, kwargs):
    ours, theirs = _pair(**kwargs)
    x = torch.randn(3, 4, 5, dtype=torch.float64)
    _check(ours, theirs, x)
    change(ours, theirs)
    _check(ours, theirs, x)


def test_generation_with_the_state_carried_matches_torch():
    ours, theirs = _pair()
    x = torch.randn(1, 30, 5, dtype=torch.float64)
    with torch.inference_mode():
        hx = hx_ref = None
        for t in range(30):
            y, hx = ours(x[:, t:t + 1], hx)
            y_ref, hx_ref = theirs(x[:, t:t + 1], hx_ref)
            np.testing.assert_allclose(y.numpy(), y_ref.numpy(), rtol=1e-10, atol=1e-12)


def test_a_module_with_a_cache_pickles_and_computes_the_same():
    import io

    ours, _ = _pair()
    x = torch.randn(2, 3, 5, dtype=torch.float64)
    with torch.no_grad():
        expected = ours(x)[0]
    buffer = io.BytesIO()
    torch.save(ours, buffer)
    buffer.seek(0)
    loaded = torch.load(buffer, weights_only=False)
    with torch.no_grad():
        np.testing.assert_array_equal(loaded(x)[0].numpy(), expected.numpy())
