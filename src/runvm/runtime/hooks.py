"""OCI hooks, run on the host with the container's state JSON on stdin.

The runtime core runs them (:class:`runvm.runtime.container.Container`), so the CLI and the
containerd shim run the same hooks at the same points. Where each runs for a VM runtime, and
why (the runtime-spec's lifecycle, runtime.md, steps 3-12):
- ``prestart`` (deprecated), ``createRuntime``: on the host, in the runtime's namespaces, after
  the VM is up and the container is created (blocked) in the guest, before ``create`` returns;
  state ``creating``. Tools that configure ``/proc/<pid>/ns/net`` find there the process whose
  network namespace the VM's network is taken from (the CLI's monitor, the shim's VM).
  A failure fails ``create`` and undoes it.
- ``createContainer``, ``startContainer``: the spec runs these in the container's namespaces,
  which live inside the guest, where host binaries cannot run; runvm runs them on the host at
  the same points (end of ``create``, state ``creating``; in ``start`` before the user program,
  state ``created``). A failed ``startContainer`` hook fails ``start`` and stops the container.
- ``poststart``: on the host after the user program was executed (the agent answers
  StartContainer once the init no longer runs crun's image), before ``start`` returns; state
  ``running``; a failure is only a warning.
- ``poststop``: on the host during ``delete``, after the container is gone; state ``stopped``;
  a failure is only a warning.

Contract of :func:`run_hooks`: runs the hooks in order, each with the state on stdin and its
``env`` as the whole environment (runvm's own when it has none, as with runc); a hook that exits
non-zero or outlives its ``timeout`` (it is then killed) raises :class:`HookError` naming the
hook, unless ``warn_only``, in which case the failure is logged and the next hook runs.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from runvm.errors import ConfigError, ProcessError
from runvm.process import Child, ChildSpec

log = logging.getLogger(__name__)

HOOK_KINDS = ("prestart", "createRuntime", "createContainer", "startContainer", "poststart",
              "poststop")  # fmt: skip
DEFAULT_TIMEOUT = 120.0


class HookError(ProcessError):
    """A hook failed or timed out."""


def hooks_of(spec: Mapping[str, Any], kind: str) -> list[dict[str, Any]]:
    """The validated hooks of one kind from a config.json."""
    entries = (spec.get("hooks") or {}).get(kind) or []
    if not isinstance(entries, list):
        raise ConfigError(f"hooks.{kind} must be an array")
    for i, hook in enumerate(entries):
        if not isinstance(hook, dict) or not str(hook.get("path", "")).startswith("/"):
            raise ConfigError(f"hooks.{kind}[{i}].path must be an absolute path")
        timeout = hook.get("timeout")
        if timeout is not None and (not isinstance(timeout, int) or timeout <= 0):
            raise ConfigError(f"hooks.{kind}[{i}].timeout must be a positive integer")
    return entries


async def _run_one(kind: str, hook: Mapping[str, Any], state: bytes, log_path: Path) -> None:
    argv = list(hook.get("args") or [hook["path"]])  # args[0] is argv[0], as for execv
    env: dict[str, str] | None = None  # no "env": runvm's own environment, as with runc
    if hook.get("env") is not None:
        env = {}
        for item in hook["env"]:
            key, _, value = item.partition("=")
            env[key] = value
    read_end, write_end = os.pipe()
    try:
        os.write(write_end, state)  # state JSON is small: it fits the pipe buffer
    finally:
        os.close(write_end)
    try:
        child = await Child.launch(ChildSpec(
            name=f"{kind} hook {hook['path']}", argv=argv, log_path=log_path, env=env,
            stdin_fd=read_end, die_with_parent=True, executable=hook["path"], umask=-1,
        ))  # fmt: skip
    finally:
        os.close(read_end)
    timeout = float(hook.get("timeout") or DEFAULT_TIMEOUT)
    try:
        code = await asyncio.wait_for(child.wait(), timeout)
    except TimeoutError:
        await child.stop(grace=0.5)
        raise HookError(f"{kind} hook timed out after {timeout:g} s", argv, None,
                        child.log_tail()) from None  # fmt: skip
    if code != 0:
        raise HookError(f"{kind} hook failed", argv, code, child.log_tail())


async def run_hooks(
    spec: Mapping[str, Any],
    kind: str,
    state: Mapping[str, Any],
    log_path: Path,
    warn_only: bool = False,
) -> list[str]:
    """Run every ``kind`` hook of ``spec``; see the module docstring. Returns the warnings
    (the failures of a ``warn_only`` run), for the caller to show its own caller."""
    data = json.dumps(state).encode()
    warnings = []
    for hook in hooks_of(spec, kind):
        try:
            await _run_one(kind, hook, data, log_path)
        except (HookError, ProcessError) as exc:
            if not warn_only:
                raise
            log.warning("%s", exc)
            warnings.append(str(exc))
    return warnings


def all_hooks(spec: Mapping[str, Any]) -> Sequence[str]:
    """The kinds of hook the spec has (validating every one)."""
    return [kind for kind in HOOK_KINDS if hooks_of(spec, kind)]
