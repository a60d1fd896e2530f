"""fedpurel_lite.core in an ordinary PyTorch loop: purified local steps, FedAvg of two clients, a residual head."""
import copy

import torch
import torch.nn.functional as F

from fedpurel_lite.core import ResidualHead, aligned_kl, fedavg, purified_gradients, residual_loss

torch.manual_seed(0)
teacher = torch.nn.Linear(16, 5).requires_grad_(False)  # a frozen "zero-shot" model
model = torch.nn.Sequential(torch.nn.Linear(16, 32), torch.nn.ReLU(), torch.nn.Linear(32, 5))
clients = [(torch.randn(64, 16), torch.randint(0, 5, (64,))) for _ in range(2)]

for _ in range(3):  # stage 1, 3 rounds: each client trains a copy, purified against the teacher; FedAvg
    states = []
    for x, y in clients:
        local = copy.deepcopy(model)
        opt = torch.optim.SGD(local.parameters(), lr=0.1)
        for _ in range(5):
            logits = local(x)
            tkl, _, _ = aligned_kl(logits, teacher(x))  # temperature-aligned KL to the teacher
            grads = purified_gradients(F.cross_entropy(logits, y), tkl, list(local.parameters()))
            for p, g in zip(local.parameters(), grads, strict=True):
                p.grad = g  # CE gradient minus its component that conflicts with the KL's
            opt.step()
        states.append(local.state_dict())
    model.load_state_dict(fedavg(states, weights=[len(y) for _, y in clients]))

x, y = clients[0]  # stage 2: client 0's zero-initialised residual on top of the frozen global model
head, global_logits = ResidualHead(16, 5), model(x).detach()
opt = torch.optim.SGD(head.parameters(), lr=0.5)
for _ in range(50):
    opt.zero_grad()
    residual_loss(global_logits, head(x), y, alpha=0.9).backward()
    opt.step()
print(f"client 0 accuracy: global {(global_logits.argmax(1) == y).float().mean():.3f}, "  # personal: l_G + l_L
      f"personal {((global_logits + head(x)).argmax(1) == y).float().mean():.3f}")
