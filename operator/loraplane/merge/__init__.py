"""Serving an adapter merged into its base model (spec.model.merge): the streamed merge
(weights.py), the init container that runs it in each pod (main.py), what a version is made of
(inputs.py), and the operator's view of the merged pods (book.py)."""
