"""Scan ops: numerics of the state-space recurrences, independent of any rule."""

from captum_mamba.ops.selective_scan import SelectiveScan, selective_scan
from captum_mamba.ops.ssd_scan import SSDScan, ssd_scan

__all__ = ["SSDScan", "SelectiveScan", "selective_scan", "ssd_scan"]
