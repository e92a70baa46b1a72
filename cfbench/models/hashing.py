"""Content hashes of checkpoints, cheap to recompute.

A result is only reusable if it was computed with the same weights and tokenizer, so every
resolved checkpoint carries a sha256 over those files. Hashing a multi-GB folder on every run would
be slow, so per-file digests are cached in a JSON file keyed by absolute path, size, mtime, ctime and inode: a
re-resolve only stats the files.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import tempfile
from pathlib import Path
from typing import Any

from cfbench.errors import CfbenchError
from cfbench.fsutil import default_cache_dir as default_cache_dir  # moved to the core: the writers ledger uses it

_CHUNK = 1 << 22

# Files whose bytes change the numbers: weights, tokenizer, and the architecture config.
_WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".gguf")
# Trainer side files that sit next to weights but do not change the model (and can be huge).
_NOT_WEIGHTS = re.compile(r"^(optimizer|scheduler|scaler|rng_state|training_args)")
_TOKENIZER_FILES = re.compile(
    r"^(tokenizer.*|vocab\..*|merges\.txt|special_tokens_map\.json|added_tokens\.json|.*\.model|spiece.*)$"
)
# Config keys that record who wrote the file rather than what the model is.
_VOLATILE_CONFIG_KEYS = ("transformers_version", "_name_or_path", "_commit_hash")


class HashCache:
    """sha256 per file, remembered by (size, mtime, ctime, inode) in one JSON file; safe to lose or share."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._entries: dict[str, dict[str, object]] | None = None
        self._dirty = False

    def _load(self) -> dict[str, dict[str, object]]:
        if self._entries is None:
            try:
                self._entries = json.loads(self.path.read_text())
            except (OSError, ValueError):
                self._entries = {}
        return self._entries

    def file_sha256(self, path: Path) -> str:
        """Digest of ``path``, recomputed when its size, mtime, ctime or inode changed.

        Size and mtime alone were fooled by weights swapped in place at the same size with the mtime
        restored (``touch -r``): the old checkpoint's hash, its cached items and its "finite weights"
        verdict were reused for the new weights. ctime cannot be set back by a user, and a file
        replaced by another (``cp``/``mv`` over it) has a new inode.
        """
        real = path.resolve()
        st = real.stat()
        key = str(real)
        entry = self._load().get(key)
        fresh = {"size": st.st_size, "mtime_ns": st.st_mtime_ns, "ctime_ns": st.st_ctime_ns, "ino": st.st_ino}
        if entry and all(entry.get(k) == v for k, v in fresh.items()):
            return str(entry["sha256"])
        digest = hashlib.sha256()
        with open(real, "rb") as fh:
            while chunk := fh.read(_CHUNK):
                digest.update(chunk)
        hexd = digest.hexdigest()
        self._load()[key] = {**fresh, "sha256": hexd}
        self._dirty = True
        return hexd

    def save(self) -> None:
        """Write the cache atomically (merge with what another process may have written meanwhile)."""
        if not self._dirty or self._entries is None:
            return
        try:
            on_disk = json.loads(self.path.read_text())
        except (OSError, ValueError):
            on_disk = {}
        on_disk.update(self._entries)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=self.path.parent, prefix=".hashes-", suffix=".json")
        with os.fdopen(fd, "w") as fh:
            json.dump(on_disk, fh, indent=0, sort_keys=True)
        os.replace(tmp, self.path)
        self._dirty = False


def hashed_files(folder: Path) -> list[Path]:
    """The files of an HF folder that determine its outputs (weights, tokenizer, config)."""
    out = []
    for p in sorted(folder.iterdir()):
        if not p.is_file():
            continue
        name = p.name
        if (name.endswith(_WEIGHT_SUFFIXES) and not _NOT_WEIGHTS.match(name)) or _TOKENIZER_FILES.match(name):
            out.append(p)
    return out


def _config_digest(config_path: Path) -> str:
    """Digest of config.json without the keys that only record provenance."""
    try:
        cfg = json.loads(config_path.read_text())
    except (OSError, ValueError):
        return hashlib.sha256(config_path.read_bytes()).hexdigest()
    for key in _VOLATILE_CONFIG_KEYS:
        cfg.pop(key, None)
    return hashlib.sha256(json.dumps(cfg, sort_keys=True).encode()).hexdigest()


def folder_content_hash(folder: Path, cache: HashCache) -> str:
    """sha256 over (name, digest) of the weight and tokenizer files plus the normalised config."""
    lines = [f"{p.name}\t{cache.file_sha256(p)}" for p in hashed_files(folder)]
    config = folder / "config.json"
    if config.is_file():
        lines.append(f"config.json\t{_config_digest(config)}")
    cache.save()
    return hashlib.sha256("\n".join(lines).encode()).hexdigest()


def _canonical_tokenizer_json(path: Path) -> bytes:
    """What in tokenizer.json defines token ids: the model (vocab, merges), added tokens, pre/post steps.

    Runtime state that ``save_pretrained`` writes (``truncation``, ``padding``) and JSON formatting
    are left out, so a fine-tune that re-saved the same tokenizer hashes the same as its base.
    """
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return path.read_bytes()
    for key in ("truncation", "padding", "version"):
        data.pop(key, None)
    return json.dumps(data, sort_keys=True, ensure_ascii=False).encode()


def tokenizer_hash(folder: str | Path) -> str | None:
    """sha256 over the files that define a folder's vocabulary; ``None`` if it has none.

    With a ``tokenizer.json`` (fast tokenizers) only its canonical content counts; otherwise the
    bytes of the vocab / merges / sentencepiece files. ``tokenizer_config.json`` is left out on
    purpose: it records chat templates and writer versions that change without changing ids.
    Two checkpoints with different hashes do not map text to the same token ids, so their
    weights must not be interpolated and their scores are not strictly comparable.
    """
    folder = Path(folder)
    if not folder.is_dir():
        return None
    digest = hashlib.sha256()
    fast = folder / "tokenizer.json"
    if fast.is_file():
        digest.update(b"tokenizer.json\0" + _canonical_tokenizer_json(fast))
        return digest.hexdigest()
    files = [
        p
        for p in sorted(folder.iterdir())
        if p.is_file() and _TOKENIZER_FILES.match(p.name) and not p.name.startswith("tokenizer_config")
        and p.name not in ("special_tokens_map.json",)
    ]
    if not files:
        return None
    for p in files:
        digest.update(p.name.encode() + b"\0" + p.read_bytes() + b"\0")
    return digest.hexdigest()


_BIG = 1e30  # |w| beyond this is not a trained weight, even if finite


def load_pickled_weights(path: Path) -> Any:
    """``torch.load`` of a ``.bin`` / ``.pt`` with ``weights_only=True`` (never anything else), one line on failure.

    Memory-mapped when the file is in torch's zip format; PyTorch's legacy format (before 1.6), which
    transformers still loads, cannot be memory-mapped and is read whole. A pickle that asks for more
    than tensors (code: a malicious file) is refused by ``weights_only`` and named here, not traced back.
    """
    import pickle
    import zipfile

    import torch

    try:
        return torch.load(str(path), map_location="cpu", weights_only=True, mmap=zipfile.is_zipfile(path))
    except pickle.UnpicklingError as exc:
        lines = [x.strip() for x in str(exc).splitlines() if x.strip()]
        why = next((x for x in lines if "Unsupported global" in x or "GLOBAL" in x), lines[0] if lines else "")
        raise CfbenchError(
            f"{path} is a pickle that holds more than tensors, which cfbench refuses to load since it could run "
            f"code ({why[:100]}): get the weights as safetensors from a source you trust"
        ) from None
    except (RuntimeError, EOFError, OSError, ValueError) as exc:
        raise CfbenchError(
            f"{path} is not a readable PyTorch weights file ({str(exc).splitlines()[0][:120]}): re-save or "
            "re-download the checkpoint (model.save_pretrained writes safetensors)"
        ) from None


def first_bad_tensor(folder: Path) -> str | None:
    """``"NAME (nan)"`` for the first weight tensor with a NaN / inf / absurd (>1e30) value, else None.

    Reads safetensors shards tensor by tensor (memory stays at one tensor); ``.bin`` / ``.pt``
    state dicts are memory-mapped with ``weights_only``.
    """
    import torch

    def verdict(name: str, t: torch.Tensor) -> str | None:
        if not t.is_floating_point() or t.numel() == 0:
            return None
        t = t.float()
        if torch.isnan(t).any():
            return f"{name} (nan)"
        if torch.isinf(t).any():
            return f"{name} (inf)"
        big = float(t.abs().max())
        return f"{name} (|w| = {big:.3g})" if big > _BIG else None

    for p in sorted(folder.iterdir()):
        if not p.is_file() or _NOT_WEIGHTS.match(p.name):
            continue
        if p.name.endswith(".safetensors"):
            from safetensors import safe_open

            with safe_open(str(p), framework="pt") as fh:
                for name in fh.keys():  # noqa: SIM118 - safe_open is not a dict
                    if (bad := verdict(name, fh.get_tensor(name))) is not None:
                        return bad
        elif p.name.endswith((".bin", ".pt", ".pth")):
            state = load_pickled_weights(p)
            for name, t in (state.items() if isinstance(state, dict) else []):
                if isinstance(t, torch.Tensor) and (bad := verdict(name, t)) is not None:
                    return bad
    return None


def require_finite_weights(
    folder: Path, content_hash: str, name: str, cache_dir: Path | None = None,
    consequence: str = "its scores would be meaningless",
) -> None:  # fmt: skip
    """Refuse to score (or merge: ``consequence``) a checkpoint whose weights hold NaN / inf (a diverged fine-tune).

    Scanning the weights costs about a second per GB, so the verdict is remembered per content
    hash in ``<cache>/weights_checked.json``: a rerun only looks it up.
    """
    store = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    path = store / "weights_checked.json"
    try:
        known = json.loads(path.read_text())
    except (OSError, ValueError):
        known = {}
    if content_hash in known:
        bad = known[content_hash]
    else:
        bad = first_bad_tensor(Path(folder))
        try:
            on_disk = json.loads(path.read_text())
        except (OSError, ValueError):
            on_disk = {}
        on_disk[content_hash] = bad
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".weights-", suffix=".json")
        with os.fdopen(fd, "w") as fh:
            json.dump(on_disk, fh, indent=0, sort_keys=True)
        os.replace(tmp, path)
    if bad:
        raise CfbenchError(
            f"checkpoint {name} has non-finite or exploded weights (tensor {bad}), so {consequence}: "
            "re-train it with a lower --lr, or use an earlier checkpoint"
        )
