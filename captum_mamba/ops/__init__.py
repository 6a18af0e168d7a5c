"""Scan ops: numerics of the state-space recurrences, independent of any rule."""

from captum_mamba.ops.selective_scan import SelectiveScan, selective_scan

__all__ = ["SelectiveScan", "selective_scan"]
