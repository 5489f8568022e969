"""loraplane's process node: a small kubelet that runs the pods bound to its Node as local
processes, each pod in its own network namespace. See README.md in this directory."""

NODE_NAME = "loraplane-node"
