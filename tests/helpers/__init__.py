"""Helpers shared by the tests (models, data, reference simulators, plugin objects); importable as ``helpers.*``."""
