"""Measuring builds and reporting them: llama-bench parity, batched throughput, machine load,
agreement between builds (KL divergence), fit vs llama.cpp, the report and its history."""
