"""The multi-task ranking model (after Pinterest's Closeup MMoE) and its shared-bottom baseline.

``RankingModel`` = representation -> sequence mixer -> summarization (user side,
once per request) and candidate representation -> MMoE (or shared bottom) ->
one tower per task (per candidate). Inputs are the dict of tensors produced from
``features.assembly.ModelInputs`` with a leading batch dim on the user part
(``[B, ...]``); the candidate part has ``N`` rows where ``B == N`` (training: one
user row per impression) or ``B == 1`` (serving: one user, N candidates).
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass, field
from typing import Dict, List, Tuple

import torch
from torch import Tensor, nn

from features.assembly import CAND_DENSE_NAMES, SEQUENCE_DERIVED, USER_DENSE_NAMES, FeatureSpec
from features.events import ACTIONS

from .layers import (CandidateRepresentation, ContentLookup, ContentMatch, DotInteraction, Gates, NoContentMatch,
                     NoSequence, SequenceMixer, SharedBottom, StackedExperts, Towers, UserRepresentation)

log = logging.getLogger(__name__)

TASKS: tuple[str, ...] = ACTIONS


@dataclass(frozen=True)
class ModelConfig:
    """Architecture knobs; stored in the artifact card."""

    arch: str = "mmoe"  # mmoe | shared_bottom
    use_sequence: bool = True
    item_dim: int = 32
    seq_heads: int = 2
    seq_ffn: int = 64
    summary_dim: int = 64
    n_experts: int = 6
    expert_dims: List[int] = field(default_factory=lambda: [256, 128])
    tower_hidden: int = 64
    n_interactions: int = 4
    #: item content embeddings (``features.content``) in the sequence tokens, the candidate and ``ContentMatch``
    use_content: bool = True
    #: user-vector projections dotted with the candidate's content (``ContentMatch``)
    n_content_proj: int = 4
    #: per-user content-space taste vectors dotted with the candidate's content (``ContentMatch``); off: at 2 the
    #: default eval's mean AUC fell 0.6937 -> 0.6784 (seed 0, full size; docs/benchmarks.md 2026-12-07)
    n_taste: int = 0
    #: dense feature names switched off (ablations); ``use_sequence=False`` adds ``SEQUENCE_DERIVED``
    drop_features: List[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, object]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, object]) -> "ModelConfig":
        return cls(**{k: v for k, v in d.items() if k in cls.__dataclass_fields__})  # type: ignore[arg-type]


#: model sizes (``feedrank train --size``, ``feedrank eval --small``): overrides of ``ModelConfig``'s widths.
#: ``small`` costs 0.10 MFLOP a candidate against 0.65 (docs/model.md has the quality and latency of each)
MODEL_SIZES: dict[str, dict[str, object]] = {
    "default": {},
    "small": {"expert_dims": [96, 48], "n_experts": 4, "tower_hidden": 32, "summary_dim": 48, "seq_ffn": 48},
}


class MixtureOfExperts(nn.Module):
    """K shared experts and one softmax gate per task: per-task inputs ``[T, N, h]``."""

    def __init__(self, user_dim: int, cand_dim: int, n_tasks: int, n_experts: int, dims: List[int]) -> None:
        super().__init__()
        self.experts = StackedExperts(user_dim, cand_dim, n_experts, dims)
        self.gates = Gates(user_dim, cand_dim, n_tasks, n_experts)
        self.out_dim = dims[-1]

    def forward(self, u: Tensor, c: Tensor, bf16: bool = False) -> Tensor:
        e = self.experts(u, c, bf16)  # [K, N, h], float32 (bfloat16 GEMMs inside when ``bf16``)
        g = self.gates(u, c)  # [N, T, K]
        return torch.einsum("ntk,knh->tnh", g, e)


class Summarization(nn.Module):
    """Compress user representation + sequence summary into one user vector ``[B, summary_dim]``."""

    def __init__(self, in_dim: int, out_dim: int) -> None:
        super().__init__()
        self.mlp = nn.Sequential(nn.Linear(in_dim, out_dim), nn.ReLU())

    def forward(self, user: Tensor, seq: Tensor) -> Tensor:
        return self.mlp(torch.cat([user, seq], dim=1))


class RankingModel(nn.Module):
    """Multi-task ranking model: ``forward(batch) -> logits [N, T]`` in ``TASKS`` order."""

    def __init__(self, spec: FeatureSpec, config: ModelConfig = ModelConfig()) -> None:
        super().__init__()
        self.spec_dict = spec.to_dict()
        self.config = config
        n_tasks = len(TASKS)
        item_emb = nn.Embedding(spec.item_buckets, config.item_dim, padding_idx=0)
        nn.init.normal_(item_emb.weight, std=0.05)
        content_dim = spec.content_dim if config.use_content else 0
        self.content = ContentLookup(spec.item_buckets, content_dim)
        self.user_rep = UserRepresentation(spec.user_buckets, spec.ctx_buckets, spec.n_ctx, spec.n_user_dense)
        self.sequence: nn.Module = (
            SequenceMixer(item_emb, len(TASKS), spec.age_buckets, spec.seq_len, self.user_rep.out_dim,
                          config.seq_heads, config.seq_ffn, content_dim)
            if config.use_sequence else NoSequence())
        seq_dim = 2 * config.item_dim if config.use_sequence else 0
        self.summarize = Summarization(self.user_rep.out_dim + seq_dim, config.summary_dim)
        self.cand_rep = CandidateRepresentation(item_emb, spec.position_buckets, spec.n_cand_dense,
                                                content_dim=content_dim)
        self.interact = DotInteraction(config.summary_dim, config.item_dim, config.n_interactions)
        # content against the sequence needs the sequence; the user x content term does not
        self.match: nn.Module = (ContentMatch(config.summary_dim, content_dim, TASKS.index("hide") + 1,
                                              config.n_content_proj, spec.user_buckets, config.n_taste)
                                 if config.use_content else NoContentMatch())
        self.seq_match = config.use_sequence
        cand_dim = self.cand_rep.out_dim + self.interact.out_dim + self.match.out_dim
        dims = list(config.expert_dims)
        self.mixture: nn.Module = (
            MixtureOfExperts(config.summary_dim, cand_dim, n_tasks, config.n_experts, dims)
            if config.arch == "mmoe" else SharedBottom(config.summary_dim, cand_dim, n_tasks, dims))
        self.towers = Towers(n_tasks, dims[-1], config.tower_hidden)
        drop = set(config.drop_features) | (set() if config.use_sequence else set(SEQUENCE_DERIVED))
        for norm, names in ((self.user_rep.norm, USER_DENSE_NAMES), (self.cand_rep.norm, CAND_DENSE_NAMES)):
            norm.keep.copy_(torch.tensor([0.0 if n in drop else 1.0 for n in names]))

    def encode_user(self, b: Dict[str, Tensor]) -> Tuple[Tensor, Tensor, Tensor]:
        """User side, computed once per request when serving: the user vector ``[B, summary_dim]`` and the
        content keys and groups of the recent actions and the long-term hide profile (``ContentMatch.user_side``)."""
        user = self.user_rep(b["user_id"], b["ctx"], b["user_dense"])
        seq_content = self.content(b["seq_item"])
        seq = self.sequence(user, b["seq_item"], b["seq_action"], b["seq_type"], b["seq_age"], b["seq_mask"],
                            seq_content)
        mask = b["seq_mask"] if self.seq_match else torch.zeros_like(b["seq_mask"])
        hide_item = b["hide_item"]
        hide_mask = hide_item > 0 if self.seq_match else torch.zeros_like(hide_item, dtype=torch.bool)
        keys, groups = self.match.user_side(seq_content, b["seq_action"], mask, b["user_id"],
                                            self.content(hide_item), hide_mask)
        return self.summarize(user, seq), keys, groups

    def score_candidates(self, u: Tensor, keys: Tensor, groups: Tensor, b: Dict[str, Tensor],
                         bf16: bool = False) -> Tensor:
        """Candidate side: the user side (``encode_user``, ``B`` rows, ``B`` = 1 or ``N``) + candidate tensors
        ``[N, ...]`` -> logits ``[N, T]``.

        ``bf16`` (serving on CPUs with native bfloat16 matmul): the expert GEMMs, ~85 % of
        the FLOPs, take bfloat16 operands; gates, towers and the logits stay float32.
        """
        content = self.content(b["cand_item"])
        c = self.cand_rep(b["cand_item"], b["cand_type"], b["cand_pos"], b["cand_dense"], content)
        c = torch.cat([c, self.interact(u, self.cand_rep.item_emb(b["cand_item"])),
                       self.match(u, keys, groups, content)], dim=1)
        return self.towers(self.mixture(u, c, bf16))

    def forward(self, b: Dict[str, Tensor]) -> Tensor:
        """Training/eval form. With ``user_row`` ``[N]`` in ``b``, the user part holds one row per
        distinct request and is gathered per candidate (each user side is encoded once)."""
        u, keys, groups = self.encode_user(b)
        if "user_row" in b:
            r = b["user_row"]
            u, keys, groups = u.index_select(0, r), keys.index_select(0, r), groups.index_select(0, r)
        return self.score_candidates(u, keys, groups, b)

    def set_content(self, table: Tensor) -> int:
        """Load the item content table ``[item_buckets, content_dim + 1]`` (``features.content.content_table``);
        returns the number of buckets with content (0 when the model does not use content)."""
        if not self.config.use_content:
            return 0
        self.content.set_table(table.to(torch.float32))
        return int((self.content.table[:, -1] > 0).sum())

    def set_normalization(self, user_dense: Tensor, cand_dense: Tensor) -> None:
        """Fix dense-feature normalization from training rows ``[R, Du]`` and ``[R, Dc]``."""
        self.user_rep.norm.set_stats(user_dense.mean(0), user_dense.std(0))
        self.cand_rep.norm.set_stats(cand_dense.mean(0), cand_dense.std(0))


#: Dense features kept fresh by the streaming system (user windows and 30-minute feedback loop).
REALTIME_COUNTERS: tuple[str, ...] = tuple(n for n in USER_DENSE_NAMES if n.startswith(("user_3h", "user_1d",
                                                                                          "feedback_30m")))


def build_model(spec: FeatureSpec, config: ModelConfig, seed: int = 0) -> RankingModel:
    """A freshly initialized model; ``seed`` makes the initialization reproducible."""
    torch.manual_seed(seed)
    return RankingModel(spec, config)


__all__ = ["MODEL_SIZES", "REALTIME_COUNTERS", "ModelConfig", "RankingModel", "TASKS", "build_model"]
