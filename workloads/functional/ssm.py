"""Numpy reference of the state-space layers: causal depthwise conv1d with its rolling state, and
the selective scan in two forms that must agree.

The scan (Mamba, arXiv:2312.00752, Algorithm 2; Mamba-2/SSD, arXiv:2405.21060, section 6) on
channels ``c`` with state size ``n``::

    h_t = exp(dt_t * A) * h_{t-1} + dt_t * B_t * x_t        (per channel c, state n)
    y_t = sum_n C_t[n] * h_t[n]

Mamba-1 has a diagonal ``A`` per (channel, state); Mamba-2 one scalar per head, with ``B``/``C``
shared by the heads of a group: both are this recurrence with ``A``, ``B``, ``C`` broadcast.

* :func:`scan_recurrent` steps through time (what a decode step does);
* :func:`scan_chunked` is the SSD block decomposition: inside a chunk of ``chunk`` steps the
  output is a masked, decay-weighted (attention-like) product computed in parallel; between chunks
  only the state is carried. It is what a prefill kernel does, and it must equal the recurrence.
"""

from __future__ import annotations

import numpy as np

from ...errors import ShapeError


def softplus(x: np.ndarray) -> np.ndarray:
    return np.logaddexp(0.0, x)


def conv1d_causal(x: np.ndarray, w: np.ndarray, bias: np.ndarray | None,
                  state: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
    """Depthwise causal conv of ``x`` (b, t, c) with taps ``w`` (c, k), continuing from ``state``
    (b, k-1, c), the previous inputs (zeros at the start); returns (output, new state)."""
    b, _, c = x.shape
    k = w.shape[1]
    past = np.zeros((b, k - 1, c)) if state is None else state
    full = np.concatenate([past, x], axis=1)
    t = x.shape[1]
    out = sum(full[:, j:j + t, :] * w[:, j] for j in range(k))
    if bias is not None:
        out = out + bias
    return out, full[:, full.shape[1] - (k - 1):, :]


def scan_recurrent(x: np.ndarray, dt: np.ndarray, A: np.ndarray, B: np.ndarray, C: np.ndarray,
                   h0: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """x, dt (b, t, c); A (c, n); B, C (b, t, c or 1, n); h0 (b, c, n). Returns y (b, t, c), h_T."""
    b, t, c = x.shape
    h = np.zeros((b, c, A.shape[1])) if h0 is None else h0.copy()
    ys = np.empty((b, t, c))
    for i in range(t):
        h = np.exp(dt[:, i, :, None] * A) * h + (dt[:, i] * x[:, i])[:, :, None] * B[:, i]
        ys[:, i] = (h * C[:, i]).sum(-1)
    return ys, h


def scan_chunked(x: np.ndarray, dt: np.ndarray, A: np.ndarray, B: np.ndarray, C: np.ndarray,
                 h0: np.ndarray | None = None, chunk: int = 64) -> tuple[np.ndarray, np.ndarray]:
    """The same scan, ``chunk`` steps at a time in parallel (SSD's block decomposition)."""
    b, t, c = x.shape
    h = np.zeros((b, c, A.shape[1])) if h0 is None else h0.copy()
    ys = np.empty((b, t, c))
    for s0 in range(0, t, chunk):
        sl = slice(s0, min(t, s0 + chunk))
        logd = np.cumsum(dt[:, sl, :, None] * A, axis=1)  # (b, q, c, n): log decay from the chunk start
        q = logd.shape[1]
        causal = np.tril(np.ones((q, q), bool))[None, :, :, None, None]
        seg = np.where(causal, logd[:, :, None] - logd[:, None, :], -np.inf)  # (b, tq, ts, c, n)
        u = (dt[:, sl] * x[:, sl])[:, :, :, None] * B[:, sl]  # (b, q, c, n) inputs entering the state
        intra = (np.exp(seg) * u[:, None] * C[:, sl][:, :, None]).sum(axis=(2, 4))
        carried = (np.exp(logd) * h[:, None] * C[:, sl]).sum(-1)
        ys[:, sl] = intra + carried
        h = np.exp(logd[:, -1]) * h + (np.exp(logd[:, -1:] - logd) * u).sum(axis=1)
    return ys, h


def long_conv_causal(x: np.ndarray, h: np.ndarray, history: np.ndarray | None = None,
                     method: str = "fft") -> tuple[np.ndarray, np.ndarray]:
    """Causal long convolution per channel: ``y[t] = sum_{s <= t} h[t - s] u[s]`` over ``u`` = the
    ``history`` (b, s, c) followed by ``x`` (b, q, c); returns the ``q`` new outputs and the new
    history (``u``). ``fft``: zero-padded real FFTs of length ``2 T``; ``direct``: the sum."""
    u = x if history is None else np.concatenate([history, x], axis=1)
    total, q = u.shape[1], x.shape[1]
    if h.shape[0] < total:
        raise ShapeError(f"long convolution over {total} tokens needs a filter of at least that length, got {h.shape[0]}")
    hh = h[:total]
    if method == "fft":
        n = 2 * total
        y = np.fft.irfft(np.fft.rfft(u, n=n, axis=1) * np.fft.rfft(hh, n=n, axis=0)[None], n=n, axis=1)[:, :total]
    else:
        y = np.zeros_like(u)
        for t in range(total - q, total):  # only the new positions
            y[:, t] = np.einsum("bsc,sc->bc", u[:, : t + 1], hh[t::-1])
    return y[:, total - q:], u
