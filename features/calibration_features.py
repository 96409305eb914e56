"""Calibration features: the inputs of the per-task calibrators (~80 columns).

Follows Pinterest's home feed calibration layer: the logit of the raw score, bias
and position features (app type, device type, gender, bucketized position, item
type, surface), the user's performance rates (3 h, 1 day), item
performance rates, and the feedback-loop rates of the last 30 minutes (overall,
country, gender x country) per action.

Layout of the matrix (``[N, len(CALIBRATION_FEATURE_NAMES)]``, float32):

* columns ``0 .. 2T-1``: a per-task block, two columns per task ``t`` in
  ``ACTIONS`` order: ``logit:<task>`` (the task's raw logit, clipped) and
  ``logit_x_video:<task>`` (the same times the video indicator, so the slope may
  differ by item type);
* columns ``2T ..``: shared features, the same for every task.

Item rates (``item_1d:<action>``) are lifts over the overall 30-minute rate,
smoothed with ``ITEM_PRIOR_WEIGHT`` pseudo-impressions, from the optional
``Candidate.features`` keys ``item_impressions_1d`` and
``item_actions_1d:<action>``; without them the lift is 0.

The calibrator of task ``t`` reads ``task_columns(t)``: its own two logit columns
followed by every shared column. Rates enter as logits of smoothed rates, so a
doubled segment rate moves its feature by about ``log 2``, the same scale as the
model logit. Pure numpy, no I/O.
"""

from __future__ import annotations

import logging
import math
from typing import Final, Mapping, Sequence

import numpy as np

from features.numeric import logit, logits

from .candidates import CandidateColumns
from .events import ACTIONS
from .state import Candidate, Counts, FeedbackSnapshot, ScoreContext, UserState, segment_keys

log = logging.getLogger(__name__)

N_TASKS: Final[int] = len(ACTIONS)
LOGIT_CLIP: Final[float] = 20.0
RATE_EPS: Final[float] = 1e-5

APP_TYPES: Final[tuple[str, ...]] = ("ios", "android", "web", "other")
DEVICE_TYPES: Final[tuple[str, ...]] = ("phone", "tablet", "desktop", "other")
GENDERS: Final[tuple[str, ...]] = ("f", "m", "u")
SURFACES: Final[tuple[str, ...]] = ("home", "closeup", "search", "other")
ITEM_TYPE_NAMES: Final[tuple[str, ...]] = ("organic", "video")
#: Position buckets as half-open ranges [lo, next lo); the last is open-ended.
POSITION_BUCKETS: Final[tuple[int, ...]] = (0, 1, 2, 3, 5, 8, 12, 20, 50)

#: Fallback action rates when even the overall feedback segment is empty.
DEFAULT_RATES: Final[Mapping[str, float]] = {
    "click": 0.05,
    "long_click": 0.02,
    "closeup": 0.04,
    "repin": 0.02,
    "hide": 0.005,
    "video_view_10s": 0.10,
}
#: Pseudo-impressions pulling a segment's rate toward its parent's rate.
FEEDBACK_PRIOR_WEIGHT: Final[float] = 200.0
USER_PRIOR_WEIGHT: Final[float] = 20.0
ITEM_PRIOR_WEIGHT: Final[float] = 50.0
#: Optional item performance counts in ``Candidate.features``: ``item_impressions_1d`` and
#: ``item_actions_1d:<action>`` (``features.candidates.ITEM_IMPRESSIONS_KEY``, ``ITEM_ACTION_KEY_FMT``).


def _task_block_names() -> list[str]:
    names: list[str] = []
    for a in ACTIONS:
        names += [f"logit:{a}", f"logit_x_video:{a}"]
    return names


def _shared_names() -> list[str]:
    names: list[str] = []
    names += [f"app:{v}" for v in APP_TYPES]
    names += [f"device:{v}" for v in DEVICE_TYPES]
    names += [f"gender:{v}" for v in GENDERS]
    names += [f"surface:{v}" for v in SURFACES]
    names += [f"item_type:{v}" for v in ITEM_TYPE_NAMES]
    names += [f"pos_bucket:{lo}" for lo in POSITION_BUCKETS]
    for window in ("3h", "1d"):
        names += [f"user_{window}:{a}" for a in ACTIONS]
        names.append(f"user_{window}:log_impressions")
    for seg in ("all", "country", "gender_country"):
        names += [f"fb30m_{seg}:{a}" for a in ACTIONS]
        names.append(f"fb30m_{seg}:log_impressions")
    names += [f"item_1d:{a}" for a in ACTIONS]
    return names


TASK_BLOCK_WIDTH: Final[int] = 2
SHARED_FEATURE_NAMES: Final[tuple[str, ...]] = tuple(_shared_names())
CALIBRATION_FEATURE_NAMES: Final[tuple[str, ...]] = tuple(_task_block_names()) + SHARED_FEATURE_NAMES
N_CALIBRATION_FEATURES: Final[int] = len(CALIBRATION_FEATURE_NAMES)
SHARED_OFFSET: Final[int] = N_TASKS * TASK_BLOCK_WIDTH

_IDX = {n: i for i, n in enumerate(SHARED_FEATURE_NAMES)}
_POS_EDGES = np.asarray(POSITION_BUCKETS[1:], dtype=np.int64)
_POS_COLS = SHARED_OFFSET + np.asarray([_IDX[f"pos_bucket:{lo}"] for lo in POSITION_BUCKETS])
_ITEM_COLS = SHARED_OFFSET + np.asarray([_IDX[f"item_1d:{a}"] for a in ACTIONS])


def task_columns(task: int | str) -> np.ndarray:
    """Column indices (into the full matrix) that the calibrator of ``task`` reads."""
    t = ACTIONS.index(task) if isinstance(task, str) else int(task)
    if not 0 <= t < N_TASKS:
        raise ValueError(f"task index {t} out of range 0..{N_TASKS - 1}")
    own = np.arange(t * TASK_BLOCK_WIDTH, (t + 1) * TASK_BLOCK_WIDTH)
    return np.concatenate([own, np.arange(SHARED_OFFSET, N_CALIBRATION_FEATURES)])


def task_feature_names(task: int | str) -> tuple[str, ...]:
    """Names of the columns ``task_columns(task)`` selects, in order."""
    return tuple(CALIBRATION_FEATURE_NAMES[i] for i in task_columns(task))


def _one_hot(dst: np.ndarray, prefix: str, vocab: Sequence[str], value: str) -> None:
    key = f"{prefix}:{value}" if value in vocab else f"{prefix}:other"
    if key in _IDX:
        dst[_IDX[key]] = 1.0


def _rates(counts: Counts, prior: Mapping[str, float], weight: float) -> dict[str, float]:
    return {a: counts.rate(a, prior=prior[a], prior_weight=weight) for a in ACTIONS}


def _put_rates(dst: np.ndarray, prefix: str, rates: Mapping[str, float], impressions: int) -> None:
    for a in ACTIONS:
        dst[_IDX[f"{prefix}:{a}"]] = logit(rates[a])
    dst[_IDX[f"{prefix}:log_impressions"]] = math.log1p(max(impressions, 0))


def shared_context_row(user: UserState, feedback: FeedbackSnapshot, ctx: ScoreContext) -> tuple[np.ndarray, dict[str, float]]:
    """The request-level shared features (one row) and the overall 30-min rates.

    Hierarchical smoothing: overall -> DEFAULT_RATES, country -> overall,
    gender x country -> country, user windows -> gender x country.
    """
    row = np.zeros(len(SHARED_FEATURE_NAMES), dtype=np.float64)
    _one_hot(row, "app", APP_TYPES, ctx.app_type)
    _one_hot(row, "device", DEVICE_TYPES, ctx.device_type)
    _one_hot(row, "gender", GENDERS, ctx.gender)
    _one_hot(row, "surface", SURFACES, ctx.surface)

    k_all, k_c, k_gc = segment_keys(ctx.country, ctx.gender)
    c_all, c_c, c_gc = feedback.get(k_all), feedback.get(k_c), feedback.get(k_gc)
    r_all = _rates(c_all, DEFAULT_RATES, FEEDBACK_PRIOR_WEIGHT)
    r_c = _rates(c_c, r_all, FEEDBACK_PRIOR_WEIGHT)
    r_gc = _rates(c_gc, r_c, FEEDBACK_PRIOR_WEIGHT)
    _put_rates(row, "fb30m_all", r_all, c_all.impressions)
    _put_rates(row, "fb30m_country", r_c, c_c.impressions)
    _put_rates(row, "fb30m_gender_country", r_gc, c_gc.impressions)
    _put_rates(row, "user_3h", _rates(user.counts_3h, r_gc, USER_PRIOR_WEIGHT), user.counts_3h.impressions)
    _put_rates(row, "user_1d", _rates(user.counts_1d, r_gc, USER_PRIOR_WEIGHT), user.counts_1d.impressions)
    return row, r_all


def calibration_feature_matrix(
    raw_logits: np.ndarray | None,
    user: UserState,
    feedback: FeedbackSnapshot,
    ctx: ScoreContext,
    candidates: "Sequence[Candidate] | CandidateColumns",
    shared: tuple[np.ndarray, dict[str, float]] | None = None,
) -> np.ndarray:
    """Calibration features for one request, over all candidates at once.

    Args:
        raw_logits: ``[N, T]`` raw model logits in ``ACTIONS`` order, or ``None``
            (logit columns left at 0; fill them later with ``set_logits``).
        user, feedback, ctx: the request's user state, 30-min feedback counts
            and context.
        candidates: the ``N`` candidates (position, item type, optional item
            counts in ``features``), as a list or as ``CandidateColumns``.
        shared: ``shared_context_row(user, feedback, ctx)`` when the caller has it already.

    Returns:
        ``[N, N_CALIBRATION_FEATURES]`` float32, columns ``CALIBRATION_FEATURE_NAMES``.
    """
    cols = CandidateColumns.of(candidates)
    n = len(cols)
    out = np.zeros((n, N_CALIBRATION_FEATURES), dtype=np.float32)
    if n == 0:
        return out
    row, r_all = shared if shared is not None else shared_context_row(user, feedback, ctx)
    out[:, SHARED_OFFSET:] = row.astype(np.float32)[None, :]

    is_video = cols.is_video
    base = SHARED_OFFSET
    out[:, base + _IDX["item_type:organic"]] = ~is_video
    out[:, base + _IDX["item_type:video"]] = is_video
    set_positions(out, cols.position)

    # item rates as lift over the overall 30-min rate: 0 = no item evidence
    has = cols.has_counts
    if has.any():
        prior = np.asarray([r_all[a] for a in ACTIONS], dtype=np.float64)  # [T]
        rate = (cols.actions[has] + prior * ITEM_PRIOR_WEIGHT) / (cols.impressions[has] + ITEM_PRIOR_WEIGHT)[:, None]
        out[np.flatnonzero(has)[:, None], _ITEM_COLS[None, :]] = logits(rate) - logits(prior)

    if raw_logits is not None:
        set_logits(out, raw_logits)
    return out


def set_positions(matrix: np.ndarray, positions: np.ndarray) -> np.ndarray:
    """Set the position-bucket one-hot columns of ``matrix`` (``[N, F]``) for ``positions`` ``[N]``, in place.

    The scorer ranks, then re-reads its returned rows at the rank they are returned at. Returns ``matrix``.
    """
    bucket = np.searchsorted(_POS_EDGES, np.asarray(positions, dtype=np.int64), side="right")
    matrix[:, _POS_COLS] = 0.0
    matrix[np.arange(matrix.shape[0]), _POS_COLS[0] + bucket] = 1.0
    return matrix


def set_logits(matrix: np.ndarray, raw_logits: np.ndarray) -> np.ndarray:
    """Write ``[N, T]`` raw logits into the per-task block of ``matrix`` in place.

    Used by serving (features assembled before scoring) and by replay (a new
    model's logits replace the logged ones). Returns ``matrix``.
    """
    logits = np.asarray(raw_logits, dtype=np.float64)
    if logits.ndim != 2 or logits.shape != (matrix.shape[0], N_TASKS):
        raise ValueError(
            f"raw_logits must have shape [{matrix.shape[0]}, {N_TASKS}] (tasks in ACTIONS order), got {logits.shape}"
        )
    if not np.all(np.isfinite(logits)):
        raise ValueError("raw_logits contain NaN or inf; check the model export before calibrating")
    logits = np.clip(logits, -LOGIT_CLIP, LOGIT_CLIP)
    video = matrix[:, SHARED_OFFSET + _IDX["item_type:video"]].astype(np.float64)
    matrix[:, 0:SHARED_OFFSET:TASK_BLOCK_WIDTH] = logits
    matrix[:, 1:SHARED_OFFSET:TASK_BLOCK_WIDTH] = logits * video[:, None]
    return matrix


__all__ = [
    "CALIBRATION_FEATURE_NAMES",
    "N_CALIBRATION_FEATURES",
    "SHARED_FEATURE_NAMES",
    "calibration_feature_matrix",
    "set_logits",
    "set_positions",
    "shared_context_row",
    "task_columns",
    "task_feature_names",
]
