"""TFDS builders of the stereo records that training and evaluation read (array_record files, no TensorFlow).

Datasets (read back with ``tfds.data_source(name, data_dir=..., split=...)``):

* ``kitti_raw`` — KITTI raw pairs listed by split files (default: split ``train`` from ``<root>/train_list.txt``).
* ``kitti_eigen_test/raw`` and ``kitti_eigen_test/improved`` — the Eigen test pairs (default: split ``test`` from
  ``<root>/test_list.txt`` / ``<root>/test_improved_list.txt``) with ``depth_gt``: the velodyne scan projected
  with ``vel_depth=True`` (spec §7.4), or the improved ground-truth PNGs.
* ``kitti_stereo2015`` — split ``train``: every ``training/image_2/<index:06d>_10.png`` of the KITTI 2015 root
  (the 200 training pairs), or the pairs of a split file of ``<index:06d>_10`` lines; with ``disp_gt`` and
  ``depth_gt = KITTI2015_FX_BASELINE / disp_gt`` (0 where invalid).
* ``stereo_folder`` — one split per split folder of a :mod:`tiodepth_jax.data.stereo_folder` tree; ``depth_gt``
  when any sequence has a ``depth/`` folder.

Split files are the user's: the original's ``data_splits`` lists are not shipped. KITTI split files have
``"<date>/<drive folder> <frame> <l|r>"`` lines (spec §7.2); each line gives one record, in file order.

Every record holds ``image_s`` / ``image_o`` (target and other view; the files' PNG / JPEG bytes as they are, other
images re-encoded as RGB PNG), ``K`` (3, 3) float32 at the stored image size, ``baseline`` (metres), ``direct``
(+1 when image_s is the left camera, -1 for the right) and ``name``; evaluation sets add ``depth_gt`` (and
``disp_gt``) (H, W) float32 at native resolution, 0 = invalid. Records keep the order of the entries (no
shuffling). A missing or unreadable file fails the build with an error naming it; with ``skip_bad`` the entry
is left out instead and listed (split, file, reason) in ``skipped.json`` in the built dataset's folder.
``calibration.json`` there holds, per split, the distinct ``K[0, 0] * baseline / W`` of its records (what
``model.d2d: auto`` scales to the training width) and, for stereo folders, the principal-point alignment
applied per calibration file and image size (a non-zero ``doffs`` crops both views, see
:mod:`tiodepth_jax.data.stereo_folder`: the records then hold the aligned views, depth and K).

Build with :func:`build` or ``python -m tiodepth_jax.data.build`` (see :mod:`tiodepth_jax.data.build`).
"""

import dataclasses
import io
import json
import logging
import re
import shutil
import tempfile
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import tensorflow_datasets as tfds
from PIL import Image
from tqdm import tqdm

from tiodepth_jax.data import kitti, stereo_folder
from tiodepth_jax.data.kitti import DataFileError
from tiodepth_jax.errors import InputError, InputExistsError

SKIPPED_FILE = "skipped.json"
CALIBRATION_FILE = "calibration.json"
_SIDE_CAMERA = {"l": 2, "r": 3}
_KITTI2015_LINE = re.compile(r"(\d{6})_10")


def _png(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def encoded_rgb(path) -> tuple[bytes, tuple[int, int]]:
    """An image file as the bytes to store and its size (H, W); DataFileError if missing or unreadable.

    8-bit RGB PNG and RGB JPEG files are stored as they are (checked: PNG chunk checksums, JPEG fully decoded);
    any other image (grey, palette, alpha, 16-bit, other formats) is converted to RGB and re-encoded as PNG.
    """
    path = Path(path)
    try:
        data = path.read_bytes()
        with Image.open(io.BytesIO(data)) as image:
            size = (image.height, image.width)
            if image.format == "PNG" and image.mode == "RGB" and data[24] == 8:  # IHDR bit depth: 8 per channel
                image.verify()
                return data, size
            image.load()
            if image.format == "JPEG" and image.mode == "RGB":
                return data, size
            return _png(image.convert("RGB")), size
    except (OSError, SyntaxError) as err:
        reason = "missing file" if isinstance(err, FileNotFoundError) else f"cannot read image ({err})"
        raise DataFileError(path, reason) from err


def _check_same_size(path_s: Path, size_s, path_o: Path, size_o) -> None:
    if size_s != size_o:
        raise DataFileError(path_o, f"image size {size_o[1]}x{size_o[0]} differs from its stereo partner "
                                    f"{path_s} ({size_s[1]}x{size_s[0]})")


def _record(image_s: bytes, image_o: bytes, K, baseline: float, direct: float, name: str, **ground_truth) -> dict:
    """One example in the feature layout of :func:`_features` (ground truth: (H, W) float32 maps)."""
    return {"image_s": image_s, "image_o": image_o, "K": np.asarray(K, np.float32),
            "baseline": np.float32(baseline), "direct": np.float32(direct), "name": name,
            **{key: np.asarray(value, np.float32) for key, value in ground_truth.items()}}


def _features(ground_truth: tuple[str, ...]) -> tfds.features.FeaturesDict:
    """The record features; ``ground_truth`` names the extra (H, W) float32 maps (depth_gt, disp_gt)."""
    image = dict(shape=(None, None, 3), dtype=np.uint8)
    features = {"image_s": tfds.features.Image(**image), "image_o": tfds.features.Image(**image),
                "K": tfds.features.Tensor(shape=(3, 3), dtype=np.float32),
                "baseline": tfds.features.Tensor(shape=(), dtype=np.float32),
                "direct": tfds.features.Tensor(shape=(), dtype=np.float32),
                "name": tfds.features.Text()}
    for key in ground_truth:
        features[key] = tfds.features.Tensor(shape=(None, None), dtype=np.float32, encoding="zlib")
    return tfds.features.FeaturesDict(features)


def _check_split_name(split: str) -> None:
    if not re.fullmatch(r"\w+", split, re.ASCII) or split.lower() == "all":
        raise InputError(f"invalid split name {split!r}: use letters, digits and '_' (not 'all')")


class _StereoBuilder(tfds.core.GeneratorBasedBuilder, skip_registration=True):
    """Common part: features, entry loop with skip_bad bookkeeping, progress bar, skipped.json.

    Subclasses define ``_ground_truth`` (extra feature names), ``_split_entries(root)`` ({split: entries}) and
    ``_records(root, split, entry)`` (the list of records of one entry; DataFileError for a bad file).
    Builders are not registered with TFDS: ``tfds.data_source`` reads the built files and their stored features.
    """

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "First release."}
    MANUAL_DOWNLOAD_INSTRUCTIONS = "Pass the dataset's root folder as the manual dir (see tiodepth_jax.data.builders)."
    _ground_truth: tuple[str, ...] = ()
    # No code folder: the builders download nothing, so they need no checksums file next to the code (finding
    # that folder makes tfds import importlib_resources, which is not installed).
    code_path = None

    def __init__(self, *, skip_bad: bool = False, progress: bool = False, **kwargs):
        """skip_bad: leave out entries with a bad file and list them in skipped.json (else the build fails).
        progress: show a progress bar per split. Other arguments go to ``tfds.core.GeneratorBasedBuilder``.
        """
        self.skip_bad, self.progress = skip_bad, progress
        self.skipped: list[dict] = []
        self.fx_baseline_per_width: dict[str, set[float]] = {}  # split -> K[0, 0] * baseline / W of its records
        super().__init__(**kwargs)

    def _info(self) -> tfds.core.DatasetInfo:
        return tfds.core.DatasetInfo(builder=self, description=type(self).__doc__,
                                     features=_features(self._ground_truth), disable_shuffling=True)

    def _split_generators(self, dl_manager):
        root = Path(dl_manager.manual_dir)
        return {split: self._generate_examples(root, split, entries)
                for split, entries in self._split_entries(root).items()}

    def _generate_examples(self, root: Path, split: str, entries: list):
        """Yield (index, record) for the records of every entry, in order; bad entries raise or are skipped."""
        index = 0
        for entry in tqdm(entries, desc=f"{self.name} {split}", unit=" entries", disable=not self.progress):
            try:
                records = self._records(root, split, entry)
            except DataFileError as error:
                self._bad(split, error)
                continue
            for record in records:
                self._note_camera(split, record)
                yield index, record
                index += 1
        if index == 0:
            bad = [item["file"] for item in self.skipped if item["split"] == split]
            detail = f"; skipped as bad: {', '.join(bad[:3])}" if bad else ""
            raise InputError(f"{self.name}: split {split!r} has no examples ({len(entries)} entries{detail})")

    def _note_camera(self, split: str, record: dict) -> None:
        with Image.open(io.BytesIO(record["image_s"])) as image:  # reads the header only
            width = image.width
        value = float(record["K"][0, 0]) * float(record["baseline"]) / width
        self.fx_baseline_per_width.setdefault(split, set()).add(round(value, 9))

    def _calibration_summary(self) -> dict:
        """What calibration.json holds: ``fx_baseline_per_width`` {split: distinct K[0, 0] * baseline / W}."""
        return {"fx_baseline_per_width": {split: sorted(values)
                                          for split, values in self.fx_baseline_per_width.items()}}

    def _bad(self, split: str, error: DataFileError) -> None:
        """Raise ``error``, or with skip_bad note it for skipped.json."""
        if not self.skip_bad:
            raise error
        self.skipped.append({"split": split, "file": str(error.path), "reason": error.reason})

    # build() reports what was built; TFDS's messages about download sizes do not apply to local files.
    def _log_download_bytes(self) -> None:
        pass

    def _log_download_done(self) -> None:
        pass

    def _post_download_and_prepare_hook(self) -> None:
        (Path(self.data_dir) / CALIBRATION_FILE).write_text(json.dumps(self._calibration_summary(), indent=1) + "\n")
        if self.skip_bad:
            path = Path(self.data_dir) / SKIPPED_FILE
            path.write_text(json.dumps(self.skipped, indent=1) + "\n")
            if self.skipped:
                logging.warning("%s: skipped %d bad entries, listed in %s", self.name, len(self.skipped), path)


class KittiRaw(_StereoBuilder, skip_registration=True):
    """KITTI raw stereo pairs of the lines of split files ("<date>/<drive> <frame> <l|r>"), one record per line.

    image_s is the line's camera (image_02 for 'l', image_03 for 'r'), image_o the other camera of the frame;
    K and baseline from kitti.intrinsics_and_baseline at the raw image size (fixed_k: KITTI's fixed K and 0.54 m).
    """

    name = "kitti_raw"
    DEFAULT_SPLIT_FILES = {"train": "train_list.txt"}

    def __init__(self, *, split_files: Mapping[str, str | Path] | None = None, fixed_k: bool = True, **kwargs):
        """split_files: {split name: split file}; None takes DEFAULT_SPLIT_FILES under the root (manual dir)."""
        self.split_files = None if split_files is None else {k: Path(v) for k, v in split_files.items()}
        self.fixed_k = fixed_k
        super().__init__(**kwargs)

    def _default_split_files(self) -> dict[str, str]:
        return self.DEFAULT_SPLIT_FILES

    def _split_entries(self, root: Path) -> dict[str, list[kitti.SplitLine]]:
        files = self.split_files or {split: root / name for split, name in self._default_split_files().items()}
        for split in files:
            _check_split_name(split)
        return {split: kitti.read_split(path) for split, path in files.items()}

    def _records(self, root: Path, split: str, line: kitti.SplitLine) -> list[dict]:
        return [self._pair_record(root, line)]

    def _pair_record(self, root: Path, line: kitti.SplitLine) -> dict:
        path_s, path_o = kitti.image_path(root, line), kitti.image_path(root, line, other=True)
        (image_s, size_s), (image_o, size_o) = encoded_rgb(path_s), encoded_rgb(path_o)
        _check_same_size(path_s, size_s, path_o, size_o)
        K, baseline = kitti.intrinsics_and_baseline(root, line, size_s, fixed_k=self.fixed_k)
        return _record(image_s, image_o, K, baseline, 1.0 if line.side == "l" else -1.0, str(line))


class KittiEigenTest(KittiRaw, skip_registration=True):
    """KITTI raw test pairs (the Eigen test split) with depth_gt of image_s at native resolution (0 = invalid).

    Config raw: the velodyne scan projected into the line's camera with vel_depth=True (spec §7.4).
    Config improved: the improved ground truth ``proj_depth/groundtruth/image_0{2,3}/<frame>.png`` / 256.
    """

    name = "kitti_eigen_test"
    BUILDER_CONFIGS = [
        tfds.core.BuilderConfig(name="raw", description="velodyne ground truth (spec §7.4, vel_depth=True)"),
        tfds.core.BuilderConfig(name="improved", description="improved ground truth (proj_depth PNGs)"),
    ]
    CONFIG_SPLIT_FILES = {"raw": {"test": "test_list.txt"}, "improved": {"test": "test_improved_list.txt"}}
    _ground_truth = ("depth_gt",)

    def _default_split_files(self) -> dict[str, str]:
        return self.CONFIG_SPLIT_FILES[self.builder_config.name]

    def _records(self, root: Path, split: str, line: kitti.SplitLine) -> list[dict]:
        if self.builder_config.name == "raw":
            depth = kitti.generate_depth_map(kitti.calib_dir(root, line), kitti.velodyne_path(root, line),
                                             cam=_SIDE_CAMERA[line.side], vel_depth=True)
        else:
            depth = kitti.read_depth_png(kitti.improved_gt_path(root, line))
        return [{**self._pair_record(root, line), "depth_gt": depth}]


def read_kitti2015_split(path) -> list[int]:
    """Indices of a KITTI 2015 split file of ``<index:06d>_10`` lines; DataFileError naming the file and line."""
    path = Path(path)
    try:
        text = path.read_text()
    except (OSError, UnicodeDecodeError) as err:
        raise DataFileError(path, f"cannot read split file ({err})") from err
    indices = []
    for number, raw in enumerate(text.splitlines(), start=1):
        if raw.strip():
            match = _KITTI2015_LINE.fullmatch(raw.strip())
            if match is None:
                raise DataFileError(path, f"line {number}: expected '<index:06d>_10', got {raw!r}")
            indices.append(int(match.group(1)))
    return indices


def kitti2015_indices(root) -> list[int]:
    """Indices of every ``<root>/training/image_2/<index:06d>_10.png``, sorted."""
    folder = Path(root) / "training" / "image_2"
    if not folder.is_dir():
        raise DataFileError(folder, "missing folder (is the root a KITTI 2015 folder?)")
    names = (p.name.removesuffix(".png") for p in folder.iterdir() if p.suffix == ".png")
    return sorted(int(name[:6]) for name in names if _KITTI2015_LINE.fullmatch(name))


class KittiStereo2015(_StereoBuilder, skip_registration=True):
    """KITTI 2015 training pairs (image_2 = image_s, image_3 = image_o) with disp_gt (disp_occ_0 / 256) and
    depth_gt = KITTI2015_FX_BASELINE / disp_gt (0 where invalid); K = KITTI_K, baseline 0.54 m, direct +1.
    """

    name = "kitti_stereo2015"
    _ground_truth = ("depth_gt", "disp_gt")

    def __init__(self, *, split_files: Mapping[str, str | Path] | None = None, **kwargs):
        """split_files: {split name: file of ``<index:06d>_10`` lines}; None: split ``train`` of every pair."""
        self.split_files = None if split_files is None else {k: Path(v) for k, v in split_files.items()}
        super().__init__(**kwargs)

    def _split_entries(self, root: Path) -> dict[str, list[int]]:
        if self.split_files is None:
            return {"train": kitti2015_indices(root)}
        for split in self.split_files:
            _check_split_name(split)
        return {split: read_kitti2015_split(path) for split, path in self.split_files.items()}

    def _records(self, root: Path, split: str, index: int) -> list[dict]:
        path_s, path_o, disp_path = kitti.kitti2015_paths(root, index)
        (image_s, size_s), (image_o, size_o) = encoded_rgb(path_s), encoded_rgb(path_o)
        _check_same_size(path_s, size_s, path_o, size_o)
        disp = kitti.read_kitti2015_disparity(disp_path)
        depth = np.zeros_like(disp)
        depth[disp > 0] = kitti.KITTI2015_FX_BASELINE / disp[disp > 0]
        return [_record(image_s, image_o, kitti.KITTI_K, kitti.KITTI_BASELINE, 1.0, f"{index:06d}_10",
                        depth_gt=depth, disp_gt=disp)]


class StereoFolder(_StereoBuilder, skip_registration=True):
    """Rectified stereo pairs of a stereo folder (tiodepth_jax.data.stereo_folder): one 'l' record per pair
    (image_s = left, direct +1), and with both_sides also an 'r' record (views swapped, direct -1) per pair of
    the ``train`` split. K and baseline from the pair's calibration.yaml. With with_depth, depth_gt holds the
    left image's depth file ('l' records) or zeros (pairs without one and 'r' records).
    """

    name = "stereo_folder"

    def __init__(self, *, with_depth: bool = False, both_sides: bool = False, **kwargs):
        self.with_depth, self.both_sides = with_depth, both_sides
        self.alignments: dict[str, dict] = {}  # "<calibration file> <W>x<H>" -> the alignment applied
        super().__init__(**kwargs)

    @property
    def _ground_truth(self) -> tuple[str, ...]:
        return ("depth_gt",) if self.with_depth else ()

    def _split_entries(self, root: Path) -> dict[str, list[stereo_folder.StereoPair]]:
        return {split: stereo_folder.list_pairs(root, split, on_bad=lambda error, s=split: self._bad(s, error))
                for split in stereo_folder.list_splits(root)}

    def _records(self, root: Path, split: str, pair: stereo_folder.StereoPair) -> list[dict]:
        (left, size_l), (right, size_r) = encoded_rgb(pair.left), encoded_rgb(pair.right)
        stereo_folder.check_pair(pair, size_l, size_r)
        calib = pair.calibration
        depth = stereo_folder.read_depth(pair.depth, size_l) if self.with_depth and pair.depth else None
        aligned = stereo_folder.alignment(calib.doffs, size_l[1])
        if calib.doffs:
            left, right = _aligned_images(left, right, calib.doffs)
            if depth is not None:
                depth = depth[:, aligned.left_start:aligned.left_start + aligned.width]
        K = aligned.K(calib)
        self.alignments[f"{calib.path.relative_to(root)} {size_l[1]}x{size_l[0]}"] = {
            "doffs": calib.doffs, "left_columns": [aligned.left_start, aligned.left_start + aligned.width],
            "right_start": aligned.right_start, "K": K.tolist()}
        gt_l, gt_r = {}, {}
        if self.with_depth:
            gt_r = {"depth_gt": np.zeros((size_l[0], aligned.width), np.float32)}
            gt_l = {"depth_gt": depth} if depth is not None else gt_r
        records = [_record(left, right, K, calib.baseline, 1.0, f"{pair.name} l", **gt_l)]
        if self.both_sides and split == "train":
            records.append(_record(right, left, K, calib.baseline, -1.0, f"{pair.name} r", **gt_r))
        return records

    def _calibration_summary(self) -> dict:
        """Adds ``alignments``: per calibration file and image size, the principal-point alignment applied."""
        return {**super()._calibration_summary(), "alignments": self.alignments}


def _aligned_images(left: bytes, right: bytes, doffs: float) -> tuple[bytes, bytes]:
    """Encoded views -> the PNG bytes of :func:`stereo_folder.align_pair`'s views."""
    with Image.open(io.BytesIO(left)) as image_l, Image.open(io.BytesIO(right)) as image_r:
        aligned_l, aligned_r, _ = stereo_folder.align_pair(image_l.convert("RGB"), image_r.convert("RGB"), doffs)
        return _png(aligned_l), _png(aligned_r)


BUILDERS = {cls.name: cls for cls in (KittiRaw, KittiEigenTest, KittiStereo2015, StereoFolder)}


@dataclasses.dataclass(frozen=True)
class BuildResult:
    """What :func:`build` made: the dataset's version folder, examples per split, the skipped entries."""

    path: Path
    num_examples: dict[str, int]
    skipped: list[dict]


def _split_file_map(split_file, default_split: str) -> dict[str, Path] | None:
    """None, one file (for ``default_split``) or a {split: file} mapping -> {split: Path} or None."""
    if split_file is None:
        return None
    if isinstance(split_file, Mapping):
        return {split: Path(path) for split, path in split_file.items()}
    return {default_split: Path(split_file)}


def _builder_options(name: str, root: Path, *, split_file, config, fixed_k, both_sides) -> dict:
    """The constructor arguments of dataset ``name``; ValueError for an option that does not apply to it."""
    not_for = [option for option, given, allowed in (
        ("split_file", split_file is not None, ("kitti_raw", "kitti_eigen_test", "kitti_stereo2015")),
        ("config", config is not None, ("kitti_eigen_test",)),
        ("fixed_k", fixed_k is not None, ("kitti_raw", "kitti_eigen_test")),
        ("both_sides", both_sides, ("stereo_folder",))) if given and name not in allowed]
    if not_for:
        raise InputError(f"option(s) {', '.join(not_for)} do not apply to dataset {name}")
    if name == "stereo_folder":
        return {"with_depth": stereo_folder.has_depth(root), "both_sides": both_sides}
    options = {"split_files": _split_file_map(split_file, "test" if name == "kitti_eigen_test" else "train")}
    if name == "kitti_eigen_test":
        if config not in (None, "raw", "improved"):
            raise InputError(f"unknown config {config!r} of kitti_eigen_test (use raw or improved)")
        options["config"] = config or "raw"
    if fixed_k is not None:
        options["fixed_k"] = fixed_k
    return options


def build(name: str, root, data_dir, *, split_file=None, config: str | None = None, skip_bad: bool = False,
          fixed_k: bool | None = None, both_sides: bool = False, overwrite: bool = False,
          progress: bool = True) -> BuildResult:
    """Build dataset ``name`` (a key of BUILDERS) from the raw files under ``root`` into ``data_dir``.

    split_file: a split file (split ``train``; ``test`` for kitti_eigen_test) or a {split: file} mapping;
    None takes the builder's default. config: ``raw`` (default) or ``improved`` for kitti_eigen_test.
    fixed_k (KITTI raw sets): KITTI's fixed K and 0.54 m (default True) or the calibration files' K.
    both_sides (stereo_folder): add 'r' records to the train split. skip_bad: skip entries with bad files and
    list them in skipped.json instead of failing. overwrite: rebuild a dataset that already exists (else
    FileExistsError). progress: a progress bar per split (TFDS's own bars are turned off).
    Options that do not apply to ``name`` raise InputError.
    """
    if name not in BUILDERS:
        raise InputError(f"unknown dataset {name!r}; choose one of {', '.join(BUILDERS)}")
    root = Path(root)
    if not root.is_dir():
        raise DataFileError(root, "dataset root is not a directory")
    options = _builder_options(name, root, split_file=split_file, config=config, fixed_k=fixed_k,
                               both_sides=both_sides)
    builder = BUILDERS[name](data_dir=str(data_dir), file_format="array_record", skip_bad=skip_bad,
                             progress=progress, **options)
    if (builder.data_path / "dataset_info.json").exists() and not overwrite:
        raise InputExistsError(f"{builder.data_dir}: dataset already built (overwrite=True / --overwrite rebuilds it)")
    tfds.disable_progress_bar()
    download_config = tfds.download.DownloadConfig(manual_dir=str(root))
    if overwrite:
        download_config.download_mode = tfds.download.GenerateMode.REUSE_CACHE_IF_EXISTS
    # The outermost of the dataset's folders (<name>/, <name>/<config>/) that this build creates.
    new_folder = next((f for f in (Path(data_dir) / name, builder.data_path.parent) if not f.exists()), None)
    try:
        with tempfile.TemporaryDirectory() as download_dir:  # TFDS's (unused) downloads folder
            builder.download_and_prepare(download_dir=download_dir, download_config=download_config)
    except BaseException:
        if new_folder is not None:  # leave no empty dataset folder behind
            shutil.rmtree(new_folder, ignore_errors=True)
        raise
    splits = builder.info.splits
    return BuildResult(Path(builder.data_dir), {split: splits[split].num_examples for split in splits},
                       builder.skipped)
