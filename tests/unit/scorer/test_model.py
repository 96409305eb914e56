"""The MMoE model and its parts: shapes, masking, distillation, and torch.jit.script of every serving module."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from features.assembly import FeatureSpec
from scorer import layers
from scorer.export import ServingModule
from scorer.model import MixtureOfExperts, ModelConfig, RankingModel, Summarization, build_model
from scorer.train import masked_bce, training_loss

SPEC = FeatureSpec(user_buckets=101, item_buckets=211, ctx_buckets=53, seq_len=6, hide_len=4)
SMALL = dict(expert_dims=[16, 8], tower_hidden=8, summary_dim=16, item_dim=8, seq_ffn=16, n_experts=3)
T = 6


def _inputs(b: int, n: int, seed: int = 0, empty_seq: bool = False) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    L = SPEC.seq_len
    mask = torch.rand(b, L, generator=g) < 0.6
    if empty_seq:
        mask[:] = False
    x = {"user_id": torch.randint(0, 101, (b, 1), generator=g), "ctx": torch.randint(0, 53, (b, 6), generator=g),
         "user_dense": torch.randn(b, SPEC.n_user_dense, generator=g),
         "seq_item": torch.randint(1, 211, (b, L), generator=g) * mask,
         "seq_action": torch.randint(1, 7, (b, L), generator=g) * mask,
         "seq_type": torch.randint(1, 3, (b, L), generator=g) * mask,
         "seq_age": torch.randint(0, SPEC.age_buckets, (b, L), generator=g), "seq_mask": mask,
         "hide_item": torch.randint(1, 211, (b, SPEC.hide_len), generator=g) * (~mask[:, : SPEC.hide_len]),
         "cand_item": torch.randint(1, 211, (n,), generator=g), "cand_type": torch.randint(1, 3, (n,), generator=g),
         "cand_pos": torch.randint(0, 10, (n,), generator=g), "cand_dense": torch.randn(n, SPEC.n_cand_dense, generator=g)}
    return x


@pytest.mark.parametrize("arch", ["mmoe", "shared_bottom"])
@pytest.mark.parametrize("use_sequence", [True, False])
def test_forward_shapes(arch: str, use_sequence: bool) -> None:
    m = build_model(SPEC, ModelConfig(arch=arch, use_sequence=use_sequence, **SMALL)).eval()
    out = m(_inputs(5, 5))
    assert out.shape == (5, T) and torch.isfinite(out).all()
    assert torch.isfinite(m(_inputs(3, 3, empty_seq=True))).all()


def test_user_side_once_equals_repeated_user() -> None:
    m = build_model(SPEC, ModelConfig(**SMALL)).eval()
    x = _inputs(1, 7)
    rep = {k: (v.expand(7, *v.shape[1:]) if not k.startswith("cand") else v) for k, v in x.items()}
    with torch.no_grad():
        assert torch.allclose(m(x), m(rep), atol=1e-5)
        dedup = dict(rep)
        dedup.update({k: v[:1] for k, v in rep.items() if not k.startswith("cand")})
        dedup["user_row"] = torch.zeros(7, dtype=torch.long)
        assert torch.allclose(m(dedup), m(rep), atol=1e-5)


def test_sequence_changes_scores_only_with_sequence_model() -> None:
    x, y = _inputs(4, 4, seed=1), _inputs(4, 4, seed=1)
    y["seq_item"] = (y["seq_item"] + 7) % 211 * y["seq_mask"]
    with torch.no_grad():
        seq = build_model(SPEC, ModelConfig(**SMALL)).eval()
        noseq = build_model(SPEC, ModelConfig(use_sequence=False, **SMALL)).eval()
        assert not torch.allclose(seq(x), seq(y))
        assert torch.equal(noseq(x), noseq(y))
        # the ablation also ignores dense features computed from the sequence
        from features.assembly import CAND_DENSE_NAMES, USER_DENSE_NAMES

        z = dict(x)
        z["user_dense"] = x["user_dense"].clone()
        z["user_dense"][:, USER_DENSE_NAMES.index("seq_fill")] += 3.0
        z["cand_dense"] = x["cand_dense"].clone()
        z["cand_dense"][:, CAND_DENSE_NAMES.index("seq_same_type_share")] += 3.0
        assert torch.equal(noseq(x), noseq(z))
        assert not torch.allclose(seq(x), seq(z))
        from scorer.model import REALTIME_COUNTERS

        batch = build_model(SPEC, ModelConfig(use_sequence=False, drop_features=list(REALTIME_COUNTERS), **SMALL)).eval()
        z["user_dense"][:, USER_DENSE_NAMES.index("user_3h:rate:click")] += 3.0
        assert torch.equal(batch(x), batch(z))


def test_hide_profile_changes_scores_only_with_sequence_model() -> None:
    """The long-term hide profile (``hide_item``) reaches the scores through the items' content, and the
    no-sequence ablation (a batch system) does not read it."""
    g = torch.Generator().manual_seed(3)
    table = torch.randn(211, SPEC.content_dim + 1, generator=g)
    table[:, -1], table[0] = 1.0, 0.0
    x = _inputs(4, 4, seed=2)
    x["hide_item"] = torch.randint(1, 211, (4, SPEC.hide_len), generator=g)
    y = dict(x)
    y["hide_item"] = (x["hide_item"] + 11) % 210 + 1
    empty = dict(x)
    empty["hide_item"] = torch.zeros_like(x["hide_item"])
    with torch.no_grad():
        seq = build_model(SPEC, ModelConfig(**SMALL)).eval()
        noseq = build_model(SPEC, ModelConfig(use_sequence=False, **SMALL)).eval()
        for m in (seq, noseq):
            m.set_content(table)
        assert not torch.allclose(seq(x), seq(y))
        assert not torch.allclose(seq(x), seq(empty))
        assert torch.equal(noseq(x), noseq(y)) and torch.equal(noseq(x), noseq(empty))


def test_masked_tasks_get_no_gradient_and_labels_are_ignored() -> None:
    logits = torch.randn(8, T, requires_grad=True)
    labels = (torch.rand(8, T) < 0.3).float()
    mask = torch.ones(8, T)
    mask[:5, 5] = 0  # organic rows: no video_view_10s
    loss = masked_bce(logits, labels, mask)
    loss.backward()
    assert logits.grad is not None
    assert torch.all(logits.grad[:5, 5] == 0) and torch.all(logits.grad[5:, 5] != 0)
    flipped = labels.clone()
    flipped[:5, 5] = 1 - flipped[:5, 5]
    assert torch.equal(masked_bce(logits, flipped, mask), loss)
    # each task is a mean over its valid rows; tasks are summed
    per = nn.functional.binary_cross_entropy_with_logits(logits[5:, 5], labels[5:, 5])
    only_video = torch.zeros(8, T)
    only_video[5:, 5] = 1
    assert torch.allclose(masked_bce(logits, labels, only_video), per)


def test_distillation_term() -> None:
    logits = torch.zeros(4, T)
    labels, mask = torch.zeros(4, T), torch.ones(4, T)
    teacher = torch.full((4, T), 3.0)
    plain = training_loss(logits, labels, mask)
    assert torch.equal(training_loss(logits, labels, mask, teacher, 0.0), plain)
    assert training_loss(logits, labels, mask, teacher, 0.5) > plain
    near = training_loss(teacher.clone(), labels, mask, teacher, 1.0) - training_loss(teacher.clone(), labels, mask)
    far = training_loss(logits, labels, mask, teacher, 1.0) - plain
    assert near < far  # the term pulls scores toward the teacher's
    for kind in ("logit_mse", "bce"):  # the distillation term alone is smaller at the teacher's scores
        at_teacher = training_loss(teacher, labels, mask, teacher, 1.0, kind) - training_loss(teacher, labels, mask)
        elsewhere = training_loss(logits, labels, mask, teacher, 1.0, kind) - plain
        assert at_teacher < elsewhere


def _modules() -> list[tuple[str, nn.Module, tuple[torch.Tensor, ...]]]:
    emb = nn.Embedding(211, 8)
    x = _inputs(3, 3)
    u = torch.randn(1, 16)
    c = torch.randn(5, 10)
    return [
        ("DenseNorm", layers.DenseNorm(4), (torch.randn(3, 4),)),
        ("UserRepresentation", layers.UserRepresentation(101, 53, 6, SPEC.n_user_dense),
         (x["user_id"], x["ctx"], x["user_dense"])),
        ("TransformerBlock", layers.TransformerBlock(8, 2, 16), (torch.randn(3, 7, 8), torch.rand(3, 7) < 2)),
        ("SequenceMixer", layers.SequenceMixer(emb, 6, SPEC.age_buckets, 6, 16, content_dim=5),
         (torch.randn(3, 16), x["seq_item"], x["seq_action"], x["seq_type"], x["seq_age"], x["seq_mask"],
          torch.randn(3, 6, 6))),
        ("NoSequence", layers.NoSequence(),
         (torch.randn(3, 16), x["seq_item"], x["seq_action"], x["seq_type"], x["seq_age"], x["seq_mask"],
          torch.randn(3, 6, 6))),
        ("CandidateRepresentation", layers.CandidateRepresentation(emb, 32, SPEC.n_cand_dense, content_dim=5),
         (x["cand_item"], x["cand_type"], x["cand_pos"], x["cand_dense"], torch.randn(3, 6))),
        ("ContentLookup", layers.ContentLookup(211, 5), (x["seq_item"],)),
        ("ContentMatch", layers.ContentMatch(16, 5, 5, user_buckets=11), (u, torch.randn(1, 8, 5),
                                                                          torch.ones(1, 4, 8), torch.randn(4, 6))),
        ("NoContentMatch", layers.NoContentMatch(), (u, torch.randn(1, 6, 0), torch.ones(1, 4, 6),
                                                     torch.randn(4, 1))),
        ("DotInteraction", layers.DotInteraction(16, 8), (u, torch.randn(5, 8))),
        ("SplitLinear", layers.SplitLinear(16, 10, 12), (u, c)),
        ("StackedExperts", layers.StackedExperts(16, 10, 3, [12, 6]), (u, c)),
        ("Gates", layers.Gates(16, 10, T, 3), (u, c)),
        ("MixtureOfExperts", MixtureOfExperts(16, 10, T, 3, [12, 6]), (u, c)),
        ("SharedBottom", layers.SharedBottom(16, 10, T, [12, 6]), (u, c)),
        ("Towers", layers.Towers(T, 6, 4), (torch.randn(T, 5, 6),)),
        ("Summarization", Summarization(10, 4), (torch.randn(3, 6), torch.randn(3, 4))),
        ("RankingModel", build_model(SPEC, ModelConfig(**SMALL)), (x,)),
        ("ServingModule", ServingModule(build_model(SPEC, ModelConfig(**SMALL))),
         ({k: (v[0] if not k.startswith("cand") else v) for k, v in _inputs(1, 9).items()},)),
    ]


@pytest.mark.parametrize("name,module,args", _modules(), ids=[m[0] for m in _modules()])
def test_every_serving_module_scripts(name: str, module: nn.Module, args: tuple[torch.Tensor, ...]) -> None:
    module = module.eval()
    scripted = torch.jit.script(module)
    with torch.no_grad():
        want, got = module(*args), scripted(*args)
    if isinstance(want, dict):
        assert want.keys() == got.keys()
        for k in want:
            assert torch.allclose(want[k], got[k], atol=1e-5), k
    else:
        assert torch.allclose(want, got, atol=1e-5)


def test_ranking_model_is_built_from_named_parts() -> None:
    m = RankingModel(SPEC, ModelConfig(**SMALL))
    names = {n for n, _ in m.named_children()}
    assert {"user_rep", "sequence", "summarize", "cand_rep", "interact", "mixture", "towers"} <= names
    assert isinstance(m.mixture, MixtureOfExperts)
    assert m.mixture.gates.t == T  # one gate per task


def _table(seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    t = torch.zeros(SPEC.item_buckets, SPEC.content_dim + 1)
    t[1:, :-1] = torch.nn.functional.normalize(torch.randn(SPEC.item_buckets - 1, SPEC.content_dim, generator=g), dim=1)
    t[1:, -1] = 1.0
    return t


def test_content_reaches_the_scores_only_with_content() -> None:
    x = _inputs(4, 4, seed=3)
    for use in (True, False):
        m = build_model(SPEC, ModelConfig(use_content=use, **SMALL)).eval()
        with torch.no_grad():
            before = m(x)
            assert m.set_content(_table()) == (SPEC.item_buckets - 1 if use else 0)
            after = m(x)
        assert torch.allclose(before, after) != use


def test_unknown_items_read_zero_content_and_still_score() -> None:
    m = build_model(SPEC, ModelConfig(**SMALL)).eval()
    table = _table()
    x = _inputs(1, 6, seed=4)
    unknown = int(x["cand_item"][0])
    table[unknown] = 0.0  # the catalogue did not know this item at training time
    m.set_content(table)
    got = m.content(x["cand_item"])
    assert torch.all(got[0] == 0.0) and torch.all(got[1:, -1] == 1.0)
    assert torch.all(m.content(torch.zeros(3, dtype=torch.long)) == 0.0)  # padding
    with torch.no_grad():
        assert torch.isfinite(m(x)).all()
    with pytest.raises(ValueError, match="content table"):
        m.set_content(torch.zeros(5, SPEC.content_dim + 1))


def test_content_match_sees_hidden_and_engaged_items() -> None:
    hide = T - 1  # code of hide in the test below (any code works: it is a constructor argument)
    cm = layers.ContentMatch(user_dim=4, dim=3, hide_code=hide, n_proj=2, user_buckets=5, n_taste=1)
    e = torch.eye(3)
    content = torch.cat([e, torch.ones(3, 1)], dim=1).unsqueeze(0)  # items along the three axes, all known
    action = torch.tensor([[1, hide, 1]])
    uid = torch.tensor([[2]])
    # the long-term hide profile: the third axis hidden twice, then padding
    profile = torch.cat([e[[2, 2, 0]], torch.tensor([[1.0], [1.0], [1.0]])], dim=1).unsqueeze(0)
    profile_mask = torch.tensor([[True, True, False]])
    with torch.no_grad():
        cm.taste.weight[2] = torch.tensor([0.0, 0.0, 2.0])  # user 2's taste: the third axis
    keys, groups = cm.user_side(content, action, torch.tensor([[True, True, False]]), uid, profile,
                                profile_mask)  # the third action is padding
    assert groups.tolist() == [[[1.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0], [0.0, 1.0, 0.0, 0.0, 0.0, 0.0, 0.0],
                                [1.0, 1.0, 0.0, 0.0, 0.0, 0.0, 0.0], [0.0, 0.0, 0.0, 1.0, 1.0, 0.0, 0.0]]]
    cand = torch.cat([e, torch.ones(3, 1)], dim=1)  # candidate k = item k
    out = cm(torch.zeros(1, 4), keys, groups, cand)
    mean, mx, size = out[:, :4], out[:, 4:8], out[:, 8]
    assert out.shape == (3, 4 * 2 + 1 + 2 * 2 + 1)
    assert out[:, -1].tolist() == [0.0, 0.0, 2.0]  # the taste vector against each candidate
    assert mx[:, 0].tolist() == [1.0, 0.0, 0.0]  # like the engaged item
    assert mx[:, 1].tolist() == [0.0, 1.0, 0.0]  # like the hidden item
    assert torch.allclose(mean[:, 2], torch.tensor([0.5, 0.5, 0.0]))
    assert mean[:, 3].tolist() == [0.0, 0.0, 1.0]  # like the long-term hides (padding left out)
    assert torch.allclose(size, torch.full((3,), math.log(3.0)))  # log1p of the profile's size
    # an empty group gives 0, not -1e4; unknown content (flag 0) joins no group
    content[0, 1, -1] = 0.0
    keys, groups = cm.user_side(content, action, torch.tensor([[True, True, False]]), uid, profile,
                                torch.zeros_like(profile_mask))
    out = cm(torch.zeros(1, 4), keys, groups, cand)
    assert groups[0, 1].sum() == 0 and torch.all(out[:, 5] == 0.0)
    assert torch.all(out[:, 7] == 0.0) and torch.all(out[:, 8] == 0.0)  # no hide profile: zeros
    # one user row broadcast equals the row repeated per candidate (serving vs training form)
    u = torch.randn(1, 4)
    rep = cm(u.expand(3, 4), keys.expand(3, -1, -1), groups.expand(3, -1, -1), cand)
    assert torch.allclose(cm(u, keys, groups, cand), rep, atol=1e-6)
