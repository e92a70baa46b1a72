"""Transformers/torch backend: a shared-prefix log-likelihood scorer.

lm-eval's ``hf`` model forwards ``context + continuation`` once per request, so a 4-choice question
pays for its context four times, and it computes vocabulary logits and a log-softmax at every
position. This backend scores the same requests with the same token ids (``encode_pair``, batched) and
the same left truncation, but forwards every distinct token prefix once:

* The inputs of the requests in one forward are merged into a token trie: requests sharing a
  context, a few-shot prompt or a task header share its nodes. The trie is flattened into a single
  sequence (no padding); each node gets its depth as position id and attends only to its
  ancestors, which is exactly the computation of each request's own causal forward without the
  duplicates. Single-token continuations (MMLU letters) thus cost one forward of the context and
  multi-token choices cost the context once plus each continuation.
* Attention runs per "unit" (see :func:`plan_units`): a small subtree attends densely to itself
  plus its ancestor path, a long chain (a shared prompt) attends causally, so the cost stays close
  to the exact ancestor-pair count instead of the square of the forward's length. It is a
  registered transformers attention function (``cfbench_tree``); the rest of the model (RoPE,
  norms, MLPs, any architecture's head logic) is the model's own code.
* The LM head runs only at the nodes whose next-token distribution is scored (``logits_to_keep``
  with an index tensor), and log-softmax runs only there, in float32.
* Across forwards, a shared prefix too big to share within one (a task's or an MMLU subject's
  few-shot prompt when its questions need several forwards) is forwarded once and its keys/values
  are kept: :meth:`HFBackend.plan` walks one trie of all inputs of a call depth-first and gives each
  forward the cached prefix it continues (``Trie.prefix``) and what it adds to the cache
  (``Trie.capture``). The cache holds token ids, so prompts share exactly their common token
  prefix, and it is dropped at the end of each call. See docs/scoring.md.

The scoring path is an option, ``scoring_path="tree"`` (default) or ``"plain"`` (one ordinary
causal forward per distinct input), so it is known before the model loads and is part of the
result cache key (:meth:`HFBackend.key_settings`). At start-up a self-check compares the tree path
with plain forwards on a few token ids; a model whose code ignores the custom attention (remote
code) or gives other numbers through it is *refused* with the fix (``scoring_path=plain``) rather
than switched silently, because a silent switch would store numbers under a key that does not say
how they were computed. Requests longer than the model's sliding window use the plain forward on
either path (a deterministic function of the config, which is hashed, and of the request).
"""

from __future__ import annotations

import bisect
import importlib.metadata
import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from cfbench.backends import rolling
from cfbench.backends.hf_load import LoadedModel, acquire_model
from cfbench.errors import CfbenchError
from cfbench.models.adapter import adapter_marker
from cfbench.models.checkpoint import check_model_type
from cfbench.models.tokenize import encode_pairs
from cfbench.requests import (
    GenerateRequest,
    LoglikRequest,
    LoglikResult,
    ProgressFn,
    RollingRequest,
    RollingResult,
)

log = logging.getLogger(__name__)

_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
_DEFAULT_MAX_LENGTH = 2048  # lm-eval's fallback when neither config nor tokenizer gives one
_TOKENIZER_INFINITY = 1000000000000000019884624838656
_SEQLEN_ATTRS = ("n_positions", "max_position_embeddings", "n_ctx")
ATTN_NAME = "cfbench_tree"
_UNITS_KW = "cfbench_units"
_SOFTMAX_ROWS = 1024  # scored positions per float32 log-softmax chunk
_TREE_CALLS = [0]  # layers that ran tree attention (the self-check sees whether the model calls it)
# Self-check tolerance on sums of 1-3 token log-probs: float32 must match lm-eval to 1e-3; in half
# precision two orders of the same math differ by ~0.2 while ignored units give errors of nats.
_CHECK_TOL = {"float32": 1e-3, "bfloat16": 0.5, "float16": 0.5}
SCORING_PATHS = ("tree", "plain")


def resolve_max_length(config: Any, tokenizer: Any) -> int:
    """The context length lm-eval 0.4 uses for a model (text config, config, tokenizer, then 2048)."""
    cfg = getattr(config, "text_config", None) or config
    for attr in _SEQLEN_ATTRS:
        value = getattr(cfg, attr, None)
        if value is not None:
            return int(value)
    mml = getattr(tokenizer, "model_max_length", None)
    if mml is not None and mml != _TOKENIZER_INFINITY:
        return int(mml)
    return _DEFAULT_MAX_LENGTH


def _config_json_max_length(model_path: Path) -> int | None:
    """:func:`resolve_max_length`'s config part read straight from config.json (no transformers import,
    which costs seconds on a cached rerun that loads no model); None if the file has no length."""
    import json

    try:
        data = json.loads((model_path / "config.json").read_text())
    except (OSError, ValueError):
        return None
    cfg = data.get("text_config") or data
    for attr in _SEQLEN_ATTRS:
        if cfg.get(attr) is not None:
            return int(cfg[attr])
    return None


# ----------------------------------------------------------------------------------------------
# Tree attention


@dataclass(frozen=True, slots=True)
class Unit:
    """Queries ``[start, end)`` attend to keys ``kidx`` (None: the same range) under ``mask``.

    ``mask`` is a bool ``[end - start, len(keys)]`` (True = attend) or None for plain causal.
    """

    start: int
    end: int
    kidx: torch.Tensor | None
    mask: torch.Tensor | None


@dataclass(slots=True)
class TreeContext:
    """What one forward's attention calls share: the units, the cached prefix's keys/values (one
    ``(k, v)`` per attention call, in call order) and how many leading nodes to append to them.

    Layers are told apart by call order, not by module, so a model that reuses one attention module
    in several layers still gets one cache entry per call; a model whose calls do not line up with
    the cache is refused by the self-check (which runs this path).
    """

    units: list[Unit] | None
    prefix: list[tuple[torch.Tensor, torch.Tensor]] = field(default_factory=list)
    capture: int = 0  # leading nodes of this forward whose keys/values extend the cache
    captured: list[tuple[torch.Tensor, torch.Tensor]] = field(default_factory=list)
    calls: int = 0


def tree_attention(
    module: torch.nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    dropout: float = 0.0,
    scaling: float | None = None,
    is_causal: bool | None = None,
    **kwargs: Any,
) -> tuple[torch.Tensor, None]:
    """Attention over a flattened trie, unit by unit; without units it is transformers' sdpa.

    With a cached prefix, this call's keys/values are appended to the prefix's (its ``P`` tokens come
    first in key space, the trie's node ``i`` is key ``P + i``); the units index that space.
    """
    ctx: TreeContext | None = kwargs.pop(_UNITS_KW, None)
    units = None if ctx is None else ctx.units
    if ctx is not None:
        layer = ctx.calls
        ctx.calls += 1
        if ctx.prefix:
            if layer >= len(ctx.prefix):
                raise CfbenchError(
                    f"hf backend: the model made more attention calls than the {len(ctx.prefix)} cached: "
                    "pass the backend option scoring_path=plain"
                )
            pk, pv = ctx.prefix[layer]
            key, value = torch.cat([pk, key], dim=2), torch.cat([pv, value], dim=2)
        if ctx.capture:
            end = key.shape[2] - query.shape[2] + ctx.capture
            ctx.captured.append((key[:, :, :end].contiguous(), value[:, :, :end].contiguous()))
    if units is None:
        from transformers.integrations.sdpa_attention import sdpa_attention_forward

        return sdpa_attention_forward(
            module, query, key, value, attention_mask, dropout=dropout, scaling=scaling, is_causal=is_causal, **kwargs
        )
    _TREE_CALLS[0] += 1
    # query [1, H, T, D]; key/value [1, H_kv, P + T, D]; output [1, T, H, D] like sdpa_attention_forward.
    off = key.shape[2] - query.shape[2]
    gqa = query.shape[1] != key.shape[1]
    out = query.new_empty(query.shape[0], query.shape[2], query.shape[1], query.shape[3])
    for u in units:
        q = query[:, :, u.start : u.end]
        if u.kidx is None:
            k, v = key[:, :, off + u.start : off + u.end], value[:, :, off + u.start : off + u.end]
        else:
            k, v = key.index_select(2, u.kidx), value.index_select(2, u.kidx)
        o = F.scaled_dot_product_attention(
            q, k, v, attn_mask=u.mask, is_causal=u.mask is None, scale=scaling, enable_gqa=gqa
        )
        out[:, u.start : u.end] = o.transpose(1, 2)
    return out, None


def _register_attention() -> None:
    """Make ``cfbench_tree`` a transformers attention implementation (mask creation as sdpa)."""
    from transformers import AttentionInterface
    from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, AttentionMaskInterface, sdpa_mask

    AttentionInterface.register(ATTN_NAME, tree_attention)
    if ATTN_NAME not in ALL_MASK_ATTENTION_FUNCTIONS:
        AttentionMaskInterface.register(ATTN_NAME, sdpa_mask)


# ----------------------------------------------------------------------------------------------
# Planning


@dataclass(slots=True)
class _Item:
    """One request after tokenisation and truncation: score ``targets`` from the last inputs."""

    index: int
    inp: tuple[int, ...]  # tokens fed to the model: (ctx + cont)[-(L+1):][:-1]
    targets: list[int]  # continuation tokens, predicted by the last len(targets) inputs


@dataclass
class Trie:
    """The inputs of one forward, merged. Nodes are appended in insertion order, so a parent
    precedes its children and (with inputs inserted in sorted order) every subtree is a contiguous
    index range.

    ``prefix``: tokens every input starts with whose keys/values come from the backend's prefix
    cache (computed by an earlier forward); the nodes hold the rest of each input, at positions
    ``len(prefix) + depth``. ``capture``: after this forward, its first ``capture`` nodes (a chain
    every input shares, none of them scored) are appended to the cache, so later forwards of the
    same few-shot prompt start from it instead of forwarding it again.
    """

    tokens: list[int] = field(default_factory=list)
    parents: list[int] = field(default_factory=list)
    depths: list[int] = field(default_factory=list)
    children: dict[tuple[int, int], int] = field(default_factory=dict)
    items: list[tuple[_Item, list[int]]] = field(default_factory=list)  # (item, scored node ids)
    prefix: tuple[int, ...] = ()
    capture: int = 0

    def __len__(self) -> int:
        return len(self.tokens)

    def cost(self, inp: Sequence[int]) -> int:
        """New nodes that inserting ``inp`` (a whole input, prefix included) would add."""
        node = -1
        off = len(self.prefix)
        for j in range(off, len(inp)):
            nxt = self.children.get((node, inp[j]))
            if nxt is None:
                return len(inp) - j
            node = nxt
        return 0

    def add(self, item: _Item) -> None:
        off = len(self.prefix)
        if len(item.inp) - len(item.targets) < off or item.inp[:off] != self.prefix:
            raise ValueError("an item whose scored positions are not all after the trie's prefix")
        last = self.items[-1] if self.items else None
        if last is not None and last[0].inp == item.inp and len(last[0].targets) >= len(item.targets):
            # Same input as the previous request (MMLU's letters, BoolQ's yes/no): no walk.
            nodes = last[1]
            self.items.append((item, nodes[len(nodes) - len(item.targets) :]))
            return
        node = -1
        path = []
        for depth in range(off, len(item.inp)):
            tok = item.inp[depth]
            nxt = self.children.get((node, tok))
            if nxt is None:
                nxt = len(self.tokens)
                self.tokens.append(tok)
                self.parents.append(node)
                self.depths.append(depth)
                self.children[(node, tok)] = nxt
            node = nxt
            path.append(node)
        self.items.append((item, path[len(path) - len(item.targets) :]))


def plan_units(trie: Trie, dense_limit: int, device: torch.device | str = "cpu") -> list[Unit]:
    """Split the trie's attention into units whose cost stays near the exact ancestor-pair count.

    A forest of at most ``dense_limit`` nodes is one dense unit (keys: its ancestor path plus
    itself, mask: ancestor relation). A bigger subtree is cut at its root chain (one causal unit on
    top of the ancestor path) and its child subtrees are handled the same way with the chain added
    to their path; small siblings are grouped so the number of units (kernel calls) stays low.
    Key indices count the trie's cached prefix first (``P = len(trie.prefix)`` keys, the ancestor
    path of every root), so node ``i`` is key ``P + i``.
    """
    n = len(trie)
    off = len(trie.prefix)
    kids: list[list[int]] = [[] for _ in range(n)]
    roots: list[int] = []
    for i, p in enumerate(trie.parents):
        (kids[p] if p >= 0 else roots).append(i)
    size = [1] * n
    for i in range(n - 1, -1, -1):
        p = trie.parents[i]
        if p >= 0:
            size[p] += size[i]

    units: list[Unit] = []

    def dense(start: int, end: int, path: list[int]) -> None:
        # Nodes [start, end) form whole subtrees (contiguous); each row = its parent's row + itself.
        width = end - start
        chain = all(trie.parents[i] == i - 1 for i in range(start + 1, end))
        if chain and not path:
            units.append(Unit(start, end, None, None))
            return
        m = torch.zeros((width, len(path) + width), dtype=torch.bool)
        m[:, : len(path)] = True
        base = len(path)
        for r, i in enumerate(range(start, end)):
            p = trie.parents[i]
            if start <= p < end:
                m[r, base : base + (p - start) + 1] = m[p - start, base : base + (p - start) + 1]
            m[r, base + r] = True
        kidx = torch.tensor([*path, *range(off + start, off + end)], device=device) if path else None
        units.append(Unit(start, end, kidx, m.to(device)))

    # (forest of sibling subtree roots, ancestor path as key indices) still to split
    stack: list[tuple[list[int], list[int]]] = [(roots, list(range(off)))]
    while stack:
        forest, path = stack.pop()
        group: list[int] = []
        group_size = 0
        for r in [*forest, -1]:
            if r >= 0 and size[r] <= dense_limit and group_size + size[r] <= dense_limit:
                group.append(r)
                group_size += size[r]
                continue
            if group:  # siblings are contiguous: the group is one index range
                dense(group[0], group[-1] + size[group[-1]], path)
                group, group_size = [], 0
            if r < 0:
                break
            if size[r] <= dense_limit:
                group, group_size = [r], size[r]
                continue
            # Too big: its root chain is one causal unit, its children go back on the stack.
            end = r
            while len(kids[end]) == 1:
                end = kids[end][0]
            chain_keys = list(range(off + r, off + end + 1))
            if path:
                m = torch.ones((end - r + 1, len(path) + end - r + 1), dtype=torch.bool)
                m[:, len(path) :] = torch.ones((end - r + 1, end - r + 1), dtype=torch.bool).tril()
                units.append(Unit(r, end + 1, torch.tensor([*path, *chain_keys], device=device), m.to(device)))
            else:
                units.append(Unit(r, end + 1, None, None))
            if kids[end]:
                stack.append((kids[end], [*path, *chain_keys]))
    return units


def _common_len(a: Sequence[int], b: Sequence[int]) -> int:
    n = min(len(a), len(b))
    for i in range(n):
        if a[i] != b[i]:
            return i
    return n


@dataclass(slots=True)
class _PlanWalk:
    """What :meth:`HFBackend.plan`'s depth-first packing walk reads and the forwards it appends.

    ``full`` is the trie of all inputs of one call (``order``: the items in lexicographic order);
    per node: its children, subtree size and whether some item scores it. ``ends`` is each item's
    last node: preorder is lexicographic order, so these never decrease and a subtree's items are a
    contiguous run found by bisection. ``groups``: one ``(cached prefix's last node or -1, item lo,
    item hi)`` per forward, in the order they run.
    """

    order: list[_Item]
    full: Trie
    kids: list[list[int]]
    roots: list[int]
    size: list[int]
    scored: list[bool]
    ends: list[int]
    budget: int
    cap: int | None
    groups: list[tuple[int, int, int]] = field(default_factory=list)

    def span(self, r: int) -> tuple[int, int]:
        """The items (``[lo, hi)`` in ``order``) whose last node lies in the subtree of ``r``."""
        return bisect.bisect_left(self.ends, r), bisect.bisect_left(self.ends, r + self.size[r])


def _plan_walk(items: list[_Item], budget: int, cap: int | None) -> _PlanWalk:
    """Merge every input into one trie and measure each node, so the walk can decide per subtree
    whether it fits one forward (``budget`` nodes, ``cap`` requests) without re-walking it."""
    order = sorted(items, key=lambda it: it.inp)
    full = Trie()
    for item in order:
        full.add(item)
    n = len(full)
    kids: list[list[int]] = [[] for _ in range(n)]
    roots: list[int] = []
    for i, par in enumerate(full.parents):
        (kids[par] if par >= 0 else roots).append(i)
    size = [1] * n
    for i in range(n - 1, -1, -1):
        if full.parents[i] >= 0:
            size[full.parents[i]] += size[i]
    scored = [False] * n
    for _, nodes in full.items:
        for node in nodes:
            scored[node] = True
    ends = [nodes[-1] for _, nodes in full.items]
    return _PlanWalk(order, full, kids, roots, size, scored, ends, budget, cap)


def _greedy(walk: _PlanWalk, lo: int, hi: int, pnode: int) -> None:
    """Items under a scored node too big for one forward: fill forwards in order; an item that
    mostly extends the current one may overshoot the budget by up to one budget."""
    order, budget, cap = walk.order, walk.budget, walk.cap
    trie = Trie(prefix=order[lo].inp[: walk.full.depths[pnode] + 1] if pnode >= 0 else ())
    start = lo
    for k in range(lo, hi):
        inp = order[k].inp
        new = trie.cost(inp)
        fits = len(trie) + new <= budget
        mostly_shared = new * 2 <= len(inp) - len(trie.prefix) and len(trie) + new <= 2 * budget
        full_count = cap is not None and len(trie.items) >= cap
        if trie.items and (full_count or not (fits or mostly_shared)):
            walk.groups.append((pnode, start, k))
            trie, start = Trie(prefix=trie.prefix), k
        trie.add(order[k])
    walk.groups.append((pnode, start, hi))


def _pack(walk: _PlanWalk, forest: list[int], pnode: int) -> None:
    """Pack the sibling subtrees ``forest`` (under the cached node ``pnode``) into forwards.

    Consecutive siblings that fit together share a forward; a subtree too big for one has its root
    chain cached (up to the first branching or scored node) and its children packed under it, or,
    when that chain ends at a scored node with no branching above it, is filled greedily.
    """
    budget, cap, size, kids, scored = walk.budget, walk.cap, walk.size, walk.kids, walk.scored
    glo = ghi = gsize = 0
    for r in forest:
        lo, hi = walk.span(r)
        if size[r] <= budget and (cap is None or hi - lo <= cap):
            if ghi > glo and gsize + size[r] <= budget and (cap is None or hi - glo <= cap):
                ghi, gsize = hi, gsize + size[r]
            else:
                if ghi > glo:
                    walk.groups.append((pnode, glo, ghi))
                glo, ghi, gsize = lo, hi, size[r]
            continue
        if ghi > glo:
            walk.groups.append((pnode, glo, ghi))
        glo = ghi = gsize = 0
        c = r  # too big: cache its root chain, up to the first branching or scored node
        while not scored[c] and len(kids[c]) == 1:
            c = kids[c][0]
        if not scored[c]:  # branches below c (a leaf is always scored)
            _pack(walk, kids[c], c)
        elif c != r:
            _pack(walk, [c], walk.full.parents[c])
        else:
            _greedy(walk, lo, hi, pnode)
    if ghi > glo:
        walk.groups.append((pnode, glo, ghi))


def _group_tries(walk: _PlanWalk) -> list[Trie]:
    """One trie per planned forward: each starts from what the prefix cache holds when it runs
    (the common part of the previous forward's prefix and its own) and captures the rest."""
    tries: list[Trie] = []
    cache: tuple[int, ...] = ()  # what the prefix cache holds when each forward runs
    for pnode, lo, hi in walk.groups:
        want = walk.order[lo].inp[: walk.full.depths[pnode] + 1] if pnode >= 0 else ()
        have = _common_len(cache, want)
        trie = Trie(prefix=want[:have], capture=len(want) - have)
        for item in walk.order[lo:hi]:
            trie.add(item)
        tries.append(trie)
        cache = want
    return tries


# ----------------------------------------------------------------------------------------------
# Backend


class HFBackend:
    """Log-likelihood scoring with transformers, sharing every common prefix across requests.

    ``batch_tokens`` bounds the trie nodes of one forward (activation memory, and how far apart
    shared prefixes may be found); ``batch_size`` optionally bounds the requests per forward
    (``"auto"``: no bound). ``dense_limit`` is the largest subtree whose attention is computed
    densely in one kernel call. ``scoring_path``: ``"tree"`` (shared prefixes, the default) or
    ``"plain"`` (one causal forward per distinct input, for models that refuse the tree path).
    """

    name = "hf"

    @classmethod
    def key_settings(cls, model_path: str | Path, options: dict[str, Any]) -> dict[str, Any]:
        """What changes the numbers, known without loading weights (the result cache key's backend part).

        dtype, the effective max length (read from config.json, the tokenizer only if the config has
        none), the scoring path, the device type (CPU and CUDA kernels differ in the last bits) and
        the torch / transformers versions. Batch sizes only reorder the same math and are left out.
        """
        dtype = options.get("dtype") or "float32"
        if dtype not in _DTYPES:
            raise CfbenchError(f"unknown dtype {dtype!r} for the hf backend: choose one of {', '.join(_DTYPES)}")
        path = options.get("scoring_path") or "tree"
        if path not in SCORING_PATHS:
            raise CfbenchError(f"unknown scoring_path {path!r} for the hf backend: choose tree or plain")
        max_length = options.get("max_length")
        trust = bool(options.get("trust_remote_code", False))
        if not max_length:
            max_length = _config_json_max_length(Path(model_path))
        if not max_length:  # no length in config.json: ask transformers (seconds: it imports a lot)
            from transformers import AutoConfig, AutoTokenizer

            check_model_type(Path(model_path))
            config = AutoConfig.from_pretrained(str(model_path), trust_remote_code=trust)
            tokenizer = AutoTokenizer.from_pretrained(str(model_path), trust_remote_code=trust)
            max_length = resolve_max_length(config, tokenizer)
        device = options.get("device") or ("cuda" if torch.cuda.is_available() else "cpu")
        return {
            **({"peft": importlib.metadata.version("peft")} if adapter_marker(model_path) else {}),
            "backend": cls.name,
            "dtype": dtype,
            "max_length": int(max_length),
            "scoring_path": path,
            "device": torch.device(device).type,
            "torch": torch.__version__,
            "transformers": importlib.metadata.version("transformers"),
        }

    def __init__(
        self,
        model_path: str | Path,
        *,
        dtype: str = "float32",
        batch_size: int | str = "auto",
        max_length: int | None = None,
        device: str | None = None,
        batch_tokens: int | None = None,
        dense_limit: int = 192,
        trust_remote_code: bool = False,
        scoring_path: str = "tree",
        **_: Any,
    ) -> None:
        from transformers import AutoTokenizer

        marker = adapter_marker(model_path)  # before the tokenizer, whose config read would warn first
        check_model_type(Path(model_path) if marker is None else Path(marker["base_path"]))
        self._settings = self.key_settings(
            model_path,
            {"dtype": dtype, "max_length": max_length, "device": device, "scoring_path": scoring_path,
             "trust_remote_code": trust_remote_code},
        )  # fmt: skip
        if batch_size != "auto" and (not str(batch_size).isdigit() or int(batch_size) < 1):
            raise CfbenchError(f"batch_size must be a positive integer or 'auto', got {batch_size!r}")
        _register_attention()
        self.dtype = dtype
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        self.batch_size: int | None = None if batch_size == "auto" else int(batch_size)
        self.batch_tokens = int(batch_tokens) if batch_tokens else (2048 if self.device.type == "cpu" else 8192)
        self.dense_limit = int(dense_limit)
        self.tokenizer = AutoTokenizer.from_pretrained(str(model_path), trust_remote_code=trust_remote_code)
        # In a reuse scope (compare, sweep) the base is loaded once for all its adapters (hf_load).
        self._loaded: LoadedModel | None = acquire_model(
            model_path, self.device, dtype=_DTYPES[dtype], attn_implementation=ATTN_NAME,
            trust_remote_code=trust_remote_code,
        )  # fmt: skip
        self.model: Any = self._loaded.model
        self.model.eval()
        self._loaded.activate()
        self.max_length = int(self._settings["max_length"])
        cfg = getattr(self.model.config, "text_config", None) or self.model.config
        window = getattr(cfg, "sliding_window", None)
        use_window = window and getattr(cfg, "use_sliding_window", True)
        self.sliding_window: int | None = int(window) if use_window else None
        self.tokens_forwarded = 0  # tokens actually run through the model (for benchmarks)
        self.head_rows = 0  # positions the LM head ran at (for benchmarks' FLOP counts)
        self.tree = scoring_path == "tree"
        self._drop_prefix()
        if self.tree:
            self._self_check()

    def settings(self) -> dict[str, Any]:
        """Exactly :meth:`key_settings` for this backend's options (so the cache key describes it)."""
        return dict(self._settings)

    def close(self) -> None:
        """Drop the model so its memory can be reclaimed (in a reuse scope: hand the base back)."""
        if self._loaded is not None:
            self._loaded.release()
            self._loaded = None
        self.model = None
        if torch.cuda.is_available():
            torch.cuda.empty_cache()

    def generate_until(
        self, requests: Sequence[GenerateRequest], progress: ProgressFn | None = None, *, batch_size: int | None = None
    ) -> list[str]:
        """Greedy continuations cut at their stop strings, as lm-eval's ``HFLM.generate_until``
        (:mod:`cfbench.backends.generate`); ``max_gen_toks`` counts against this backend's ``max_length``.
        ``batch_size``: prompts per ``generate`` call (default: the backend's ``batch_size``, else 16)."""
        if self.model is None:
            raise CfbenchError("this HFBackend was closed: create a new one")
        from cfbench.backends.generate import generate_until

        size = batch_size if batch_size is not None else (self.batch_size or 16)
        self._activate()
        return generate_until(
            self.model, self.tokenizer, requests, max_length=self.max_length, batch_size=size, progress=progress
        )

    # ------------------------------------------------------------------------------------------
    # Request preparation

    def prepare(self, requests: Sequence[LoglikRequest]) -> list[_Item]:
        """Tokenise like lm-eval and apply its left truncation to ``max_length``."""
        items = []
        limit = self.max_length
        pairs = encode_pairs(self.tokenizer, [(req.context, req.continuation) for req in requests])
        for i, (ctx, cont) in enumerate(pairs):
            if len(cont) > limit:
                raise CfbenchError(
                    f"a continuation of {len(cont)} tokens exceeds max_length={limit}: "
                    "raise max_length or shorten the task's choices"
                )
            whole = (ctx + cont)[-(limit + 1) :]
            items.append(_Item(i, tuple(whole[:-1]), cont))
        return items

    def plan(self, items: list[_Item]) -> list[Trie]:
        """One trie per forward, in an order where a shared prefix is forwarded once, not per forward.

        All inputs are merged into one trie (lexicographic order, so every subtree is a contiguous
        run of nodes and of items). Sibling subtrees are packed into forwards of at most
        ``batch_tokens`` nodes (and ``batch_size`` requests). A subtree too big for one forward —
        the questions of a task or MMLU subject under their common few-shot prompt — has its root
        chain (up to the first branching or scored node) cached: the first forward under it
        computes the chain and keeps its keys/values (``Trie.capture``), the later ones start from
        them (``Trie.prefix``) and hold only what their questions add. Forwards come out in
        depth-first order, so the cache is one sequence that is cut back or extended as the walk
        moves between prefixes. A scored node with a subtree too big for one forward (an input
        that is a prefix of many others) cannot be cached; its items are packed greedily as before.
        """
        if not items:
            return []
        walk = _plan_walk(items, self.batch_tokens, self.batch_size)
        _pack(walk, walk.roots, -1)
        return _group_tries(walk)

    # ------------------------------------------------------------------------------------------
    # Scoring

    def loglikelihood(
        self, requests: Sequence[LoglikRequest], progress: ProgressFn | None = None
    ) -> list[LoglikResult]:
        """Results in request order; equal (to float noise) to lm-eval's ``hf`` model."""
        if self.model is None:
            raise CfbenchError("this HFBackend was closed: create a new one")
        return self.score_items(self.prepare(requests), progress)

    def loglikelihood_rolling(
        self, requests: Sequence[RollingRequest], progress: ProgressFn | None = None
    ) -> list[RollingResult]:
        """Whole-text log-likelihoods in lm-eval's windows (:mod:`cfbench.backends.rolling`)."""
        if self.model is None:
            raise CfbenchError("this HFBackend was closed: create a new one")

        def score(windows: list[rolling.Window]) -> list[float]:
            items = [_Item(i, w.inp, list(w.targets)) for i, w in enumerate(windows)]
            return [r.logprob for r in self.score_items(items)]

        return rolling.score_rolling(self.tokenizer, requests, self.max_length, score, progress)

    def score_items(self, items: list[_Item], progress: ProgressFn | None = None) -> list[LoglikResult]:
        """Score prepared items (``index`` = their position in ``items``) on the tree or plain path."""
        results: list[LoglikResult | None] = [None] * len(items)
        plain: list[_Item] = []
        packed: list[_Item] = []
        for item in items:
            if not item.targets:  # log p(empty) = 0; lm-eval would refuse such a request
                results[item.index] = LoglikResult(0.0, True, 0)
            elif not self.tree or (self.sliding_window is not None and len(item.inp) > self.sliding_window):
                plain.append(item)
            else:
                packed.append(item)
        if progress and len(items) > len(plain) + len(packed):
            progress(len(items) - len(plain) - len(packed))
        self._activate()
        self._drop_prefix()  # the cache lives within one call: results never depend on earlier calls
        with torch.inference_mode():
            pending = self.plan(packed)
            while pending:
                trie = pending.pop(0)
                try:
                    scored = self._run_trie(trie)
                except torch.OutOfMemoryError:
                    if len(trie.items) == 1:
                        raise
                    # Out of accelerator memory: split this forward in two and carry on.
                    if torch.cuda.is_available():
                        torch.cuda.empty_cache()
                    self.batch_tokens = max(1, len(trie) // 2)
                    log.warning("cfbench hf: out of memory, batch_tokens lowered to %d", self.batch_tokens)
                    half = len(trie.items) // 2
                    pending[:0] = [*self.plan([it for it, _ in trie.items[:half]]),
                                   *self.plan([it for it, _ in trie.items[half:]])]  # fmt: skip
                    continue
                for index, res in scored:
                    results[index] = res
                if progress:
                    progress(len(trie.items))
            by_input: dict[tuple[int, ...], list[_Item]] = {}
            for item in plain:
                by_input.setdefault(item.inp, []).append(item)
            for group in by_input.values():
                for item, res in zip(group, self._run_plain(group), strict=True):
                    results[item.index] = res
                if progress:
                    progress(len(group))
        self._drop_prefix()
        return [r for r in results if r is not None]

    def _activate(self) -> None:
        """Put a shared model in this checkpoint's state (its adapter on, or all off for the base)."""
        if self._loaded is not None:
            self._loaded.activate()

    def _drop_prefix(self) -> None:
        self._prefix_tokens: tuple[int, ...] = ()
        self._prefix_kv: list[tuple[torch.Tensor, torch.Tensor]] = []

    def _use_prefix(self, prefix: tuple[int, ...]) -> None:
        """Make the prefix cache hold exactly ``prefix``: cut it back to the common part, then (only
        when forwards run out of the planned order, e.g. after an out-of-memory split) forward the
        rest as one chain on top of it."""
        have = _common_len(self._prefix_tokens, prefix)
        if have < len(self._prefix_tokens):
            self._prefix_tokens = self._prefix_tokens[:have]
            self._prefix_kv = [(k[:, :, :have], v[:, :, :have]) for k, v in self._prefix_kv]
        if have == len(prefix):
            return
        chain = Trie(prefix=prefix[:have], capture=len(prefix) - have)
        chain.add(_Item(-1, prefix, []))
        ctx = TreeContext(plan_units(chain, self.dense_limit, self.device), self._prefix_kv, chain.capture)
        self.tokens_forwarded += len(chain)
        self._forward(torch.tensor([chain.tokens]), torch.tensor([chain.depths]), torch.tensor([len(chain) - 1]), ctx)
        self._keep_captured(chain, ctx)

    def _keep_captured(self, trie: Trie, ctx: TreeContext) -> None:
        """After a forward: check its attention calls matched the cache; keep what it captured."""
        if ctx.prefix and ctx.calls != len(ctx.prefix):
            raise CfbenchError(
                f"hf backend: the model made {ctx.calls} attention calls, {len(ctx.prefix)} cached: "
                "pass the backend option scoring_path=plain"
            )
        if not trie.capture:
            return
        self._prefix_tokens = trie.prefix + tuple(trie.tokens[: trie.capture])
        self._prefix_kv = ctx.captured

    def _run_trie(self, trie: Trie) -> list[tuple[int, LoglikResult]]:
        keep: list[int] = []
        where: dict[int, int] = {}
        for _, nodes in trie.items:
            for node in nodes:
                if node not in where:
                    where[node] = len(keep)
                    keep.append(node)
        self._use_prefix(trie.prefix)
        ctx = TreeContext(plan_units(trie, self.dense_limit, self.device), self._prefix_kv, trie.capture)
        self.tokens_forwarded += len(trie)
        wanted = [([where[n] for n in nodes], item.targets) for item, nodes in trie.items]
        logits = self._forward(torch.tensor([trie.tokens]), torch.tensor([trie.depths]), torch.tensor(keep), ctx)
        self._keep_captured(trie, ctx)
        results = self._gather(logits, wanted)
        return [(item.index, res) for (item, _), res in zip(trie.items, results, strict=True)]

    def _forward(
        self, ids: torch.Tensor, pos: torch.Tensor | None, keep: torch.Tensor, ctx: TreeContext | None
    ) -> torch.Tensor:
        """Logits ``[len(keep), vocab]`` of one forward; ``ctx`` None is an ordinary causal forward."""
        kwargs: dict[str, Any] = {}
        if ctx is not None:
            # A 4D mask makes transformers skip building its own (T x T) mask; units replace it.
            kwargs = {"attention_mask": torch.zeros((1, 1, 1, 1), device=self.device), _UNITS_KW: ctx}
        self.head_rows += len(keep)
        return self.model(
            input_ids=ids.to(self.device),
            position_ids=None if pos is None else pos.to(self.device),
            logits_to_keep=keep.to(self.device),
            use_cache=False,
            **kwargs,
        ).logits[0]

    def _gather(self, logits: torch.Tensor, wanted: list[tuple[list[int], list[int]]]) -> list[LoglikResult]:
        """For each ``(rows of logits, targets)`` sum log-probs and check greedy.

        The float32 log-softmax is taken in chunks of rows so memory stays bounded whatever the
        number of scored positions.
        """
        rows = torch.tensor([r for sel, _ in wanted for r in sel], device=logits.device)
        tgts = torch.tensor([t for _, targets in wanted for t in targets], device=logits.device)
        token_lp = torch.empty(len(rows), device=logits.device)
        token_greedy = torch.empty(len(rows), dtype=torch.bool, device=logits.device)
        for c in range(0, logits.shape[0], _SOFTMAX_ROWS):
            logprobs = torch.log_softmax(logits[c : c + _SOFTMAX_ROWS].float(), dim=-1)
            here = ((rows >= c) & (rows < c + _SOFTMAX_ROWS)).nonzero().squeeze(1)
            r, t = rows[here] - c, tgts[here]
            token_lp[here] = logprobs[r, t]
            token_greedy[here] = logprobs.argmax(dim=-1)[r] == t
        lps, greedy = token_lp.tolist(), token_greedy.tolist()
        out = []
        start = 0
        for sel, _ in wanted:
            # NaN / inf stay as they are (fsum would raise on them): Task.score refuses them, naming
            # the task and document, instead of storing a silent -inf.
            part = lps[start : start + len(sel)]
            lp = math.fsum(part) if all(map(math.isfinite, part)) else sum(part)
            out.append(LoglikResult(lp, all(greedy[start : start + len(sel)]), len(sel)))
            start += len(sel)
        return out

    def _run_plain(self, group: list[_Item]) -> list[LoglikResult]:
        """One ordinary causal forward for requests with the same input (the model makes its masks)."""
        inp = group[0].inp
        n = max(len(item.targets) for item in group)
        self.tokens_forwarded += len(inp)
        keep = torch.arange(len(inp) - n, len(inp))
        logits = self._forward(torch.tensor([inp]), None, keep, None)
        return self._gather(logits, [(list(range(n - len(it.targets), n)), it.targets) for it in group])

    def _self_check(self) -> None:
        """Refuse the tree path unless it equals plain forwards on a small branching input, scored
        both in one forward and through the prefix cache (captured by one forward, extended by
        another, cut back by a third)."""
        vocab = int(self.model.get_input_embeddings().weight.shape[0])
        t = [(7 * i + 3) % vocab for i in range(21)]
        items = [
            _Item(0, (*t[:12], t[11], t[12]), [t[13], t[14], t[15]]),
            _Item(1, (*t[:12], t[11], t[16]), [t[17], t[18]]),
            _Item(2, (*t[:5], t[19]), [t[20]]),
        ]
        for item in items:  # scored positions are the last len(targets) inputs
            item.inp = item.inp + tuple(item.targets[:-1])
        trie = Trie()
        for item in sorted(items, key=lambda it: it.inp):
            trie.add(item)
        cached = [Trie(capture=5), Trie(prefix=tuple(t[:5])), Trie(prefix=tuple(t[:12]))]
        for sub, item in zip(cached, [items[2], items[1], items[0]], strict=True):
            sub.add(item)
        calls = _TREE_CALLS[0]
        with torch.inference_mode():
            tree = dict(_run_units_small(self, trie))
            called = _TREE_CALLS[0] > calls
            via_cache = {}
            for sub in (cached[0], cached[2], cached[1]):  # 5 tokens kept, extended to 12, cut back to 5
                via_cache.update(_run_units_small(self, sub))
            plain = {item.index: self._run_plain([item])[0] for item in items}
        self._drop_prefix()
        self.tokens_forwarded = self.head_rows = 0
        worst = max(abs(got[i].logprob - plain[i].logprob) for got in (tree, via_cache) for i in plain)
        if called and worst <= _CHECK_TOL[self.dtype]:
            return
        why = f"gives different numbers with the tree attention (|Δ|={worst:.3g})" if called else (
            "ignores the tree attention")
        model_class = type(self.model).__name__
        self.close()
        raise CfbenchError(
            f"hf backend: {model_class} {why}: "
            "pass the backend option scoring_path=plain (one plain forward per distinct input; slower, same numbers)"
        )


def _run_units_small(be: HFBackend, trie: Trie) -> list[tuple[int, LoglikResult]]:
    """The tree path with ``dense_limit`` 1, so chain and dense units with paths are all exercised."""
    saved = be.dense_limit
    be.dense_limit = 1
    try:
        return be._run_trie(trie)
    finally:
        be.dense_limit = saved
