"""Collection settings for the whole suite."""
import importlib.util

# Modules whose optional dependencies are missing cannot be imported for
# their doctests; tests/test_distributed.py skips for the same reason.
collect_ignore = [path for path, needs in (("fastlstm/distributed.py", "mpi4py"),
                                           ("fastlstm/_seed_search.py", "joblib"),
                                           ("fastlstm/torch.py", "torch"))
                  if importlib.util.find_spec(needs) is None]
