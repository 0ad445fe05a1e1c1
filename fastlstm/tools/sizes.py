"""The benchmark's sizes: the one place they are written.

``python -m fastlstm bench``, its torch-adapter mode, the command line's
choices and the performance page's table of sizes all read :data:`SIZES`.
The asv suite (``asv_benchmarks/benchmarks/common.py``) keeps its own copy of
the first five, because asv runs it against commits older than this module;
a test checks that the two agree.
"""

__all__ = ["SIZES"]

# name: (batch, timesteps, input_dim, units), smallest training step first
# within the five layer shapes; "one" and "few" are one and four sequences of
# a character model's 256-unit layer, the calls that sampling text makes.
SIZES = {
    "tiny": (8, 20, 16, 32),
    "small": (32, 50, 32, 64),
    "medium": (64, 100, 128, 256),
    "large": (64, 50, 512, 512),
    "long": (16, 400, 64, 128),
    "one": (1, 64, 32, 256),
    "few": (4, 64, 32, 256),
}
