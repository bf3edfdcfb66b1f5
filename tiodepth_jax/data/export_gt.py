"""Export the Eigen-test ground truth of a split file to ``gt_depths_{raw|improved}.npz`` (spec §7.4).

    python -m tiodepth_jax.data.export_gt --root <kitti raw> --split <split file> --kind raw|improved [--out f.npz]

raw: the velodyne scan projected into the line's camera with the velodyne forward distance as the value
(:func:`kitti.generate_depth_map` with vel_depth=True); improved: the KITTI depth PNG / 256. The npz holds one
key, ``data``: an object array of (H, W) float32 maps in split order (load with ``allow_pickle=True``).
The default output is ``<root>/gt_depths_<kind>.npz``. A missing or unreadable file exits with status 2 and a
one-line message naming it.
"""

import argparse
import sys
from pathlib import Path

import numpy as np
from tqdm import tqdm

from tiodepth_jax.data import kitti
from tiodepth_jax.errors import InputError, run_command

KINDS = ("raw", "improved")


def load_gt_depth(root, line: kitti.SplitLine, kind: str) -> np.ndarray:
    """The (H, W) float32 ground truth of one split line: kind 'raw' (velodyne) or 'improved' (PNG)."""
    if kind == "raw":
        cam = 2 if line.side == "l" else 3
        return kitti.generate_depth_map(kitti.calib_dir(root, line), kitti.velodyne_path(root, line), cam=cam,
                                        vel_depth=True)
    if kind == "improved":
        return kitti.read_depth_png(kitti.improved_gt_path(root, line))
    raise InputError(f"unknown ground-truth kind {kind!r}; expected one of {KINDS}")


def export_gt_depths(root, split, kind: str, out=None) -> Path:
    """Write the ground truth of every line of the split file ``split`` to ``out`` (default
    ``<root>/gt_depths_<kind>.npz``) with a progress bar; returns the output path."""
    lines = kitti.read_split(split)
    maps = np.empty(len(lines), dtype=object)
    for i, line in enumerate(tqdm(lines, desc=f"gt_depths_{kind}", unit="frame")):
        maps[i] = load_gt_depth(root, line, kind)
    out = Path(root) / f"gt_depths_{kind}.npz" if out is None else Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(out, data=maps)
    return out


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tiodepth_jax.data.export_gt", description=__doc__.split("\n")[0])
    parser.add_argument("--root", required=True, type=Path, help="KITTI raw root (the date folders)")
    parser.add_argument("--split", required=True, type=Path, help="split file of '<folder> <frame> <l|r>' lines")
    parser.add_argument("--kind", required=True, choices=KINDS, help="velodyne (raw) or KITTI depth (improved) GT")
    parser.add_argument("--out", type=Path, help="output npz (default <root>/gt_depths_<kind>.npz)")
    args = parser.parse_args(argv)
    return run_command(lambda: print(f"wrote {export_gt_depths(args.root, args.split, args.kind, args.out)}"))


if __name__ == "__main__":
    sys.exit(main())
