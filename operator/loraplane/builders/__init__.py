"""Pure builders: a BaseModelDeployment (and friends) in, Kubernetes manifests (dicts) out."""
