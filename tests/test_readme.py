"""The README is true for a new user: its "Using a learned optimizer" code runs, as written, from any directory.

The snippets run in a fresh interpreter whose working directory is a temporary folder outside the checkout and
without ``PYTHONPATH``, so ``lightning_l2o`` is found only if the README's set-up (``pip install -e .``)
installed it. The checkpoint the first snippet loads (``lightning_logs/opt2vec/version_0/checkpoints/last.ckpt``,
what ``python -m lightning_l2o fit --config configs/opt2vec.yaml`` writes) is made here by a tiny fit.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from lightning_l2o import L2OModule, Opt2Vec
from tests.conftest import REPO, tiny_datamodule, tiny_trainer

SECTION = "## Using a learned optimizer"
CHECKPOINT = Path("lightning_logs/opt2vec/version_0/checkpoints/last.ckpt")
SETUP = "run the README's set-up in the checkout (`pip install -r requirements.txt` then `pip install -e .`)"

# After the snippets, in the same interpreter: what the README says they do.
CHECKS = """
import lightning_l2o
from lightning_l2o import LearnedOptimizer
assert isinstance(optimizer, LearnedOptimizer), type(optimizer)
assert tuple(embedding.shape) == (16,) and bool(torch.isfinite(embedding).all()), embedding
assert issubclass(Regressor, pl.LightningModule)
print("lightning_l2o from", lightning_l2o.__file__)
"""


def readme_python_blocks(section: str = SECTION) -> list[str]:
    """The fenced ```python blocks of the README section titled ``section`` (up to the next ``## ``)."""
    text = (REPO / "README.md").read_text(encoding="utf-8")
    start = text.find(f"\n{section}\n")
    assert start >= 0, f"README.md has no section {section!r}"
    body = text[start + len(section) + 2:]
    end = body.find("\n## ")
    body = body if end < 0 else body[:end]
    blocks = re.findall(r"^```python\n(.*?)^```", body, flags=re.DOTALL | re.MULTILINE)
    assert blocks, f"README.md's section {section!r} has no ```python block"
    return blocks


def _outside_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env.setdefault("OMP_NUM_THREADS", "1")
    return env


def _python(code: str, cwd: Path, timeout: float = 120) -> subprocess.CompletedProcess:
    script = cwd / "readme_snippet.py"
    script.write_text(code, encoding="utf-8")
    return subprocess.run([sys.executable, script.name], cwd=cwd, env=_outside_env(), capture_output=True, text=True,
                          timeout=timeout, check=False)


def _require_installed(cwd: Path) -> None:
    found = _python("import importlib.util\nspec = importlib.util.find_spec('lightning_l2o')\n"
                    "print(spec.origin if spec else '')\n", cwd)
    if found.returncode != 0 or not found.stdout.strip():
        pytest.fail(f"lightning_l2o is not importable outside the checkout (interpreter {sys.executable}, "
                    f"working directory {cwd}): {SETUP}.\n{found.stderr[-2000:]}", pytrace=False)


def _fit_checkpoint(workdir: Path) -> Path:
    """A real ``fit`` checkpoint of the README's Opt2Vec settings, where the snippet looks for it."""
    module = L2OModule(Opt2Vec(base_lr=0.01, embedding_dim=16, history_length=5, initial_momentum=0.5))
    trainer = tiny_trainer(workdir / "fit", max_steps=2)
    trainer.fit(module, tiny_datamodule())
    path = workdir / CHECKPOINT
    path.parent.mkdir(parents=True)
    trainer.save_checkpoint(path)
    return path


def test_readme_has_the_snippets_this_test_runs():
    blocks = readme_python_blocks()
    assert any("load_learned_optimizer" in block and str(CHECKPOINT) in block for block in blocks), (
        f"the README's snippet no longer loads {CHECKPOINT}: update _fit_checkpoint in this test")


def test_readme_usage_snippets_run_from_a_directory_outside_the_checkout(tmp_path):
    workdir = tmp_path / "user"
    workdir.mkdir()
    assert REPO not in workdir.resolve().parents, f"{workdir} must be outside the checkout {REPO}"
    _require_installed(workdir)
    _fit_checkpoint(workdir)
    result = _python("\n\n".join(readme_python_blocks()) + CHECKS, workdir)
    assert result.returncode == 0, (
        f"README's '{SECTION}' code failed when run from {workdir} (if lightning_l2o is not found: {SETUP}):\n"
        f"{result.stderr[-4000:]}")
    assert "lightning_l2o from" in result.stdout
