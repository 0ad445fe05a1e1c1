"""Whether fastlstm.distributed touches sys.excepthook, after the import and
after the first use of the module: every rank's answer, printed by rank 0 as
one JSON list.

    mpiexec -n 2 python excepthook.py
"""
import json
import sys

original = sys.excepthook

from fastlstm import distributed  # noqa: E402

after_import = sys.excepthook is original
optimizer = distributed.DistributedOptimizer("sgd")
after_use = sys.excepthook is original
reports = optimizer.comm.gather({"unchanged_after_import": after_import,
                                 "unchanged_after_use": after_use})
if optimizer.comm.Get_rank() == 0:
    print(json.dumps(reports))
