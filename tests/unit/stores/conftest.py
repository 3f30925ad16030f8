"""The contract suite's fixture: ``make_store``, once per store of ``test_base.BUILDERS`` (on its real backend),
for every file here that runs the contract (test_base.py, test_digest_contract.py)."""

from __future__ import annotations

import pytest

from tests.unit.stores.test_base import BUILDERS


@pytest.fixture(params=sorted(BUILDERS))
def make_store(request, tmp_path):
    make, cleanup = BUILDERS[request.param](request, tmp_path)
    yield make
    cleanup()
