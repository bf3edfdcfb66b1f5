"""Training configuration: YAML files in `configs/` loaded into typed, frozen dataclasses.

    cfg = load_config("configs/tiodepth_dinov2b.yaml", ["optim.lr=2e-4", "model.variant=vits"])
    cfg.optim.param_group2.lr_factor(epoch=25)      # 0.5 ** (milestones <= epoch - 1)
    text = cfg.to_yaml()                            # the resolved config, for checkpoints and logs
    cfg2 = TrainConfig.from_dict(yaml.safe_load(text))

Rules (the original's `read_yaml_options` semantics, spec §1, plus strict checking):

* `_base: other.yaml` (or a list of files) at the top of a file includes other files, relative to the
  including file; the including file overrides them: mappings merge recursively, lists and scalars replace.
* `key.sub=value` overrides are applied last, in order; the value is parsed with `yaml.safe_load`
  (`optim.lr=2e-4`, `model.image_size=[126,420]`, `init_from=null`).
* Every key is checked (by pydantic, through `tiodepth_jax.schema`): an unknown key, a value of the wrong
  type, a bad value or a missing required key is a `ConfigError` that names the key path and where it came
  from, e.g. ``unknown config key 'optim.betaz' in configs/x.yaml (did you mean 'betas'?)``.
* Types: int (not bool, not 2.0), `Float` (a float, an int or a numeric string such as YAML's `1e-4`, which
  YAML 1.1 reads as a string), bool, str, null only where a field is optional, lists become tuples.
* A mapping given for a section merges over that section's defaults (so `optim.param_group2: {lr: 2e-4}`
  keeps group 2's st_epoch, milestones and rates).

The defaults are the original's training setup (spec §6.2), and `configs/tiodepth_dinov2b.yaml` writes every
field out with a comment.
"""

from __future__ import annotations

import dataclasses
import math
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

import yaml

from tiodepth_jax.models.dinov2 import Remat
from tiodepth_jax.models.tiodepth import TiODepthConfig
from tiodepth_jax.schema import ConfigError, FieldError, Float, Where, build, merge, plain, short_repr

__all__ = [
    "ConfigError", "GroupConfig", "OptimConfig", "DataConfig", "ValConfig", "MeshConfig", "CheckpointConfig",
    "LogConfig", "TrainConfig", "load_config", "load_config_dict", "parse_override", "apply_overrides",
    "build", "dump_yaml", "MEMBERS", "GROUPS", "DATASETS", "VAL_MODES", "METRICS", "PATCH",
]

PATCH = 14                                   # DINOv2 patch size: image sides must be multiples of it
MEMBERS = ("BB", "CA", "DE", "MO")           # parameter-group member names (spec §2.8)
GROUPS = ("param_group1", "param_group2", "param_group3")
DATASETS = ("synthetic", "kitti_raw", "kitti_eigen_test/raw", "kitti_eigen_test/improved", "kitti_stereo2015",
            "stereo_folder")  # 'synthetic' or a TFDS dataset built by `python -m tiodepth_jax.data.build`
VAL_MODES = ("Mono", "Stereo", "Refine")
METRICS = ("mean_rel", "abs_rel", "sq_rel", "rmse", "rmse_log", "a1", "a2", "a3", "epe_all", "d1_all")
MESH_AXES = ("data", "fsdp")


def _fail(field: str, msg: str):
    raise FieldError(field, msg)


def _multiple_of_patch(field: str, hw):
    if any(v <= 0 or v % PATCH for v in hw):
        _fail(field, f"{list(hw)} must be positive multiples of {PATCH} (the DINOv2 patch size)")


def _non_negative(obj, *names):
    for n in names:
        v = getattr(obj, n)
        if v is not None and v < 0:
            _fail(n, f"must be >= 0, got {v}")


# ---------------------------------------------------------------------------------------------------------
# The schema


@dataclasses.dataclass(frozen=True, kw_only=True)
class GroupConfig:
    """One optimiser (`param_group<k>`, spec §2.8, §6.2): Adam over its members, MultiStep schedule per epoch."""

    st_epoch: int                                 # first epoch (1-based) in which the group trains
    milestones: tuple[int, ...]                   # MultiStepLR milestones (epochs)
    gamma: Float = 0.5                            # lr factor at each milestone
    lr: Float | None = None                       # the group's base lr; None = optim.lr
    rates: dict[str, Float] = dataclasses.field(default_factory=dict, hash=False)  # member -> lr multiplier

    def __post_init__(self):
        if self.st_epoch < 1:
            _fail("st_epoch", f"must be >= 1, got {self.st_epoch}")
        if any(m < 1 for m in self.milestones) or list(self.milestones) != sorted(set(self.milestones)):
            _fail("milestones", f"must be strictly increasing positive epochs, got {list(self.milestones)}")
        if not self.gamma > 0:
            _fail("gamma", f"must be > 0, got {self.gamma}")
        if self.lr is not None and not self.lr > 0:
            _fail("lr", f"must be > 0 or null, got {self.lr}")
        for name, rate in self.rates.items():
            if name not in MEMBERS:
                _fail(f"rates.{name}", f"unknown member {name!r}; known: {', '.join(MEMBERS)}")
            if not rate >= 0 or math.isinf(rate):
                _fail(f"rates.{name}", f"must be a finite rate >= 0, got {rate}")
        if not self.members:
            _fail("rates", f"the group trains nothing: give a positive rate to one of {', '.join(MEMBERS)}")
        if "BB" in self.members and ("DE" in self.members or "CA" in self.members or "MO" in self.members):
            _fail("rates", "BB (every trainable parameter outside CA and MO, i.e. encoder + DE) cannot share a group "
                           f"with DE, CA or MO: {dict(self.rates)}")

    @property
    def members(self) -> dict[str, float]:
        """Members with a positive rate (a rate of 0 removes a member inherited from a base file)."""
        return {k: v for k, v in self.rates.items() if v > 0}

    def lr_factor(self, epoch: int) -> float:
        """The MultiStepLR factor during 1-based `epoch`: gamma ** (number of milestones <= epoch - 1).
        Every scheduler ticks once per epoch from epoch 1 on, active or not (spec §6.2)."""
        return self.gamma ** sum(m <= epoch - 1 for m in self.milestones)

    def active(self, epoch: int) -> bool:
        return epoch >= self.st_epoch


def _group(st_epoch, milestones, rates) -> Any:
    return dataclasses.field(default_factory=lambda: GroupConfig(st_epoch=st_epoch, milestones=milestones, rates=rates))


@dataclasses.dataclass(frozen=True)
class OptimConfig:
    """Adam settings shared by the three groups (spec §6.2, §12.6) and the groups themselves."""

    lr: Float = 1e-4                              # base learning rate of every group without its own `lr`
    betas: tuple[Float, Float] = (0.5, 0.999)
    eps: Float = 1e-8                             # added outside the sqrt (optax eps_root = 0)
    weight_decay: Float = 0.0
    clip_grad_norm: Float | None = None           # None = no clipping (the original's clip_grad -1)
    skip_nonfinite: int = 0                       # 0 = stop at a non-finite loss; N = undo such steps, stop
                                                  #   after N consecutive ones
    param_group1: GroupConfig = _group(1, (20, 30, 40, 45), {"BB": 1.0})
    param_group2: GroupConfig = _group(21, (30, 40, 45), {"CA": 1.0, "DE": 0.1})
    param_group3: GroupConfig = _group(31, (40, 45), {"MO": 1.0, "DE": 0.1})

    def __post_init__(self):
        if not self.lr > 0:
            _fail("lr", f"must be > 0, got {self.lr}")
        if not all(0 <= b < 1 for b in self.betas):
            _fail("betas", f"must lie in [0, 1), got {list(self.betas)}")
        if not self.eps > 0:
            _fail("eps", f"must be > 0, got {self.eps}")
        _non_negative(self, "weight_decay", "skip_nonfinite")
        if self.clip_grad_norm is not None and not self.clip_grad_norm > 0:
            _fail("clip_grad_norm", f"must be > 0 or null, got {self.clip_grad_norm}")
        starts = [g.st_epoch for _, g in self.groups]
        if starts != sorted(starts):
            late = next(j for j in range(len(starts) - 1) if starts[j] > starts[j + 1])
            _fail(f"{GROUPS[late]}.st_epoch",
                  f"the groups must start in order (Mono, then Stereo, then Refine), got st_epoch {starts}")

    @property
    def groups(self) -> tuple[tuple[str, GroupConfig], ...]:
        """(name, group) in training order, each group's lr resolved (null = optim.lr)."""
        resolve = lambda g: g if g.lr is not None else dataclasses.replace(g, lr=self.lr)  # noqa: E731
        return tuple((name, resolve(getattr(self, name))) for name in GROUPS)


@dataclasses.dataclass(frozen=True)
class DataConfig:
    """Training data (spec §6.5, §7)."""

    name: str                                     # dataset: one of DATASETS
    data_dir: str | None = None                   # TFDS data directory holding the built dataset (not synthetic)
    split: str = "train"                          # TFDS split of the built dataset
    image_size: tuple[int, int] = (378, 1260)     # full size (H, W) the images are resized to
    crop_size: tuple[int, int] | None = None      # training crop (H, W); None = model.image_size
    flip_mode: Literal["img", "k", "none"] = "img"  # 'img': swap s/o and mirror both with p = 0.5
    scale_range: tuple[Float, Float] | None = (0.75, 1.5)  # random resize factor range; None = off
    color_aug_prob: Float = 0.5                   # probability of the gamma/brightness/colour augmentation
    shuffle: bool = True
    repeat: int = 1                               # passes over the dataset per epoch, each in its own order
    num_workers: int = 4                          # loader worker threads/processes (0 = in the main thread)
    synthetic: dict = dataclasses.field(default_factory=dict, hash=False)  # options of the synthetic dataset

    def __post_init__(self):
        if self.name not in DATASETS:
            _fail("name", f"unknown dataset {self.name!r}; known: {', '.join(DATASETS)}")
        _multiple_of_patch("image_size", self.image_size)
        if self.crop_size is not None:
            _multiple_of_patch("crop_size", self.crop_size)
            if any(c > s for c, s in zip(self.crop_size, self.image_size)):
                _fail("crop_size", f"{list(self.crop_size)} is larger than image_size {list(self.image_size)}")
        if self.scale_range is not None:
            lo, hi = self.scale_range
            if not 0 < lo <= hi:
                _fail("scale_range", f"needs 0 < low <= high, got {list(self.scale_range)}")
            if self.crop_size is not None:  # the crop window in full-size pixels (spec §6.5 step 6) must fit
                window = [int(c / lo) + 1 for c in self.crop_size]
                if any(w > s for w, s in zip(window, self.image_size)):
                    _fail("scale_range", f"the smallest scale {lo} needs a {window[0]}x{window[1]} crop window, "
                                         f"larger than image_size {list(self.image_size)}")
        if not 0 <= self.color_aug_prob <= 1:
            _fail("color_aug_prob", f"must lie in [0, 1], got {self.color_aug_prob}")
        _non_negative(self, "num_workers")
        if self.repeat < 1:
            _fail("repeat", f"must be >= 1, got {self.repeat}")

    def require_data_dir(self) -> str:
        """`data_dir`, or an error telling the user to set it (a dataset other than 'synthetic' needs it)."""
        if self.data_dir is None and self.name != "synthetic":
            raise ConfigError(f"data.data_dir is not set: dataset {self.name!r} needs it (the directory "
                              f"`python -m tiodepth_jax.data.build` wrote it to; set it in the YAML file or pass "
                              f"data.data_dir=/path/to/tensorflow_datasets)")
        return self.data_dir


@dataclasses.dataclass(frozen=True)
class ValConfig:
    """Validation during training (spec §6.4, §8): depth metrics of each path on the val split."""

    every_n_epochs: int = 1                       # 0 = never
    at_start: bool = True                         # validate once before training (the original's epoch 0)
    name: str | None = None                       # dataset; None = data.name
    data_dir: str | None = None                   # None = data.data_dir
    split: str = "test"                           # TFDS split (the Eigen test set: the original validates on it)
    image_size: tuple[int, int] = (378, 1260)     # network input size (H, W)
    batch_size: int = 1
    modes: tuple[str, ...] = VAL_MODES            # paths to evaluate (rawdepth / sdepth / refdepth)
    metric: str = "depth_kitti"                   # 'depth_kitti' (GT clamped) | 'depth_kitti_stereo2015'
    crop: Literal["auto", "garg", "eigen", "none"] = "auto"  # scored region; auto = garg on kitti_eigen_test
    min_depth: Float = 0.5                        # the fork's value (the original: 0)
    max_depth: Float = 80.0
    max_samples: int | None = None                # evaluate only the first N samples (None = all)

    def __post_init__(self):
        _non_negative(self, "every_n_epochs")
        if self.name is not None and self.name not in DATASETS:
            _fail("name", f"unknown dataset {self.name!r}; known: {', '.join(DATASETS)}")
        _multiple_of_patch("image_size", self.image_size)
        if self.batch_size < 1:
            _fail("batch_size", f"must be >= 1, got {self.batch_size}")
        bad = [m for m in self.modes if m not in VAL_MODES]
        if bad or not self.modes or len(set(self.modes)) != len(self.modes):
            _fail("modes", f"must be distinct entries of {list(VAL_MODES)}, got {list(self.modes)}")
        if self.metric not in ("depth_kitti", "depth_kitti_stereo2015"):
            _fail("metric", f"unknown metric {self.metric!r}; known: depth_kitti, depth_kitti_stereo2015")
        if not 0 <= self.min_depth < self.max_depth:
            _fail("min_depth", f"needs 0 <= min_depth < max_depth, got {self.min_depth}, {self.max_depth}")
        if self.max_samples is not None and self.max_samples < 1:
            _fail("max_samples", f"must be >= 1 or null, got {self.max_samples}")


@dataclasses.dataclass(frozen=True)
class MeshConfig:
    """Device mesh with axes ('data', 'fsdp') (jax_stack.md §2); -1 = all remaining devices."""

    data: int = -1
    fsdp: int = 1
    distributed: bool | Literal["auto"] = "auto"  # jax.distributed.initialize(): True, False or 'auto'
    coordinator_address: str | None = None        # 'host:port' of process 0; None = detected by JAX
    num_processes: int | None = None              # processes in the run; None = detected by JAX
    process_id: int | None = None                 # this process's rank; None = detected by JAX
    peer_timeout: int = 60                        # seconds before a silent or departed process ends the others

    def __post_init__(self):
        for name in MESH_AXES:
            v = getattr(self, name)
            if v == 0 or v < -1:
                _fail(name, f"must be a positive size or -1 (all remaining devices), got {v}")
        if self.data == -1 and self.fsdp == -1:
            _fail("fsdp", "only one mesh axis can be -1")
        if self.num_processes is not None and self.num_processes < 1:
            _fail("num_processes", f"must be >= 1, got {self.num_processes}")
        if self.process_id is not None and not 0 <= self.process_id < (self.num_processes or self.process_id + 1):
            _fail("process_id", f"must lie in [0, num_processes={self.num_processes}), got {self.process_id}")
        if self.coordinator_address is not None and not re.fullmatch(r".+:\d+", self.coordinator_address):
            _fail("coordinator_address", f"must be 'host:port', got {self.coordinator_address!r}")
        if self.peer_timeout < 1:
            _fail("peer_timeout", f"must be >= 1 second, got {self.peer_timeout}")
        if self.distributed is False:
            for name in ("coordinator_address", "num_processes", "process_id"):
                if getattr(self, name) is not None:
                    _fail(name, "is set but mesh.distributed is false")

    @property
    def launch(self) -> dict:
        """The set keys of jax.distributed.initialize() (coordinator_address, num_processes, process_id)."""
        keys = {"coordinator_address": self.coordinator_address, "num_processes": self.num_processes,
                "process_id": self.process_id}
        return {k: v for k, v in keys.items() if v is not None}

    def shape(self, num_devices: int) -> tuple[int, int]:
        """(data, fsdp) sizes for `num_devices` devices, resolving -1."""
        sizes = [self.data, self.fsdp]
        known = math.prod(s for s in sizes if s != -1)
        if -1 in sizes:
            if num_devices % known:
                raise ConfigError(f"mesh: {num_devices} devices are not divisible by the fixed axis size {known}")
            sizes[sizes.index(-1)] = num_devices // known
        if math.prod(sizes) != num_devices:
            raise ConfigError(f"mesh: data={sizes[0]} x fsdp={sizes[1]} != {num_devices} devices")
        return tuple(sizes)


@dataclasses.dataclass(frozen=True)
class CheckpointConfig:
    """Training checkpoints (model, the three optimiser states, epoch, step, the resolved config)."""

    dir: str | None = None                        # None = <workdir>/checkpoints
    every_n_epochs: int = 1                       # 0 = never (the original's --save_freq)
    every_n_steps: int = 0                        # 0 = never
    keep: int | None = 3                          # keep the last N periodic checkpoints; None = all
    keep_best: bool = True                        # also keep the best checkpoint (best_metric of best_mode)
    best_metric: str = "mean_rel"                 # 'mean_rel' = the original's average relative change of
                                                  # the 7 depth metrics, or one metric (abs_rel, a1, ...)
    best_mode: Literal["Mono", "Stereo", "Refine"] | None = None  # the validated path ranked; None = the last
                                                  # of val.modes
    async_save: bool = True                       # save in the background (orbax async checkpointing)
    resume: bool = True                           # continue from the newest checkpoint in `dir` if any

    def __post_init__(self):
        _non_negative(self, "every_n_epochs", "every_n_steps")
        if self.keep is not None and self.keep < 1:
            _fail("keep", f"must be >= 1 or null (keep all), got {self.keep}")
        if self.best_metric not in METRICS:
            _fail("best_metric", f"unknown metric {self.best_metric!r}; known: {', '.join(METRICS)}")


@dataclasses.dataclass(frozen=True)
class LogConfig:
    """Console / TensorBoard logging."""

    every_n_steps: int = 100                      # scalars (losses, lrs, throughput); the original's log_freq
    tensorboard: bool = True                      # write TensorBoard event files
    image_every_n_steps: int = 1000               # image summaries; 0 = never (the original's visual_freq)
    dir: str | None = None                        # None = <workdir>/logs

    def __post_init__(self):
        if self.every_n_steps < 1:
            _fail("every_n_steps", f"must be >= 1, got {self.every_n_steps}")
        _non_negative(self, "image_every_n_steps")


@dataclasses.dataclass(frozen=True, kw_only=True)
class TrainConfig:
    """A whole training run."""

    workdir: str                                  # run directory (checkpoints, logs, the resolved config)
    seed: int = 2021                              # the epoch's data RNG is seeded with seed + epoch
    epochs: int = 50
    batch_size: int = 8                           # global batch (all devices / hosts together)
    dtype: Literal["float32", "bfloat16"] = "float32"  # compute dtype (parameters stay float32)
    remat: Remat = False                          # rematerialise the DINOv2 blocks: a jax.checkpoint_policies
                                                  #   name (models/dinov2.py RematPolicy); true = nothing_saveable
    init_from: str | None = None                  # converted Depth-Anything-V2 checkpoint for the encoder
    vgg_from: str | None = None                   # converted VGG19 (perceptual loss); None = random weights
    model: TiODepthConfig = dataclasses.field(default_factory=TiODepthConfig)
    data: DataConfig
    optim: OptimConfig = dataclasses.field(default_factory=OptimConfig)
    val: ValConfig = dataclasses.field(default_factory=ValConfig)
    mesh: MeshConfig = dataclasses.field(default_factory=MeshConfig)
    checkpoint: CheckpointConfig = dataclasses.field(default_factory=CheckpointConfig)
    logging: LogConfig = dataclasses.field(default_factory=LogConfig)
    # {param_groupK: {term name: term} or [terms]} for tiodepth_jax.losses; None = its TRAINING_LOSSES (spec §5.6)
    losses: dict | None = dataclasses.field(default=None, hash=False)
    # JAX's persistent compilation cache, so that a resumed or repeated run loads its compiled programs instead of
    # compiling them again: true = <workdir>/compile_cache (JAX_COMPILATION_CACHE_DIR instead, where set), a
    # directory (which runs may share), or false = off
    compile_cache: bool | str = True

    def __post_init__(self):
        if not self.workdir:
            _fail("workdir", "must be a non-empty path")
        if self.epochs < 1:
            _fail("epochs", f"must be >= 1, got {self.epochs}")
        if self.batch_size < 1:
            _fail("batch_size", f"must be >= 1, got {self.batch_size}")
        if self.compile_cache == "":
            _fail("compile_cache", "must be true, false or a directory, got an empty string")
        _multiple_of_patch("model.image_size", self.model.image_size)
        if self.data.crop_size is not None and tuple(self.data.crop_size) != tuple(self.model.image_size):
            _fail("data.crop_size", f"{list(self.data.crop_size)} must equal model.image_size "
                                    f"{list(self.model.image_size)} (the decoder is built for the training crop)")
        if any(c > s for c, s in zip(self.crop_size, self.data.image_size)):
            _fail("model.image_size", f"the training crop {list(self.crop_size)} is larger than data.image_size "
                                      f"{list(self.data.image_size)}")
        if self.checkpoint.best_mode is not None and self.checkpoint.best_mode not in self.val.modes:
            _fail("checkpoint.best_mode", f"{self.checkpoint.best_mode} is not validated: val.modes is "
                                          f"{list(self.val.modes)}")
        if self.checkpoint.best_metric in ("epe_all", "d1_all") and self.val_dataset[0] == "synthetic":
            _fail("checkpoint.best_metric", f"{self.checkpoint.best_metric} is computed on TFDS validation sets "
                                            f"with ground truth, not on the synthetic scenes")
        self._check_model()
        if self.losses is not None:
            if not isinstance(self.losses, Mapping):
                _fail("losses", f"expected a mapping {{param_groupK: [terms]}} or null, got {self.losses!r}")
            for name, terms in self.losses.items():
                if name not in GROUPS:
                    _fail(f"losses.{name}", f"unknown group; known: {', '.join(GROUPS)}")
                items = terms.values() if isinstance(terms, Mapping) else terms
                if not isinstance(terms, (list, tuple, Mapping)) or not all(isinstance(t, Mapping) for t in items):
                    _fail(f"losses.{name}", "expected {term name: term mapping} (the original's loss_terms) or a "
                                            f"list of term mappings, got {terms!r}")

    def check_bins(self):
        """Training only (a stored run's config loads for inference whatever its bins): the largest bin must
        shift features less than the training crop is wide (the MFM's shifts); ConfigError naming the key."""
        m, width = self.model, self.crop_size[1]
        if m.max_disp != "auto" and m.max_disp >= width:
            nearest = "" if m.d2d == "auto" else f" = {m.d2d / width:.4g} m"
            raise ConfigError(f"model.max_disp: {m.max_disp:.4g} is not below the training width {width}: the "
                              f"stereo matching shifts features by up to max_disp pixels (with model.depth_range, "
                              f"its minimum must exceed d2d / {width}{nearest})")

    def _check_model(self):
        """Errors the model would only raise when built: variant, taps, decoder name and widths."""
        m = self.model
        if not m.resolved:  # stand-in numbers: the bins of 'auto' come from the training set (resolve_geometry)
            m = dataclasses.replace(m, d2d=1.0, min_disp=1.0, max_disp=2.0, depth_range=None)
        try:
            enc = m.encoder_config()
            m.decoder_config((enc.dpt.features,) * 4)
        except ValueError as e:
            _fail("model", str(e))

    # --- derived values ---------------------------------------------------------------------------------

    @property
    def crop_size(self) -> tuple[int, int]:
        return tuple(self.data.crop_size or self.model.image_size)

    @property
    def ranked_mode(self) -> str:
        """The validated path whose metrics rank the checkpoints (checkpoint.best_mode, or the last of val.modes)."""
        return self.checkpoint.best_mode or self.val.modes[-1]

    @property
    def checkpoint_dir(self) -> str:
        return self.checkpoint.dir if self.checkpoint.dir is not None else str(Path(self.workdir) / "checkpoints")

    @property
    def compile_cache_dir(self) -> str | None:
        """The absolute directory `compile_cache` names: None when off, <workdir>/compile_cache for true (the training
        loop keeps JAX_COMPILATION_CACHE_DIR instead where it is set)."""
        if self.compile_cache is False:
            return None
        directory = Path(self.workdir) / "compile_cache" if self.compile_cache is True else Path(self.compile_cache)
        return str(directory.expanduser().absolute())  # JAX keeps it for the process, whatever its working directory

    @property
    def log_dir(self) -> str:
        return self.logging.dir if self.logging.dir is not None else str(Path(self.workdir) / "logs")

    @property
    def val_dataset(self) -> tuple[str, str | None]:
        """(name, data_dir) of the validation set (falling back to the training set's)."""
        return (self.val.name or self.data.name,
                self.val.data_dir if self.val.data_dir is not None else self.data.data_dir)

    @property
    def compute_dtype(self):
        import jax.numpy as jnp
        return jnp.dtype(self.dtype)

    # --- serialisation ----------------------------------------------------------------------------------

    def to_dict(self) -> dict:
        """Plain YAML/JSON data (lists, not tuples) that `TrainConfig.from_dict` turns back into this config."""
        return plain(self)

    def to_yaml(self) -> str:
        return dump_yaml(self.to_dict())

    @classmethod
    def from_dict(cls, d: Mapping, *, source: str = "<dict>") -> "TrainConfig":
        return build(cls, d, source=source)


# ---------------------------------------------------------------------------------------------------------
# YAML text


class _Dumper(yaml.SafeDumper):
    """Block-style mappings, flow-style lists of scalars ([252, 840])."""


def _represent_list(dumper, data):
    flow = all(not isinstance(v, (list, tuple, Mapping)) for v in data)
    return dumper.represent_sequence("tag:yaml.org,2002:seq", data, flow_style=flow)


_Dumper.add_representer(list, _represent_list)


def dump_yaml(data: Mapping) -> str:
    """YAML text of plain config data (`TrainConfig.to_dict()`), readable by `load_config`."""
    return yaml.dump(plain(data), Dumper=_Dumper, sort_keys=False, default_flow_style=False, width=110)


# ---------------------------------------------------------------------------------------------------------
# YAML files, `_base` includes and overrides


def _read_yaml(path: Path, where: Where, stack: tuple = ()) -> dict:
    """A YAML file with its `_base` includes resolved."""
    shown = str(path)
    if path.resolve() in stack:
        chain = " -> ".join(str(p) for p in stack + (path.resolve(),))
        raise ConfigError(f"circular _base include: {chain}")
    try:
        text = path.read_text()
    except OSError as e:
        raise ConfigError(f"cannot read config file {shown}: {e.strerror or e}") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise ConfigError(f"invalid YAML in {shown}: {e}") from None
    if data is None:
        data = {}
    if not isinstance(data, Mapping):
        raise ConfigError(f"{shown} must hold a mapping at the top level, got {short_repr(data)}")
    data = dict(data)
    bases = data.pop("_base", None)
    if bases is None:
        bases = []
    elif isinstance(bases, str):
        bases = [bases]
    elif not (isinstance(bases, list) and all(isinstance(b, str) for b in bases)):
        raise ConfigError(f"_base: expected a file name or a list of file names, got {short_repr(bases)} in {shown}")
    merged: dict = {}
    for b in bases:
        bp = path.parent / b
        if not bp.exists():
            raise ConfigError(f"_base: included file {str(bp)!r} does not exist (in {shown})")
        merged = merge(merged, _read_yaml(bp, where, stack + (path.resolve(),)))
    where.record(data, shown)
    return merge(merged, data)


def parse_override(text: str) -> tuple[tuple[str, ...], Any]:
    """`'a.b=value'` -> (('a', 'b'), yaml.safe_load('value'))."""
    key, sep, raw = text.partition("=")
    key = key.strip()
    if not sep or not key:
        raise ConfigError(f"override {text!r}: expected key.sub=value")
    path = tuple(key.split("."))
    if any(not p or not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", p) for p in path):
        raise ConfigError(f"override {text!r}: {key!r} is not a dotted key path")
    if path[0] == "_base":
        raise ConfigError(f"override {text!r}: _base can only be used inside YAML files")
    try:
        value = yaml.safe_load(raw) if raw.strip() else None
    except yaml.YAMLError as e:
        raise ConfigError(f"override {text!r}: the value is not valid YAML ({e})") from None
    return path, value


def apply_overrides(data: Mapping, overrides, where: Where | None = None) -> dict:
    """Apply `key.sub=value` strings to plain config data (mapping values merge, others replace)."""
    out = plain(data)
    for text in overrides:
        path, value = parse_override(text)
        node = out
        for i, k in enumerate(path[:-1]):
            if k not in node or node[k] is None:
                node[k] = {}
            elif not isinstance(node[k], dict):
                raise ConfigError(f"override {text!r}: '{'.'.join(path[:i + 1])}' is not a section "
                                  f"(it holds {short_repr(node[k])})")
            node = node[k]
        last = path[-1]
        node[last] = merge(node[last], value) if isinstance(node.get(last), dict) else plain(value)
        if where is not None:
            where.record(value, f"override {text!r}", path)
    return out


def load_config_dict(path, overrides=()) -> tuple[dict, Where]:
    """The merged plain data of a YAML file (with `_base` includes) and `overrides`, before type checking."""
    where = Where(str(path))
    data = _read_yaml(Path(path), where)
    if isinstance(overrides, str):
        overrides = [overrides]
    return apply_overrides(data, overrides, where), where


def load_config(path, overrides=()) -> TrainConfig:
    """A `TrainConfig` from a YAML file and `key.sub=value` overrides; errors name the key path."""
    data, where = load_config_dict(path, overrides)
    return build(TrainConfig, data, source=str(path), where=where)
