"""LoRA PEFT: zero-shot start, exact tower pass, gradients, FedAvg over LoRA only, runs, resume, caches."""

from __future__ import annotations

import copy
import warnings
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from conftest import assert_pullback_matches_autograd
from fedpurel_lite.config import RunConfig
from fedpurel_lite.data.bank import model_inputs
from fedpurel_lite.data.token_bank import TokenBank, load_or_build_tokens
from fedpurel_lite.engine.lora_tower import block_forward, vision_tokens
from fedpurel_lite.peft import build_peft
from fedpurel_lite.peft.lora import LoRACLIP

pytestmark = pytest.mark.usefixtures("core_one_thread")

NAMES = ["red star", "blue circle", "green square", "yellow heart", "pink moon", "grey cross"]


@pytest.fixture(scope="module")
def lora_clip(tmp_path_factory):
    """A random-init tiny open_clip (vision: 2 blocks, patch 8 -> 17 tokens) and its tokenizer."""
    import open_clip

    from conftest import register_tiny_clip

    name = register_tiny_clip(tmp_path_factory.mktemp("lora_cfg"), "lora-test-tiny", embed_dim=16, patch_size=8,
                              text_width=32, text_layers=2)
    torch.manual_seed(0)
    model = open_clip.create_model(name, pretrained=None).eval()
    model.visual.transformer.resblocks = model.visual.transformer.resblocks.extend(
        [copy.deepcopy(model.visual.transformer.resblocks[0])])
    model.requires_grad_(False)
    return model, open_clip.get_tokenizer(name)


def _images(n: int, classes: int = len(NAMES), seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Random images whose mean colour depends on the class (so a model can learn them)."""
    g = torch.Generator().manual_seed(seed)
    labels = torch.arange(classes).repeat_interleave(n // classes)
    colour = torch.randn(classes, 3, 1, 1, generator=g)
    return colour[labels] + 0.8 * torch.randn(len(labels), 3, 32, 32, generator=g), labels


def _bank(model, n_train: int = 240, n_test: int = 60) -> TokenBank:
    """A TokenBank of the tiny model on class-coloured images, zero-shot text from the text tower."""
    import open_clip

    xtr, ytr = _images(n_train, seed=1)
    xte, yte = _images(n_test, seed=2)
    with torch.no_grad():
        feats = [F.normalize(model.encode_image(x).float(), dim=-1) for x in (xtr, xte)]
        text = open_clip.build_zero_shot_classifier(model, open_clip.get_tokenizer("lora-test-tiny"), NAMES,
                                                    ["a photo of a {}."], device="cpu")
    features = SimpleNamespace(train_features=feats[0], train_labels=ytr, test_features=feats[1], test_labels=yte,
                               text_features=F.normalize(text.T.float(), dim=-1), logit_scale=18.0,
                               class_names=list(NAMES), class_order=np.arange(len(NAMES)))
    return TokenBank(features, vision_tokens(model.visual, xtr), vision_tokens(model.visual, xte))


def _backbone(lora_clip):
    model, tok = lora_clip
    return SimpleNamespace(model=model, tokenizer=tok)


def _perturb(peft: LoRACLIP, seed: int = 0, scale: float = 0.05) -> None:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in peft.trainable_parameters():
            p.add_(scale * torch.randn(p.shape, generator=g, dtype=p.dtype))


def test_lora_starts_at_zero_shot(lora_clip):
    model, _ = lora_clip
    bank = _bank(model)
    peft = build_peft("lora", bank, _backbone(lora_clip))
    assert peft.inputs == "tokens" and model_inputs(bank, "test") is bank.test_tokens
    head = build_peft("head", bank)
    want = head(bank.test_features)  # the zero-shot / text-anchored head path on the cached features
    torch.testing.assert_close(peft(bank.test_tokens), want, atol=1e-5, rtol=0)
    torch.testing.assert_close(peft.predict_logits(bank.test_tokens, batch_size=7), want.detach(), atol=1e-5, rtol=0)
    # B = 0 at init, A random; the update is not zero once B moves
    names = peft.shared_names()
    assert len(names) == 6 * 2 and all(n.startswith("vision.") and n[-2:] in ("_A", "_B") for n in names)
    assert all(float(p.detach().abs().sum()) == 0 for n, p in peft.named_parameters() if n.endswith("_B"))
    _perturb(peft)
    assert (peft(bank.test_tokens) - want).abs().max() > 1e-3


def test_no_grad_tower_in_row_chunks_gives_the_same_features(lora_clip, monkeypatch):
    """Without grad the vision tower runs a few rows at a time; every image's features are unchanged."""
    import fedpurel_lite.peft.lora as lora_mod

    model, _ = lora_clip
    bank = _bank(model, 60, 30)
    peft = build_peft("lora", bank, _backbone(lora_clip))
    _perturb(peft)
    x = bank.test_tokens
    with torch.no_grad():
        whole = peft.image_features(x)
        monkeypatch.setattr(lora_mod, "NO_GRAD_ROWS", 7)
        chunked = peft.image_features(x)
    assert chunked.shape == whole.shape
    torch.testing.assert_close(chunked, whole, atol=1e-6, rtol=0)
    torch.testing.assert_close(peft.predict_logits(x, batch_size=1024), peft(x).detach(), atol=1e-5, rtol=0)


@pytest.mark.parametrize("query", [None, 0, 5])
def test_block_pass_equals_open_clip_with_merged_weights(lora_clip, query):
    """The LoRA block equals open_clip's own block with ``W + scaling B A`` put into its weights."""
    model, _ = lora_clip
    bank = _bank(model, 60, 6)
    peft = build_peft("lora", bank, _backbone(lora_clip))
    _perturb(peft, scale=0.2)
    blk, lora = model.visual.transformer.resblocks[0], peft.vision[0]
    merged = copy.deepcopy(blk)
    with torch.no_grad():
        merged.attn.in_proj_weight.add_(lora.merged(peft.scaling))
    x = bank.train_tokens[:9]
    want = merged(x)
    want = want if query is None else want[:, query:query + 1]
    torch.testing.assert_close(block_forward(blk, x, lora, peft.scaling, query=query), want, atol=1e-5, rtol=1e-5)
    with torch.no_grad():  # the merged no-grad path
        torch.testing.assert_close(block_forward(blk, x, lora, peft.scaling, query=query), want, atol=1e-5,
                                   rtol=1e-5)
    # and the whole tower: image features of the merged model, end to end from the images
    merged_model = copy.deepcopy(model)
    with torch.no_grad():
        for blk_m, fac in zip(merged_model.visual.transformer.resblocks, peft.vision, strict=True):
            blk_m.attn.in_proj_weight.add_(fac.merged(peft.scaling))
        images, _ = _images(6, seed=5)
        want_f = F.normalize(merged_model.encode_image(images), dim=-1)
    torch.testing.assert_close(peft.image_features(vision_tokens(model.visual, images)), want_f, atol=1e-5, rtol=1e-5)


def test_lora_gradients_against_finite_differences(lora_clip):
    """Autograd through the custom attention pass, in float64, against finite differences."""
    model, _ = lora_clip
    bank = _bank(model, 60, 6)
    peft = build_peft("lora", bank, _backbone(lora_clip))
    peft64 = copy.deepcopy(peft).double()  # deep copy: the towers are copied too, the fixture stays float32
    _perturb(peft64, scale=0.1)
    x = bank.train_tokens[:3].double()
    params = peft64.trainable_parameters()
    names = peft64.shared_names()

    for i in (0, 1, 5, 10):  # q_A of block 0, q_B, v_B, v_A of block 1

        def f(p, i=i):
            return torch.func.functional_call(peft64, {names[i]: p}, (x,), strict=False).sum(dim=0)

        assert torch.autograd.gradcheck(f, (params[i].detach().clone().requires_grad_(True),), eps=1e-6,
                                        atol=1e-5)


def test_forward_with_pullback_matches_autograd(lora_clip):
    model, _ = lora_clip
    bank = _bank(model, 60, 6)
    peft = build_peft("lora", bank, _backbone(lora_clip))
    _perturb(peft)
    x = bank.train_tokens[:8]
    cot = torch.randn(2, 8, len(NAMES), generator=torch.Generator().manual_seed(1))
    got = assert_pullback_matches_autograd(peft, x, cot)
    assert any(float(g.abs().sum()) > 0 for g in got)


def test_text_tower_option_starts_at_zero_shot_and_trains_text_only(lora_clip):
    model, _ = lora_clip
    bank = _bank(model, 60, 12)
    cfg = RunConfig().with_overrides({"peft.lora.towers": "text", "peft.lora.rank": 4})
    peft = build_peft("lora", bank, _backbone(lora_clip), cfg)
    assert peft.inputs == "features" and all(n.startswith("text_lora.") for n in peft.shared_names())
    torch.testing.assert_close(peft.class_features(), bank.text_features, atol=1e-5, rtol=0)
    both = build_peft("lora", bank, _backbone(lora_clip), cfg.with_overrides({"peft.lora.towers": "both"}))
    torch.testing.assert_close(both(bank.test_tokens), build_peft("head", bank)(bank.test_features), atol=1e-5,
                               rtol=0)
    _perturb(peft)
    assert (peft.class_features() - bank.text_features).abs().max() > 1e-4
    logits, pullback = peft.forward_with_pullback(bank.test_features[:4])
    grads = pullback(torch.randn(1, 4, len(NAMES)))
    assert len(grads) == len(peft.shared_names()) == 2 * 3 * 2  # 2 text blocks x q/k/v x (A, B)
    assert all(g.shape == (1, *p.shape) for g, p in zip(grads, peft.trainable_parameters(), strict=True))


def test_clone_shares_the_frozen_towers(lora_clip):
    model, _ = lora_clip
    peft = build_peft("lora", _bank(model, 60, 6), _backbone(lora_clip))
    twin = peft.clone()
    assert twin._frozen["visual"] is peft._frozen["visual"] is model.visual
    assert twin.vision[0].q_A is not peft.vision[0].q_A
    torch.testing.assert_close(twin.vision[0].q_A, peft.vision[0].q_A)
    assert set(peft.shared_state()) == set(peft.shared_names())


def _cfg(**kw):
    base = dict(method="fedpurel", peft="lora", num_clients=3, participation=0.67, rounds=2, imbalance_ratio=4,
                min_client_size=5, lr=0.05, personal_lr=0.05, batch_size=16, seed=3, rank=2)
    base.update(kw)
    return RunConfig().with_overrides(base)


def test_simulate_lora_aggregates_only_lora_and_resumes(lora_clip, tmp_path):
    from fedpurel_lite.engine.simulate import run

    model, _ = lora_clip
    bank, bb = _bank(model), _backbone(lora_clip)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    res = run(_cfg(rounds=3), bank=bank, backbone=bb, progress=False)
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)  # frozen weights bit-identical
    glob = {k for k in res.final_state if k.startswith("global/")}
    assert glob == {f"global/{n}" for n in build_peft("lora", bank, bb, _cfg()).shared_names()}
    assert all(k.split("/", 2)[-1].startswith("vision.") for k in res.final_state)
    assert any(float(res.final_state[k].abs().sum()) > 0 for k in glob if k.endswith("_B"))  # it trained
    assert res.history[-1]["telemetry"]["steps"] > 0
    # two rounds, then resume to three: the same history and tensors bit for bit
    run(_cfg(rounds=2), bank=bank, backbone=bb, progress=False, checkpoint_dir=tmp_path)
    resumed = run(_cfg(rounds=3), bank=bank, backbone=bb, progress=False, checkpoint_dir=tmp_path, resume=True)
    strip = [{k: v for k, v in h.items() if k != "time_s"} for h in res.history]
    assert [{k: v for k, v in h.items() if k != "time_s"} for h in resumed.history] == strip
    for k, v in res.final_state.items():
        assert torch.equal(resumed.final_state[k], v), k
    # two clients at once (the automatic choice on two cores): the same numbers
    twice = run(_cfg(rounds=3, workers=2), bank=bank, backbone=bb, progress=False)
    assert [{k: v for k, v in h.items() if k != "time_s"} for h in twice.history] == strip


@pytest.mark.parametrize("method", ["fedavg", "fedpurel-linear", "fedrep", "interp", "folio", "local-ft"])
def test_every_personalization_runs_on_tokens(lora_clip, method):
    from fedpurel_lite.engine.simulate import run

    model, _ = lora_clip
    res = run(_cfg(method=method, rounds=1), bank=_bank(model, 120, 30), backbone=_backbone(lora_clip),
              progress=False)
    assert 0.0 <= res.history[-1]["pm"]["accuracy"] <= 100.0


def test_token_cache_is_reused_and_a_damaged_one_rebuilt(lora_clip, tmp_path):
    model, tok = lora_clip
    images, labels = _images(12, seed=7)
    arr = ((images.clamp(-2, 2) + 2) / 4 * 255).permute(0, 2, 3, 1).to(torch.uint8).numpy()
    world = SimpleNamespace(name="toy", train_images=arr, test_images=arr[:6])
    calls = []

    def make():
        calls.append(1)
        return world

    import open_clip

    _, _, preprocess = open_clip.create_model_and_transforms("lora-test-tiny", pretrained=None)
    bb = SimpleNamespace(model=model, tokenizer=tok, preprocess=preprocess, name="lora-test-tiny", pretrained=None,
                         weights_id="test", logit_scale=18.0, preprocess_cfg=dict(model.visual.preprocess_cfg))
    first = load_or_build_tokens("F", bb, "toy:1", make, tmp_path, progress=False)
    assert first.train_tokens.shape == (12, 17, 32) and first.features == "F" and len(calls) == 1
    again = load_or_build_tokens("F", bb, "toy:1", make, tmp_path, progress=False)
    assert len(calls) == 1 and torch.equal(again.test_tokens, first.test_tokens)
    tensor_file = first.token_path.with_suffix(".safetensors")
    data = bytearray(tensor_file.read_bytes())
    data[-5] ^= 0xFF
    tensor_file.write_bytes(bytes(data))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        rebuilt = load_or_build_tokens("F", bb, "toy:1", make, tmp_path, progress=False)
    assert len(calls) == 2 and torch.equal(rebuilt.train_tokens, first.train_tokens)
    assert any("damaged" in str(w.message) for w in caught)
    assert list(tmp_path.glob("*.safetensors.corrupt-1"))


def test_flower_client_steps_on_lora(lora_clip):
    """The ClientApp's stage-1 and stage-2 steps on a LoRA run assembled like a node's (tokens in, LoRA out)."""
    pytest.importorskip("flwr", reason="the Flower layer needs the 'flower' extra")
    from flwr.app import ArrayRecord, ConfigRecord, Context, Message, RecordDict
    from flwr.supercore.task_identity import TaskIdentity

    from fedpurel_lite.engine.assembly import assemble
    from fedpurel_lite.engine.client import train_shared
    from fedpurel_lite.flower.client_app import ClientRuntime, evaluate_step, train_step

    TaskIdentity.run_id, TaskIdentity.task_id, TaskIdentity.node_id = 1, 1, 0
    model, _ = lora_clip
    bank, bb = _bank(model), _backbone(lora_clip)

    def runtime() -> ClientRuntime:
        parts = assemble(_cfg(), bank=bank, backbone=bb, progress=False)
        return ClientRuntime(parts.config, parts.method, parts.clients()[1], parts.peft, parts.peft.shared_state(),
                             parts.new_personal(), parts.class_prior())

    rt = runtime()
    assert rt.data.x.dim() == 3  # the node trains on vision tokens
    start = {k: v + 0.01 for k, v in rt.initial_state.items()}
    msg = Message(RecordDict({"arrays": ArrayRecord(start), "config": ConfigRecord({"round-idx": 2,
                                                                                  "server-round": 3})}),
                  dst_node_id=7, message_type="train")
    got = train_step(msg, rt).content["arrays"].to_torch_state_dict()
    other = runtime()
    want, _ = train_shared(other.peft, start, other.data, other.config, other.method, 2, other.prior)
    assert set(got) == set(want) == set(rt.initial_state)
    for name in want:
        torch.testing.assert_close(got[name], want[name], rtol=0, atol=0)
    ctx = Context(run_id=1, node_id=7, node_config={"partition-id": 1}, state=RecordDict(), run_config={})
    ev = Message(RecordDict({"arrays": ArrayRecord(got), "config": ConfigRecord(
        {"round-idx": 2, "server-round": 3, "personalize": True})}), dst_node_id=7, message_type="evaluate")
    reply = evaluate_step(ev, ctx, rt)
    assert set(ctx.state["personal"].to_torch_state_dict()) == set(rt.initial_state)  # a private LoRA branch
    assert len(reply.content["metrics"]["pm-pred"]) == len(rt.data.y_test)
