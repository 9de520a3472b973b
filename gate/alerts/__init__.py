"""Alerts: their lifecycle, their store operations and the Alertmanager client."""
