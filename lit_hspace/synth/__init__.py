"""Synthetic aligned faces whose factors of variation and their regions are known exactly."""
