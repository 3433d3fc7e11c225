"""ISDA's covariance estimator in its one-hot formulation, the baseline of the BinStats benchmark.

Written from the description of ``EstimatorCV.update_CV`` in ISDA (Wang et al.,
"Implicit Semantic Data Augmentation for Deep Networks", NeurIPS 2019): every
feature is expanded to ``[n, C, A]`` with a one-hot mask, class means and the
``[C, A, A]`` batch covariances come from dense ``bmm`` over all classes, and the
running estimate is merged with count weights. Its covariance is the biased
(population) one; ``cov * n / (n - 1)`` is BinStats's unbiased covariance.
"""
import torch


class OneHotEstimator:
    def __init__(self, num_classes: int, dim: int, dtype=torch.float32, device=None):
        self.C, self.A = num_classes, dim
        self.cov = torch.zeros(num_classes, dim, dim, dtype=dtype, device=device)
        self.ave = torch.zeros(num_classes, dim, dtype=dtype, device=device)
        self.amount = torch.zeros(num_classes, dtype=dtype, device=device)

    @torch.no_grad()
    def update(self, features: torch.Tensor, labels: torch.Tensor) -> None:
        n, C, A = features.shape[0], self.C, self.A
        onehot = torch.zeros(n, C, dtype=features.dtype, device=features.device)
        onehot.scatter_(1, labels.view(-1, 1), 1)
        mask = onehot.view(n, C, 1).expand(n, C, A)
        by_class = features.view(n, 1, A).expand(n, C, A).mul(mask)
        amount_ca = mask.sum(0)
        amount_ca[amount_ca == 0] = 1
        ave_ca = by_class.sum(0) / amount_ca
        centred = by_class - ave_ca.expand(n, C, A).mul(mask)
        var = torch.bmm(centred.permute(1, 2, 0), centred.permute(1, 0, 2)).div(amount_ca.view(C, A, 1))
        batch_count = onehot.sum(0)
        weight = batch_count / (batch_count + self.amount)
        weight[weight != weight] = 0
        w_cv, w_av = weight.view(C, 1, 1), weight.view(C, 1)
        diff = (self.ave - ave_ca)
        extra = w_cv * (1 - w_cv) * torch.bmm(diff.view(C, A, 1), diff.view(C, 1, A))
        self.cov = self.cov.mul(1 - w_cv) + var.mul(w_cv) + extra
        self.ave = self.ave.mul(1 - w_av) + ave_ca.mul(w_av)
        self.amount += batch_count
