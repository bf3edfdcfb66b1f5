"""DINOv2 ViT/14 as Depth-Anything-V2 vendors it (spec §4.2), in Flax NNX.

Module and parameter names mirror the PyTorch `DinoVisionTransformer` (`patch_embed.proj`,
`blocks.<i>.{norm1,attn.qkv,attn.proj,ls1,norm2,mlp.fc1|w12,...}`, `norm`), so the converter is a
renaming plus layout changes. The blocks are stacked along a leading layer axis and run under
`nnx.scan`, so compile time does not grow with depth.
"""

from __future__ import annotations

import dataclasses
import typing
from typing import Literal

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from tiodepth_jax.ops.resize import interpolate_bicubic


# What each block keeps for the backward pass when rematerialised, as a `jax.checkpoint_policies` name:
# nothing_saveable keeps only the block's input (and recomputes the whole block), dots_with_no_batch_dims_saveable
# also keeps the outputs of its Linear layers (and recomputes LayerNorm, GELU and attention).
RematPolicy = Literal["nothing_saveable", "dots_with_no_batch_dims_saveable"]
Remat = bool | RematPolicy  # False: store every activation; True: nothing_saveable


def remat_policy(remat: Remat):
    """The `jax.checkpoint` policy of a rematerialised block, or None when `remat` is False."""
    if remat is False:
        return None
    name = "nothing_saveable" if remat is True else remat
    if name not in typing.get_args(RematPolicy):
        raise ValueError(f"remat must be a bool or one of {', '.join(typing.get_args(RematPolicy))}; got {remat!r}")
    return getattr(jax.checkpoint_policies, name)


@dataclasses.dataclass(frozen=True)
class DinoV2Config:
    """Shape of a DINOv2 trunk. `pos_grid` is the side of the pretrained position grid (518 / 14)."""

    embed_dim: int
    depth: int
    num_heads: int
    ffn: Literal["mlp", "swiglu"] = "mlp"
    mlp_ratio: float = 4.0
    patch_size: int = 14
    pos_grid: int = 37
    interpolate_offset: float = 0.1
    layernorm_eps: float = 1e-6

    def __post_init__(self):
        if self.ffn not in ("mlp", "swiglu"):
            raise ValueError(f"DinoV2Config.ffn must be 'mlp' or 'swiglu', got {self.ffn!r}")
        if self.embed_dim % self.num_heads:
            raise ValueError(
                f"DinoV2Config.embed_dim={self.embed_dim} is not divisible by num_heads={self.num_heads}")

    @property
    def ffn_hidden(self) -> int:
        hidden = int(self.embed_dim * self.mlp_ratio)
        if self.ffn == "swiglu":  # SwiGLUFFNFused rounds 2/3 of the width up to a multiple of 8.
            return (int(hidden * 2 / 3) + 7) // 8 * 8
        return hidden


def matmul_precision(dtype) -> jax.lax.Precision:
    """float32 runs at full precision (no TF32 on GPUs) so that parity with PyTorch holds."""
    return jax.lax.Precision.HIGHEST if jnp.dtype(dtype) == jnp.float32 else jax.lax.Precision.DEFAULT


class PatchEmbed(nnx.Module):
    """Conv2d(3, D, 14, stride 14): (B, H, W, 3) -> (B, H/14 * W/14, D), row-major over the grid."""

    def __init__(self, cfg: DinoV2Config, *, dtype, rngs: nnx.Rngs):
        p = cfg.patch_size
        self.proj = nnx.Conv(3, cfg.embed_dim, (p, p), strides=(p, p), padding="VALID", dtype=dtype,
                             precision=matmul_precision(dtype), rngs=rngs)

    def __call__(self, x):
        x = self.proj(x)  # (B, h, w, D)
        return x.reshape(x.shape[0], -1, x.shape[-1])


def attention_implementation(backend: str, dtype) -> str | None:
    """The `implementation` of `jax.nn.dot_product_attention` for `backend` and the compute `dtype`.

    'cudnn' (fused flash attention) on GPUs in bfloat16 / float16; None (the XLA path: logits, float32
    softmax, probs @ v) elsewhere: cuDNN's fused attention takes no float32 inputs, and None never picks
    cuDNN by itself (JAX 0.10 always takes the XLA path for None).
    """
    half = jnp.dtype(dtype) in (jnp.dtype(jnp.bfloat16), jnp.dtype(jnp.float16))
    return "cudnn" if backend == "gpu" and half else None


def attend(q, k, v):
    """softmax(q k^T / sqrt(hd)) v per head, the softmax in float32: (B, T, heads, hd) x3 -> (B, T, heads, hd).

    q is scaled before the product, as DINOv2 does. In float32 both matmuls run at `Precision.HIGHEST` (see
    `matmul_precision`); in bfloat16 the XLA path forms the logits in float32 and casts the probabilities
    back to bfloat16 for probs @ v.
    """
    implementation = attention_implementation(jax.default_backend(), q.dtype)
    q = q * q.shape[-1] ** -0.5
    with jax.default_matmul_precision(matmul_precision(q.dtype).name.lower()):
        return jax.nn.dot_product_attention(q, k, v, scale=1.0, implementation=implementation)


class Attention(nnx.Module):
    """Multi-head self-attention with scale head_dim^-0.5 and softmax in float32."""

    def __init__(self, cfg: DinoV2Config, *, dtype, rngs: nnx.Rngs):
        d = cfg.embed_dim
        self.num_heads = cfg.num_heads
        precision = matmul_precision(dtype)
        self.qkv = nnx.Linear(d, 3 * d, dtype=dtype, precision=precision, rngs=rngs)
        self.proj = nnx.Linear(d, d, dtype=dtype, precision=precision, rngs=rngs)

    def __call__(self, x):
        b, n, d = x.shape
        qkv = self.qkv(x).reshape(b, n, 3, self.num_heads, d // self.num_heads)
        out = attend(qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2])  # (B, N, heads, hd)
        return self.proj(out.reshape(b, n, d))


class Mlp(nnx.Module):
    """fc1 -> exact (erf) GELU -> fc2."""

    def __init__(self, cfg: DinoV2Config, *, dtype, rngs: nnx.Rngs):
        p = matmul_precision(dtype)
        self.fc1 = nnx.Linear(cfg.embed_dim, cfg.ffn_hidden, dtype=dtype, precision=p, rngs=rngs)
        self.fc2 = nnx.Linear(cfg.ffn_hidden, cfg.embed_dim, dtype=dtype, precision=p, rngs=rngs)

    def __call__(self, x):
        return self.fc2(jax.nn.gelu(self.fc1(x), approximate=False))


class SwiGLUFFN(nnx.Module):
    """ViT-G feed-forward: w12 -> split halves (x1, x2) -> silu(x1) * x2 -> w3."""

    def __init__(self, cfg: DinoV2Config, *, dtype, rngs: nnx.Rngs):
        p = matmul_precision(dtype)
        self.w12 = nnx.Linear(cfg.embed_dim, 2 * cfg.ffn_hidden, dtype=dtype, precision=p, rngs=rngs)
        self.w3 = nnx.Linear(cfg.ffn_hidden, cfg.embed_dim, dtype=dtype, precision=p, rngs=rngs)

    def __call__(self, x):
        x1, x2 = jnp.split(self.w12(x), 2, axis=-1)
        return self.w3(jax.nn.silu(x1) * x2)


class LayerScale(nnx.Module):
    def __init__(self, dim: int):
        self.gamma = nnx.Param(jnp.ones((dim,), jnp.float32))

    def __call__(self, x):
        return x * self.gamma[...].astype(x.dtype)


class Block(nnx.Module):
    """x + ls1(attn(norm1(x))), then x + ls2(ffn(norm2(x)))."""

    def __init__(self, cfg: DinoV2Config, *, dtype, rngs: nnx.Rngs):
        d, eps = cfg.embed_dim, cfg.layernorm_eps
        self.norm1 = nnx.LayerNorm(d, epsilon=eps, dtype=dtype, rngs=rngs)
        self.attn = Attention(cfg, dtype=dtype, rngs=rngs)
        self.ls1 = LayerScale(d)
        self.norm2 = nnx.LayerNorm(d, epsilon=eps, dtype=dtype, rngs=rngs)
        ffn = SwiGLUFFN if cfg.ffn == "swiglu" else Mlp
        self.mlp = ffn(cfg, dtype=dtype, rngs=rngs)
        self.ls2 = LayerScale(d)

    def __call__(self, x):
        x = x + self.ls1(self.attn(self.norm1(x)))
        return x + self.ls2(self.mlp(self.norm2(x)))


def interpolate_pos_embed(pos_embed, grid_hw: tuple[int, int], cfg: DinoV2Config):
    """DINOv2's `interpolate_pos_encoding` for a (gh, gw) patch grid: (1, 1+G*G, D) -> (1, 1+gh*gw, D).

    The G x G patch embeddings are resized bicubically with `scale_factor=((g+0.1)/G)` (not with a
    size), as the original does; for a square grid of G x G patches the raw table is returned.
    """
    gh, gw = grid_hw
    g = cfg.pos_grid
    if gh == gw == g:
        return pos_embed
    cls_pos, patch_pos = pos_embed[:, :1], pos_embed[:, 1:]
    patch_pos = patch_pos.reshape(1, g, g, -1).astype(jnp.float32)  # (1, G, G, D)
    off = cfg.interpolate_offset
    patch_pos = interpolate_bicubic(patch_pos, scale_factor=((gh + off) / g, (gw + off) / g))
    if patch_pos.shape[1:3] != (gh, gw):
        raise ValueError(f"position-embedding interpolation gave {patch_pos.shape[1:3]}, expected {(gh, gw)}")
    patch_pos = patch_pos.reshape(1, gh * gw, -1).astype(pos_embed.dtype)
    return jnp.concatenate([cls_pos, patch_pos], axis=1)


class DinoV2(nnx.Module):
    """DINOv2 trunk returning the class and patch tokens of chosen blocks after the final LayerNorm.

    Args:
      cfg: the trunk's shape.
      dtype: compute dtype of the matmuls and convolutions (parameters stay float32).
      remat: rematerialise each block in the backward pass, keeping what the policy names (`Remat`).
    """

    def __init__(self, cfg: DinoV2Config, *, dtype=jnp.float32, remat: Remat = False, rngs: nnx.Rngs):
        d = cfg.embed_dim
        self.cfg = cfg
        self.dtype = dtype
        self.remat_policy = remat_policy(remat)
        self.patch_embed = PatchEmbed(cfg, dtype=dtype, rngs=rngs)
        self.cls_token = nnx.Param(jnp.zeros((1, 1, d), jnp.float32))
        self.pos_embed = nnx.Param(0.02 * jax.random.normal(rngs.params(), (1, 1 + cfg.pos_grid**2, d)))

        @nnx.split_rngs(splits=cfg.depth)
        @nnx.vmap(in_axes=(0,), out_axes=0)
        def make_blocks(rngs):
            return Block(cfg, dtype=dtype, rngs=rngs)

        self.blocks = make_blocks(rngs)
        self.norm = nnx.LayerNorm(d, epsilon=cfg.layernorm_eps, dtype=dtype, rngs=rngs)

    def prepare_tokens(self, x):
        """(B, H, W, 3) -> (B, 1 + h*w, D): class token, patch tokens, interpolated position embedding."""
        b, h, w, _ = x.shape
        p = self.cfg.patch_size
        if h % p or w % p:
            raise ValueError(f"DINOv2 input height and width must be multiples of {p}, got {h}x{w}")
        tokens = self.patch_embed(x.astype(self.dtype))
        cls = jnp.broadcast_to(self.cls_token[...].astype(tokens.dtype), (b, 1, tokens.shape[-1]))
        tokens = jnp.concatenate([cls, tokens], axis=1)
        pos = interpolate_pos_embed(self.pos_embed[...], (h // p, w // p), self.cfg)
        return tokens + pos.astype(tokens.dtype)

    def __call__(self, x, taps: tuple[int, ...]):
        """Intermediate layers of `taps` (0-based block indices), each after the final LayerNorm.

        Returns a list of (patch tokens (B, h*w, D), class token (B, D)), one per tap.
        """
        depth = self.cfg.depth
        if not taps or any(not 0 <= t < depth for t in taps):
            raise ValueError(f"taps {tuple(taps)} must be block indices in [0, {depth})")
        kept = sorted(set(taps))
        slots = np.full(depth, len(kept), np.int32)  # blocks that are not tapped write a scratch slot
        slots[kept] = np.arange(len(kept))
        tokens = self.prepare_tokens(x)
        taken = jnp.zeros((len(kept) + 1,) + tokens.shape, tokens.dtype)

        def block_call(block, h):
            return block(h)

        if self.remat_policy is not None:
            block_call = nnx.remat(block_call, policy=self.remat_policy)

        @nnx.scan(in_axes=(nnx.Carry, 0, 0), out_axes=nnx.Carry)
        def run(carry, block, slot):
            h, taken = carry
            h = block_call(block, h)
            return h, jax.lax.dynamic_update_index_in_dim(taken, h, slot, 0)

        _, taken = run((tokens, taken), self.blocks, jnp.asarray(slots))
        normed = self.norm(taken[: len(kept)])  # (n_kept, B, 1 + h*w, D)
        return [(normed[kept.index(t), :, 1:], normed[kept.index(t), :, 0]) for t in taps]
