"""Getting builds elsewhere: container mode, offline bundles, pinned base images, the CI matrix
and status gate."""
