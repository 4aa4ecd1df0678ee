"""Models built offline for tests and benchmarks: tiny random checkpoints (plumbing), real
MiniLM-L6 weights with fitted heads (fidelity), and their GGUF and ONNX forms. Needs the `dev`
extra (torch, transformers); the serving path never imports it."""
