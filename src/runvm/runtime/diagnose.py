"""Why a VM did not come up, or went away, in words a user can act on.

Contract: pure functions of what the host saw (QEMU's exit, its own stderr, the guest
console). The first line of what they return names what happened: the guest kernel panicked
(and the kernel's reason), QEMU exited (its status and its last complaint), or the agent
did not answer within the deadline (and which setting that is); the console's last lines
follow when there are any. A panic is told first: a panicking guest ends QEMU with status 0.
"""

from __future__ import annotations

import re

from runvm.process import describe_exit

PANIC = re.compile(r"Kernel panic - not syncing: (.+)")
CONSOLE_LINES = 12
LINE_MAX = 300


def panic_reason(console: str) -> str | None:
    """The reason of the last kernel panic the console shows, if it shows one."""
    found = PANIC.findall(console)
    return found[-1].strip()[:LINE_MAX] if found else None


def last_lines(text: str, count: int) -> list[str]:
    """The last ``count`` non-empty lines of ``text``, each cut at :data:`LINE_MAX`."""
    lines = [ln.rstrip()[:LINE_MAX] for ln in text.splitlines() if ln.strip()]
    return lines[-count:]


def with_console(head: str, console: str) -> str:
    """``head``, then the console's last lines; those up to its last panic if it has one
    (what led to it: the call trace after it says little to a user)."""
    lines = console.splitlines()
    panics = [i for i, line in enumerate(lines) if PANIC.search(line)]
    if panics:
        console = "\n".join(lines[: panics[-1] + 1])
    tail = last_lines(console, CONSOLE_LINES)
    return head + ("\n--- guest console (last lines) ---\n" + "\n".join(tail) if tail else "")


def vm_exit(status: int, stderr: str, console: str) -> str:
    """One line on a VM that exited: a kernel panic, else QEMU's status and last complaint."""
    reason = panic_reason(console)
    if reason is not None:
        return f"the guest kernel panicked: {reason}"
    complaint = last_lines(stderr, 1)
    return f"QEMU exited ({describe_exit(status)})" + (f": {complaint[0]}" if complaint else "")


def boot_failure(
    *, exited: int | None, timed_out: bool, boot_timeout: float, stderr: str, console: str,
    detail: str = "",
) -> str:  # fmt: skip
    """Why the agent never answered; ``detail``: the link's own error, for other failures."""
    if exited is not None:
        head = vm_exit(exited, stderr, console) + " before the agent answered"
    elif timed_out:
        head = (f"the agent did not answer within {boot_timeout:g} s of QEMU's start "
                "([hypervisor] boot_timeout)")  # fmt: skip
    else:
        head = f"the agent link failed before the agent answered: {detail}"
    return with_console(head, console)
