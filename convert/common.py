"""Reading PyTorch state dicts and turning their tensors into NNX parameter trees.

The layout rules live here (OIHW -> HWIO convolutions, (out, in) -> (in, out) linears, PyTorch's
(in, out, kh, kw) ConvTranspose -> (kh, kw, in, out), LayerNorm weight -> scale); each converter
only names its keys. Every converter reports missing, unexpected, ignored and mis-shaped tensors by
name and refuses to write a partial model unless asked to.
"""

from __future__ import annotations

import dataclasses
import zipfile
from pathlib import Path

import jax.numpy as jnp
import numpy as np
from flax import nnx

from tiodepth_jax.checkpoint import save_model
from tiodepth_jax.errors import InputError, InputNotFoundError, run_command

WRAPPER_KEYS = ("model", "state_dict", "model_params", "module")


class ConversionError(InputError):
    """A checkpoint that cannot be converted as asked; the message names the offending tensors."""


def read_state_dict(path: str | Path) -> dict[str, np.ndarray]:
    """{name: float array} from a `.pth`/`.pt`/`.ckpt` (torch) or `.safetensors` file.

    Accepts checkpoints wrapped as {'model': ...}, {'state_dict': ...} or {'model_params': ...}, and
    strips a DistributedDataParallel 'module.' prefix.
    """
    path = Path(path)
    if not path.is_file():
        raise InputNotFoundError(f"checkpoint file {path} does not exist")
    if path.suffix == ".safetensors":
        from safetensors.numpy import load_file
        try:
            sd = load_file(str(path))
        except Exception as e:
            raise ConversionError(f"could not read {path} as safetensors (truncated or corrupt?): {e}") from e
    else:
        sd = _read_torch(path)
    sd = unwrap_state_dict(sd, path)
    if sd and all(k.startswith("module.") for k in sd):
        sd = {k[len("module."):]: v for k, v in sd.items()}
    return sd


def _read_torch(path: Path) -> dict:
    try:
        import torch
    except ImportError as e:
        raise ConversionError("reading PyTorch checkpoints needs torch: pip install torch==2.13.0") from e
    if not zipfile.is_zipfile(path) and path.stat().st_size < 64:
        raise ConversionError(f"{path} is too small to be a PyTorch checkpoint ({path.stat().st_size} bytes)")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise ConversionError(f"could not read {path} as a PyTorch checkpoint (truncated or corrupt?): {e}") from e
    return _tensors_to_numpy(obj)


def _tensors_to_numpy(obj):
    import torch
    if isinstance(obj, torch.Tensor):
        t = obj.detach().cpu()
        return (t.float() if t.dtype in (torch.bfloat16, torch.float16) else t).numpy()
    if isinstance(obj, dict):
        return {k: _tensors_to_numpy(v) for k, v in obj.items()}
    return obj


def unwrap_state_dict(obj, source) -> dict[str, np.ndarray]:
    """Descend through wrapper keys until a flat {str: array} mapping is reached."""
    while isinstance(obj, dict) and not _is_flat_tensor_dict(obj):
        inner = [k for k in WRAPPER_KEYS if k in obj and isinstance(obj[k], dict)]
        if not inner:
            raise ConversionError(
                f"{source} holds no state dict: top-level keys {sorted(map(str, obj))[:10]}, "
                f"expected tensors or one of {WRAPPER_KEYS}")
        obj = obj[inner[0]]
    if not isinstance(obj, dict):
        raise ConversionError(f"{source} holds a {type(obj).__name__}, not a state dict")
    return {k: np.asarray(v) for k, v in obj.items()}


def _is_flat_tensor_dict(d: dict) -> bool:
    return bool(d) and all(isinstance(k, str) and hasattr(v, "shape") for k, v in d.items())


def linear_kernel(w):  # (out, in) -> (in, out)
    return np.ascontiguousarray(w.T)


def conv_kernel(w):  # (O, I, kh, kw) -> (kh, kw, I, O)
    return np.ascontiguousarray(w.transpose(2, 3, 1, 0))


def conv_transpose_kernel(w):  # PyTorch ConvTranspose2d (I, O, kh, kw) -> (kh, kw, I, O)
    return np.ascontiguousarray(w.transpose(2, 3, 0, 1))


def generic_leaf(module_path: tuple, leaf: str, value: np.ndarray):
    """Map a PyTorch leaf name and tensor to the NNX leaf name and array, by layout.

    4-D `weight` -> conv `kernel`; 2-D `weight` -> linear `kernel`; 1-D `weight` of a norm -> `scale`.
    """
    if leaf == "weight":
        if value.ndim == 4:
            return "kernel", conv_kernel(value)
        if value.ndim == 2:
            return "kernel", linear_kernel(value)
        if value.ndim == 1 and "norm" in str(module_path[-1]):
            return "scale", value
    if leaf in ("bias", "gamma", "running_mean", "running_var"):
        return leaf, value
    raise ConversionError(f"no layout rule for {'.'.join(map(str, module_path + (leaf,)))} {value.shape}")


@dataclasses.dataclass
class ConversionReport:
    """What a conversion did with every tensor, by name."""

    converted: int = 0
    missing: list[str] = dataclasses.field(default_factory=list)     # model params no tensor provided
    unexpected: list[str] = dataclasses.field(default_factory=list)  # tensors the model has no place for
    ignored: dict[str, str] = dataclasses.field(default_factory=dict)  # tensors dropped on purpose: reason

    def summary(self) -> str:
        lines = [f"converted {self.converted} tensors"]
        if self.ignored:
            lines.append(f"ignored {len(self.ignored)} (unused by this model):")
            lines += [f"  {k}: {why}" for k, why in sorted(self.ignored.items())]
        if self.missing:
            lines.append(f"missing {len(self.missing)} (kept at their random initialisation):")
            lines += [f"  {k}" for k in self.missing]
        if self.unexpected:
            lines.append(f"unexpected {len(self.unexpected)} (not used):")
            lines += [f"  {k}" for k in self.unexpected]
        return "\n".join(lines)

    def check(self, allow_missing: bool, what: str):
        """Strict by default: any missing or unexpected tensor is an error naming them."""
        if (self.missing or self.unexpected) and not allow_missing:
            raise ConversionError(
                f"{what}: the checkpoint does not match the model (use --allow-missing to convert anyway)\n"
                + self.summary())


def path_str(path: tuple) -> str:
    return ".".join(map(str, path))


def check_params(expected: dict[tuple, tuple], produced: dict[tuple, np.ndarray], report: ConversionReport,
                 sources: dict[tuple, tuple[str, tuple]]):
    """Check `produced` against the model's {path: shape}, recording missing and unexpected paths.

    `sources` maps a produced path to its PyTorch (key, shape). A tensor whose shape differs from the
    model's is always an error (no flag makes it pass).
    """
    def name(p):
        return sources[p][0] if p in sources else path_str(p)

    bad = [f"{name(p)} {sources[p][1] if p in sources else ''}: converted to {tuple(v.shape)} but the model's "
           f"{path_str(p)} is {tuple(expected[p])}"
           for p, v in produced.items() if p in expected and tuple(v.shape) != tuple(expected[p])]
    if bad:
        raise ConversionError("tensor shapes do not match the model:\n  " + "\n  ".join(bad))
    report.unexpected += sorted(name(p) for p in produced if p not in expected)
    report.missing += sorted(path_str(p) for p in expected if p not in produced)


def unflatten(flat: dict[tuple, np.ndarray]) -> dict:
    """{(a, b, c): x} -> {a: {b: {c: x}}}."""
    tree: dict = {}
    for path, value in flat.items():
        node = tree
        for p in path[:-1]:
            node = node.setdefault(p, {})
        node[path[-1]] = value
    return tree


def convert_tensors(model_fn, sd: dict[str, np.ndarray], map_key, *, ignored: dict[str, str], allow_missing: bool,
                    what: str, source_name=None):
    """Build `model_fn()` with the tensors of `sd`; return (model, ConversionReport).

    `map_key(key, value)` gives (variable path, converted array, block index or None) or raises
    ConversionError for a key the model has no place for. A block index puts the array into slot i of a
    stacked (scanned) variable, whose leading axis is the block. Parameters and BatchNorm statistics are
    both filled. Strict unless `allow_missing`; then missing entries keep `model_fn()`'s initialisation.
    `source_name(path, block)` names a missing variable the way the checkpoint would (default: its path).
    """
    source_name = source_name or (lambda path, block: path_str(path) + ("" if block is None else f"[block {block}]"))
    abstract = nnx.eval_shape(model_fn)
    graphdef, state = nnx.split(abstract)
    expected = {tuple(k): tuple(v.shape) for k, v in nnx.to_flat_state(state)}
    report = ConversionReport()
    produced, sources, per_block = {}, {}, {}
    for key, value in sd.items():
        if key in ignored:
            report.ignored[key] = ignored[key]
            continue
        try:
            path, arr, block = map_key(key, np.asarray(value))
        except ConversionError:
            report.unexpected.append(key)
            continue
        if block is None:
            produced[path], sources[path] = arr, (key, tuple(np.shape(value)))
        elif path in expected and block < expected[path][0]:
            if arr.shape != expected[path][1:]:
                raise ConversionError(f"tensor shapes do not match the model:\n  {key} {np.shape(value)}: "
                                      f"converted to {arr.shape} but the model's {path_str(path)} is "
                                      f"{expected[path][1:]} per block")
            per_block.setdefault(path, {})[block] = arr
        else:
            report.unexpected.append(key)
    partial = {}
    for path, blocks in per_block.items():
        n = expected[path][0]
        if len(blocks) == n:
            produced[path] = np.stack([blocks[i] for i in range(n)])
        else:
            partial[path] = blocks
            report.missing += [source_name(path, i) for i in range(n) if i not in blocks]
    n_missing = len(report.missing)
    check_params({p: s for p, s in expected.items() if p not in partial}, produced, report, sources)
    report.missing[n_missing:] = sorted(source_name(p, None) for p in expected if p not in produced and p not in partial)
    report.converted = sum(len(b) for b in per_block.values()) + sum(1 for p in produced if p in sources)
    report.unexpected.sort()
    report.check(allow_missing, what)
    values = dict(produced)
    if report.missing:  # only with allow_missing: start from the model's own initialisation
        init = {tuple(k): np.asarray(v) for k, v in nnx.to_flat_state(nnx.state(model_fn()))}
        for path, blocks in partial.items():
            values[path] = np.array(init[path])
            for i, arr in blocks.items():
                values[path][i] = arr
        values.update({p: init[p] for p in expected if p not in values})
    dtypes = {tuple(k): v.dtype for k, v in nnx.to_flat_state(state)}
    nnx.replace_by_pure_dict(state, unflatten({p: jnp.asarray(values[p], dtypes[p]) for p in expected}))
    return nnx.merge(graphdef, state), report


def run_conversion(checkpoint, out, convert, *, converter: str, describe) -> int:
    """The body of every converter command: read `checkpoint`, `convert(state_dict) -> (model, report)`,
    save to `out`, print the report. User errors (bad or missing file, mismatched tensors, existing output)
    print one line and return exit code 2."""
    def body():
        model, report = convert(read_state_dict(checkpoint))
        path = save_model(out, model, source={"checkpoint": str(checkpoint), "converter": converter})
        print(report.summary())
        print(f"wrote {describe(model)} to {path}")
    return run_command(body)
