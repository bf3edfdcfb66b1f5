"""Procedural rectified stereo scenes with exact ground truth: the embedded default dataset of the training demo.

A scene (all lengths in metres, left-camera coordinates: x right, y down, z forward) is

* a back wall ``z = wall_depth`` (fronto-parallel, fills the view behind everything),
* optionally a ground plane ``y = camera_height``,
* optionally two side walls ``x = x_left < 0`` and ``x = x_right > baseline`` (a street: the facades along a
  road, on either side of both cameras),
* ``num_objects`` axis-aligned boxes standing on the ground at random depths (a fronto-parallel front face, and
  side / top faces that are slanted with respect to the image plane),

each surface with its own colourful multi-octave value-noise texture. The ground and the street walls give the
scenes the layout cue that monocular networks first learn on KITTI (depth as a function of the image
position), and the texture scale a local one, so a network trained on them from random weights has something
to learn from a single view. Both cameras of the rectified pair share the intrinsics ``K``; the right camera
sits at ``x = +baseline``. Each view is ray-cast per pixel (vectorised numpy, z-buffer over the surfaces), so
depth, disparity ``fx * baseline / z`` and occlusions are exact.

Texture coordinates. Each surface is painted in its own plane, in metres: a point ``(X, Y, Z)`` (left-camera
coordinates) of a fronto-parallel face (back wall, box fronts) takes the noise at ``(X, Y)``, of a face
``x = const`` (street walls, box sides) at ``(Z, Y)`` and of a face ``y = const`` (ground, box tops) at
``(X, Z)``. Texture detail therefore shrinks with distance and foreshortens on slanted surfaces, the local depth
cue a monocular network learns from. To stay free of aliasing, each noise octave fades out where its cell
covers fewer than ``2 * texture_min_px`` pixels (and is gone below ``texture_min_px``), measured along the
steepest direction of the surface: a pixel spans ``Z / fx`` metres of a fronto-parallel face and
``Z / fx * Z / |d|`` of a face at distance ``|d|`` from the camera along its normal. Faded octaves are replaced
by their mean, so far surfaces are smoother and greyer. The colour is a function of the 3D point only (the
footprint uses the left camera's ``fx`` and the point's depth), so the right view shows the same texture at
the disparity and warping it into the left with the true depth reproduces the left view up to the
resampling of the (band-limited) texture.

Training batches follow spec §6.5 with NHWC images: ``color_s`` = left, ``color_o`` = right, ``direct`` = +1,
``T`` = identity with ``T[0, 3] = -baseline``; flip ('img' mode: swap the views and mirror both) and colour
augmentation (:mod:`tiodepth_jax.data.augment`) drawn from a numpy ``Generator``. The random resize / crop of
§6.5 steps 5-6 is not applied: scenes are rendered directly at the training size.
"""

import dataclasses
from typing import NamedTuple

import numpy as np

from tiodepth_jax.data.augment import apply_color_aug, draw_color_aug

# KITTI's fixed intrinsics (fx, fy, cx, cy) and the raw image size (H, W) they refer to (spec §6.5 step 2, §7.3).
KITTI_INTRINSICS = (721.54, 721.54, 609.56, 172.85)
KITTI_RAW_SIZE = (375, 1242)

_FACE_SHADE = np.array([1.0, 0.75, 0.88])  # box faces: front, side, top/bottom (a fixed per-face brightness)
_WALL, _GROUND, _LEFT, _RIGHT, _FIRST_BOX = 0, 1, 2, 3, 4  # surface ids


@dataclasses.dataclass(frozen=True)
class SceneConfig:
    """Image size, camera and scene statistics.

    height, width: image size in pixels (any size). fx, fy, cx, cy: intrinsics in pixels; None takes KITTI's K
    scaled to the image size (row 0 by width / 1242, row 1 by height / 375, as the original dataset does).
    baseline: metres between the cameras; the right camera is at x = +baseline. camera_height: metres above the
    ground. min_depth, max_depth: the back wall lies at U(0.6, 1) * max_depth, box fronts at log-uniform depths
    in [min_depth, wall_depth / 2] (the ground can come closer than min_depth in the bottom rows).
    num_objects: boxes per scene. object_size: (low, high) range in metres of the boxes' width, height and
    depth extent. ground: include the ground plane. street_width: None (no side walls), or the (low, high) range
    in metres of each side wall's distance from the camera nearer to it (drawn separately for the left and the
    right wall, so both cameras are always inside the street); boxes are then centred between the walls.
    Texture: texture_cell is the finest noise cell in metres, texture_octaves the number of octaves (each twice
    the previous cell), texture_min_px the cell size in pixels below which an octave is faded out (module
    docstring), texture_persistence the amplitude ratio of successive (finer) octaves, texture_contrast the
    slope of the tanh that spreads the noise over each surface's colour range.
    """

    height: int = 84
    width: int = 280
    fx: float | None = None
    fy: float | None = None
    cx: float | None = None
    cy: float | None = None
    baseline: float = 0.54
    camera_height: float = 1.65
    min_depth: float = 6.0
    max_depth: float = 60.0
    num_objects: int = 4
    object_size: tuple[float, float] = (0.5, 3.0)
    ground: bool = True
    street_width: tuple[float, float] | None = (3.0, 8.0)
    texture_cell: float = 0.1
    texture_octaves: int = 5
    texture_min_px: float = 1.5
    texture_persistence: float = 0.7
    texture_contrast: float = 4.0


def intrinsics(cfg: SceneConfig) -> tuple[float, float, float, float]:
    """(fx, fy, cx, cy) in pixels: the config's values, or KITTI's K scaled to (cfg.height, cfg.width)."""
    kfx, kfy, kcx, kcy = KITTI_INTRINSICS
    sy, sx = cfg.height / KITTI_RAW_SIZE[0], cfg.width / KITTI_RAW_SIZE[1]
    given, scaled = (cfg.fx, cfg.fy, cfg.cx, cfg.cy), (kfx * sx, kfy * sy, kcx * sx, kcy * sy)
    fx, fy, cx, cy = (float(default if value is None else value) for value, default in zip(given, scaled))
    return fx, fy, cx, cy


def camera_matrix(cfg: SceneConfig) -> np.ndarray:
    """K as the dataset gives it: (4, 4) float32 ``[[fx, 0, cx, 0], [0, fy, cy, 0], [0, 0, 1, 0], [0, 0, 0, 1]]``."""
    fx, fy, cx, cy = intrinsics(cfg)
    k = np.eye(4, dtype=np.float32)
    k[0, 0], k[1, 1], k[0, 2], k[1, 2] = fx, fy, cx, cy
    return k


# ---------------------------------------------------------------------------------------------------------------
# Scene sampling and ray casting


class _Scene(NamedTuple):
    wall_depth: float
    street: tuple[float, float] | None  # x of the left and of the right side wall, or None
    boxes: np.ndarray  # (N, 6) float64: x0, x1, y0, y1, z0, z1
    color_lo: np.ndarray  # (S, 3) float64: per-surface colour at texture value 0 (base colour - spread)
    color_hi: np.ndarray  # (S, 3) float64: per-surface colour at texture value 1 (base colour + spread)
    salts: np.ndarray  # (S,) uint32: per-surface texture seeds


def _sample_scene(cfg: SceneConfig, rng: np.random.Generator) -> _Scene:
    """Draw the wall depth, the street, the boxes (standing on y = camera_height) and the per-surface textures."""
    fx, _, cx, _ = intrinsics(cfg)
    n = cfg.num_objects
    wall = rng.uniform(0.6, 1.0) * cfg.max_depth
    street = None
    if cfg.street_width is not None:
        gap_left, gap_right = rng.uniform(*cfg.street_width, 2)
        street = (-float(gap_left), cfg.baseline + float(gap_right))
    z0 = np.exp(rng.uniform(np.log(cfg.min_depth), np.log(max(cfg.min_depth, wall / 2)), n))
    size = rng.uniform(*cfg.object_size, (3, n))  # width, height, depth extent
    if street is None:
        x_mid = (rng.uniform(0, cfg.width, n) - cx) * z0 / fx  # centred on a random image column
    else:
        x_mid = rng.uniform(*street, n)  # centred between the walls
    boxes = np.stack([x_mid - size[0] / 2, x_mid + size[0] / 2, cfg.camera_height - size[1],
                      np.full(n, cfg.camera_height), z0, z0 + size[2]], axis=1)
    surfaces = _FIRST_BOX + n
    base, spread = rng.uniform(0.2, 0.8, (surfaces, 3)), rng.uniform(0.15, 0.4, (surfaces, 1))
    return _Scene(wall_depth=wall, street=street, boxes=boxes, color_lo=np.clip(base - spread, 0, 1),
                  color_hi=np.clip(base + spread, 0, 1), salts=rng.integers(0, 2**32, surfaces, dtype=np.uint32))


def _nonzero(a):
    """Ray direction components with exact zeros nudged to 1e-12 (keeps the slab divisions finite)."""
    return np.where(a == 0, 1e-12, a)


def _box_hit(box, cam_x, dx, dy):
    """Slab-method entry depth of rays ``(cam_x, 0, 0) + z * (dx, dy, 1)`` into an axis-aligned box.

    box: (6,) x0, x1, y0, y1, z0, z1; dx: (1, W); dy: (H, 1). Returns (depth (H, W) with inf for misses,
    entry face (H, W): 0 front (z = z0), 1 side (x slab), 2 top/bottom (y slab)).
    """
    x0, x1, y0, y1, z0, z1 = box
    tx0, tx1 = (x0 - cam_x) / dx, (x1 - cam_x) / dx  # (1, W)
    ty0, ty1 = y0 / dy, y1 / dy  # (H, 1)
    x_in, y_in = np.minimum(tx0, tx1), np.minimum(ty0, ty1)
    near = np.maximum(np.maximum(x_in, y_in), z0)
    far = np.minimum(np.minimum(np.maximum(tx0, tx1), np.maximum(ty0, ty1)), z1)
    face = np.where(near == z0, 0, np.where(near == x_in, 1, 2))
    return np.where(near <= far, near, np.inf), face


def _hash_uniform3(ix, iy, salt):
    """Three uniforms in [0, 1) per integer lattice point (1024 levels each, from one 32-bit murmur3-style hash).

    ix, iy: int64, salt: uint32, broadcastable to a common shape (...) -> (3, ...) float32. A pure function of
    (ix, iy, salt), so every view sees the same lattice values.
    """
    h = ix.astype(np.uint32) * np.uint32(0x8DA6B343) ^ iy.astype(np.uint32) * np.uint32(0xD8163841) ^ salt
    h = (h ^ (h >> np.uint32(16))) * np.uint32(0x85EBCA6B)
    h = (h ^ (h >> np.uint32(13))) * np.uint32(0xC2B2AE35)
    h = h ^ (h >> np.uint32(16))
    fields = np.stack([h >> np.uint32(22), h >> np.uint32(12), h >> np.uint32(2)]) & np.uint32(1023)
    return fields.astype(np.float32) * np.float32(1 / 1024)


def _smoothstep_cell(t):
    """Lattice cell index (int64) and smoothstep weight (float32) of coordinates t in cell units."""
    t0 = np.floor(t)
    s = (t - t0).astype(np.float32)
    return t0.astype(np.int64), s * s * (3 - 2 * s)


def _value_noise3(x, y, cell, surface, salts):
    """Smoothstep-interpolated value noise with lattice spacing ``cell``, 3 channels, one lattice per surface.

    x, y: texture coordinates (in the unit of ``cell``) and surface: surface ids, all of one shape (...);
    salts: (S,) uint32.
    The lattice values over the bounding box of the cells in use are hashed once per surface, then gathered at
    the four corners of each point's cell. Returns (3, ...) float32 (channels first: cheap broadcasting).
    """
    ix, sx = _smoothstep_cell(x / cell)
    iy, sy = _smoothstep_cell(y / cell)
    x_lo, y_lo = ix.min(), iy.min()
    nx, ny = ix.max() - x_lo + 2, iy.max() - y_lo + 2
    table = _hash_uniform3(np.arange(x_lo, x_lo + nx)[None, None, :], np.arange(y_lo, y_lo + ny)[None, :, None],
                           salts[:, None, None]).reshape(3, -1)  # (3, S * ny * nx)
    idx = (surface * ny + (iy - y_lo)) * nx + (ix - x_lo)  # (...) flat index of the top-left corner
    v00, v10, v01, v11 = (np.take(table, idx + offset, axis=1) for offset in (0, 1, nx, nx + 1))  # (3, ...)
    top, bottom = v00 + (v10 - v00) * sx, v01 + (v11 - v01) * sx
    return top + (bottom - top) * sy


def _texture(cfg: SceneConfig, scene: _Scene, surface, tex_u, tex_v, footprint):
    """Colour (H, W, 3) in [0, 1] of each pixel's surface at in-plane coordinates tex_u, tex_v (H, W) in metres.

    Per channel: fractal value noise (octave o has cell texture_cell * 2**(octaves-1-o) metres and amplitude
    persistence**o, normalised); an octave whose cell spans c pixels (c = cell / footprint, footprint (H, W) in
    metres per pixel) has weight clip(c / texture_min_px - 1, 0, 1) and the rest of its amplitude goes to the
    mean 0.5. The noise is spread by ``0.5 + 0.5 * tanh(contrast * (noise - 0.5))`` and mapped linearly onto
    the surface's [color_lo, color_hi].
    """
    octaves = cfg.texture_octaves
    amplitudes = (cfg.texture_persistence ** np.arange(octaves)).astype(np.float32)
    noise = np.full((3, *surface.shape), 0.5, np.float32)
    for o, amplitude in enumerate(amplitudes / amplitudes.sum()):
        cell = cfg.texture_cell * 2.0 ** (octaves - 1 - o)
        fade = np.clip(cell / footprint / cfg.texture_min_px - 1, 0, 1).astype(np.float32)  # (H, W)
        seen = fade > 0  # the lattice is hashed only over the pixels that show this octave
        if not seen.any():
            continue
        octave = _value_noise3(tex_u[seen], tex_v[seen], cell, surface[seen],
                               scene.salts ^ np.uint32((0x9E3779B9 * (o + 1)) % 2**32))  # (3, n)
        noise[:, seen] += amplitude * fade[seen] * (octave - np.float32(0.5))
    t = 0.5 + 0.5 * np.tanh(np.float32(cfg.texture_contrast) * (noise - np.float32(0.5)))
    lo, hi = scene.color_lo[surface], scene.color_hi[surface]  # (H, W, 3)
    return lo + (hi - lo) * np.moveaxis(t, 0, -1)


def _render_view(cfg: SceneConfig, scene: _Scene, cam_x: float):
    """Ray-cast the camera at (cam_x, 0, 0): (color (H, W, 3) float32 in [0, 1], depth (H, W) float32 metres)."""
    h, w = cfg.height, cfg.width
    fx, fy, cx, cy = intrinsics(cfg)
    dx = _nonzero((np.arange(w) - cx) / fx)[None, :]  # (1, W) ray direction x / z
    dy = _nonzero((np.arange(h) - cy) / fy)[:, None]  # (H, 1) ray direction y / z
    depth = np.full((h, w), scene.wall_depth)
    surface = np.full((h, w), _WALL)
    plane = np.zeros((h, w), np.int64)  # orientation of the hit face: 0 z = const, 1 x = const, 2 y = const
    shade = np.ones((h, w))
    if cfg.ground:
        ground = np.broadcast_to(np.where(dy > 0, cfg.camera_height / dy, np.inf), (h, w))
        closer = ground < depth
        depth[closer], surface[closer], plane[closer] = ground[closer], _GROUND, 2
    if scene.street is not None:
        for side, wall_x in zip((_LEFT, _RIGHT), scene.street):
            along = (wall_x - cam_x) / dx  # (1, W) depth at which each column's rays meet the wall
            hit = np.broadcast_to(np.where(along > 0, along, np.inf), (h, w))
            closer = hit < depth
            depth[closer], surface[closer], plane[closer] = hit[closer], side, 1
    for i, box in enumerate(scene.boxes):
        hit, face = _box_hit(box, cam_x, dx, dy)
        closer = hit < depth
        depth[closer], surface[closer], shade[closer] = hit[closer], _FIRST_BOX + i, _FACE_SHADE[face[closer]]
        plane[closer] = face[closer]
    x, y = cam_x + depth * dx, depth * dy  # the hit point in left-camera coordinates
    tex_u = np.where(plane == 1, depth, x)
    tex_v = np.where(plane == 2, depth, y)
    normal_distance = np.choose(plane, (depth, np.abs(x), np.abs(y)))
    footprint = depth / fx * depth / np.maximum(normal_distance, 1e-6)  # metres per pixel, steepest direction
    color = _texture(cfg, scene, surface, tex_u, tex_v, footprint) * shade[..., None]
    return color.astype(np.float32), depth.astype(np.float32)


def render_pair(cfg: SceneConfig, seed: int) -> dict:
    """Render the rectified stereo pair of scene ``seed`` (deterministic).

    Returns color_l, color_r (H, W, 3) float32 in [0, 1]; depth_l, depth_r (H, W) float32 z-depth in metres of
    each view (disparity = fx * baseline / depth); K (4, 4) float32 shared by both cameras.
    """
    scene = _sample_scene(cfg, np.random.default_rng(seed))
    color_l, depth_l = _render_view(cfg, scene, 0.0)
    color_r, depth_r = _render_view(cfg, scene, cfg.baseline)
    return {"color_l": color_l, "color_r": color_r, "depth_l": depth_l, "depth_r": depth_r,
            "K": camera_matrix(cfg)}


# ---------------------------------------------------------------------------------------------------------------
# Training samples (spec §6.5)


def make_sample(cfg: SceneConfig, seed: int, *, rng: np.random.Generator | None = None,
                flip_prob: float = 0.5, color_aug_prob: float = 0.5) -> dict:
    """One training sample of scene ``seed`` (spec §6.5, NHWC, no batch axis).

    Target 's' = left view, other 'o' = right view: direct = +1, T = identity with T[0, 3] = -baseline,
    K and inv_K = pinv(K in float64) cast to float32. With ``rng``: with probability ``flip_prob`` the views
    are swapped and both mirrored horizontally ('img' flip mode; direct and T unchanged: the mirrored right
    view is a left view of the mirrored scene), and with probability ``color_aug_prob`` both views get the same
    colour augmentation (``color_*_aug``). Without ``rng`` no augmentation (``color_*_aug`` = ``color_*``).

    Returns color_s, color_o, color_s_aug, color_o_aug (H, W, 3) float32; K, inv_K, T (4, 4) float32;
    direct () float32; depth_gt (H, W, 1) float32, the z-depth of the target view (after the flip).
    """
    pair = render_pair(cfg, seed)
    color_s, color_o, depth = pair["color_l"], pair["color_r"], pair["depth_l"]
    if rng is not None and rng.random() < flip_prob:
        color_s, color_o, depth = pair["color_r"][:, ::-1], pair["color_l"][:, ::-1], pair["depth_r"][:, ::-1]
    aug = draw_color_aug(rng, color_aug_prob) if rng is not None else None
    k = pair["K"]
    t = np.eye(4, dtype=np.float32)
    t[0, 3] = -cfg.baseline
    return {
        "color_s": np.ascontiguousarray(color_s), "color_o": np.ascontiguousarray(color_o),
        "color_s_aug": np.ascontiguousarray(apply_color_aug(color_s, aug)),
        "color_o_aug": np.ascontiguousarray(apply_color_aug(color_o, aug)),
        "K": k, "inv_K": np.linalg.pinv(k.astype(np.float64)).astype(np.float32), "T": t,
        "direct": np.float32(1.0), "depth_gt": np.ascontiguousarray(depth[..., None]),
    }


def stack_samples(samples: list[dict]) -> dict:
    """Stack per-sample dicts along a new leading batch axis: direct becomes (B,), images (B, H, W, C)."""
    return {key: np.stack([s[key] for s in samples]) for key in samples[0]}


def make_batch(cfg: SceneConfig, seeds, *, rng: np.random.Generator | None = None, flip_prob: float = 0.5,
               color_aug_prob: float = 0.5) -> dict:
    """The training batch of scenes ``seeds`` (spec §6.5 keys, NHWC): :func:`make_sample` per seed, stacked.

    Returns color_s, color_o, color_s_aug, color_o_aug (B, H, W, 3); K, inv_K, T (B, 4, 4); direct (B,);
    depth_gt (B, H, W, 1); all float32. Augmentations are drawn from ``rng`` sample by sample, in order.
    """
    return stack_samples([make_sample(cfg, int(s), rng=rng, flip_prob=flip_prob, color_aug_prob=color_aug_prob)
                          for s in seeds])


class SyntheticStereo:
    """Random-access dataset of ``size`` scenes: item i is the scene with seed ``base_seed + i``.

    ``ds[i]`` is the un-augmented sample (:func:`make_sample` without rng); ``ds.batch(indices, rng)`` the
    stacked, augmented batch of a list of indices. Rendering is on the fly and deterministic, so a training loop
    can shuffle indices and checkpoint its position (plus its augmentation rng state).
    """

    def __init__(self, cfg: SceneConfig, size: int, *, base_seed: int = 0):
        self.cfg, self.size, self.base_seed = cfg, int(size), int(base_seed)

    def __len__(self) -> int:
        return self.size

    def seed(self, index: int) -> int:
        """Scene seed of item ``index`` (0 <= index < len); IndexError otherwise."""
        if not 0 <= index < self.size:
            raise IndexError(f"index {index} out of range for a dataset of {self.size} scenes")
        return self.base_seed + int(index)

    def __getitem__(self, index: int) -> dict:
        return make_sample(self.cfg, self.seed(index))

    def batch(self, indices, rng: np.random.Generator | None = None, **aug) -> dict:
        """:func:`make_batch` of the items ``indices``; ``aug``: flip_prob, color_aug_prob."""
        return make_batch(self.cfg, [self.seed(i) for i in indices], rng=rng, **aug)
