"""silobox: a container engine for Linux built on the architecture of Windows containers."""

__version__ = "0.1.0"
API_VERSION = "1.47"
MIN_API_VERSION = "1.24"
