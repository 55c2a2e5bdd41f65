"""TPT's test-time tuning in PyTorch on a transformers `CLIPModel`: the reference we compare to.

Written from TPT's public code (`test_time_tuning`, `avg_entropy`, `select_confident_samples`):
a CoOp prompt [SOT, ctx, class tokens] run through transformers' CLIP text tower by hand,
confidence selection by `argsort`, marginal entropy by logsumexp, `torch.optim.AdamW`. It shares
no code with the JAX implementation (the normalisation constants are written out again), so the
parity test (tests/test_tpt_parity_torch.py) compares two independent implementations, and the
throughput benchmark times the public per-image loop against ours.

Needs the test extras (`torch`, `transformers`); imported only by those two users.
"""
from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

MEAN = np.array([0.48145466, 0.4578275, 0.40821073], np.float32)
STD = np.array([0.26862954, 0.26130258, 0.27577711], np.float32)


class TorchTPT:
  """One image's TPT on a transformers CLIPModel, following TPT's public implementation."""

  def __init__(self, model, token_ids, ctx_init, n_ctx=4):
    self.model = model
    ids = torch.as_tensor(np.asarray(token_ids), dtype=torch.long)
    with torch.no_grad():
      embedded = model.text_model.embeddings.token_embedding(ids)
    self.prefix, self.suffix = embedded[:, :1], embedded[:, 1 + n_ctx:]
    self.eot = ids.argmax(-1)  # OpenAI's rule: EOT has the largest id
    self.ctx_init = torch.tensor(np.asarray(ctx_init, np.float32))
    self.ctx = torch.nn.Parameter(self.ctx_init.clone())

  def reset(self):
    """TPT's episodic reset: the context starts from its initial value for every image."""
    with torch.no_grad():
      self.ctx.copy_(self.ctx_init)

  def text_features(self):
    tm = self.model.text_model
    n_cls = self.prefix.shape[0]
    prompts = torch.cat([self.prefix, self.ctx.expand(n_cls, -1, -1), self.suffix], dim=1)
    length = prompts.shape[1]
    positions = torch.arange(length).unsqueeze(0)
    x = tm.embeddings(inputs_embeds=prompts, position_ids=positions)
    causal = torch.full((length, length), torch.finfo(x.dtype).min).triu(1)[None, None]
    x = tm.encoder(inputs_embeds=x, attention_mask=causal).last_hidden_state
    x = tm.final_layer_norm(x)
    pooled = x[torch.arange(n_cls), self.eot]
    feats = self.model.text_projection(pooled)
    return feats / feats.norm(dim=-1, keepdim=True)

  def image_features(self, pixels):
    """pixels [V, S, S, 3] in [0, 1] (NumPy or torch) -> unit-norm features [V, E], no grad."""
    if isinstance(pixels, torch.Tensor):
      pixels = pixels.float()
    else:
      pixels = torch.from_numpy(np.array(pixels, np.float32))  # a writable copy
    normalised = (pixels - torch.from_numpy(MEAN)) / torch.from_numpy(STD)
    with torch.no_grad():
      feats = self.model.get_image_features(
          pixel_values=normalised.permute(0, 3, 1, 2).contiguous()).pooler_output
    return feats / feats.norm(dim=-1, keepdim=True)

  def logits(self, image_feats):
    return self.model.logit_scale.exp() * image_feats @ self.text_features().t()

  @staticmethod
  def select_confident_samples(logits, top):
    entropy = -(logits.softmax(1) * logits.log_softmax(1)).sum(1)
    idx = torch.argsort(entropy, descending=False)[:int(entropy.size()[0] * top)]
    return logits[idx], idx

  @staticmethod
  def avg_entropy(outputs):
    logits = outputs - outputs.logsumexp(dim=-1, keepdim=True)
    avg_logits = logits.logsumexp(dim=0) - np.log(logits.shape[0])
    avg_logits = torch.clamp(avg_logits, min=torch.finfo(avg_logits.dtype).min)
    return -(avg_logits * torch.exp(avg_logits)).sum(dim=-1)

  @staticmethod
  def text_dispersion(text):
    """C-TPT's public code: mean L2 distance of the normalised class features to their mean."""
    return (text - text.mean(dim=0)).norm(dim=-1).mean()

  def adapt(self, pixels, steps, lr=5e-3, eps=1e-8, top=0.1, reencode_view0=False,
            dispersion_weight=0.0):
    """TPT's test_time_tuning then the prediction on view 0; returns a dict of NumPy arrays.

    With `reencode_view0`, the prediction encodes view 0 again, as the public loop does
    (`model(image)` after tuning); otherwise it reuses view 0's feature. `dispersion_weight` > 0
    is C-TPT: the loss is the entropy minus that weight times the text-feature dispersion.
    """
    feats = self.image_features(pixels)
    optimizer = torch.optim.AdamW([self.ctx], lr=lr, eps=eps)  # weight_decay 0.01 by default
    selected, first_loss = None, None
    for _ in range(steps):
      output = self.logits(feats)
      if selected is None:
        output, selected = self.select_confident_samples(output, top)
      else:
        output = output[selected]
      loss = self.avg_entropy(output)
      if dispersion_weight:
        loss = loss - dispersion_weight * self.text_dispersion(self.text_features())
      first_loss = loss.item() if first_loss is None else first_loss
      optimizer.zero_grad()
      loss.backward()
      optimizer.step()
    with torch.no_grad():
      view0 = self.image_features(pixels[:1]) if reencode_view0 else feats[:1]
      final = self.logits(view0)[0]
    return dict(ctx=self.ctx.detach().numpy().copy(), logits=final.numpy(),
                selected=selected.numpy(), loss=first_loss)


def random_resized_crop_views(image, n_views, generator, scale=(0.08, 1.0),
                              ratio=(3 / 4, 4 / 3)):
  """View 0 = `image` [S, S, 3]; views 1.. = random resized crops + flips (bilinear), as TPT.

  Torch ops only (affine_grid + grid_sample), so the reference loop makes its own views.
  """
  img = torch.as_tensor(np.asarray(image, np.float32)).permute(2, 0, 1)[None]
  k = n_views - 1
  area = torch.empty(k).uniform_(*scale, generator=generator)
  log_r = torch.empty(k).uniform_(math.log(ratio[0]), math.log(ratio[1]), generator=generator)
  w = torch.sqrt(area * log_r.exp()).clamp(max=1.0)
  h = torch.sqrt(area / log_r.exp()).clamp(max=1.0)
  cx = (1 - w) * (2 * torch.rand(k, generator=generator) - 1)
  cy = (1 - h) * (2 * torch.rand(k, generator=generator) - 1)
  flip = torch.where(torch.rand(k, generator=generator) < 0.5, -1.0, 1.0)
  theta = torch.zeros(k, 2, 3)
  theta[:, 0, 0], theta[:, 0, 2] = w * flip, cx
  theta[:, 1, 1], theta[:, 1, 2] = h, cy
  grid = F.affine_grid(theta, (k, 3) + img.shape[2:], align_corners=False)
  crops = F.grid_sample(img.expand(k, -1, -1, -1), grid, mode="bilinear", align_corners=False)
  return torch.cat([img, crops], 0).permute(0, 2, 3, 1)
