"""Exploration (session 31): spherical k-means on the Lite0 layers whitened to 64, three k-means
seeds, then 5 rounds of a k-NN majority vote (k = 10, 20, 50; neighbours in the whitened or the
unwhitened space). What became `jclust.methods.pretrained_kmeans`. Kept as it was run:

  python docs/experiments/pretrained_knn_vote.py runs/feature_cache/<key>.npz
"""
import sys, numpy as np, jax, jax.numpy as jnp
from jclust import cluster as jc, metrics, data as jdata
d = np.load(sys.argv[1]); y = jdata.load("fashion_mnist").labels
g5, pooled = d["layer/group5"].astype(np.float32), d["layer/pooled"].astype(np.float32)
def sl2(parts):
    out = []
    for p in parts:
        p = (p - p.mean(0)) / np.maximum(p.std(0), 1e-12)
        out.append(p / np.maximum(np.linalg.norm(p, axis=1, keepdims=True), 1e-12))
    return np.concatenate(out, 1)
both = jnp.asarray(sl2([g5, pooled])); K = 10
def acc(l): return round(float(metrics.accuracy(y, np.asarray(l))), 4)
m, pr = jc.fit_whitening(both, 64); f = jc.l2_normalize(jc.whiten(both, m, pr))
nn = {s: np.asarray(jc.knn(sp, 50).indices) for s, sp in (("white", f), ("both", both))}
for s in nn: print(s, "50-NN purity", round(float((y[nn[s]] == y[:, None]).mean()), 4), "20-NN", round(float((y[nn[s][:, :20]] == y[:, None]).mean()), 4), flush=True)
for seed in (0, 1, 2):
    lab = np.asarray(jc.kmeans(f, K, key=jax.random.PRNGKey(seed), n_init=10, spherical=True).labels)
    out = [acc(lab)]
    for s in nn:
        for k in (10, 20, 50):
            cur = lab
            accs = []
            for it in range(5):
                votes = np.zeros((len(y), K)); np.add.at(votes, (np.repeat(np.arange(len(y)), k), cur[nn[s][:, :k]].ravel()), 1)
                cur = votes.argmax(1); accs.append(acc(cur))
            out.append(f"{s} k{k}: {accs}")
    print("seed", seed, out, flush=True)
