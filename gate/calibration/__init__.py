"""Calibration: thresholds learnt from known-good renders (learn), kept with their history (store),
and the `calibrate` service."""
