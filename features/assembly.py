"""THE feature assembly: stored user state + a score request -> model inputs.

Training, replay and serving all call ``assemble`` (model inputs) and
``calibration_features`` (the calibrators' inputs, delegated to
``features.calibration_features``), so online and offline features cannot drift
apart. The user/sequence part is produced once per request and the candidate
part over all candidates at once (``features.candidates.CandidateColumns``,
numpy columns); the scorer computes the user side once as well.

Model input arrays (``ModelInputs.arrays()``; ``N`` candidates, ``L = spec.seq_len``):

* ``user_id``    int64 ``[1]``        hashed user id
* ``ctx``        int64 ``[C]``        hashed context categoricals (``CTX_FIELDS``)
* ``user_dense`` float32 ``[Du]``     ``USER_DENSE_NAMES``
* ``seq_item``   int64 ``[L]``        hashed item ids of the latest actions, newest first (0 = pad)
* ``seq_action`` int64 ``[L]``        1 + index in ``ACTIONS`` (0 = pad)
* ``seq_type``   int64 ``[L]``        1 organic, 2 video (0 = pad)
* ``seq_age``    int64 ``[L]``        log2 bucket of the action's age in seconds
* ``seq_mask``   bool ``[L]``         True where an action is present
* ``hide_item``  int64 ``[H]``        hashed ids of the items hidden over the whole stored history (up to
  ``spec.history_len`` actions), newest first (0 = pad; ``H = spec.hide_len``): the long-term hide profile
* ``cand_item``  int64 ``[N]``, ``cand_type`` int64 ``[N]``, ``cand_pos`` int64 ``[N]``
* ``cand_dense`` float32 ``[N, Dc]``  ``CAND_DENSE_NAMES``

Item content embeddings are not an input: the model holds them in a table by the
same hashed bucket as ``seq_item`` and ``cand_item`` (``features.content``).
"""

from __future__ import annotations

import logging
import math
from dataclasses import asdict, dataclass
from typing import Sequence

import numpy as np

from features.numeric import logit

from .candidates import TYPE_CODE, CandidateColumns, item_hashes
from .events import ACTIONS
from .state import Candidate, Counts, FeedbackSnapshot, ScoreContext, UserState, segment_keys, stable_hash

log = logging.getLogger(__name__)

CTX_FIELDS: tuple[str, ...] = ("surface", "country", "gender", "app_type", "device_type", "hour")
ITEM_TYPE_CODE = TYPE_CODE  # the model's ``cand_type`` codes (0 = unknown), defined with the candidate columns
ACTION_CODE: dict[str, int] = {a: i + 1 for i, a in enumerate(ACTIONS)}
#: Smoothing priors for rates (pseudo-impressions at these rates).
PRIOR_RATES: dict[str, float] = {"click": 0.04, "long_click": 0.015, "closeup": 0.03, "repin": 0.008,
                                 "hide": 0.01, "video_view_10s": 0.03}
USER_PRIOR_WEIGHT = 20.0
FEEDBACK_PRIOR_WEIGHT = 100.0
_WINDOWS = ("3h", "1d")
_SEGMENTS = ("all", "country", "gender_country")


def _rate_names(prefix: str) -> list[str]:
    return [f"{prefix}:log_impressions"] + [f"{prefix}:rate:{a}" for a in ACTIONS]


USER_DENSE_NAMES: tuple[str, ...] = tuple(
    [n for w in _WINDOWS for n in _rate_names(f"user_{w}")]
    + [n for s in _SEGMENTS for n in _rate_names(f"feedback_30m_{s}")]
    + ["hour_sin", "hour_cos", "seq_fill", "log_minutes_since_last_action"]
)
CAND_DENSE_NAMES: tuple[str, ...] = ("item_ctr_prior_logit", "has_item_ctr_prior", "log_seq_item_hits",
                                     "seq_same_type_share")
#: Dense columns computed from the real-time action sequence (off in the no-sequence ablation).
SEQUENCE_DERIVED: tuple[str, ...] = ("seq_fill", "log_minutes_since_last_action", "log_seq_item_hits",
                                     "seq_same_type_share")


@dataclass(frozen=True)
class FeatureSpec:
    """Hash bucket counts and sequence length: part of a model artifact's card."""

    user_buckets: int = 20_011
    item_buckets: int = 20_011
    ctx_buckets: int = 1_009
    seq_len: int = 32
    #: the stored history the long-term hide profile reads (the tables' ``FEEDRANK_SEQUENCE_LEN``) and how
    #: many of its hidden items the model reads
    history_len: int = 256
    hide_len: int = 32
    age_buckets: int = 20
    position_buckets: int = 32
    #: width of the item content embeddings the model holds (``features.content``; not a model input array)
    content_dim: int = 16

    @property
    def n_ctx(self) -> int:
        return len(CTX_FIELDS)

    @property
    def n_user_dense(self) -> int:
        return len(USER_DENSE_NAMES)

    @property
    def n_cand_dense(self) -> int:
        return len(CAND_DENSE_NAMES)

    def to_dict(self) -> dict[str, object]:
        d: dict[str, object] = dict(asdict(self))
        d.update(ctx_fields=list(CTX_FIELDS), user_dense=list(USER_DENSE_NAMES),
                 cand_dense=list(CAND_DENSE_NAMES), actions=list(ACTIONS), item_type_code=ITEM_TYPE_CODE)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, object]) -> "FeatureSpec":
        names = {f for f in cls.__dataclass_fields__}
        return cls(**{k: v for k, v in d.items() if k in names})  # type: ignore[arg-type]


DEFAULT_SPEC = FeatureSpec()


@dataclass(frozen=True)
class ModelInputs:
    """Model inputs for one request (shapes in the module docstring)."""

    user_id: np.ndarray
    ctx: np.ndarray
    user_dense: np.ndarray
    seq_item: np.ndarray
    seq_action: np.ndarray
    seq_type: np.ndarray
    seq_age: np.ndarray
    seq_mask: np.ndarray
    hide_item: np.ndarray
    cand_item: np.ndarray
    cand_type: np.ndarray
    cand_pos: np.ndarray
    cand_dense: np.ndarray

    def arrays(self) -> dict[str, np.ndarray]:
        return {k: getattr(self, k) for k in self.__dataclass_fields__}


USER_KEYS: tuple[str, ...] = ("user_id", "ctx", "user_dense", "seq_item", "seq_action", "seq_type", "seq_age",
                              "seq_mask", "hide_item")
CAND_KEYS: tuple[str, ...] = ("cand_item", "cand_type", "cand_pos", "cand_dense")


def _rate_block(c: Counts, prior: dict[str, float], weight: float) -> list[float]:
    return [math.log1p(c.impressions)] + [logit(c.rate(a, prior[a], weight)) for a in ACTIONS]


def _user_dense(user: UserState, feedback: FeedbackSnapshot, ctx: ScoreContext, spec: FeatureSpec) -> np.ndarray:
    vals: list[float] = []
    for c in (user.counts_3h, user.counts_1d):
        vals += _rate_block(c, PRIOR_RATES, USER_PRIOR_WEIGHT)
    seg_all = feedback.get("all")
    global_rates = {a: seg_all.rate(a, PRIOR_RATES[a], FEEDBACK_PRIOR_WEIGHT) for a in ACTIONS}
    for i, key in enumerate(segment_keys(ctx.country, ctx.gender)):
        vals += _rate_block(feedback.get(key), PRIOR_RATES if i == 0 else global_rates, FEEDBACK_PRIOR_WEIGHT)
    hour = (ctx.ts / 3_600_000.0) % 24.0
    vals += [math.sin(2 * math.pi * hour / 24.0), math.cos(2 * math.pi * hour / 24.0)]
    vals.append(min(user.n_actions, spec.seq_len) / spec.seq_len)
    last = user.actions[-1].ts if user.actions else None
    vals.append(math.log1p(max(ctx.ts - last, 0) / 60_000.0) if last is not None else 10.0)
    return np.asarray(vals, dtype=np.float32)


def _ctx_codes(ctx: ScoreContext, spec: FeatureSpec) -> np.ndarray:
    hour = int((ctx.ts // 3_600_000) % 24)
    values = (ctx.surface, ctx.country, ctx.gender, ctx.app_type, ctx.device_type, str(hour))
    return np.asarray([stable_hash(f"{f}={v}", spec.ctx_buckets) for f, v in zip(CTX_FIELDS, values)],
                      dtype=np.int64)


def assemble(user: UserState, feedback: FeedbackSnapshot, ctx: ScoreContext,
             candidates: Sequence[Candidate] | CandidateColumns, spec: FeatureSpec = DEFAULT_SPEC) -> ModelInputs:
    """Model inputs for one request: the user/sequence part once, the candidate part over all N at once."""
    L = spec.seq_len
    seq_item = np.zeros(L, dtype=np.int64)
    seq_action = np.zeros(L, dtype=np.int64)
    seq_type = np.zeros(L, dtype=np.int64)
    seq_age = np.zeros(L, dtype=np.int64)
    recent = user.actions[-L:][::-1]
    item_hits: dict[str, int] = {}
    type_hits = [0, 0, 0]
    top_age = spec.age_buckets - 1
    for j, a in enumerate(recent):
        seq_item[j] = stable_hash(a.item_id, spec.item_buckets - 1) + 1
        seq_action[j] = ACTION_CODE.get(a.action, 0)
        t = ITEM_TYPE_CODE.get(a.item_type, 0)
        seq_type[j] = t
        type_hits[t] += 1
        seq_age[j] = min(top_age, int(math.log2(1.0 + max(ctx.ts - a.ts, 0) / 1000.0)))
        item_hits[a.item_id] = item_hits.get(a.item_id, 0) + 1
    n_seq = len(recent)
    hide_item = np.zeros(spec.hide_len, dtype=np.int64)
    hidden = user.hidden_items(spec.hide_len)
    if hidden:
        hide_item[: len(hidden)] = item_hashes(list(hidden), spec.item_buckets - 1) + 1

    # candidates: one array operation per column over all N (features.candidates)
    cols = CandidateColumns.of(candidates)
    n = len(cols)
    cand_item = item_hashes(cols.item_ids, spec.item_buckets - 1) + 1
    cand_type = cols.type_code
    cand_pos = np.clip(cols.position, 0, spec.position_buckets - 1)
    cand_dense = np.zeros((n, len(CAND_DENSE_NAMES)), dtype=np.float32)
    has_prior = cols.has_ctr_prior
    if has_prior.any():
        p = np.clip(np.where(has_prior, cols.ctr_prior, 0.5), 1e-5, 1.0 - 1e-5)
        cand_dense[:, 0] = np.where(has_prior, np.log(p / (1.0 - p)), 0.0)
        cand_dense[:, 1] = has_prior
    if item_hits:
        hits = item_hits.get
        cand_dense[:, 2] = np.log1p(np.asarray([hits(i, 0) for i in cols.item_ids], dtype=np.float64))
    if n_seq:
        cand_dense[:, 3] = (np.asarray(type_hits, dtype=np.float64) / n_seq)[cand_type]

    return ModelInputs(
        user_id=np.asarray([stable_hash(user.user_id, spec.user_buckets)], dtype=np.int64),
        ctx=_ctx_codes(ctx, spec),
        user_dense=_user_dense(user, feedback, ctx, spec),
        seq_item=seq_item, seq_action=seq_action, seq_type=seq_type, seq_age=seq_age,
        seq_mask=seq_action > 0, hide_item=hide_item,
        cand_item=cand_item, cand_type=cand_type, cand_pos=cand_pos, cand_dense=cand_dense,
    )


def calibration_features(raw_logits: np.ndarray | None, user: UserState, feedback: FeedbackSnapshot,
                         ctx: ScoreContext, candidates: Sequence[Candidate] | CandidateColumns) -> np.ndarray:
    """``[N, F]`` calibrator inputs (``CALIBRATION_FEATURE_NAMES``); raw_logits ``[N, T]`` or None."""
    from .calibration_features import calibration_feature_matrix

    return calibration_feature_matrix(raw_logits, user, feedback, ctx, candidates)


__all__ = ["CAND_DENSE_NAMES", "CAND_KEYS", "CTX_FIELDS", "DEFAULT_SPEC", "FeatureSpec", "ModelInputs", "SEQUENCE_DERIVED",
           "USER_DENSE_NAMES", "USER_KEYS", "assemble", "calibration_features"]
