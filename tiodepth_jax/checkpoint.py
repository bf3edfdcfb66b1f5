"""Model loading and saving: the one place that turns a path into a model.

Two kinds of source:

* a **model directory** (written by `save_model`, e.g. by the converters): `model.json` (the model kind,
  its config and where it came from) and `params/` (orbax, the parameters and BatchNorm statistics as a
  pure dict, which survives renames of Python classes);
* a **training run** (written by `tiodepth_jax.train`): its workdir, its checkpoint directory or one step
  directory of it. The model is rebuilt from the resolved config stored with the checkpoints and only
  its parameters and BatchNorm statistics are read (the optimiser states stay on disk).

    loaded = load("runs/demo", which="best")        # or a model directory; which = latest | best | <step>
    loaded.model, loaded.kind, loaded.dtype, loaded.train_size, loaded.image_size, loaded.source
    save_model(path, model, source={...})

`load` builds the model in the compute dtype it was trained at (`dtype=` overrides) and reports the
training crop and the size its training images were resized to (the default input size of predict and
evaluate). A
model directory exported from a run (`tiodepth_jax.export_model`) records the run's compute dtype and image
size in its `source` ("dtype", "image_size"), so that it loads as the run does. Problems with the path are
`UserError`s.
"""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path

import jax
import jax.numpy as jnp
import orbax.checkpoint as ocp
from flax import nnx

from tiodepth_jax.config import TrainConfig, load_config
from tiodepth_jax.errors import InputError, InputExistsError, InputNotFoundError
from tiodepth_jax.models.depth_anything_v2 import DepthAnythingV2, DepthAnythingV2Config
from tiodepth_jax.models.dinov2 import Remat
from tiodepth_jax.models.tiodepth import TiODepth, TiODepthConfig
from tiodepth_jax.models.vgg import VGG19Config, VGG19Features

FORMAT = "tiodepth_jax.model/v1"
SAVED = nnx.Any(nnx.Param, nnx.BatchStat)  # parameters and BatchNorm running statistics
MODEL_KINDS = {
    "depth_anything_v2": (DepthAnythingV2, DepthAnythingV2Config),
    "tiodepth": (TiODepth, TiODepthConfig),
    "vgg19_features": (VGG19Features, VGG19Config),
}
RUN_ITEMS = ("state", "meta")  # the items of a training checkpoint (train/checkpointing.py writes them)
BEST_KEY = "val_score"         # the metric a training checkpoint is ranked by; lower is better


@dataclasses.dataclass(frozen=True)
class Loaded:
    """A model and what is known about it."""

    model: nnx.Module
    kind: str                                  # a key of MODEL_KINDS
    dtype: str                                 # compute dtype the model was built with
    train_size: tuple[int, int] | None         # TiO-Depth's training crop (model.image_size)
    source: dict                               # {'checkpoint', 'kind': 'model' | 'training', 'step'}
    image_size: tuple[int, int] | None = None  # TiO-Depth: the size a run's training images were resized to
                                               # (data.image_size, before the crop), as recorded by an export


def model_kind(model: nnx.Module) -> str:
    for kind, (cls, _) in MODEL_KINDS.items():
        if isinstance(model, cls):
            return kind
    raise TypeError(f"no checkpoint kind is registered for {type(model).__name__}")


def save_model(path: str | os.PathLike, model: nnx.Module, *, source: dict | None = None) -> Path:
    """Write `model`'s parameters and config to the directory `path` (which must not exist yet)."""
    path = Path(path).absolute()
    if path.exists():
        raise InputExistsError(f"refusing to overwrite existing checkpoint directory {path}")
    params = nnx.to_pure_dict(nnx.state(model, SAVED))
    with ocp.StandardCheckpointer() as ckptr:  # close() waits for the write and releases orbax's worker threads
        ckptr.save(path / "params", params)
    meta = {"format": FORMAT, "kind": model_kind(model), "config": model.cfg.to_dict(), "source": source or {}}
    (path / "model.json").write_text(json.dumps(meta, indent=1))
    return path


def read_model_meta(path: str | os.PathLike) -> dict:
    path = Path(path)
    meta_file = path / "model.json"
    if not path.is_dir():
        raise InputNotFoundError(f"checkpoint directory {path} does not exist")
    if not meta_file.is_file() or not (path / "params").is_dir():
        raise InputError(f"{path} is not a tiodepth_jax model checkpoint (needs model.json and params/)")
    try:
        meta = json.loads(meta_file.read_text())
    except json.JSONDecodeError as e:
        raise InputError(f"{meta_file} is not valid JSON: {e}") from e
    if meta.get("format") != FORMAT:
        raise InputError(f"{meta_file} has format {meta.get('format')!r}, expected {FORMAT!r}")
    if meta.get("kind") not in MODEL_KINDS or not isinstance(meta.get("config"), dict):
        raise InputError(f"{meta_file} names model kind {meta.get('kind')!r} with config "
                         f"{type(meta.get('config')).__name__}; known kinds: {', '.join(MODEL_KINDS)}")
    return meta


def _check_kind(path, found: str, kind: str | None) -> None:
    if kind is not None and found != kind:
        raise InputError(f"{path} holds a {found!r} model, not a {kind!r} model")


def _mismatch(stored: dict, target: dict) -> str | None:
    """What differs between the parameters a checkpoint holds (orbax's metadata tree) and those `target` (a pure
    dict of abstract arrays) asks for: names missing on either side, then shapes; None if they agree."""
    def flat(tree):
        leaves = jax.tree_util.tree_flatten_with_path(tree)[0]
        return {jax.tree_util.keystr(keys, simple=True, separator="."): leaf for keys, leaf in leaves}

    def some(names):
        names = sorted(names)
        return ", ".join(names[:3]) + (f" and {len(names) - 3} more" if len(names) > 3 else "")

    stored, target = flat(stored), flat(target)
    if missing := target.keys() - stored.keys():
        return f"missing {some(missing)}"
    if extra := stored.keys() - target.keys():
        return f"not in this model: {some(extra)}"
    shapes = [f"{k} {tuple(stored[k].shape)} (expected {tuple(target[k].shape)})"
              for k in target if tuple(stored[k].shape) != tuple(target[k].shape)]
    return f"stored shapes differ: {some(shapes)}" if shapes else None


def load_model(path: str | os.PathLike, *, kind: str | None = None, dtype=jnp.float32,
               remat: Remat = False) -> nnx.Module:
    """Rebuild the model of the model directory `path`. `kind`, when given, is checked against it."""
    meta = read_model_meta(path)
    _check_kind(path, meta["kind"], kind)
    cls, cfg_cls = MODEL_KINDS[meta["kind"]]
    try:
        cfg = cfg_cls.from_dict(meta["config"])
    except ValueError as e:
        raise InputError(f"{path}/model.json: {e}") from None
    abstract = nnx.eval_shape(lambda: cls(cfg, dtype=dtype, remat=remat, rngs=nnx.Rngs(0)))
    graphdef, abs_params, rest = nnx.split(abstract, SAVED, ...)
    params_dir = Path(path).absolute() / "params"
    target = nnx.to_pure_dict(abs_params)
    with ocp.StandardCheckpointer() as ckptr:
        try:
            # Compare with the stored shapes before reading: a restore that fails on one array closes orbax's
            # event loop with the reads of the others in flight, and each surfaces later, from the garbage
            # collector, as an "Exception ignored in _read_array_index_and_device_put" with a whole TensorStore spec.
            stored = ckptr.metadata(params_dir).item_metadata  # None when unreadable (then restore says why)
            mismatch = stored is not None and _mismatch(stored.tree, target)
            restored = None if mismatch else ckptr.restore(params_dir, target)
        except Exception as e:  # orbax raises many types for missing/truncated files
            raise InputError(f"could not read the parameters in {params_dir} (missing or truncated files): {e}") from e
    if mismatch:
        raise InputError(f"the parameters in {params_dir} were not written for this {meta['kind']} config: {mismatch}")
    nnx.replace_by_pure_dict(abs_params, restored)
    return nnx.merge(graphdef, abs_params, rest)


# ---------------------------------------------------------------------------------------------------------
# Training runs


def parse_which(text: str):
    """A `--which` argument: 'latest', 'best' or a step number (argparse `type=`)."""
    if text in ("latest", "best"):
        return text
    if not text.isdigit():
        raise ValueError(f"expected latest, best or a step number, got {text!r}")
    return int(text)


def best_score(metrics) -> float:
    """A checkpoint's ranking score (lower is better); +inf for one saved without a validation score."""
    return (metrics or {}).get(BEST_KEY, float("inf"))


def run_manager(directory: Path) -> ocp.CheckpointManager:
    """A read-only manager of a run's checkpoint directory (nothing is created or cleaned up, so a running
    training is not disturbed), ranking by `best_score`."""
    options = ocp.CheckpointManagerOptions(create=False, best_fn=best_score, best_mode="min")
    return ocp.CheckpointManager(directory.absolute(), item_names=RUN_ITEMS, options=options)


def run_directory(path: Path) -> tuple[Path, int | None]:
    """(checkpoint directory, step or None) of a run's workdir, its checkpoint directory or a step directory."""
    if (path / "config.yaml").is_file() and not (path / "checkpoints").is_dir():
        return Path(load_config(path / "config.yaml").checkpoint_dir), None
    if (path / "checkpoints").is_dir():
        return path / "checkpoints", None
    if path.name.isdigit() and (path / "state").is_dir():
        return path.parent, int(path.name)
    return path, None


def _run_step(manager: ocp.CheckpointManager, directory: Path, which) -> int:
    steps = manager.all_steps()
    if not steps:
        raise InputNotFoundError(f"{directory} is neither a tiodepth_jax model directory (model.json and params/) "
                                 "nor a training run with checkpoints")
    if which == "latest":
        return manager.latest_step()
    if which == "best":
        step = manager.best_step()
        if step is None or BEST_KEY not in (manager.metrics(step) or {}):
            raise InputError(f"no checkpoint in {directory} carries a validation score (checkpoint.keep_best and "
                             "validation were off); use the newest one")
        return step
    if which not in steps:
        raise InputNotFoundError(f"{directory} has no checkpoint of step {which}; steps: {sorted(steps)}")
    return which


def load_run(path: str | os.PathLike, *, which="latest", dtype=None) -> Loaded:
    """The TiO-Depth model of a training run's checkpoint `which` ('latest', 'best' or a step), on the first
    device, in the run's compute dtype unless `dtype` is given."""
    directory, step = run_directory(Path(path))
    manager = run_manager(directory)
    try:
        step = _run_step(manager, directory, which if step is None else step)
        stored = manager.metadata().custom_metadata.get("config")
        if not stored:
            raise InputError(f"the training checkpoints in {directory} carry no config")
        cfg = TrainConfig.from_dict(stored, source=f"{directory} (stored config)")
        dtype = jnp.dtype(cfg.dtype if dtype is None else dtype)
        abstract = nnx.eval_shape(lambda: TiODepth(cfg.model, dtype=dtype, rngs=nnx.Rngs(0)))
        graphdef, params, stats = nnx.split(abstract, nnx.Param, nnx.BatchStat)
        target = {"params": params, "batch_stats": stats}
        device = jax.sharding.SingleDeviceSharding(jax.devices()[0])
        restore_args = ocp.checkpoint_utils.construct_restore_args(target, jax.tree.map(lambda _: device, target))
        restored = manager.restore(step, args=ocp.args.Composite(
            state=ocp.args.PyTreeRestore(target, restore_args=restore_args, partial_restore=True)))
    finally:
        manager.close()
    model = nnx.merge(graphdef, restored.state["params"], restored.state["batch_stats"])
    return Loaded(model, "tiodepth", dtype.name, tuple(cfg.model.image_size),
                  {"checkpoint": str(directory), "kind": "training", "step": step}, tuple(cfg.data.image_size))


def load(path: str | os.PathLike, *, kind: str | None = None, which="latest", dtype=None) -> Loaded:
    """The model at `path`: a model directory or a training run (see the module docstring). `kind`, when
    given, is checked; `which` selects a run's checkpoint; `dtype` defaults to the one trained with."""
    path = Path(path)
    if not path.exists():
        raise InputNotFoundError(f"checkpoint {path} does not exist")
    if (path / "model.json").is_file():
        recorded = read_model_meta(path).get("source", {})
        dtype = jnp.dtype(recorded.get("dtype", jnp.float32) if dtype is None else dtype)
        model = load_model(path, kind=kind, dtype=dtype)
        train_size = tuple(model.cfg.image_size) if isinstance(model, TiODepth) else None
        image_size = tuple(recorded["image_size"]) if "image_size" in recorded else None
        return Loaded(model, model_kind(model), dtype.name, train_size,
                      {"checkpoint": str(path), "kind": "model"}, image_size)
    loaded = load_run(path, which=which, dtype=dtype)
    _check_kind(path, loaded.kind, kind)
    return loaded
