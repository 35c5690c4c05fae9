"""SVG-LP and HAF-SVG: training loss and sampling of many futures per clip."""

from __future__ import annotations

import operator
from contextlib import contextmanager, nullcontext

import torch
from torch import nn

from hafsvg_kernels import LSTM, HierarchicalGaussianLSTM

from ..config import HAFSVGConfig
from .dcgan64 import DCGANDecoder, DCGANEncoder
from .losses import kl_gaussian
from .vgg64 import VGGDecoder, VGGEncoder

BACKBONES = {"dcgan": (DCGANEncoder, DCGANDecoder), "vgg": (VGGEncoder, VGGDecoder)}

#: Rows (clips x samples) decoded at once when ``sample`` chooses the chunk itself.
SAMPLE_ROWS = 1600
#: BatchNorm modes of ``HAFSVG.sample``: "eval" (running statistics) or "batch" (SVG's generation
#: script, which leaves the encoder and decoder in train mode: per-batch statistics).
BATCHNORM_MODES = ("eval", "batch")


def skip_frames(skip_source: str, steps: int, n_past: int, device=None) -> torch.Tensor:
    """(steps,) index of the frame whose skip features decode step t (predicting frame t + 1) under
    teacher forcing: the input frame t while it is a context frame, then a fixed context frame
    ("last": x_k = frame n_past - 1; "svg": frame n_past - 2, SVG's loop), or always the input
    frame ("latest", SVG's ``--last_frame_skip``)."""
    t = torch.arange(steps, device=device)
    if skip_source == "latest":
        return t
    return t.clamp(max=n_past - (2 if skip_source == "svg" else 1))


@contextmanager
def batch_statistics(*modules: nn.Module):
    """Within the block the BatchNorm layers of ``modules`` normalise with each call's batch
    statistics, as in train mode, and leave their running statistics (and batch counters)
    untouched; their modes are restored afterwards."""
    norms = [m for mod in modules for m in mod.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    saved = [(m.training, m.track_running_stats) for m in norms]
    for m in norms:
        m.training, m.track_running_stats = True, False  # batch stats; running buffers neither read nor written
    try:
        yield
    finally:
        for m, (training, track) in zip(norms, saved):
            m.training, m.track_running_stats = training, track


def _count(value, name):
    """An integer count (an int, a numpy integer or an integer 0-dim tensor; not a bool nor a float) -> int."""
    if isinstance(value, bool) or (isinstance(value, torch.Tensor) and value.dtype == torch.bool):
        raise TypeError(f"{name} must be an integer, got {value!r}")
    try:
        return operator.index(value)
    except TypeError:
        raise TypeError(f"{name} must be an integer, got {type(value).__name__} {value!r}") from None


class HAFSVG(nn.Module):
    """HAF-SVG-G (``config.aligner``, ``config.groups = G``); SVG-LP with groups=1, no aligner.

    Submodules: ``encoder``, ``decoder`` (with ``decoder.aligners`` at the aligned levels),
    ``frame_predictor`` (SVG's ``lstm``), ``posterior`` and ``prior`` (hierarchical Gaussian
    LSTMs; their group j is SVG's ``gaussian_lstm`` reading [h, z^{1:j-1}]).
    """

    def __init__(self, config: HAFSVGConfig):
        super().__init__()
        self.config = c = config
        enc, dec = BACKBONES[c.backbone]
        self.encoder = enc(c.g_dim, c.channels, c.nf)
        self.decoder = dec(c.g_dim, c.channels, c.nf, c.levels, c.qk_channels, c.aligner_scale, c.value_from, c.backend)
        self.frame_predictor = LSTM(c.g_dim + c.z_dim, c.g_dim, c.rnn_size, c.predictor_layers, backend=c.backend)
        self.posterior = HierarchicalGaussianLSTM(
            c.g_dim, c.z_dim, c.rnn_size, c.posterior_layers, c.groups, backend=c.backend
        )
        self.prior = HierarchicalGaussianLSTM(c.g_dim, c.z_dim, c.rnn_size, c.prior_layers, c.groups, backend=c.backend)

    def _check_clip(self, x, name, min_frames):
        c = self.config
        if not isinstance(x, torch.Tensor) or not x.is_floating_point():
            raise TypeError(f"{name} must be a floating-point tensor (B, T, C, H, W)")
        if x.dim() != 5 or x.shape[2:] != (c.channels, 64, 64) or x.shape[1] < min_frames:
            raise ValueError(
                f"{name} has shape {tuple(x.shape)}; expected (B, T, {c.channels}, 64, 64) with T >= {min_frames}"
            )
        if x.is_meta:
            raise ValueError(f"{name} is a meta tensor (no data); pass frames on the model's device")

    def _check_device(self, x, name):
        """Refuse a tensor on another device than the model's parameters."""
        device = next(self.parameters()).device
        if x.device != device:
            raise ValueError(f"{name} is on {x.device} but the model is on {device}; move it with .to({str(device)!r})")

    @staticmethod
    def _check_eps(eps, shape, device):
        """Refuse posterior noise of another shape than (B, T - 1, z_dim), not floating or on another device."""
        if not isinstance(eps, torch.Tensor) or not eps.is_floating_point():
            what = eps.dtype if isinstance(eps, torch.Tensor) else type(eps).__name__
            raise TypeError(f"eps must be a floating-point tensor (B, T - 1, z_dim) = {shape}, got {what}")
        if tuple(eps.shape) != shape or eps.device != device:
            raise ValueError(
                f"eps has shape {tuple(eps.shape)} on {eps.device}; expected (B, T - 1, z_dim) = {shape} on x's "
                f"device {device}"
            )

    def _init_states(self, rows):
        return (
            self.frame_predictor.init_state(rows),
            self.posterior.init_state(rows),
            self.prior.init_state(rows),
        )

    def loss(self, x: torch.Tensor, eps: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        """The negative ELBO of a clip batch, with teacher forcing.

        Every frame after the first is predicted from its predecessor (SVG-LP's training loop);
        the decoder's skip features come from the previous frame while it is a context frame
        and afterwards from the frame ``config.skip_source`` names (see :func:`skip_frames`).
        The prior's groups are conditioned on the posterior's samples.

        Args:
            x: (B, T, C, 64, 64) in [0, 1], T >= 2.
            eps: (B, T - 1, z_dim) posterior noise, a floating-point tensor on x's device (cast to
                x's dtype); drawn when None.

        Returns:
            ``total`` = mse + beta * kl.sum(); ``mse`` summed over steps (each step's mean
            squared error); ``kl`` (G,) per group, summed over steps and averaged over the batch;
            ``prediction`` (B, T - 1, C, 64, 64).
        """
        c = self.config
        self._check_clip(x, "x", 2)
        B, T = x.shape[:2]
        if eps is None:
            eps = torch.randn(B, T - 1, c.z_dim, device=x.device, dtype=x.dtype)
        else:
            self._check_eps(eps, (B, T - 1, c.z_dim), x.device)
            eps = eps.to(x.dtype)
        h_all, skips = self.encoder(x.flatten(0, 1))
        h_all = h_all.view(B, T, -1)
        pred_state, post_state, prior_state = self._init_states(B)
        zeros = x.new_zeros(B, c.z_dim)
        kl = x.new_zeros(c.groups)
        gs = []
        for t in range(1, T):
            (z, mu, logvar), post_state = self.posterior.step(h_all[:, t], post_state, eps[:, t - 1])
            (_, mu_p, logvar_p), prior_state = self.prior.step(h_all[:, t - 1], prior_state, zeros, cond=z)
            g, pred_state = self.frame_predictor.step(torch.cat([h_all[:, t - 1], z], 1), pred_state)
            gs.append(g)
            kl = kl + kl_gaussian(mu, logvar, mu_p, logvar_p, c.groups)
        src = skip_frames(c.skip_source, T - 1, c.n_past, x.device)
        step_skips = [s.view(B, T, *s.shape[1:])[:, src].flatten(0, 1) for s in skips]
        prediction = self.decoder(torch.stack(gs, 1).flatten(0, 1), self.decoder.prepare(step_skips))
        prediction = prediction.view(B, T - 1, *x.shape[2:])
        mse = ((prediction - x[:, 1:]) ** 2).mean(dim=(0, 2, 3, 4)).sum()
        return {"total": mse + c.beta * kl.sum(), "mse": mse, "kl": kl, "prediction": prediction}

    def context_skip_frame(self, k: int) -> int:
        """Index of the context frame (of ``k``) whose skip features decode the first predicted
        frame: k - 1 ("last", "latest"), k - 2 ("svg"; ValueError when k < 2)."""
        if self.config.skip_source != "svg":
            return k - 1
        if k < 2:
            raise ValueError("skip_source 'svg' takes the skips from the second-to-last context frame: needs k >= 2")
        return k - 2

    def _encode_context(self, context, per_frame):
        """context (B, k, C, 64, 64) -> h (B, k, g_dim) and the four skips (B, k, C_l, H_l, W_l);
        ``per_frame``: each frame encoded in a call of its own (batch statistics per frame)."""
        B, k = context.shape[:2]
        if not per_frame:
            h, skips = self.encoder(context.flatten(0, 1))
            return h.view(B, k, -1), [s.view(B, k, *s.shape[1:]) for s in skips]
        frames = [self.encoder(context[:, j]) for j in range(k)]
        return torch.stack([h for h, _ in frames], 1), [torch.stack(level, 1) for level in zip(*(s for _, s in frames))]

    @torch.no_grad()
    def sample(self, context, n_future, n_samples, generator=None, *, noise=None, chunk_size=None, batchnorm="eval"):
        """Draw ``n_samples`` futures of ``n_future`` frames for each clip.

        The context is encoded once per clip, and the skip features and the aligner's K/V of the
        context frame ``config.skip_source`` names once per clip; the samples of a clip share them
        through the batch folding of :func:`hafsvg_kernels.aligned_attention` ("latest": from the
        second predicted frame on, each sample's own newest frame). In the context steps the
        posterior samples z and advances all three recurrent modules (SVG-LP); in the future steps
        z comes from the prior and each predicted frame is re-encoded. The module's mode is
        restored afterwards.

        Args:
            context: (B, k, C, 64, 64) in [0, 1], k >= 1 observed frames (k >= 2 for skip_source "svg"),
                floating point, on the model's device (another device, or meta, is refused); computed in
                the model's dtype (a float64 context on a float32 model is cast, as ``FastSampler`` does).
            n_future, n_samples: frames to predict and futures per clip, integers >= 1 (Python or numpy
                ints; a float or a bool is refused with a TypeError).
            generator: ``torch.Generator`` for the noise (same seed, same output).
            noise: (B, n_samples, k - 1 + n_future, z_dim) standard normal noise instead: step i's
                z (posterior in the context, prior after) uses ``noise[:, :, i]``.
            chunk_size: samples per chunk (default: as many as keep clips x samples <= 1600).
            batchnorm: "eval" (default): BatchNorm with its running statistics. "batch": as SVG's
                ``generate_svg_lp.py``, which leaves the encoder and decoder in train mode: each
                BatchNorm call normalises with the statistics of its batch, grouped as SVG's loop
                groups them (the clips of this call, one sample index at a time, each context frame
                encoded on its own); the running statistics are not changed. Needs B >= 2 and
                samples one sample index at a time (chunk_size None or 1).

        Returns:
            (B, n_samples, n_future, C, 64, 64) in [0, 1], in the context's dtype (computed in the model's,
            as ``FastSampler.sample`` returns it), on the model's device.
        """
        c = self.config
        self._check_clip(context, "context", 1)
        self._check_device(context, "context")
        n_future, n_samples = _count(n_future, "n_future"), _count(n_samples, "n_samples")
        if n_future < 1 or n_samples < 1:
            raise ValueError(f"n_future ({n_future}) and n_samples ({n_samples}) must be >= 1")
        if batchnorm not in BATCHNORM_MODES:
            raise ValueError(f"batchnorm must be one of {BATCHNORM_MODES}, got {batchnorm!r}")
        out_dtype, context = context.dtype, context.to(next(self.parameters()).dtype)
        B, k = context.shape[:2]
        skip_frame = self.context_skip_frame(k)
        per_batch = batchnorm == "batch"
        if per_batch and (B < 2 or chunk_size not in (None, 1)):
            raise ValueError(
                "batchnorm='batch' normalises over the clips of one sample index (SVG's grouping): "
                f"needs at least 2 clips (got {B}) and chunk_size None or 1 (got {chunk_size})"
            )
        shape = (B, n_samples, k - 1 + n_future, c.z_dim)
        if noise is None:
            dev = generator.device if generator is not None else context.device
            noise = torch.randn(shape, generator=generator, device=dev, dtype=context.dtype)
        elif tuple(noise.shape) != shape:
            raise ValueError(f"noise has shape {tuple(noise.shape)}, expected {shape}")
        noise = noise.to(context.device, context.dtype)
        chunk = 1 if per_batch else chunk_size or max(1, SAMPLE_ROWS // B)
        was_training = self.training
        self.eval()
        try:
            with batch_statistics(self.encoder, self.decoder) if per_batch else nullcontext():
                h_ctx, skips = self._encode_context(context, per_frame=per_batch)
                ctx = self.decoder.prepare([s[:, skip_frame] for s in skips])
                out = context.new_empty(B, n_samples, n_future, *context.shape[2:])
                for s0 in range(0, n_samples, chunk):
                    n = min(chunk, n_samples - s0)
                    out[:, s0 : s0 + n] = self._sample_chunk(h_ctx, ctx, noise[:, s0 : s0 + n], n_future)
        finally:
            self.train(was_training)
        return out.to(out_dtype)

    def _sample_chunk(self, h_ctx, ctx, noise, n_future):
        """h_ctx (B, k, g_dim) per clip; noise (B, n, k - 1 + n_future, z_dim) -> (B, n, n_future, C, H, W)."""
        B, n = noise.shape[:2]
        k = h_ctx.shape[1]
        rows = B * n
        per_sample = lambda t: t.unsqueeze(1).expand(B, n, *t.shape[1:]).reshape(rows, *t.shape[1:])  # noqa: E731
        eps = noise.reshape(rows, -1, noise.shape[-1])
        pred_state, post_state, prior_state = self._init_states(rows)
        for i in range(1, k):
            h = per_sample(h_ctx[:, i - 1])
            (z, _, _), post_state = self.posterior.step(per_sample(h_ctx[:, i]), post_state, eps[:, i - 1])
            _, prior_state = self.prior.step(h, prior_state, torch.zeros_like(z), cond=z)
            _, pred_state = self.frame_predictor.step(torch.cat([h, z], 1), pred_state)
        h = per_sample(h_ctx[:, -1])
        frames = []
        samples_per_clip = n  # rows of ctx: per clip, or per row once "latest" takes each sample's newest frame
        for f in range(n_future):
            if f:
                h, skips = self.encoder(frames[-1])
                if self.config.skip_source == "latest":
                    ctx, samples_per_clip = self.decoder.prepare(skips), 1
            (z, _, _), prior_state = self.prior.step(h, prior_state, eps[:, k - 1 + f])
            g, pred_state = self.frame_predictor.step(torch.cat([h, z], 1), pred_state)
            frames.append(self.decoder(g, ctx, samples_per_clip=samples_per_clip))
        return torch.stack(frames, 1).view(B, n, n_future, *frames[0].shape[1:])
