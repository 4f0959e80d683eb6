"""Variant -> toolchain -> wheel: the build-variant registry, toolchains, building and caching
wheels, llama.cpp's native tools, installing a wheel, and checking what a build really is
(buildinfo, verify, exercise)."""
