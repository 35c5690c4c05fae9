"""Fast sampling of many futures per clip, and streaming best-of-N evaluation (SPEC §2, §3).

:class:`FastSampler` computes what :meth:`hafsvg.models.HAFSVG.sample` computes (same contract,
same noise layout; the reference stays the reference) with these levers:

* every recurrent step and the aligner's attention go through ``hafsvg_kernels`` with the
  sampler's ``backend`` (passed to the ops; the model's own ``backend`` attributes are untouched);
* per clip, once: the context encoding, the aligner's K/V, and each decoder block's convolution
  over F_e plus bias (:mod:`hafsvg.split_conv`), broadcast over the clip's samples;
* samples are processed in chunks sized by ``memory_budget`` (:meth:`FastSampler.chunk_samples`);
* ``noise="kernel"``: with no noise passed in, ε is drawn inside the recurrent kernels from a seed
  (Philox with Triton): reproducible per seed and chunking, but not torch's numbers;
* ``graphs=True`` (CUDA only): one future step (prior, predictor, decoder, re-encoding of the
  frame) is captured once per chunk size in a CUDA graph with static buffers and replayed per
  step. ``noise="torch"``: each step's ε is copied into a static buffer before the replay.
  ``noise="kernel"``: the prior's step reads its Philox offset from a static int64 device tensor
  (a device offset of ``hafsvg_kernels.gaussian_lstm_step``; the Triton backend is needed under
  capture), set to the chunk's first future counter before its first replay and advanced by the
  graph itself after each draw. The Philox seed is a launch constant of the graph: graphs are
  captured afresh in every call (see ``_GraphSteps``), so it is that call's seed. Counters are
  consumed in the eager path's order, so graphs and eager sampling give the same ε for the same
  generator (and the same chunking);
* ``dtype=torch.bfloat16`` (or float16): the model runs under CUDA autocast; the recurrent state
  stays in the model's dtype.

:meth:`FastSampler.best_of_n` streams: each predicted frame is scored (SSIM, PSNR) against the
target on the device as soon as it is decoded and a running best is kept per clip, so neither all
samples nor a whole chunk of frames is ever held, and nothing goes to the host.

The split decoder weights (BatchNorm folded in) are a snapshot taken at construction; encoder and
recurrent weights are read at each call. Build a new sampler after changing the model's weights.
"""

from __future__ import annotations

from contextlib import contextmanager, nullcontext

import torch
from tqdm import tqdm

from hafsvg_kernels import gaussian_lstm_step, lstm_step

from .metrics import BestOfN, psnr, ssim
from .models import HAFSVG
from .split_conv import SplitConv, SplitConvDecoder
from .stages import Stages

__all__ = ["CPU_MEMORY_BUDGET", "CUDA_MEMORY_FRACTION", "FastSampler"]

#: Bytes of activations a chunk may use on a CPU when no ``memory_budget`` is given.
CPU_MEMORY_BUDGET = 2 << 30
#: Fraction of the free CUDA memory a chunk may use when no ``memory_budget`` is given.
CUDA_MEMORY_FRACTION = 0.5
#: Activation bytes per row counted by a dry run are multiplied by this (temporaries, buffers).
ACTIVATION_FACTOR = 3
#: Eager runs of the captured step before capture (kernel compilation, allocator warm-up).
GRAPH_WARMUP = 3
METRICS = {"ssim": ssim, "psnr": psnr}


def _tensors(tree):
    """The tensors of a nested tuple of recurrent states, in order."""
    if isinstance(tree, torch.Tensor):
        return [tree]
    return [t for sub in tree for t in _tensors(sub)]


class FastSampler:
    """Fast :meth:`HAFSVG.sample` and streaming best-of-N for one model.

    Args:
        model: the model (sampling runs in eval mode; its mode is restored afterwards).
        backend: ``hafsvg_kernels`` backend of the recurrent steps and the attention.
        dtype: None (the model's dtype) or torch.bfloat16/float16 (CUDA autocast).
        graphs: capture one future step in a CUDA graph (CUDA only). With ``noise="kernel"`` the
            graph reads the Philox offset from device memory (needs the Triton backend) and draws
            the eager path's numbers for the same generator.
        memory_budget: bytes of activations per chunk (default: a fraction of the free CUDA
            memory on a GPU, :data:`CPU_MEMORY_BUDGET` on a CPU).
        noise: where ε comes from when none is passed: "torch" (``torch.randn`` with the
            generator, the reference's numbers) or "kernel" (drawn in the recurrent kernels).
    """

    def __init__(self, model: HAFSVG, *, backend="auto", dtype=None, graphs=False, memory_budget=None,
                 noise="torch"):  # fmt: skip
        p = next(model.parameters())
        self.model, self.backend, self.device, self.model_dtype = model, backend, p.device, p.dtype
        self.dtype = p.dtype if dtype is None else dtype
        if self.dtype != p.dtype:
            if self.dtype not in (torch.bfloat16, torch.float16):
                raise ValueError(f"dtype must be None, the model's {p.dtype}, bfloat16 or float16; got {self.dtype}")
            if self.device.type != "cuda":
                raise ValueError(f"dtype {self.dtype} runs under CUDA autocast: needs CUDA (model on {self.device})")
        if noise not in ("torch", "kernel"):
            raise ValueError(f"noise must be 'torch' or 'kernel', got {noise!r}")
        if graphs and self.device.type != "cuda":
            raise ValueError(f"graphs=True needs CUDA (CUDA graphs); the model is on {self.device}")
        if memory_budget is not None and memory_budget <= 0:
            raise ValueError(f"memory_budget must be a positive number of bytes, got {memory_budget}")
        self.graphs, self.memory_budget, self.noise = graphs, memory_budget, noise
        self.stages = Stages(self.device)
        self.decoder = SplitConvDecoder(model.decoder, backend)
        self.decoder.stage = self.stages
        self._bytes_per_row = None
        self._seed, self._offset = 0, 0

    # ---- public --------------------------------------------------------------------------------

    @torch.no_grad()
    def sample(self, context, n_future, n_samples, generator=None, noise=None, *, progress=False):
        """``n_samples`` futures of ``n_future`` frames per clip, as :meth:`HAFSVG.sample`.

        Args:
            context: (B, k, C, 64, 64) in [0, 1].
            generator: ``torch.Generator`` for the noise.
            noise: (B, n_samples, k - 1 + n_future, z_dim) standard normal noise (step i's z uses
                ``noise[:, :, i]``), or None to draw it (see ``noise`` of the constructor; with
                ``noise="kernel"`` one Philox seed is drawn from ``generator`` per call and the
                counters run on over the chunks, so the numbers depend on the chunk size).
            progress: show a tqdm bar over chunks x steps.

        Returns:
            (B, n_samples, n_future, C, 64, 64) in [0, 1], context's dtype, on the model's device.
        """
        self.model._check_clip(context, "context", 1)
        shape = (context.shape[0], max(n_samples, 0), max(n_future, 0), *context.shape[2:])
        out = torch.empty(shape, device=self.device, dtype=context.dtype)

        def keep(s0, f, frame):
            out[:, s0 : s0 + frame.shape[1], f] = frame

        self._run(context, n_future, n_samples, generator, noise, keep, progress)
        return out

    @torch.no_grad()
    def best_of_n(self, context, target, n_samples, generator=None, noise=None, *, progress=False):
        """Best-of-``n_samples`` SSIM and PSNR per clip, streamed (SPEC §2).

        Args:
            context: (B, k, C, 64, 64); target: (B, T, C, 64, 64) ground truth of the T predicted
                frames; generator, noise, progress: as in :meth:`sample` (n_future = T).

        Returns:
            {"ssim": BestOfN, "psnr": BestOfN} as :func:`hafsvg.metrics.evaluate_samples` returns
            for the materialized samples (index (B,), per_clip (B,), per_step (T,), overall ()).
        """
        self.model._check_clip(context, "context", 1)
        B = context.shape[0]
        if not isinstance(target, torch.Tensor):
            raise TypeError("target must be a tensor (B, T, C, 64, 64)")
        if target.dim() != 5 or target.shape[0] != B or target.shape[2:] != context.shape[2:] or target.shape[1] < 1:
            raise ValueError(f"target has shape {tuple(target.shape)}; expected ({B}, T, *{tuple(context.shape[2:])})")
        T = target.shape[1]
        target = target.to(self.device)
        best = {}
        chunk = {}

        def score(s0, f, frame):
            with self.stages("metrics"), torch.autocast(self.device.type, enabled=False):
                tgt = target[:, f].unsqueeze(1).expand_as(frame)
                for name, fn in METRICS.items():
                    s = fn(frame, tgt)  # (B, n)
                    if f == 0:
                        chunk[name] = s.new_empty(*s.shape, T)
                    chunk[name][..., f] = s
                if f == T - 1:
                    for name, scores in chunk.items():
                        best[name] = _fold(best.get(name), scores, s0)

        self._run(context, T, n_samples, generator, noise, score, progress)
        return {name: BestOfN(idx, mean, steps.mean(0), mean.mean()) for name, (mean, idx, steps) in best.items()}

    def chunk_samples(self, clips: int, n_samples: int) -> int:
        """Samples per chunk: as many as keep clips x samples x :meth:`bytes_per_row` within the
        memory budget (at least 1)."""
        budget = self.memory_budget
        if budget is None:
            if self.device.type == "cuda":
                budget = CUDA_MEMORY_FRACTION * torch.cuda.mem_get_info(self.device)[0]
            else:
                budget = CPU_MEMORY_BUDGET
        return max(1, min(n_samples, int(budget // (self.bytes_per_row() * clips))))

    def bytes_per_row(self) -> int:
        """Estimated activation bytes of one row (one sample of one clip) in a future step: the
        outputs of every layer of one decode and one re-encode, counted in a one-row dry run (in
        the sampling dtype), times :data:`ACTIVATION_FACTOR`."""
        if self._bytes_per_row is None:
            counted = []
            hook = lambda mod, args, out: counted.append(out.numel() * out.element_size())  # noqa: E731
            mods = [m for m in (*self.model.encoder.modules(), *self.decoder.modules())
                    if isinstance(m, SplitConv) or not list(m.children())]  # fmt: skip
            handles = [m.register_forward_hook(hook) for m in mods]
            c, was_training, timing = self.model.config, self.model.training, self.stages.timing
            self.model.eval()  # BatchNorm statistics must not move
            self.stages.timing = False  # the dry run is not part of any stage
            try:
                with torch.no_grad(), self._autocast():
                    x = torch.zeros(1, 1, c.channels, 64, 64, device=self.device, dtype=self.model_dtype)
                    h_ctx, fctx = self._prepare(x)
                    counted.clear()
                    self.model.encoder(self.decoder(h_ctx[:, 0], fctx))
            finally:
                self.model.train(was_training)
                self.stages.timing = timing
                for h in handles:
                    h.remove()
            self._bytes_per_row = ACTIVATION_FACTOR * sum(counted)
        return self._bytes_per_row

    # ---- the sampling loop ---------------------------------------------------------------------

    def _autocast(self):
        if self.dtype == self.model_dtype:
            return nullcontext()
        return torch.autocast("cuda", dtype=self.dtype, cache_enabled=False)

    @contextmanager
    def _recurrent(self):
        """The recurrent stage: in the model's dtype even under autocast (its state keeps that dtype)."""
        full = nullcontext() if self.dtype == self.model_dtype else torch.autocast("cuda", enabled=False)
        with self.stages("recurrent"), full:
            yield

    def _run(self, context, n_future, n_samples, generator, noise, on_frame, progress):
        """Calls ``on_frame(s0, f, frame)`` with each chunk's (from sample s0) future step f,
        frame (B, n, C, 64, 64), in order."""
        m, c = self.model, self.model.config
        m._check_clip(context, "context", 1)
        if n_future < 1 or n_samples < 1:
            raise ValueError(f"n_future ({n_future}) and n_samples ({n_samples}) must be >= 1")
        context = context.to(self.device, self.model_dtype)
        B, k = context.shape[:2]
        shape = (B, n_samples, k - 1 + n_future, c.z_dim)
        if noise is not None:
            if tuple(noise.shape) != shape:
                raise ValueError(f"noise has shape {tuple(noise.shape)}, expected {shape}")
            noise = noise.to(self.device, self.model_dtype)
        elif self.noise == "torch":
            dev = generator.device if generator is not None else self.device
            noise = torch.randn(shape, generator=generator, device=dev, dtype=self.model_dtype).to(self.device)
        else:
            self._seed = int(torch.randint(0, 2**62, (1,), generator=generator, device=generator.device)) \
                if generator is not None else int(torch.randint(0, 2**62, (1,)))  # fmt: skip
            self._offset = 0
        chunk = self.chunk_samples(B, n_samples)
        was_training = m.training
        m.eval()
        graphs = {}
        bar = tqdm(total=-(-n_samples // chunk) * n_future, desc="sample", disable=not progress, dynamic_ncols=True)
        try:
            with self._autocast():
                h_ctx, fctx = self._prepare(context)
            for s0 in range(0, n_samples, chunk):
                n = min(chunk, n_samples - s0)
                eps = noise[:, s0 : s0 + n].reshape(B * n, -1, c.z_dim) if noise is not None else None
                with self._autocast():
                    state = self._context_steps(h_ctx, eps, n)
                if self.graphs:
                    if B * n not in graphs:
                        graphs[B * n] = _GraphSteps(self, state, eps, fctx, n)
                    steps = graphs[B * n]
                    steps.load(state, eps, k)
                else:
                    steps = _EagerSteps(self, state, eps, fctx, n, k)
                for f in range(n_future):
                    with self._autocast():
                        frame = steps(f)
                    on_frame(s0, f, frame.view(B, n, *frame.shape[1:]))
                    bar.update()
        finally:
            bar.close()
            m.train(was_training)

    def _prepare(self, context):
        """context (B, k, C, 64, 64) -> h_ctx (B, k, g_dim), the decoder's per-clip context."""
        B, k = context.shape[:2]
        with self.stages("encoder"):
            h, skips = self.model.encoder(context.flatten(0, 1))
        last = [s.view(B, k, *s.shape[1:])[:, -1] for s in skips]
        with self.stages("decoder"):
            fctx = self.decoder.prepare(last)
        return h.view(B, k, -1).to(self.model_dtype), fctx

    def _encode(self, frame):
        """frame (rows, C, 64, 64) -> h (rows, g_dim) in the model's dtype."""
        with self.stages("encoder"):
            return self.model.encoder(frame)[0].to(self.model_dtype)

    def _take_offset(self, rows):
        """Reserve the Philox counters of one Gaussian step of ``rows`` rows -> its first counter."""
        offset = self._offset
        self._offset += rows * self.model.config.z_dim
        return offset

    def _noise(self, eps, i, rows):
        """Keyword arguments of step i's Gaussian step: ``eps`` sliced, or the kernel's seed/offset."""
        if eps is not None:
            return {"eps": eps[:, i]}
        return {"seed": self._seed, "offset": self._take_offset(rows)}

    def _gaussian(self, module, x, states, cond=None, **noise):
        weights = tuple(g.weights() for g in module.groups)
        z, _, _, states = gaussian_lstm_step(x, states, weights, cond=cond, backend=self.backend, **noise)
        return z, states

    def _predict(self, h, z, state):
        return lstm_step(torch.cat([h, z], 1), state, self.model.frame_predictor.weights(), backend=self.backend)

    def _context_steps(self, h_ctx, eps, n):
        """The k - 1 context steps of n samples per clip (posterior z) -> (h (rows, g_dim) of the
        last context frame, predictor state, prior state)."""
        m = self.model
        B, k = h_ctx.shape[:2]
        rows = B * n
        per_sample = lambda t: t.unsqueeze(1).expand(B, n, *t.shape[1:]).reshape(rows, *t.shape[1:])  # noqa: E731
        pred, post, prior = m._init_states(rows)
        with self._recurrent():
            for i in range(1, k):
                h = per_sample(h_ctx[:, i - 1])
                z, post = self._gaussian(m.posterior, per_sample(h_ctx[:, i]), post, **self._noise(eps, i - 1, rows))
                _, prior = self._gaussian(m.prior, h, prior, cond=z, eps=torch.zeros_like(z))
                _, pred = self._predict(h, z, pred)
        return per_sample(h_ctx[:, -1]), pred, prior

    def _future_step(self, h, pred, prior, noise, fctx, n):
        """One future step from h (rows, g_dim) -> (frame (rows, C, 64, 64), pred, prior)."""
        with self._recurrent():
            z, prior = self._gaussian(self.model.prior, h, prior, **noise)
            g, pred = self._predict(h, z, pred)
        with self.stages("decoder"):
            frame = self.decoder(g, fctx, n)
        return frame, pred, prior


def _fold(best, scores, s0):
    """Running best per clip: best None or (mean (B,), index (B,), steps (B, T)); scores (B, n, T)
    of samples s0.. -> the new best (ties keep the earlier sample, as ``argmax`` does)."""
    mean = scores.mean(dim=2)
    idx = mean.argmax(dim=1)
    clips = torch.arange(scores.shape[0], device=scores.device)
    cand = (mean[clips, idx], idx + s0, scores[clips, idx])
    if best is None:
        return cand
    better = cand[0] > best[0]
    return (
        torch.where(better, cand[0], best[0]),
        torch.where(better, cand[1], best[1]),
        torch.where(better[:, None], cand[2], best[2]),
    )


class _EagerSteps:
    """Future steps run op by op: ``steps(f)`` -> frame (rows, C, 64, 64) of step f (in order)."""

    def __init__(self, sampler, state, eps, fctx, n, k):
        self.s, self.eps, self.fctx, self.n, self.k = sampler, eps, fctx, n, k
        self.h, self.pred, self.prior = state
        self.frame = None

    def __call__(self, f):
        s = self.s
        if f:
            self.h = s._encode(self.frame)
        noise = s._noise(self.eps, self.k - 1 + f, self.h.shape[0])
        self.frame, self.pred, self.prior = s._future_step(self.h, self.pred, self.prior, noise, self.fctx, self.n)
        return self.frame


class _GraphSteps:
    """One future step and the re-encoding of its frame captured in a CUDA graph.

    Static buffers: h (rows, g_dim), the predictor and prior states, the noise source and the
    output frame (rows, C, 64, 64). The noise source: eps (rows, z_dim) when ε is given; with
    kernel noise, the Philox offset () int64, which the graph advances by rows * z_dim after the
    prior's draw, and the sampler's seed of this call, captured as a constant. Built once per
    chunk size within a call (the per-clip context tensors are captured by address, the seed by
    value): warm-up on a side stream, then capture. ``load`` copies a chunk's state in (and the
    sampler's next counter into the offset); ``steps(f)`` copies step f's ε into the static buffer
    (or reserves the step's counters on the host, to keep the sampler's counter in step with the
    device's), replays, and returns the static frame (valid until the next replay). The last
    step's re-encoding is wasted work.
    """

    def __init__(self, sampler, state, eps, fctx, n):
        self.s, self.fctx, self.n = sampler, fctx, n
        h, pred, prior = state
        self.h = h.clone()
        self.pred, self.prior = _clone(pred), _clone(prior)
        if eps is None:
            self.eps, self.offset = None, torch.zeros((), dtype=torch.int64, device=sampler.device)
            self.noise = {"seed": sampler._seed, "offset": self.offset}
        else:
            self.eps, self.offset = eps[:, 0].clone(memory_format=torch.contiguous_format), None
            self.noise = {"eps": self.eps}
        timing, sampler.stages.timing = sampler.stages.timing, False  # no synchronization while capturing
        try:
            side = torch.cuda.Stream(sampler.device)
            side.wait_stream(torch.cuda.current_stream(sampler.device))
            with torch.cuda.stream(side):
                for _ in range(GRAPH_WARMUP):
                    self._body()
            torch.cuda.current_stream(sampler.device).wait_stream(side)
            self.graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(self.graph):
                self.frame = self._body()
        finally:
            sampler.stages.timing = timing

    def _body(self):
        frame, pred, prior = self.s._future_step(self.h, self.pred, self.prior, self.noise, self.fctx, self.n)
        if self.offset is not None:
            self.offset.add_(self.h.shape[0] * self.s.model.config.z_dim)  # the next replay's counters
        h = self.s._encode(frame)
        for dst, src in zip(_tensors((self.pred, self.prior)), _tensors((pred, prior))):
            dst.copy_(src)
        self.h.copy_(h)
        return frame

    def load(self, state, eps, k):
        h, pred, prior = state
        self.h.copy_(h)
        for dst, src in zip(_tensors((self.pred, self.prior)), _tensors((pred, prior))):
            dst.copy_(src)
        self.eps_all, self.k = eps, k
        if self.offset is not None:
            self.offset.fill_(self.s._offset)

    def __call__(self, f):
        if self.offset is None:
            self.eps.copy_(self.eps_all[:, self.k - 1 + f])
        else:
            self.s._take_offset(self.h.shape[0])  # the replay draws these counters on the device
        with self.s.stages("graph step"):
            self.graph.replay()
        return self.frame


def _clone(tree):
    if isinstance(tree, torch.Tensor):
        return tree.clone()
    return tuple(_clone(t) for t in tree)
