"""Named CNN task presets of Kofinas et al. (2024)'s learned-optimizer benchmark, on three datasets.

Every CNN is 3x3 convolutions (the first with stride 2 and no padding, the rest stride 1 and "same"
padding), ReLU, global average pooling and a linear classifier, trained with batch 128. Presets are
named ``<dataset>-width<h>`` (channels ``h, 2h, 2h``) or ``<dataset>-depth<n>`` (``n`` layers of the
channel list ``32, 64, 64, 128, 128``); ``width32`` is the reference CNN (``depth3``). The seed's
numeric task ids are aliases: 17 is the meta-training task (FashionMNIST, width 16), 11 the CIFAR-10
test task, 19-22 the CIFAR-10 widths 8/16/64/128 and 23-26 the CIFAR-10 depths 1/2/4/5.
"""

from __future__ import annotations

from typing import Any

from lightning_l2o.errors import ConfigError

PRESET_DATASETS = ("cifar10", "fashion_mnist", "mnist")
WIDTHS = (8, 16, 32, 64, 128)
DEPTHS = (1, 2, 4, 5)
DEPTH_CHANNELS = (32, 64, 64, 128, 128)
PRESET_BATCH_SIZE = 128

ALIASES: dict[str, str] = {
    "11": "cifar10-width32",
    "17": "fashion_mnist-width16",
    "19": "cifar10-width8",
    "20": "cifar10-width16",
    "21": "cifar10-width64",
    "22": "cifar10-width128",
    "23": "cifar10-depth1",
    "24": "cifar10-depth2",
    "25": "cifar10-depth4",
    "26": "cifar10-depth5",
}


def _cnn(dataset: str, channels: list[int]) -> dict[str, Any]:
    strides = [2] + [1] * (len(channels) - 1)
    return {"family": "cnn", "dataset": dataset, "arch": {"channels": channels, "strides": strides},
            "batch_size": PRESET_BATCH_SIZE}


PRESETS: dict[str, dict[str, Any]] = {
    **{f"{d}-width{h}": _cnn(d, [h, 2 * h, 2 * h]) for d in PRESET_DATASETS for h in WIDTHS},
    **{f"{d}-depth{n}": _cnn(d, list(DEPTH_CHANNELS[:n])) for d in PRESET_DATASETS for n in DEPTHS},
}


def canonical_preset(name: str | int) -> str:
    """The preset's full name for a name or numeric alias (``17`` -> ``fashion_mnist-width16``)."""
    key = str(name)
    key = ALIASES.get(key, key)
    if key not in PRESETS:
        raise ConfigError(f"unknown task preset '{name}'; choose a numeric id ({', '.join(ALIASES)}) or one of: "
                          f"{', '.join(PRESETS)}")
    return key


def preset_fields(name: str | int) -> dict[str, Any]:
    """``family``, ``dataset``, ``arch`` and ``batch_size`` of a preset (a fresh copy)."""
    fields = PRESETS[canonical_preset(name)]
    return {**fields, "arch": {k: list(v) for k, v in fields["arch"].items()}}
