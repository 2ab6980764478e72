"""The one error type of the pure core: callers turn it into a 4xx or a one-line CLI error."""


class PolicyError(ValueError):
    """Input that violates the vocabulary or a home's policy; the message is user-facing."""
