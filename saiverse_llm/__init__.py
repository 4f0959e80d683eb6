"""A SAIVerse-compatible llama.cpp provider (model configs, client, fallback)."""

__version__ = "0.1.0"
