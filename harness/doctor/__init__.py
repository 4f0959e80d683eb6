"""Why a build or a run fails: facts, the cause catalogue and its evaluation (doctor.py),
build-log reading, legacy CMake flags, replayable cases."""
