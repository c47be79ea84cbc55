"""The collector is tuned while runs go on and restored when the last one ends."""

from __future__ import annotations

import gc

from probes.gc_tuning import GC_YOUNG_THRESHOLD, tuned_gc


def test_settings_are_restored_after_overlapping_runs() -> None:
    before = gc.get_threshold()
    with tuned_gc():
        assert gc.get_threshold()[0] >= GC_YOUNG_THRESHOLD and gc.get_freeze_count() > 0
        with tuned_gc():
            pass
        assert gc.get_threshold()[0] >= GC_YOUNG_THRESHOLD  # the outer run still goes on
    assert gc.get_threshold() == before and gc.get_freeze_count() == 0


def test_settings_are_restored_when_the_run_fails() -> None:
    before = gc.get_threshold()
    try:
        with tuned_gc():
            raise RuntimeError("the run broke")
    except RuntimeError:
        pass
    assert gc.get_threshold() == before and gc.get_freeze_count() == 0
