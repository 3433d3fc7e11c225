"""Shared test helpers: the devices to run on and random inputs in each op's layout."""
import torch

import irda_ext


def devices():
    """CPU always; CUDA only where a GPU and the CUDA kernels exist."""
    out = ["cpu"]
    if torch.cuda.is_available() and torch._C._dispatch_has_kernel_for_dispatch_key("irda_ext::bin_moments", "CUDA"):
        out.append("cuda")
    return out


def surrogate_inputs(n, K, B, device="cpu", dtype=torch.float64, requires_grad=False, seed=0, dead_bins=(),
                     var_scale=1.0, noise_var=1.3):
    """Positional inputs of ``irda_surrogate`` with realistic values: targets in the bin
    range, eta columns summing to one, some bins without prior (``dead_bins``)."""
    g = torch.Generator().manual_seed(seed)
    centers = torch.arange(B, dtype=dtype) + 0.5
    lp = torch.log(torch.rand(B, generator=g, dtype=dtype) + 0.05)
    lp = lp - torch.logsumexp(lp, 0)
    live = [b for b in range(B) if b not in dead_bins]
    for b in dead_bins:
        lp[b] = -torch.inf
    bin_index = torch.tensor(live)[torch.randint(0, len(live), (n,), generator=g)]
    target = bin_index.to(dtype) + torch.rand(n, generator=g, dtype=dtype)
    pred = target + torch.randn(n, generator=g, dtype=dtype) * 2
    eta = torch.rand(K, B, generator=g, dtype=dtype) + 0.1
    eta = eta / eta.sum(0)
    shift = torch.randn(n, generator=g, dtype=dtype)
    var = torch.rand(n, generator=g, dtype=dtype) * var_scale
    nv = torch.tensor(noise_var, dtype=dtype)
    tensors = [pred, target, bin_index, centers, eta, lp, shift, var, nv]
    tensors = [t.to(device) for t in tensors]
    if requires_grad:
        for j in (0, 6, 7, 8):
            tensors[j].requires_grad_()
    pred, target, bin_index, centers, eta, lp, shift, var, nv = tensors
    return pred, target, bin_index, centers, eta, lp, shift, var, 0.5, 0.75, nv


def features(n, D, B, device="cpu", dtype=torch.float64, seed=0, offset=0.0, bins=None):
    g = torch.Generator().manual_seed(seed)
    z = (torch.randn(n, D, generator=g, dtype=torch.float64) + offset).to(dtype)
    b = torch.randint(0, B, (n,), generator=g) if bins is None else torch.as_tensor(bins)
    return z.to(device), b.to(device)


__all__ = ["devices", "surrogate_inputs", "features", "irda_ext"]
