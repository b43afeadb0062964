"""Ray Serve deployments: ModelReplica (tensors), Classifier and Generator (text); the HTTP edge, Ingress, is
serve_app/ingress."""
