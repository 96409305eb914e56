"""Search blend weights on logged data against a stated objective and report the trade-off.

Objective (default): maximize the expected repins + closeups in the top ``k``
slots of each logged request, subject to expected hides per shown slot <= a cap.
Expectations use the calibrated probabilities of every logged candidate (a
counterfactual estimate: a re-ranked slate shows items whose labels were never
observed at that slot), which is why the blender needs calibrated inputs.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass, field
from typing import Any, Sequence

import numpy as np

from features.events import ACTIONS, ITEM_TYPES

from .blender import HIDE, BlendWeights, blend, item_type_index

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TuneObjective:
    top_k: int = 10
    gain_actions: tuple[str, ...] = ("repin", "closeup")
    cap_action: str = "hide"
    cap_per_slot: float = 0.03


@dataclass(frozen=True)
class Evaluation:
    weights: dict[str, Any]
    gain_per_request: float
    cap_per_slot: float
    feasible: bool


@dataclass
class TuneReport:
    objective: TuneObjective
    baseline: Evaluation
    best: Evaluation | None
    frontier: list[Evaluation] = field(default_factory=list)  # Pareto set: more gain needs more hides
    evaluated: int = 0

    def to_dict(self) -> dict[str, Any]:
        return {
            "objective": asdict(self.objective),
            "baseline": asdict(self.baseline),
            "best": asdict(self.best) if self.best else None,
            "frontier": [asdict(e) for e in self.frontier],
            "evaluated": self.evaluated,
        }

    def table(self) -> str:
        """The trade-off as text: gain vs hides along the Pareto frontier."""
        o = self.objective
        gain = "+".join(o.gain_actions)
        lines = [f"objective: max E[{gain}] in top {o.top_k} per request s.t. E[{o.cap_action}] per slot <= {o.cap_per_slot}",
                 f"{'E[' + gain + ']/request':>22} {'E[' + o.cap_action + ']/slot':>14}  feasible  hide weight (organic, video)"]
        for e in [self.baseline] + [f for f in self.frontier if f is not self.baseline]:
            hw = [e.weights["weights"][it]["hide"] for it in ITEM_TYPES]
            tag = "  <- baseline" if e is self.baseline else ("  <- best" if e is self.best else "")
            lines.append(f"{e.gain_per_request:22.4f} {e.cap_per_slot:14.4f}  {str(e.feasible):8s}  {hw}{tag}")
        return "\n".join(lines)


def topk_mask(utility: np.ndarray, groups: np.ndarray, k: int) -> np.ndarray:
    """True for the ``k`` highest-utility rows of each group."""
    order = np.lexsort((-utility, groups))
    g = groups[order]
    starts = np.r_[0, np.flatnonzero(g[1:] != g[:-1]) + 1]
    first = np.repeat(starts, np.diff(np.r_[starts, len(g)]))
    mask = np.zeros(len(utility), dtype=bool)
    mask[order] = (np.arange(len(g)) - first) < k
    return mask


def evaluate(weights: BlendWeights, probs: np.ndarray, item_types: Sequence[str] | np.ndarray,
             request_ids: np.ndarray, objective: TuneObjective = TuneObjective()) -> Evaluation:
    """Expected gain per request and capped action per slot when ranking by ``weights``."""
    _, groups = np.unique(np.asarray(request_ids), return_inverse=True)
    shown = topk_mask(blend(probs, item_types, weights), groups, objective.top_k)
    gain_cols = [ACTIONS.index(a) for a in objective.gain_actions]
    gain = float(probs[shown][:, gain_cols].sum()) / max(int(groups.max()) + 1, 1)
    cap = float(probs[shown, ACTIONS.index(objective.cap_action)].mean()) if shown.any() else 0.0
    return Evaluation(weights.to_mapping(), gain, cap, cap <= objective.cap_per_slot)


def tune(probs: np.ndarray, item_types: Sequence[str] | np.ndarray, request_ids: np.ndarray,
         base: BlendWeights, objective: TuneObjective = TuneObjective(), n_samples: int = 200,
         hide_weights: Sequence[float] = (-1, -5, -10, -20, -40, -80, -160), seed: int = 0) -> TuneReport:
    """Random search around ``base``: each positive weight scaled log-uniformly in [1/4, 4], hide from ``hide_weights``."""
    rng = np.random.default_rng(seed)
    item_idx = item_type_index(item_types)
    baseline = evaluate(base, probs, item_idx, request_ids, objective)
    evals: list[Evaluation] = [baseline]
    for i in range(n_samples):
        m = base.matrix.copy()
        pos = m > 0
        m[pos] *= np.exp(rng.uniform(np.log(0.25), np.log(4.0), pos.sum()))
        m[:, HIDE] = hide_weights[i % len(hide_weights)]
        evals.append(evaluate(BlendWeights(m, version=f"tune-{i}"), probs, item_idx, request_ids, objective))
    feasible = [e for e in evals if e.feasible]
    best = max(feasible, key=lambda e: e.gain_per_request) if feasible else None
    # Pareto frontier: sorted by hides, keep those that raise the gain
    frontier: list[Evaluation] = []
    for e in sorted(evals, key=lambda e: (e.cap_per_slot, -e.gain_per_request)):
        if not frontier or e.gain_per_request > frontier[-1].gain_per_request:
            frontier.append(e)
    if best is None:
        log.warning("no weight set meets %s <= %s per slot; raise the cap or widen hide_weights",
                    objective.cap_action, objective.cap_per_slot)
    return TuneReport(objective, baseline, best, frontier, evaluated=len(evals))
