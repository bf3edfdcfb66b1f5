"""Build a TFDS dataset of stereo records (array_record, no TensorFlow) from raw files.

    python -m tiodepth_jax.data.build <name> --root DIR --data-dir DIR [--split-file [SPLIT=]FILE ...]
        [--config raw|improved] [--skip-bad] [--fixed-k | --no-fixed-k] [--both-sides] [--overwrite]

``<name>``: kitti_raw, kitti_eigen_test, kitti_stereo2015 or stereo_folder (see tiodepth_jax.data.builders).
``--split-file`` may be repeated; ``SPLIT=`` names the split (default: train, or test for kitti_eigen_test).
Split files are yours: the original's ``data_splits`` lists are not shipped. Read the result with
``tfds.data_source(name, data_dir=DIR, split=...)``. Errors are one line on stderr with exit status 2.
"""

import argparse
import re
import sys

from tiodepth_jax.data import builders
from tiodepth_jax.errors import InputError, run_command


def _split_files(values: list[str] | None):
    """``[SPLIT=]FILE`` arguments -> None, one file, or a {split: file} mapping."""
    if not values:
        return None
    named = [re.fullmatch(r"(\w+)=(.+)", value, re.ASCII) for value in values]
    if len(values) == 1 and named[0] is None:
        return values[0]
    unnamed = [value for value, match in zip(values, named) if match is None]
    if unnamed:
        raise InputError(f"--split-file {unnamed[0]}: name the split (SPLIT=FILE) when giving several files")
    return {match.group(1): match.group(2) for match in named}


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m tiodepth_jax.data.build", description=__doc__.split("\n")[0])
    parser.add_argument("name", choices=sorted(builders.BUILDERS), help="dataset to build")
    parser.add_argument("--root", required=True, help="folder of the raw files (KITTI raw / 2015 root, stereo folder)")
    parser.add_argument("--data-dir", required=True, help="TFDS data directory to write the dataset into")
    parser.add_argument("--split-file", action="append", metavar="[SPLIT=]FILE",
                        help="split file (repeatable); default: the builder's default under --root")
    parser.add_argument("--config", choices=("raw", "improved"), help="kitti_eigen_test ground truth (default raw)")
    parser.add_argument("--skip-bad", action="store_true",
                        help="skip entries with missing/unreadable files and list them in skipped.json")
    parser.add_argument("--fixed-k", action=argparse.BooleanOptionalAction, default=None,
                        help="KITTI raw sets: KITTI's fixed K and 0.54 m (default) or the calibration files' K")
    parser.add_argument("--both-sides", action="store_true",
                        help="stereo_folder: also 'r' records (views swapped) in the train split")
    parser.add_argument("--overwrite", action="store_true", help="rebuild the dataset if it exists")
    return parser.parse_args(argv)


def main(argv=None) -> int:
    return run_command(lambda: build(parse_args(argv)))


def build(args: argparse.Namespace) -> None:
    split_file = _split_files(args.split_file)
    result = builders.build(args.name, args.root, args.data_dir, split_file=split_file, config=args.config,
                            skip_bad=args.skip_bad, fixed_k=args.fixed_k, both_sides=args.both_sides,
                            overwrite=args.overwrite)
    counts = ", ".join(f"{split} {n}" for split, n in result.num_examples.items())
    print(f"{args.name}: {counts} examples in {result.path}")
    if args.skip_bad:
        print(f"skipped {len(result.skipped)} bad entries (listed in {result.path / builders.SKIPPED_FILE})")


if __name__ == "__main__":
    sys.exit(main())
