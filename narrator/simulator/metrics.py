"""The simulated replica's ``/metrics`` text, with vLLM 0.32's names and labels (pure).

Published: ``vllm:num_requests_running`` (requests holding a slot), ``vllm:num_requests_waiting``
(queued for one), ``vllm:num_requests_waiting_by_reason{reason="capacity"|"deferred"}`` (all
of the simulator's waiting is for capacity), ``vllm:kv_cache_usage_perc`` (the busy share of
the slots, a stand-in: the simulator has no KV cache) and ``vllm:cache_config_info{...} 1.0``,
each with ``# HELP``/``# TYPE`` lines and the labels ``engine="0",model_name="..."`` vLLM
puts on them. Like vLLM, no figure says how many requests the replica can run at once;
``simvlm_max_num_seqs`` (the slot count) is added only when ``publish_capacity`` is set.
"""

from __future__ import annotations

CACHE_CONFIG_LABELS = (
    ("block_size", "16"),
    ("cache_dtype", "auto"),
    ("enable_prefix_caching", "True"),
    ("gpu_memory_utilization", "0.9"),
    ("is_attention_free", "False"),
    ("num_cpu_blocks", "None"),
    ("num_gpu_blocks", "4096"),
    ("sliding_window", "None"),
)


def _gauge(name: str, help_text: str, samples: list[tuple[str, float]]) -> list[str]:
    lines = [f"# HELP {name} {help_text}", f"# TYPE {name} gauge"]
    lines += [f"{name}{{{labels}}} {float(value)}" for labels, value in samples]
    return lines


def metrics_text(
    model: str, *, running: int, waiting: int, slots: int, publish_capacity: bool
) -> str:
    """Prometheus text exposition of one replica's state."""
    base = f'engine="0",model_name="{model}"'
    usage = min(1.0, running / slots) if slots > 0 else 0.0
    cache_labels = ",".join(f'{k}="{v}"' for k, v in CACHE_CONFIG_LABELS)
    lines = [
        *_gauge(
            "vllm:num_requests_running",
            "Number of requests in model execution batches.",
            [(base, running)],
        ),
        *_gauge(
            "vllm:num_requests_waiting",
            "Number of requests waiting to be processed.",
            [(base, waiting)],
        ),
        *_gauge(
            "vllm:num_requests_waiting_by_reason",
            "Number of waiting requests by reason.",
            [(f'{base},reason="capacity"', waiting), (f'{base},reason="deferred"', 0)],
        ),
        *_gauge(
            "vllm:kv_cache_usage_perc",
            "KV-cache usage. 1 means 100 percent usage.",
            [(base, usage)],
        ),
        *_gauge(
            "vllm:cache_config_info",
            "Information of the LLMEngine CacheConfig",
            [(f'{cache_labels},engine="0"', 1.0)],
        ),
    ]
    if publish_capacity:
        lines += [
            "# HELP simvlm_max_num_seqs Slots of the simulated replica (not a vLLM metric).",
            "# TYPE simvlm_max_num_seqs gauge",
            f"simvlm_max_num_seqs {slots}",
        ]
    return "\n".join(lines) + "\n"
