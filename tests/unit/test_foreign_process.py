"""ForeignProcess: a process held by a pidfd, with several waiters that may be cancelled."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys

from runvm.process import UNKNOWN_STATUS, ForeignProcess


def test_waiters_cancelled_or_not_all_see_the_exit_and_stop_kills() -> None:
    async def main() -> None:
        child = subprocess.Popen(["sleep", "60"])
        proc = ForeignProcess(child.pid, os.pidfd_open(child.pid))
        try:
            assert proc.returncode is None
            first = asyncio.ensure_future(proc.wait())
            second = asyncio.ensure_future(proc.wait())
            await asyncio.sleep(0.05)
            first.cancel()  # a cancelled waiter must not take the others' wake-up with it
            await asyncio.gather(first, return_exceptions=True)
            third = asyncio.ensure_future(proc.wait())
            assert await proc.stop(grace=1.0) == UNKNOWN_STATUS
            assert await asyncio.wait_for(second, 5) == UNKNOWN_STATUS
            assert await asyncio.wait_for(third, 5) == UNKNOWN_STATUS
            assert proc.returncode == UNKNOWN_STATUS
            assert child.wait(5) == -15  # SIGTERM was enough
        finally:
            proc.close()
            proc.close()  # idempotent
            if child.poll() is None:
                child.kill()
                child.wait()

    asyncio.run(main())


def test_stop_escalates_to_sigkill() -> None:
    async def main() -> None:
        ignore_term = (
            "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); "
            "print(flush=True); time.sleep(60)"
        )
        child = subprocess.Popen([sys.executable, "-c", ignore_term], stdout=subprocess.PIPE)
        proc = ForeignProcess(child.pid, os.pidfd_open(child.pid))
        try:
            assert child.stdout is not None
            child.stdout.readline()  # SIGTERM is ignored from here on
            await proc.stop(grace=0.3)
            assert child.wait(5) == -9
        finally:
            proc.close()

    asyncio.run(main())
