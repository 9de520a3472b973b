"""Judging: policies, rules, drift, the verdict of a run and the daemon that owns it."""
