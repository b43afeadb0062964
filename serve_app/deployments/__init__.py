"""Ray Serve deployments: ModelReplica (tensors), Classifier and Augmenter (text), Ingress (HTTP)."""
