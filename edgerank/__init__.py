"""edgerank: an edge/CPU-first, quantized reranking daemon."""

__version__ = "0.1.0"
