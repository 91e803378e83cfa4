"""ResNets with the ImageNet stem and timm's model.safetensors weights, offline: tiny ResNet-18-
and ResNet-50-shaped networks with random weights, written here with safetensors.numpy as timm
lays them out, load leaf for leaf, equal a float64 NumPy forward pass with torch's explicit
padding, and every way a file can fail is an error naming it; a hub name is downloaded only
through huggingface_hub (faked here), and the registered backbones extract features."""

import functools
import os
import subprocess
import sys
import types

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import traverse_util

from jclust import config_lib, feature_cache, features
from jclust import data as jdata
from jclust.models import resnet_imagenet as rn
from jclust.models.pth import WeightsError

safetensors_numpy = pytest.importorskip("safetensors.numpy", reason="safetensors is not installed "
                                                                    "(pip install -e '.[test]')")

TINY18 = rn.ResNetImageNet(block="basic", depths=(2, 2, 2, 2), widths=(4, 8, 8, 8),
                           stem_width=4, num_classes=5)
TINY50 = rn.ResNetImageNet(block="bottleneck", depths=(1, 2, 1, 1), widths=(2, 4, 4, 4),
                           stem_width=4, num_classes=5)


def random_state_dict(model: rn.ResNetImageNet, seed: int = 0) -> dict[str, np.ndarray]:
    """A state dict laid out as timm's (OIHW kernels, (out, in) fc, BN running statistics and
    counters) with random values at trained scales: kernels N(0, 1/fan_in), BN scales and
    variances in [0.5, 1.5], biases and means in [-0.5, 0.5]."""
    rng = np.random.default_rng(seed)
    abstract = jax.eval_shape(model.init, jax.random.PRNGKey(0), jnp.zeros((1, 32, 32, 3)))
    sd = {}
    for (collection, *path), leaf in traverse_util.flatten_dict(abstract).items():
        shape, key = leaf.shape, rn.torch_key(collection, path, len(leaf.shape))
        torch_shape = (shape[3], shape[2], shape[0], shape[1]) if len(shape) == 4 else shape[::-1]
        if path[-1] == "kernel":
            value = rng.normal(0, 1 / np.sqrt(np.prod(torch_shape[1:])), torch_shape)
        elif path[-1] in ("scale", "var"):
            value = rng.uniform(0.5, 1.5, torch_shape)
        else:
            value = rng.uniform(-0.5, 0.5, torch_shape)
        sd[key] = value.astype(np.float32)
        if path[-1] == "var":
            sd[key.replace("running_var", "num_batches_tracked")] = np.array(9, np.int64)
    return sd


@pytest.fixture(scope="module")
def tiny18_file(tmp_path_factory):
    """(path of a model.safetensors for TINY18, its state dict)."""
    sd = random_state_dict(TINY18)
    path = str(tmp_path_factory.mktemp("w") / "model.safetensors")
    safetensors_numpy.save_file(sd, path)
    return path, sd


# ---------------------------------------------------------------------------------------------
# The mapping


def test_timm_key_names_and_the_full_sizes():
    sd = random_state_dict(TINY50)
    assert {"conv1.weight", "bn1.running_mean", "layer1.0.conv3.weight",
            "layer1.0.downsample.0.weight", "layer2.1.bn2.num_batches_tracked",
            "layer4.0.downsample.1.running_var", "fc.weight", "fc.bias"} <= set(sd)
    assert sd["conv1.weight"].shape == (4, 3, 7, 7) and sd["fc.weight"].shape == (5, 16)
    assert sd["layer2.0.conv2.weight"].shape == (4, 4, 3, 3)  # v1.5: the 3x3 strides
    # Parameter counts of torchvision's/timm's ResNet-18 and -50 (BN statistics not counted).
    for name, count in (("resnet18", 11_689_512), ("resnet50", 25_557_032)):
        model = rn.ResNetImageNet(**rn.RESNETS[name])
        shapes = jax.eval_shape(model.init, jax.random.PRNGKey(0), jnp.zeros((1, 32, 32, 3)))
        assert sum(np.prod(p.shape) for p in jax.tree.leaves(shapes["params"])) == count, name


def test_the_mapping_round_trips_through_a_safetensors_file(tiny18_file):
    path, sd = tiny18_file
    variables = rn.load_pretrained(path, TINY18)
    flat = traverse_util.flatten_dict(variables)
    assert len(flat) == sum(not k.endswith("num_batches_tracked") for k in sd)
    for (collection, *p), value in flat.items():
        torch_value = sd[rn.torch_key(collection, p, value.ndim)]
        expected = (torch_value.transpose(2, 3, 1, 0) if value.ndim == 4
                    else torch_value.T if value.ndim == 2 else torch_value)
        assert value.dtype == np.float32
        np.testing.assert_array_equal(value, expected)
    assert variables["batch_stats"]["layer2_0"]["downsample_1"]["var"].shape == (8,)
    assert variables["params"]["conv1"]["kernel"].shape == (7, 7, 3, 4)  # HWIO


def test_weights_that_do_not_fit_name_the_key_and_both_shapes(tiny18_file):
    _, sd = tiny18_file
    missing = {k: v for k, v in sd.items() if k != "layer3.1.bn2.running_var"}
    with pytest.raises(WeightsError, match=r"w: no 'layer3\.1\.bn2\.running_var' \(shape \(8,\)\)"):
        rn.variables_from_state_dict(missing, TINY18, "w")
    extra = {**sd, "layer3.2.conv1.weight": np.ones((8, 8, 3, 3), np.float32)}
    with pytest.raises(WeightsError,
                       match=r"w: unexpected 'layer3\.2\.conv1\.weight' \(shape \(8, 8, 3, 3\)\)"):
        rn.variables_from_state_dict(extra, TINY18, "w")
    wrong = {**sd, "layer2.0.downsample.0.weight": np.ones((8, 4, 3, 3), np.float32)}
    with pytest.raises(WeightsError, match=r"w: 'layer2\.0\.downsample\.0\.weight' has shape "
                                           r"\(8, 4, 3, 3\), this ResNet expects \(8, 4, 1, 1\)"):
        rn.variables_from_state_dict(wrong, TINY18, "w")
    # A ResNet-50's weights: the first key of the model's that differs.
    with pytest.raises(WeightsError, match=r"'layer1\.0\.bn1\.running_mean' has shape \(2,\), "
                                           r"this ResNet expects \(4,\)"):
        rn.variables_from_state_dict(random_state_dict(TINY50), TINY18, "w")


# ---------------------------------------------------------------------------------------------
# A float64 NumPy forward pass with torch's padding


def _np_conv(x: np.ndarray, w: np.ndarray, stride: int) -> np.ndarray:
    """torch's Conv2d(padding=k // 2, bias=False): [B, H, W, C], weights (O, C, k, k) -> [B,
    floor((H + 2p - k) / s) + 1, ..., O]."""
    k = w.shape[-1]
    p = k // 2
    x = np.pad(x, ((0, 0), (p, p), (p, p), (0, 0)))
    oh, ow = (x.shape[1] - k) // stride + 1, (x.shape[2] - k) // stride + 1
    out = 0.0
    for i in range(k):
        for j in range(k):
            out = out + x[:, i:i + stride * oh:stride, j:j + stride * ow:stride] @ w[:, :, i, j].T
    return out


def _np_max_pool(x: np.ndarray) -> np.ndarray:
    """torch's MaxPool2d(3, 2, padding=1) (padding never wins: -inf)."""
    x = np.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)), constant_values=-np.inf)
    oh, ow = (x.shape[1] - 3) // 2 + 1, (x.shape[2] - 3) // 2 + 1
    return np.max([x[:, i:i + 2 * oh:2, j:j + 2 * ow:2] for i in range(3) for j in range(3)], 0)


def numpy_resnet(sd: dict, images: np.ndarray, block: str) -> dict:
    """The whole forward pass in float64 NumPy, straight from timm's state dict."""
    sd = {k: v.astype(np.float64) for k, v in sd.items()}
    relu = lambda x: np.maximum(x, 0.0)  # noqa: E731

    def bn(x, p):
        return ((x - sd[p + ".running_mean"]) / np.sqrt(sd[p + ".running_var"] + 1e-5)
                * sd[p + ".weight"] + sd[p + ".bias"])

    mean, std = np.array([0.485, 0.456, 0.406]) * 255, np.array([0.229, 0.224, 0.225]) * 255
    x = relu(bn(_np_conv((images.astype(np.float64) - mean) / std, sd["conv1.weight"], 2), "bn1"))
    x = _np_max_pool(x)
    out, convs = {"stem": x}, (("conv1", 1), ("conv2", 1)) if block == "basic" else (
        ("conv1", 1), ("conv2", 2), ("conv3", 1))  # which conv strides (1: no, 2: the block's)
    for i in range(1, 5):
        j = 0
        while f"layer{i}.{j}.conv1.weight" in sd:
            p, stride = f"layer{i}.{j}.", 2 if i > 1 and j == 0 else 1
            y = x
            for c, (name, strided) in enumerate(convs):
                s = stride if (strided == 2 or (block == "basic" and c == 0)) else 1
                y = bn(_np_conv(y, sd[p + name + ".weight"], s), p + f"bn{c + 1}")
                y = relu(y) if c < len(convs) - 1 else y
            if p + "downsample.0.weight" in sd:
                x = bn(_np_conv(x, sd[p + "downsample.0.weight"], stride), p + "downsample.1")
            x, j = relu(y + x), j + 1
        out[f"layer{i}"] = x
    out["pooled"] = x.mean(axis=(1, 2))
    out["logits"] = out["pooled"] @ sd["fc.weight"].T + sd["fc.bias"]
    return out


# Drift of the float32 Flax port from the float64 NumPy pass, max |flax - numpy| / max |numpy|
# over each layer, measured on random uint8 images at 40x40 and 33x33 with the random weights
# above (jax 0.10.2, XLA:CPU, AMD EPYC): 4.6e-7 at most (bottleneck layer1 at 40x40; basic 4.4e-7,
# every layer 8e-8 to 4.6e-7). The tolerance is ~20x that, as float32 drift changes with the CPU
# and XLA's kernels. "SAME" padding instead of torch's (one row less at the top of a stride-2
# conv on an even size) drifts by 0.63 on the 40x40 stem and 0.47-1.2 on the later layers.
DRIFT_TOLERANCE = 1e-5


@pytest.mark.parametrize("model", [TINY18, TINY50], ids=["basic", "bottleneck"])
@pytest.mark.parametrize("size", [40, 33])
def test_the_flax_port_equals_a_numpy_forward_pass(model, size):
    sd = random_state_dict(model, seed=size)
    variables = rn.variables_from_state_dict(sd, model)
    images = np.random.default_rng(size).integers(0, 256, (2, size, size, 3), np.uint8)
    port = jax.jit(model.apply)(variables, images)
    reference = numpy_resnet(sd, images, model.block)
    assert set(port) == set(reference)
    drift = {name: float(np.max(np.abs(np.asarray(port[name], np.float64) - ref))
                         / np.max(np.abs(ref))) for name, ref in reference.items()}
    assert max(drift.values()) < DRIFT_TOLERANCE, drift
    sizes = {40: (10, 10, 5, 3, 2), 33: (9, 9, 5, 3, 2)}[size]  # stem, layer1..4 (torch's)
    assert [port[n].shape[1] for n in ("stem", "layer1", "layer2", "layer3", "layer4")] == \
        list(sizes)
    assert {n: rn.feature_width(model, n) for n in port} == {n: f.shape[-1]
                                                            for n, f in port.items()}


# ---------------------------------------------------------------------------------------------
# Files and hub names


def test_missing_and_truncated_files_are_errors_naming_the_file(tmp_path, tiny18_file):
    missing = str(tmp_path / "nowhere" / "model.safetensors")
    with pytest.raises(WeightsError, match=f"no such weights file: {missing}"):
        rn.load_pretrained(missing, TINY18)
    with open(tiny18_file[0], "rb") as f:
        data = f.read()
    for cut in (len(data) // 2, 4):  # in the tensors' bytes; in the header's length
        truncated = tmp_path / f"cut{cut}.safetensors"
        truncated.write_bytes(data[:cut])
        with pytest.raises(WeightsError, match=f"{truncated}: truncated or corrupt safetensors "
                                               f"file .*download or save it again"):
            rn.load_pretrained(str(truncated), TINY18)


def test_a_hub_name_needs_huggingface_hub_and_is_imported_only_then(monkeypatch, tiny18_file):
    assert rn.is_hub_name("timm/resnet50.a1_in1k") and rn.is_hub_name("hf-hub:timm/resnet18")
    assert not rn.is_hub_name(tiny18_file[0]) and not rn.is_hub_name("w/model.safetensors")
    assert not rn.is_hub_name("/abs/resnet50")
    monkeypatch.setitem(sys.modules, "huggingface_hub", None)  # import fails: not installed
    with pytest.raises(WeightsError, match=r"'timm/resnet50\.a1_in1k' is not a file, so it was "
                                           r"taken for a Hugging Face hub name.*pip install "
                                           r"huggingface_hub"):
        rn.load_pretrained("timm/resnet50.a1_in1k")
    assert rn.locate(tiny18_file[0]) == tiny18_file[0]  # a path never imports it


def _fake_hub(monkeypatch, files: dict[str, str]) -> list:
    """huggingface_hub with an hf_hub_download that serves ``files`` {repo: path}; the calls."""
    calls = []

    def hf_hub_download(repo_id, filename):
        calls.append((repo_id, filename))
        if repo_id not in files:
            raise OSError("offline")
        return files[repo_id]

    module = types.ModuleType("huggingface_hub")
    module.hf_hub_download = hf_hub_download
    monkeypatch.setitem(sys.modules, "huggingface_hub", module)
    return calls


TINY_NAME = "resnet18_imagenet_tiny"


def _tiny_network() -> features.Network:
    return features.Network(TINY18, functools.partial(rn.load_pretrained, model=TINY18),
                            functools.partial(rn.default_weights, "resnet18"),
                            functools.partial(rn.feature_width, TINY18), rn.locate)


def test_the_registered_backbones_extract_features_from_a_path_or_a_hub_name(
        tmp_path, monkeypatch, tiny18_file):
    assert features.BACKBONES["resnet50_imagenet"]().width("pooled") == 2048
    assert features.BACKBONES["resnet18_imagenet"]().width("layer3") == 256
    with pytest.raises(config_lib.ConfigError, match=r"config\.data\.backbone\.weights: no "
                                                     r"default resnet50 weights.*weights=PATH.*"
                                                     r"timm/resnet50\.a1_in1k"):
        features.resolve(features.Spec("resnet50_imagenet"))
    monkeypatch.setitem(features.BACKBONES, TINY_NAME, _tiny_network)
    path = tiny18_file[0]
    spec = features.Spec(TINY_NAME, path, ("layer2", "pooled"), image_size=32, batch_size=4)
    images = np.random.default_rng(0).integers(0, 256, (5, 24, 24, 3), np.uint8)
    out = features.extract(jdata.ArrayImages(images), spec, say=lambda _: None)
    assert {k: v.shape for k, v in out.features.items()} == {"layer2": (5, 8), "pooled": (5, 8)}
    # A hub name resolves to the downloaded file, whose bytes key the cache.
    calls = _fake_hub(monkeypatch, {"someone/tiny-resnet": path})
    hub = features.Spec(TINY_NAME, "someone/tiny-resnet", ("pooled",), 32, 4)
    assert features.resolve(hub).weights == os.path.abspath(path)
    assert calls == [("someone/tiny-resnet", "model.safetensors")]
    np.savez(tmp_path / "imgs.npz", image=images)
    loaded = [feature_cache.load(f"npz:{tmp_path / 'imgs.npz'}", s, say=lambda _: None)
              for s in (hub, features.Spec(TINY_NAME, path, ("pooled",), 32, 4))]
    assert loaded[0].record["key"] == loaded[1].record["key"]
    assert loaded[0].record["weights"] == os.path.abspath(path)
    np.testing.assert_array_equal(loaded[0].dataset.inputs, out.features["pooled"])
    with pytest.raises(config_lib.ConfigError, match=r"could not download model\.safetensors of "
                                                     r"'someone/other'.*OSError: offline"):
        features.resolve(features.Spec(TINY_NAME, "someone/other"))


def test_importing_jclust_imports_neither_safetensors_nor_huggingface_hub():
    code = ("import sys, jclust, jclust.features, jclust.models.resnet_imagenet; print(sorted(m "
            "for m in sys.modules if m.split('.')[0] in ('safetensors', 'huggingface_hub')))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0 and result.stdout.strip() == "[]", result.stderr[-2000:]
