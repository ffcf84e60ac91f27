"""Setup for running SGLang's own frontend (``sglang.lang``) on our backends.

These tests need the real ``sglang`` package, installed without its GPU stack in a venv of its own
(``lock/sglang.in`` + ``lock/sglang-nodeps.in``; ``make test-sglang``). Where it cannot be imported
every test here is skipped, saying why. Nothing leaves loopback: the guard of ``tests/providers``
applies here too, and litellm / tiktoken read the copies litellm ships instead of downloading.
"""

from __future__ import annotations

import importlib.util
import os

import pytest

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
_litellm = importlib.util.find_spec("litellm")
if _litellm is not None and _litellm.submodule_search_locations:
    # SGLang's OpenAI backend loads a tiktoken encoding at construction; offline it needs these files.
    _bundled = os.path.join(_litellm.submodule_search_locations[0], "litellm_core_utils", "tokenizers")
    if os.path.isdir(_bundled):
        os.environ.setdefault("TIKTOKEN_CACHE_DIR", _bundled)

from tests.providers.conftest import _loopback_only  # noqa: E402,F401 - the autouse loopback guard


def _sglang_problem() -> str | None:
    try:
        import sglang  # noqa: F401
        import sglang.lang.interpreter  # noqa: F401
    except Exception as err:  # noqa: BLE001 - any failure to import means: not runnable here
        return f"{type(err).__name__}: {err}"
    return None


SGLANG_PROBLEM = _sglang_problem()


def require_sglang() -> None:
    """Skip the calling test module when SGLang's frontend cannot be imported here."""
    if SGLANG_PROBLEM is not None:
        pytest.skip(
            "SGLang's frontend (sglang.lang) is not importable in this environment "
            f"({SGLANG_PROBLEM[:200]}); these tests run in the venv `make test-sglang` builds",
            allow_module_level=True,
        )
