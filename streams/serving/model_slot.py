"""One model slot: the loaded scorer, its calibrators, and model reloads and calibrator swaps.

Used in two places: the worker's ``Serving`` (``streams.serving.serving``),
and the score process (``streams.serving.score_process``), which holds a
slot of its own and scores there.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)


def thread_clock() -> tuple[int, int]:
    """The calling thread's CPU time and time spent runnable but waiting for a core, both in ns.

    The second comes from the kernel's scheduler statistics
    (``/proc/thread-self/schedstat``); 0 where they are not available.
    """
    cpu = time.thread_time_ns()
    try:
        with open("/proc/thread-self/schedstat", "rb") as f:
            return cpu, int(f.read().split()[1])
    except (OSError, ValueError, IndexError):
        return cpu, 0


class ModelSlot:
    """The scorer (model + calibrator holder + blender) of one process, reloaded from ``<model_dir>/latest``."""

    def __init__(self, settings, scorer=None, holder=None) -> None:
        self.settings = settings
        self.scorer = scorer
        self.holder = holder
        self.load_error: str | None = None
        self.precision: str | None = None  # the loaded model's number format (``set_precision``)

    def _publish_model_info(self) -> None:
        """Set ``feedrank_model_info`` to the model this slot serves (``Serving``: what its score process serves)."""
        from streams.metrics import MODEL_INFO

        MODEL_INFO.clear()
        if self.model_version is not None:
            MODEL_INFO.labels(self.model_version, self.precision or "unknown").set(1)

    def _latest_version(self) -> str | None:
        latest = Path(self.settings.model_dir) / "latest"
        try:
            return latest.read_text().strip() or None
        except OSError:
            return None

    def reload(self) -> bool:
        """Load ``<model_dir>/latest`` when it names another model than the one serving; True if swapped.

        Model and calibrators change together (one reference each in the scorer),
        so a request never mixes a model with another model's calibrators.
        """
        from scorer.artifact import ArtifactError, load_artifact
        from scorer.blender import BlendConfigSource, Blender
        from scorer.calibration.calset import CalibratorHolder, CalibratorSet
        from scorer.calibration.store import CalibratorStore
        from scorer.export import set_precision
        from scorer.service import Scorer

        settings = self.settings
        version = self._latest_version()
        if version is None or version == self.model_version:
            if version is None and self.load_error is None:
                self.load_error = f"no model under {settings.model_dir}: run `feedrank train`"
                log.info("no model loaded yet, /score answers 503 until one is published: %s", self.load_error)
            return False
        try:
            artifact = load_artifact(settings.model_dir)
        except (ArtifactError, OSError, RuntimeError) as exc:
            self.load_error = str(exc)
            log.error("model %s not loaded (%s); still serving %s", version, exc, self.model_version)
            return False
        precision = set_precision(artifact.module, settings.score_precision)
        if settings.sequence_len < artifact.spec.history_len:
            log.warning("the tables keep %d actions per user (FEEDRANK_SEQUENCE_LEN) but model %s was trained on a "
                        "%d-action history: its hide profile sees fewer hides than in training; set "
                        "FEEDRANK_SEQUENCE_LEN=%d", settings.sequence_len, artifact.version,
                        artifact.spec.history_len, artifact.spec.history_len)
        initial = None
        try:
            initial = CalibratorStore(settings.calibrator_dir).load(artifact.version)
        except Exception as exc:  # a broken file must not stop serving: fall back and say so
            log.error("offline calibrators for %s unusable (%s); serving raw scores until online ones arrive",
                      artifact.version, exc)
        if initial is None:
            log.warning("no offline calibrators for model %s under %s: raw scores pass through until the online "
                        "calibrators publish (run `feedrank replay` to fit them before serving)",
                        artifact.version, settings.calibrator_dir)
            initial = CalibratorSet.identity(artifact.version)
        holder = CalibratorHolder(initial)
        if self.scorer is None:
            blender = Blender(BlendConfigSource(settings.blend_config) if settings.blend_config else None)
            self.scorer = Scorer(artifact, holder, blender, feature_log_sample=settings.feature_log_sample)
        else:
            self.scorer.swap_model(artifact, holder)
        self.holder = holder
        self.load_error = None
        self.precision = precision
        self._publish_model_info()
        log.info("serving model %s (%s expert GEMMs) with calibrators %s#%d (%s)", artifact.version, precision,
                 initial.model_version, initial.version, initial.source)
        return True

    @property
    def model_version(self) -> str | None:
        return self.scorer.model.version if self.scorer else None

    def score_and_encode(self, req, user, feedback):
        """Score ``req`` in this thread; the ``ScoredRequest``, its prediction log encoded, and the thread's timings."""
        c0 = thread_clock()
        t0 = time.perf_counter()
        scored = self.scorer.score(req, user, feedback)
        encoded = scored.log_json
        t1 = time.perf_counter()
        c1 = thread_clock()
        return scored, encoded, t0, t1, (c1[0] - c0[0]) / 1e9, (c1[1] - c0[1]) / 1e9

    def install_calibrators(self, cs) -> bool:
        """Hot-swap ``cs`` in if it is newer and for the serving model; returns whether it was."""
        if self.holder is None or cs.model_version != self.model_version:
            return False
        current = self.holder.current
        if cs.version <= current.version and current.source != "identity":
            return False
        try:
            self.holder.swap(cs)
        except Exception as exc:  # refused (other model, rollback): keep serving the current set
            log.warning("calibrator swap to %s#%d refused: %s", cs.model_version, cs.version, exc)
            return False
        log.info("calibrators hot-swapped to %s#%d (%s, %d examples)", cs.model_version, cs.version, cs.source,
                 cs.trained_examples)
        return True

    def calibrator_info(self) -> dict[str, Any] | None:
        if self.holder is None:
            return {"model": None, "error": self.load_error}
        cs = self.holder.current
        return {"model_version": cs.model_version, "version": cs.version, "source": cs.source,
                "trained_examples": cs.trained_examples, "watermark_ms": cs.watermark_ms}
