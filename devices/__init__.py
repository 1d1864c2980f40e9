"""Hardware device processes (disk, NIC)."""
