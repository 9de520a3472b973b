"""Runs: pairing two folders, the submission service, the queue contract, in-process executors, `check`."""
