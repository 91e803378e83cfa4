"""Necks between a backbone and a method's loss: ODC's non-linear neck (``NonLinearNeckV0``
without its BatchNorm) and the L2-normalised projection head of DeepCluster-v2 and SwAV."""

import jax
import flax.linen as nn

from jclust.cluster.norms import l2_normalize

Array = jax.Array

# He (Kaiming) normal, fan-in, untruncated: the neck's init in the ODC reference.
kaiming_normal = nn.initializers.variance_scaling(2.0, "fan_in", "normal")


class NonLinearNeck(nn.Module):
    """Dense(hidden) -> ReLU -> Dropout -> Dense(features) [-> ReLU].

    Attributes:
      hidden: width of the hidden layer.
      features: size of the output feature.
      dropout: dropout rate on the hidden layer (active only with ``train=True``).
      out_relu: end with a ReLU, as ODC's neck does.
    """

    hidden: int
    features: int
    dropout: float = 0.0
    out_relu: bool = True

    @nn.compact
    def __call__(self, x: Array, *, train: bool = False) -> Array:
        """[B, D_in] -> [B, features]. With ``train`` and dropout, needs a "dropout" rng."""
        x = nn.relu(nn.Dense(self.hidden, kernel_init=kaiming_normal)(x))
        x = nn.Dropout(self.dropout, deterministic=not train)(x)
        x = nn.Dense(self.features, kernel_init=kaiming_normal)(x)
        return nn.relu(x) if self.out_relu else x


class ProjectionHead(nn.Module):
    """Dense(hidden)-[BatchNorm]-ReLU-Dense(out), then L2 normalisation. [B, D] -> [B, out].

    The projection of DeepCluster-v2 and SwAV. ``batch_norm`` (the references' layout) centres the
    hidden layer over the batch: without it the ReLU features of a fresh CNN give z that are all
    nearly parallel (mean pairwise cosine 0.996 on digits), so SwAV's codes start uniform and
    training collapses. Its statistics are the collection "batch_stats" (pass ``train`` and
    ``mutable=["batch_stats"]`` when training).
    """
    hidden: int
    out: int
    batch_norm: bool = False

    @nn.compact
    def __call__(self, h: Array, train: bool = False) -> Array:
        h = nn.Dense(self.hidden)(h)
        if self.batch_norm:
            h = nn.BatchNorm(use_running_average=not train, momentum=0.9)(h)
        z = nn.Dense(self.out)(nn.relu(h))
        return l2_normalize(z)


class MixtureHead(nn.Module):
    """The neural mixture model's final layer: Dense(K) outputs o_k normalised per neuron.

    ``normalize="batch"``: each of the K outputs is standardised over the batch (BatchNorm without
    scale or shift; running statistics in evaluation), so that every neuron's outputs have mean 0
    and variance 1 over the data: no neuron can be high for every sample, and sigmoid(o~_k) / Z
    then gives K densities with a common integral (METHODS.md §6). ``"none"`` leaves o_k as they
    are (the degenerate baseline: one neuron can take every sample).

    ``num_heads`` > 1 gives that many independent mixtures over the same features (SCAN's
    several heads, K components each): one Dense(num_heads * K), head j's outputs in
    columns j*K:(j+1)*K, every column normalised on its own.

    Attributes:
      num_components: K.
      hidden: width of a Dense-ReLU layer before the output, shared by the heads (0: none).
      normalize: "batch" or "none".
      num_heads: H, independent mixtures of K components.
    """
    num_components: int
    hidden: int = 0
    normalize: str = "batch"
    num_heads: int = 1

    @nn.compact
    def __call__(self, h: Array, train: bool = False) -> Array:
        """[B, D] -> normalised outputs o~ [B, H * K]. Pass ``mutable=["batch_stats"]`` when
        training."""
        if self.hidden:
            h = nn.relu(nn.Dense(self.hidden)(h))
        o = nn.Dense(self.num_heads * self.num_components)(h)
        if self.normalize == "batch":
            o = nn.BatchNorm(use_running_average=not train, momentum=0.9, use_scale=False,
                             use_bias=False)(o)
        elif self.normalize != "none":
            raise ValueError(f"normalize={self.normalize!r}: use 'batch' or 'none'")
        return o
