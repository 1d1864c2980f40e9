"""The Xen core process: domains, memory, grant tables, event channels, hypercalls."""
