"""bf16 against fp32 on this CPU: is `--precision bf16` a speed lever here, or emulated and slower?

    python benchmarks/bf16_cpu.py                                   # the kernels torch picks
    ATEN_CPU_CAPABILITY=avx2 ONEDNN_MAX_CPU_ISA=AVX2 python benchmarks/bf16_cpu.py   # as a CPU without AVX-512

Times a ViT-L/14@336-sized linear layer (the 1370 tokens of a 518 px image, 1024 -> 4096, the MLP's first
layer: linear layers are ~70% of the model step) and one whole random ViT-L transformer block, in fp32 and
under bf16 autocast, and prints GFLOP/s (linear) and ms per image (block) with the CPU features in use.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

TOKENS, WIDTH, HIDDEN = 1370, 1024, 4096  # (518 / 14)^2 + 1 tokens, ViT-L/14 width and MLP width


def seconds_per_call(function, repeats: int) -> float:
    for _ in range(2):
        function()
    start = time.perf_counter()
    for _ in range(repeats):
        function()
    return (time.perf_counter() - start) / repeats


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: the CPUs available)")
    parser.add_argument("--repeats", type=int, default=10, help="timed calls per row")
    parser.add_argument("--json", metavar="FILE", help="also write the rows as JSON")
    args = parser.parse_args(argv)

    import torch
    from open_clip.transformer import ResidualAttentionBlock

    from engine.devices import available_cpus, cpu_description

    torch.set_num_threads(args.threads or available_cpus())
    torch.manual_seed(0)
    linear = torch.nn.Linear(WIDTH, HIDDEN).eval()
    block = ResidualAttentionBlock(WIDTH, 16, 4.0).eval()
    tokens = torch.randn(1, TOKENS, WIDTH)
    rows = {}
    for precision in ("fp32", "bf16"):
        enabled = precision == "bf16"
        with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=enabled):
            linear_s = seconds_per_call(lambda: linear(tokens[0]), args.repeats)
            block_s = seconds_per_call(lambda: block(tokens), max(2, args.repeats // 3))
        rows[precision] = {"linear_gflops": 2 * TOKENS * WIDTH * HIDDEN / linear_s / 1e9, "block_ms": block_s * 1e3}
    report = {"cpu": cpu_description(), "threads": torch.get_num_threads(), "torch": torch.__version__, "rows": rows,
              "bf16_speedup_linear": rows["bf16"]["linear_gflops"] / rows["fp32"]["linear_gflops"],
              "bf16_speedup_block": rows["fp32"]["block_ms"] / rows["bf16"]["block_ms"]}
    print(report["cpu"] + f", {report['threads']} threads, torch {torch.__version__}")
    print(f"{'':6}{'linear GFLOP/s':>16}{'ViT-L block ms':>16}")
    for precision, row in rows.items():
        print(f"{precision:6}{row['linear_gflops']:16.1f}{row['block_ms']:16.1f}")
    print(f"bf16 / fp32: linear {report['bf16_speedup_linear']:.2f}x, block {report['bf16_speedup_block']:.2f}x "
          "(below 1: bf16 is slower here)")
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2) + "\n")
    return report


if __name__ == "__main__":
    main()
