"""The arithmetic of one block at the paper's GPU setting, counted on the CPU: matrix-product FLOPs
(torch.utils.flop_counter) of a train block (forward + cross-entropy + backward) and of an inference
pass (T events + scores + top-10), B=1024, T=100, I=10,000, paper sizes, every M and network.
Counted at B=8 and scaled to B=1024 (every product is linear in B). Adam's and the element-wise
ops' FLOPs are left out (a few percent). Saves bench/results/block_flops.json.

    PYTHONPATH=. .venv/bin/python bench/block_flops.py
"""
import json
import sys
from pathlib import Path

import torch

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
torch.set_num_threads(1)
from torch.utils.flop_counter import FlopCounterMode
from bench.block_speed import BlockWork
from bench.common import DIMS
from model.config import ModelConfig
out = []
B = 8
for M in (2, 4, 6, 9, 12):
    for model, rule in (("srmn", "every"), ("cmnrec", "pec"), ("cmnrec", "tsc")):
        cfg = ModelConfig(num_items=10_001, model=model, rule=rule, block_len=100, slots=M, **DIMS["paper"])
        work = BlockWork(cfg, B, torch.device("cpu"), "fp32", "off", 0)
        with FlopCounterMode(display=False) as c:
            work.train_block()
        train = c.get_total_flops()
        with FlopCounterMode(display=False) as c:
            work.inference()
        inf = c.get_total_flops()
        out.append({"slots": M, "model": model, "rule": cfg.rule, "batch_counted": B,
                    "train_tflop_B1024": train * 1024 / B / 1e12, "inference_gflop_B1024": inf * 1024 / B / 1e9})
        print(out[-1], flush=True)
json.dump({"note": "matmul FLOPs (torch.utils.flop_counter) of one block at B=1024, T=100, I=10,000, paper sizes; counted at B=8 and scaled (linear in B)", "results": out}, open(Path(__file__).resolve().parent / "results" / "block_flops.json", "w"), indent=2)
