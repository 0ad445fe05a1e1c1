"""Whether fastlstm.distributed touches sys.excepthook: printed by every rank
as JSON, after the import and after the first use of the module.

    mpiexec -n 2 python excepthook.py
"""
import json
import sys

original = sys.excepthook

from fastlstm import distributed  # noqa: E402

after_import = sys.excepthook is original
distributed.DistributedOptimizer("sgd")
after_use = sys.excepthook is original
print(json.dumps({"unchanged_after_import": after_import, "unchanged_after_use": after_use}))
