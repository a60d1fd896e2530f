"""The bank: one typed protocol, built in one place, with a one-way flow below it."""

from __future__ import annotations

import ast
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from fedpurel_lite.config import RunConfig
from fedpurel_lite.data import bank as banks
from fedpurel_lite.data.features import FeatureBank
from fedpurel_lite.data.token_bank import TokenBank

PACKAGE = Path(banks.__file__).resolve().parents[1]
#: what the Bank protocol promises (its properties and methods)
PROTOCOL = sorted(n for proto in (banks.FeatureSource, banks.Bank) for n in vars(proto) if not n.startswith("_"))


def _features(n: int = 6, classes: int = 3, dim: int = 4) -> FeatureBank:
    g = torch.Generator().manual_seed(0)
    x = F.normalize(torch.randn(n, dim, generator=g), dim=-1)
    labels = torch.arange(n) % classes
    return FeatureBank(x, labels, x[:classes].clone(), labels[:classes].clone(), x[:classes].clone(), 20.0,
                       [f"c{i}" for i in range(classes)], np.arange(classes), {"inputs": {"templates": ["{}"]}})


def _tokens(features: FeatureBank) -> TokenBank:
    n_train, n_test = len(features.train_labels), len(features.test_labels)
    return TokenBank(features, torch.zeros(n_train, 5, 8), torch.ones(n_test, 5, 8))


def test_the_protocol_lists_what_the_engine_reads():
    assert set(PROTOCOL) >= {"inputs", "train_features", "train_inputs", "test_inputs", "train_labels", "test_labels",
                             "text_features", "logit_scale", "class_names", "class_order", "manifest",
                             "zero_shot_logits"}


@pytest.mark.parametrize("kind", ["features", "tokens"])
def test_both_banks_offer_every_protocol_member_and_declare_their_inputs(kind):
    fb = _features()
    bank = fb if kind == "features" else _tokens(fb)
    missing = [n for n in PROTOCOL if not hasattr(type(bank), n) and n not in getattr(bank, "__dataclass_fields__", {})]
    assert missing == []
    assert bank.inputs == kind == banks.input_kind(bank)
    expected = fb.train_features if kind == "features" else bank.train_tokens
    assert banks.model_inputs(bank, "train") is expected
    assert torch.equal(bank.zero_shot_logits(fb.test_features), 20.0 * fb.test_features @ fb.text_features.T)
    assert bank.manifest is fb.manifest and bank.class_names is fb.class_names


def test_a_bank_that_declares_no_inputs_holds_features_and_a_bad_declaration_is_refused(core_bank):
    assert banks.model_inputs(core_bank, "test") is core_bank.test_features
    with pytest.raises(ValueError, match="'train' or 'test'"):
        banks.model_inputs(core_bank, "val")

    class Odd:
        inputs = "pixels"

    with pytest.raises(TypeError, match="'pixels'"):
        banks.input_kind(Odd())


def test_build_bank_gives_what_the_peft_declares():
    fb = _features()
    tb = _tokens(fb)
    head = RunConfig()  # the default PEFT reads features
    assert banks.build_bank(head, features=fb) is fb
    assert banks.build_bank(head, features=tb) is fb  # a token bank asked for features gives its feature bank
    assert banks.build_bank(head.with_overrides({"peft": "lora"}), features=tb) is tb
    text_lora = head.with_overrides({"peft": "lora", "peft.lora.towers": "text"})  # reads features
    assert banks.build_bank(text_lora, features=fb) is fb


def test_assemble_gives_a_features_peft_the_feature_bank_of_a_token_bank():
    from fedpurel_lite.engine.assembly import assemble

    fb = _features(n=60, classes=3)
    parts = assemble(RunConfig().with_overrides({"num_clients": 2, "min_client_size": 2, "imbalance_ratio": 2}),
                     bank=_tokens(fb), progress=False)
    assert parts.bank is fb and parts.clients()[0].x.dim() == 2


def _imports(path: Path) -> set[str]:
    """The package modules ``path`` imports anywhere (relative or absolute), as dotted names below the package."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    here = path.relative_to(PACKAGE).with_suffix("").parts[:-1]
    out = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = list(here[: len(here) - node.level + 1])
                mod = ".".join([*base, *(node.module or "").split(".")]).strip(".")
            elif (node.module or "").startswith("fedpurel_lite"):
                mod = node.module.removeprefix("fedpurel_lite").strip(".")
            else:
                continue
            names = [f"{mod}.{a.name}".strip(".") for a in node.names]
            out.update([mod, *names] if mod else names)
        elif isinstance(node, ast.Import):
            out.update(a.name.removeprefix("fedpurel_lite.") for a in node.names if a.name.startswith("fedpurel_lite"))
    return {m for m in out if m}


@pytest.mark.parametrize("module", ["data.features", "data.token_bank", "data.cache_entry", "data.backbone",
                                    "data.openclip_adapter", "engine.lora_tower", "engine.prompt_tower"])
def test_nothing_below_the_bank_climbs_back_up(module):
    imported = _imports(PACKAGE / f"{module.replace('.', '/')}.py")
    above = {"engine.assembly", "engine.simulate", "engine.client", "peft", "engine.lora_tower",
             "engine.prompt_tower", "data.bank"}
    climbs = {m for m in imported if any(m == a or m.startswith(f"{a}.") for a in above)
              and not (m == module or m.startswith(f"{module}."))}
    assert climbs == set(), f"{module} imports {sorted(climbs)}"


def test_the_data_caches_do_not_import_the_training_towers():
    assert not {m for m in _imports(PACKAGE / "data" / "token_bank.py")
                if m.startswith(("engine.lora_tower", "peft"))}
    assert "data.openclip_adapter" in _imports(PACKAGE / "data" / "token_bank.py")
