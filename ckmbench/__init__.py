"""ckmbench: a plugin-based benchmark suite for channel-knowledge-map construction."""

__version__ = "0.1.0"
PROTOCOL_VERSION = "1.0"
