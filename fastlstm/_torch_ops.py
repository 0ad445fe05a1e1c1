"""fastlstm's kernels as PyTorch operators: ``torch.ops.fastlstm.lstm``.

A ``torch.library.custom_op`` with its autograd and fake (meta)
registrations, so that autograd differentiates it and ``torch.compile``
traces it as one opaque node. The forward operator keeps the kernels'
cache in :mod:`fastlstm._handles` and returns its handle as a 0-d int64
tensor; the backward operator takes it. Weights are in Keras' layout:
``kernel (input_dim, 4 * units)``, ``recurrent_kernel (units, 4 * units)``,
``bias (4 * units,)``, gates i, f, c, o.

Tensors reach the kernels as NumPy views of their memory; a copy is made
only of a tensor that is not C-contiguous (the kernels read C order). The
results are tensors sharing the memory the kernels wrote.
"""
from typing import Optional
import weakref

import torch

from . import _handles

__all__ = ["lstm"]


def _numpy(tensor):
    return None if tensor is None else tensor.detach().numpy()


@torch.library.custom_op("fastlstm::lstm_forward", mutates_args=(), device_types="cpu")
def _forward(x: torch.Tensor, kernel: torch.Tensor, recurrent_kernel: torch.Tensor,
             bias: Optional[torch.Tensor], h0: torch.Tensor, c0: torch.Tensor,
             mask: Optional[torch.Tensor], recurrent_dropout_mask: Optional[torch.Tensor],
             go_backwards: bool, activation: str, recurrent_activation: str,
             keep_cache: bool) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    outputs, h, c, handle = _handles.forward(
        _numpy(x), _numpy(kernel), _numpy(recurrent_kernel), _numpy(bias), _numpy(h0),
        _numpy(c0), _numpy(mask), _numpy(recurrent_dropout_mask), go_backwards, activation,
        recurrent_activation, keep_cache)
    handle_tensor = torch.tensor(handle, dtype=torch.int64)
    if handle:
        # The cache lives as long as the handle, which autograd keeps until
        # the backward pass or until it frees a graph never backpropagated.
        weakref.finalize(handle_tensor, _handles.release, handle)
    return torch.from_numpy(outputs), torch.from_numpy(h), torch.from_numpy(c), handle_tensor


@_forward.register_fake
def _forward_fake(x, kernel, recurrent_kernel, bias, h0, c0, mask, recurrent_dropout_mask,
                  go_backwards, activation, recurrent_activation, keep_cache):
    batch, timesteps, _ = x.shape
    units = recurrent_kernel.shape[0]
    return (x.new_empty((batch, timesteps, units)), h0.new_empty(h0.shape),
            c0.new_empty(c0.shape), x.new_empty((), dtype=torch.int64))


@torch.library.custom_op("fastlstm::lstm_backward", mutates_args=(), device_types="cpu")
def _backward(handle: torch.Tensor, grad_outputs: torch.Tensor, grad_h: torch.Tensor,
              grad_c: torch.Tensor, input_dim: int, input_gradient: bool,
              has_bias: bool) -> list[torch.Tensor]:
    grads = _handles.backward(int(handle), _numpy(grad_outputs), _numpy(grad_h),
                              _numpy(grad_c), input_gradient)
    # Without input_gradient, dx is an empty tensor (the operator returns tensors only).
    # The operator returns tensors only: an empty dx without input_gradient,
    # and an empty dbias without a bias.
    dx = grads.x if input_gradient else grads.kernel[:0, :0].copy()
    dbias = grads.bias if has_bias else grads.bias[:0].copy()
    return [torch.from_numpy(g) for g in (dx, grads.kernel, grads.recurrent_kernel, dbias,
                                          grads.h0, grads.c0)]


@_backward.register_fake
def _backward_fake(handle, grad_outputs, grad_h, grad_c, input_dim, input_gradient, has_bias):
    batch, timesteps, units = grad_outputs.shape
    new = grad_outputs.new_empty
    return [new((batch, timesteps, input_dim) if input_gradient else (0, 0)),
            new((input_dim, 4 * units)), new((units, 4 * units)),
            new((4 * units,) if has_bias else (0,)), new((batch, units)), new((batch, units))]


def _setup_context(ctx, inputs, output):
    ctx.input_dim = inputs[1].shape[0]
    ctx.has_bias = inputs[3] is not None
    ctx.save_for_backward(output[3])


def _autograd_backward(ctx, grad_outputs, grad_h, grad_c, _grad_handle):
    (handle,) = ctx.saved_tensors
    input_gradient = bool(ctx.needs_input_grad[0])
    dx, dkernel, drecurrent, dbias, dh0, dc0 = _backward(
        handle, grad_outputs.contiguous(), grad_h.contiguous(), grad_c.contiguous(),
        ctx.input_dim, input_gradient, ctx.has_bias)
    return (dx if input_gradient else None, dkernel, drecurrent,
            dbias if ctx.has_bias else None, dh0, dc0, None, None, None, None, None, None)


_forward.register_autograd(_autograd_backward, setup_context=_setup_context)


def lstm(x, kernel, recurrent_kernel, bias, h0, c0, mask=None, recurrent_dropout_mask=None,
         go_backwards=False, activation="tanh", recurrent_activation="sigmoid"):
    """``(outputs, h, c)`` of an LSTM over ``x``, differentiable by autograd.

    The cache for the backward pass is kept only when autograd records the
    call (gradients enabled and an input that requires them).
    """
    keep_cache = torch.is_grad_enabled() and any(
        t is not None and t.requires_grad for t in (x, kernel, recurrent_kernel, bias, h0, c0))
    outputs, h, c, _ = _forward(x, kernel, recurrent_kernel, bias, h0, c0, mask,
                                recurrent_dropout_mask, go_backwards, activation,
                                recurrent_activation, keep_cache)
    return outputs, h, c
