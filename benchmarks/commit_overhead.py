"""What the output transaction costs: fsync + voxel read-back + link, on clinical-size outputs.

    python benchmarks/commit_overhead.py [--slices 120] [--matrix 512] [--repeats 3] [--dir FOLDER]

For each output it times, median of ``--repeats``, in milliseconds:
* ``plain``: ``sitk.WriteImage`` straight to the final path (what io.py did before issue 13, minus
  the rename);
* ``transaction``: ``write_labelmap`` / ``write_image`` through :class:`OutputTransaction`
  (temporary file, fsync of file and folder, read-back compared voxel by voxel, link);
* ``readback``: the voxel read-back alone; ``fsync``: flushing a freshly written file and its folder;
* ``overhead``: transaction - plain.
``--end-to-end``: instead, ``mnetim segment`` on a 512 x 512 x 120 phantom CT with the demo weights
(``.seg.nrrd`` and ``.nii.gz`` outputs), alternating runs with the commit path as shipped and with
its verification switched off (no fsync, no read-back: what a plain temp-then-rename cost), in one
process on the same CT; reports the wall time of each run (median) and the difference.

Outputs: a 512 x 512 x 120 uint8 CTV labelmap as .nii.gz and as gzip .nrrd (the size of a
.seg.nrrd: same voxels, same compression), and the float32 probability map as .nii.gz (zero
outside a 160 x 160 x 60 ROI, as the engine writes it). Prints one JSON object. A measurement,
not a test: numbers depend on the disk and the machine's load.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "MnetImSegment"))

from MnetImSegmentLib.core.commit import _fsync_path  # noqa: E402  (the step itself, timed alone)
from MnetImSegmentLib.engine.io import image_readback_check, write_image, write_labelmap  # noqa: E402
from MnetImSegmentLib.core.volume import Geometry, Volume  # noqa: E402


def _volumes(slices: int, matrix: int):
    z, y, x = np.ogrid[:slices, :matrix, :matrix]
    cz, cy, cx = slices / 2, matrix / 2, matrix / 2
    blob = ((z - cz) / 12) ** 2 + ((y - cy) / 40) ** 2 + ((x - cx) / 35) ** 2 <= 1.0  # ~50 ml at 0.8 mm
    geometry = Geometry((0.8, 0.8, 2.5), (-200.0, -180.0, -150.0))
    mask = Volume(blob.astype(np.uint8), geometry)
    prob = np.zeros((slices, matrix, matrix), np.float32)
    rng = np.random.default_rng(0)
    sz, sy, sx = slice(int(cz) - 30, int(cz) + 30), slice(int(cy) - 80, int(cy) + 80), slice(int(cx) - 80, int(cx) + 80)
    roi = rng.random(prob[sz, sy, sx].shape, dtype=np.float32) * 0.2 + blob[sz, sy, sx] * 0.75
    prob[sz, sy, sx] = roi
    return mask, Volume(prob, geometry)


def _median_ms(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t0) * 1000)
    return round(statistics.median(times), 1)


def measure(volume: Volume, name: str, folder: Path, repeats: int, labelmap: bool) -> dict:
    import SimpleITK as sitk

    plain_path, tx_path = folder / f"plain_{name}", folder / f"tx_{name}"

    def plain():
        sitk.WriteImage(volume.to_sitk(), str(plain_path), useCompression=True)

    def fsync_fresh():  # fsync is only expensive on data not yet on the disk: time it right after a write
        plain_path.unlink()
        plain()
        t0 = time.perf_counter()
        _fsync_path(plain_path)
        _fsync_path(folder, directory=True)
        return (time.perf_counter() - t0) * 1000

    def transaction():
        if tx_path.exists():
            tx_path.unlink()
        (write_labelmap if labelmap else write_image)(volume, tx_path)

    plain_ms = _median_ms(plain, repeats)
    tx_ms = _median_ms(transaction, repeats)
    check = image_readback_check(volume.array if not labelmap else volume.array.astype(np.uint8), volume.geometry)
    readback_ms = _median_ms(lambda: check(tx_path), repeats)
    fsync_ms = round(statistics.median(fsync_fresh() for _ in range(repeats)), 1)
    return {"output": name, "bytes": tx_path.stat().st_size, "plain_ms": plain_ms, "transaction_ms": tx_ms,
            "overhead_ms": round(tx_ms - plain_ms, 1), "readback_ms": readback_ms, "fsync_ms": fsync_ms}


def end_to_end(folder: Path, repeats: int, slices: int, matrix: int, weights=None) -> dict:
    """Median wall time of ``mnetim segment`` with and without the commit path's verification."""
    import contextlib
    import io as _io

    from MnetImSegmentLib.cli import main as mnetim
    from MnetImSegmentLib.core import commit
    from MnetImSegmentLib.research.phantom import make_phantom

    phantom = make_phantom(seed=11, matrix=matrix, slice_mm=2.5, z_extent_mm=2.5 * slices)
    ct = folder / "ct.nii.gz"
    write_image(phantom.ct, ct)

    @contextlib.contextmanager
    def unverified():
        saved = (commit._fsync_path, commit._fsync_tree, commit.OutputTransaction.verify)
        commit._fsync_path = lambda *a, **k: None
        commit._fsync_tree = lambda *a, **k: None
        commit.OutputTransaction.verify = lambda self, final, check: None
        try:
            yield
        finally:
            commit._fsync_path, commit._fsync_tree, commit.OutputTransaction.verify = saved

    def run(suffix: str, i: int, mode: str) -> float:
        out = folder / f"{mode}_{i}{suffix}"
        argv = ["segment", str(ct), "-o", str(out), "--json"] + (["--weights", str(weights)] if weights else [])
        with contextlib.redirect_stdout(_io.StringIO()):
            t0 = time.perf_counter()
            with (unverified() if mode == "plain" else contextlib.nullcontext()):
                code = mnetim(argv)
            seconds = time.perf_counter() - t0
        assert code == 0
        return seconds

    result = {"shape_zyx": list(phantom.ct.shape)}
    run(".seg.nrrd", -1, "warmup")
    for suffix in (".seg.nrrd", ".nii.gz"):
        times = {"plain": [], "commit": []}
        for i in range(repeats):
            for mode in ("plain", "commit") if i % 2 == 0 else ("commit", "plain"):
                times[mode].append(run(suffix, i, mode))
        plain, verified = statistics.median(times["plain"]), statistics.median(times["commit"])
        result[suffix] = {"without_verification_s": round(plain, 3), "commit_path_s": round(verified, 3),
                          "overhead_ms": round(1000 * (verified - plain), 1),
                          "overhead_percent": round(100 * (verified - plain) / plain, 1)}
    return result


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--slices", type=int, default=120)
    p.add_argument("--matrix", type=int, default=512)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--dir", help="folder to write in (default: a temporary folder)")
    p.add_argument("--end-to-end", action="store_true", help="time whole `mnetim segment` runs instead")
    p.add_argument("--weights", help="weights folder for --end-to-end (default: the shipped demo weights)")
    args = p.parse_args(argv)
    if args.end_to_end:
        with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
            print(json.dumps(end_to_end(Path(tmp), args.repeats, args.slices, args.matrix, args.weights), indent=1))
        return 0
    mask, prob = _volumes(args.slices, args.matrix)
    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        folder = Path(tmp)
        rows = [measure(mask, "ctv.nii.gz", folder, args.repeats, True),
                measure(mask, "ctv.nrrd", folder, args.repeats, True),
                measure(prob, "probability.nii.gz", folder, args.repeats, False)]
    print(json.dumps({"shape_zyx": list(mask.shape), "repeats": args.repeats, "cpu_count": os.cpu_count(),
                      "results": rows}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
