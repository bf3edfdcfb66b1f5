"""Model checkpoints: a directory with `model.json` (what to build) and `params/` (orbax, pure dict of the
parameters and BatchNorm statistics).

    save_model(path, model, source={...})   # any model registered in MODEL_KINDS
    model = load_model(path, dtype=jnp.bfloat16)

Parameters are stored as an orbax `StandardCheckpointer` pytree of the NNX parameter state as a pure
dict, which survives renames of Python classes; the JSON names the model kind and its config.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import jax.numpy as jnp
import orbax.checkpoint as ocp
from flax import nnx

from tiodepth_jax.models.depth_anything_v2 import DepthAnythingV2, DepthAnythingV2Config
from tiodepth_jax.models.tiodepth import TiODepth, TiODepthConfig
from tiodepth_jax.models.vgg import VGG19Config, VGG19Features

FORMAT = "tiodepth_jax.model/v1"
SAVED = nnx.Any(nnx.Param, nnx.BatchStat)  # parameters and BatchNorm running statistics
MODEL_KINDS = {
    "depth_anything_v2": (DepthAnythingV2, DepthAnythingV2Config),
    "tiodepth": (TiODepth, TiODepthConfig),
    "vgg19_features": (VGG19Features, VGG19Config),
}


def model_kind(model: nnx.Module) -> str:
    for kind, (cls, _) in MODEL_KINDS.items():
        if isinstance(model, cls):
            return kind
    raise TypeError(f"no checkpoint kind is registered for {type(model).__name__}")


def save_model(path: str | os.PathLike, model: nnx.Module, *, source: dict | None = None) -> Path:
    """Write `model`'s parameters and config to the directory `path` (which must not exist yet)."""
    path = Path(path).absolute()
    if path.exists():
        raise FileExistsError(f"refusing to overwrite existing checkpoint directory {path}")
    params = nnx.to_pure_dict(nnx.state(model, SAVED))
    ckptr = ocp.StandardCheckpointer()
    ckptr.save(path / "params", params)
    ckptr.wait_until_finished()
    meta = {"format": FORMAT, "kind": model_kind(model), "config": model.cfg.to_dict(), "source": source or {}}
    (path / "model.json").write_text(json.dumps(meta, indent=1))
    return path


def read_model_meta(path: str | os.PathLike) -> dict:
    path = Path(path)
    meta_file = path / "model.json"
    if not path.is_dir():
        raise FileNotFoundError(f"checkpoint directory {path} does not exist")
    if not meta_file.is_file() or not (path / "params").is_dir():
        raise ValueError(f"{path} is not a tiodepth_jax model checkpoint (needs model.json and params/)")
    try:
        meta = json.loads(meta_file.read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"{meta_file} is not valid JSON: {e}") from e
    if meta.get("format") != FORMAT:
        raise ValueError(f"{meta_file} has format {meta.get('format')!r}, expected {FORMAT!r}")
    return meta


def load_model(path: str | os.PathLike, *, kind: str | None = None, dtype=jnp.float32,
               remat: bool = False) -> nnx.Module:
    """Rebuild the model saved at `path`. `kind`, when given, is checked against the checkpoint."""
    meta = read_model_meta(path)
    if kind is not None and meta["kind"] != kind:
        raise ValueError(f"{path} holds a {meta['kind']!r} model, not a {kind!r} model")
    if meta.get("kind") not in MODEL_KINDS or not isinstance(meta.get("config"), dict):
        raise ValueError(f"{path}/model.json names model kind {meta.get('kind')!r} with config "
                         f"{type(meta.get('config')).__name__}; known kinds: {', '.join(MODEL_KINDS)}")
    cls, cfg_cls = MODEL_KINDS[meta["kind"]]
    cfg = cfg_cls.from_dict(meta["config"])
    abstract = nnx.eval_shape(lambda: cls(cfg, dtype=dtype, remat=remat, rngs=nnx.Rngs(0)))
    graphdef, abs_params, rest = nnx.split(abstract, SAVED, ...)
    target = nnx.to_pure_dict(abs_params)
    params_dir = Path(path).absolute() / "params"
    try:
        restored = ocp.StandardCheckpointer().restore(params_dir, target)
    except Exception as e:  # orbax raises many types for missing/truncated/mismatched files
        raise ValueError(f"could not read the parameters in {params_dir} "
                         f"(truncated, or not written for this {meta['kind']} config): {e}") from e
    nnx.replace_by_pure_dict(abs_params, restored)
    return nnx.merge(graphdef, abs_params, rest)
