"""Throughput of the training input pipeline (TFDS array_record + grain + spec §6.5 augmentation).

A fake KITTI raw tree at the real image size (375x1242 PNGs) is built into a TFDS dataset, then the
pipeline of the DINOv2-B config (full size 378x1260, 252x840 crops, random scale 0.75-1.5, flips, colour
augmentation) produces batches with 0, 1, 2, ... reader threads. Reported: training samples (image pairs) per
second and stereo images per second (2 per sample).

    python -m benchmarks.bench_pipeline [--threads 0 1 2] [--frames 8] [--batch 8] [--epochs 2]
"""

import argparse
import tempfile
import time
from pathlib import Path

from tiodepth_jax.data import builders, fake_kitti, pipeline


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--threads", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--frames", type=int, default=8, help="frames per drive (2 drives; l lines + r on even frames)")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--full-size", type=int, nargs=2, default=[378, 1260])
    ap.add_argument("--crop-size", type=int, nargs=2, default=[252, 840])
    args = ap.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        fake = fake_kitti.make_fake_kitti_raw(Path(tmp) / "raw", size=(375, 1242), frames=args.frames)
        builders.build("kitti_raw", fake.root, Path(tmp) / "tfds", split_file=fake.train_split, progress=False)
        source = pipeline.open_source("kitti_raw", Path(tmp) / "tfds", "train")
        print(f"built {len(source)} records of 375x1242 pairs in {time.perf_counter() - t0:.1f} s")
        samples = pipeline.RecordSamples(source, full_size=args.full_size, crop_size=args.crop_size)
        for threads in args.threads:
            n, t0 = 0, time.perf_counter()
            for epoch in range(1, args.epochs + 1):
                for batch in pipeline.epoch_batches(samples, batch_size=args.batch, seed=0, epoch=epoch,
                                                    num_threads=threads):
                    n += batch["color_s"].shape[0]
            dt = time.perf_counter() - t0
            print(f"threads {threads}: {n} samples in {dt:.2f} s = {n / dt:.1f} samples/s "
                  f"({2 * n / dt:.1f} images/s) at {args.crop_size[0]}x{args.crop_size[1]} crops")


if __name__ == "__main__":
    main()
