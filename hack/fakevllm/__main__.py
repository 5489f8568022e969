"""``python -m fakevllm <vLLM's arguments>``: a FAKE vLLM server for benchmarks (see __init__)."""

import sys

from fakevllm import main

sys.exit(main())
