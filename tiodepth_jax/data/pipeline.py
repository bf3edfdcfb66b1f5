"""Training input pipeline: grain over a random-access source of samples, deterministic and resumable.

A *sample source* has ``len(source)`` and ``source.sample(index, rng) -> dict`` (one augmented training
sample, spec §6.5, NHWC without the batch axis). Two exist:

* :class:`RecordSamples` — records of a TFDS dataset built with ``python -m tiodepth_jax.data.build`` and read
  with ``tfds.data_source`` (no TensorFlow), augmented by :func:`tiodepth_jax.data.augment.train_sample`;
* :class:`SyntheticSamples` — the procedural stereo scenes of :mod:`tiodepth_jax.data.synthetic`.

:func:`epoch_batches` turns a source into this process's share of every global batch of one epoch:

* the epoch's order is the source's indices ``repeat`` times over (``data.repeat``, for a small dataset),
  each time in a permutation drawn from ``(seed, epoch)``; the last incomplete batch is dropped;
* the sample at position ``p`` of the order is augmented with ``np.random.default_rng([seed, epoch, p])``,
  so a sample's augmentation does not depend on the number of hosts, the batch it falls in or the threads,
  and each repetition of a sample gets its own;
* process ``i`` of ``n`` loads positions ``i, i + n, ...`` of each global batch;
* grain reads ahead with ``num_threads`` threads and a prefetch buffer; the iterator's ``get_state()``
  (batches consumed) goes into the checkpoint and ``set_state()`` resumes on exactly the next batch.
"""

from __future__ import annotations

import json
from pathlib import Path

import grain
import numpy as np

from tiodepth_jax.data import augment, synthetic
from tiodepth_jax.errors import InputError, InputNotFoundError

TRAIN_KEYS = ("color_s", "color_o", "color_s_aug", "color_o_aug", "K", "inv_K", "T", "direct")


class DatasetNotBuiltError(InputNotFoundError):
    """A TFDS dataset is missing from its data directory."""


def open_source(name: str, data_dir: str | Path, split: str):
    """``tfds.data_source(name, data_dir=data_dir, split=split)``, with an error that says how to build it."""
    import tensorflow_datasets as tfds

    data_dir = Path(data_dir)
    base = name.split("/")[0]
    if not (data_dir / base).is_dir():
        raise DatasetNotBuiltError(
            f"dataset {name!r} is not built in {data_dir} (no {data_dir / base}); build it with "
            f"`python -m tiodepth_jax.data.build {base} --root <raw data> --data-dir {data_dir}`")
    try:
        return tfds.data_source(name, data_dir=str(data_dir), split=split)
    except (ValueError, KeyError, FileNotFoundError) as e:
        raise DatasetNotBuiltError(f"cannot read split {split!r} of dataset {name!r} in {data_dir}: {e}") from None


class RecordSamples:
    """Training samples from a TFDS data source of stereo records (image_s, image_o, K, baseline, direct)."""

    def __init__(self, source, *, full_size, crop_size, flip_mode="img", scale_range=(0.75, 1.5),
                 color_aug_prob=0.5):
        self.source = source
        self.options = dict(full_size=tuple(full_size), crop_size=tuple(crop_size), flip_mode=flip_mode,
                            scale_range=scale_range, color_aug_prob=color_aug_prob)

    def __len__(self) -> int:
        return len(self.source)

    def sample(self, index: int, rng: np.random.Generator) -> dict:
        return augment.train_sample(self.source[int(index)], rng, **self.options)

    def fx_baseline(self) -> float:
        """fx * baseline (pixels * metres) at the training width ``full_size[1]``: the split's
        ``K[0, 0] * baseline / W`` from the build's calibration.json (one value, or an InputError)."""
        from tiodepth_jax.data.builders import CALIBRATION_FILE

        folder, split = Path(self.source.dataset_info.data_dir), str(self.source.split)
        try:
            values = json.loads((folder / CALIBRATION_FILE).read_text())["fx_baseline_per_width"][split]
        except (OSError, KeyError, ValueError):
            raise InputError(f"{folder} has no {CALIBRATION_FILE} entry for split {split!r} (datasets built before "
                             f"it was recorded): rebuild it, or set model.d2d and the bins explicitly") from None
        if max(values) > min(values) * (1 + 1e-6):
            raise InputError(f"split {split!r} of {folder} mixes cameras (K[0, 0] * baseline / W: "
                             f"{', '.join(f'{v:.6g}' for v in values)}); one d2d cannot fit them: set model.d2d")
        return values[0] * self.options["full_size"][1]


class SyntheticSamples:
    """Training samples of generated scenes rendered at ``full_size``, then cropped to ``crop_size``.

    Flip and colour augmentation follow spec §6.5 ('img' flip mode); the crop window is uniform over the
    image and K is left unchanged (as the original's crop). There is no random rescale: the scenes are
    rendered at the full size directly.
    """

    def __init__(self, scenes: synthetic.SyntheticStereo, *, crop_size, flip_mode="img", color_aug_prob=0.5):
        if flip_mode == "k":
            raise InputError("data.flip_mode 'k' is not available for the synthetic dataset; use 'img' or 'none'")
        self.scenes = scenes
        self.crop_size = tuple(crop_size)
        self.flip_prob = 0.5 if flip_mode == "img" else 0.0
        self.color_aug_prob = color_aug_prob
        full = (scenes.cfg.height, scenes.cfg.width)
        if self.crop_size[0] > full[0] or self.crop_size[1] > full[1]:
            raise InputError(f"crop size {self.crop_size} is larger than the synthetic image size {full}")

    def __len__(self) -> int:
        return len(self.scenes)

    def fx_baseline(self) -> float:
        """fx * baseline (pixels * metres) of the generated cameras (rendered at the training size)."""
        return synthetic.intrinsics(self.scenes.cfg)[0] * self.scenes.cfg.baseline

    def sample(self, index: int, rng: np.random.Generator) -> dict:
        s = synthetic.make_sample(self.scenes.cfg, self.scenes.seed(int(index)), rng=rng,
                                  flip_prob=self.flip_prob, color_aug_prob=self.color_aug_prob)
        h, w = s["color_s"].shape[:2]
        (ch, cw) = self.crop_size
        top, left = int(rng.integers(0, h - ch + 1)), int(rng.integers(0, w - cw + 1))
        return {k: v[top:top + ch, left:left + cw] if v.ndim == 3 else v for k, v in s.items()}


def steps_per_epoch(n: int, batch_size: int, repeat: int = 1) -> int:
    """Global batches in an epoch of `n` samples each seen `repeat` times (drop_last)."""
    return n * repeat // batch_size


def epoch_order(n: int, batch_size: int, seed: int, epoch: int, shuffle: bool = True, repeat: int = 1) -> np.ndarray:
    """Sample indices of one epoch in order: `repeat` passes over the `n` samples, each in its own permutation
    (or in index order), truncated to whole global batches (drop_last)."""
    rng = np.random.default_rng([seed, epoch])
    order = np.concatenate([rng.permutation(n) if shuffle else np.arange(n) for _ in range(repeat)])
    return order[: steps_per_epoch(n, batch_size, repeat) * batch_size]


def load_batch(samples, order: np.ndarray, step: int, *, batch_size: int, seed: int, epoch: int,
               process_index: int = 0, process_count: int = 1) -> dict:
    """This process's share of global batch ``step``: dict of float32 arrays with a leading batch axis."""
    positions = np.arange(step * batch_size, (step + 1) * batch_size)[process_index::process_count]
    picked = [samples.sample(order[p], np.random.default_rng([seed, epoch, int(p)])) for p in positions]
    return {k: np.stack([s[k] for s in picked]).astype(np.float32) for k in TRAIN_KEYS}


def check_batch_size(n: int, batch_size: int, process_count: int = 1, repeat: int = 1) -> None:
    """InputError unless `n` samples, `repeat` times over, make at least one global batch shared evenly by the
    processes."""
    if batch_size % process_count:
        raise InputError(f"batch_size {batch_size} is not divisible by the {process_count} processes")
    if not steps_per_epoch(n, batch_size, repeat):
        repeated = f" ({n * repeat} with data.repeat {repeat})" if repeat > 1 else ""
        raise InputError(f"the dataset has {n} samples{repeated}, fewer than batch_size {batch_size}")


def epoch_batches(samples, *, batch_size: int, seed: int, epoch: int, shuffle: bool = True, repeat: int = 1,
                  process_index: int = 0, process_count: int = 1, num_threads: int = 2, prefetch: int = 2):
    """A grain ``IterDataset`` of this process's batches of one epoch (see the module docstring).

    ``iter(...)`` gives an iterator with ``get_state()`` / ``set_state(state)``.
    """
    check_batch_size(len(samples), batch_size, process_count, repeat)
    order = epoch_order(len(samples), batch_size, seed, epoch, shuffle, repeat)
    batches = grain.MapDataset.range(len(order) // batch_size).map(
        lambda step: load_batch(samples, order, step, batch_size=batch_size, seed=seed, epoch=epoch,
                                process_index=process_index, process_count=process_count))
    return batches.to_iter_dataset(grain.ReadOptions(num_threads=num_threads,
                                                     prefetch_buffer_size=prefetch if num_threads else 0))
