"""fastlstm.torch.LSTM under DistributedDataParallel (gloo, two processes)
trains to the weights one process reaches on the union of the batches."""
import subprocess
import sys
from pathlib import Path

import pytest

torch = pytest.importorskip("torch", reason="fastlstm.torch needs PyTorch")
from launch import package_environment  # noqa: E402

SCRIPT = Path(__file__).resolve().parent / "distributed" / "torch_ddp.py"


def test_ddp_over_gloo_gives_the_weights_of_one_process_on_the_union(tmp_path):
    if not torch.distributed.is_available() or not torch.distributed.is_gloo_available():
        pytest.fail("this PyTorch has no gloo backend for torch.distributed")
    result = subprocess.run([sys.executable, str(SCRIPT), str(tmp_path)], capture_output=True,
                            text=True, timeout=120, env=package_environment())
    assert result.returncode == 0, result.stderr
    ddp, single, initial = (torch.load(tmp_path / f"{name}.pt")
                            for name in ("ddp", "single", "initial"))
    assert ddp.keys() == single.keys()
    for name, weights in single.items():
        assert not torch.equal(weights, initial[name]), f"{name} did not train"
        torch.testing.assert_close(ddp[name], weights, rtol=0, atol=1e-10, msg=name)
