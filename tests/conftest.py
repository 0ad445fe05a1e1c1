"""Fixtures shared by the test modules, and the folders pytest leaves alone."""
import pytest

from fastlstm import _kernels

# The scripts under these folders run in subprocesses (under mpiexec too),
# launched by the tests; collecting them (for doctests) would import them
# inside pytest itself.
collect_ignore_glob = ["backup/*.py", "distributed/*.py"]


@pytest.fixture(params=_kernels.available())
def kernel_build(request):
    """Run the test on one compiled build of the kernels (its name), and on
    the widest the CPU runs again afterwards."""
    _kernels.use(request.param)
    yield request.param
    _kernels.use(None)
