"""A conversion collects garbage rarely; a caller that runs one in-process (the tests, a
library user) gets its own collector settings back, whatever the conversion did."""

from __future__ import annotations

import gc

import pytest

from nydus_exporter.pipeline.batch_gc import FIRST_GENERATION_THRESHOLD, batch_gc


def test_settings_apply_inside_and_come_back_after() -> None:
    before = gc.get_threshold()
    with batch_gc():
        assert gc.get_threshold()[0] == FIRST_GENERATION_THRESHOLD
        assert gc.get_freeze_count() > 0  # what existed is out of the collector's walks
    assert gc.get_threshold() == before
    assert gc.get_freeze_count() == 0


def test_settings_come_back_when_the_conversion_fails() -> None:
    before = gc.get_threshold()
    with pytest.raises(RuntimeError), batch_gc():
        raise RuntimeError("corrupt layer")
    assert gc.get_threshold() == before
    assert gc.get_freeze_count() == 0
