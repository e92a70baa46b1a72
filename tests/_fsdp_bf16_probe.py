"""torchrun worker for tests/test_fsdp_bf16.py: one FSDP2 bf16 SAM step, with the dtypes and ε inspected.

Run as ``torchrun --nproc-per-node 2 tests/_fsdp_bf16_probe.py MODEL OUT_JSON``. Rank 0 writes what it saw:
the dtype of the sharded (master) parameters, of SAM's restore buffers and of the weight the forward
used; the global L2 norm of ε = (w + ε) - w taken on the float32 shards (must be ρ); the fraction of ε
that a bfloat16 copy of the weights would lose, and the fraction of perturbed elements whose bfloat16
value ε does not change at all; and whether restore put the exact weights back.
"""

from __future__ import annotations

import json
import sys

import torch


def main(model_dir: str, out: str) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from cfbench.train import distributed
    from cfbench.train.data import encode_example, load_data
    from cfbench.train.sam import _local

    rho = 0.05
    ctx = distributed.context_from_env("cpu")
    assert ctx is not None, "launch with torchrun --nproc-per-node 2"
    tok = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    model = distributed.shard_model(model, ctx, bf16=True, activation_checkpointing=False)
    trainer = distributed.make_trainer(model, "sam", lr=1e-3, rho=rho, bf16=False)
    opt = trainer.optimizer
    seen: dict[str, object] = {}
    probe = distributed.decoder_layers(model)[0].self_attn.q_proj

    def record(module: torch.nn.Module, _: object) -> None:  # the weight FSDP all-gathered for this forward
        seen.setdefault("forward_weight_dtype", str(module.weight.dtype))

    probe.register_forward_pre_hook(record)

    first, restore = opt.first_step, opt.restore

    def first_step(zero_grad: bool = False) -> None:
        params = [p for g in opt.param_groups for p in g["params"] if p.grad is not None]
        first(zero_grad=zero_grad)
        ws = [_local(p).detach() for p in params]
        bufs = [opt.state[p]["w_old"] for p in params]
        eps = [w - b for w, b in zip(ws, bufs, strict=True)]
        sq = torch.stack([e.double().square().sum() for e in eps]).sum()
        kept_num = torch.stack([((w.bfloat16().float() - b.bfloat16().float()) - e).double().square().sum()
                                for w, b, e in zip(ws, bufs, eps, strict=True)]).sum()  # fmt: skip
        moved = [e != 0 for e in eps]  # embedding rows of tokens not in the batch get no ε at all
        unchanged = sum(
            int(((w.bfloat16() == b.bfloat16()) & m).sum()) for w, b, m in zip(ws, bufs, moved, strict=True)
        )
        total = sum(int(m.sum()) for m in moved)
        stats = torch.stack([sq, kept_num, torch.tensor(float(unchanged), dtype=torch.float64),
                             torch.tensor(float(total), dtype=torch.float64)])  # fmt: skip
        stats = distributed.all_reduce_sum(stats)
        seen["master_dtypes"] = sorted({str(w.dtype) for w in ws})
        seen["buffer_dtypes"] = sorted({str(b.dtype) for b in bufs})
        seen["eps_norm"] = float(stats[0].sqrt())
        seen["eps_lost_in_bf16_rel"] = float(stats[1].sqrt() / stats[0].sqrt())
        seen["bf16_unchanged_fraction"] = float(stats[2] / stats[3])
        seen["_check"] = (ws, [b.clone() for b in bufs])

    def restore_and_check() -> None:
        restore()
        ws, bufs = seen.pop("_check")  # type: ignore[misc]
        seen["restored_exactly"] = all(torch.equal(w, b) for w, b in zip(ws, bufs, strict=True))

    opt.first_step, opt.restore = first_step, restore_and_check  # type: ignore[method-assign]
    examples = load_data("builtin:arithmetic").examples[:4]
    encoded = [encode_example(tok, e, 64) for e in examples]
    n_target = sum(e.n_target for e in encoded)
    batches = distributed.rank_micro_batches(encoded, 2, tok.pad_token_id or 0, ctx)
    stats = trainer.step(batches, n_target)
    seen["loss"] = stats["loss"]
    seen["rho"] = rho
    if ctx.is_main:
        with open(out, "w", encoding="utf-8") as f:
            json.dump(seen, f)
    distributed.finish()


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
