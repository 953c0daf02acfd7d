"""brandbot: a self-hosted assistant for Slack and Discord that answers in your company's voice."""

__version__ = "0.1.0"
