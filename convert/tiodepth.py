"""Convert a trained PyTorch TiO-Depth checkpoint (the DINOv2 + DPT fork) into a tiodepth_jax checkpoint.

    python -m convert.tiodepth --checkpoint last_model50.pth --out checkpoints/tio_vitb
    python -m convert.tiodepth --checkpoint model.pth --out ck --image-size 252 840 --variant vitb

The checkpoint's `model_params` (spec §12.8) hold `0.*` (the encoder: `0.pretrained.*` DINOv2 and
`0.depth_head.*` DPT) and `1._convs.<idx>.*` (the decoder, `idx` in construction order, spec §3.3).
The encoder variant is read off the tensor shapes. Settings a checkpoint does not store (training
crop size, disparity range, d2d, normalisation) are options with the fork's defaults. The DPT fusion
and output layers, which the fork computes and discards, are reported as ignored. The conversion is
strict, as for Depth-Anything-V2: missing and unexpected tensors are named (`--allow-missing` to go
on), mis-shaped tensors are always errors.
"""

from __future__ import annotations

import argparse
import re
import sys

import numpy as np
from flax import nnx

from convert import depth_anything_v2 as dav2
from convert.common import ConversionError, convert_tensors, generic_leaf, run_conversion
from tiodepth_jax.models.decoder import DPDecoder
from tiodepth_jax.models.depth_anything_v2 import VARIANTS
from tiodepth_jax.models.encoder import NORMALISATIONS, TiOEncoder
from tiodepth_jax.models.tiodepth import TiODepth, TiODepthConfig

_CONVS = re.compile(r"^1\._convs\.(\d+)\.(.+)$")
_UNUSED_HEAD = re.compile(r"^0\.depth_head\.scratch\.(refinenet\d|output_conv\d)\.")

# Per decoder module type: PyTorch sub-key (after `<idx>.`) -> NNX sub-path.
_CONV_BLOCK = {"conv.conv.weight": ("conv", "conv", "weight"), "conv.conv.bias": ("conv", "conv", "bias")}
_CONV3x3 = {"conv.weight": ("conv", "weight"), "conv.bias": ("conv", "bias")}
_OFFSET = {"0.weight": ("reduce", "weight"), "1.weight": ("bn", "scale"), "1.bias": ("bn", "bias"),
           "1.running_mean": ("bn", "mean"), "1.running_var": ("bn", "var"),
           "1.num_batches_tracked": ("bn", "num_batches_tracked"), "3.conv.weight": ("offset", "conv", "weight")}
_MFM = {"q_conv.0.weight": ("q_conv", "weight"), "q_conv.0.bias": ("q_conv", "bias"),
        "k_conv.0.weight": ("k_conv", "weight"), "k_conv.0.bias": ("k_conv", "bias"),
        "redu.0.conv.weight": ("redu_conv", "conv", "weight"), "redu.0.conv.bias": ("redu_conv", "conv", "bias"),
        "redu.1.fc.0.weight": ("se", "fc1", "weight"), "redu.1.fc.2.weight": ("se", "fc2", "weight")}


def module_table(name: str) -> dict:
    """The sub-key table of decoder module `name` (see `DPDecoder` for the names)."""
    if name.startswith("dec") or (name.startswith("sdfa") and name.endswith("_0")):
        return _CONV_BLOCK
    if name.startswith("mfm"):
        return _MFM
    if name in ("out", "midout_out"):
        return _CONV3x3
    return _OFFSET  # sdfa{i}_1, sdfa{i}_2, midout{i}


def ignored_keys(sd: dict) -> dict[str, str]:
    ignored = {k: "DPT fusion/output layer: the fork computes and discards it (spec §4.3)"
               for k in sd if _UNUSED_HEAD.match(k)}
    ignored.update({k: why for k, why in
                    (("0." + k, why) for k, why in dav2.IGNORED.items()) if k in sd})
    return ignored


def check_is_tiodepth(sd: dict) -> None:
    """Raises ConversionError saying what `sd` is when it is not a TiO-Depth checkpoint of the DINOv2 fork
    (no `0.pretrained.cls_token`): a Depth-Anything-V2 checkpoint (and its variant), or something else."""
    if "0.pretrained.cls_token" in sd:
        return
    if "pretrained.cls_token" in sd:
        variant = dav2.WIDTH_TO_VARIANT.get(int(sd["pretrained.cls_token"].shape[-1]), "of an unknown variant")
        raise ConversionError(f"this is a Depth-Anything-V2 checkpoint ({variant}), not a TiO-Depth one: convert "
                              "it with python -m convert.depth_anything_v2, and pass the result as init_from to "
                              "train TiO-Depth from it")
    raise ConversionError(f"not a TiO-Depth checkpoint of the DINOv2 fork: no '0.pretrained.cls_token' among "
                          f"{len(sd)} tensors (first keys: {sorted(sd)[:5]})")


def infer_config(sd: dict, *, variant: str | None = None, **settings) -> TiODepthConfig:
    """The TiO-Depth config of a checkpoint: encoder variant and depth from the shapes, the rest given."""
    check_is_tiodepth(sd)
    blocks = {int(m.group(1)) for k in sd if (m := re.match(r"^0\.pretrained\.blocks\.(\d+)\.", k))}
    enc = dav2.infer_config(sd, variant=variant, prefix="0.", taps=settings.pop("encoder_taps", None))
    depth = max(blocks) + 1 if blocks else None
    return TiODepthConfig(variant=enc.variant, encoder_depth=depth if depth != enc.dinov2.depth else None,
                          encoder_taps=enc.taps, **settings)


def make_map_key(cfg: TiODepthConfig):
    names = DPDecoder.torch_index_names(cfg.decoder_config((0,) * 4))

    def map_key(key: str, value: np.ndarray):
        if key.startswith("0."):
            path, arr, block = dav2.map_key(key[2:], value)
            return ("encoder",) + path, arr, block
        m = _CONVS.match(key)
        if not m or int(m.group(1)) >= len(names):
            raise ConversionError(key)
        name = names[int(m.group(1))]
        sub = module_table(name).get(m.group(2))
        if sub is None:
            raise ConversionError(key)
        if sub[-1] == "weight":
            leaf, arr = generic_leaf(sub[:-1], "weight", value)
        else:
            leaf, arr = sub[-1], value.astype(np.int32) if sub[-1] == "num_batches_tracked" else value
        return ("decoder", name) + sub[:-1] + (leaf,), arr, None

    return map_key


def make_torch_key(cfg: TiODepthConfig):
    """The PyTorch name of a TiO-Depth variable, for reports."""
    index = {n: i for i, n in enumerate(DPDecoder.torch_index_names(cfg.decoder_config((0,) * 4)))}

    def torch_key(path: tuple, block: int | None) -> str:
        if path[0] == "encoder":
            return "0." + dav2.torch_key(path[1:], block)
        name, rest = path[1], tuple(path[2:])
        for sub, ours in module_table(name).items():
            if ours[:-1] == rest[:-1] and (ours[-1] == rest[-1] or (ours[-1] == "weight" and rest[-1] == "kernel")):
                return f"1._convs.{index[name]}.{sub}"
        return ".".join(map(str, path))

    return torch_key


def convert_state_dict(sd: dict[str, np.ndarray], cfg: TiODepthConfig | None = None, *,
                       allow_missing: bool = False, **settings):
    """{PyTorch name: array} (`model_params`) -> (TiODepth with those weights, ConversionReport)."""
    cfg = cfg or infer_config(sd, **settings)
    return convert_tensors(lambda: TiODepth(cfg, rngs=nnx.Rngs(0)), sd, make_map_key(cfg), ignored=ignored_keys(sd),
                           allow_missing=allow_missing, what="TiO-Depth conversion", source_name=make_torch_key(cfg))


def encoder_from_depth_anything_v2(sd: dict[str, np.ndarray], cfg: TiODepthConfig, *, allow_missing: bool = False):
    """A TiO-Depth encoder initialised from a Depth-Anything-V2 state dict (`pretrained.*`, `depth_head.*`).

    The checkpoint's variant must be the config's; its DPT fusion and output layers are ignored.
    Returns (TiOEncoder, ConversionReport); put it into a model with `nnx.update(model.encoder, nnx.state(enc))`.
    """
    found = dav2.infer_config(sd, taps=cfg.encoder_config().taps)
    want = cfg.encoder_config()
    if (found.variant, found.dinov2.depth) != (want.variant, want.dinov2.depth):
        raise ConversionError(f"the checkpoint is a {found.variant} model with {found.dinov2.depth} blocks; "
                              f"the config needs {want.variant} with {want.dinov2.depth}")
    ignored = {k[2:]: why for k, why in ignored_keys({"0." + k: v for k, v in sd.items()}).items()}
    return convert_tensors(lambda: TiOEncoder(want, normalisation=cfg.normalisation, rngs=nnx.Rngs(0)), sd,
                           dav2.map_key, ignored=ignored, allow_missing=allow_missing,
                           what="Depth-Anything-V2 -> TiO-Depth encoder", source_name=dav2.torch_key)


def main(argv=None) -> int:
    defaults = TiODepthConfig()
    ap = argparse.ArgumentParser(prog="python -m convert.tiodepth", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--checkpoint", required=True, help="PyTorch .pth (with model_params) or .safetensors file")
    ap.add_argument("--out", required=True, help="output checkpoint directory (must not exist)")
    ap.add_argument("--variant", choices=VARIANTS, help="check the detected encoder variant against this one")
    ap.add_argument("--taps", type=int, nargs=4, help="tapped DINOv2 blocks, needed for reduced-depth trunks")
    ap.add_argument("--image-size", type=int, nargs=2, default=defaults.image_size, metavar=("H", "W"),
                    help="training crop the model was trained at (default %(default)s)")
    ap.add_argument("--min-disp", type=float, default=defaults.min_disp)
    ap.add_argument("--max-disp", type=float, default=defaults.max_disp)
    ap.add_argument("--d2d", type=float, default=defaults.d2d)
    ap.add_argument("--normalisation", choices=tuple(NORMALISATIONS), default=defaults.normalisation)
    ap.add_argument("--allow-missing", action="store_true",
                    help="convert even if tensors are missing or unexpected (they are listed)")
    args = ap.parse_args(argv)
    taps = tuple(args.taps) if args.taps else None
    return run_conversion(
        args.checkpoint, args.out, converter=__name__,
        convert=lambda sd: convert_state_dict(
            sd, variant=args.variant, encoder_taps=taps, image_size=tuple(args.image_size),
            min_disp=args.min_disp, max_disp=args.max_disp, d2d=args.d2d, normalisation=args.normalisation,
            allow_missing=args.allow_missing),
        describe=lambda m: f"TiO-Depth ({m.cfg.variant} encoder)")


if __name__ == "__main__":
    sys.exit(main())
