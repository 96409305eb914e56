"""Versioned model artifacts: ``<root>/<version>/{model.pt, model_state.pt, card.json}``.

``model.pt`` is the frozen TorchScript serving module (loads without project
code); ``model_state.pt`` the eager weights (teacher for score regularization);
``card.json`` says what the model is: version, tasks, architecture, feature
spec, training data summary (including the down-sampling rates: raw scores are
not probabilities), and metrics. ``<root>/latest`` is a text file naming the
current version. ``load_artifact`` is what serving uses.
"""

from __future__ import annotations

import json
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import torch

from features.assembly import FeatureSpec, ModelInputs

from .export import export_serving, load_serving
from .model import TASKS, ModelConfig, RankingModel

log = logging.getLogger(__name__)

#: /2: the model holds the item content table (``features.content``) and its user side returns content keys;
#: /3: it also reads the long-term hide profile (``hide_item``); older files lack that input and are refused
CARD_FORMAT = "feedrank-model/3"
MODEL_FILE, STATE_FILE, CARD_FILE, LATEST = "model.pt", "model_state.pt", "card.json", "latest"


class ArtifactError(RuntimeError):
    """An artifact directory that cannot be used; the message says what to do."""


def new_version(config: ModelConfig, seed: int) -> str:
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    return f"{stamp}-{config.arch}{'' if config.use_sequence else '-noseq'}-s{seed}"


def save_artifact(root: Path, model: RankingModel, spec: FeatureSpec, config: ModelConfig,
                  train_config: Mapping[str, Any], data: Mapping[str, Any], metrics: Mapping[str, Any],
                  version: str | None = None, set_latest: bool = True) -> Path:
    """Write a versioned artifact under ``root`` and (optionally) point ``root/latest`` at it."""
    version = version or new_version(config, int(train_config.get("seed", 0)))
    out = Path(root) / version
    out.mkdir(parents=True, exist_ok=True)
    card = {"format": CARD_FORMAT, "version": version, "created_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "tasks": list(TASKS), "model_config": config.to_dict(), "train_config": dict(train_config),
            "feature_spec": spec.to_dict(), "data": dict(data), "metrics": dict(metrics),
            "files": {"serving": MODEL_FILE, "state": STATE_FILE}, "torch": torch.__version__,
            "scores": "raw logits of a model trained on down-sampled data: calibrate before use",
            "content": {"dim": spec.content_dim if config.use_content else 0,
                        "buckets_with_content": int((model.content.table[:, -1] > 0).sum()),
                        "source": "catalogue content embeddings, a table inside the model by hashed item bucket"}}
    export_serving(model, out / MODEL_FILE, extra={"card.json": {k: card[k] for k in ("version", "tasks")}})
    torch.save(model.state_dict(), out / STATE_FILE)
    (out / CARD_FILE).write_text(json.dumps(card, indent=2, default=_jsonable))
    if set_latest:
        tmp = Path(root) / f".{LATEST}.tmp"
        tmp.write_text(version + "\n")
        os.replace(tmp, Path(root) / LATEST)
    log.info("saved model artifact %s", out)
    return out


def resolve(path: Path) -> Path:
    """An artifact dir, or a root whose ``latest`` file names one."""
    path = Path(path)
    if (path / CARD_FILE).exists():
        return path
    if (path / LATEST).exists():
        return path / (path / LATEST).read_text().strip()
    raise ArtifactError(f"no model artifact at {path}: run `feedrank train` (writes {path}/<version>/ and {path}/latest)")


@dataclass
class Artifact:
    """A loaded artifact: the serving module, its card and feature spec."""

    path: Path
    card: dict[str, Any]
    module: torch.jit.ScriptModule
    spec: FeatureSpec

    @property
    def version(self) -> str:
        return str(self.card["version"])

    @property
    def tasks(self) -> list[str]:
        return list(self.card["tasks"])

    def score(self, inputs: ModelInputs) -> np.ndarray:
        """Raw logits ``[N, T]`` for one request's assembled inputs."""
        tensors = {k: torch.from_numpy(v) for k, v in inputs.arrays().items()}
        with torch.inference_mode():
            return self.module(tensors)["logits"].numpy()


def stale_reason(path: Path) -> str | None:
    """Why the artifact at ``path`` (dir or root) cannot serve with this code, or None when it can
    (or when there is none: nothing to be stale)."""
    try:
        d = resolve(path)
        card = json.loads((d / CARD_FILE).read_text())
    except (ArtifactError, OSError, ValueError):
        return None
    if card.get("format") != CARD_FORMAT:
        return f"card format {card.get('format')!r}, this code needs {CARD_FORMAT!r}"
    return None


def load_artifact(path: Path) -> Artifact:
    """Load the artifact at ``path`` (a version dir, or a root with ``latest``)."""
    d = resolve(path)
    card = json.loads((d / CARD_FILE).read_text())
    if card.get("format") != CARD_FORMAT:
        raise ArtifactError(f"{d}: card format {card.get('format')!r}, expected {CARD_FORMAT!r} (this code's model "
                            "reads the long-term hide profile); retrain with `feedrank train` (the demo: delete its "
                            "model directory and set-up directory, it retrains on the next run)")
    module, _ = load_serving(d / MODEL_FILE)
    return Artifact(d, card, module, FeatureSpec.from_dict(card["feature_spec"]))


def load_eager(path: Path) -> RankingModel:
    """The eager model of an artifact (e.g. a teacher for score regularization)."""
    d = resolve(path)
    card = json.loads((d / CARD_FILE).read_text())
    if card.get("format") != CARD_FORMAT:
        raise ArtifactError(f"{d}: card format {card.get('format')!r}, expected {CARD_FORMAT!r}; retrain with "
                            "`feedrank train`")
    model = RankingModel(FeatureSpec.from_dict(card["feature_spec"]), ModelConfig.from_dict(card["model_config"]))
    missing, unexpected = model.load_state_dict(torch.load(d / STATE_FILE, weights_only=True), strict=False)
    # artifacts from before feature ablation masks lack the ``keep`` buffers; their default (all on) is right
    if unexpected or any(not k.endswith(".keep") for k in missing):
        raise ArtifactError(f"{d}: weights do not match the model (missing {missing[:3]}, unexpected "
                            f"{unexpected[:3]}); retrain with `feedrank train`")
    return model.eval()


def _jsonable(o: object) -> object:
    if isinstance(o, (np.integer, np.floating)):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    return str(o)


__all__ = ["Artifact", "ArtifactError", "load_artifact", "load_eager", "resolve", "save_artifact", "stale_reason"]
