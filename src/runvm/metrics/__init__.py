"""The metrics endpoint: what a VM's owner tells about its pods, and the daemon that asks.

- owner side: :mod:`recorder` times every agent request where it is made, :mod:`owner`
  serves the ``Snapshot`` call (:data:`SERVICE`) on the owner's own socket;
- daemon side (``runvm metrics serve``): :mod:`discover` finds the owners from the state on
  disk, :mod:`collect` asks each one in the background with a deadline and keeps the last
  answers (stale ones marked), :mod:`procstat` reads the host figures of their processes,
  :mod:`export` renders it all in the Prometheus text format and :mod:`serve` serves it.

:mod:`figures` are the plain values both sides share, :mod:`wire` their encoding, parsed
with limits: the daemon trusts neither the disk nor an owner's answer.
"""

SERVICE = "runvm.metrics.v1.Metrics"
DEFAULT_PORT = 9839
DEFAULT_LISTEN = f"127.0.0.1:{DEFAULT_PORT}"  # loopback: no other host can scrape by default
DEFAULT_INTERVAL = 5.0  # seconds between collection rounds
DEFAULT_TIMEOUT = 2.0  # seconds an owner has to answer in a round
