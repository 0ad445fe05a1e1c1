"""How the kernels split a call's work: every measured rule in one place.

Each rule below is a threshold chosen by measurement; the measurements, and
why each rule is what it is, are in the tuning section of the performance
page (``docs/performance.rst``, "How the kernels choose"). The functional
doors, the stack and :class:`~fastlstm.PackedLSTM` ask this module, and
nothing else, how to run a call.
"""
from dataclasses import dataclass

from . import _config

__all__ = ["ForwardPlan", "forward_plan", "call_threads", "forward_flops", "stack_flops",
           "hoist_input_product", "split_units", "pipeline_stack", "stack_span",
           "pack_masked_batch"]

# A call of fewer floating-point operations runs on one thread: it takes well
# under a millisecond alone, while waking a second thread costs tens of
# microseconds on an idle machine.
PARALLEL_MIN_FLOPS = 20_000_000

# The forward pass computes the input product of all steps as one matrix
# product before the time loop when each thread's share of a step's input
# product is more than this many multiply-adds; below, each step multiplies
# [x_t, h_{t-1}] by [kernel; recurrent_kernel] in its register tiles.
HOIST_MIN_MULTIPLY_ADDS = 1_000_000

# The forward and backward passes split each step's units among the
# threads, instead of the batch, when the batch split would give each thread at most
# UNIT_SPLIT_MAX_ROWS rows, and the unit split would give each thread at
# least UNIT_SPLIT_UNITS_PER_ROW units for each of those rows.
UNIT_SPLIT_MAX_ROWS = 2
UNIT_SPLIT_UNITS_PER_ROW = 32

# A stack of layers runs as one pipelined call (a thread per layer) when the
# batch split would give each thread at most this many rows, and no layer
# has more than PIPELINE_MAX_UNITS units (wider layers run faster one by one,
# each split by units).
PIPELINE_MAX_ROWS_PER_THREAD = 2
PIPELINE_MAX_UNITS = 128

# A pipelined layer above the first computes its input product for a span of
# steps at once, so that each weight panel serves at least this many rows
# while it is in cache.
SPAN_ROWS = 16

# A masked batch whose mask is a trailing padding runs packed, its rows
# sorted by length, when at most this share of its steps is valid: the
# gather into packed rows and back costs 10 to 16% of a training step with
# none padded, and a batch 0.6 valid took 0.65 to 0.78 of the masked time.
PACKED_MAX_VALID = 0.75

# An inference call (no record kept) also needs each thread's rows times the
# units to be at least this: a forward pass alone gains less from the rows it
# skips, and at 1,024 to 2,048 its packed and masked times were equal.
PACKED_INFERENCE_MIN_ROW_UNITS = 4096


@dataclass(frozen=True)
class ForwardPlan:
    """How one forward pass runs: on ``threads`` threads, each a block of
    the batch or, with ``split_units``, of each step's units, with BLAS
    single-threaded inside them or not, and with the input product of all
    steps hoisted into one product (``hoist``) or computed step by step."""

    threads: int
    single_threaded_blas: bool
    hoist: bool
    split_units: bool


def forward_flops(x_shape, units):
    """Floating-point operations of the matrix products of a forward pass."""
    batch, timesteps, input_dim = x_shape
    return 8 * batch * timesteps * units * (input_dim + units)


def stack_flops(batch, timesteps, input_dim, units):
    """:func:`forward_flops` of a stack of layers of ``units``."""
    inputs = [input_dim] + list(units[:-1])
    return sum(forward_flops((batch, timesteps, i), u) for i, u in zip(inputs, units))


def call_threads(flops):
    """``(threads, single_threaded_blas)`` for a kernel call of ``flops``
    work: the configured threads (:func:`fastlstm.set_num_threads`), one
    for a call under ``PARALLEL_MIN_FLOPS``."""
    threads, single_blas = _config.kernel_threads()
    if single_blas and flops < PARALLEL_MIN_FLOPS:
        return 1, True
    return threads, single_blas


def hoist_input_product(rows, input_dim, units):
    """Whether a forward pass on threads of ``rows`` batch rows each
    computes the input product of all steps as one product before the time
    loop. Otherwise each step's product runs over [x_t, h_{t-1}] and
    [kernel; recurrent_kernel], so inference needs no (B, T, 4H) gate
    buffer."""
    return rows * input_dim * 4 * units > HOIST_MIN_MULTIPLY_ADDS


def split_units(batch, units, threads):
    """Whether a forward or backward pass on ``threads`` threads shares
    each step's units among them rather than the batch: when the batch split would give
    each thread at most ``UNIT_SPLIT_MAX_ROWS`` rows, and each thread's
    share of the units is at least ``UNIT_SPLIT_UNITS_PER_ROW`` per row."""
    rows = -(-batch // max(1, threads))
    return (threads >= 2 and rows <= UNIT_SPLIT_MAX_ROWS
            and units >= threads * rows * UNIT_SPLIT_UNITS_PER_ROW)


def forward_plan(batch, timesteps, input_dim, units):
    """The :class:`ForwardPlan` of a forward pass over x (batch, timesteps,
    input_dim) with ``units`` units."""
    threads, single_blas = call_threads(forward_flops((batch, timesteps, input_dim), units))
    rows = -(-batch // max(1, min(threads, batch)))
    return ForwardPlan(threads, single_blas, hoist_input_product(rows, input_dim, units),
                       split_units(batch, units, threads))


def pipeline_stack(batch, timesteps, input_dim, units):
    """Whether a stack of layers of ``units`` (one entry per layer) over
    ``batch`` sequences of ``timesteps`` steps of ``input_dim`` features
    runs as one pipelined call, when nothing else rules it out: two or more
    layers, two or more threads, a batch the batch split would cut into at
    most ``PIPELINE_MAX_ROWS_PER_THREAD`` rows per thread, and layers of at
    most ``PIPELINE_MAX_UNITS`` units."""
    threads = call_threads(stack_flops(batch, timesteps, input_dim, units))[0]
    return (len(units) >= 2 and threads >= 2
            and -(-batch // threads) <= PIPELINE_MAX_ROWS_PER_THREAD
            and max(units) <= PIPELINE_MAX_UNITS)


def stack_span(batch, timesteps):
    """The steps of a pipelined layer's input product computed at once."""
    return max(1, min(timesteps, -(-SPAN_ROWS // batch)))


def pack_masked_batch(batch, timesteps, input_dim, units, valid_steps, training=True):
    """Whether a masked call whose mask is a trailing padding, ``valid_steps``
    of its ``batch * timesteps`` steps kept, runs on the packed kernels:
    when at most ``PACKED_MAX_VALID`` of the steps are valid, the call is
    large enough for two threads, and the masked kernels would not split
    each step's units (a few sequences, where the packed kernels, which
    split the sequences, gained nothing). A call that keeps no record for a
    backward pass (not ``training``) also needs each thread's rows times
    the units to reach ``PACKED_INFERENCE_MIN_ROW_UNITS``."""
    flops = forward_flops((batch, timesteps, input_dim), units)
    threads = call_threads(flops)[0]
    return (valid_steps <= PACKED_MAX_VALID * batch * timesteps
            and flops >= PARALLEL_MIN_FLOPS
            and not split_units(batch, units, threads)
            and (training or -(-batch // threads) * units >= PACKED_INFERENCE_MIN_ROW_UNITS))
