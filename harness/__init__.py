"""Build, verify, test and benchmark llama-cpp-python variants."""

__version__ = "0.1.0"
