"""fntrain.optim and the optimizer section's groups, EMA, reduce_on_plateau and optax:NAME."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from pydantic import TypeAdapter

import fntrain as ft
from fntrain import optim
from fntrain.config import OptimizerConfig


def optimizer_section(raw: dict):
    return TypeAdapter(OptimizerConfig).validate_python(raw)


# --------------------------------------------------------------------------- EMA


@pytest.mark.parametrize("warmup", [False, True])
def test_ema_matches_a_hand_computed_average(warmup):
    """Ten updates of random size: the EMA equals the average written out in float64."""
    rng = np.random.default_rng(0)
    p0 = rng.normal(size=(3, 2))
    updates = rng.normal(size=(10, 3, 2))
    decay = 0.8
    tx = optax.chain(optax.identity(), optim.ema(decay, warmup=warmup))
    params = {"w": jnp.asarray(p0, jnp.float32)}
    state = tx.init(params)
    for u in updates:
        out, state = tx.update({"w": jnp.asarray(u, jnp.float32)}, state, params)
        np.testing.assert_array_equal(out["w"], jnp.asarray(u, jnp.float32))  # updates pass through
        params = optax.apply_updates(params, out)

    expected, p = p0.copy(), p0.copy()
    for t, u in enumerate(updates):
        p = p + u
        d = min(decay, (1 + t) / (10 + t)) if warmup else decay
        expected = d * expected + (1 - d) * p
    ema = optim.ema_params(state, params)
    # float32 arithmetic over ten updates of O(1) values: 1e-6 relative, 1e-6 absolute near 0.
    np.testing.assert_allclose(ema["w"], expected, rtol=1e-6, atol=1e-6)
    assert int(state[1].count) == 10


def test_ema_params_is_none_without_an_ema_and_the_params_where_masked():
    params = {"a": jnp.ones(2), "b": jnp.zeros(2)}
    assert optim.ema_params(optax.adam(0.1).init(params), params) is None
    tx = optax.masked(optim.ema(0.5), {"a": True, "b": False})
    state = tx.init(params)
    _, state = tx.update({"a": jnp.ones(2), "b": jnp.ones(2)}, state, params)
    ema = optim.ema_params(state, {"a": jnp.full(2, 2.0), "b": jnp.full(2, 7.0)})
    np.testing.assert_array_equal(ema["a"], 1.5)  # 0.5 * 1 + 0.5 * (1 + 1)
    np.testing.assert_array_equal(ema["b"], 7.0)  # masked out: the parameters themselves


def test_ema_from_the_config_is_chained_after_the_update():
    c = optimizer_section({"name": "sgd", "learning_rate": 0.5, "ema_decay": 0.9})
    tx, _ = c.build(10)
    params = {"w": jnp.full((2, 2), 1.0)}
    state = tx.init(params)
    updates, state = tx.update({"w": jnp.full((2, 2), 2.0)}, state, params)
    np.testing.assert_allclose(updates["w"], -1.0)
    # The average moves towards the new parameters 1 - 0.5 * 2 = 0: 0.9 * 1 + 0.1 * 0.
    np.testing.assert_allclose(optim.ema_params(state, params)["w"], 0.9, rtol=1e-6)
    assert c.eval_params == "ema"
    assert optimizer_section({"ema_decay": 0.9, "ema_eval": "raw"}).eval_params == "raw"
    assert optimizer_section({}).eval_params == "raw"


# --------------------------------------------------------------------------- groups


def mlp_problem():
    net = ft.nn.mlp((8, 8), 3)  # flatten_0 dense_1 relu_2 dense_3 relu_4 dense_5
    x = jax.random.normal(jax.random.key(0), (16, 5))
    y = jnp.arange(16) % 3
    params, state = net.init(jax.random.key(1), x)
    return net, params, state, (x, y)


def test_group_labels_take_the_first_match():
    params = {"dense_0": {"w": 0, "b": 0}, "dense_2": {"w": 0, "b": 0}}
    labels = optim.group_labels([r"^dense_0/", r"/b$"])(params)
    assert labels == {"dense_0": {"w": "group_0", "b": "group_0"}, "dense_2": {"w": "default", "b": "group_1"}}


def test_a_frozen_group_is_bit_identical_after_training_and_has_no_optimizer_state():
    net, params, state, batch = mlp_problem()
    c = optimizer_section({"name": "adamw", "learning_rate": 1e-2, "weight_decay": 0.1, "clip_grad_norm": 1.0,
                           "ema_decay": 0.9, "groups": [{"match": "^dense_1/", "frozen": True}]})
    tx, _ = c.build(10, params)
    ts = ft.TrainState.create(params, state, tx, key=jax.random.key(0))
    step = ft.make_train_step(ft.supervised_loss(net, ft.losses.softmax_cross_entropy), tx, donate=False)
    for _ in range(5):
        ts, _ = step(ts, batch)
    jax.tree.map(np.testing.assert_array_equal, ts.params["dense_1"], params["dense_1"])
    assert not np.array_equal(ts.params["dense_3"]["w"], params["dense_3"]["w"])
    paths = [jax.tree_util.keystr(p) for p, _ in jax.tree_util.tree_leaves_with_path(ts.opt_state)]
    assert paths and not [p for p in paths if "dense_1" in p], paths
    # The moments hold exactly the trainable parameters: mu and nu of dense_3 and dense_5.
    trainable = sum(a.size for k, layer in params.items() if k != "dense_1" for a in jax.tree.leaves(layer))
    big = sum(a.size for a in jax.tree.leaves(ts.opt_state) if a.ndim)
    assert big == 3 * trainable  # adam's mu and nu, and the EMA


def test_a_learning_rate_scale_group_moves_by_exactly_that_factor_with_sgd():
    net, params, state, batch = mlp_problem()
    c = optimizer_section({"name": "sgd", "learning_rate": 0.1, "weight_decay": 0.5,
                           "groups": [{"match": "^dense_3/", "learning_rate_scale": 0.1},
                                      {"match": "^dense_5/b$", "weight_decay": 0.0}]})
    tx, _ = c.build(10, params)
    loss_fn = ft.supervised_loss(net, ft.losses.softmax_cross_entropy)
    ts = ft.TrainState.create(params, state, tx, key=jax.random.key(0))
    ts, _ = ft.make_train_step(loss_fn, tx, donate=False)(ts, batch)
    grads = jax.grad(lambda p: loss_fn(p, state, batch, jax.random.fold_in(jax.random.key(0), 0))[0])(params)
    lr, wd = 0.1, 0.5

    def sgd(p, g, lr, wd):  # weight decay added to the gradient, on matrices only
        return np.asarray(p) - lr * (np.asarray(g) + (wd * np.asarray(p) if np.ndim(p) > 1 else 0.0))

    # float32 update of O(1) values: 1e-6.
    expected = {
        "dense_1": {k: sgd(params["dense_1"][k], grads["dense_1"][k], lr, wd) for k in ("w", "b")},
        "dense_3": {k: sgd(params["dense_3"][k], grads["dense_3"][k], 0.1 * lr, wd) for k in ("w", "b")},
        "dense_5": {"w": sgd(params["dense_5"]["w"], grads["dense_5"]["w"], lr, wd),
                    "b": sgd(params["dense_5"]["b"], grads["dense_5"]["b"], lr, 0.0)},
    }
    for layer in expected:
        for k in expected[layer]:
            np.testing.assert_allclose(ts.params[layer][k], expected[layer][k], rtol=1e-6, atol=1e-7, err_msg=f"{layer}/{k}")
    moved = lambda layer: np.asarray(ts.params[layer]["w"]) - np.asarray(params[layer]["w"])  # noqa: E731
    assert np.abs(moved("dense_3")).max() > 0


def test_a_group_that_matches_nothing_is_a_config_error_naming_it():
    _, params, _, _ = mlp_problem()
    c = optimizer_section({"groups": [{"match": "^dense_1/"}, {"match": "^embed", "frozen": True}]})
    with pytest.raises(ft.ConfigError, match=r"optimizer\.groups\[1\]\.match: '\^embed' matches no parameter path .*dense_1/w"):
        c.build(10, params)
    shadowed = optimizer_section({"groups": [{"match": "dense"}, {"match": "^dense_1/"}]})
    with pytest.raises(ft.ConfigError, match=r"optimizer\.groups\[1\]\.match: .* only parameters an earlier group takes"):
        shadowed.build(10, params)
    assert c.group_of("dense_1/w") == "groups[0] as the optimizer" and c.group_of("dense_3/w") == ""
    assert optimizer_section({"groups": [{"match": "x", "learning_rate_scale": 0.1, "weight_decay": 0.0}]}).group_of("x") == \
        "groups[0] lr x0.1, weight_decay 0"


# --------------------------------------------------------------------------- reduce on plateau


def test_plateau_scale_follows_optax_reduce_on_plateau_fed_the_same_values():
    kwargs = dict(factor=0.5, patience=2, rtol=1e-4, atol=0.0, cooldown=1, min_scale=0.2)
    c = optimizer_section({"name": "sgd", "learning_rate": 0.1, "reduce_on_plateau": {"patience": 2, "factor": 0.5,
                           "cooldown": 1, "min_scale": 0.2}})
    tx, _ = c.build(10)
    observe = c.reduce_on_plateau.observer()
    reference = optax.contrib.reduce_on_plateau(**kwargs)
    params = {"w": jnp.ones(3)}
    state, ref_state = tx.init(params), reference.init(params)
    values = [1.0, 0.9, 0.95, 0.95, 0.95, 0.95, 0.95, 0.95, 0.8, 0.9]
    scales = []
    for v in values:
        state = observe(state, v)
        _, ref_state = reference.update({}, ref_state, value=v)
        assert float(optim.plateau_scale_of(state)) == float(ref_state.scale)
        scales.append(float(ref_state.scale))
    assert scales[-1] == 0.25 and min(scales) == 0.25  # two drops
    updates, _ = tx.update({"w": jnp.full(3, 2.0)}, state, params)
    np.testing.assert_allclose(updates["w"], -0.1 * 0.25 * 2.0, rtol=1e-6)
    # mode max watches -value: rising values are improvements.
    up = optimizer_section({"reduce_on_plateau": {"mode": "max", "patience": 1}})
    tx, _ = up.build(10)
    s = tx.init(params)
    for v in (0.1, 0.2, 0.3):
        s = up.reduce_on_plateau.observer()(s, v)
    assert float(optim.plateau_scale_of(s)) == 1.0


# --------------------------------------------------------------------------- optax:NAME


@pytest.mark.parametrize(
    "raw, expected",
    [
        ({"name": "optax:lion", "learning_rate": 0.1, "kwargs": {"b1": 0.8}}, optax.lion(0.1, b1=0.8, weight_decay=0.0)),
        ({"name": "optax:lamb", "learning_rate": 0.1, "weight_decay": 0.01},
         optax.lamb(0.1, weight_decay=0.01, mask=lambda p: jax.tree.map(lambda a: a.ndim > 1, p))),
        ({"name": "optax:adabelief", "learning_rate": 0.1, "weight_decay": 0.01},
         optax.chain(optax.add_decayed_weights(0.01, mask=lambda p: jax.tree.map(lambda a: a.ndim > 1, p)), optax.adabelief(0.1))),
        ({"name": "optax:contrib.prodigy", "learning_rate": 1.0}, optax.contrib.prodigy(1.0, weight_decay=0.0)),
        ({"name": "optax:rprop", "learning_rate": 0.1}, optax.rprop(0.1)),
    ],
    ids=["lion-kwargs", "lamb-decoupled-decay", "adabelief-added-decay", "contrib", "number-only-learning-rate"],
)
def test_an_optax_alias_by_name_is_that_optimizer(raw, expected):
    params = {"w": jnp.arange(4.0).reshape(2, 2), "b": jnp.ones(2)}
    grads = {"w": jnp.array([[0.5, -1.0], [2.0, 0.1]]), "b": jnp.array([0.3, -0.2])}
    tx, _ = optimizer_section(raw).build(10)
    got_state, want_state = tx.init(params), expected.init(params)
    for _ in range(3):
        got, got_state = tx.update(grads, got_state, params)
        want, want_state = expected.update(grads, want_state, params)
        for k in params:
            np.testing.assert_allclose(got[k], want[k], rtol=1e-6, atol=1e-8, err_msg=k)


def test_optax_alias_errors_name_the_key():
    with pytest.raises(Exception, match=r"b3: not a parameter of optax\.lion\(learning_rate, b1=0\.9, b2=0\.99, .*weight_decay"):
        optimizer_section({"name": "optax:lion", "kwargs": {"b3": 0.5}})
    with pytest.raises(Exception, match=r"unknown optimizer 'lamb'; did you mean 'optax:lamb'\?"):
        optimizer_section({"name": "lamb"})
    with pytest.raises(Exception, match=r"unknown optax optimizer 'adabeleif'; did you mean 'optax:adabelief'\?"):
        optimizer_section({"name": "optax:adabeleif"})
    with pytest.raises(Exception, match=r"kwargs: optax\.lion\(.*\) refused them"):
        optimizer_section({"name": "optax:lion", "kwargs": {"mu_dtype": "not-a-dtype"}})


# --------------------------------------------------------------------------- populations


def test_a_population_of_train_steps_vmaps_with_every_recipe_on():
    """vmap over the TrainState of a step with a GRU, 2 microbatches, groups (one frozen), the
    plateau scale and the EMA, with the learning rate injected per member
    (optax.inject_hyperparams): each member equals its own unbatched step."""
    net = ft.nn.rnn(3, hidden_size=8)
    x = jax.random.normal(jax.random.key(0), (8, 5))
    y = jnp.arange(8) % 3
    params, state = net.init(jax.random.key(1), x)
    c = optimizer_section({"name": "sgd", "clip_grad_norm": 1.0, "ema_decay": 0.9, "reduce_on_plateau": {"patience": 1},
                           "groups": [{"match": "^gru_1/wh$", "frozen": True}, {"match": "^dense_", "learning_rate_scale": 0.5}]})
    tx, _ = c.build(10, params)
    opt = optax.chain(optax.inject_hyperparams(optax.scale)(step_size=1.0), tx)  # a per-member factor
    loss_fn = ft.supervised_loss(net, ft.losses.softmax_cross_entropy)
    step = ft.make_step(loss_fn, opt, accumulate_steps=2)

    def member(scale, seed):
        ts = ft.TrainState.create(params, state, opt, key=jax.random.key(seed))
        return ts._replace(opt_state=(ts.opt_state[0]._replace(hyperparams={"step_size": jnp.float32(scale)}), ts.opt_state[1]))

    members = [member(s, i) for i, s in enumerate((1.0, 0.5, 2.0))]
    population = jax.tree.map(lambda *a: jnp.stack(a), *members)
    batched, metrics = jax.jit(jax.vmap(step, in_axes=(0, None)))(population, (x, y))
    for i, ts in enumerate(members):
        single, m = jax.jit(step)(ts, (x, y))
        # The same float32 computation, batched: XLA may order a batched matmul's sums differently.
        np.testing.assert_allclose(metrics["loss"][i], m["loss"], rtol=1e-6)
        for a, b in zip(jax.tree.leaves((batched.params, batched.opt_state)), jax.tree.leaves((single.params, single.opt_state))):
            np.testing.assert_allclose(a[i], b, rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(batched.params["gru_1"]["wh"], population.params["gru_1"]["wh"])  # frozen
    # The plateau observer vmaps too: each member fed its own validation losses (patience 1:
    # member 0 improves and keeps its scale, the others drop to 0.1).
    observe = c.reduce_on_plateau.observer()
    first, second = jnp.array([1.0, 2.0, 3.0]), jnp.array([0.5, 2.0, 4.0])
    observed = jax.vmap(observe)(jax.vmap(observe)(batched.opt_state, first), second)
    np.testing.assert_allclose(optim.plateau_scale_of(observed), [1.0, 0.1, 0.1], rtol=1e-6)
    for i in range(3):
        single = observe(observe(jax.tree.map(lambda a: a[i], batched.opt_state), first[i]), second[i])
        assert float(optim.plateau_scale_of(single)) == float(optim.plateau_scale_of(observed)[i])
    assert not np.allclose(batched.params["dense_2"]["w"][1], batched.params["dense_2"]["w"][2])


def test_an_argument_of_the_alias_outside_kwargs_says_where_it_goes():
    with pytest.raises(Exception, match=r"b1: the arguments of optax\.lion go in kwargs, e\.g\. optimizer\.kwargs\.b1=0\.95"):
        optimizer_section({"name": "optax:lion", "b1": 0.95})
