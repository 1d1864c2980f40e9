"""Domain-0: toolstack, xenstored, xenconsoled and the backends."""
