"""The serving form: frozen TorchScript that loads in a fresh process without project code."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch

from features.assembly import FeatureSpec, assemble
from features.state import FeedbackSnapshot, SeqAction, UserState
from features.content import content_table
from features.world import DEFAULT_START_MS, World, WorldParams
from scorer.artifact import ArtifactError, load_artifact, load_eager, resolve, save_artifact, stale_reason
from scorer.export import export_serving, load_serving
from scorer.model import TASKS, ModelConfig, build_model

#: trains models or fits calibrators on simulated traffic (seconds to a minute): not in the fast tier
pytestmark = pytest.mark.slow

SPEC = FeatureSpec(user_buckets=101, item_buckets=211, ctx_buckets=53, seq_len=6)
CFG = ModelConfig(expert_dims=[16, 8], tower_hidden=8, summary_dim=16, item_dim=8, seq_ffn=16, n_experts=3)

FRESH = textwrap.dedent("""
    import importlib.abc, sys
    class Block(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in ("features", "scorer", "streams"):
                raise ImportError("project code must not be needed: " + name)
    sys.meta_path.insert(0, Block())
    import torch
    model_path, inputs_path, out_path = sys.argv[1:4]
    files = {"feature_spec.json": "", "tasks.json": ""}
    m = torch.jit.load(model_path, _extra_files=files)
    x = torch.load(inputs_path)
    with torch.inference_mode():
        out = m(x)
    torch.save({k: v.clone() for k, v in out.items()}, out_path)
    t = files["tasks.json"]
    print(t.decode() if isinstance(t, bytes) else t)
""")


def _request_inputs(n: int = 12) -> dict[str, np.ndarray]:
    world = World(seed=2, n_users=30, n_items=300)
    req = world.new_request(user=4, ts=DEFAULT_START_MS + 7_200_000, n_candidates=n)
    acts = tuple(SeqAction(f"i{k}", "click", req.ts - 60_000 * k, "home", "organic") for k in range(4))
    return assemble(UserState(req.user_id, acts), FeedbackSnapshot(), req.context, req.candidates, SPEC).arrays()


def _eager_logits(model: torch.nn.Module, arrays: dict[str, np.ndarray]) -> torch.Tensor:
    x = {k: torch.from_numpy(v) for k, v in arrays.items()}
    for k in x:
        if not k.startswith("cand"):
            x[k] = x[k].unsqueeze(0)
    with torch.no_grad():
        return model(x)


@pytest.mark.parametrize("arch", ["mmoe", "shared_bottom"])
def test_fresh_process_loads_without_project_and_matches_eager(tmp_path: Path, arch: str) -> None:
    model = build_model(SPEC, ModelConfig(**{**CFG.to_dict(), "arch": arch}), seed=1).eval()
    path = export_serving(model, tmp_path / "model.pt")
    arrays = _request_inputs()
    torch.save({k: torch.from_numpy(v) for k, v in arrays.items()}, tmp_path / "inputs.pt")
    proc = subprocess.run([sys.executable, "-I", "-c", FRESH, str(path), str(tmp_path / "inputs.pt"),
                           str(tmp_path / "out.pt")], cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout.strip().splitlines()[-1]) == list(TASKS)
    out = torch.load(tmp_path / "out.pt")
    want = _eager_logits(model, arrays)
    assert out["logits"].shape == (len(arrays["cand_item"]), len(TASKS))
    assert torch.allclose(out["logits"], want, atol=1e-5)
    assert torch.allclose(out["scores"], torch.sigmoid(want), atol=1e-6)


def test_serving_module_is_frozen_and_scores_any_n(tmp_path: Path) -> None:
    module, files = load_serving(export_serving(build_model(SPEC, CFG), tmp_path / "m.pt"))
    assert files["tasks.json"] == list(TASKS) and files["feature_spec.json"]["seq_len"] == 6
    assert not list(module.named_parameters())  # frozen: weights folded into constants
    x = {k: torch.from_numpy(v) for k, v in _request_inputs(30).items()}
    with torch.inference_mode():
        full = module(x)["logits"]
        part = module({**x, **{k: x[k][:5] for k in ("cand_item", "cand_type", "cand_pos", "cand_dense")}})["logits"]
        none = module({**x, **{k: x[k][:0] for k in ("cand_item", "cand_type", "cand_pos", "cand_dense")}})
    assert torch.allclose(full[:5], part, atol=1e-5)  # candidates are scored independently
    assert none["logits"].shape == (0, len(TASKS))


def test_chunked_scoring_matches_one_block(tmp_path: Path) -> None:
    from scorer.export import ServingModule

    model = build_model(SPEC, CFG, seed=4).eval()
    x = {k: torch.from_numpy(v) for k, v in _request_inputs(40).items()}
    one = torch.jit.freeze(torch.jit.script(ServingModule(model, chunk=4096).eval()))
    small = torch.jit.freeze(torch.jit.script(ServingModule(model, chunk=7).eval()))
    with torch.inference_mode():
        assert torch.allclose(one(x)["logits"], small(x)["logits"], atol=1e-5)


def test_artifact_round_trip(tmp_path: Path) -> None:
    model = build_model(SPEC, CFG, seed=3).eval()
    world = World(seed=2, n_users=30, n_items=300, params=WorldParams(content_dim=SPEC.content_dim))
    model.set_content(torch.from_numpy(content_table(*world.catalogue_content(), SPEC.item_buckets)))
    data = {"train": {"sampling": {"rates": {"none": 0.1}}}}
    out = save_artifact(tmp_path, model, SPEC, CFG, {"seed": 3, "distill_weight": 0.0}, data, {"auc": 0.7},
                        version="v-test")
    assert out == tmp_path / "v-test" and resolve(tmp_path) == out
    art = load_artifact(tmp_path)
    card = json.loads((out / "card.json").read_text())
    assert art.version == "v-test" and card["tasks"] == list(TASKS)
    assert card["data"]["train"]["sampling"]["rates"] == {"none": 0.1}
    assert card["feature_spec"]["seq_len"] == 6 and "cand_dense" in card["feature_spec"]
    arrays = _request_inputs()
    from features.assembly import ModelInputs

    logits = art.score(ModelInputs(**arrays))
    assert np.allclose(logits, _eager_logits(model, arrays).numpy(), atol=1e-5)
    teacher = load_eager(out)
    assert np.allclose(_eager_logits(teacher, arrays).numpy(), logits, atol=1e-5)
    assert card["content"]["buckets_with_content"] > 0 and card["content"]["dim"] == SPEC.content_dim
    # the content table travels in both files: scores differ from the same model without it
    bare = build_model(SPEC, CFG, seed=3).eval()
    assert not np.allclose(_eager_logits(bare, arrays).numpy(), logits, atol=1e-4)
    with pytest.raises(ArtifactError, match="feedrank train"):
        load_artifact(tmp_path / "nothing")


def test_a_card_of_the_format_before_content_is_refused_clearly(tmp_path: Path) -> None:
    model = build_model(SPEC, CFG, seed=3).eval()
    out = save_artifact(tmp_path, model, SPEC, CFG, {"seed": 3}, {}, {}, version="v-old")
    assert stale_reason(tmp_path) is None and stale_reason(tmp_path / "absent") is None
    card = json.loads((out / "card.json").read_text())
    card["format"] = "feedrank-model/1"
    (out / "card.json").write_text(json.dumps(card))
    assert "feedrank-model/1" in (stale_reason(tmp_path) or "")
    for load in (load_artifact, load_eager):
        with pytest.raises(ArtifactError, match="feedrank-model/1.*retrain"):
            load(tmp_path)


class _Old(torch.nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x


def _old_serving_file() -> torch.jit.ScriptModule:
    """A frozen module without the ``bf16`` attribute: a serving file exported before the precision switch."""
    return torch.jit.freeze(torch.jit.script(_Old()).eval())


@pytest.mark.parametrize("arch", ["mmoe", "shared_bottom"])
def test_bfloat16_experts_stay_close_to_float32_and_switch_back(tmp_path: Path, arch: str) -> None:
    from scorer.export import set_precision

    model = build_model(SPEC, ModelConfig(**{**CFG.to_dict(), "arch": arch}), seed=5).eval()
    module, _ = load_serving(export_serving(model, tmp_path / "m.pt"))
    x = {k: torch.from_numpy(v) for k, v in _request_inputs(40).items()}
    with torch.inference_mode():
        assert set_precision(module, "float32") == "float32"
        f32 = module(x)["logits"]
        assert set_precision(module, "bfloat16") == "bfloat16"
        bf = module(x)
        assert set_precision(module, "float32") == "float32"
        again = module(x)["logits"]
    assert bf["logits"].dtype == torch.float32 and bf["scores"].dtype == torch.float32
    diff = (bf["logits"] - f32).abs().max().item()
    assert 0 < diff < 0.05  # the bfloat16 path ran, and it rounds, not breaks
    assert torch.equal(again, f32)  # the switch is a flag, not a one-way conversion
    assert torch.allclose(f32, _eager_logits(model, _request_inputs(40)), atol=1e-5)


def test_precision_auto_follows_the_cpu_and_old_files_serve_float32(tmp_path: Path) -> None:
    from scorer.export import native_bf16, set_precision

    assert native_bf16("processor\t: 0\nflags\t\t: fpu sse avx512f avx512_bf16 avx512_vnni\n")
    assert native_bf16("flags\t\t: fpu avx2 amx_bf16 amx_tile\n")
    assert not native_bf16("flags\t\t: fpu sse avx2 avx512f avx512bw\n")
    assert not native_bf16("")
    module, _ = load_serving(export_serving(build_model(SPEC, CFG), tmp_path / "m.pt"))
    assert set_precision(module, "auto") == ("bfloat16" if native_bf16() else "float32")
    assert module.bf16 is (native_bf16())
    with pytest.raises(ValueError, match="float16.*expected one of auto, float32, bfloat16"):
        set_precision(module, "float16")
    old = _old_serving_file()
    assert set_precision(old, "bfloat16") == "float32" and set_precision(old, "auto") == "float32"


def test_an_old_file_says_why_it_serves_float32(caplog: pytest.LogCaptureFixture) -> None:
    import logging

    from scorer.export import set_precision

    old = _old_serving_file()
    with caplog.at_level(logging.INFO, logger="scorer.export"):
        assert set_precision(old, "bfloat16") == "float32"
    assert [r.levelno for r in caplog.records] == [logging.WARNING]
    assert "predates bfloat16 serving" in caplog.records[0].getMessage()
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="scorer.export"):
        assert set_precision(old, "float32") == "float32"
    assert not caplog.records  # float32 asked for: nothing to say
