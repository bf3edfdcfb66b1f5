"""The TiO-Depth training run: model and state on the mesh, the epoch loop, validation, logs, checkpoints.

    python -m tiodepth_jax.train --config configs/demo.yaml [key=value ...] [--resume]

Per epoch e (1-based) the active groups and their learning-rate factors follow the config's schedule;
one compiled step exists per active-group set. The batches come from a grain pipeline
(tiodepth_jax.data.pipeline): the order of epoch e is `data.repeat` permutations drawn from (seed, e) and each
sample's augmentation comes from (seed, e, position in the epoch), so a run resumed from a checkpoint (which
records the epoch and the grain iterator's state) sees exactly the batches an uninterrupted run would.

The loop waits for the device only at logging steps and before a save: the steps' metrics stay on the device
until then, and are then appended to <workdir>/losses.jsonl (every step's, rewound to the checkpoint on
resume) and checked. A non-finite step stops the run, or is undone (`optim.skip_nonfinite`), and is never
saved; SIGTERM / SIGINT save and stop (train/preemption.py); one run holds the workdir (train/lock.py).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import shutil
import signal
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.experimental.compilation_cache import compilation_cache
from tqdm import tqdm

from tiodepth_jax.checkpoint import BEST_KEY, load_model
from tiodepth_jax.colormap import colorize
from tiodepth_jax.config import GROUPS, VAL_MODES, ConfigError, TrainConfig
from tiodepth_jax.data.augment import eval_sample
from tiodepth_jax.data.pipeline import (RecordSamples, SyntheticSamples, check_batch_size, epoch_batches, open_source,
                                        steps_per_epoch)
from tiodepth_jax.data.synthetic import SceneConfig, SyntheticStereo
from tiodepth_jax.errors import InputError, InputExistsError, InputNotFoundError, NonFiniteError, StorageError
from tiodepth_jax.evaluate import MetricOptions, default_crop, disparity_gt, evaluate_prediction
from tiodepth_jax.inference import DEPTH_KEYS, Jitted, predict_outputs
from tiodepth_jax.losses import TRAINING_LOSSES, terms_from_config
from tiodepth_jax.metrics import depth_metrics, mean_metrics
from tiodepth_jax.models.tiodepth import TiODepth
from tiodepth_jax.models.vgg import VGG19Config, VGG19Features
from tiodepth_jax.train.checkpointing import TrainCheckpoints, storage_errno
from tiodepth_jax.train.optim import active_groups, lr_factors, optimizer
from tiodepth_jax.train.sharding import batch_sharding, make_mesh, replicated, state_shardings
from tiodepth_jax.train.lock import WorkdirLock
from tiodepth_jax.train.preemption import StopSignals
from tiodepth_jax.train.progress import compiling
from tiodepth_jax.train.step import guard_nonfinite, init_state, make_step
from tiodepth_jax.train.summary import SummaryWriter

LOWER_IS_BETTER = {"abs_rel": 1, "sq_rel": 1, "rmse": 1, "rmse_log": 1, "a1": -1, "a2": -1, "a3": -1}
SIGNS = {**LOWER_IS_BETTER, "epe_all": 1, "d1_all": 1}  # +1: lower is better, -1: higher is better
VAL_SEED_OFFSET = 1_000_000  # validation scenes never coincide with training scenes
STAGES = dict(zip(GROUPS, VAL_MODES))  # param_group<k> -> the stage it trains (Mono, Stereo, Refine)
log = logging.getLogger(__name__)


def train_samples(cfg: TrainConfig):
    """The training sample source of ``cfg.data`` (see :mod:`tiodepth_jax.data.pipeline`)."""
    d = cfg.data
    if d.name == "synthetic":
        opts = dict(d.synthetic)
        scenes = SyntheticStereo(SceneConfig(height=d.image_size[0], width=d.image_size[1], **opts.get("scene", {})),
                                 int(opts.get("size", 64)), base_seed=int(opts.get("base_seed", 0)))
        return SyntheticSamples(scenes, crop_size=cfg.crop_size, flip_mode=d.flip_mode,
                                color_aug_prob=d.color_aug_prob)
    source = open_source(d.name, d.require_data_dir(), d.split)
    return RecordSamples(source, full_size=d.image_size, crop_size=cfg.crop_size, flip_mode=d.flip_mode,
                         scale_range=d.scale_range, color_aug_prob=d.color_aug_prob)


def resolve_geometry(cfg: TrainConfig, samples) -> TrainConfig:
    """``cfg`` with model.d2d / min_disp / max_disp 'auto' derived (and said once): d2d = fx * baseline of the
    training set, fx in pixels at data.image_size's width; min_disp, max_disp = d2d / model.depth_range. The
    bins are checked against the training width (`TrainConfig.check_bins`)."""
    m = cfg.model
    if m.resolved:
        cfg.check_bins()
        return cfg
    from_data = m.d2d == "auto"
    d2d = samples.fx_baseline() if from_data else m.d2d
    source = "the training set's fx * baseline" if from_data else "model.d2d"
    try:
        resolved = dataclasses.replace(cfg, model=m.resolve_geometry(d2d))
        resolved.check_bins()
    except ValueError as e:  # ConfigError included
        raise ConfigError(f"{e} (d2d {d2d:.6g} from {source})") from None
    model = resolved.model
    log.info("stereo geometry%s at width %d: d2d = fx * baseline = %.6g, bins %.6g .. %.6g px (depth %.6g .. "
             "%.6g m)", " from the training set" if from_data else "", cfg.data.image_size[1], model.d2d,
             model.min_disp, model.max_disp, model.d2d / model.max_disp, model.d2d / model.min_disp)
    return resolved


def loss_terms(cfg: TrainConfig) -> dict:
    """Each group's loss terms: `cfg.losses` (a term that does not parse is named) or the original's table."""
    if not cfg.losses:
        return TRAINING_LOSSES
    terms = {}
    for group, entries in cfg.losses.items():
        try:
            terms[group] = terms_from_config(entries)
        except ValueError as e:
            raise ConfigError(f"losses.{group}: {e}") from None
    return terms


def val_set(cfg: TrainConfig):
    """The validation set: generated scenes at the validation size (SyntheticStereo) or a TFDS data source."""
    name, data_dir = cfg.val_dataset
    if name != "synthetic":
        if data_dir is None:
            raise ConfigError(f"val.data_dir is not set: the validation dataset {name!r} needs it (or data.data_dir)")
        return open_source(name, data_dir, cfg.val.split)
    opts = dict(cfg.data.synthetic)
    n_val = cfg.val.max_samples or int(opts.get("val_size", 8))
    return SyntheticStereo(SceneConfig(height=cfg.val.image_size[0], width=cfg.val.image_size[1],
                                       **opts.get("scene", {})),
                           n_val, base_seed=int(opts.get("base_seed", 0)) + VAL_SEED_OFFSET)


def val_batches(cfg: TrainConfig, val_ds):
    """(inputs (B, ...) numpy, [ground truth of each sample]) of the validation set, ``val.batch_size`` at a time.

    Ground truth at the native resolution: {'depth_gt': (H, W)} and, from TFDS sets, 'disp_gt' (H, W) (KITTI
    2015's, or K[0, 0] * baseline / depth_gt: `evaluate.disparity_gt`), so that EPE / D1 are scored too.
    """
    n = len(val_ds) if cfg.val.max_samples is None else min(len(val_ds), cfg.val.max_samples)
    for start in range(0, n, cfg.val.batch_size):
        idx = range(start, min(start + cfg.val.batch_size, n))
        if isinstance(val_ds, SyntheticStereo):
            b = val_ds.batch(idx)
            gts = [{"depth_gt": d[..., 0]} for d in b["depth_gt"]]
        else:
            records = [val_ds[i] for i in idx]
            samples = [eval_sample(record, full_size=cfg.val.image_size) for record in records]
            b = {k: np.stack([x[k] for x in samples]) for k in ("color_s", "color_o", "direct")}
            gts = [{"depth_gt": x["depth_gt"], "disp_gt": disparity_gt(record)} for x, record in zip(samples, records)]
        yield {k: b[k] for k in ("color_s", "color_o", "direct")}, gts


def batches(cfg: TrainConfig, samples, epoch: int):
    """This process's batches of ``epoch`` (a grain IterDataset, see pipeline.epoch_batches)."""
    return epoch_batches(samples, batch_size=cfg.batch_size, seed=cfg.seed, epoch=epoch, shuffle=cfg.data.shuffle,
                         repeat=cfg.data.repeat, process_index=jax.process_index(), process_count=jax.process_count(),
                         num_threads=cfg.data.num_workers)


def rewind_loss_log(log: Path, global_step: int) -> None:
    """Keep the entries of `log` (losses.jsonl) up to the restored step: a killed run may have logged past its
    checkpoint, and a kill mid-write leaves a truncated last line, which is dropped."""
    if not log.exists():
        return
    lines = log.read_text().splitlines()
    kept = []
    for number, line in enumerate(lines, 1):
        try:
            entry = json.loads(line) if line else None
        except json.JSONDecodeError:
            if number == len(lines):  # the line being written when the run was killed
                break
            raise InputError(f"{log}: line {number} is not JSON; move the file away to start a new log") from None
        if entry is not None and entry["step"] <= global_step:
            kept.append(line)
    log.write_text("".join(ln + "\n" for ln in kept))


def _nonfinite_terms(entry: dict) -> str:
    """The loss terms of a losses.jsonl entry that are not finite (or the state, when the losses are)."""
    terms = [k for k, v in entry.items() if isinstance(v, float) and not np.isfinite(v)]
    return ", ".join(terms) if terms else "parameters or statistics after the update (the losses are finite)"


def val_score(result: dict, mode: str, metric: str, reference: dict | None) -> tuple[float, dict | None]:
    """(checkpoint ranking score, lower is better; mean_rel reference) of the validation `result` on path `mode`.

    `metric` 'mean_rel' is the original's "best" rule, the mean relative change of the 7 depth metrics against
    `reference` (the first validation's: None makes this one the reference); any other name is that metric,
    negated where higher is better (a1, a2, a3)."""
    if metric != "mean_rel":
        return SIGNS[metric] * float(result[f"val/{mode}/{metric}"]), reference
    now = {k: result[f"val/{mode}/{k}"] for k in LOWER_IS_BETTER}
    ref = now if reference is None else reference
    return float(np.mean([s * (now[k] - ref[k]) / max(abs(ref[k]), 1e-12) for k, s in LOWER_IS_BETTER.items()])), ref


def to_global(batch: dict, sharding) -> dict:
    return {k: jax.make_array_from_process_local_data(sharding, v) for k, v in batch.items()}


def image_inputs(batch: dict) -> dict:
    """The evaluation forward's input of the training image summaries: the batch's first sample."""
    return {k: batch[k][:1] for k in ("color_s", "color_o", "direct")}


def compile_cache_settings() -> tuple[str | None, bool]:
    """The process's persistent compilation cache: (directory, enabled)."""
    return jax.config.jax_compilation_cache_dir, jax.config.jax_enable_compilation_cache


def set_compile_cache(directory: str | None, enabled: bool) -> None:
    """Set the process's persistent compilation cache; JAX opens its cache once, at the first compile that uses
    it, so a change reopens it."""
    if compile_cache_settings() != (directory, enabled):
        jax.config.update("jax_compilation_cache_dir", directory)
        jax.config.update("jax_enable_compilation_cache", enabled)
        compilation_cache.reset_cache()


def use_compile_cache(cfg: TrainConfig) -> str | None:
    """Point JAX's persistent compilation cache at the directory of `cfg.compile_cache` (with true, the process's
    own JAX_COMPILATION_CACHE_DIR where it has one), or turn it off; the directory in use, or None. JAX keeps
    the programs that took a second or more to compile (jax_persistent_cache_min_compile_time_secs), keyed by the
    program, the XLA flags and the JAX version, so a changed model or flag compiles afresh."""
    own, _ = compile_cache_settings()
    directory = own if cfg.compile_cache is True and own else cfg.compile_cache_dir
    set_compile_cache(directory or own, directory is not None)
    log.info(f"compilation cache: {directory or 'off'}")
    return directory


class Trainer:
    """A training run of `cfg`. Everything that can fail on the user's input (data, checkpoints to start
    from, mesh, a workdir held by another run) is checked before anything is written: a failing `Trainer(cfg)`
    leaves no workdir behind. The workdir is held (train/lock.py) from here until `close()` (`run` closes)."""

    def __init__(self, cfg: TrainConfig, mesh=None):
        self.train_ds = train_samples(cfg)
        self.cfg = cfg = resolve_geometry(cfg, self.train_ds)
        self.mesh = mesh or make_mesh(*cfg.mesh.shape(jax.device_count()))
        self.groups = cfg.optim.groups
        self.frozen = cfg.model.frozen
        self.tx = optimizer(cfg.optim)
        self.loss_terms = loss_terms(cfg)
        self.val_ds = val_set(cfg) if cfg.val.every_n_epochs else None
        check_batch_size(len(self.train_ds), cfg.batch_size, jax.process_count(), cfg.data.repeat)
        self.batch_sharding = batch_sharding(self.mesh)
        self.workdir = Path(cfg.workdir)
        created = not self.workdir.exists()
        self.lock = WorkdirLock(self.workdir)
        if jax.process_index() == 0:  # a second run is refused before any work, and before the checkpoint
            self.workdir.mkdir(parents=True, exist_ok=True)  # manager, which removes unfinished saves it finds
            self.lock.acquire()
        self._process_cache = compile_cache_settings()  # the process's own, back when the run closes
        try:
            use_compile_cache(cfg)
            self._build_state()
        except BaseException:
            set_compile_cache(*self._process_cache)
            self.lock.release()
            if created and jax.process_index() == 0:
                shutil.rmtree(self.workdir)
            raise
        self._steps: dict = {}  # active groups -> their jitted step
        self._undo = jnp.bool_(cfg.optim.skip_nonfinite > 0)  # the steps' `undo` argument (guard_nonfinite)
        self._forward = None  # the jitted evaluation forward (validation and image summaries)
        self._compiled: set = set()  # the programs compiled ahead of their first call (see `_compile`)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.checkpoints = TrainCheckpoints(cfg.checkpoint_dir, keep=cfg.checkpoint.keep or 1_000_000,
                                            keep_best=cfg.checkpoint.keep_best,
                                            async_save=cfg.checkpoint.async_save, config=cfg.to_dict())
        self.writer = SummaryWriter(cfg.log_dir, enabled=cfg.logging.tensorboard and jax.process_index() == 0)
        self.val_reference: dict | None = None
        self._pending: list = []  # (global step, epoch, metrics on the device) of the steps not yet logged
        self._nonfinite_in_a_row = 0
        self._bar = None  # the epoch's progress bar
        self.stopped_by = 0

    # ----- model and state -------------------------------------------------------------------------------

    def _build_state(self):
        cfg = self.cfg

        def create():
            model = TiODepth(cfg.model, dtype=cfg.compute_dtype, remat=cfg.remat, rngs=nnx.Rngs(cfg.seed))
            return init_state(model, self.groups, self.frozen, self.tx)

        abstract_model = nnx.eval_shape(lambda: TiODepth(cfg.model, dtype=cfg.compute_dtype, remat=cfg.remat,
                                                         rngs=nnx.Rngs(0)))
        self.graphdef = nnx.split(abstract_model, nnx.Param, nnx.BatchStat)[0]
        abstract_state = jax.eval_shape(create)
        self.state_sharding = state_shardings(abstract_state, self.mesh)
        self.state = jax.jit(create, out_shardings=self.state_sharding)()  # created sharded, one compile
        if cfg.init_from:
            self.state["params"] = self._encoder_from(cfg.init_from, self.state["params"])
        if cfg.vgg_from:
            vgg = load_model(cfg.vgg_from, kind="vgg19_features", dtype=cfg.compute_dtype)
        else:
            log.warning("warning: vgg_from is not set; the perceptual loss uses a randomly initialised VGG19")
            vgg = jax.jit(lambda: nnx.split(VGG19Features(VGG19Config(), dtype=cfg.compute_dtype,
                                                          rngs=nnx.Rngs(cfg.seed + 1))))()
            vgg = nnx.merge(*vgg)
        self.vgg_graphdef, vgg_params = nnx.split(vgg)
        self.vgg_params = jax.device_put(vgg_params, replicated(self.mesh))

    def _encoder_from(self, path: str, params):
        """Encoder parameters from a converted Depth-Anything-V2 checkpoint of the same variant."""
        dav2 = load_model(path, kind="depth_anything_v2")
        want = self.cfg.model.encoder_config()
        if (dav2.cfg.variant, dav2.cfg.dinov2.depth) != (want.variant, want.dinov2.depth):
            raise InputError(f"init_from {path}: a {dav2.cfg.variant} model with {dav2.cfg.dinov2.depth} blocks, "
                             f"but model.variant is {want.variant} with {want.dinov2.depth} blocks")
        source = {tuple(k): v for k, v in nnx.to_flat_state(nnx.state(dav2, nnx.Param))}
        flat = dict(nnx.to_flat_state(params))
        missing = [k for k in flat if k[0] == "encoder" and k[1:] not in source]
        if missing:
            raise InputError(f"init_from {path}: no tensor for {['.'.join(map(str, m)) for m in missing[:5]]}")
        for k, v in flat.items():
            if k[0] == "encoder":
                v[...] = jax.device_put(jnp.asarray(source[k[1:]][...]), v[...].sharding)
        log.info(f"encoder initialised from {path}")
        return nnx.from_flat_state(flat)

    def _jitted_step(self, active: tuple[str, ...]):
        """The jitted iteration of the `active` groups: step(state, vgg_params, batch, lr_factors, undo)."""
        if active not in self._steps:
            step = make_step(self.graphdef, self.vgg_graphdef, self.groups, active, self.loss_terms, self.frozen,
                             self.tx)
            rep = replicated(self.mesh)
            self._steps[active] = jax.jit(guard_nonfinite(step),
                                          in_shardings=(self.state_sharding, rep, self.batch_sharding, rep, rep),
                                          out_shardings=(self.state_sharding, rep), donate_argnums=(0,))
        return self._steps[active]

    def step_fn(self, active: tuple[str, ...]):
        """The jitted iteration of the `active` groups: step(state, vgg_params, batch, lr_factors)."""
        jitted = self._jitted_step(active)
        return lambda state, vgg_params, batch, factors: jitted(state, vgg_params, batch, factors, self._undo)

    def model(self):
        """The current model (eval use)."""
        return nnx.merge(self.graphdef, self.state["params"], self.state["batch_stats"])

    def _compile(self, epoch: int, active: tuple[str, ...], batch: dict, factors: dict, steps: range) -> None:
        """Compile what the global `steps` of `epoch` run and was not compiled yet, each announced and timed
        (train/progress.py): the step of the `active` groups on `batch` and, if one of the steps writes
        training images, the forward on their input. jit's calls on such arguments run these programs, so
        no first step and no progress-bar rate includes a compile of minutes."""
        if active not in self._compiled:
            stages = "+".join(STAGES[name] for name in active)
            with compiling(f"the training step for stages {stages} (first step of epoch {epoch})"):
                self._jitted_step(active).lower(self.state, self.vgg_params, batch, factors, self._undo).compile()
            self._compiled.add(active)
        every = self.cfg.logging.image_every_n_steps
        if every and any(s % every == 0 for s in steps):
            self._compile_forward(image_inputs(batch), f"training images of epoch {epoch}")

    def _compile_forward(self, inputs: dict, purpose: str) -> None:
        """Compile the evaluation forward on `inputs`, announced and timed, unless it was for their shapes."""
        key = tuple((k, v.shape, v.sharding) for k, v in sorted(inputs.items()))
        if key not in self._compiled:
            n, h, w = inputs["color_s"].shape[:3]
            with compiling(f"the evaluation forward ({'+'.join(self.cfg.val.modes)}) on {n} x {h}x{w} images "
                           f"({purpose})"):
                self.forward().lower(inputs).compile()
            self._compiled.add(key)

    # ----- the run ---------------------------------------------------------------------------------------

    def run(self, resume: bool = False) -> dict:
        """Train to `epochs`; returns the last validation. `stopped_by` is the signal that stopped it, or 0."""
        try:
            with StopSignals(self.batch_sharding) as stop:
                return self._run(resume, stop)
        finally:
            if self._bar is not None:
                self._bar.close()  # ends its line: a message that follows starts on its own
            self.close()

    def _start(self, resume: bool) -> tuple[int, int, int, dict | None]:
        """(epoch, batch in epoch, global step, data-iterator state) to start from: a checkpoint or the beginning."""
        cfg = self.cfg
        latest = self.checkpoints.latest_step()
        if latest is None:
            if resume:
                raise InputNotFoundError(f"--resume: no checkpoint in {cfg.checkpoint_dir}")
            return 1, 0, 0, None
        if not (resume or cfg.checkpoint.resume):
            raise InputExistsError(f"{cfg.checkpoint_dir} already holds checkpoints; pass --resume to continue "
                                   "that run or choose another workdir")
        self.state, meta = self.checkpoints.restore(self.state)
        self.val_reference = meta.get("val_reference")
        epoch = meta["epoch"]
        if epoch > cfg.epochs:
            log.info(f"{cfg.checkpoint_dir} step {latest}: the run already completed its {cfg.epochs} epochs; "
                     "nothing to do (raise `epochs` to train on)")
        else:
            log.info(f"resumed from {cfg.checkpoint_dir} step {latest}: epoch {epoch}, batch {meta['step_in_epoch']}")
        return epoch, meta["step_in_epoch"], meta["global_step"], meta.get("data_iterator")

    def _run(self, resume: bool, stop: StopSignals) -> dict:
        cfg = self.cfg
        epoch, start_step, global_step, data_state = self._start(resume)
        if jax.process_index() == 0:
            rewind_loss_log(self._loss_log(), global_step)
        last_val = {}
        if global_step == 0 and cfg.val.at_start and cfg.val.every_n_epochs:
            last_val = self.validate(epoch=0, global_step=0)
        n_steps = steps_per_epoch(len(self.train_ds), cfg.batch_size, cfg.data.repeat)
        while epoch <= cfg.epochs:
            active = active_groups(self.groups, epoch)
            factors = lr_factors(self.groups, epoch)
            step = self.step_fn(active)
            epoch_save = bool(cfg.checkpoint.every_n_epochs) and epoch % cfg.checkpoint.every_n_epochs == 0
            data = iter(batches(cfg, self.train_ds, epoch))
            if data_state is not None:
                data.set_state(data_state)
                data_state = None
            if start_step < n_steps:  # the epoch's first batch compiles what it needs before the bar starts
                batch = to_global(next(data), self.batch_sharding)
                steps_left = range(global_step + 1, global_step + 1 + n_steps - start_step)  # global step numbers
                self._compile(epoch, active, batch, factors, steps_left)
            self._bar = tqdm(total=n_steps, initial=start_step, desc=f"epoch {epoch}/{cfg.epochs}",
                             disable=jax.process_index() != 0)
            self._since = time.perf_counter()  # images / s over the steps between two flushes
            for i in range(start_step, n_steps):
                if i > start_step:
                    batch = to_global(next(data), self.batch_sharding)
                self.state, metrics = step(self.state, self.vgg_params, batch, factors)
                global_step += 1
                if self._pending:  # at most two steps in flight: the host never runs far ahead of the device
                    self._pending[-1][2]["finite"].block_until_ready()
                self._pending.append((global_step, epoch, metrics))
                self._bar.update(1)
                self.stopped_by = stop.poll()
                last = i + 1 == n_steps  # the end-of-epoch save (if any) takes the epoch's last step
                periodic_save = (cfg.checkpoint.every_n_steps and global_step % cfg.checkpoint.every_n_steps == 0
                                 and not (last and (epoch_save or self.stopped_by)))
                if last or (cfg.logging.every_n_steps and global_step % cfg.logging.every_n_steps == 0):
                    self._flush(factors)
                if cfg.logging.image_every_n_steps and global_step % cfg.logging.image_every_n_steps == 0:
                    self._log_images(global_step, batch)
                if periodic_save or (self.stopped_by and not last):
                    self._save(epoch, i + 1, global_step, {}, data.get_state(), factors)
                if self.stopped_by:
                    break
            self._bar.close()
            if not (self.stopped_by and not last):  # the epoch is complete
                start_step = 0
                if cfg.val.every_n_epochs and epoch % cfg.val.every_n_epochs == 0:
                    last_val = self.validate(epoch, global_step)
                epoch += 1
                if epoch_save or self.stopped_by:
                    self._save(epoch, 0, global_step, last_val, None, factors)
            if self.stopped_by:
                log.warning(f"stopped by {signal.Signals(self.stopped_by).name} after step {global_step}: "
                            f"checkpoint step {global_step} is in {cfg.checkpoint_dir}; --resume continues from there")
                return last_val
        return last_val

    def close(self) -> None:
        """Wait for the checkpoint being written, close the logs and release the workdir."""
        try:
            self.checkpoints.close()
            self.writer.close()
        finally:
            set_compile_cache(*self._process_cache)
            self.lock.release()

    def _save(self, epoch: int, step_in_epoch: int, global_step: int, metrics: dict, data_state: dict | None,
              factors: dict):
        """Checkpoint the state, after logging and checking every step up to it (a state that is not finite is
        never saved); ``data_state`` is the epoch's grain iterator state (None at an epoch boundary)."""
        self._flush(factors)
        meta = {"epoch": epoch, "step_in_epoch": step_in_epoch, "global_step": global_step, "seed": self.cfg.seed,
                "data_iterator": data_state, "val_reference": self.val_reference}
        self.checkpoints.save(global_step, self.state, meta, {k: v for k, v in metrics.items() if k == BEST_KEY})

    # ----- logs ------------------------------------------------------------------------------------------

    def _loss_log(self) -> Path:
        return self.workdir / "losses.jsonl"

    def _flush(self, factors: dict) -> None:
        """Bring the metrics of the steps since the last flush to the host (one transfer), append them to
        losses.jsonl, write the logging steps' scalars, and stop on a non-finite step (optim.skip_nonfinite)."""
        if not self._pending:
            return
        pending, self._pending = self._pending, []
        skip = self.cfg.optim.skip_nonfinite
        entries, undone, failure = [], [], None
        for (global_step, epoch, _), values in zip(pending, jax.device_get([m for *_, m in pending])):
            finite = bool(values.pop("finite"))
            entry = {"step": global_step, "epoch": epoch, **{k: float(v) for k, v in values.items()}}
            self._nonfinite_in_a_row = 0 if finite else self._nonfinite_in_a_row + 1
            if not finite and skip:
                entry["skipped"] = True
            entries.append(entry)
            if not finite and failure is None:
                if self._nonfinite_in_a_row >= max(skip, 1):
                    failure = entry
                else:
                    undone.append((entry, self._nonfinite_in_a_row))
        now = time.perf_counter()
        ips = len(pending) * self.cfg.batch_size / max(now - self._since, 1e-9)
        self._since = now
        if jax.process_index() == 0:
            self._write_entries(entries, ips, factors)
        for entry, streak in undone:
            log.warning(f"step {entry['step']}: non-finite {_nonfinite_terms(entry)}; step undone ({streak} in a "
                        f"row, optim.skip_nonfinite={skip})")
        if failure is not None:
            raise self._nonfinite_error(failure)

    def _write_entries(self, entries: list[dict], ips: float, factors: dict) -> None:
        try:
            with self._loss_log().open("a") as f:
                f.writelines(json.dumps(e) + "\n" for e in entries)
                f.flush()
                os.fsync(f.fileno())
        except OSError as e:
            if storage_errno(e) is None:
                raise
            raise StorageError(f"could not append to {self._loss_log()}: [Errno {e.errno}] {e.strerror}; the "
                               "checkpoints are intact and --resume repairs the log", e.errno) from None
        last = entries[-1]
        self._bar.set_postfix(loss=f"{last['loss']:.4f}", img_s=f"{ips:.2f}")
        every = self.cfg.logging.every_n_steps
        for e in entries:  # non-finite steps are in losses.jsonl and in the message about them
            if every and e["step"] % every == 0 and np.isfinite(e["loss"]) and not e.get("skipped"):
                values = {k: v for k, v in e.items() if k not in ("step", "epoch", "skipped")}
                self.writer.scalars({f"train/{k}": v for k, v in values.items()}, e["step"])
                self.writer.scalars({f"lr/{name}": g.lr * float(factors[name]) for name, g in self.groups}, e["step"])
                self.writer.scalar("train/images_per_second", ips, e["step"])

    def _nonfinite_error(self, entry: dict) -> NonFiniteError:
        latest = self.checkpoints.latest_step()
        good = (f"the last good checkpoint is step {latest} in {self.cfg.checkpoint_dir}: --resume continues from it"
                if latest is not None else "no checkpoint was written before it")
        skip = self.cfg.optim.skip_nonfinite
        streak = f" ({skip} steps in a row, optim.skip_nonfinite={skip})" if skip else ""
        return NonFiniteError(f"non-finite {_nonfinite_terms(entry)} at step {entry['step']}, epoch {entry['epoch']}"
                              f"{streak}; nothing from it was saved, {good}")

    # ----- validation ------------------------------------------------------------------------------------

    def forward(self) -> Jitted:
        """The jitted evaluation forward of ``val.modes`` on the current parameters."""
        if self._forward is None:
            self._forward = Jitted(self.model(), lambda m, b: predict_outputs(m, b, self.cfg.val.modes))
        else:
            self._forward.set_model(self.model())
        return self._forward

    def _log_images(self, global_step: int, batch: dict):
        """Image summaries of the first training sample: its target view and each path's inverse depth."""
        first = image_inputs(batch)
        out = jax.device_get(self.forward()(first))
        if jax.process_index() != 0:
            return
        self.writer.image("train/color_s", np.asarray(np.clip(jax.device_get(first["color_s"])[0], 0, 1) * 255,
                                                      np.uint8), global_step)
        for mode in self.cfg.val.modes:
            self.writer.image(f"train/{mode}/inverse_depth", colorize(1 / out[DEPTH_KEYS[mode]][0, ..., 0]),
                              global_step)

    def validate(self, epoch: int, global_step: int) -> dict:
        """Depth metrics of every validated path against the ground truth; returns {'val/<path>/<metric>'} and
        the checkpoint ranking score under `checkpoint.BEST_KEY`.

        Generated scenes are scored on every pixel with GT in (min_depth, ...); TFDS sets with `val.metric`
        (spec §8.1 / §8.2, as `python -m tiodepth_jax.evaluate`).
        """
        cfg = self.cfg
        modes = cfg.val.modes
        forward = self.forward()
        synthetic = isinstance(self.val_ds, SyntheticStereo)
        crop = default_crop(cfg.val_dataset[0]) if cfg.val.crop == "auto" else cfg.val.crop
        opts = MetricOptions(metric=cfg.val.metric, min_depth=cfg.val.min_depth, max_depth=cfg.val.max_depth,
                             crop=crop)
        per_mode: dict = {mode: [] for mode in modes}
        first = None
        for inputs, gts in val_batches(cfg, self.val_ds):
            inputs = {k: jnp.asarray(v) for k, v in inputs.items()}
            self._compile_forward(inputs, f"validation after epoch {epoch}")
            out = jax.device_get(forward(inputs))
            for i, gt in enumerate(gts):
                if synthetic:
                    scores = {mode: depth_metrics(out[DEPTH_KEYS[mode]][i, ..., 0], gt["depth_gt"],
                                                  min_depth=cfg.val.min_depth, max_depth=cfg.val.max_depth,
                                                  mask_mode="valid") for mode in modes}
                else:
                    scores = evaluate_prediction({k: v[i] for k, v in out.items()}, gt, modes, opts)
                for mode in modes:
                    per_mode[mode].append(scores[mode])
            first = first or (out, gts[0])
        result = {f"val/{mode}/{k}": v for mode, ms in per_mode.items() for k, v in mean_metrics(ms).items()}
        result[BEST_KEY] = self._score(result)
        if jax.process_index() == 0:
            self.writer.scalars(result, global_step)
            out, gt = first
            for mode in modes:
                self.writer.image(f"val/{mode}/inverse_depth", colorize(1 / out[DEPTH_KEYS[mode]][0, ..., 0]),
                                  global_step)
            self.writer.image("val/ground_truth/inverse_depth", colorize(1 / np.maximum(gt["depth_gt"], 1e-3)),
                              global_step)
            table = "  ".join(f"{mode}: AbsRel {result[f'val/{mode}/abs_rel']:.4f} RMSE {result[f'val/{mode}/rmse']:.3f}"
                              f" A1 {result[f'val/{mode}/a1']:.3f}" for mode in modes)
            log.info(f"validation after epoch {epoch}: {table}")
        return result

    def _score(self, result: dict) -> float:
        """The checkpoint ranking score of a validation (see `val_score`), of the path `cfg.ranked_mode`."""
        score, self.val_reference = val_score(result, self.cfg.ranked_mode, self.cfg.checkpoint.best_metric,
                                              self.val_reference)
        return score
