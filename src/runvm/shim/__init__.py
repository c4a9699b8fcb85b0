"""containerd runtime v2 shim ("shim v2"): one shim per pod, serving containerd's Task API.

``shim_api_pb2`` holds the messages (generated from ``shim_api.proto``), ``wire``
containerd's names for them (services, event type URLs and topics, runtime options),
``cmdline`` the shim binary's command line, socket address and pod grouping.
"""
