"""Domain kernels: the shared kernel library, Domain-0 and XenoLinux."""
