"""The network as training sees it: the timm model behind one `forward`, with a frozen-backbone mode.

While the backbone is frozen (the head warm-up, the paper protocol) it runs without autograd and only the
classifier learns, which is several times faster; DDP still sees a single module and a single forward.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from leukoscope.models.factory import freeze_batchnorm


class Classifier(nn.Module):
    """Wraps the timm model so that a frozen backbone runs without autograd (much faster) and DDP sees
    one forward. BatchNorm stays in inference mode when `freeze_bn` is set, whatever .train() says."""

    def __init__(self, model: nn.Module, freeze_bn: bool) -> None:
        super().__init__()
        self.model, self.freeze_bn, self.head_only = model, freeze_bn, False

    def train(self, mode: bool = True) -> Classifier:
        super().train(mode)
        if self.head_only:
            self.model.eval()
        if self.freeze_bn:
            freeze_batchnorm(self.model)
        return self

    def forward(self, x: torch.Tensor, pooled: bool = False) -> torch.Tensor:
        """Logits of images, or of already pooled backbone features when `pooled` is set."""
        if not self.head_only:
            return self.model(x)
        if pooled:
            pooled_features = x
        else:
            with torch.no_grad():
                pooled_features = self.model.forward_head(self.model.forward_features(x), pre_logits=True)
        pooled = F.dropout(pooled_features, p=self.model.drop_rate, training=self.training)
        return self.model.get_classifier()(pooled)


class PooledFeatures(nn.Module):
    """The backbone up to the pooled features the classifier reads (timm's pre-logits)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model.forward_head(self.model.forward_features(x), pre_logits=True)
