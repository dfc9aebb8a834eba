"""The LLM tests: no variable of the user's environment reaches them."""

from __future__ import annotations

import pytest

from napari_itaclip import llm


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch, tmp_path):
    for name in (llm.ENV_BASE_URL, llm.ENV_MODEL, llm.ENV_API_KEY, llm.ENV_TIMEOUT,
                 "OPENAI_API_KEY", "OPENAI_BASE_URL"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv(llm.ENV_CACHE_DIR, str(tmp_path / "cache"))
