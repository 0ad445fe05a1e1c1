"""Fixtures shared by the test modules."""
import pytest

from fastlstm import _kernels


@pytest.fixture(params=_kernels.available())
def kernel_build(request):
    """Run the test on one compiled build of the kernels (its name), and on
    the widest the CPU runs again afterwards."""
    _kernels.use(request.param)
    yield request.param
    _kernels.use(None)
