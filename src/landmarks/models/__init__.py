"""Models: timm backbones, poolings, heads, the seed CNN, and the registry of architectures built from them."""

from landmarks.models import architectures  # noqa: F401 (registers the architectures)
