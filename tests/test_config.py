"""Training configuration: shipped YAML files, strict checking with key paths, overrides, `_base`, round trips."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

from tiodepth_jax.config import (ConfigError, DataConfig, GroupConfig, MeshConfig, TrainConfig, load_config,
                                 load_config_dict, parse_override)
from tiodepth_jax.models.depth_anything_v2 import DepthAnythingV2Config
from tiodepth_jax.models.tiodepth import TiODepthConfig
from tiodepth_jax.models.vgg import VGG19Config

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
SHIPPED = sorted(CONFIGS.glob("*.yaml"))
BASE = CONFIGS / "tiodepth_dinov2b.yaml"


def write(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def minimal(tmp_path: Path, extra: str = "", name: str = "x.yaml") -> Path:
    return write(tmp_path, name, "workdir: runs/x\ndata:\n  name: kitti_raw\n" + extra)


def member_lrs(group: GroupConfig, epoch: int) -> dict[str, float]:
    """{member: learning rate} of a resolved group during 1-based `epoch` (spec §6.2 table)."""
    return {m: rate * group.lr * group.lr_factor(epoch) for m, rate in group.members.items()}


def raises(match: str):
    return pytest.raises(ConfigError, match=re.escape(match))


# --------------------------------------------------------------------------------------------------------
# Shipped configs


def test_every_shipped_config_loads_and_round_trips():
    assert {p.name for p in SHIPPED} >= {"tiodepth_dinov2b.yaml", "tiodepth_dinov2s.yaml", "tiodepth_dinov2l.yaml",
                                         "tiodepth_dinov2g.yaml", "demo.yaml"}
    for path in SHIPPED:
        cfg = load_config(path)
        assert TrainConfig.from_dict(cfg.to_dict()) == cfg, path.name
        assert TrainConfig.from_dict(yaml.safe_load(cfg.to_yaml())) == cfg, path.name
        assert cfg.data.name != "kitti_raw" or cfg.data.data_dir is None  # the user sets the KITTI root


def test_dinov2b_is_the_original_setup():
    cfg = load_config(BASE)
    assert cfg.model.variant == "vitb" and cfg.model.normalisation == "fork" and cfg.model.frozen == ("encoder",)
    assert cfg.model.image_size == (252, 840) == cfg.crop_size and cfg.data.image_size == (378, 1260)
    assert (cfg.batch_size, cfg.epochs, cfg.seed) == (8, 50, 2021)
    assert cfg.data.name == "kitti_raw" and cfg.init_from == "checkpoints/dav2_vitb"
    assert cfg.optim.betas == (0.5, 0.999) and cfg.optim.lr == 1e-4 and cfg.optim.eps == 1e-8
    assert [g.members for _, g in cfg.optim.groups] == [{"BB": 1.0}, {"CA": 1.0, "DE": 0.1}, {"MO": 1.0, "DE": 0.1}]
    assert [g.st_epoch for _, g in cfg.optim.groups] == [1, 21, 31]
    assert [g.milestones for _, g in cfg.optim.groups] == [(20, 30, 40, 45), (30, 40, 45), (40, 45)]
    assert cfg == TrainConfig.from_dict({"workdir": cfg.workdir, "data": {"name": "kitti_raw", "crop_size": [252, 840]},
                                         "val": {"name": "kitti_eigen_test/raw"},
                                         "init_from": cfg.init_from, "vgg_from": cfg.vgg_from})  # = the defaults
    # spec §6.2 learning-rate table
    o = cfg.optim
    table = {1: ({"BB": 1e-4}, None, None),
             21: ({"BB": 5e-5}, {"CA": 1e-4, "DE": 1e-5}, None),
             31: ({"BB": 2.5e-5}, {"CA": 5e-5, "DE": 5e-6}, {"MO": 1e-4, "DE": 1e-5}),
             41: ({"BB": 1.25e-5}, {"CA": 2.5e-5, "DE": 2.5e-6}, {"MO": 5e-5, "DE": 5e-6}),
             50: ({"BB": 6.25e-6}, {"CA": 1.25e-5, "DE": 1.25e-6}, {"MO": 2.5e-5, "DE": 2.5e-6})}
    for epoch, rows in table.items():
        for (name, group), want in zip(o.groups, rows):
            assert group.active(epoch) == (want is not None)
            if want is not None:
                assert member_lrs(group, epoch) == pytest.approx(want)
    assert o.groups[1] == ("param_group2", GroupConfig(st_epoch=21, milestones=(30, 40, 45), gamma=0.5, lr=1e-4,
                                                       rates={"CA": 1.0, "DE": 0.1}))
    with raises("data.data_dir is not set"):
        cfg.data.require_data_dir()
    assert cfg.checkpoint_dir == str(Path("runs/tiodepth_dinov2b/checkpoints"))


def test_variants_inherit_the_base():
    base = load_config(BASE).to_dict()
    for v in "slg":
        cfg = load_config(CONFIGS / f"tiodepth_dinov2{v}.yaml")
        assert cfg.model.variant == f"vit{v}" and cfg.init_from == f"checkpoints/dav2_vit{v}"
        d = cfg.to_dict()
        assert d["optim"] == base["optim"] and d["data"] == base["data"] and d["val"] == base["val"]
    g = load_config(CONFIGS / "tiodepth_dinov2g.yaml")
    assert g.remat and g.dtype == "bfloat16" and (g.mesh.data, g.mesh.fsdp) == (1, -1)


def test_demo_is_small_and_runs_all_stages():
    cfg = load_config(CONFIGS / "demo.yaml")
    assert cfg.data.name == "synthetic" and cfg.init_from is None and cfg.vgg_from is None
    assert cfg.model.variant == "vits" and cfg.model.encoder_depth == 2 and cfg.model.encoder_taps == (0, 1, 1, 1)
    assert cfg.batch_size == 2 and cfg.epochs <= 10 and max(cfg.crop_size) <= 252
    assert all(g.active(cfg.epochs) for _, g in cfg.optim.groups)
    starts = [g.st_epoch for _, g in cfg.optim.groups]
    assert starts[0] == 1 and starts == sorted(set(starts))
    assert cfg.val.every_n_epochs == 1 and cfg.checkpoint.every_n_epochs == 1
    assert cfg.data.require_data_dir() is None
    synthetic = pytest.importorskip("tiodepth_jax.data.synthetic")  # the options fit the dataset
    SceneConfig, SyntheticStereo = synthetic.SceneConfig, synthetic.SyntheticStereo
    opts = dict(cfg.data.synthetic)
    scene = SceneConfig(height=cfg.crop_size[0], width=cfg.crop_size[1], **opts.pop("scene"))
    assert len(SyntheticStereo(scene, **opts)) == opts["size"]


# --------------------------------------------------------------------------------------------------------
# Errors name the key path and the source


def test_unknown_keys(tmp_path):
    with raises(f"unknown config key 'optim.betaz' in {tmp_path / 'x.yaml'} (did you mean 'betas'?)"):
        load_config(minimal(tmp_path, "optim:\n  betaz: [0.5, 0.9]\n"))
    with raises("unknown config key 'epochz'"):
        load_config(minimal(tmp_path, "epochz: 3\n"))
    with raises("unknown config key 'model.varient'"):
        load_config(minimal(tmp_path, "model:\n  varient: vits\n"))
    with raises("unknown config key 'optim.param_group2.milestone'"):
        load_config(minimal(tmp_path, "optim:\n  param_group2:\n    milestone: [3]\n"))
    with raises("optim.param_group1.rates.XX: unknown member 'XX'"):
        load_config(minimal(tmp_path, "optim:\n  param_group1:\n    rates: {XX: 1.0}\n"))
    with raises("losses.param_group4: unknown group; known: param_group1"):
        load_config(minimal(tmp_path, "losses:\n  param_group4: []\n"))
    with raises("losses.param_group1: expected {term name: term mapping}"):
        load_config(minimal(tmp_path, "losses:\n  param_group1: [1, 2]\n"))


def test_wrong_types(tmp_path):
    with raises(f"model.image_size: expected a list of 2 ints, got 'abc' in {tmp_path / 'x.yaml'}"):
        load_config(minimal(tmp_path, "model:\n  image_size: abc\n"))
    with raises("model.image_size: expected a list of 2 ints, got [252, 'x']"):
        load_config(minimal(tmp_path, "model:\n  image_size: [252, x]\n"))
    with raises("model.image_size: expected a list of 2 ints, got [252, 840, 3]"):
        load_config(minimal(tmp_path, "model:\n  image_size: [252, 840, 3]\n"))
    with raises("epochs: expected an int, got 2.5"):
        load_config(minimal(tmp_path, "epochs: 2.5\n"))
    with raises("seed: expected an int, got True"):
        load_config(minimal(tmp_path, "seed: true\n"))
    with raises("remat: expected a bool or one of 'nothing_saveable', 'dots_with_no_batch_dims_saveable', "
                "got 'maybe'"):
        load_config(minimal(tmp_path, "remat: maybe\n"))
    with raises("dtype: expected one of 'float32', 'bfloat16', got 'float16'"):
        load_config(minimal(tmp_path, "dtype: float16\n"))
    with raises("optim.betas: expected a list of 2 numbers, got [0.5]"):
        load_config(minimal(tmp_path, "optim:\n  betas: [0.5]\n"))
    with raises("init_from: expected a string or null, got 3"):
        load_config(minimal(tmp_path, "init_from: 3\n"))
    with raises("optim: expected a mapping, got [1, 2]"):
        load_config(minimal(tmp_path, "optim: [1, 2]\n"))
    with raises("mesh.distributed: expected a bool or one of 'auto', got 'yes please'"):
        load_config(minimal(tmp_path, "mesh:\n  distributed: yes please\n"))


def test_bad_values_name_the_key(tmp_path):
    with raises("model.image_size: [250, 840] must be positive multiples of 14"):
        load_config(minimal(tmp_path, "model:\n  image_size: [250, 840]\n"))
    with raises("data.crop_size: [126, 420] must equal model.image_size [252, 840]"):
        load_config(minimal(tmp_path, "data:\n  name: kitti_raw\n  crop_size: [126, 420]\n"))
    with raises("optim.param_group2.st_epoch: the groups must start in order"):
        load_config(minimal(tmp_path, "optim:\n  param_group2: {st_epoch: 40}\n"))
    with raises("optim.param_group1.milestones: must be strictly increasing"):
        load_config(minimal(tmp_path, "optim:\n  param_group1: {milestones: [30, 20]}\n"))
    with raises("model: decoder channels (16, 8, 16, 16): scale 1 has an MFM block"):
        load_config(minimal(tmp_path, "model:\n  decoder_channels: [16, 8, 16, 16]\n"))
    with raises("model: unknown Depth-Anything-V2 variant 'vitx'"):
        load_config(minimal(tmp_path, "model:\n  variant: vitx\n"))
    with raises("model: taps (0, 5, 8, 11) must lie in [0, 2)"):
        load_config(minimal(tmp_path, "model:\n  encoder_depth: 2\n  encoder_taps: [0, 5, 8, 11]\n"))
    with raises("data.name: unknown dataset 'kiti'"):
        load_config(write(tmp_path, "y.yaml", "workdir: w\ndata: {name: kiti}\n"))
    with raises("mesh.fsdp: only one mesh axis can be -1"):
        load_config(minimal(tmp_path, "mesh: {data: -1, fsdp: -1}\n"))
    with raises("data.repeat: must be >= 1, got 0"):
        load_config(BASE, ["data.repeat=0"])


def test_missing_required_keys(tmp_path):
    with raises(f"missing required config key 'data.name' in {tmp_path / 'y.yaml'}"):
        load_config(write(tmp_path, "y.yaml", "workdir: w\ndata:\n  data_dir: /x\n"))
    with raises("missing required config key 'workdir'"):
        load_config(write(tmp_path, "z.yaml", "data: {name: synthetic}\n"))
    with raises("missing required config key 'data'"):
        TrainConfig.from_dict({"workdir": "w"})
    with raises("optim.param_group1.st_epoch: expected an int, got None"):
        load_config(minimal(tmp_path, "optim:\n  param_group1: {st_epoch: null}\n"))


def test_strict_types_and_lenient_floats(tmp_path):
    with raises("mesh.data: expected an int, got False"):  # a bool is not an int ...
        load_config(minimal(tmp_path, "mesh: {data: false}\n"))
    with raises("remat: expected a bool or one of 'nothing_saveable', 'dots_with_no_batch_dims_saveable', "
                "got 1"):  # ... nor an int a bool
        load_config(minimal(tmp_path, "remat: 1\n"))
    with raises("epochs: expected an int, got '3'"):
        load_config(minimal(tmp_path, "epochs: '3'\n"))
    with raises("val.modes: expected a list of strings, got ['Mono', 3]"):
        load_config(minimal(tmp_path, "val: {modes: [Mono, 3]}\n"))
    with raises("optim.param_group1.rates.BB: expected a number, got True"):
        load_config(minimal(tmp_path, "optim:\n  param_group1: {rates: {BB: true}}\n"))
    # floats take ints and numeric strings (YAML 1.1 reads 1e-4 and 5e-1 as strings), also inside lists and mappings
    cfg = load_config(minimal(tmp_path, "optim:\n  lr: 1e-4\n  betas: [0, 0.9]\n  param_group1: {rates: {BB: 1}}\n"
                                        "data:\n  name: kitti_raw\n  scale_range: [5e-1, 1]\n"))
    assert (cfg.optim.lr, cfg.optim.betas, cfg.data.scale_range) == (1e-4, (0.0, 0.9), (0.5, 1.0))
    assert all(type(v) is float for v in (cfg.optim.lr, *cfg.optim.betas, *cfg.data.scale_range,
                                          *cfg.optim.param_group1.rates.values()))
    assert type(load_config(minimal(tmp_path, "model: {min_disp: 2}\n")).model.min_disp) is float
    with raises("config values must be strings, numbers, bools, nulls, lists or mappings"):
        load_config(minimal(tmp_path, "data:\n  name: synthetic\n  synthetic: {when: 2021-01-01}\n"))


def test_best_metric_needs_its_validation_metric():
    with raises("checkpoint.best_metric: d1_all is computed on TFDS validation sets with ground truth"):
        load_config(BASE, ["checkpoint.best_metric=d1_all", "val.name=synthetic"])
    assert load_config(BASE, ["checkpoint.best_metric=d1_all"])  # EPE / D1 from the Eigen test set's depth


def test_best_ranks_the_path_of_best_mode():
    from tiodepth_jax.train.loop import val_score
    assert load_config(BASE).ranked_mode == "Refine"  # the last of val.modes
    assert load_config(BASE, ["val.modes=[Stereo, Mono]"]).ranked_mode == "Mono"
    assert load_config(BASE, ["checkpoint.best_mode=Stereo"]).ranked_mode == "Stereo"
    with raises("checkpoint.best_mode: Refine is not validated: val.modes is ['Mono', 'Stereo']"):
        load_config(BASE, ["checkpoint.best_mode=Refine", "val.modes=[Mono, Stereo]"])
    with raises("checkpoint.best_mode: expected one of 'Mono', 'Stereo', 'Refine' or null, got 'refine'"):
        load_config(BASE, ["checkpoint.best_mode=refine"])
    metrics = ("abs_rel", "sq_rel", "rmse", "rmse_log", "a1", "a2", "a3")
    first = {f"val/{m}/{k}": 1.0 for m in ("Mono", "Stereo") for k in metrics}
    later = {**first, "val/Mono/abs_rel": 0.5, "val/Stereo/abs_rel": 2.0, "val/Stereo/a1": 0.5}
    assert val_score(later, "Mono", "abs_rel", None) == (0.5, None)
    assert val_score(later, "Stereo", "a1", None) == (-0.5, None)  # higher is better: negated
    _, reference = val_score(first, "Stereo", "mean_rel", None)  # the first validation is the reference
    assert reference == {k: 1.0 for k in metrics}
    assert val_score(later, "Stereo", "mean_rel", reference)[0] == pytest.approx((1.0 + 0.5) / 7)
    assert val_score(later, "Mono", "mean_rel", reference)[0] == pytest.approx(-0.5 / 7)


def test_model_configs_use_the_same_checks():
    tio = TiODepthConfig(encoder_depth=2, encoder_taps=(0, 1, 1, 1), image_size=(126, 420))
    assert TiODepthConfig.from_dict(tio.to_dict()) == tio
    assert TiODepthConfig.from_dict({"image_size": [126, 420], "frozen": []}).image_size == (126, 420)  # -> tuples
    with raises("not a TiO-Depth config: unknown config key 'n_binz' (did you mean 'n_bins'?)"):
        TiODepthConfig.from_dict({"n_binz": 49})
    with raises("not a TiO-Depth config: n_bins: expected an int, got 49.0"):
        TiODepthConfig.from_dict({"n_bins": 49.0})
    with raises("not a TiO-Depth config: frozen entry 'head' must start with"):  # __post_init__ checks
        TiODepthConfig.from_dict({"frozen": ["head"]})
    assert TiODepthConfig.from_dict({"d2d": "4e2"}).d2d == 400.0  # YAML 1.1 reads 4e2 as a string
    dav2 = DepthAnythingV2Config.preset("vits", depth=2, taps=(0, 1, 1, 1))
    assert DepthAnythingV2Config.from_dict(dav2.to_dict()) == dav2
    with raises("not a Depth-Anything-V2 model config: missing required config key 'dinov2.embed_dim'"):
        DepthAnythingV2Config.from_dict({**dav2.to_dict(), "dinov2": {}})
    with raises("not a Depth-Anything-V2 model config: dpt.out_channels: expected a list of 4 ints, got [48, 96]"):
        DepthAnythingV2Config.from_dict({**dav2.to_dict(), "dpt": {**dav2.to_dict()["dpt"], "out_channels": [48, 96]}})
    assert VGG19Config.from_dict({"n_slices": 2}) == VGG19Config(2)
    with raises("not a VGG19 features config: unknown config key 'slices' (did you mean 'n_slices'?)"):
        VGG19Config.from_dict({"slices": 2})


# --------------------------------------------------------------------------------------------------------
# Overrides


def test_overrides(tmp_path):
    cfg = load_config(BASE, ["optim.lr=2e-4", "model.variant=vits", "data.data_dir=/data/kitti"])
    assert cfg.optim.lr == 2e-4 and isinstance(cfg.optim.lr, float)  # YAML reads 2e-4 as a string
    assert member_lrs(cfg.optim.groups[1][1], 21) == pytest.approx({"CA": 2e-4, "DE": 2e-5})
    assert cfg.model.variant == "vits" and cfg.data.require_data_dir() == "/data/kitti"
    cfg = load_config(BASE, ["model.image_size=[126, 420]", "data.crop_size=null", "init_from=null",
                             "optim.param_group2={lr: 1e-3}", "mesh.distributed=false", "losses.param_group3=[]"])
    assert cfg.model.image_size == (126, 420) == cfg.crop_size and cfg.init_from is None
    assert cfg.optim.param_group2.lr == 1e-3 and cfg.optim.param_group2.st_epoch == 21  # mappings merge
    assert cfg.mesh.distributed is False and cfg.losses == {"param_group3": []}
    cfg = load_config(BASE, ["optim.param_group3.rates.DE=0"])  # a zero rate removes a member
    assert cfg.optim.param_group3.members == {"MO": 1.0}
    assert load_config(BASE, ["epochs=3", "epochs=4"]).epochs == 4  # in order


def test_bad_overrides():
    with raises("unknown config key 'optim.betaz' (override 'optim.betaz=[0.5, 0.9]')"):
        load_config(BASE, ["optim.betaz=[0.5, 0.9]"])
    with raises("optim.lr: expected a number, got 'abc' (override 'optim.lr=abc')"):
        load_config(BASE, ["optim.lr=abc"])
    with raises("model.image_size: expected a list of 2 ints, got 'abc' (override 'model.image_size=abc')"):
        load_config(BASE, ["model.image_size=abc"])
    with raises("override 'optim.lr': expected key.sub=value"):
        load_config(BASE, ["optim.lr"])
    with raises("override 'optim..lr=1': 'optim..lr' is not a dotted key path"):
        parse_override("optim..lr=1")
    with raises("override 'seed.x=1': 'seed' is not a section"):
        load_config(BASE, ["seed.x=1"])
    with raises("override '_base=x.yaml': _base can only be used inside YAML files"):
        load_config(BASE, ["_base=x.yaml"])
    with raises("override 'epochs=[1': the value is not valid YAML"):
        load_config(BASE, ["epochs=[1"])
    with raises("data.crop_size: [252, 840] must equal model.image_size [126, 420]"):
        load_config(BASE, ["model.image_size=[126,420]"])


# --------------------------------------------------------------------------------------------------------
# _base includes


def test_base_merging(tmp_path):
    write(tmp_path, "root.yaml", "workdir: runs/root\nepochs: 7\ndata:\n  name: kitti_raw\n  data_dir: /r\n"
                                 "optim:\n  betas: [0.5, 0.9]\n  param_group1: {milestones: [2, 3]}\n")
    (tmp_path / "sub").mkdir()
    write(tmp_path / "sub", "mid.yaml", "_base: ../root.yaml\nepochs: 9\noptim:\n  lr: 3.0e-4\n")
    child = write(tmp_path / "sub", "child.yaml",
                  "_base: mid.yaml   # relative to this file\ndata:\n  image_size: [378, 1260]\n"
                  "optim:\n  betas: [0.9, 0.99]\n")
    cfg = load_config(child)
    assert cfg.workdir == "runs/root" and cfg.epochs == 9 and cfg.data.data_dir == "/r"  # dicts merge recursively
    assert cfg.optim.lr == 3e-4 and cfg.optim.betas == (0.9, 0.99)  # lists replace
    assert cfg.optim.param_group1.milestones == (2, 3) and cfg.optim.param_group1.rates == {"BB": 1.0}

    data, _ = load_config_dict(child, ["epochs=11"])
    assert "_base" not in data and data["epochs"] == 11

    multi = write(tmp_path, "multi.yaml", "_base: [root.yaml, sub/mid.yaml]\nseed: 1\n")
    assert load_config(multi).epochs == 9 and load_config(multi).seed == 1

    # an error in an included file names that file
    write(tmp_path, "bad_base.yaml", "workdir: w\ndata: {name: kitti_raw}\nmodel: {bogus: 1}\n")
    with raises(f"unknown config key 'model.bogus' in {tmp_path / 'bad_base.yaml'}"):
        load_config(write(tmp_path, "inc.yaml", "_base: bad_base.yaml\nepochs: 3\n"))

    write(tmp_path, "a.yaml", "_base: b.yaml\n")
    write(tmp_path, "b.yaml", "_base: a.yaml\n")
    with raises("circular _base include"):
        load_config(tmp_path / "a.yaml")
    with raises("_base: included file"):
        load_config(write(tmp_path, "m.yaml", "_base: nowhere.yaml\n"))
    with raises("cannot read config file"):
        load_config(tmp_path / "absent.yaml")
    with raises("must hold a mapping at the top level"):
        load_config(write(tmp_path, "list.yaml", "- 1\n- 2\n"))


# --------------------------------------------------------------------------------------------------------
# Round trip and helpers


def test_round_trip(tmp_path):
    cfg = load_config(CONFIGS / "demo.yaml", ["losses.param_group1=[{name: Mono_photo, type: photo, rate: 1}]",
                                              "data.synthetic.size=3"])
    d = cfg.to_dict()
    assert isinstance(d["model"]["image_size"], list) and d["losses"]["param_group1"][0]["rate"] == 1
    assert TrainConfig.from_dict(d) == cfg
    original_form = {"Refine_hints": {"type": "CostLoss", "rate": 1, "args": {"pred_n": "a", "targets_n": ["b"]}}}
    cfg2 = TrainConfig.from_dict({**d, "losses": {"param_group3": original_form}})
    assert cfg2.losses["param_group3"] == original_form and TrainConfig.from_dict(cfg2.to_dict()) == cfg2
    dumped = write(tmp_path, "resolved.yaml", cfg.to_yaml())
    again = load_config(dumped)
    assert again == cfg and again.data.synthetic == {"size": 3, "base_seed": 0, "scene": {}}
    assert hash(again) == hash(cfg)
    with raises("unknown config key 'bogus' in <dict>"):
        TrainConfig.from_dict({**d, "bogus": 1})


def test_mesh_and_data_helpers():
    m = MeshConfig()
    assert m.shape(8) == (8, 1) and MeshConfig(data=2, fsdp=-1).shape(8) == (2, 4)
    assert MeshConfig(data=2, fsdp=4).shape(8) == (2, 4)
    with raises("8 devices are not divisible by the fixed axis size 3"):
        MeshConfig(data=3, fsdp=-1).shape(8)
    with raises("data=2 x fsdp=2 != 8 devices"):
        MeshConfig(data=2, fsdp=2).shape(8)
    with pytest.raises(ValueError, match="crop window"):
        DataConfig(name="kitti_raw", image_size=(266, 840), crop_size=(252, 840))
