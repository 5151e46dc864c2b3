"""Meta-trained optimizers that ship with the package: a small weight file and a JSON card each.

    from lightning_l2o.pretrained import list_pretrained, load_pretrained
    optimizer = load_pretrained("ff_fashion_mnist_task17", model)   # a ready torch.optim.Optimizer

A weight file (``<name>.pt`` beside this module) holds plain values and tensors only: the rule's
``{"class_path", "init_args"}`` and its fp32 state dict. It is read weights-only and builds only registered update
rules, as a checkpoint is (:mod:`lightning_l2o.checkpoints`), so loading needs no network and no training code. The
card (``<name>.json``) says what the rule was meta-trained on, for how long, with which command, and its paired
result against tuned Adam. ``pretrained:<name>`` names a shipped optimizer wherever a checkpoint path names a
learned optimizer (``load_learned_optimizer``, ``load_meta_optimizer``, the report's ``--checkpoints``).

    python -m lightning_l2o.pretrained list
    python -m lightning_l2o.pretrained export --checkpoint <run>/checkpoints/last.ckpt --name NAME --card card.json
"""

from __future__ import annotations

import argparse
import json
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from lightning_l2o.checkpoints import (
    PRETRAINED_PREFIX,
    is_rule_config,
    load_meta_optimizer,
    load_weights_only,
    meta_optimizer_config,
    read_checkpoint,
    restore_meta_optimizer,
)
from lightning_l2o.errors import ConfigError, config_errors_exit
from lightning_l2o.meta_optimizers.base import MetaOptimizer
from lightning_l2o.optim import LearnedOptimizer, Params, load_learned_optimizer

FORMAT = "lightning_l2o.pretrained/1"
WEIGHTS_DIR = Path(__file__).resolve().parent
NAME = re.compile(r"[a-z0-9][a-z0-9_]*")
NOT_MEASURED = "not measured yet"
GIVEN_FIELDS = ("meta_trained_on", "inner_steps_per_outer_step", "meta_training_command", "wall_clock")
"""Card fields an export must be given; the others are read from the checkpoint or have defaults."""
CARD_FIELDS = ("name", "method", "meta_trained_on", "outer_steps", "inner_steps_per_outer_step", "meta_training_command",
               "wall_clock", "paired_vs_tuned_adam", "source_checkpoint", "source_checkpoint_step")
"""Every card's fields, in the order its JSON lists them (a card may add more after these)."""
REEXPORT = "reinstall lightning_l2o or re-export it with `python -m lightning_l2o.pretrained export`"


def list_pretrained() -> list[str]:
    """Names of the shipped optimizers, for :func:`load_pretrained` and ``pretrained:<name>``."""
    return sorted(path.stem for path in WEIGHTS_DIR.glob("*.pt"))


def pretrained_card(name: str) -> dict[str, Any]:
    """The card of a shipped optimizer (fields: :data:`CARD_FIELDS`)."""
    path = _file(name, ".json")
    if not path.is_file():
        raise ConfigError(f"pretrained optimizer {name!r} has no card {path}; {REEXPORT}")
    return json.loads(path.read_text())


def pretrained_rule(name: str, map_location: str | torch.device = "cpu") -> MetaOptimizer:
    """The meta-trained update rule of the shipped optimizer ``name``."""
    path = _file(name, ".pt")
    saved = load_weights_only(path, map_location, what="pretrained weight file", fix=REEXPORT)
    if not (isinstance(saved, dict) and saved.get("format") == FORMAT and is_rule_config(saved.get("meta_optimizer"))
            and isinstance(saved.get("state_dict"), dict)):
        raise ConfigError(f"{path} is not a {FORMAT} weight file (needs 'format', 'meta_optimizer' and "
                          f"'state_dict'); {REEXPORT}")
    return restore_meta_optimizer(saved["meta_optimizer"], saved["state_dict"], path)


def load_pretrained(name: str, model_or_params: Params | nn.Module, lr: float | None = None,
                    num_steps: int | None = None) -> LearnedOptimizer:
    """A ``torch.optim.Optimizer`` driven by the shipped optimizer ``name`` (``lr``: its base lr, default the rule's;
    ``num_steps``: the run's number of steps, which a rule whose schedule reads the training progress requires).

    ``model_or_params`` as for :func:`~lightning_l2o.optim.load_learned_optimizer`: the model itself, or its
    parameters. Rules that read the loss (Opt2Vec) need ``step(loss.item())`` or ``step(closure)``.
    """
    return load_learned_optimizer(f"{PRETRAINED_PREFIX}{name}", model_or_params, lr=lr, num_steps=num_steps)


def export_pretrained(
    checkpoint_path: str | Path, name: str, card: dict[str, Any], out_dir: str | Path | None = None
) -> Path:
    """Write the meta-optimizer of a ``fit`` checkpoint as ``<out_dir>/<name>.pt`` and its card as ``<name>.json``.

    ``card`` must give :data:`GIVEN_FIELDS`; ``name``, ``method`` and ``source_checkpoint_step`` come from the
    checkpoint, ``outer_steps`` defaults to its step, ``source_checkpoint`` to its path and ``paired_vs_tuned_adam``
    to ``"not measured yet"``. ``out_dir`` defaults to the package's own folder. Returns the weight file's path.
    """
    if not NAME.fullmatch(name):
        raise ConfigError(f"name {name!r}: use lower-case letters, digits and underscores (it names the files and "
                          f"pretrained:<name>)")
    missing = [field for field in GIVEN_FIELDS if field not in card]
    if missing:
        raise ConfigError(f"the card misses {missing}; give every one of {list(GIVEN_FIELDS)}")
    step = read_checkpoint(checkpoint_path)["global_step"]
    rule = load_meta_optimizer(checkpoint_path)
    config = meta_optimizer_config(rule)
    weights = {key: (value.float() if value.is_floating_point() else value).detach().cpu().clone()
               for key, value in rule.state_dict().items()}
    defaults = {"outer_steps": step, "paired_vs_tuned_adam": NOT_MEASURED, "source_checkpoint": str(checkpoint_path)}
    derived = {"name": name, "method": config["class_path"], "source_checkpoint_step": step}
    full = dict.fromkeys(CARD_FIELDS) | defaults | card | derived  # CARD_FIELDS first, in order, then the card's own
    out_dir = WEIGHTS_DIR if out_dir is None else Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    torch.save({"format": FORMAT, "meta_optimizer": config, "state_dict": weights}, out_dir / f"{name}.pt")
    (out_dir / f"{name}.json").write_text(json.dumps(full, indent=2) + "\n")
    return out_dir / f"{name}.pt"


def main(argv: Sequence[str] | None = None) -> None:
    """``python -m lightning_l2o.pretrained {list,export}``."""
    parser = argparse.ArgumentParser(prog="python -m lightning_l2o.pretrained", description=__doc__.split("\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("list", help="the shipped optimizers, one line each")
    export = commands.add_parser("export", help="turn a fit checkpoint into a weight file and a card")
    export.add_argument("--checkpoint", required=True, help="a .ckpt written by `python -m lightning_l2o fit`")
    export.add_argument("--name", required=True, help="lower-case letters, digits and underscores")
    export.add_argument("--card", required=True, type=Path,
                        help=f"a JSON file holding an object with {', '.join(GIVEN_FIELDS)}; optionally outer_steps, "
                             f"paired_vs_tuned_adam, source_checkpoint and further fields")
    export.add_argument("--out-dir", type=Path, default=None, help="default: the installed package's folder")
    args = parser.parse_args(argv)
    with config_errors_exit(argv):
        if args.command == "list":
            print("\n".join(_summary(name) for name in list_pretrained()) or "no pretrained optimizers installed")
            return
        path = export_pretrained(args.checkpoint, args.name, _read_card(args.card), args.out_dir)
        print(f"wrote {path} ({path.stat().st_size / 1024:.1f} KiB) and {path.with_suffix('.json')}")


def _file(name: str, suffix: str) -> Path:
    available = list_pretrained()
    if name not in available:
        raise ConfigError(f"no pretrained optimizer named {name!r}; available: {available} "
                          f"(`python -m lightning_l2o.pretrained list`)")
    return WEIGHTS_DIR / f"{name}{suffix}"


def _read_card(path: Path) -> dict[str, Any]:
    try:
        card = json.loads(path.read_text())
    except (OSError, ValueError) as err:
        raise ConfigError(f"--card {path}: {err}; pass a JSON file holding an object with the card fields") from None
    if not isinstance(card, dict):
        raise ConfigError(f"--card {path} holds a {type(card).__name__}; it must hold a JSON object of card fields")
    return card


def _summary(name: str) -> str:
    """One line on a shipped optimizer: its name, class, what and how long it was meta-trained, its result."""
    card = pretrained_card(name)
    paired = card["paired_vs_tuned_adam"]
    result = paired if isinstance(paired, str) else paired.get("summary", json.dumps(paired))
    return (f"{name}: {card['method'].rsplit('.', 1)[-1]}, meta-trained on {card['meta_trained_on']} for "
            f"{card['outer_steps']} outer steps of {card['inner_steps_per_outer_step']} inner steps "
            f"({card['wall_clock']}); vs tuned Adam: {result}")
