"""The offline twin's reading (``feedrank calibration twin``): served / observed over each cold start's first window."""

from __future__ import annotations

import numpy as np

from features.events import ACTIONS
from features.calibration_features import N_CALIBRATION_FEATURES
from scorer.calibration import LabeledBatch
from scorer.replay_world import first_window_calibration, format_first_window

T = len(ACTIONS)


def _batch(ts: list[int], served: float, y: int, video: bool = True) -> LabeledBatch:
    n = len(ts)
    mask = np.ones((n, T), dtype=bool)
    if not video:
        mask[:, ACTIONS.index("video_view_10s")] = False
    return LabeledBatch(np.zeros((n, N_CALIBRATION_FEATURES), np.float32), np.full((n, T), y, np.int8), mask, np.asarray(ts, np.int64),
                        {"served": np.full((n, T), served)})


def test_only_rows_within_the_window_of_each_start_count_and_a_task_counts_where_it_applies() -> None:
    b = LabeledBatch.concat([
        _batch([1_000, 150_000], served=0.2, y=1),            # episode 1, inside its 200 s
        _batch([250_000], served=0.9, y=0),                   # episode 1, after its window: left out
        _batch([10_000_000, 10_100_000], served=0.5, y=1, video=False),  # episode 2, inside
    ])
    predicted, observed = first_window_calibration(b, [0, 10_000_000], 200)
    np.testing.assert_allclose(predicted[0], 0.4)
    np.testing.assert_allclose(observed[0], 2)
    v = ACTIONS.index("video_view_10s")
    assert predicted[1, v] == 0 and observed[1, v] == 0  # video views of pins are not labels
    np.testing.assert_allclose(predicted[1, 0], 1.0)
    table = format_first_window(predicted, observed, [0, 10_000_000])
    lines = table.splitlines()
    assert lines[2].startswith("| 00:00 | 0.20 (2)") and lines[3].startswith("| 02:46 | 0.50 (2)")
    assert lines[3].endswith("| - |")  # no video label in episode 2
    assert lines[-1].startswith("| pooled | 0.35 (4)")
