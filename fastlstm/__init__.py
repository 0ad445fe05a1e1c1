"""fastlstm: fast CPU training of LSTMs, with a Keras-style API.

Layers (:class:`LSTM`, :class:`Bidirectional`, :class:`Dense`, ...) and
:class:`Sequential` models train with Keras' workflow. Underneath, the
functional core is :func:`lstm_forward` / :func:`lstm_backward`;
``backend="fast"`` (the default) runs the Cython kernels and
``backend="reference"`` the NumPy implementation they are tested against.
"""
from ._version import __version__
from . import _config

# Before anything loads SciPy's BLAS: choose its kernels for this CPU.
_config.prepare_blas()

from ._config import PerformanceWarning, num_threads, set_num_threads, show_config  # noqa: E402
from .functional import (LSTMCache, LSTMGradients, ProjectedLSTMGradients, lstm_backward,  # noqa: E402
                         lstm_forward, workspace_nbytes)
from ._packed import PackedLSTM  # noqa: E402
from ._stack import (LSTMStackCache, LSTMStackGradients, lstm_stack_backward,  # noqa: E402
                     lstm_stack_forward)
from .layers import (LSTM, Bidirectional, Dense, Dropout, Embedding,  # noqa: E402
                     LayerNormalization, Masking, no_grad)
from .models import Sequential  # noqa: E402
from . import (callbacks, convert, initializers, losses, metrics, models,  # noqa: E402
               optimizers, saving)

__all__ = [
    "PackedLSTM",
    "__version__",
    "Bidirectional",
    "Dense",
    "Dropout",
    "Embedding",
    "LSTM",
    "LSTMCache",
    "LSTMGradients",
    "ProjectedLSTMGradients",
    "LSTMStackCache",
    "LSTMStackGradients",
    "LayerNormalization",
    "Masking",
    "PerformanceWarning",
    "Sequential",
    "lstm_backward",
    "lstm_forward",
    "lstm_stack_backward",
    "lstm_stack_forward",
    "no_grad",
    "num_threads",
    "set_num_threads",
    "search_seeds",
    "show_config",
    "workspace_nbytes",
    "callbacks",
    "convert",
    "initializers",
    "losses",
    "metrics",
    "models",
    "optimizers",
    "saving",
]


def __getattr__(name):
    # Imported on first use, so that importing fastlstm does not import joblib.
    if name == "search_seeds":
        from ._seed_search import search_seeds
        return search_seeds
    raise AttributeError(f"module 'fastlstm' has no attribute {name!r}")
