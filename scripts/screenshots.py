"""Rebuild the README screenshots (docs/img/report.png, docs/img/leaderboard.png) from a real store.

    OMP_NUM_THREADS=1 HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 python scripts/screenshots.py [--work DIR]

Every number in the pictures is measured, not drawn: a tiny random llama (cfbench.models.tiny, 2
layers, seed 0) is the "base", two copies of it with gaussian noise added to every weight matrix
(σ = 0.03 and 0.10) are the "tuned" runs, and all three are scored by the real engine on the offline
suite with ``--limit`` documents per task. ``cfbench compare --format html`` and ``cfbench
leaderboard --format html`` write the pages, and headless chromium (playwright, the system's
``chromium`` binary) photographs them at 1400 px. About a minute on a 2-core CPU.

The tiny model is random, so its scores sit near chance: the pictures show what the pages look like,
not what any real fine-tune forgets.
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
NOISE = {"noise-0.03": 0.03, "noise-0.10": 0.10}


def _cfbench(*args: str) -> None:
    env = {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    subprocess.run([sys.executable, "-m", "cfbench", *args], check=True, env=env, cwd=ROOT)


def _checkpoints(work: Path) -> dict[str, Path]:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from cfbench.models.tiny import make_tiny_llama

    base = make_tiny_llama(work / "base", seed=0)
    out = {"base": base}
    for i, (name, sigma) in enumerate(NOISE.items()):
        model = AutoModelForCausalLM.from_pretrained(base)
        gen = torch.Generator().manual_seed(100 + i)
        with torch.no_grad():
            for p in model.parameters():
                if p.dim() == 2:
                    p.add_(sigma * torch.randn(p.shape, generator=gen))
        model.save_pretrained(work / name)
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


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--work", type=Path, default=None, help="Scratch folder (default: a temporary one).")
    ap.add_argument("--limit", type=int, default=30, help="Documents scored per task.")
    ap.add_argument("--out", type=Path, default=ROOT / "docs" / "img")
    args = ap.parse_args()
    work = args.work or Path(tempfile.mkdtemp(prefix="cfbench-shots-"))
    work.mkdir(parents=True, exist_ok=True)
    store = work / "results"
    ckpts = _checkpoints(work)
    for name, path in ckpts.items():
        _cfbench("eval", str(path), "--suite", "offline", "--limit", str(args.limit), "--results", str(store),
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
