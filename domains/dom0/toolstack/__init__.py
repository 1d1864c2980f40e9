"""The toolstack in Domain-0 (libxl's role): builds, destroys and watches domains."""
