"""The VM cache: `runvm cache serve` keeps booted VMs ready and hands one to each
new sandbox over a local socket (see docs/density.md)."""
