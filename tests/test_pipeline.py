"""The grain training pipeline: deterministic, host-count independent, resumable from the iterator state."""

import numpy as np
import pytest

from tiodepth_jax.data import pipeline, synthetic

SCENES = synthetic.SyntheticStereo(synthetic.SceneConfig(height=28, width=84, num_objects=2), 10)


def samples():
    return pipeline.SyntheticSamples(SCENES, crop_size=(14, 56))


def epoch(num_threads=0, **kw):
    opts = dict(batch_size=4, seed=7, epoch=3, num_threads=num_threads) | kw
    return list(pipeline.epoch_batches(samples(), **opts))


def assert_batches_equal(a, b):
    assert len(a) == len(b)
    for x, y in zip(a, b):
        assert x.keys() == y.keys()
        for k in x:
            np.testing.assert_array_equal(x[k], y[k], err_msg=k)


def test_batch_format_and_drop_last():
    out = epoch()
    assert len(out) == 2  # 10 samples, batch 4: the last incomplete batch is dropped
    b = out[0]
    assert set(b) == set(pipeline.TRAIN_KEYS)
    assert b["color_s"].shape == (4, 14, 56, 3) and b["K"].shape == (4, 4, 4) and b["direct"].shape == (4,)
    assert all(v.dtype == np.float32 for v in b.values())


def test_deterministic_and_thread_independent():
    assert_batches_equal(epoch(), epoch(num_threads=2))
    other = epoch(epoch=4)
    assert not np.array_equal(other[0]["color_s"], epoch()[0]["color_s"])  # a new epoch: a new order and draws


def test_process_shares_interleave_into_the_global_batch():
    whole = epoch()
    shares = [epoch(process_index=i, process_count=2) for i in range(2)]
    for step, b in enumerate(whole):
        for k in b:
            np.testing.assert_array_equal(b[k][0::2], shares[0][step][k])
            np.testing.assert_array_equal(b[k][1::2], shares[1][step][k])


def test_iterator_state_resumes_on_the_next_batch():
    ds = pipeline.epoch_batches(samples(), batch_size=2, seed=1, epoch=1, num_threads=2)
    it = iter(ds)
    next(it), next(it)
    state = it.get_state()
    rest = list(it)
    resumed = iter(pipeline.epoch_batches(samples(), batch_size=2, seed=1, epoch=1, num_threads=2))
    resumed.set_state(state)
    assert_batches_equal(rest, list(resumed))


def test_errors_name_the_problem(tmp_path):
    with pytest.raises(ValueError, match="fewer than batch_size 16"):
        pipeline.epoch_batches(samples(), batch_size=16, seed=0, epoch=1)
    with pytest.raises(ValueError, match="not divisible by the 3 processes"):
        pipeline.epoch_batches(samples(), batch_size=4, seed=0, epoch=1, process_count=3)
    with pytest.raises(ValueError, match="larger than the synthetic image size"):
        pipeline.SyntheticSamples(SCENES, crop_size=(42, 56))
    with pytest.raises(pipeline.DatasetNotBuiltError, match="python -m tiodepth_jax.data.build kitti_raw"):
        pipeline.open_source("kitti_raw", tmp_path, "train")
