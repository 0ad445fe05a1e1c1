"""Data-parallel training over MPI (mpi4py): several processes, one model.

Every process (a *rank*) holds the whole model and trains on its own share
of the samples. At each step every rank computes the gradients of its own
batch; :class:`DistributedOptimizer` replaces them by their mean over the
ranks, with one ``Allreduce`` of one buffer holding every gradient, and then
clips and applies them exactly as the optimizer it wraps would. Every rank
makes the same update, so weights that start equal stay equal. This is
Horovod's scheme:

- :func:`broadcast_weights` (or the :class:`BroadcastWeights` callback at
  the start of ``fit``) gives every rank the weights of one of them;
- :func:`shard` hands each rank its share of the samples;
- :class:`AverageMetrics`, the first callback of ``fit``, averages each
  epoch's logs over the ranks before any other callback sees them, so the
  History, ``EarlyStopping`` and ``ModelCheckpoint`` see the same values on
  every rank and decide the same;
- the progress bar and the files are left to rank 0 (``verbose`` and
  ``ModelCheckpoint`` on rank 0 only, ``save_weights`` behind
  ``if comm.rank == 0``).

A script written this way runs with ``mpiexec -n 4 python train.py`` on one
machine or across a cluster's nodes, and unchanged on one process.

When the job has several ranks, the first use of this module's functions
or classes (a :class:`DistributedOptimizer`, :func:`shard`, ...) makes an
uncaught exception abort the whole job (``MPI_Abort``) after printing its
traceback, as ``python -m mpi4py train.py`` does: otherwise the other ranks
would wait forever in their next ``Allreduce``. Importing the module changes
nothing (``sys.excepthook`` stays as it was).

Examples
--------
On one process the module works as on many (the mean over one rank is the
gradient itself):

>>> import numpy as np
>>> from fastlstm import optimizers
>>> from fastlstm.distributed import DistributedOptimizer
>>> weight = np.array([1.0, 2.0])
>>> sgd = DistributedOptimizer(optimizers.SGD(learning_rate=0.1))
>>> sgd.apply([np.array([1.0, -1.0])], [weight])
>>> weight, sgd.allreduce_count
(array([0.9, 2.1]), 1)
"""
import sys
import time

import numpy as np

try:
    from mpi4py import MPI
except ImportError as error:
    raise ImportError('fastlstm.distributed needs mpi4py and an MPI library: '
                      'pip install "fastlstm[mpi]" (or, on a cluster, pip install mpi4py '
                      'built against its MPI)') from error

from . import optimizers as optimizers_module
from ._validation import check_int, describe
from .callbacks import Callback
from .optimizers import check_gradients

__all__ = ["DistributedOptimizer", "broadcast_weights", "BroadcastWeights", "AverageMetrics",
           "shard"]


# mpiexec ends the whole job as soon as one rank aborts, and drops what the
# ranks printed that it has not yet passed on: the traceback needs a moment.
_ABORT_DELAY_SECONDS = 0.5


def _abort_on_uncaught_exception(kind, value, traceback):
    _previous_excepthook[0](kind, value, traceback)
    sys.stdout.flush()
    sys.stderr.flush()
    time.sleep(_ABORT_DELAY_SECONDS)
    MPI.COMM_WORLD.Abort(1)


# The hook that was in place when the abort handler was installed; empty
# until then.
_previous_excepthook = []


def _install_abort_handler():
    """Make an uncaught exception abort the whole job, once, and only in a
    job of several ranks: from then on the other ranks would wait forever
    in a collective call for the rank that failed."""
    if _previous_excepthook or MPI.COMM_WORLD.Get_size() == 1:
        return
    _previous_excepthook.append(sys.excepthook)
    sys.excepthook = _abort_on_uncaught_exception


def _communicator(comm):
    """``comm`` (``MPI.COMM_WORLD`` for None), checked; every function and
    class of this module takes its ranks from here, so the first of them to
    run installs the abort handler."""
    if comm is None:
        comm = MPI.COMM_WORLD
    elif not isinstance(comm, MPI.Intracomm):
        raise TypeError(f"comm must be an mpi4py intracommunicator (such as "
                        f"mpi4py.MPI.COMM_WORLD) or None, got {describe(comm)}")
    _install_abort_handler()
    return comm


def _check_root(root, comm):
    root = check_int(root, "root", minimum=0)
    if root >= comm.Get_size():
        raise ValueError(f"root must be a rank in [0, {comm.Get_size()}), got {root}")
    return root


def _wrapped(attribute, doc):
    """A read-only property showing the wrapped optimizer's ``attribute``."""
    return property(lambda self: getattr(self.optimizer, attribute), doc=doc)


class DistributedOptimizer(optimizers_module.Optimizer):
    """An optimizer that averages the gradients over the ranks before each update.

    ``apply(grads, variables)`` packs every gradient into one preallocated
    flat buffer, sums the buffers of all ranks with one in-place
    ``Allreduce``, divides by the number of ranks, and hands the means to the
    wrapped optimizer, which clips (``clipnorm``, ``clipvalue``,
    ``global_clipnorm`` act on the averaged gradients, as on one process) and
    updates. Its slots (moments, momentum) see the same gradients on every
    rank and stay equal too.

    Each rank's gradient is the mean over its own batch, so the average is
    the gradient of the mean over all the ranks' batches when the batches
    are the same size (and, with a mask that reaches the loss, keep as many
    positions); otherwise each rank weighs equally, as in Horovod.

    Parameters
    ----------
    optimizer : str or fastlstm.optimizers.Optimizer
        The optimizer to wrap (a name makes one with Keras' defaults).
    comm : mpi4py.MPI.Intracomm or None
        The ranks to average over. Default ``MPI.COMM_WORLD``.

    Attributes
    ----------
    optimizer : fastlstm.optimizers.Optimizer
        The wrapped optimizer, which holds the state.
    comm : mpi4py.MPI.Intracomm
    allreduce_count : int
        ``Allreduce`` calls made so far: one per ``apply``.
    allreduce_seconds : float
        Time spent in them (waiting for the slowest rank included).

    Examples
    --------
    >>> import fastlstm as fl
    >>> from fastlstm.distributed import DistributedOptimizer
    >>> optimizer = DistributedOptimizer(fl.optimizers.Adam(1e-3, global_clipnorm=1.0))
    >>> model = fl.Sequential([fl.LSTM(8), fl.Dense(1)])
    >>> model.compile(optimizer=optimizer, loss="mse")
    """

    def __init__(self, optimizer, comm=None):
        # No base initialisation: the wrapped optimizer keeps the rate, the
        # clipping settings, the slots and the step count.
        if isinstance(optimizer, DistributedOptimizer):
            raise ValueError("optimizer is already a DistributedOptimizer; wrapping it again "
                             "would average every gradient twice")
        self.optimizer = optimizers_module.get(optimizer)
        self.comm = _communicator(comm)
        self.allreduce_count = 0
        self.allreduce_seconds = 0.0
        self._layout = None
        self._buffer = None
        self._means = None

    def __repr__(self):
        return f"DistributedOptimizer({self.optimizer!r}, ranks={self.comm.Get_size()})"

    name = _wrapped("name", "The wrapped optimizer's name.")
    iterations = _wrapped("iterations", "The number of updates applied.")
    weight_decay = _wrapped("weight_decay", "The wrapped optimizer's decoupled weight decay.")
    variables = _wrapped("variables", "The arrays the optimizer was built for.")
    clipnorm = _wrapped("clipnorm", "Clipping of each averaged gradient's norm.")
    clipvalue = _wrapped("clipvalue", "Clipping of each averaged gradient's entries.")
    global_clipnorm = _wrapped("global_clipnorm", "Clipping of the averaged gradients' norm.")

    @property
    def learning_rate(self):
        """The wrapped optimizer's rate of the next update; setting it sets
        theirs (as ``ReduceLROnPlateau`` does)."""
        return self.optimizer.learning_rate

    @learning_rate.setter
    def learning_rate(self, value):
        self.optimizer.learning_rate = value

    def build(self, variables):
        """Build the wrapped optimizer for ``variables`` (see :meth:`Optimizer.build`)."""
        self.optimizer.build(variables)

    def get_state(self):
        """The wrapped optimizer's state (see :meth:`Optimizer.get_state`)."""
        return self.optimizer.get_state()

    def set_state(self, state, variables, check_only=False):
        """Set the wrapped optimizer's state (see :meth:`Optimizer.set_state`)."""
        self.optimizer.set_state(state, variables, check_only)

    def apply(self, grads, variables=None):
        """Average ``grads`` over the ranks, then apply them with the wrapped optimizer.

        Every rank must call it at the same step with gradients of the same
        shapes (None entries at the same places).

        Parameters
        ----------
        grads, variables
            As for :meth:`fastlstm.optimizers.Optimizer.apply`.
        """
        if variables is None:
            variables = self.optimizer.variables
            if variables is None:
                raise RuntimeError("the optimizer is not built: pass the variables to the "
                                   "first apply(), or call build(variables)")
        if isinstance(variables, np.ndarray) or not isinstance(variables, (list, tuple)):
            raise TypeError(f"variables must be a list of arrays, got {describe(variables)}")
        present = check_gradients(grads, variables)
        means = self._average([gradient for _, gradient in present], [k for k, _ in present],
                              [gradient.dtype for _, gradient in present])
        averaged = [None] * len(grads)
        for (k, _), mean in zip(present, means):
            averaged[k] = mean
        self.optimizer.apply(averaged, variables)

    def _average(self, gradients, indices, dtypes):
        """The means over the ranks of ``gradients``: views of the one buffer."""
        layout = (tuple(indices), tuple(g.shape for g in gradients), tuple(dtypes))
        if layout != self._layout:
            # Float32 throughout unless some variable is float64.
            dtype = np.result_type(np.float32, *dtypes)
            self._buffer = np.empty(sum(g.size for g in gradients), dtype)
            self._means, start = [], 0
            for gradient in gradients:
                self._means.append(self._buffer[start:start + gradient.size]
                                   .reshape(gradient.shape))
                start += gradient.size
            self._layout = layout
        for mean, gradient in zip(self._means, gradients):
            np.copyto(mean, gradient, casting="unsafe")
        started = time.perf_counter()
        self.comm.Allreduce(MPI.IN_PLACE, self._buffer, op=MPI.SUM)
        self.allreduce_seconds += time.perf_counter() - started
        self.allreduce_count += 1
        np.divide(self._buffer, self.comm.Get_size(), out=self._buffer)
        return self._means


def broadcast_weights(model, root=0, comm=None):
    """Give every rank the weights of rank ``root``.

    Call it on every rank once the model is built (its layers have their
    weights), before training: the ranks then start from the same point.

    Parameters
    ----------
    model : fastlstm.Sequential or a layer
        Anything with ``get_weights`` and ``set_weights``, built.
    root : int
        The rank whose weights every rank receives. Default 0.
    comm : mpi4py.MPI.Intracomm or None
        Default ``MPI.COMM_WORLD``.

    Examples
    --------
    >>> import fastlstm as fl
    >>> from fastlstm.distributed import broadcast_weights
    >>> model = fl.Sequential([fl.LSTM(8), fl.Dense(1)])
    >>> model.build((None, 10, 3))
    >>> broadcast_weights(model)
    """
    comm = _communicator(comm)
    root = _check_root(root, comm)
    if not all(hasattr(model, name) for name in ("get_weights", "set_weights")):
        raise TypeError(f"model must be a fastlstm model or layer (with get_weights and "
                        f"set_weights), got {describe(model)}")
    if not getattr(model, "built", True):
        raise RuntimeError("the model has no weights yet: call model.build(input_shape) (or "
                           "the model on a batch) on every rank before broadcasting")
    weights = [np.ascontiguousarray(w) for w in model.get_weights()]
    signatures = comm.allgather([(w.shape, w.dtype.str) for w in weights])
    differing = [rank for rank, signature in enumerate(signatures)
                 if signature != signatures[root]]
    if differing:
        raise ValueError(f"every rank's model must have the weights of rank {root}'s (shapes "
                         f"and dtypes {signatures[root]}); ranks {differing} have "
                         f"{[signatures[rank] for rank in differing]}")
    for w in weights:
        comm.Bcast(w, root=root)
    model.set_weights(weights)


class BroadcastWeights(Callback):
    """Broadcast rank ``root``'s weights to every rank at the start of ``fit``.

    The model must be built before ``fit`` (``model.build(input_shape)``),
    since fastlstm's layers create their weights on their first call.

    Parameters
    ----------
    root : int
        Default 0.
    comm : mpi4py.MPI.Intracomm or None
        Default ``MPI.COMM_WORLD``.
    """

    def __init__(self, root=0, comm=None):
        super().__init__()
        self.comm = _communicator(comm)
        self.root = _check_root(root, self.comm)

    def on_train_begin(self, logs=None):
        broadcast_weights(self.model, self.root, self.comm)


class AverageMetrics(Callback):
    """Average each epoch's logs over the ranks; keep the ranks in step.

    Put it first in ``fit``'s callbacks: it replaces the values of the
    epoch's logs by their means over the ranks, in place, so the callbacks
    after it (``EarlyStopping``, ``ModelCheckpoint``, the History, the
    progress bar's epoch line) see the same logs on every rank. With equal
    shares, the mean of the ranks' epoch losses is the loss over all their
    samples. The running logs shown during an epoch stay the rank's own.

    It also checks what would otherwise leave ranks waiting for each other
    forever: that every rank runs as many steps per epoch (one ``Allreduce``
    each), and that they begin every step and epoch, and stop, together (a
    callback that stopped one rank alone, in the middle of an epoch or at
    its end). A mismatch raises ``RuntimeError`` on every rank. The check of
    each step gathers one short string from every rank, a small fraction of
    the gradients' ``Allreduce``.

    Parameters
    ----------
    comm : mpi4py.MPI.Intracomm or None
        Default ``MPI.COMM_WORLD``.
    """

    def __init__(self, comm=None):
        super().__init__()
        self.comm = _communicator(comm)
        self._epoch = 0

    def on_train_begin(self, logs=None):
        steps = self.comm.allgather(self.params.get("steps"))
        if len(set(steps)) > 1:
            raise RuntimeError(
                f"every rank must run the same number of steps per epoch (one Allreduce each), "
                f"got {steps} on ranks 0 to {len(steps) - 1}: split the samples with shard() "
                f"and choose a batch_size with which the last batch gives every rank at least "
                f"one sample")

    def _agree(self, state, payload=None):
        """Every rank's ``payload``, once every rank is at the same ``state``."""
        every_rank = self.comm.allgather((state, payload))
        states = [state for state, _ in every_rank]
        if len(set(states)) > 1:
            where = ", ".join(f"rank {rank} is at {s}" for rank, s in enumerate(states))
            raise RuntimeError(f"the ranks are out of step: {where}; every callback that stops "
                               f"training (EarlyStopping, TerminateOnNaN, your own) must decide "
                               f"the same on every rank: put AverageMetrics first in the "
                               f"callbacks, and stop in the middle of an epoch only on "
                               f"values every rank shares")
        return [payload for _, payload in every_rank]

    def on_epoch_begin(self, epoch, logs=None):
        self._epoch = epoch
        self._agree(f"the start of epoch {epoch + 1}")

    def on_train_batch_begin(self, batch, logs=None):
        self._agree(f"step {batch + 1} of epoch {self._epoch + 1}")

    def on_epoch_end(self, epoch, logs=None):
        logs = {} if logs is None else logs
        names = sorted(logs)
        every_rank = self._agree(f"the end of epoch {epoch + 1}",
                                 [(name, float(logs[name])) for name in names])
        if any([name for name, _ in entries] != names for entries in every_rank):
            raise RuntimeError(f"the ranks' logs must have the same entries, got "
                               f"{[[name for name, _ in e] for e in every_rank]}")
        for k, name in enumerate(names):
            logs[name] = float(np.mean([entries[k][1] for entries in every_rank]))

    def on_train_end(self, logs=None):
        self._agree("the end of training")


def shard(x, y=None, comm=None):
    """This rank's share of the samples: every ``size``-th one from ``rank``.

    Rank ``r`` of ``R`` gets samples ``r, r + R, r + 2R, ...`` (views, not
    copies). With ``batch_size=b`` on every rank and ``shuffle=False``, rank
    ``r``'s ``k``-th batch holds samples ``k*R*b + r + R*j`` (``j < b``): its
    share of the ``k``-th batch of ``R*b`` samples of a single process, so the
    ranks together train on exactly those batches and see every sample once
    per epoch. With ``shuffle=True`` each rank shuffles its own share.

    The shares differ by at most one sample. Every rank must run as many
    steps: the samples left for the last batch, ``len(x) % (R*b)``, must be 0
    or at least ``R``.

    Parameters
    ----------
    x : ndarray
        Samples first.
    y : ndarray or None
        Targets with as many samples.
    comm : mpi4py.MPI.Intracomm or None
        Default ``MPI.COMM_WORLD``.

    Returns
    -------
    ndarray or tuple of ndarray
        ``x``'s share, or ``(x_share, y_share)`` when ``y`` is given.

    Examples
    --------
    >>> import numpy as np
    >>> from fastlstm.distributed import shard
    >>> x_share, y_share = shard(np.arange(10), np.arange(10) * 2)
    >>> len(x_share)   # on one process: everything
    10
    """
    comm = _communicator(comm)
    ranks, rank = comm.Get_size(), comm.Get_rank()
    arrays = [("x", x)] + ([("y", y)] if y is not None else [])
    for name, array in arrays:
        if not isinstance(array, np.ndarray) or array.ndim == 0:
            raise TypeError(f"{name} must be an ndarray with a leading sample axis, got "
                            f"{describe(array)}")
    if y is not None and len(y) != len(x):
        raise ValueError(f"x and y must have the same number of samples (first axis), got "
                         f"{len(x)} and {len(y)}")
    if len(x) < ranks:
        raise ValueError(f"x must have at least one sample per rank ({ranks}), got {len(x)}")
    if y is None:
        return x[rank::ranks]
    return x[rank::ranks], y[rank::ranks]
