"""Optimisers and learning-rate schedules built from config sections."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jclust import config_lib, optim


def test_cosine_schedule_goes_from_peak_to_zero():
    schedule = optim.make_schedule("cosine", 1.0, 100)
    assert float(schedule(0)) == pytest.approx(1.0)
    assert float(schedule(50)) == pytest.approx(0.5 * (1 + math.cos(math.pi * 0.5)))
    assert float(schedule(100)) == pytest.approx(0.0, abs=1e-7)
    assert optim.make_schedule("constant", 0.3) == 0.3


@pytest.mark.parametrize("call, match", [
    (lambda: optim.make_schedule("linear", 1.0, 10), "unknown lr_schedule"),
    (lambda: optim.make_schedule("cosine", 1.0, 0), "positive number of steps"),
    (lambda: optim.make_optimizer("lamb", 1.0), "unknown optimizer"),
])
def test_bad_names_are_config_errors(call, match):
    with pytest.raises(config_lib.ConfigError, match=match):
        call()


def _run(tx, params, steps=3):
    """Updates of ``steps`` steps of ``tx`` on fixed gradients; returns the updates and state."""
    import jax
    import numpy as np
    import optax
    grads = jax.tree.map(lambda p: np.linspace(-1.0, 1.0, p.size, dtype=p.dtype).reshape(p.shape),
                         params)
    state, updates = tx.init(params), []
    for _ in range(steps):
        update, state = tx.update(grads, state, params)
        params = optax.apply_updates(params, update)
        updates.append(update)
    return updates, state


def test_make_builds_each_groups_chain_as_written_out_by_hand():
    """optim.make against the optax chains the methods wrote out before it existed (the same
    updates and the same optimiser-state tree, so checkpoints keep their layout)."""
    import jax
    import ml_collections
    import numpy as np
    import optax
    section = ml_collections.ConfigDict({"learning_rate": 0.1, "momentum": 0.9,
                                         "weight_decay": 0.01})
    params = {"backbone": {"w": np.ones((2, 3), np.float32)},
              "head": {"w": np.full(4, 0.5, np.float32)}}
    # DeepCluster: the head without weight decay and without momentum.
    ours = optim.make(section, 100, rest="backbone",
                      groups={"head": optim.Group(weight_decay=False, momentum=False)})
    by_hand = optax.multi_transform(
        {"backbone": optax.chain(optax.add_decayed_weights(0.01), optax.sgd(0.1, momentum=0.9)),
         "head": optax.sgd(0.1)},
        lambda p: {part: jax.tree.map(lambda _: part, p[part]) for part in p})
    # ODC: the head with weight decay, without momentum, on the step schedule.
    step = optax.piecewise_constant_schedule(0.1, {90: 0.4})
    with_ = lambda **values: ml_collections.ConfigDict({**section, **values})  # noqa: E731
    odc = optim.make(with_(lr_schedule="step", lr_decay_factor=0.4, lr_decay_fraction=0.9), 100,
                     rest="body",
                     groups={"head": optim.Group(momentum=False)})
    odc_by_hand = optax.multi_transform(
        {"body": optax.chain(optax.add_decayed_weights(0.01), optax.sgd(step, momentum=0.9)),
         "head": optax.chain(optax.add_decayed_weights(0.01), optax.sgd(step))},
        lambda p: {part: jax.tree.map(lambda _: "body" if part == "backbone" else part, p[part])
                   for part in p})
    # SwAV: the prototypes (here "head") masked for their first 2 steps; NMM: Adam for all.
    swav = optim.make(section, 100, groups={"head": optim.Group(frozen_steps=2)})
    def sgd():
        return optax.chain(optax.add_decayed_weights(0.01), optax.sgd(0.1, momentum=0.9))

    swav_by_hand = optax.multi_transform(
        {"train": sgd(), "head": optax.conditionally_mask(sgd(), lambda count: count >= 2)},
        lambda p: {part: jax.tree.map(lambda _: "head" if part == "head" else "train", p[part])
                   for part in p})
    nmm = optim.make(with_(optimizer="adam"), 100)
    nmm_by_hand = optax.chain(optax.add_decayed_weights(0.01), optax.adam(0.1))
    for ours, by_hand in ((ours, by_hand), (odc, odc_by_hand), (swav, swav_by_hand),
                          (nmm, nmm_by_hand)):
        (a, state_a), (b, state_b) = _run(ours, params), _run(by_hand, params)
        jax.tree.map(np.testing.assert_array_equal, a, b)
        assert jax.tree.structure(state_a) == jax.tree.structure(state_b)
    # Frozen for 2 steps, then trained like the rest; never; the step schedule's drop.
    frozen = optim.make(section, 100, groups={"head": optim.Group(frozen_steps=2)})
    updates, _ = _run(frozen, params, steps=3)
    assert [float(np.abs(u["head"]["w"]).sum()) == 0 for u in updates] == [True, True, False]
    never, _ = _run(optim.make(section, 100, groups={"head": optim.Group(frozen_steps=-1)}), params)
    assert all(float(np.abs(u["head"]["w"]).sum()) == 0 for u in never)
    step = optim.make_schedule("step", 0.1, 100, decay_factor=0.4, decay_fraction=0.9)
    assert [float(step(t)) for t in (0, 89, 90)] == pytest.approx([0.1, 0.1, 0.04])
    assert optim.make_schedule("step", 0.1, 100, decay_factor=1.0) == 0.1  # the constant rate
    with pytest.raises(config_lib.ConfigError, match="lr_decay_factor applies to"):
        optim.make(with_(lr_schedule="cosine", lr_decay_factor=0.4), 100)


def test_every_optim_section_is_the_one_skeleton():
    """The CNN methods' optim sections share config_lib.optim_section's keys (what optim.make
    reads), in every variant; a key outside it is refused."""
    import os
    from tests.conftest import ROOT
    skeleton = set(config_lib.optim_section())
    for name in ("deepcluster", "deepclusterv2", "odc", "swav", "jule", "nmm", "cliquecnn"):
        for arg in ("", ":digits"):
            config = config_lib.load_config(os.path.join(ROOT, "configs", f"{name}.py{arg}"))
            assert set(config.optim) == skeleton, (name, arg)
    with pytest.raises(ValueError, match="max_epochs"):
        config_lib.optim_section(max_epochs=3)


def test_warm_up_scales_the_rate_linearly_over_a_fixed_number_of_steps():
    """warmup_steps=W: the rate of step t is the schedule's times min(1, (t + 1) / W), by hand;
    through make, the first SGD updates grow as 1/W, 2/W, ... of the unwarmed ones."""
    import jax
    import ml_collections
    import numpy as np
    constant = optim.make_schedule("constant", 0.1, warmup_steps=4)
    assert [float(constant(t)) for t in range(6)] == pytest.approx(
        [0.025, 0.05, 0.075, 0.1, 0.1, 0.1])
    cosine = optim.make_schedule("cosine", 1.0, 100, warmup_steps=10)
    plain = optim.make_schedule("cosine", 1.0, 100)
    assert [float(cosine(t)) for t in (0, 4, 9, 50)] == pytest.approx(
        [float(plain(0)) * 0.1, float(plain(4)) * 0.5, float(plain(9)), float(plain(50))])
    section = ml_collections.ConfigDict({"learning_rate": 0.1, "warmup_steps": 3})
    params = {"w": np.ones(5, np.float32)}
    warm, _ = _run(optim.make(section, 100), params, steps=4)
    cold, _ = _run(optim.make(ml_collections.ConfigDict({"learning_rate": 0.1}), 100), params,
                   steps=4)
    # float32: the warmed update is -(0.1 x factor) x g against factor x (-0.1 x g), two
    # roundings apart (at most 2 ulp, 2.4e-7 relative): rtol 1e-6.
    for t, factor in enumerate((1 / 3, 2 / 3, 1.0, 1.0)):
        np.testing.assert_allclose(warm[t]["w"], factor * cold[t]["w"], rtol=1e-6)
    jax.tree.map(np.testing.assert_array_equal, cold[0],
                 _run(optim.make(ml_collections.ConfigDict({"learning_rate": 0.1,
                                                            "warmup_steps": 0}), 100), params)[0][0])
    with pytest.raises(config_lib.ConfigError, match="warmup_steps must be >= 0"):
        optim.make_schedule("constant", 0.1, warmup_steps=-1)


def test_input_power_scale_hand_computed():
    """Rows [3, 4] and [0, 0]: squared norms 25 and 0, mean P = 12.5."""
    x = jnp.array([[3.0, 4.0], [0.0, 0.0]])
    np.testing.assert_allclose(optim.input_power_scale(x, 5.0), 0.4, rtol=1e-7)
    # Below the cap the factor is exactly 1, and 0 turns the cap off.
    assert float(optim.input_power_scale(x, 12.5)) == 1.0
    assert float(optim.input_power_scale(x, 0.0)) == 1.0
    # Images are flattened per example: [2, 1, 2, 1] holds the same rows.
    np.testing.assert_allclose(optim.input_power_scale(x.reshape(2, 1, 2, 1), 5.0), 0.4,
                               rtol=1e-7)


def test_input_power_scale_is_held_out_of_the_gradient():
    x = jnp.array([[3.0, 4.0], [1.0, 0.0]])  # P = 13
    grad = jax.grad(lambda x: optim.input_power_scale(x, 6.5) * jnp.sum(x))(x)
    np.testing.assert_allclose(grad, np.full((2, 2), 0.5), rtol=1e-7)
