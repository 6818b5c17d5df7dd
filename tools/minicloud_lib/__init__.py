"""Support code for tools/minicloud (loaded by the cloud's own services)."""
