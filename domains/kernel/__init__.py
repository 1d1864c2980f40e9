"""Machinery every domain kernel shares: hypercalls, event loop, drivers, rings."""
