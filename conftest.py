"""Collection settings for the whole suite."""
import importlib.util
import os

# Modules whose optional dependencies are missing cannot be imported for
# their doctests; tests/test_distributed.py skips for the same reason.
collect_ignore = [path for path, needs in (("fastlstm/distributed.py", "mpi4py"),
                                           ("fastlstm/_seed_search.py", "joblib"),
                                           ("fastlstm/torch.py", "torch"))
                  if importlib.util.find_spec(needs) is None]

# Keras 3 picks its backend when first imported, TensorFlow unless told:
# this process (fastlstm.keras's doctests, the docs and their examples) runs
# it on an installed backend fastlstm supports. tests/test_keras_layer.py
# runs each backend in a process of its own.
_keras_backends = [name for name in ("jax", "torch") if importlib.util.find_spec(name)]
if _keras_backends:
    os.environ.setdefault("KERAS_BACKEND", _keras_backends[0])
collect_ignore += [path for path, needs in (("fastlstm/keras.py", "keras"),
                                            ("fastlstm/_jax_ops.py", "jax"),
                                            ("fastlstm/_torch_ops.py", "torch"))
                   if importlib.util.find_spec(needs) is None]
# It has no doctests, and importing it would load TensorFlow into this
# process beside PyTorch; tests/keras_checks.py runs it in a process of its own.
collect_ignore.append("fastlstm/_tf_ops.py")
