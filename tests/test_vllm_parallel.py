"""vLLM parallel options, checked without starting an engine: what reaches the cache key, what is refused."""

from __future__ import annotations

import pytest

from cfbench.errors import CfbenchError

pytest.importorskip("vllm")


def _key(**options):
    from cfbench.backends.vllm import VLLMBackend

    return VLLMBackend.key_settings("unused", {"dtype": "bfloat16", **options})


def test_tensor_parallel_size_is_in_the_key_and_validated() -> None:
    assert _key()["tensor_parallel_size"] == 1
    assert _key(tensor_parallel_size=2)["tensor_parallel_size"] == 2
    assert _key(tensor_parallel_size=2) != _key(tensor_parallel_size=1)
    for bad in (0, -1, "two", 1.5, True):
        with pytest.raises(CfbenchError, match=r"tensor_parallel_size=.* must be a whole number >= 1"):
            _key(tensor_parallel_size=bad)


def test_data_parallel_is_cfbench_workers_not_an_engine_option() -> None:
    assert _key(data_parallel_size=1) == _key()  # no change, so not in the cache key
    with pytest.raises(CfbenchError, match="pass --workers 2"):
        _key(data_parallel_size=2)
    with pytest.raises(CfbenchError, match="data_parallel_size=0 must be"):
        _key(data_parallel_size=0)


def test_executor_backend_is_number_neutral() -> None:
    assert _key(distributed_executor_backend="ray") == _key(distributed_executor_backend="mp") == _key()


def test_model_args_reach_the_plan_and_the_worker_check() -> None:
    """``--model-args tensor_parallel_size=2`` → the key; a worker device group must hold 2 GPUs."""
    from cfbench.cli.common import parse_model_args
    from cfbench.scale.workers import check_devices, gpus_per_engine

    opts = parse_model_args("tensor_parallel_size=2,distributed_executor_backend=mp", "bfloat16")
    assert _key(**{k: v for k, v in opts.items() if k != "dtype"})["tensor_parallel_size"] == 2
    assert gpus_per_engine("vllm", opts) == 2 and gpus_per_engine("hf", opts) == 1
    check_devices(["cuda:0+cuda:1", "cuda:2+cuda:3"], "vllm", opts)
    with pytest.raises(CfbenchError, match=r"e\.g\. --devices cuda:0\+cuda:1,cuda:2\+cuda:3"):
        check_devices(["cuda:0", "cuda:1"], "vllm", opts)
