"""Images per second of `predict`'s batched path against batch size, decode prefetching on and off (not a test).

Usage:
  python -m benchmarks.bench_predict [--batch 1 2 4 8] [--images 16] [--image-size 240 320] [--input-size 518]
                                     [--dtype float32] [--repeats 2]

`--images` generated scenes (PNG files of `predict.synthetic_scene`, --image-size) run through
`predict.predict_files`: decoding, preprocessing, the jitted forward, the resize back and the .npy and .png
writes, i.e. the whole command but the model load, with a Depth-Anything-V2 ViT-S of random weights
(nnx.Rngs(0)) at --input-size (518: a 518x686 network input for 240x320 images). For each batch size one untimed
pass compiles the forward (and warms the file cache); then `--repeats` timed passes with prefetching
(`predict.PREFETCH_BATCHES` batches decoded and preprocessed ahead on a thread) alternate with as many without.
Prints one JSON line per (batch size, prefetch): workload (with the network input size), impl, batch, size
(--input-size), dtype, prefetch, images, images_per_s (= images / median_s) and median_s (the median wall time of
a pass over all images).
Use an image count that every batch size divides, so that no pass pads a batch.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import jax
import numpy as np
from flax import nnx

from tiodepth_jax import predict
from tiodepth_jax.images import write_png
from tiodepth_jax.models.depth_anything_v2 import DepthAnythingV2, DepthAnythingV2Config


def write_scenes(folder: Path, count: int, hw: tuple[int, int]) -> list[Path]:
    """`count` generated scenes of size `hw` as PNG files in `folder`."""
    folder.mkdir(parents=True)
    paths = [folder / f"scene_{k:03d}.png" for k in range(count)]
    for k, path in enumerate(paths):
        write_png(path, np.round(predict.synthetic_scene(*hw, seed=k) * 255).astype(np.uint8))
    return paths


def pass_seconds(predictor, paths, out: Path, *, input_size: int, batch: int, prefetch: int) -> float:
    """Wall time of one `predict_files` pass over `paths`."""
    start = time.perf_counter()
    predict.predict_files(predictor, paths, out, input_size=input_size, batch_size=batch, prefetch=prefetch)
    return time.perf_counter() - start


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", type=int, nargs="+", default=[1, 2, 4, 8])
    parser.add_argument("--images", type=int, default=16)
    parser.add_argument("--image-size", type=int, nargs=2, default=[240, 320], metavar=("H", "W"))
    parser.add_argument("--input-size", type=int, default=518)
    parser.add_argument("--dtype", choices=tuple(predict.DTYPES), default="float32")
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args(argv)
    device = jax.devices()[0]
    print(f"jax {jax.__version__}, backend {jax.default_backend()}, device {device.device_kind}", file=sys.stderr)
    model = DepthAnythingV2(DepthAnythingV2Config.preset("vits"), dtype=predict.DTYPES[args.dtype], rngs=nnx.Rngs(0))
    predictor = predict.DepthPredictor(model)
    network = "x".join(map(str, predict.network_input_shape(*args.image_size, args.input_size)))
    workload = f"predict dav2_vits {args.images} png {args.image_size[0]}x{args.image_size[1]} -> {network}"
    with tempfile.TemporaryDirectory() as tmp:
        paths = write_scenes(Path(tmp) / "images", args.images, tuple(args.image_size))
        out = Path(tmp) / "out"
        for batch in args.batch:
            pass_seconds(predictor, paths, out, input_size=args.input_size, batch=batch, prefetch=0)  # compiles
            times = {predict.PREFETCH_BATCHES: [], 0: []}
            for _ in range(args.repeats):
                for prefetch, seconds in times.items():
                    seconds.append(pass_seconds(predictor, paths, out, input_size=args.input_size, batch=batch,
                                                prefetch=prefetch))
            for prefetch, seconds in times.items():
                median = statistics.median(seconds)
                print(json.dumps({"workload": workload, "impl": "jax", "batch": batch, "size": args.input_size,
                                  "dtype": args.dtype, "prefetch": prefetch, "images": args.images,
                                  "images_per_s": round(args.images / median, 3), "median_s": round(median, 4)}),
                      flush=True)


if __name__ == "__main__":
    main()
