"""Non-linear projection neck (ODC's ``NonLinearNeckV0`` without its BatchNorm)."""

import jax
import flax.linen as nn

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
