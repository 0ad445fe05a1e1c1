"""A stack of two LSTM layers, pipelined and layer by layer.

``lstm_stack_forward`` chooses between the two by a measured rule; these
benchmarks time both at batch sizes either side of it, so the dashboard
shows whether the rule still picks the faster one. Commits without stacks
skip them.
"""
import numpy as np

from .common import import_fastlstm

BATCHES = [1, 4, 16, 64]


class StackTrainingStep:
    """Forward and backward of LSTM(256) over LSTM(256) on 100 steps of 32
    features, float32."""

    params = (BATCHES, [False, True], [True, False])
    param_names = ["batch", "pipelined", "training"]
    timeout = 120

    def setup(self, batch, pipelined, training):
        fl = import_fastlstm()
        if not hasattr(fl, "lstm_stack_forward"):
            raise NotImplementedError("this commit has no lstm_stack_forward")
        rng = np.random.default_rng(0)
        inputs, units = [32, 256], [256, 256]
        self.fl = fl
        self.layers = [((rng.standard_normal((i, 4 * u)) / np.sqrt(i + u)).astype(np.float32),
                        (rng.standard_normal((u, 4 * u)) / np.sqrt(i + u)).astype(np.float32),
                        np.zeros(4 * u, np.float32)) for i, u in zip(inputs, units)]
        self.x = rng.standard_normal((batch, 100, 32)).astype(np.float32)
        self.grad = np.ones((batch, 100, 256), np.float32)

    def time_stack(self, batch, pipelined, training):
        outputs, _, cache = self.fl.lstm_stack_forward(self.x, self.layers, pipelined=pipelined,
                                                       return_cache=training)
        if training:
            self.fl.lstm_stack_backward(cache, self.grad, input_gradient=False)
