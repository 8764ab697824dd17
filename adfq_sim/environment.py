"""The software and machine a run used, recorded in results.json for reproducibility."""

from __future__ import annotations

import os
import platform
import sys
from importlib import metadata


def environment() -> dict:
    versions = {}
    for package in ("adfq-sim", "torch", "timm", "numpy", "numba", "torchvision", "matplotlib", "ray"):
        try:
            versions[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            versions[package] = None
    return {
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "machine": platform.machine(),
        "cpu_count": os.cpu_count(),
        "packages": versions,
    }
