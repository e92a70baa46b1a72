"""Rebuild the README screenshots (docs/img/report.png, docs/img/leaderboard.png) from a real store.

    OMP_NUM_THREADS=1 HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 python scripts/screenshots.py [--work DIR]

Every number in the pictures is measured, not drawn. The base is ``--model``: ``smollm2-135m`` (the
built-in SmolLM2-135M-Instruct, the default) or ``tiny`` (a random 2-layer llama from
cfbench.models.tiny, seconds instead of minutes). The two "tuned" runs are copies of the base with
gaussian noise added to every weight matrix, σ = 0.05 and 0.30 times that matrix's own standard
deviation, named ``noise-0.05`` / ``noise-0.30``: a stand-in for forgetting whose size is known, not a
fine-tune. All three are scored by the real engine (``cfbench eval``) on the offline suite with
``--limit`` documents per task; ``cfbench compare --format html`` and ``cfbench leaderboard --format
html`` write the pages, and headless chromium (playwright driving the system's ``chromium``)
photographs them at 1400 px.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
NOISE = {"noise-0.05": 0.05, "noise-0.30": 0.30}


def _cfbench(*args: str) -> None:
    env = {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    subprocess.run([sys.executable, "-m", "cfbench", *args], check=True, env=env, cwd=ROOT)


def _checkpoints(work: Path, model: str) -> dict[str, Path]:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if model == "tiny":
        from cfbench.models.tiny import make_tiny_llama

        base = make_tiny_llama(work / "base", seed=0)
    else:
        from cfbench.models.checkpoint import resolve_checkpoint

        base = Path(resolve_checkpoint(model).path)
    out = {"base": base}
    for i, (name, sigma) in enumerate(NOISE.items()):
        net = AutoModelForCausalLM.from_pretrained(base, torch_dtype=torch.float32)
        gen = torch.Generator().manual_seed(100 + i)
        with torch.no_grad():
            for p in net.parameters():
                if p.dim() == 2:
                    p.add_(sigma * float(p.std()) * torch.randn(p.shape, generator=gen))
        net.save_pretrained(work / name)
        AutoTokenizer.from_pretrained(base).save_pretrained(work / name)
        out[name] = work / name
    return out


def _shoot(page: Path, png: Path, width: int = 1400, max_height: int = 1800) -> None:
    from playwright.sync_api import sync_playwright

    exe = shutil.which("chromium") or shutil.which("chromium-browser")
    if exe is None:
        sys.exit("error: no chromium binary: apt-get install -y chromium")
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=exe, args=["--no-sandbox"])
        tab = browser.new_page(viewport={"width": width, "height": 900})
        tab.goto(page.resolve().as_uri())
        height = min(max_height, tab.evaluate("document.documentElement.scrollHeight"))
        tab.set_viewport_size({"width": width, "height": height})
        tab.screenshot(path=str(png), type="png")
        browser.close()
    from PIL import Image

    # A page is a few flat colours: a 256-colour palette keeps text sharp at a third of the size.
    with Image.open(png) as img:
        img.convert("RGB").quantize(colors=256, method=Image.Quantize.MEDIANCUT).save(png, optimize=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--work", type=Path, default=None, help="Scratch folder (default: a temporary one).")
    ap.add_argument("--model", default="smollm2-135m", help="Base: smollm2-135m (built-in) or tiny.")
    ap.add_argument("--limit", type=int, default=10, help="Documents scored per task (per subject for MMLU).")
    ap.add_argument("--out", type=Path, default=ROOT / "docs" / "img")
    args = ap.parse_args()
    work = args.work or Path(tempfile.mkdtemp(prefix="cfbench-shots-"))
    work.mkdir(parents=True, exist_ok=True)
    store = work / "results"
    ckpts = _checkpoints(work, args.model)
    for name, path in ckpts.items():
        spec = args.model if name == "base" and args.model != "tiny" else str(path)  # the built-in by its name
        _cfbench("eval", spec, "--suite", "offline", "--limit", str(args.limit), "--results", str(store),
                 "--name", name)  # fmt: skip
    report, board = work / "report.html", work / "leaderboard.html"
    _cfbench("compare", *(f"run:{n}" for n in ckpts), "--suite", "offline", "--results", str(store),
             "--format", "html", "--out", str(report))  # fmt: skip
    _cfbench("leaderboard", "--results", str(store), "--suite", "offline", "--format", "html", "--out", str(board))
    args.out.mkdir(parents=True, exist_ok=True)
    for page, name in ((report, "report.png"), (board, "leaderboard.png")):
        _shoot(page, args.out / name)
        print(f"wrote {args.out / name} ({(args.out / name).stat().st_size // 1024} KB) from {page}")


if __name__ == "__main__":
    main()
