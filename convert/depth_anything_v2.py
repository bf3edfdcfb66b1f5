"""Convert a PyTorch Depth-Anything-V2 checkpoint into a tiodepth_jax model checkpoint.

    python -m convert.depth_anything_v2 --checkpoint depth_anything_v2_vitl.pth --out checkpoints/dav2_vitl
    python -m convert.depth_anything_v2 --checkpoint small.safetensors --out ck --variant vitg --depth 4 --taps 0 1 2 3

The variant (vits/vitb/vitl/vitg) is read off the tensor shapes: the embedding width picks the
preset, the number of `pretrained.blocks.<i>` sets the depth. A trunk with fewer blocks than its
preset needs `--taps`. The conversion is strict: any missing or unexpected tensor is an error that
names it, unless `--allow-missing` is given (then missing parameters keep a random initialisation
and the report lists them). Library use: `convert_state_dict({name: array}) -> (model, report)`.
"""

from __future__ import annotations

import argparse
import re
import sys

import numpy as np
from flax import nnx

from convert.common import (ConversionError, conv_transpose_kernel, convert_tensors, generic_leaf,
                            run_conversion)
from tiodepth_jax.models.depth_anything_v2 import VARIANTS, DepthAnythingV2, DepthAnythingV2Config

WIDTH_TO_VARIANT = {384: "vits", 768: "vitb", 1024: "vitl", 1536: "vitg"}
IGNORED = {"pretrained.mask_token": "DINOv2 mask token, used only for masked pre-training"}
_BLOCK = re.compile(r"^pretrained\.blocks\.(\d+)\.(.+)$")
_CONV_TRANSPOSE = re.compile(r"^depth_head\.resize_layers\.[01]\.weight$")


def infer_config(sd: dict[str, np.ndarray], *, variant: str | None = None, depth: int | None = None,
                 taps: tuple[int, ...] | None = None, prefix: str = "") -> DepthAnythingV2Config:
    """The model config a state dict was saved from; `variant`/`depth`/`taps` are checked against it."""
    cls_key = prefix + "pretrained.cls_token"
    if cls_key not in sd:
        raise ConversionError(f"not a Depth-Anything-V2 checkpoint: no {cls_key!r} among {len(sd)} tensors "
                              f"(first keys: {sorted(sd)[:5]})")
    width = int(sd[cls_key].shape[-1])
    found = WIDTH_TO_VARIANT.get(width)
    if found is None:
        raise ConversionError(f"embedding width {width} matches no Depth-Anything-V2 variant "
                              f"({', '.join(f'{v}={w}' for w, v in WIDTH_TO_VARIANT.items())})")
    if variant is not None and variant != found:
        raise ConversionError(f"the checkpoint is a {found} model (embedding width {width}), not {variant}")
    blocks = {int(m.group(1)) for k in sd if (m := _BLOCK.match(k[len(prefix):]))}
    n_blocks = max(blocks) + 1 if blocks else 0
    if depth is not None and depth != n_blocks:
        raise ConversionError(f"--depth {depth} given but the checkpoint has {n_blocks} blocks")
    preset = DepthAnythingV2Config.preset(found)
    if n_blocks != preset.dinov2.depth and taps is None:
        raise ConversionError(f"the checkpoint has {n_blocks} blocks, the {found} preset {preset.dinov2.depth}: "
                              "pass the tapped blocks (--taps) for a reduced-depth trunk")
    try:
        cfg = DepthAnythingV2Config.preset(found, depth=n_blocks, taps=taps)
    except ValueError as e:  # taps beyond the checkpoint's blocks
        raise ConversionError(f"the checkpoint's {n_blocks}-block {found} trunk: {e}") from None
    for k, oc in enumerate(cfg.dpt.out_channels):
        key = f"{prefix}depth_head.projects.{k}.weight"
        if key in sd and sd[key].shape[0] != oc:
            raise ConversionError(f"{key} has {sd[key].shape[0]} output channels; {found} expects {oc}")
    return cfg


def map_key(key: str, value: np.ndarray):
    """PyTorch key -> (NNX path, array, block index or None)."""
    m = _BLOCK.match(key)
    block, rest = (int(m.group(1)), "pretrained.blocks." + m.group(2)) if m else (None, key)
    parts = tuple(int(p) if p.isdigit() else p for p in rest.split("."))
    module_path, leaf = parts[:-1], parts[-1]
    if _CONV_TRANSPOSE.match(key):
        return module_path + ("kernel",), conv_transpose_kernel(value), block
    if module_path == ("pretrained",):  # cls_token, pos_embed
        return parts, value, block
    name, arr = generic_leaf(module_path, leaf, value)
    return module_path + (name,), arr, block


def torch_key(path: tuple, block: int | None) -> str:
    """The PyTorch name of a model variable (the inverse of `map_key`), for reports."""
    names = [str(p) for p in path]
    if names[-1] in ("kernel", "scale"):
        names[-1] = "weight"
    if block is not None:
        names.insert(names.index("blocks") + 1, str(block))
    return ".".join(names)


def convert_state_dict(sd: dict[str, np.ndarray], cfg: DepthAnythingV2Config | None = None, *,
                       allow_missing: bool = False, **infer_kwargs):
    """{PyTorch name: array} -> (DepthAnythingV2 with those weights, ConversionReport).

    `infer_kwargs` (variant, depth, taps) go to `infer_config` when no `cfg` is given.
    """
    cfg = cfg or infer_config(sd, **infer_kwargs)
    return convert_tensors(lambda: DepthAnythingV2(cfg, rngs=nnx.Rngs(0)), sd, map_key, ignored=IGNORED,
                           allow_missing=allow_missing, what="Depth-Anything-V2 conversion", source_name=torch_key)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m convert.depth_anything_v2", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--checkpoint", required=True, help="PyTorch .pth/.pt or .safetensors file")
    ap.add_argument("--out", required=True, help="output checkpoint directory (must not exist)")
    ap.add_argument("--variant", choices=VARIANTS, help="check the detected variant against this one")
    ap.add_argument("--depth", type=int, help="check the number of DINOv2 blocks")
    ap.add_argument("--taps", type=int, nargs=4, help="tapped blocks, needed for reduced-depth trunks")
    ap.add_argument("--allow-missing", action="store_true",
                    help="convert even if tensors are missing or unexpected (they are listed)")
    args = ap.parse_args(argv)
    taps = tuple(args.taps) if args.taps else None
    return run_conversion(
        args.checkpoint, args.out, converter=__name__,
        convert=lambda sd: convert_state_dict(sd, variant=args.variant, depth=args.depth, taps=taps,
                                              allow_missing=args.allow_missing),
        describe=lambda m: f"{m.cfg.variant} model ({m.cfg.dinov2.depth} blocks, taps {list(m.cfg.taps)})")


if __name__ == "__main__":
    sys.exit(main())
