"""The test models: the manifest and its download, synthesized GGUFs, header-only GGUFs of the
seed's models."""
