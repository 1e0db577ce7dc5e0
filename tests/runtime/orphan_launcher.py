"""Helper for test_no_orphans: launches instances that record their pid and then wait forever."""

import sys
import time
from pathlib import Path

from qroute.runtime.launcher import ClusterSpec, launch


def wait_forever(instance, folder):
    import os

    tmp = Path(folder, f"{instance.rank}.tmp")  # then renamed: the test never reads a file created but not written
    tmp.write_text(str(os.getpid()))
    os.replace(tmp, Path(folder, f"{instance.rank}.pid"))
    while True:
        time.sleep(0.1)


if __name__ == "__main__":
    launch(ClusterSpec(world_size=2, timeout_s=60.0), wait_forever, sys.argv[1])
