"""One training step of the three models of ``python -m fastlstm bench --models``.

A step of a whole model counts what a layer benchmark does not: the
Embedding and Dense layers, the loss, the optimizer and the training loop's
own work. Commits without the model benchmark skip these.
"""
import functools
import importlib

from .common import import_fastlstm

MODEL_NAMES = ["char", "classifier", "stack512"]


@functools.lru_cache(maxsize=None)
def model_and_batch(name):
    """The compiled model and one batch of its data, built once per process."""
    import_fastlstm()
    # The model benchmark moved into fastlstm.tools; older commits have it at
    # fastlstm._bench_models.
    for module in ("fastlstm.tools.models", "fastlstm._bench_models"):
        try:
            models = importlib.import_module(module)
            break
        except ImportError as error:
            missing = error
    else:
        raise NotImplementedError(f"this commit has no model benchmark: {missing}")
    batch = models.MODELS[name][1]
    x, y = models.data(name)
    return models.fastlstm_model(name), x[:batch], y[:batch]


class ModelTrainingStep:
    """``fit`` on one batch: forward, loss, backward and one Adam update."""

    params = MODEL_NAMES
    param_names = ["model"]
    timeout = 120

    def setup(self, name):
        self.model, self.x, self.y = model_and_batch(name)

    def time_training_step(self, name):
        self.model.fit(self.x, self.y, batch_size=len(self.x), epochs=1, verbose=0,
                       shuffle=False)
