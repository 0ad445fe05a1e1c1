"""fastlstm: fast CPU training of LSTMs, with a Keras-style API.

The functional core is :func:`lstm_forward` / :func:`lstm_backward`;
``backend="fast"`` (the default) runs the Cython kernels and
``backend="reference"`` the NumPy implementation they are tested against.
"""
from ._version import __version__
from . import _config

# Before anything loads SciPy's BLAS: choose its kernels for this CPU.
_config.prepare_blas()

from ._config import PerformanceWarning, num_threads, set_num_threads, show_config  # noqa: E402
from .functional import LSTMCache, LSTMGradients, lstm_backward, lstm_forward, workspace_nbytes  # noqa: E402
from .layers import LSTM, Bidirectional, no_grad  # noqa: E402
from . import convert, initializers  # noqa: E402

__all__ = [
    "__version__",
    "Bidirectional",
    "LSTM",
    "LSTMCache",
    "LSTMGradients",
    "PerformanceWarning",
    "lstm_backward",
    "lstm_forward",
    "no_grad",
    "num_threads",
    "set_num_threads",
    "show_config",
    "workspace_nbytes",
    "convert",
    "initializers",
]
