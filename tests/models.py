"""Small deterministic models shared by the test suite."""
from __future__ import annotations

import torch
from torch import nn


class MLP(nn.Module):
    def __init__(self, n_in: int = 6, n_out: int = 3):
        super().__init__()
        self.fc1 = nn.Linear(n_in, 10)
        self.relu = nn.ReLU()
        self.fc2 = nn.Linear(10, 8)
        self.tanh = nn.Tanh()
        self.fc3 = nn.Linear(8, n_out)

    def forward(self, x):
        return self.fc3(self.tanh(self.fc2(self.relu(self.fc1(x)))))


class CNN(nn.Module):
    """conv -> maxpool -> conv -> relu -> linear (no two hooked nonlinearities adjacent)."""

    def __init__(self, n_out: int = 3):
        super().__init__()
        self.conv1 = nn.Conv2d(1, 4, 3)
        self.pool = nn.MaxPool2d(2)
        self.conv2 = nn.Conv2d(4, 4, 3, padding=1)
        self.relu = nn.ReLU()
        self.fc = nn.Linear(4 * 3 * 3, n_out)

    def forward(self, x):
        return self.fc(self.relu(self.conv2(self.pool(self.conv1(x)))).flatten(1))


class TwoInput(nn.Module):
    """f(x1, x2, scale): two tensor inputs plus a per-example additional forward argument."""

    def __init__(self, n_out: int = 3):
        super().__init__()
        self.fc1 = nn.Linear(7, 9)
        self.relu = nn.ReLU()
        self.fc2 = nn.Linear(9, n_out)

    def forward(self, x1, x2, scale):
        return self.fc2(self.relu(self.fc1(torch.cat([x1, x2], dim=1))) * scale)


def make(name: str, dtype=torch.float64, device="cpu", seed: int = 0):
    """(model, inputs tuple, additional_forward_args or None) for a named test model."""
    g = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    if name == "mlp":
        model, inputs, args = MLP(), (torch.randn(4, 6, generator=g),), None
    elif name == "cnn":
        model, inputs, args = CNN(), (torch.randn(3, 1, 8, 8, generator=g),), None
    elif name == "two_input":
        model = TwoInput()
        inputs = (torch.randn(4, 3, generator=g), torch.randn(4, 4, generator=g))
        args = (torch.rand(4, 1, generator=g) + 0.5,)
    else:
        raise KeyError(name)
    model = model.to(dtype=dtype, device=device).eval()
    inputs = tuple(x.to(dtype=dtype, device=device) for x in inputs)
    if args is not None:
        args = tuple(a.to(dtype=dtype, device=device) for a in args)
    return model, inputs, args


def hook_state(model: nn.Module):
    """Everything a call could leave on a model: hooks of every kind and instance attributes."""
    state = []
    for name, m in model.named_modules():
        state.append((
            name,
            tuple(len(getattr(m, d)) for d in (
                "_forward_hooks", "_forward_pre_hooks", "_backward_hooks", "_backward_pre_hooks",
                "_forward_hooks_with_kwargs", "_forward_pre_hooks_with_kwargs",
            )),
            tuple(sorted(k for k in vars(m) if not k.startswith("_"))),
            tuple(sorted(m._buffers)), tuple(sorted(m._parameters)),
        ))
    return state
