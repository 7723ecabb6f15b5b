"""Converters: PyTorch modules with torchvision / timm parameter names, built here, random-init,
converted into sim_jax variables, must compute the same features (within 1e-4)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from sim_jax.models import default_config, get_model
from sim_jax.models.convert import convert_file, convert_state_dict
from sim_jax.models.testing import random_variables
from sim_jax.models.vgg import VGG16_CFG

torch = pytest.importorskip("torch", reason="torch (the `bench`/`test` extra) is not installed")
tnn = torch.nn


def _cfg(name, **kw):
  c = default_config()
  c.name = name
  # Compare backbone features: no embedding layer, no attention, raw inputs on both sides.
  c.update(dict(embedding_dim=0, normalize=False, attention="none", input_norm="none"), **kw)
  return c


def _randomize(module, seed):
  """Random weights, biases and batch-norm statistics, so every converted entry matters."""
  g = torch.Generator().manual_seed(seed)
  with torch.no_grad():
    for name, t in list(module.named_parameters()) + list(module.named_buffers()):
      if name.endswith("num_batches_tracked"):
        continue
      if name.endswith("running_var"):
        t.copy_(torch.rand(t.shape, generator=g) + 0.5)
      elif name.endswith(("bn1.weight", "bn2.weight", "bn3.weight", "downsample.1.weight")):
        t.copy_(1 + 0.1 * torch.randn(t.shape, generator=g))
      elif t.ndim >= 2:
        fan_in = t[0].numel() if t.ndim > 1 else 1
        t.copy_(torch.randn(t.shape, generator=g) / fan_in ** 0.5)
      else:
        t.copy_(0.1 * torch.randn(t.shape, generator=g))
  return module.eval()


# ---- torchvision-named ResNet with bottleneck blocks (torchvision.models.resnet, v1.5) ----
class TorchBottleneck(tnn.Module):
  def __init__(self, inplanes, planes, stride):
    super().__init__()
    self.conv1 = tnn.Conv2d(inplanes, planes, 1, bias=False)
    self.bn1 = tnn.BatchNorm2d(planes)
    self.conv2 = tnn.Conv2d(planes, planes, 3, stride, 1, bias=False)
    self.bn2 = tnn.BatchNorm2d(planes)
    self.conv3 = tnn.Conv2d(planes, planes * 4, 1, bias=False)
    self.bn3 = tnn.BatchNorm2d(planes * 4)
    self.downsample = None
    if stride != 1 or inplanes != planes * 4:
      self.downsample = tnn.Sequential(tnn.Conv2d(inplanes, planes * 4, 1, stride, bias=False),
                                       tnn.BatchNorm2d(planes * 4))

  def forward(self, x):
    out = torch.relu(self.bn1(self.conv1(x)))
    out = torch.relu(self.bn2(self.conv2(out)))
    out = self.bn3(self.conv3(out))
    return torch.relu(out + (x if self.downsample is None else self.downsample(x)))


class TorchResNet(tnn.Module):
  def __init__(self, layers, width, in_ch=3):
    super().__init__()
    self.conv1 = tnn.Conv2d(in_ch, width, 7, 2, 3, bias=False)
    self.bn1 = tnn.BatchNorm2d(width)
    self.maxpool = tnn.MaxPool2d(3, 2, 1)
    inplanes = width
    for i, n in enumerate(layers):
      blocks = []
      for j in range(n):
        blocks.append(TorchBottleneck(inplanes, width * 2**i, 2 if i > 0 and j == 0 else 1))
        inplanes = width * 2**i * 4
      setattr(self, f"layer{i + 1}", tnn.Sequential(*blocks))
    self.fc = tnn.Linear(inplanes, 10)  # ImageNet classifier: must be reported unused

  def forward(self, x):
    x = self.maxpool(torch.relu(self.bn1(self.conv1(x))))
    for i in range(4):
      x = getattr(self, f"layer{i + 1}")(x)
    return x.mean(dim=(2, 3))


# ---- torchvision-named VGG `features` ----
class TorchVGG(tnn.Module):
  def __init__(self, width):
    super().__init__()
    layers, c = [], 3
    for v in VGG16_CFG:
      if v == "M":
        layers.append(tnn.MaxPool2d(2, 2))
      else:
        layers += [tnn.Conv2d(c, v * width // 64, 3, padding=1), tnn.ReLU()]
        c = v * width // 64
    self.features = tnn.Sequential(*layers)
    self.classifier = tnn.Sequential(tnn.Linear(c, 10))

  def forward(self, x):
    return self.features(x).amax(dim=(2, 3))  # seed 003's global max pooling


# ---- timm-named ViT (timm.models.vision_transformer) ----
class TorchAttention(tnn.Module):
  def __init__(self, dim, heads):
    super().__init__()
    self.heads = heads
    self.qkv = tnn.Linear(dim, 3 * dim)
    self.proj = tnn.Linear(dim, dim)

  def forward(self, x):
    b, n, c = x.shape
    qkv = self.qkv(x).reshape(b, n, 3, self.heads, c // self.heads).permute(2, 0, 3, 1, 4)
    q, k, v = qkv.unbind(0)
    attn = ((q @ k.transpose(-2, -1)) * (c // self.heads) ** -0.5).softmax(-1)
    return self.proj((attn @ v).transpose(1, 2).reshape(b, n, c))


class TorchMlp(tnn.Module):
  def __init__(self, dim, hidden):
    super().__init__()
    self.fc1, self.fc2 = tnn.Linear(dim, hidden), tnn.Linear(hidden, dim)

  def forward(self, x):
    return self.fc2(tnn.functional.gelu(self.fc1(x)))


class TorchBlock(tnn.Module):
  def __init__(self, dim, heads):
    super().__init__()
    self.norm1, self.norm2 = tnn.LayerNorm(dim, eps=1e-6), tnn.LayerNorm(dim, eps=1e-6)
    self.attn, self.mlp = TorchAttention(dim, heads), TorchMlp(dim, 4 * dim)

  def forward(self, x):
    x = x + self.attn(self.norm1(x))
    return x + self.mlp(self.norm2(x))


class TorchPatchEmbed(tnn.Module):
  def __init__(self, dim, patch):
    super().__init__()
    self.proj = tnn.Conv2d(3, dim, patch, patch)


class TorchViT(tnn.Module):
  def __init__(self, dim, depth, heads, patch, image):
    super().__init__()
    self.patch_embed = TorchPatchEmbed(dim, patch)
    self.cls_token = tnn.Parameter(torch.zeros(1, 1, dim))
    self.pos_embed = tnn.Parameter(torch.zeros(1, (image // patch) ** 2 + 1, dim))
    self.blocks = tnn.ModuleList([TorchBlock(dim, heads) for _ in range(depth)])
    self.norm = tnn.LayerNorm(dim, eps=1e-6)
    self.head = tnn.Linear(dim, 10)

  def forward(self, x):
    x = self.patch_embed.proj(x).flatten(2).transpose(1, 2)
    x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], 1) + self.pos_embed
    for blk in self.blocks:
      x = blk(x)
    return self.norm(x)[:, 0]


def _compare(torch_model, cfg, size, seed=0):
  x = np.random.default_rng(seed).uniform(size=(2, 3, size, size)).astype(np.float32)
  with torch.no_grad():
    ref = torch_model(torch.from_numpy(x)).numpy()
  model = get_model(cfg)
  x_nhwc = jnp.asarray(x.transpose(0, 2, 3, 1))
  target = random_variables(model, x_nhwc)
  state = {k: v.numpy() for k, v in torch_model.state_dict().items()}
  variables, report = convert_state_dict(state, target)
  emb, aux = jax.jit(model.apply)(variables, x_nhwc)
  np.testing.assert_allclose(np.asarray(emb), ref, atol=1e-4, rtol=1e-4)
  np.testing.assert_allclose(np.asarray(aux["features"]), ref, atol=1e-4, rtol=1e-4)
  return report, variables


def test_torchvision_resnet_bottleneck_converts_exactly():
  cfg = _cfg("resnet_tiny_bottleneck", width=8, stem="imagenet")
  torch_model = _randomize(TorchResNet((1, 1, 1, 1), width=8), seed=0)
  report, _ = _compare(torch_model, cfg, 32)
  assert report["unused"] == ["fc.bias", "fc.weight"]
  assert "batch_stats/backbone/layer1_0/downsample_bn/mean" in report["loaded"]
  # A deeper network (two blocks in stage 2) is a different architecture: refused by name.
  deeper = {k: v.numpy() for k, v in TorchResNet((1, 2, 1, 1), width=8).state_dict().items()}
  target = random_variables(get_model(cfg), jnp.zeros((1, 32, 32, 3)))
  with pytest.raises(ValueError, match=r"unexpected \['layer2.1.bn1.bias'"):
    convert_state_dict(deeper, target)


def test_torchvision_vgg16_features_convert_exactly():
  torch_model = _randomize(TorchVGG(width=8), seed=1)
  report, _ = _compare(torch_model, _cfg("vgg_tiny", width=8, pooling="max"), 64)
  assert report["unused"] == ["classifier.0.bias", "classifier.0.weight"]
  assert len(report["loaded"]) == 26  # 13 conv kernels + 13 biases


def test_timm_vit_converts_exactly():
  torch_model = _randomize(TorchViT(dim=32, depth=2, heads=2, patch=4, image=16), seed=2)
  report, _ = _compare(torch_model, _cfg("vit_tiny", patch_size=4, pooling="cls"), 16)
  assert report["unused"] == ["head.bias", "head.weight"]
  assert "params/backbone/blocks_1/attn/qkv/kernel" in report["loaded"]


def test_convert_files_and_mismatch(tmp_path):
  from safetensors.torch import save_file
  torch_model = _randomize(TorchVGG(width=8), seed=3)
  state = torch_model.state_dict()
  torch.save(state, tmp_path / "vgg.pth")
  save_file({k: v.contiguous() for k, v in state.items()}, str(tmp_path / "vgg.safetensors"))
  model = get_model(_cfg("vgg_tiny", width=8))
  x = jnp.zeros((1, 32, 32, 3))
  target = random_variables(model, x)
  a, _ = convert_file(str(tmp_path / "vgg.pth"), target)
  b, _ = convert_file(str(tmp_path / "vgg.safetensors"), target)
  np.testing.assert_array_equal(a["params"]["backbone"]["features_28"]["kernel"],
                                state["features.28.weight"].numpy().transpose(2, 3, 1, 0))
  np.testing.assert_array_equal(b["params"]["backbone"]["features_28"]["bias"],
                                state["features.28.bias"].numpy())
  wider = random_variables(get_model(_cfg("vgg_tiny", width=16)), x)
  with pytest.raises(ValueError, match=r"features_0/kernel <- features.0.weight: target "
                                       r"\(3, 3, 3, 16\) vs source \(3, 3, 3, 8\)"):
    convert_file(str(tmp_path / "vgg.pth"), wider)
  with pytest.raises(ValueError, match="does not exist: .*missing.pth"):
    convert_file(str(tmp_path / "missing.pth"), target)
