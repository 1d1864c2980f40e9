"""XenoLinux: the paravirtualized guest kernel."""
