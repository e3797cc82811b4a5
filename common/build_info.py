"""`dms_build_info`: which code a process runs (version, Python, git commit when known), as a gauge of 1."""

from __future__ import annotations

import os
import platform
import subprocess
from importlib import metadata
from pathlib import Path

from prometheus_client import Gauge

ROOT = Path(__file__).resolve().parent.parent


def version() -> str:
    try:
        return metadata.version("dms-realtime")
    except metadata.PackageNotFoundError:
        return "unknown"


def git_commit() -> str:
    """DMS_GIT_COMMIT when the deployment sets it, else the checkout's HEAD, else `unknown`."""
    if os.environ.get("DMS_GIT_COMMIT"):
        return os.environ["DMS_GIT_COMMIT"][:40]
    try:
        done = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True, timeout=2,
                              check=False)
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    commit = done.stdout.strip()
    return commit if done.returncode == 0 and len(commit) == 40 else "unknown"


BUILD_INFO = Gauge("dms_build_info", "Always 1; the labels say which build this process runs",
                   ["version", "python", "commit"])
BUILD_INFO.labels(version(), platform.python_version(), git_commit()).set(1)
