import sys; sys.path.insert(0,'.')
from pathlib import Path
import numpy as np, onnx
from edgerank.convert import int8
from edgerank.convert.graph import Graph, quantizable
from edgerank.quality import sets
work = Path('/tmp/edgerank-int8-acceptance/faq-head'); loop = work/'loop'
m = onnx.load(str(loop/'model.smooth.fp32.onnx'))
rows = int8.rows_of(m)
g = Graph(m)
names = sorted(rows)
cal, _ = sets.shipped(sets.PROBE)
pairs = [(q, d) for q, docs in cal[:40] for d in docs[:2]]
err = {n: [0.0, 0.0, 0.0] for n in names}
for batch in int8._activations(g, work/'ckpt', names, pairs):
    for n, v in batch.items():
        lo = np.minimum(v.min(1, keepdims=True), 0); hi = np.maximum(v.max(1, keepdims=True), 0)
        s = np.maximum(hi - lo, 1e-8)/255; z = np.clip(np.round(-lo/s), 0, 255)
        qa = (np.clip(np.round(v/s) + z, 0, 255) - z)*s
        Z = rows[n]['zero']; s2 = np.maximum(np.maximum(hi/(255-Z), -lo/Z), 1e-8)
        qr = (np.clip(np.round(v/s2) + Z, 0, 255) - Z)*s2
        e = err[n]; e[0] += ((qa-v)**2).sum(); e[1] += ((qr-v)**2).sum(); e[2] += (v**2).sum()
for n in names:
    a, r, t = err[n]
    print(f"{n[-45:]:45s} asym {np.sqrt(a/t):.4f} row {np.sqrt(r/t):.4f} ratio {np.sqrt(r/a):.2f} zero {rows[n]['zero']}")
