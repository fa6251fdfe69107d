"""What the benchmarks share: timing a command's whole process tree, and dropping the page cache."""

import os
import subprocess
import sys
import time


def measure(cmd, env=None, cwd=None):
    """Runs cmd (a list, or a string for bash); returns (wall s, cpu s, peak RSS MiB) of its tree.

    The peak comes from wait4's rusage, whose high-water mark survives exec: it can never read
    below the calling script's own RSS at fork time, so the scripts keep small."""
    if isinstance(cmd, str):
        cmd = ["bash", "-o", "pipefail", "-c", cmd]
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, env=env, cwd=cwd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    err = proc.stderr.read().decode(errors="replace")
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - start
    if os.waitstatus_to_exitcode(status) != 0:
        sys.exit(f"command failed: {' '.join(cmd)}\n{err[-3000:]}")
    return wall, usage.ru_utime + usage.ru_stime, usage.ru_maxrss / 1024


def drop_caches():
    try:
        subprocess.run(["sync"], check=True)
        with open("/proc/sys/vm/drop_caches", "w") as f:
            f.write("3\n")
        return True
    except OSError:
        return False
