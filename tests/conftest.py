"""Shared fixtures: small phantoms, tiny random weights (plumbing), the shipped demo weights."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from helpers.weights import make_weights

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"


def pytest_configure(config):
    # A runner started in the background without job control hands us SIGINT *ignored*, and an
    # ignored signal stays ignored through exec in every child: the signal tests would then test the
    # runner, not our clean-up. Give the suite Python's normal Ctrl-C behaviour, as a terminal would.
    import signal

    if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
        signal.signal(signal.SIGINT, signal.default_int_handler)
    # Likewise `nohup` hands SIGHUP ignored (and our clean-up rightly respects an inherited ignore).
    if signal.getsignal(signal.SIGHUP) is signal.SIG_IGN:
        signal.signal(signal.SIGHUP, signal.SIG_DFL)
    # Tests are small; one thread keeps them deterministic and fair on a 2-core CI machine.
    import torch

    torch.set_num_threads(int(os.environ.get("MNETIM_TEST_THREADS", "1")))


@pytest.fixture(scope="session")
def tiny_weights(tmp_path_factory) -> Path:
    return make_weights(tmp_path_factory.mktemp("weights") / "tiny")


@pytest.fixture(scope="session")
def demo_weights() -> Path:
    from MnetImSegmentLib.engine.weights import default_weights_dir

    return default_weights_dir()


@pytest.fixture(scope="session")
def small_phantom():
    """A quick phantom (192 x 192 in-plane, 2.5 mm slices) with a metal or plastic applicator."""
    from MnetImSegmentLib.research.phantom import make_phantom

    return make_phantom(seed=7, matrix=192, slice_mm=2.5, z_extent_mm=100)


@pytest.fixture
def shared_data() -> Path:
    if not SHARED_DATA.is_dir():
        pytest.skip("../shared/data is not present (a user's clone has no shared data)")
    return SHARED_DATA
