"""Tests of liu.analysis: round trips, metrics, report, batch analysis and notebooks."""
