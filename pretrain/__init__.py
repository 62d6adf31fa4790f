"""Self-supervised pretraining: data, backbones, views, SSL methods and the Ray Train loop.

``load_backbone`` is imported on first use (PEP 562), so that light modules of this package
(errors, option schemas) can be imported without torch.
"""

__all__ = ["load_backbone"]


def __getattr__(name: str):
    if name == "load_backbone":
        from pretrain.checkpoint import load_backbone

        return load_backbone
    raise AttributeError(f"module 'pretrain' has no attribute {name!r}")
