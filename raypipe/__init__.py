"""raypipe: face anti-spoofing (presentation attack detection) on Ray."""

__version__ = "0.1.0"
