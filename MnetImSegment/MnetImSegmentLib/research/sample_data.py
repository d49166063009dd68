"""The Slicer module's registered sample data: a synthetic brachytherapy CT, generated on demand.

No brachytherapy CT may be shipped or downloaded, so the *Sample Data* entry points at a file
written here from a phantom (a few seconds, once; later loads reuse it). The phantom is synthetic:
its CTV is known, which is also what the module's self-test scores against.
"""

from __future__ import annotations

from pathlib import Path

from ..engine.io import write_image
from .phantom import make_phantom

SAMPLE_NAME = "MnetImSegmentPhantomCT"
SAMPLE_FILE = "MnetImSegment-phantom-CT.nrrd"
#: Seed and grid of the sample: the same phantom the self-test uses (demo weights Dice 0.92 on it).
SAMPLE_SEED = 41
SAMPLE_MATRIX = 160


def sample_ct_path(folder) -> Path:
    """Where the sample CT lives in ``folder`` (e.g. Slicer's cache folder)."""
    return Path(folder) / SAMPLE_FILE


def write_sample_ct(folder) -> Path:
    """The sample phantom CT in ``folder``, written atomically if it is not there yet; return its path."""
    path = sample_ct_path(folder)
    if path.is_file():
        return path
    Path(folder).mkdir(parents=True, exist_ok=True)
    phantom = make_phantom(seed=SAMPLE_SEED, matrix=SAMPLE_MATRIX, slice_mm=2.5, z_extent_mm=90)
    return write_image(phantom.ct, path, overwrite=False)
