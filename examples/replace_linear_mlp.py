"""Replace the hidden layers of a small MLP with BTT layers and train it on CPU.

Run: python examples/replace_linear_mlp.py

A teacher network makes a regression task; a student MLP has its hidden
Linear layers swapped for Block Tensor-Train layers with einstruct, trains with
the structure-aware learning rates from `einstruct.param_groups`, and the loss
goes down. Prints the parameter counts before and after.
"""

import torch
from torch import nn

import einstruct

torch.manual_seed(0)
width = 256
student = nn.Sequential(
    nn.Linear(32, width), nn.GELU(),
    nn.Linear(width, width), nn.GELU(),
    nn.Linear(width, width), nn.GELU(),
    nn.Linear(width, 1),
)  # fmt: skip
teacher = nn.Sequential(nn.Linear(32, 64), nn.Tanh(), nn.Linear(64, 1))
x = torch.randn(2048, 32)
with torch.no_grad():
    y = teacher(x)

before = sum(p.numel() for p in student.parameters())
# the two square hidden layers become BTT rank 2 (d = 256: blocks of 16), from the
# structured muP init (the student is untrained: nothing to project)
report = einstruct.replace_linear(student, "structure b = btt(rank = 2)", select=["2", "4"], init="random")
after = sum(p.numel() for p in student.parameters())
print(f"replaced {report.names}: {before:,} -> {after:,} parameters")

opt = torch.optim.Adam(einstruct.param_groups(student, lr=3e-3))
for step in range(201):
    loss = nn.functional.mse_loss(student(x), y)
    opt.zero_grad()
    loss.backward()
    opt.step()
    if step % 50 == 0:
        print(f"step {step:3d}  loss {loss.item():.5f}")
