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


class Records:
    """`n` records whose every array holds the record's index, plus one draw of the sample's generator."""

    def __init__(self, n):
        self.n = n

    def __len__(self):
        return self.n

    def sample(self, index, rng):
        draw = rng.random()
        return {k: np.full(2, draw if k == "direct" else index) for k in pipeline.TRAIN_KEYS}


def test_repeat_passes_over_the_dataset_within_an_epoch():
    """data.repeat: every record `repeat` times per epoch, each pass in its own order, each copy with its own
    augmentation draw; one pair 16 times over makes an epoch."""
    assert pipeline.steps_per_epoch(1, batch_size=8, repeat=16) == 2 and pipeline.steps_per_epoch(5, 4, 3) == 3
    out = list(pipeline.epoch_batches(Records(5), batch_size=4, seed=7, epoch=3, repeat=4, num_threads=0))
    assert len(out) == 5
    passes = np.concatenate([b["color_s"][:, 0] for b in out]).astype(int).reshape(4, 5)
    assert all(sorted(p) == list(range(5)) for p in passes)  # every record once per pass, 4 times per epoch
    assert len({tuple(p) for p in passes}) > 1  # each pass in its own order
    draws = np.concatenate([b["direct"][:, 0] for b in out])
    assert len(set(draws)) == 20  # a fresh augmentation for every copy
    first_pass = pipeline.epoch_order(5, 4, seed=7, epoch=3, repeat=4)[:4]
    np.testing.assert_array_equal(first_pass, pipeline.epoch_order(5, 4, seed=7, epoch=3))  # repeat 1's order
    # the last incomplete batch of all passes together is dropped; a single pair fills batches once repeated
    assert len(pipeline.epoch_order(5, 4, seed=7, epoch=3, repeat=3)) == 12
    with pytest.raises(ValueError, match=r"has 1 samples \(4 with data.repeat 4\), fewer than batch_size 8"):
        pipeline.epoch_batches(Records(1), batch_size=8, seed=0, epoch=1, repeat=4)
    assert len(list(pipeline.epoch_batches(Records(1), batch_size=8, seed=0, epoch=1, repeat=16, num_threads=0))) == 2


def test_repeat_keeps_process_shares_and_resume():
    kw = dict(batch_size=4, seed=1, epoch=2, repeat=3, num_threads=0)
    whole = list(pipeline.epoch_batches(Records(5), **kw))
    shares = [list(pipeline.epoch_batches(Records(5), process_index=i, process_count=2, **kw)) for i in range(2)]
    for step, b in enumerate(whole):
        for i in range(2):
            np.testing.assert_array_equal(b["direct"][i::2], shares[i][step]["direct"])
    it = iter(pipeline.epoch_batches(Records(5), **kw))
    next(it), next(it)
    resumed = iter(pipeline.epoch_batches(Records(5), **kw))
    resumed.set_state(it.get_state())
    assert_batches_equal(whole[2:], list(resumed))
