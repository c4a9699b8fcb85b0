"""The per-container monitor of the CLI path: owns the VM, the agent link and the stdio.

``create`` forks it; its PID goes into ``--pid-file``; it lives exactly as long as the
container's init and exits with the init's status. The other verbs talk to it over
``monitor.sock`` in the sandbox run directory (ttrpc).
"""

SERVICE = "runvm.monitor.v1.Monitor"
