"""Test-only helpers that production code never imports: fault injection for the engine."""
