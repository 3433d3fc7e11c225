import os
import sys

import pytest

# The helpers in testing.py are imported as a plain module.
sys.path.insert(0, os.path.dirname(__file__))

import testing  # noqa: E402


def pytest_configure(config):
    config.addinivalue_line("markers", "emulated: runs the irda_ext ops on the emulated CUDA kernels (testing.py)")


@pytest.fixture(autouse=True)
def _emulated_kernels(request):
    """Device "emulated" (testing.EMULATED): the test runs with the irda_ext ops sent to the
    CUDA kernels' code on the CPU."""
    if request.node.get_closest_marker("emulated") is None:
        yield
        return
    with testing.emulated_cuda():
        yield
