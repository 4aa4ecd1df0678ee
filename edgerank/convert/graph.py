"""The ONNX graph bookkeeping the INT8 rewrite needs: initializers, producers and consumers, fresh
names, and the structural questions the recipe asks (is this MatMul quantizable, what feeds
it, which rows does the head read). Torch-free.
"""

from __future__ import annotations

import numpy as np

MS_DOMAIN = "com.microsoft"
#: the oldest default-domain opset the INT8 rewrites build on (the token kind's per-axis
#: QuantizeLinear); convert/int8._lifted converts older exports up
MIN_OPSET = 13


def opset_of(model) -> int:
    """The default-domain opset ``model`` imports (17 where it names none)."""
    return next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 17)


class Graph:
    """Just enough graph bookkeeping for the rewrite: initializers, producers, new names."""

    def __init__(self, model):
        from onnx import numpy_helper

        self.model = model
        self._np = numpy_helper
        self.inits = {t.name: t for t in model.graph.initializer}
        self.opset = opset_of(model)
        self._n = 0
        self._taken: set[str] | None = None
        self._new_nodes: list = []
        self._new_inits: list = []
        self._dropped: set[int] = set()
        self._held: list = []
        self._runtime: set[str] | None = None

    def runtime(self) -> set[str]:
        """The tensors that depend on the graph's inputs (worked out once per Graph)."""
        if self._runtime is None:
            g = self.model.graph
            found = {i.name for i in g.input} - set(self.inits)
            for n in g.node:  # a model's nodes are stored in topological order
                if any(i in found for i in needs(n)):
                    found.update(n.output)
            self._runtime = found
        return self._runtime

    def nodes_of(self, op: str) -> list:
        return [n for n in self.model.graph.node if n.op_type == op]

    def producer(self, name: str):
        return next((n for n in self.model.graph.node if name in n.output), None)

    def consumers(self, name: str) -> list:
        return [n for n in self.model.graph.node if name in n.input]

    def array(self, name: str) -> np.ndarray | None:
        t = self.inits.get(name)
        return None if t is None else self._np.to_array(t)

    def value(self, name: str) -> np.ndarray | None:
        """A constant whether stored as an initializer or as a Constant node."""
        found = self.array(name)
        node = self.producer(name) if found is None else None
        if node is not None and node.op_type == "Constant":
            attr = next((a for a in node.attribute if a.name == "value"), None)
            found = None if attr is None else self._np.to_array(attr.t)
        return found

    def set_array(self, name: str, value: np.ndarray) -> None:
        t = self._np.from_array(value, name)
        self.inits[name].CopyFrom(t)

    def const(self, value, dtype=np.float32) -> str:
        name = self.fresh("c")
        t = self._np.from_array(np.asarray(value, dtype=dtype), name)
        self._new_inits.append(t)
        self.inits[name] = t
        return name

    def fresh(self, stem: str) -> str:
        """A name no tensor of the graph has: a graph rewritten before (the first-token
        rewrite, then SmoothQuant) already holds er_* names from its first pass."""
        if self._taken is None:
            g = self.model.graph
            self._taken = {o for n in g.node for o in n.output} | set(self.inits)
            self._taken |= {i.name for i in g.input}
        while True:
            self._n += 1
            name = f"er_{stem}_{self._n}"
            if name not in self._taken:
                self._taken.add(name)
                return name

    def add(self, op: str, inputs: list[str], out: str | None = None, domain: str = "", **attrs):
        from onnx import helper

        out = out or self.fresh(op.lower())
        self._new_nodes.append(helper.make_node(op, inputs, [out], domain=domain, **attrs))
        return out

    def drop(self, node) -> None:
        # protobuf hands out node wrappers by value; holding this one keeps its id from
        # being reused by another node's wrapper before the rewrite is applied
        self._held.append(node)
        self._dropped.add(id(node))

    def snapshot(self):
        """A copy of the model with the pending rewrite applied (the original is untouched)."""
        import onnx

        copy = onnx.ModelProto()
        copy.CopyFrom(self.model)
        self._apply(copy)
        return copy

    def finish(self) -> None:
        self._apply(self.model)

    def _apply(self, model) -> None:
        from onnx import helper

        graph = model.graph
        nodes = [n for n in self.model.graph.node if id(n) not in self._dropped]
        nodes += self._new_nodes
        used = {i for n in nodes for i in needs(n)}
        keep = [t for t in self.model.graph.initializer if t.name in used]
        names = {t.name for t in keep}
        keep += [t for t in self._new_inits if t.name in used and t.name not in names]
        ordered = _toposort(nodes, {i.name for i in graph.input} | set(self.inits))
        ordered = [_clone(n) for n in ordered]
        keep = [_clone(t) for t in keep]
        del graph.node[:]
        graph.node.extend(ordered)
        del graph.initializer[:]
        graph.initializer.extend(keep)
        if not any(o.domain == MS_DOMAIN for o in model.opset_import):
            model.opset_import.append(helper.make_opsetid(MS_DOMAIN, 1))


def _clone(proto):
    copy = type(proto)()
    copy.CopyFrom(proto)
    return copy


def needs(node) -> list[str]:
    """What ``node`` reads: its inputs and, for a node with subgraphs (DeBERTa's export has
    If nodes), the outer tensors those subgraphs name without taking them as inputs."""
    out = list(node.input)
    for attr in node.attribute:
        for sub in [attr.g] if attr.HasField("g") else list(attr.graphs):
            made = {o for n in sub.node for o in n.output}
            made |= {t.name for t in sub.initializer} | {i.name for i in sub.input}
            out += [i for n in sub.node for i in needs(n) if i and i not in made]
    return out


def _toposort(nodes: list, available: set[str]) -> list:
    ready, out, pending = set(available) | {""}, [], list(nodes)
    while pending:
        rest = []
        for n in pending:
            if all(i in ready for i in needs(n)):
                out.append(n)
                ready.update(n.output)
            else:
                rest.append(n)
        if len(rest) == len(pending):
            raise ValueError("graph rewrite left a cycle or a dangling input")
        pending = rest
    return out


def quantizable(g: Graph, node) -> bool:
    """A MatMul of a run-time activation by a constant 2-D FP32 weight.

    A MatMul whose input is itself constant is not one: DeBERTa projects its relative
    position embeddings through the Q and K weights (a constant [2 x buckets, hidden]),
    which onnxruntime folds once at load time; quantized, it would run at every call."""
    if node.op_type != "MatMul":
        return False
    w = g.array(node.input[1])
    if w is None or w.ndim != 2 or w.dtype != np.float32:
        return False
    return node.input[0] in g.runtime()


def first_token_last_layer(g: Graph) -> set[str]:
    """Compute the last layer after its K/V projections for the first token only.

    Applies only when the encoder output feeds nothing but a Gather of position 0 (BERT's
    pooler, XLM-R's and DeBERTa's heads): then every other row is dead work. Returns the
    names of the tensors that now hold one row per sequence.
    """
    mhas = g.nodes_of("MultiHeadAttention")
    if not mhas:
        return set()
    mha = mhas[-1]
    q_mm = g.producer(mha.input[0])
    if q_mm is None or q_mm.op_type != "MatMul" or len(mha.input) < 3:
        return set()
    x = q_mm.input[0]
    out = mha.output[0]
    (ao,) = g.consumers(out) or [None]
    if ao is None or ao.op_type != "MatMul":
        return set()
    (sln,) = g.consumers(ao.output[0]) or [None]
    if sln is None or sln.op_type != "SkipLayerNormalization" or x not in sln.input[:2]:
        return set()
    # the encoder's final output must be read at position 0 only
    final = _final_encoder_output(g, sln.output[0])
    readers = g.consumers(final) if final else []
    if not readers or not all(_is_first_token_gather(g, r) for r in readers):
        return set()
    first = g.const(np.array([0], dtype=np.int64), dtype=np.int64)
    x0 = g.add("Gather", [x, first], axis=1)
    q_mm.input[0] = x0
    idx = list(sln.input).index(x)
    sln.input[idx] = x0
    row_only = {x0, out, ao.output[0], sln.output[0]}
    frontier = [sln.output[0]]
    while frontier:  # everything downstream of the gathered rows is one row per sequence
        name = frontier.pop()
        for n in g.consumers(name):
            for o in n.output:
                if o not in row_only:
                    row_only.add(o)
                    frontier.append(o)
    return row_only


def _final_encoder_output(g: Graph, start: str) -> str | None:
    """Follow the single-consumer chain of the last layer to the last LayerNorm output."""
    name = start
    for _ in range(8):
        readers = g.consumers(name)
        if len(readers) == 1 and readers[0].op_type == "Gather":
            return name
        nxt = [r for r in readers if r.op_type in ("SkipLayerNormalization",)]
        if nxt:
            name = nxt[0].output[0]
            continue
        mm = [r for r in readers if r.op_type in ("MatMul", "BiasGelu", "Gelu", "FastGelu")]
        if not mm:
            return name
        name = mm[0].output[0]
    return None


def _is_first_token_gather(g: Graph, node) -> bool:
    if node.op_type != "Gather":
        return False
    axis = next((a.i for a in node.attribute if a.name == "axis"), 0)
    idx = g.value(node.input[1])
    return axis == 1 and idx is not None and idx.size == 1 and int(idx.reshape(-1)[0]) == 0
