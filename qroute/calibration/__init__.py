"""Calibration: the only code that measures. It fits the cost model's constants and writes profiles."""
