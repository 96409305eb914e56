"""The worker's serving state: the loaded scorer, its calibrators and what it logs.

``Serving.load(settings)`` loads the model artifact (``<model_dir>/latest``),
the offline-fit calibrators for that model version when there are some
(``<calibrator_dir>``; else raw scores pass through until the online
calibrators publish), and the blender. ``score`` runs the score function in
the score process (``streams.serving.score_process``; ``score_process=false``: in a
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
from dataclasses import replace
from typing import Any, Callable

from streams.serving.model_slot import ModelSlot

log = logging.getLogger(__name__)


def _score_thread_init(settings) -> None:
    """Each score thread uses the picked torch thread count (OpenMP's is per calling thread)."""
    import torch

    from scorer.threads import pick_score_threads

    torch.set_num_threads(pick_score_threads(settings.score_threads))


def publish_score_threads(settings) -> int:
    """The torch thread count scoring uses (``scorer.threads``), set on ``feedrank_score_threads`` and logged.

    The score process picks the same: it inherits the worker's CPU affinity and cgroup.
    """
    from scorer.threads import pick_score_threads
    from streams.metrics import SCORE_THREADS

    threads = pick_score_threads(settings.score_threads)
    source = "setting" if settings.score_threads > 0 else "usable_cores"
    SCORE_THREADS.clear()
    SCORE_THREADS.labels(source).set(threads)
    log.info("scoring with %d torch thread(s) (%s)", threads, f"FEEDRANK_SCORE_THREADS={settings.score_threads}"
             if settings.score_threads > 0 else "picked from the usable cores; FEEDRANK_SCORE_THREADS overrides")
    return threads


class Serving(ModelSlot):
    """The worker's model slot, its score process or thread, prediction logging and the drift view."""

    def __init__(self, settings, scorer=None, holder=None) -> None:
        super().__init__(settings, scorer, holder)
        #: the producer of prediction logs once it runs, None: not logged. The worker gives the table
        #: engine's, idempotent on real Kafka: Faust's producer is not (outside transactions), and a retry
        #: through a leader change appended a log twice
        self.log_producer: Callable[[], Any] = lambda: None
        self._drift: dict[str, Any] | None = None
        self._consistency: dict[str, Any] | None = None
        self._executor = ThreadPoolExecutor(max_workers=settings.score_concurrency, thread_name_prefix="score",
                                            initializer=_score_thread_init, initargs=(settings,))
        self.proc = None  # streams.serving.score_process.ScoreProcess when scoring runs in a process of its own

    @classmethod
    def load(cls, settings) -> "Serving":
        """Load model, calibrators and blender (and start the score process); no model: /score answers 503."""
        import torch

        from streams.serving.score_process import ScoreProcess

        torch.set_num_threads(publish_score_threads(settings))
        serving = cls(settings)
        if settings.score_process:  # before the first reload: the model metric then waits for the child
            serving.proc = ScoreProcess(settings, lambda: serving.holder.current if serving.holder else None,
                                        on_version=lambda version: serving._publish_model_info())
        serving.reload()
        if serving.proc is not None:
            serving.proc.start()
        return serving

    @property
    def served_version(self) -> str | None:
        """The model that answers /score: the score process's (once it said hello), else this slot's."""
        return self.proc.model_version if self.proc is not None else self.model_version

    def _publish_model_info(self) -> None:
        """``feedrank_model_info`` follows what the score process actually serves."""
        from streams.metrics import MODEL_INFO

        MODEL_INFO.clear()
        version = self.served_version
        if version is not None:
            precision = self.precision if version == self.model_version else None
            MODEL_INFO.labels(version, precision or "unknown").set(1)

    def connect(self) -> None:
        """From the event loop, at worker start: connect to the score process (so reloads reach it)."""
        if self.proc is not None:
            self.proc.poke()

    def ready(self) -> bool:
        """From the event loop: a model is served (by the score process when there is one; connects to it)."""
        if self.proc is not None:
            self.proc.poke()
            return self.proc.ready and self.proc.model_version is not None
        return self.scorer is not None

    def read_user(self, views, user_id: str):
        """The user's state in the form ``score`` takes (raises ``NotLocalError`` for another worker's user)."""
        state = views.get_encoded_user_state(user_id) if self.proc is not None else views.get_user_state(user_id)
        # read by the sampled model inputs only (``ServedInputs.behind_ms``): no work when none are logged
        behind = views.behind_ms(user_id) if self.settings.feature_log_sample > 0 else 0
        return replace(state, behind_ms=behind) if behind else state

    def reload(self) -> bool:
        """``ModelSlot.reload``, then the score process follows."""
        swapped = super().reload()
        proc = self.proc
        # Also when this slot did not swap: a child that missed a reload (it was restarting) catches up.
        if proc is not None and proc.connected and proc.ready and proc.model_version != self.model_version:
            log.info("score process now serving model %s", proc.reload())
        return swapped

    def install_calibrators(self, cs) -> bool:
        """``ModelSlot.install_calibrators``, then the score process follows."""
        installed = super().install_calibrators(cs)
        if installed and self.proc is not None:
            self.proc.install(cs)
        return installed

    async def score(self, req, body: bytes, user, feedback):
        """Score ``req`` (``body`` as received) in the score process or thread, log it; the ``ResponseBody``.

        ``user`` comes from ``read_user``. The log is encoded where the scoring
        runs (~1 ms off the event loop).
        """
        from streams.metrics import SCORE_STAGE_SECONDS, SCORE_THREAD_SECONDS

        t_submit = time.perf_counter()
        if self.proc is not None:
            response, log_value, t_start, t_end, cpu, runnable = await self.proc.score(body, user, feedback)
        else:
            scored, log_value, t_start, t_end, cpu, runnable = await asyncio.get_running_loop().run_in_executor(
                self._executor, self.score_and_encode, req, user, feedback)
            response = scored.body
        SCORE_STAGE_SECONDS.labels("wait").observe(t_start - t_submit)
        SCORE_STAGE_SECONDS.labels("score").observe(t_end - t_start)
        SCORE_THREAD_SECONDS.labels("cpu").observe(cpu)
        SCORE_THREAD_SECONDS.labels("runnable").observe(runnable)
        SCORE_THREAD_SECONDS.labels("blocked").observe(max(0.0, t_end - t_start - cpu - runnable))
        producer = self.log_producer()
        if producer is not None:
            t_log = time.perf_counter()
            await producer.send(self.settings.topic_predictions, value=log_value, key=user.user_id.encode())
            SCORE_STAGE_SECONDS.labels("log").observe(time.perf_counter() - t_log)
        return response

    # -- drift (fed by streams.engine.calibration_loop) ---------------------------------------
    def set_drift(self, record: dict[str, Any]) -> None:
        from streams.metrics import CALIBRATION_ALERT, CALIBRATION_ERROR

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

    # -- online/offline consistency (fed by streams.engine.consistency_monitor) ----------------
    def set_consistency(self, report: dict[str, Any]) -> None:
        from streams.metrics import CONSISTENCY_REQUESTS, FEATURE_MISMATCH, FEATURE_REL_ERROR

        self._consistency = report
        CONSISTENCY_REQUESTS.set(report.get("requests", 0))
        for name, v in (report.get("features") or {}).items():
            FEATURE_MISMATCH.labels(name).set(v["mismatch_rate"])
            FEATURE_REL_ERROR.labels(name).set(v["mean_rel_error"])
        seq = report.get("sequence") or {}
        if seq.get("n"):
            FEATURE_MISMATCH.labels("sequence.tokens").set(seq["mismatch_rate"])

    def latest_consistency(self) -> dict[str, Any] | None:
        return self._consistency
