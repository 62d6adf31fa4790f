"""Self-supervised pretraining: data, backbones, views, SSL methods and the Ray Train loop."""
