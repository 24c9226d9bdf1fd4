"""Does the kernel run IMA? Then PCR 10 is the kernel's, and so is the one list Keylime replays into it.

Keylime's verifier replays exactly PCR 10 from exactly one list (keylime/ima/ima.py, ``IMA_PCR``). Edgeward cannot
append its entries to the kernel's list, and extending PCR 10 with entries the kernel's list lacks would make every
quote fail ``pcr_mismatch``. Another PCR would not help either: the verifier checks other PCRs only against fixed
values, which a list that grows with each module creation cannot have. So on such a kernel the agent refuses to
start, with this reason, rather than report something a verifier cannot check.
"""

from __future__ import annotations

from pathlib import Path

__all__ = ["KernelOwnsPcr10", "check_kernel_ima"]


class KernelOwnsPcr10(RuntimeError):
    pass


def check_kernel_ima(securityfs: Path) -> None:
    """Raise :class:`KernelOwnsPcr10` if the kernel's IMA list at ``securityfs`` has entries (or exists but cannot
    be read: then it cannot be ruled out)."""
    path = securityfs / "ascii_runtime_measurements"
    try:
        with path.open("rb") as f:
            first = f.readline().strip()
    except (FileNotFoundError, NotADirectoryError):
        return
    except OSError as e:
        raise KernelOwnsPcr10(f"{path} exists but cannot be read ({e.strerror}): the kernel may run IMA and own "
                              "PCR 10, which Keylime's verifier replays; the Keylime agent does not start") from e
    if first:
        raise KernelOwnsPcr10(
            f"the kernel runs IMA ({path} has entries), so PCR 10, the one PCR Keylime's verifier replays a "
            "measurement list into, is the kernel's: Edgeward's module measurements cannot join that list. Attest "
            "this device with the stock Keylime agent, which serves the kernel's list, or boot without an IMA "
            "policy; the Edgeward Keylime agent does not start")
