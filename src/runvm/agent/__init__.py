"""The guest agent: PID 1 of every runvm VM. Imports only protocol, ttrpc, oci and errors."""
