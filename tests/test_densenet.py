"""DenseNet121: the torchvision port computes what torch computes; stages freeze as VGG blocks do.

Reference: a torchvision-layout DenseNet121 built here in torch (torchvision is not a dependency)
with random weights AND random BatchNorm running statistics, in eval mode. Its state_dict goes
through a real `torch.save` file (current and legacy 'norm.1' key names), the torch-free reader,
the porter and the weights store; every stage output and the logits must agree with torch to 1e-4
relative (max |diff| / max |torch|).
"""

import collections

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from torch import nn

from configs.default import get_config
from cxr_jax.explain import gradcam
from cxr_jax.models import STAGE_NAMES, DenseNet, FineTuningPlan, create_model
from cxr_jax.models.plan import FROZEN, TRAINABLE
from cxr_jax.weights import ShapeMismatchError, convert_file, load_pretrained
from cxr_jax.weights.densenet_port import from_torchvision_densenet
from cxr_jax.weights.torch_file import read_state_dict

RTOL = 1e-4
BLOCKS = (6, 12, 24, 16)


def _layer(c_in: int) -> nn.Module:
  m = nn.Module()
  for name, mod in (("norm1", nn.BatchNorm2d(c_in)), ("relu1", nn.ReLU()),
                    ("conv1", nn.Conv2d(c_in, 128, 1, bias=False)), ("norm2", nn.BatchNorm2d(128)),
                    ("relu2", nn.ReLU()), ("conv2", nn.Conv2d(128, 32, 3, padding=1, bias=False))):
    m.add_module(name, mod)
  return m


def _layer_forward(m: nn.Module, x):
  y = m.conv1(m.relu1(m.norm1(x)))
  return torch.cat([x, m.conv2(m.relu2(m.norm2(y)))], 1)


class TorchDenseNet121(nn.Module):
  """torchvision's densenet121 module names and forward, random weights and running stats."""

  def __init__(self, num_classes: int, seed: int = 0):
    super().__init__()
    torch.manual_seed(seed)
    f = collections.OrderedDict(conv0=nn.Conv2d(3, 64, 7, 2, 3, bias=False),
                                norm0=nn.BatchNorm2d(64), relu0=nn.ReLU(),
                                pool0=nn.MaxPool2d(3, 2, 1))
    c = 64
    for b, n in enumerate(BLOCKS):
      block = nn.Module()
      for j in range(n):
        block.add_module(f"denselayer{j + 1}", _layer(c + 32 * j))
      f[f"denseblock{b + 1}"] = block
      c += 32 * n
      if b < 3:
        f[f"transition{b + 1}"] = nn.Sequential(collections.OrderedDict(
            norm=nn.BatchNorm2d(c), relu=nn.ReLU(), conv=nn.Conv2d(c, c // 2, 1, bias=False),
            pool=nn.AvgPool2d(2, 2)))
        c //= 2
    f["norm5"] = nn.BatchNorm2d(c)
    self.features = nn.Sequential(f)
    self.classifier = nn.Linear(c, num_classes)
    for mod in self.modules():
      if isinstance(mod, nn.Conv2d):
        nn.init.kaiming_normal_(mod.weight)
      elif isinstance(mod, nn.BatchNorm2d):  # every statistic differs from its default
        nn.init.uniform_(mod.weight, 0.5, 1.5)
        nn.init.uniform_(mod.bias, -0.2, 0.2)
        mod.running_mean.uniform_(-0.3, 0.3)
        mod.running_var.uniform_(0.5, 2.0)
    self.eval()

  def stage_outputs(self, x):
    """Outputs at the stage boundaries, then the logits."""
    outs = []
    for name, mod in list(self.features.named_children())[:-1]:  # all but norm5
      x = _block_forward(mod, x) if name.startswith("denseblock") else mod(x)
      if name in ("pool0", "transition1", "transition2", "transition3", "denseblock4"):
        outs.append(x)
    pooled = torch.relu(self.features.norm5(x)).mean(dim=(2, 3))
    return outs, self.classifier(pooled)


def _block_forward(block: nn.Module, x):
  for layer in block.children():
    x = _layer_forward(layer, x)
  return x


def legacy_names(state: dict) -> dict:
  """The spelling of the published file: denselayerN.norm.1.weight instead of norm1.weight."""
  out = {}
  for k, v in state.items():
    for mod in ("norm1", "relu1", "conv1", "norm2", "relu2", "conv2"):
      k = k.replace(f".{mod}.", f".{mod[:-1]}.{mod[-1]}.")
    out[k] = v
  return out


@pytest.fixture(scope="module")
def torch_net():
  return TorchDenseNet121(num_classes=3)


def assert_close(got, want, what):
  got, want = np.asarray(got), np.asarray(want)
  assert got.shape == want.shape, what
  err = float(np.max(np.abs(got - want)) / np.max(np.abs(want)))
  assert err <= RTOL, f"{what}: relative error {err:.2e}"


def test_torchvision_port_matches_torch(torch_net, tmp_path, monkeypatch):
  monkeypatch.setenv("CXR_JAX_WEIGHTS", str(tmp_path / "weights"))
  state = torch_net.state_dict()
  assert any(k.endswith("num_batches_tracked") for k in state)  # the porter must skip them
  path = tmp_path / "densenet121.pth"
  torch.save(state, path)
  convert_file("densenet121", "torchvision", path, verify=False)
  pretrained = load_pretrained("densenet121", "torchvision")  # from the store
  assert pretrained.preprocessing == "torchvision"
  assert sorted(pretrained.params) == ["features", *STAGE_NAMES]
  assert sorted(pretrained.batch_stats) == ["features", *STAGE_NAMES]

  x = np.random.default_rng(0).normal(size=(2, 64, 64, 3)).astype(np.float32)
  with torch.no_grad():
    want_stages, want_logits = torch_net.stage_outputs(torch.from_numpy(x).permute(0, 3, 1, 2))
  head = {"logits": {"kernel": torch_net.classifier.weight.detach().numpy().T,
                     "bias": torch_net.classifier.bias.detach().numpy()}}
  variables = {"params": {**pretrained.params, "head": head},
               "batch_stats": pretrained.batch_stats}
  apply = jax.jit(lambda v, x: DenseNet(hidden=()).apply(v, x, mutable=["intermediates"]))
  logits, state = apply(variables, x)
  for name, want in zip(STAGE_NAMES, want_stages, strict=True):
    got = state["intermediates"][name]["output_out"][0]
    assert_close(got, want.permute(0, 2, 3, 1).numpy(), name)
  assert_close(logits, want_logits.numpy(), "logits")


def test_legacy_key_names_port_the_same(torch_net, tmp_path):
  state = torch_net.state_dict()
  legacy = legacy_names(state)
  assert "features.denseblock1.denselayer1.norm.1.weight" in legacy
  ported = [from_torchvision_densenet(read_state_dict(_saved(s, tmp_path / f"{i}.pth")),
                                      "densenet121", "t")
            for i, s in enumerate((state, legacy))]
  same = jax.tree.map(np.array_equal, ported[0], ported[1])
  assert all(jax.tree.leaves(same)) and jax.tree.structure(ported[0]) == jax.tree.structure(
      ported[1])


def _saved(state, path):
  torch.save(state, path)
  return path


def test_port_refuses_a_wrong_file(torch_net):
  state = {k: v.numpy() for k, v in torch_net.state_dict().items()}
  bad = dict(state)
  bad["features.denseblock2.denselayer3.conv2.weight"] = np.zeros((32, 64, 3, 3), np.float32)
  with pytest.raises(ShapeMismatchError, match=r"denselayer3.conv2.weight.*stage3/denselayer3"):
    from_torchvision_densenet(bad, "densenet121", "bad.pth")
  missing = {k: v for k, v in state.items() if "norm5" not in k}
  with pytest.raises(ShapeMismatchError, match="missing.*features/norm5"):
    from_torchvision_densenet(missing, "densenet121", "missing.pth")
  with pytest.raises(ShapeMismatchError, match="no place"):
    from_torchvision_densenet({**state, "features.denseblock5.denselayer1.conv1.weight": 0},
                              "densenet121", "extra.pth")


def test_torch_file_round_trip_keeps_running_stats(torch_net, tmp_path):
  path = tmp_path / "d.pth"
  torch.save(torch_net.state_dict(), path)
  read = read_state_dict(path)
  np.testing.assert_array_equal(read["features.norm5.running_var"],
                                torch_net.features.norm5.running_var.numpy())


TINY = dict(block_sizes=(1, 2, 1, 1), growth_rate=8, hidden=(16,), dropout=0.0)


@pytest.fixture(scope="module")
def tiny():
  model = DenseNet(**TINY)
  # 128 px: XLA's CPU convs compile and run far slower on the 1x1-2x2 maps of 32 px inputs.
  x = jax.random.normal(jax.random.key(1), (2, 128, 128, 3))
  variables = jax.jit(model.init)(jax.random.key(0), x)
  return model, {k: variables[k] for k in ("params", "batch_stats")}, x


@pytest.mark.parametrize("frozen", [2])
def test_frozen_stages_keep_params_and_batch_stats(tiny, frozen):
  model, variables, x = tiny
  model = model.clone(frozen_blocks=frozen)

  def loss(params):
    logits, new = model.apply({"params": params, "batch_stats": variables["batch_stats"]}, x,
                              train=True, mutable=["batch_stats"])
    return jnp.sum(logits ** 2), new["batch_stats"]

  grads, new_stats = jax.jit(jax.grad(loss, has_aux=True))(variables["params"])
  for i, stage in enumerate(STAGE_NAMES):
    moved = jax.tree.map(lambda a, b: bool(jnp.any(a != b)), new_stats[stage],
                         variables["batch_stats"][stage])
    g = max(float(jnp.max(jnp.abs(a))) for a in jax.tree.leaves(grads[stage]))
    if i < frozen:
      assert not any(jax.tree.leaves(moved)), stage
      assert g == 0.0, stage
    else:
      assert all(jax.tree.leaves(moved)), stage
      assert g > 0.0, stage
  # norm5 belongs to the head: it always trains.
  assert all(jax.tree.leaves(jax.tree.map(lambda a, b: bool(jnp.any(a != b)),
                                          new_stats["features"],
                                          variables["batch_stats"]["features"])))


def test_eval_mode_uses_running_stats_per_image(tiny):
  model, variables, x = tiny
  apply = jax.jit(model.apply)
  both, one = apply(variables, x), apply(variables, x[:1])
  np.testing.assert_allclose(both[:1], one, rtol=1e-5, atol=1e-5)


def test_start_stop_agree(tiny):
  model, variables, x = tiny
  apply = jax.jit(model.apply, static_argnames=("start", "stop"))
  full = apply(variables, x)
  mid = apply(variables, x, stop="stage3")
  np.testing.assert_allclose(apply(variables, mid, start="stage3"), full, rtol=1e-5, atol=1e-5)
  with pytest.raises(ValueError, match="comes before"):
    model.apply(variables, x, start="stage4", stop="stage2")


def test_stage_names_drive_the_fine_tuning_degree(tiny):
  _, variables, _ = tiny
  labels = FineTuningPlan(STAGE_NAMES, trainable_blocks=2).param_labels(variables["params"])
  top = {name: set(jax.tree.leaves(sub)) for name, sub in labels.items()}
  assert top == {"stage1": {FROZEN}, "stage2": {FROZEN}, "stage3": {FROZEN},
                 "stage4": {TRAINABLE}, "stage5": {TRAINABLE}, "features": {TRAINABLE},
                 "head": {TRAINABLE}}


def test_create_model_densenet121():
  config = get_config()
  config.model.arch = "densenet121"
  config.model.trainable_blocks = 3
  model = create_model(config.model)
  assert isinstance(model, DenseNet) and model.depth == 121 and model.frozen_blocks == 2
  assert tuple(model.hidden) == tuple(config.model.hidden)


@pytest.mark.parametrize("layer", ["features", "stage3"])
def test_gradcam_layers(tiny, layer):
  model, variables, x = tiny
  out = gradcam(model, variables, x, layer=layer)
  assert out["cam"].shape == x.shape[:3]
  assert float(out["cam"].max()) == pytest.approx(1.0)  # a non-empty map, scaled
