"""landmarks: recognise landmarks in photos."""

__version__ = "0.1.0"
