"""Calibration: the simulator's free preset values fitted to a paper's absolute results.

:mod:`.targets` holds what is fitted to (the DualPath paper's offline JCTs) and the
relative results that must still hold; :mod:`.fit` the free parameters, each with its
physical meaning and plausible range, and the deterministic search; :mod:`.preset_file`
writes fitted values, with their reasons, into preset files; :mod:`.paper` runs the
whole fit for ``dualpath calibrate paper``.
"""
