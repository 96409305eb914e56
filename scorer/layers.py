"""Building blocks of the ranking model, each a small scriptable ``nn.Module``.

Representation (embeddings + normalized dense), the sequence mixer (a transformer
over the user's real-time actions plus a context token), the experts, gates and
towers of the MMoE, and the shared-bottom alternative. Expert and gate first
layers are split into a user part and a candidate part, so serving computes the
user part once per request (``[1, ...]``) and broadcasts it over ``N`` candidates.
"""

from __future__ import annotations

import logging
import math
from typing import List, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

log = logging.getLogger(__name__)


class DenseNorm(nn.Module):
    """``(x - mean) / std`` with statistics fixed from training data, clipped to [-5, 5], times a
    0/1 ``keep`` mask (ablations switch feature columns off without changing the inputs)."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.register_buffer("mean", torch.zeros(dim))
        self.register_buffer("std", torch.ones(dim))
        self.register_buffer("keep", torch.ones(dim))

    def set_stats(self, mean: Tensor, std: Tensor) -> None:
        self.mean.copy_(mean)
        self.std.copy_(std.clamp_min(1e-3))

    def forward(self, x: Tensor) -> Tensor:
        """x: ``[..., dim]`` -> ``[..., dim]``."""
        return ((x - self.mean) / self.std).clamp(-5.0, 5.0) * self.keep


class UserRepresentation(nn.Module):
    """Hashed user id, context categoricals and normalized user dense features -> ``[B, out_dim]``."""

    def __init__(self, user_buckets: int, ctx_buckets: int, n_ctx: int, n_dense: int,
                 user_dim: int = 16, ctx_dim: int = 8) -> None:
        super().__init__()
        self.user_emb = nn.Embedding(user_buckets, user_dim)
        self.ctx_emb = nn.Embedding(ctx_buckets, ctx_dim)
        self.norm = DenseNorm(n_dense)
        self.out_dim = user_dim + n_ctx * ctx_dim + n_dense

    def forward(self, user_id: Tensor, ctx: Tensor, dense: Tensor) -> Tensor:
        """user_id ``[B, 1]``, ctx ``[B, C]``, dense ``[B, Du]`` -> ``[B, out_dim]``."""
        b = user_id.shape[0]
        return torch.cat([self.user_emb(user_id).reshape(b, -1), self.ctx_emb(ctx).reshape(b, -1),
                          self.norm(dense)], dim=1)


class TransformerBlock(nn.Module):
    """One post-norm transformer encoder layer with a key padding mask."""

    def __init__(self, dim: int, heads: int, ffn: int) -> None:
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        self.ln1 = nn.LayerNorm(dim)
        self.ffn = nn.Sequential(nn.Linear(dim, ffn), nn.ReLU(), nn.Linear(ffn, dim))
        self.ln2 = nn.LayerNorm(dim)

    def forward(self, x: Tensor, valid: Tensor) -> Tensor:
        """x ``[B, S, d]``, valid ``[B, S]`` bool (at least one True per row) -> ``[B, S, d]``."""
        b, s, d = x.shape
        h = self.heads
        q, k, v = self.qkv(x).reshape(b, s, 3, h, d // h).permute(2, 0, 3, 1, 4).unbind(0)
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=valid[:, None, None, :])
        y = y.transpose(1, 2).reshape(b, s, d)
        x = self.ln1(x + self.proj(y))
        return self.ln2(x + self.ffn(x))


class ContentLookup(nn.Module):
    """Hashed item bucket -> the item's content embedding and a has-content flag, ``[..., dim + 1]``.

    The table (``features.content.content_table``) is a buffer: built from the
    catalogue at training time, saved with the model, frozen into the serving
    file. Unknown items and the padding bucket read zeros with flag 0.
    """

    def __init__(self, item_buckets: int, dim: int) -> None:
        super().__init__()
        self.dim = dim
        self.register_buffer("table", torch.zeros(item_buckets, dim + 1))

    def set_table(self, table: Tensor) -> None:
        if table.shape != self.table.shape:
            raise ValueError(f"content table {tuple(table.shape)}, expected {tuple(self.table.shape)}")
        self.table.copy_(table)

    def forward(self, item: Tensor) -> Tensor:
        """item ``[...]`` int64 -> ``[..., dim + 1]``."""
        return F.embedding(item, self.table)


class ContentMatch(nn.Module):
    """The candidate's content against the user's actions and the user vector.

    User side (once per request, ``user_side``): content keys ``[B, L + H + Q, D]``
    and a 0/1 membership ``groups [B, G, L + H + Q]`` of four groups: of the
    recent actions (``L``) engaged (every action but hide), hidden and any; and
    the long-term hide profile (``H``: the items hidden over the whole stored
    history, ``hide_item``). Candidate side: the cosine-like similarity (dot
    product of unit vectors) of the candidate's content with each key, then
    per group its mean and max (0 for an empty group), the log of the hide
    profile's size (how much to trust it), ``P`` dot products of learned
    projections of the user vector with the candidate content, ``P`` of
    learned projections of the hide profile's mean content with it (a
    bilinear form: the content space's own axes are not the topics'), and
    ``Q`` dot products of the user's own content-space "taste" vectors (a
    hashed-user embedding) with it. The taste vectors ride as ``Q`` extra key
    rows (group weight 0). Output ``[N, 2G + 1 + 2P + Q]``.
    """

    def __init__(self, user_dim: int, dim: int, hide_code: int, n_proj: int = 4, user_buckets: int = 1,
                 n_taste: int = 2) -> None:
        super().__init__()
        self.d, self.p, self.q, self.hide_code = dim, n_proj, n_taste, hide_code
        self.proj = nn.Linear(user_dim, n_proj * dim)
        self.hide_proj = nn.Linear(dim, n_proj * dim)
        self.taste = nn.Embedding(user_buckets, n_taste * dim)
        nn.init.normal_(self.taste.weight, std=0.01)
        self.out_dim = 2 * 4 + 1 + 2 * n_proj + n_taste

    def user_side(self, content: Tensor, action: Tensor, mask: Tensor, user_id: Tensor, hide_content: Tensor,
                  hide_mask: Tensor) -> Tuple[Tensor, Tensor]:
        """content ``[B, L, D+1]``, action ``[B, L]``, mask ``[B, L]``, user_id ``[B, 1]``, hide_content
        ``[B, H, D+1]``, hide_mask ``[B, H]`` -> keys ``[B, L + H + Q, D]`` (the actioned items' content,
        the hidden items' content, then the user's taste vectors), groups ``[B, 4, L + H + Q]``."""
        present = mask & (content[:, :, self.d] > 0)
        hidden = present & (action == self.hide_code)
        engaged = present & (action != self.hide_code)
        b, n_seq, n_hide = content.shape[0], content.shape[1], hide_content.shape[1]
        profile = (hide_mask & (hide_content[:, :, self.d] > 0)).to(content.dtype).unsqueeze(1)
        recent = torch.stack([engaged, hidden, present], dim=1).to(content.dtype)
        # each group's membership laid over all the keys: recent actions, hide profile, taste vectors
        groups = torch.cat([F.pad(recent, [0, n_hide + self.q]), F.pad(profile, [n_seq, self.q])], dim=1)
        taste = self.taste(user_id.reshape(b)).reshape(b, self.q, self.d)
        keys = torch.cat([content[:, :, : self.d], hide_content[:, :, : self.d], taste], dim=1)
        return keys, groups

    def forward(self, u: Tensor, keys: Tensor, groups: Tensor, cand: Tensor) -> Tensor:
        """u ``[B, S]``, keys ``[B, K, D]``, groups ``[B, 4, K]``, cand ``[N, D+1]``; ``B`` is 1 or ``N``."""
        c = cand[:, : self.d]
        s = (keys * c.unsqueeze(1)).sum(-1)  # [N, K]
        cnt = groups.sum(-1)  # [B, 4]
        mean = (s.unsqueeze(1) * groups).sum(-1) / cnt.clamp_min(1.0)  # [N, 4]
        mx = (s.unsqueeze(1) + (groups - 1.0) * 1e4).amax(-1)
        mx = torch.where(cnt > 0, mx, torch.zeros_like(mx))
        size = torch.log1p(cnt[:, 3:4]).expand(c.shape[0], 1)
        up = self.proj(u).reshape(u.shape[0], self.p, self.d)
        dots = (up * c.unsqueeze(1)).sum(-1)  # [N, P]
        profile = (groups[:, 3].unsqueeze(-1) * keys).sum(1) / cnt[:, 3:4].clamp_min(1.0)  # [B, D]
        hp = self.hide_proj(profile).reshape(profile.shape[0], self.p, self.d)
        hide_dots = (hp * c.unsqueeze(1)).sum(-1)  # [N, P]
        return torch.cat([mean, mx, size, dots, hide_dots, s[:, s.shape[1] - self.q:]], dim=1)


class NoContentMatch(nn.Module):
    """Stand-in for ``ContentMatch`` in the ablation without item content: ``[N, 0]``."""

    def __init__(self) -> None:
        super().__init__()
        self.out_dim = 0

    def user_side(self, content: Tensor, action: Tensor, mask: Tensor, user_id: Tensor, hide_content: Tensor,
                  hide_mask: Tensor) -> Tuple[Tensor, Tensor]:
        return content[:, :, :0], content.new_zeros((content.shape[0], 4, content.shape[1]))

    def forward(self, u: Tensor, keys: Tensor, groups: Tensor, cand: Tensor) -> Tensor:
        return cand.new_zeros((cand.shape[0], 0))


class SequenceMixer(nn.Module):
    """Transformer mixer over the real-time action sequence plus a context token.

    Tokens are item-id + item-content + action + item-type + age + recency embeddings; the context
    token is a projection of the user representation. Output is the context
    token's final state concatenated with the masked mean of the action tokens.
    """

    def __init__(self, item_emb: nn.Embedding, n_actions: int, age_buckets: int, seq_len: int,
                 user_dim: int, heads: int = 2, ffn: int = 64, content_dim: int = 0) -> None:
        super().__init__()
        d = item_emb.embedding_dim
        self.item_emb = item_emb
        self.content_proj = nn.Linear(content_dim + 1, d)
        self.action_emb = nn.Embedding(n_actions + 1, d)
        self.type_emb = nn.Embedding(3, d)
        self.age_emb = nn.Embedding(age_buckets, d)
        self.recency = nn.Parameter(torch.randn(seq_len, d) * 0.02)
        self.ctx_token = nn.Linear(user_dim, d)
        self.block = TransformerBlock(d, heads, ffn)
        self.out_dim = 2 * d

    def forward(self, user: Tensor, item: Tensor, action: Tensor, item_type: Tensor, age: Tensor,
                mask: Tensor, content: Tensor) -> Tensor:
        """user ``[B, Du]``; item/action/item_type/age ``[B, L]`` int; mask ``[B, L]`` bool; content
        ``[B, L, content_dim + 1]`` (``ContentLookup``) -> ``[B, 2d]``."""
        tok = (self.item_emb(item) + self.content_proj(content) + self.action_emb(action)
               + self.type_emb(item_type) + self.age_emb(age))
        tok = tok + self.recency[None, : tok.shape[1]]
        x = torch.cat([self.ctx_token(user).unsqueeze(1), tok], dim=1)
        valid = torch.cat([torch.ones_like(mask[:, :1]), mask], dim=1)
        y = self.block(x, valid)
        m = mask.unsqueeze(-1).to(y.dtype)
        pooled = (y[:, 1:] * m).sum(1) / m.sum(1).clamp_min(1.0)
        return torch.cat([y[:, 0], pooled], dim=1)


class NoSequence(nn.Module):
    """Stand-in for ``SequenceMixer`` in the ablation without the real-time sequence."""

    def __init__(self) -> None:
        super().__init__()
        self.out_dim = 0

    def forward(self, user: Tensor, item: Tensor, action: Tensor, item_type: Tensor, age: Tensor,
                mask: Tensor, content: Tensor) -> Tensor:
        """-> ``[B, 0]``."""
        return user.new_zeros((user.shape[0], 0))


class DotInteraction(nn.Module):
    """DLRM-style interaction: dot products of the candidate's item embedding with P user projections.

    The user projections ``[B or 1, P, d]`` are computed once per request; the
    output ``[N, P]`` joins the candidate representation, so experts see the
    user-item affinity directly instead of having to learn a product with ReLUs.
    """

    def __init__(self, user_dim: int, item_dim: int, n_proj: int = 4) -> None:
        super().__init__()
        self.p, self.d = n_proj, item_dim
        self.proj = nn.Linear(user_dim, n_proj * item_dim)
        self.out_dim = n_proj

    def forward(self, u: Tensor, item_vec: Tensor) -> Tensor:
        """u ``[B or 1, Du]``, item_vec ``[N, d]`` -> ``[N, P]``."""
        up = self.proj(u).reshape(u.shape[0], self.p, self.d)
        return (up * item_vec.unsqueeze(1)).sum(-1) * (1.0 / math.sqrt(self.d))


class CandidateRepresentation(nn.Module):
    """Item id (shared with the sequence), item content (+ flag), item type, position and normalized
    dense -> ``[N, out_dim]``."""

    def __init__(self, item_emb: nn.Embedding, position_buckets: int, n_dense: int, small_dim: int = 4,
                 content_dim: int = 0) -> None:
        super().__init__()
        self.item_emb = item_emb
        self.type_emb = nn.Embedding(3, small_dim)
        self.pos_emb = nn.Embedding(position_buckets, small_dim)
        self.norm = DenseNorm(n_dense)
        self.out_dim = item_emb.embedding_dim + content_dim + 1 + 2 * small_dim + n_dense

    def forward(self, item: Tensor, item_type: Tensor, position: Tensor, dense: Tensor, content: Tensor) -> Tensor:
        """item/item_type/position ``[N]``, dense ``[N, Dc]``, content ``[N, content_dim + 1]`` -> ``[N, out_dim]``."""
        return torch.cat([self.item_emb(item), content, self.type_emb(item_type), self.pos_emb(position),
                          self.norm(dense)], dim=1)


class SplitLinear(nn.Module):
    """``relu(u @ Wu + c @ Wc + b)`` where ``u`` is ``[B or 1, Du]`` and ``c`` is ``[N, Dc]``."""

    def __init__(self, user_dim: int, cand_dim: int, out_dim: int, activation: bool = True) -> None:
        super().__init__()
        self.user = nn.Linear(user_dim, out_dim)
        self.cand = nn.Linear(cand_dim, out_dim, bias=False)
        self.activation = activation

    def forward(self, u: Tensor, c: Tensor, bf16: bool = False) -> Tensor:
        """-> ``[N, out_dim]`` (``u`` broadcast when it has one row); bfloat16 when ``bf16``.

        Serving has one user row: as a 1-D bias it is copied into the output
        and the GEMM accumulates onto it (a 2-D ``[1, out]`` bias made it a
        matmul plus a separate broadcast add over ``[N, out]``). The ReLU runs
        in place on the fresh output (no second ``[N, out]`` buffer).
        ``bf16``: the candidate GEMM takes bfloat16 operands (accumulating in
        float32 inside the kernel) and returns bfloat16; the weight's cast is a
        constant, folded once by ``torch.jit.freeze``.
        """
        bias = self.user(u)
        if bias.shape[0] == 1:
            bias = bias.squeeze(0)
        if bf16:
            y = torch.addmm(bias.to(torch.bfloat16), c.to(torch.bfloat16), self.cand.weight.t().to(torch.bfloat16))
        else:
            y = torch.addmm(bias, c, self.cand.weight.t())
        return torch.relu_(y) if self.activation else y


class StackedExperts(nn.Module):
    """K expert MLPs (in -> h1 -> h2) evaluated together; output ``[K, N, h2]``."""

    def __init__(self, user_dim: int, cand_dim: int, n_experts: int, dims: List[int]) -> None:
        super().__init__()
        self.k = n_experts
        self.first = SplitLinear(user_dim, cand_dim, n_experts * dims[0])
        self.w = nn.ParameterList()
        self.b = nn.ParameterList()
        for d_in, d_out in zip(dims[:-1], dims[1:]):
            self.w.append(nn.Parameter(torch.randn(n_experts, d_in, d_out) * math.sqrt(2.0 / d_in)))
            self.b.append(nn.Parameter(torch.zeros(n_experts, 1, d_out)))
        self.out_dim = dims[-1]

    def forward(self, u: Tensor, c: Tensor, bf16: bool = False) -> Tensor:
        """``bf16``: every expert GEMM in bfloat16 (float32 accumulation), the output back in float32."""
        h = self.first(u, c, bf16)  # [N, K*h1]
        h = h.reshape(h.shape[0], self.k, -1).transpose(0, 1)  # [K, N, h1]
        for w, b in zip(self.w, self.b):
            if bf16:
                h = torch.relu_(torch.baddbmm(b.to(torch.bfloat16), h, w.to(torch.bfloat16)))
            else:
                h = torch.relu_(torch.baddbmm(b, h, w))  # in place: the baddbmm output is fresh
        return h.float() if bf16 else h


class Gates(nn.Module):
    """One softmax gate per task over K experts: ``[N, T, K]``."""

    def __init__(self, user_dim: int, cand_dim: int, n_tasks: int, n_experts: int) -> None:
        super().__init__()
        self.t, self.k = n_tasks, n_experts
        self.logits = SplitLinear(user_dim, cand_dim, n_tasks * n_experts, activation=False)

    def forward(self, u: Tensor, c: Tensor) -> Tensor:
        g = self.logits(u, c).reshape(-1, self.t, self.k)
        # softmax over K (6) by hand: torch's kernel took 0.34 ms on [500, 6, 6], this 0.07 ms (1 thread)
        e = torch.exp(g - g.amax(dim=-1, keepdim=True))
        return e / e.sum(dim=-1, keepdim=True)


class SharedBottom(nn.Module):
    """Baseline: one shared MLP for every task, output ``[T, N, h2]`` (the same for each task)."""

    def __init__(self, user_dim: int, cand_dim: int, n_tasks: int, dims: List[int]) -> None:
        super().__init__()
        self.t = n_tasks
        self.first = SplitLinear(user_dim, cand_dim, dims[0])
        layers: List[nn.Module] = []
        for d_in, d_out in zip(dims[:-1], dims[1:]):
            layers += [nn.Linear(d_in, d_out), nn.ReLU()]
        self.rest = nn.Sequential(*layers)
        self.out_dim = dims[-1]

    def forward(self, u: Tensor, c: Tensor, bf16: bool = False) -> Tensor:
        """``bf16``: the first (widest) layer in bfloat16, the rest in float32."""
        h = self.rest(self.first(u, c, bf16).float())  # [N, h2]
        return h.unsqueeze(0).expand(self.t, -1, -1)


class Towers(nn.Module):
    """One MLP tower per task on that task's input: ``[T, N, h]`` -> logits ``[N, T]``."""

    def __init__(self, n_tasks: int, in_dim: int, hidden: int) -> None:
        super().__init__()
        self.w1 = nn.Parameter(torch.randn(n_tasks, in_dim, hidden) * math.sqrt(2.0 / in_dim))
        self.b1 = nn.Parameter(torch.zeros(n_tasks, 1, hidden))
        self.w2 = nn.Parameter(torch.randn(n_tasks, hidden, 1) * math.sqrt(1.0 / hidden))
        self.b2 = nn.Parameter(torch.full((n_tasks, 1, 1), -3.0))

    def forward(self, x: Tensor) -> Tensor:
        h = torch.relu_(torch.baddbmm(self.b1, x, self.w1))
        return torch.baddbmm(self.b2, h, self.w2).squeeze(-1).transpose(0, 1)
