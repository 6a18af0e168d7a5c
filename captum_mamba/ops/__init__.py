"""Scan ops: numerics of the state-space recurrences, independent of any rule.

Each op has several implementations with one autograd contract; see
:mod:`captum_mamba.ops.backends` for how one is chosen (``impl=`` per call,
:func:`implementation` for a block of code).
"""

from captum_mamba.ops._common import ScanFunction, batched_cotangents
from captum_mamba.ops.backends import (
    IMPLEMENTATIONS,
    get_implementation,
    implementation,
    replaced_kernels,
    set_implementation,
    unbatched_backwards,
)
from captum_mamba.ops.causal_conv import causal_conv1d
from captum_mamba.ops.parallel_scan import ParallelSelectiveScan, parallel_selective_scan
from captum_mamba.ops.selective_scan import (
    SelectiveScan,
    selective_scan,
    selective_scan_with_state,
)
from captum_mamba.ops.ssd_scan import SSDScan, ssd_scan, ssd_scan_with_state

__all__ = [
    "IMPLEMENTATIONS",
    "ParallelSelectiveScan",
    "SSDScan",
    "ScanFunction",
    "SelectiveScan",
    "batched_cotangents",
    "causal_conv1d",
    "get_implementation",
    "implementation",
    "parallel_selective_scan",
    "replaced_kernels",
    "selective_scan",
    "selective_scan_with_state",
    "set_implementation",
    "ssd_scan",
    "ssd_scan_with_state",
    "unbatched_backwards",
]
