"""Exploration (session 31, issue 30's >= 0.75 lead): second stages on frozen EfficientNet-Lite0
features of all 70,000 Fashion-MNIST images (group5 + pooled at 96 px, the cache of
`benchmarks/pretrained.py --data=fashion_mnist --image-size=96 --cache=runs/feature_cache`):
k-means on the layers whitened to 64/128/256 (plain and spherical), a 20-NN majority vote of the
unwhitened k-means labels, and self-labelling (logistic regression on the most confident 30-70 %
per cluster). Results: BENCHMARKS.md, "The best method past 0.75". Kept as it was run:

  python docs/experiments/pretrained_selflabel.py runs/feature_cache/<key>.npz
"""
import sys, time, numpy as np, jax, jax.numpy as jnp
from jclust import cluster as jc, metrics, data as jdata
from sklearn.linear_model import LogisticRegression
d = np.load(sys.argv[1]); y = jdata.load("fashion_mnist").labels
g5, pooled = d["layer/group5"].astype(np.float32), d["layer/pooled"].astype(np.float32)
def sl2(parts):
    out = []
    for p in parts:
        p = (p - p.mean(0)) / np.maximum(p.std(0), 1e-12)
        out.append(p / np.maximum(np.linalg.norm(p, axis=1, keepdims=True), 1e-12))
    return np.concatenate(out, 1)
both = sl2([g5, pooled]); K = 10
def acc(l): return round(float(metrics.accuracy(y, np.asarray(l))), 4)
t = time.time()
km = jc.kmeans(jnp.asarray(both), K, key=jax.random.PRNGKey(0), n_init=10)
lab = np.asarray(km.labels); print("kmeans both", acc(lab), f"{time.time()-t:.0f}s", flush=True)
for pca in (64, 128, 256):
    m, pr = jc.fit_whitening(jnp.asarray(both), pca); f = np.asarray(jc.whiten(jnp.asarray(both), m, pr))
    for sph in (False, True):
        k2 = jc.kmeans(jnp.asarray(f), K, key=jax.random.PRNGKey(0), n_init=10, spherical=sph)
        print("whiten", pca, "spherical" if sph else "", acc(k2.labels), flush=True)
# kNN vote of k-means labels
nn = np.asarray(jc.knn(jnp.asarray(both), 20).indices)
for it in range(3):
    votes = np.apply_along_axis(lambda r: np.bincount(r, minlength=K), 1, lab[nn])
    lab2 = votes.argmax(1); print("knn vote", it, acc(lab2), flush=True)
print("knn purity vs truth", float((y[nn] == y[:, None]).mean()), flush=True)
# self-labelling with confident examples
dist = np.asarray(((both[:, None, :] if False else 0)))
cent = np.stack([both[lab == k].mean(0) for k in range(K)])
d2 = ((both ** 2).sum(1, keepdims=True) - 2 * both @ cent.T + (cent ** 2).sum(1))
cur = lab
for q in (0.3, 0.5, 0.7):
    conf = np.zeros(len(y), bool)
    margin = np.sort(d2, 1)[:, 1] - np.sort(d2, 1)[:, 0]
    for k in range(K):
        idx = np.flatnonzero(cur == k)
        conf[idx[np.argsort(-margin[idx])[:int(q * len(idx))]]] = True
    clf = LogisticRegression(C=0.1, max_iter=300).fit(both[conf], cur[conf])
    prob = clf.predict_proba(both); new = prob.argmax(1)
    print("selflabel q", q, "conf acc", acc(cur[conf]) if False else round(float((metrics.accuracy(y[conf], cur[conf]))), 4), "->", acc(new), flush=True)
    cur = new; d2 = -np.log(prob + 1e-9)
