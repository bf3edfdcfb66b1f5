"""Convert torchvision VGG19 weights into the perceptual-feature network of the TiO-Depth loss.

    python -m convert.vgg19 --checkpoint vgg19-dcbb9e9d.pth --out checkpoints/vgg19_features

Accepts the `features.<n>.weight|bias` tensors of `torchvision.models.vgg19` (n = 0, 2, 5, 7, 10, 12,
14, 16; see `tiodepth_jax.models.vgg.LAYERS`), alone or within the full torchvision state dict: the
`classifier.*` tensors and the layers past `features[0:19]` are reported as ignored. The conversion is
strict: any missing or unexpected tensor is an error that names it, unless `--allow-missing` is given
(then missing parameters keep a random initialisation and the report lists them). A tensor of the
wrong shape is always an error. Library use: `convert_vgg19_features({name: array}) -> (model, report)`.
"""

from __future__ import annotations

import argparse
import re
import sys

import numpy as np
from flax import nnx

from convert.common import ConversionError, conv_kernel, convert_tensors, path_str, run_conversion
from tiodepth_jax.models.vgg import LAYERS, SLICE_END, VGG19Config, VGG19Features

_FEATURE = re.compile(r"^features\.(\d+)\.(weight|bias)$")
# torchvision vgg19: conv layers of features[19:] (conv3_4's pool is index 18) and the classifier.
_VGG19_LATER_CONVS = (19, 21, 23, 25, 28, 30, 32, 34)


def map_key(key: str, value: np.ndarray, cfg: VGG19Config):
    """torchvision key -> ('param', NNX path, array) | ('ignored', reason) | ('unexpected', None)."""
    if key.startswith("classifier."):
        return "ignored", "VGG19 classifier head, not part of the feature slices"
    m = _FEATURE.match(key)
    if not m:
        return "unexpected", None
    idx, leaf = int(m.group(1)), m.group(2)
    names = {tv: name for name, tv, *_ in cfg.layers}
    if idx in names:
        if leaf == "weight":  # a non-4-D weight is left as is and fails the shape check by name
            return "param", (names[idx], "kernel"), conv_kernel(value) if value.ndim == 4 else value
        return "param", (names[idx], "bias"), value
    end = SLICE_END[cfg.n_slices - 1]
    if idx >= end and (idx in _VGG19_LATER_CONVS or any(i == idx for _, i, *_ in LAYERS)):
        return "ignored", f"VGG19 layer past features[0:{end}], unused by the {cfg.n_slices} feature slices"
    return "unexpected", None


def convert_vgg19_features(sd: dict[str, np.ndarray], cfg: VGG19Config | None = None, *,
                           allow_missing: bool = False):
    """{torchvision name: array} -> (VGG19Features with those weights, ConversionReport)."""
    cfg = cfg or VGG19Config()
    ignored = {}
    for key, value in sd.items():
        kind, *info = map_key(key, np.asarray(value), cfg)
        if kind == "ignored":
            ignored[key] = info[0]

    def param_key(key: str, value: np.ndarray):
        kind, *info = map_key(key, value, cfg)
        if kind != "param":
            raise ConversionError(key)
        path, arr = info
        return path, arr, None

    torch_name = {(name, "kernel"): f"features.{tv}.weight" for name, tv, *_ in cfg.layers}
    torch_name.update({(name, "bias"): f"features.{tv}.bias" for name, tv, *_ in cfg.layers})
    return convert_tensors(lambda: VGG19Features(cfg, rngs=nnx.Rngs(0)), sd, param_key, ignored=ignored,
                           allow_missing=allow_missing, what="VGG19 features conversion",
                           source_name=lambda path, _: f"{torch_name[path]} ({path_str(path)})")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m convert.vgg19", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--checkpoint", required=True, help="torchvision vgg19 .pth (or .safetensors) file")
    ap.add_argument("--out", required=True, help="output checkpoint directory (must not exist)")
    ap.add_argument("--allow-missing", action="store_true",
                    help="convert even if tensors are missing or unexpected (they are listed)")
    args = ap.parse_args(argv)
    return run_conversion(args.checkpoint, args.out, converter=__name__,
                          convert=lambda sd: convert_vgg19_features(sd, allow_missing=args.allow_missing),
                          describe=lambda m: f"VGG19 features ({m.cfg.n_slices} slices)")


if __name__ == "__main__":
    sys.exit(main())
