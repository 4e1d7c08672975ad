"""Offline tools beside the binaries: they may import every library layer."""
