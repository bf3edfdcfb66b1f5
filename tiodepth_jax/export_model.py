"""Export one checkpoint of a training run as a model directory, the format the converters write.

    python -m tiodepth_jax.export_model --run runs/my_rig --out checkpoints/my_rig [--which latest|best|STEP]
        [--overwrite]

  --run        a training run: its workdir, checkpoint directory or one step directory
  --out        the model directory to write (`model.json` and `params/`, as `checkpoint.save_model` writes
               them); an existing one is refused unless --overwrite, which replaces only a model directory
  --which      the run's checkpoint: latest (default), best (lowest validation score) or a step number

Only the parameters and BatchNorm statistics are kept (no optimiser state). `model.json` records the run's
config of the network, its compute dtype and the size its training images were resized to (data.image_size),
so that `predict --checkpoint DIR` and `evaluate --checkpoint DIR` run the exported model as they run the
training run itself: the same network in the same dtype (and for predict at the same default input size),
giving the same outputs.
"""

from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

from tiodepth_jax.checkpoint import load_run, parse_which, read_model_meta, save_model
from tiodepth_jax.errors import InputError, InputExistsError, InputNotFoundError, run_command


def export_model(run, out, *, which="latest", overwrite: bool = False) -> Path:
    """Write checkpoint `which` of the training run `run` as the model directory `out`; returns its path.

    Raises InputNotFoundError for a missing run or one without checkpoints, InputError for a model
    directory given as the run, InputExistsError for an existing `out` (without `overwrite`, or when it is
    not a model directory).
    """
    run, out = Path(run), Path(out)
    if not run.exists():
        raise InputNotFoundError(f"training run {run} does not exist")
    if (run / "model.json").is_file():
        raise InputError(f"{run} is a model directory already, not a training run; use it as it is")
    if out.exists() and not overwrite:
        raise InputExistsError(f"{out} exists; pass --overwrite to replace it")
    if out.exists() and not (out / "model.json").is_file():
        raise InputExistsError(f"refusing to replace {out}: it is not a model directory (no model.json)")
    loaded = load_run(run, which=which)  # before removing anything: a bad run leaves `out` as it was
    source = {"checkpoint": loaded.source["checkpoint"], "step": loaded.source["step"], "exporter": __name__,
              "dtype": loaded.dtype, "image_size": list(loaded.image_size)}
    if out.exists():
        shutil.rmtree(out)
    return save_model(out, loaded.model, source=source)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tiodepth_jax.export_model", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", type=Path, required=True, metavar="RUN", help="training run (workdir)")
    parser.add_argument("--out", type=Path, required=True, metavar="DIR", help="model directory to write")
    parser.add_argument("--which", default="latest", type=parse_which,
                        help="checkpoint: latest (default), best, or a step number")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing model directory --out")
    args = parser.parse_args(argv)

    def body():
        path = export_model(args.run, args.out, which=args.which, overwrite=args.overwrite)
        source = read_model_meta(path)["source"]
        print(f"wrote {path}: step {source['step']} of {source['checkpoint']} ({source['dtype']}, "
              f"input size {'x'.join(map(str, source['image_size']))})")
    return run_command(body)


if __name__ == "__main__":
    sys.exit(main())
