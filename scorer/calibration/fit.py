"""Offline fit of a whole calibrator set from logged labeled rows."""

from __future__ import annotations

import logging

from features.events import ACTIONS

from .calset import CalibratorSet
from .data import LabeledBatch
from .errors import NotEnoughDataError
from .logistic import LogisticCalibrator, fit_calibrator

log = logging.getLogger(__name__)


def fit_calibrator_set(
    batch: LabeledBatch,
    model_version: str,
    l2: float = 1e-3,
    min_positives: int = 20,
    version: int = 1,
    source: str = "offline-fit",
) -> CalibratorSet:
    """Fit one calibrator per task on the rows where the task applies.

    A task without enough positives keeps the identity calibrator and is listed
    in ``meta["fallback_tasks"]`` so the operator sees it.
    """
    cals: dict[str, LogisticCalibrator] = {}
    fallback: list[str] = []
    for t, a in enumerate(ACTIONS):
        rows = batch.mask[:, t]
        try:
            cals[a] = fit_calibrator(a, batch.X[rows], batch.y[rows, t], l2=l2, min_positives=min_positives)
        except NotEnoughDataError as exc:
            log.warning("%s; task keeps the identity calibrator", exc)
            cals[a] = LogisticCalibrator.identity(a)
            fallback.append(a)
    return CalibratorSet(
        model_version,
        cals,
        version=version,
        source=source,
        trained_examples=len(batch),
        watermark_ms=int(batch.ts.max()) if len(batch) else 0,
        meta={"fallback_tasks": fallback, "l2": l2},
    )
