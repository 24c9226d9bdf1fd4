"""Child exits are watched through pidfds in the daemon's process: 20 children cost no thread, and each one's exit
code still reaches whoever waits for it. Run in a fresh interpreter: the watcher is a process-wide global of
asyncio, which this test process's other tests must not inherit."""

from __future__ import annotations

import subprocess
import sys

import pytest

SCRIPT = """
import asyncio, sys
from edgeward.childwatch import use_pidfd_child_watcher

def threads():
    return int(next(l for l in open('/proc/self/status') if l.startswith('Threads')).split()[1])

async def main():
    used = use_pidfd_child_watcher(asyncio.get_running_loop())
    procs = [await asyncio.create_subprocess_exec(sys.executable, '-c', f'import sys, time; time.sleep(0.5); sys.exit({i % 7})')
             for i in range(20)]
    during = threads()
    codes = [await p.wait() for p in procs]
    print(used, during, codes == [i % 7 for i in range(20)])

asyncio.run(main())
"""


@pytest.mark.skipif(sys.version_info >= (3, 12), reason="pidfds are asyncio's own default from Python 3.12")
def test_twenty_children_cost_no_thread_and_their_exit_codes_arrive() -> None:
    out = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True, timeout=60, check=True)
    used, threads, codes_ok = out.stdout.split()
    assert used == "True"
    assert threads == "1"  # the threaded watcher would hold one thread per child still running
    assert codes_ok == "True"
