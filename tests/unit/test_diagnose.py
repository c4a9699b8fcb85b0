"""Failure messages that name what happened and why: a VM that did not come up or went
away (runtime/diagnose.py), and crun's complaints about a program worded as runc's."""

from __future__ import annotations

from runvm.agent.crun import explain
from runvm.errors import LaunchError
from runvm.runtime import diagnose

PANIC_CONSOLE = """\
/dev/root: Can't open blockdev
Kernel panic - not syncing: VFS: Unable to mount root fs on unknown-block(0,0)
CPU: 0 PID: 1 Comm: swapper/0 Not tainted 6.1.192 #1
Call Trace:
 <TASK>
 dump_stack_lvl+0x33/0x42
"""


def test_a_panic_is_named_with_its_reason_even_though_qemu_exited_0() -> None:
    text = diagnose.boot_failure(exited=0, timed_out=False, boot_timeout=90, stderr="",
                                 console=PANIC_CONSOLE)  # fmt: skip
    head, *rest = text.splitlines()
    assert head == ("the guest kernel panicked: VFS: Unable to mount root fs on "
                    "unknown-block(0,0) before the agent answered")  # fmt: skip
    assert rest == [
        "--- guest console (last lines) ---",
        "/dev/root: Can't open blockdev",
        "Kernel panic - not syncing: VFS: Unable to mount root fs on unknown-block(0,0)",
    ]  # what led to the panic, not its call trace


def test_qemu_s_exit_and_its_last_complaint() -> None:
    stderr = "qemu: warning: something\nqemu-system-x86_64: terminating on signal 15\n"
    text = diagnose.boot_failure(exited=-9, timed_out=False, boot_timeout=90, stderr=stderr,
                                 console="")  # fmt: skip
    assert text == ("QEMU exited (killed by SIGKILL): qemu-system-x86_64: terminating on "
                    "signal 15 before the agent answered")  # fmt: skip


def test_a_deadline_names_its_setting_and_the_console() -> None:
    text = diagnose.boot_failure(exited=None, timed_out=True, boot_timeout=2.5, stderr="",
                                 console="x" * 1000 + "\n\nlast words\n")  # fmt: skip
    head, _, long, last = text.splitlines()
    assert head == ("the agent did not answer within 2.5 s of QEMU's start "
                    "([hypervisor] boot_timeout)")  # fmt: skip
    assert len(long) == diagnose.LINE_MAX and last == "last words"


def test_a_running_vm_that_panicked() -> None:
    console = "Kernel panic - not syncing: Attempted to kill init! exitcode=0x00000100\n"
    assert diagnose.vm_exit(0, "", console) == (
        "the guest kernel panicked: Attempted to kill init! exitcode=0x00000100"
    )


def test_a_launch_error_reads_as_what_failed_how_and_its_last_words() -> None:
    err = LaunchError(
        "QEMU exited before it was ready",
        ["qemu", "-x"],
        1,
        "warning: a\nqemu: -device foo: 'foo' is not a valid device model name\n",
    )
    assert str(err) == ("QEMU exited before it was ready (exit status 1): warning: a; "
                        "qemu: -device foo: 'foo' is not a valid device model name")  # fmt: skip
    assert err.argv == ["qemu", "-x"]


def test_crun_s_complaints_about_the_program_read_as_runc_s() -> None:
    start = "unable to start container process: exec: "
    assert (
        explain(
            "executable file `/no/prog` not found in $PATH: No such file or directory", "/no/prog"
        )
        == f'{start}"/no/prog": stat /no/prog: no such file or directory'
    )
    assert (
        explain("executable file `prog` not found in $PATH: No such file or directory", "prog")
        == f'{start}"prog": executable file not found in $PATH'
    )
    assert explain("open executable: Permission denied", "/etc/passwd") == (
        f'{start}"/etc/passwd": permission denied'
    )
    assert explain("mount `proc` to `/proc`: EPERM", "/bin/sh") == (
        "mount `proc` to `/proc`: EPERM"
    )  # not about the program: as crun said it
