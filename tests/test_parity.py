"""Parity with the PyTorch originals on every fixture set found in $TIODEPTH_FIXTURES.

Each set is dispatched on its `family`; a family this suite does not know yet is skipped by name.
Weights are regenerated with the fixtures' recipe and go through the real converters.
"""

from __future__ import annotations

import pytest

from tests import parity_dav2, parity_tio
from tests.parity import DAV2_FAMILY, FIXTURES_DIR, TIO_FAMILY, FixtureSet, load_sets

FAMILIES = {  # family name prefix -> runner module with cases(fs) and check(fs, case)
    DAV2_FAMILY: parity_dav2,
    TIO_FAMILY: parity_tio,
}


def runner(fs: FixtureSet):
    return next((r for prefix, r in FAMILIES.items() if fs.family.startswith(prefix)), None)


def _params():
    sets = load_sets()
    if not sets:
        return [pytest.param(None, None, marks=pytest.mark.skip(
            reason=f"fixture directory {FIXTURES_DIR} not found or empty (set TIODEPTH_FIXTURES)"))]
    params = []
    for fs in sets:
        if runner(fs) is None:
            params.append(pytest.param(fs, None, id=fs.name, marks=pytest.mark.skip(
                reason=f"fixture set {fs.name}: model family {fs.family!r} is not supported by this suite yet")))
            continue
        params += [pytest.param(fs, case, id=f"{fs.name}-{case}") for case in runner(fs).cases(fs)]
    return params


@pytest.mark.parametrize("fixture_set, case", _params())
def test_parity(fixture_set: FixtureSet, case):
    runner(fixture_set).check(fixture_set, case)
