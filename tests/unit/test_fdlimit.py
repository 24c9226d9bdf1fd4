"""The daemon raises its descriptor limit at start: systemd's soft 1024 is what the break-this review's flood (A2)
used up. Run in a child process, whose limit the test may lower without touching pytest's."""

from __future__ import annotations

import json
import subprocess
import sys

_CHILD = """
import json, resource
from edgeward.fdlimit import ENOUGH, fd_limit, raise_fd_limit
soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
resource.setrlimit(resource.RLIMIT_NOFILE, (256, hard))
before = fd_limit()
after = raise_fd_limit()
print(json.dumps([before, after, resource.getrlimit(resource.RLIMIT_NOFILE)[0], hard, ENOUGH]))
"""


def test_the_soft_descriptor_limit_is_raised_to_the_hard_limit_or_enough() -> None:
    out = subprocess.run([sys.executable, "-c", _CHILD], capture_output=True, text=True, check=True)
    before, after, soft, hard, enough = json.loads(out.stdout)
    assert before == 256
    assert after == soft == (enough if hard == -1 else min(hard, enough))  # -1: RLIM_INFINITY
    assert soft > 256
