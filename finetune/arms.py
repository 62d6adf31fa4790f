"""The arms of a study: which starting point and which head each labeled run uses."""

SSL_LINEAR = "ssl-linear"  # frozen pretrained backbone, linear probe on cached embeddings
SSL_FINETUNE = "ssl-finetune"  # pretrained backbone, every layer trained
SCRATCH = "scratch"  # same architecture and schedule, random init

ARMS = (SSL_LINEAR, SSL_FINETUNE, SCRATCH)
SSL_ARMS = (SSL_LINEAR, SSL_FINETUNE)
