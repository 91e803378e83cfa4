"""Exploration (session 30, issue 30's >= 0.75 lead): second stages on a finished run's frozen
backbone features: spherical k-means and spectral clustering of the whitened features, then SCAN's
loss on a linear or MLP head (5 heads, 20 mined neighbours, the lowest-loss head kept).
Results: BENCHMARKS.md, "Every method with more steps on fm3k". Kept as it was run:

  python docs/experiments/scan_frozen_features.py runs/probe/swav_fm3k_m10k runs/panel/data/fm3k.npz
"""
import sys, time, numpy as np, jax, jax.numpy as jnp, optax
from jclust import predict, models, cluster as jc, metrics
wd, member = sys.argv[1], sys.argv[2]
p = predict.Predictor.from_workdir(wd)
d = np.load(member); x, y = d["image"], d["label"]
backbone = models.make_backbone(p.config.model)
params = jax.device_get(p.state.params["backbone"]); mstate = jax.device_get(p.state.model_state["backbone"])
h = jnp.asarray(np.concatenate([np.asarray(backbone.apply(params, mstate, jnp.asarray(x[i:i+1000]), False)[0]) for i in range(0, len(x), 1000)]))
K = 10
def acc(lab): return round(float(metrics.accuracy(y, np.asarray(lab))), 3)
res = {}
for pca in (32, 64):
    m, pr = jc.fit_whitening(h, pca); f = jc.whiten(h, m, pr)
    km = jc.kmeans(f, K, key=jax.random.PRNGKey(0), n_init=10, spherical=True)
    res[f"kmeans_pca{pca}"] = acc(km.labels)
    for nn in (10, 30):
        t = time.time()
        sp = jc.spectral_clustering(f, K, key=jax.random.PRNGKey(0), num_neighbours=nn)
        res[f"spectral_pca{pca}_nn{nn}"] = acc(sp.labels)
print(res, flush=True)

def scan(f, *, num_neighbours=20, heads=5, epochs=50, batch=256, lr=1e-3, entropy_weight=5.0, hidden=0, seed=0):
    n, dim = f.shape
    nbrs = jc.knn(f, num_neighbours).indices
    key = jax.random.PRNGKey(seed)
    def init(key):
        k1, k2 = jax.random.split(key)
        if hidden:
            return {"w1": jax.random.normal(k1, (heads, dim, hidden)) / np.sqrt(dim), "b1": jnp.zeros((heads, hidden)),
                    "w": jax.random.normal(k2, (heads, hidden, K)) / np.sqrt(hidden), "b": jnp.zeros((heads, K))}
        return {"w": jax.random.normal(k2, (heads, dim, K)) / np.sqrt(dim), "b": jnp.zeros((heads, K))}
    def logits(pr, a):
        if hidden:
            a = jax.nn.relu(jnp.einsum("bd,hde->hbe", a, pr["w1"]) + pr["b1"][:, None])
            return jnp.einsum("hbe,hek->hbk", a, pr["w"]) + pr["b"][:, None]
        return jnp.einsum("bd,hdk->hbk", a, pr["w"]) + pr["b"][:, None]
    def loss_fn(pr, a, b):
        pa, pb = jax.nn.softmax(logits(pr, a)), jax.nn.softmax(logits(pr, b))
        cons = -jnp.mean(jnp.log(jnp.sum(pa * pb, -1) + 1e-8), -1)
        mean = pa.mean(1)
        ent = -jnp.sum(mean * jnp.log(mean + 1e-8), -1)
        per_head = cons - entropy_weight * ent
        return per_head.sum(), per_head
    tx = optax.adam(lr)
    pr = init(key); opt = tx.init(pr)
    @jax.jit
    def step(pr, opt, idx, k):
        j = nbrs[idx, jax.random.randint(k, idx.shape, 0, num_neighbours)]
        (l, ph), g = jax.value_and_grad(loss_fn, has_aux=True)(pr, f[idx], f[j])
        u, opt = tx.update(g, opt, pr)
        return optax.apply_updates(pr, u), opt, ph
    rng = np.random.default_rng(seed); losses = []
    for e in range(epochs):
        perm = rng.permutation(n)
        for s in range(n // batch):
            key, k = jax.random.split(key)
            pr, opt, ph = step(pr, opt, jnp.asarray(perm[s*batch:(s+1)*batch]), k)
            losses.append(np.asarray(ph))
    ph = np.mean(losses[-20:], 0)
    out = jax.nn.softmax(logits(pr, f))
    labels = np.asarray(jnp.argmax(out, -1))
    return labels[int(np.argmin(ph))], [acc(l) for l in labels], np.asarray(out[int(np.argmin(ph))])

for pca in (32, 64):
    m, pr = jc.fit_whitening(h, pca); f = jc.whiten(h, m, pr)
    for hidden in (0, 128):
        for ew in (2.0, 5.0):
            t = time.time()
            lab, allh, _ = scan(f, hidden=hidden, entropy_weight=ew)
            print(f"scan pca{pca} hidden{hidden} ew{ew}: best-loss head {acc(lab)} heads {allh} {time.time()-t:.0f}s", flush=True)
