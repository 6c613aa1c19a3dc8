"""The glibc allocator tuning is decided once per process, can be switched off, and applies on glibc Linux."""

from __future__ import annotations

import sys

import pytest

from cnnlab.train import allocator


def test_opt_out_and_idempotence(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(allocator, "_applied", None)
    monkeypatch.setenv("CNNLAB_MALLOC_TUNING", "0")
    assert allocator.keep_freed_memory() is False
    monkeypatch.setenv("CNNLAB_MALLOC_TUNING", "1")
    assert allocator.keep_freed_memory() is False  # decided once per process


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc mallopt")
def test_applies_on_glibc_linux(monkeypatch: pytest.MonkeyPatch) -> None:
    import platform

    if platform.libc_ver()[0] != "glibc":
        pytest.skip("not glibc")
    monkeypatch.setattr(allocator, "_applied", None)
    monkeypatch.delenv("CNNLAB_MALLOC_TUNING", raising=False)
    assert allocator.keep_freed_memory() is True
    assert allocator.keep_freed_memory() is True
