"""The per-pod sidecar: serves the pod's readiness and stores adapter files for vLLM."""
