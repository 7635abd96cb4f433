"""cai: Constitutional AI, from principle files to a trained policy."""

__version__ = "0.1.0"
