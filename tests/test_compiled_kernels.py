"""Compiled CPU kernels: built once per machine into the cache, and a clear error where they cannot be built."""

from __future__ import annotations

import pytest

from lightning_l2o import compiled_kernels
from lightning_l2o.meta_optimizers.fused_ff import SOURCE


def test_a_kernel_is_built_once_per_machine(tmp_path, monkeypatch):
    monkeypatch.setenv("L2O_CACHE_DIR", str(tmp_path))
    try:
        first = compiled_kernels.build(SOURCE)
    except RuntimeError as error:
        pytest.skip(f"no kernel can be built here: {error}")
    built_at = first.stat().st_mtime_ns
    assert first.parent == tmp_path and first.name.startswith("fused_ff-")
    assert compiled_kernels.build(SOURCE) == first and first.stat().st_mtime_ns == built_at
    assert [path.name for path in tmp_path.iterdir()] == [first.name]  # no scratch left behind


def test_without_a_compiler_build_names_the_compiler_and_load_warns(tmp_path, monkeypatch):
    monkeypatch.setenv("L2O_CACHE_DIR", str(tmp_path))
    monkeypatch.setenv("CC", str(tmp_path / "no-such-cc"))
    with pytest.raises(RuntimeError, match="cannot run the C compiler .*no-such-cc"):
        compiled_kernels.build(SOURCE)
    compiled_kernels.load.cache_clear()
    try:
        with pytest.warns(UserWarning, match="kernel for a test is unavailable .*no-such-cc.*set \\$CC to it"):
            assert compiled_kernels.load(SOURCE, "a test") is None
    finally:
        compiled_kernels.load.cache_clear()


def test_a_source_that_does_not_compile_is_named_with_the_compiler_s_complaint(tmp_path, monkeypatch):
    monkeypatch.setenv("L2O_CACHE_DIR", str(tmp_path))
    source = tmp_path / "broken.c"
    source.write_text("int f( {\n")
    try:
        compiled_kernels.build(SOURCE)
    except RuntimeError as error:
        pytest.skip(f"no kernel can be built here: {error}")
    with pytest.raises(RuntimeError, match="failed to compile broken.c: .*error"):
        compiled_kernels.build(source)


def test_fused_kernels_switches_them_off_within_a_block():
    before = compiled_kernels.enabled()
    with compiled_kernels.fused_kernels(False):
        assert not compiled_kernels.enabled()
    assert compiled_kernels.enabled() == before
