"""Stand-in for vLLM in images/vllm/standin: only the `vllm` command, which says what it is."""

import sys


def main() -> None:
    print(f"stand-in for vllm (not vLLM): {' '.join(sys.argv[1:])}")
