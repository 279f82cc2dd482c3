"""What the machine did besides the benchmark (Linux /proc; zeros elsewhere)."""

import os
from pathlib import Path


def system_busy_s() -> float:
    """Return the CPU seconds all processes have used since boot (0 where unknown)."""
    try:
        values = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    except OSError:
        return 0.0
    idle = values[3] + values[4]  # idle + iowait
    return (sum(values[:8]) - idle) / os.sysconf("SC_CLK_TCK")
