"""Saving and loading: a model's weights (``.npz``), or the whole model (``.fastlstm``).

Weights files hold one named array per weight (``"layer_0/kernel"``,
``"layer_1/forward_bias"``, ...: the keys of ``Sequential.params``, which
count layers by position, not by their names, so files written before layers
had names load unchanged), in
NumPy's ``.npz`` format, which any NumPy program can read. A model file is
a zip archive of two members: ``config.json``, the model's
:meth:`~fastlstm.Sequential.get_config` (each layer's class and
constructor arguments), and ``weights.npz``, a weights file.

Every write goes to a temporary file in the same directory, which then
replaces the target in one rename: a crash leaves either the old file or
the new one, never half of one. Every read checks every name and shape
before anything changes; a file that cannot be read, or does not match,
raises ``ValueError`` naming what is wrong.

Examples
--------
>>> import os, tempfile, numpy as np, fastlstm as fl
>>> model = fl.Sequential([fl.LSTM(4, seed=0), fl.Dense(1, seed=1)])
>>> model.build((None, 5, 3))
>>> path = os.path.join(tempfile.mkdtemp(), "model.fastlstm")
>>> model.save(path)
>>> restored = fl.models.load_model(path)
>>> x = np.ones((2, 5, 3), np.float32)
>>> bool(np.array_equal(restored.predict(x, verbose=0), model.predict(x, verbose=0)))
True
"""
from ._model_files import load_weights, save_model, save_weights
from .models import load_model

__all__ = ["save_weights", "load_weights", "save_model", "load_model"]
