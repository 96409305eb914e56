"""The worker's serving state: the loaded scorer, its calibrators and what it logs.

``Serving.load(settings)`` loads the model artifact (``<model_dir>/latest``),
the offline-fit calibrators for that model version when there are some
(``<calibrator_dir>``; else raw scores pass through until the online
calibrators publish), and the blender. ``score`` runs the score function in
the score process (``streams.score_process``; ``score_process=false``: in a
one-thread executor beside the event loop) and logs the returned items' raw
predictions and calibration features to the ``predictions`` topic for the
label join. Calibrator swaps and model reloads happen here first and are
passed on to the score process in order.
"""

from __future__ import annotations

import asyncio
import logging
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from features.predictions import encode_prediction

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


def _score_thread_init(settings) -> None:
    """Each score thread uses the configured torch thread count (OpenMP's is per calling thread)."""
    import torch

    torch.set_num_threads(settings.score_threads)


class Serving:
    """Scorer + calibrator holder + drift view of one worker."""

    def __init__(self, settings, scorer=None, holder=None) -> None:
        self.settings = settings
        self.scorer = scorer
        self.holder = holder
        self.app = None  # set by install; used to produce prediction logs
        self._drift: dict[str, Any] | None = None
        self._executor = ThreadPoolExecutor(max_workers=settings.score_concurrency, thread_name_prefix="score",
                                            initializer=_score_thread_init, initargs=(settings,))
        self.load_error: str | None = None
        self.proc = None  # streams.score_process.ScoreProcess when scoring runs in a process of its own

    @classmethod
    def load(cls, settings) -> "Serving":
        """Load model, calibrators and blender (and start the score process); no model: /score answers 503."""
        import torch

        torch.set_num_threads(settings.score_threads)
        serving = cls(settings)
        serving.reload()
        if settings.score_process:
            from .score_process import ScoreProcess

            serving.proc = ScoreProcess(settings, lambda: serving.holder.current if serving.holder else None).start()
        return serving

    def ready(self) -> bool:
        """From the event loop: a model is loaded (and the score process is up; connects to it if need be)."""
        if self.proc is not None:
            self.proc.poke()
        return self.scorer is not None and (self.proc is None or self.proc.ready)

    def read_user(self, views, user_id: str):
        """The user's state in the form ``score`` takes (raises ``NotLocalError`` for another worker's user)."""
        if self.proc is not None:
            return views.get_encoded_user_state(user_id)
        return views.get_user_state(user_id)

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

        from .metrics import MODEL_INFO

        settings = self.settings
        version = self._latest_version()
        if version is None or version == self.model_version:
            if version is None and self.load_error is None:
                self.load_error = f"no model under {settings.model_dir}: run `feedrank train`"
                log.error("no model loaded, /score will answer 503: %s", self.load_error)
            return False
        try:
            artifact = load_artifact(settings.model_dir)
        except (ArtifactError, OSError, RuntimeError) as exc:
            self.load_error = str(exc)
            log.error("model %s not loaded (%s); still serving %s", version, exc, self.model_version)
            return False
        precision = set_precision(artifact.module, settings.score_precision)
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
            self.scorer = Scorer(artifact, holder, blender)
        else:
            self.scorer.swap_model(artifact, holder)
        self.holder = holder
        self.load_error = None
        MODEL_INFO.clear()
        MODEL_INFO.labels(artifact.version, precision).set(1)
        log.info("serving model %s (%s expert GEMMs) with calibrators %s#%d (%s)", artifact.version, precision,
                 initial.model_version, initial.version, initial.source)
        if self.proc is not None:
            log.info("score process now serving model %s", self.proc.reload())
        return True

    @property
    def model_version(self) -> str | None:
        return self.scorer.model.version if self.scorer else None

    def _score_and_encode(self, req, user, feedback):
        c0 = thread_clock()
        t0 = time.perf_counter()
        scored = self.scorer.score(req, user, feedback)
        encoded = encode_prediction(scored.prediction_log)
        t1 = time.perf_counter()
        c1 = thread_clock()
        return scored, encoded, t0, t1, (c1[0] - c0[0]) / 1e9, (c1[1] - c0[1]) / 1e9

    async def score(self, req, body: bytes, user, feedback):
        """Score ``req`` (``body`` as received) in the score process or thread, log it; the ``ScoreResponse``.

        ``user`` comes from ``read_user``. The log is encoded where the scoring
        runs (~1 ms off the event loop).
        """
        from .metrics import SCORE_STAGE_SECONDS, SCORE_THREAD_SECONDS

        t_submit = time.perf_counter()
        if self.proc is not None:
            response, log_value, t_start, t_end, cpu, runnable = await self.proc.score(body, user, feedback)
        else:
            scored, log_value, t_start, t_end, cpu, runnable = await asyncio.get_running_loop().run_in_executor(
                self._executor, self._score_and_encode, req, user, feedback)
            response = scored.response
        SCORE_STAGE_SECONDS.labels("wait").observe(t_start - t_submit)
        SCORE_STAGE_SECONDS.labels("score").observe(t_end - t_start)
        SCORE_THREAD_SECONDS.labels("cpu").observe(cpu)
        SCORE_THREAD_SECONDS.labels("runnable").observe(runnable)
        SCORE_THREAD_SECONDS.labels("blocked").observe(max(0.0, t_end - t_start - cpu - runnable))
        if self.app is not None:
            t_log = time.perf_counter()
            await self.app.producer.send(self.settings.topic_predictions, key=user.user_id.encode(),
                                         value=log_value, partition=None, timestamp=None, headers=None)
            SCORE_STAGE_SECONDS.labels("log").observe(time.perf_counter() - t_log)
        return response

    # -- calibrators and drift (fed by streams.calibration_loop) -------------------------
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
        if self.proc is not None:
            self.proc.install(cs)
        return True

    def set_drift(self, record: dict[str, Any]) -> None:
        from .metrics import CALIBRATION_ALERT, CALIBRATION_ERROR

        self._drift = record
        window = (record.get("alert_config") or {}).get("window")
        tasks = ((record.get("windows") or {}).get(window) or {}).get("tasks") or {}
        for task, summary in tasks.items():
            ce = summary.get("calibration_error")
            if ce is not None:
                CALIBRATION_ERROR.labels(task).set(float(ce))
        for task, alert in (record.get("alerts") or {}).items():
            CALIBRATION_ALERT.labels(task).set(0.0 if alert.get("state") == "ok" else 1.0)

    def latest_drift(self) -> dict[str, Any] | None:
        return self._drift

    def calibrator_info(self) -> dict[str, Any] | None:
        if self.holder is None:
            return {"model": None, "error": self.load_error}
        cs = self.holder.current
        return {"model_version": cs.model_version, "version": cs.version, "source": cs.source,
                "trained_examples": cs.trained_examples, "watermark_ms": cs.watermark_ms}
