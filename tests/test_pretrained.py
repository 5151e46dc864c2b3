"""Shipped optimizers: each loads from the package without training code, trains a fresh model, and is refused
like a checkpoint when its file names anything but a registered update rule."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from torch import nn

from lightning_l2o import (
    list_pretrained,
    load_learned_optimizer,
    load_pretrained,
    pretrained_card,
)
from lightning_l2o import pretrained as pretrained_module
from lightning_l2o.checkpoints import load_meta_optimizer, meta_optimizer_config
from lightning_l2o.errors import ConfigError
from lightning_l2o.pretrained import CARD_FIELDS, FORMAT, NOT_MEASURED, export_pretrained, main, pretrained_rule
from lightning_l2o.report import main as report_main

SHIPPED = ["ff_fashion_mnist_task17", "ff_mixture_adam_scale", "ff_mixture_adam_schedule", "lstm_fashion_mnist_task17",
           "opt2vec_mixed", "pna_fashion_mnist_task17"]
NEEDS_THE_MODEL = {"pna_fashion_mnist_task17"}
"""Rules that read the model's neural graph: deployed on the module, refused bare parameters."""
MAX_BYTES = {"pna_fashion_mnist_task17": 4_000_000}
"""Weight-file bounds above the per-parameter rules' 100 kB: PNA's GNN has 808k weights (3.2 MB in float32)."""
CARD = {"meta_trained_on": "tiny quadratics", "inner_steps_per_outer_step": 10, "meta_training_command": "pytest",
        "wall_clock": "1 s", "notes": "a test export"}


@pytest.fixture
def weights_dir(tmp_path, monkeypatch) -> Path:
    """An empty folder standing in for the package's weights folder."""
    monkeypatch.setattr(pretrained_module, "WEIGHTS_DIR", tmp_path)
    return tmp_path


def _classification(seed: int = 0) -> tuple[nn.Module, torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(128, 8, generator=gen)
    y = (x[:, 0] + x[:, 1] > 0).long()
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 2)), x, y


def test_list_pretrained_names_the_shipped_optimizers_each_with_a_small_weights_only_file_and_a_full_card():
    assert list_pretrained() == SHIPPED
    for name in SHIPPED:
        card = pretrained_card(name)
        assert list(card)[: len(CARD_FIELDS)] == list(CARD_FIELDS) and card["name"] == name
        path = pretrained_module.WEIGHTS_DIR / f"{name}.pt"
        saved = torch.load(path, weights_only=True)
        assert saved["format"] == FORMAT and saved["meta_optimizer"]["class_path"] == card["method"]
        assert all(t.dtype == torch.float32 for t in saved["state_dict"].values())
        assert path.stat().st_size < MAX_BYTES.get(name, 100_000)


@pytest.mark.parametrize("name", SHIPPED)
def test_each_shipped_optimizer_trains_a_fresh_small_model(name):
    model, x, y = _classification()
    optimizer = load_pretrained(name, model)
    assert isinstance(optimizer, torch.optim.Optimizer)

    def closure():
        optimizer.zero_grad()
        loss = nn.functional.cross_entropy(model(x), y)
        loss.backward()
        return loss

    losses = [optimizer.step(closure).item() for _ in range(40)]
    assert losses[-1] < 0.9 * losses[0] and optimizer.nonfinite_steps == 0
    assert load_pretrained(name, model, lr=0.003).param_groups[0]["lr"] == 0.003
    if name in NEEDS_THE_MODEL:
        with pytest.raises(ConfigError, match="pass the model itself"):
            load_pretrained(name, model.parameters())
    else:
        assert load_pretrained(name, model.parameters(), lr=0.003).param_groups[0]["lr"] == 0.003


def test_an_unknown_name_is_refused_naming_the_available_ones(tmp_path, capsys):
    for load in (lambda: load_pretrained("nope", [nn.Parameter(torch.zeros(1))]),
                 lambda: load_meta_optimizer("pretrained:nope"), lambda: pretrained_card("../nope")):
        with pytest.raises(ConfigError, match=r"no pretrained optimizer named '(\.\./)?nope'; available: \[") as err:
            load()
        assert all(name in str(err.value) for name in SHIPPED)
    with pytest.raises(SystemExit) as exit_info:  # a report's YAML names one as `pretrained:<name>`
        report_main(["--checkpoints={ff: pretrained:nope}", f"--out_dir={tmp_path}"])
    assert exit_info.value.code == 2 and "no pretrained optimizer named 'nope'" in capsys.readouterr().err


def test_pretrained_names_work_wherever_a_checkpoint_names_a_learned_optimizer():
    for name in SHIPPED:
        rule = load_meta_optimizer(f"pretrained:{name}")
        assert meta_optimizer_config(rule)["class_path"] == pretrained_card(name)["method"]
        for p, q in zip(rule.state_dict().values(), pretrained_rule(name).state_dict().values()):
            assert torch.equal(p, q)
    optimizer = load_learned_optimizer("pretrained:opt2vec_mixed", [nn.Parameter(torch.zeros(3))])
    assert type(optimizer.update_rule).__name__ == "Opt2Vec"


def test_a_weights_file_naming_subprocess_run_is_refused_and_runs_nothing(weights_dir):
    marker = weights_dir / "pwned"
    rule = {"class_path": "subprocess.run", "init_args": {"args": f"touch {marker}", "shell": True}}
    torch.save({"format": FORMAT, "meta_optimizer": rule, "state_dict": {}}, weights_dir / "evil.pt")
    with pytest.raises(ConfigError, match="'subprocess.run', which is not an update rule"):
        load_pretrained("evil", [nn.Parameter(torch.zeros(1))])
    assert not marker.exists()


def test_broken_weights_files_give_one_line_naming_the_file(weights_dir):
    (weights_dir / "garbage.pt").write_bytes(bytes(range(256)) * 4)
    torch.save({"state_dict": {}}, weights_dir / "foreign.pt")
    for name, expected in [("garbage", "is not a readable pretrained weight file"), ("foreign", f"is not a {FORMAT}")]:
        with pytest.raises(ConfigError, match=expected) as err:
            pretrained_rule(name)
        assert str(weights_dir / f"{name}.pt") in str(err.value) and "\n" not in str(err.value)


def test_export_then_load_reproduces_the_rule_exactly_and_writes_the_card(ff_checkpoint, weights_dir):
    path = export_pretrained(ff_checkpoint, "tiny_ff", CARD)
    assert path == weights_dir / "tiny_ff.pt" and list_pretrained() == ["tiny_ff"]
    trained, shipped = load_meta_optimizer(ff_checkpoint), pretrained_rule("tiny_ff")
    assert meta_optimizer_config(shipped) == meta_optimizer_config(trained)
    for (k, p), (j, q) in zip(trained.state_dict().items(), shipped.state_dict().items()):
        assert k == j and torch.equal(p, q)
    card = pretrained_card("tiny_ff")
    assert card == {"name": "tiny_ff", "method": meta_optimizer_config(trained)["class_path"],
                    "meta_trained_on": "tiny quadratics", "outer_steps": 2, "inner_steps_per_outer_step": 10,
                    "meta_training_command": "pytest", "wall_clock": "1 s", "paired_vs_tuned_adam": NOT_MEASURED,
                    "source_checkpoint": str(ff_checkpoint), "source_checkpoint_step": 2, "notes": "a test export"}


def test_export_refuses_a_card_without_the_required_fields_and_a_bad_name(ff_checkpoint, weights_dir):
    with pytest.raises(ConfigError, match=r"the card misses \['wall_clock'\]"):
        export_pretrained(ff_checkpoint, "tiny_ff", {k: v for k, v in CARD.items() if k != "wall_clock"})
    with pytest.raises(ConfigError, match="name 'Tiny/FF': use lower-case letters"):
        export_pretrained(ff_checkpoint, "Tiny/FF", CARD)
    assert list_pretrained() == []


def test_the_command_line_exports_and_lists(ff_checkpoint, weights_dir, tmp_path, capsys):
    card = tmp_path / "card.json"
    card.write_text(json.dumps({**CARD, "paired_vs_tuned_adam": {"task 17": "-0.4 +- 0.3 points, 20 seeds"}}))
    main(["export", f"--checkpoint={ff_checkpoint}", "--name=tiny_ff", f"--card={card}"])
    assert f"wrote {weights_dir / 'tiny_ff.pt'}" in capsys.readouterr().out
    main(["list"])
    assert capsys.readouterr().out == (
        'tiny_ff: FFMetaOptimizer, meta-trained on tiny quadratics for 2 outer steps of 10 inner steps (1 s); '
        'vs tuned Adam: {"task 17": "-0.4 +- 0.3 points, 20 seeds"}\n')
    card.write_text(json.dumps({**CARD, "paired_vs_tuned_adam": {"summary": "tie on task 17", "task 17": "..."}}))
    main(["export", f"--checkpoint={ff_checkpoint}", "--name=tiny_ff", f"--card={card}"])
    main(["list"])
    assert capsys.readouterr().out.endswith("vs tuned Adam: tie on task 17\n")  # a dict's summary, when it has one
    with pytest.raises(SystemExit) as exit_info:
        main(["export", f"--checkpoint={ff_checkpoint}", "--name=x", f"--card={tmp_path / 'missing.json'}"])
    assert exit_info.value.code == 2 and "--card" in capsys.readouterr().err
