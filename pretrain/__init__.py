"""Self-supervised pretraining: data, backbones, views, SSL methods and the Ray Train loop."""

from pretrain.checkpoint import load_backbone

__all__ = ["load_backbone"]
