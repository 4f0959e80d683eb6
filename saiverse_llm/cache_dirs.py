"""Where cached files live: the user's cache base and ``saiverse_llm``'s folder in it.

The one home of that layout (the XDG Base Directory rule: ``$XDG_CACHE_HOME``, else
``~/.cache``), used by :mod:`saiverse_llm.native_loop` (compiled loops) and
:func:`saiverse_llm.download.hub_cache_dir` (the Hub cache's default). The environment is
read at each call, never at import. Standard library only: the engine imports it, and must
not pull in ``huggingface_hub`` for it.
"""

from __future__ import annotations

import os
from pathlib import Path

#: Where ``saiverse_llm`` keeps its cached files (default ``saiverse-llm`` in
#: :func:`user_cache_home`).
ENV_CACHE = "SAIVERSE_LLM_CACHE"


def user_cache_home() -> Path:
    """The user's cache base: ``$XDG_CACHE_HOME`` (``~`` expanded), else ``~/.cache``;
    an empty value counts as unset."""
    xdg = os.environ.get("XDG_CACHE_HOME")
    return Path(xdg).expanduser() if xdg else Path.home() / ".cache"


def saiverse_cache_dir() -> Path:
    """``saiverse_llm``'s cache folder: ``$SAIVERSE_LLM_CACHE`` (``~`` expanded), else
    ``saiverse-llm`` in :func:`user_cache_home`; an empty value counts as unset. Not
    created here."""
    env = os.environ.get(ENV_CACHE)
    return Path(env).expanduser() if env else user_cache_home() / "saiverse-llm"
