"""Fast sampling of many futures per clip, and streaming best-of-N evaluation (best of N as SVG reports it).

:class:`FastSampler` computes what :meth:`hafsvg.models.HAFSVG.sample` computes (same contract,
same noise layout; the reference stays the reference) with these levers:

* every recurrent step and the aligner's attention go through ``hafsvg_kernels`` with the
  sampler's ``backend`` (passed to the ops; the model's own ``backend`` attributes are untouched);
* per clip, once: the context encoding, the aligner's K/V, and each decoder block's convolution
  over F_e plus bias (:mod:`hafsvg.sampling.split_conv`), broadcast over the clip's samples;
* samples are processed in chunks sized by ``memory_budget`` (:meth:`FastSampler.chunk_samples`);
* ``noise="kernel"``: with no noise passed in, ε is drawn inside the recurrent kernels (Philox with
  Triton) from the fixed key :data:`KERNEL_SEED` and counters; each call draws its first counter
  from the generator (see ``_first_counter``): reproducible per generator seed and chunking, but
  not torch's numbers;
* ``graphs=True`` (CUDA only): one future step (prior, predictor, decoder, re-encoding of the
  frame) is captured in a CUDA graph with static buffers, under the sampler's autocast, and
  replayed per step. Captured steps are cached on the sampler across chunks and calls, keyed by
  what the capture depends on (clips, samples per chunk, noise source, dtype, the shapes and dtypes
  of the recurrent states and of the per-clip decoder context); each chunk copies its state and its
  clips' context into the static buffers. ``noise="torch"``: each step's ε is copied into a static
  buffer before the replay. ``noise="kernel"``: the prior's step reads its Philox counter from a
  static int64 device tensor (a device offset of ``hafsvg_kernels.gaussian_lstm_step``; the Triton
  backend is needed under capture), set to the chunk's first future counter before its first replay
  and advanced by the graph itself after each draw; the key is the constant :data:`KERNEL_SEED`,
  so one graph serves every call. Counters are consumed in the eager path's order, so graphs and
  eager sampling give the same ε for the same generator (and the same chunking). A cached graph
  holds its static buffers and its private memory pool (about one chunk's step activations): at
  most :data:`GRAPH_CACHE_SIZE` are kept (least recently used dropped), and
  :meth:`FastSampler.reset_graphs` drops them all;
* ``dtype=torch.bfloat16`` (or float16): the model runs under CUDA autocast. With bfloat16 the
  recurrent steps run in bfloat16 too (``recurrent_dtype``: weights cast at the start of each call,
  states and z in bfloat16; the fused step in bf16 models ~12x faster than in fp32 on an H100,
  19.5 against 231 µs at batch 1600 folded, ``python -m hafsvg_kernels.sm90_report``); with float16 they
  stay in the model's dtype (an LSTM's cell state can leave float16's range);
* ``fold=True`` (the default where the recurrent steps run on Triton): each recurrent module's
  embedding is folded into its first LSTM cell (``hafsvg_kernels.fold_embedding``, at the start of
  each call, into the same tensors): no embedding GEMM, and in the split Triton step no program
  recomputes it (the moving-mnist sampling step models 30.0 -> 19.5 µs in bf16; same function,
  other roundings).

:meth:`FastSampler.best_of_n` streams: each predicted frame is scored (SSIM, PSNR, MSE, under a
metric protocol) against the target on the device as soon as it is decoded and a running best and
worst are kept per clip, so neither all samples nor a whole chunk of frames is ever held (except,
as uint8, with ``keep_frames=True``), and nothing goes to the host.

The skip features come from the context frame ``config.skip_source`` names ("last" or "svg", both
fixed per clip); "latest" is refused at construction (it would recompute them for every sample at
every step). BatchNorm uses its running statistics (``batchnorm="batch"`` is refused).

The split decoder weights (BatchNorm folded in) are a snapshot taken at construction; encoder and
recurrent weights are read at each call (with ``recurrent_dtype`` bfloat16 or ``fold``, cast or folded
into the sampler's copies at the start of each call; a cached graph reads what it captured: the cuda backend's
packed weights and replaced parameters are not seen again). Build a new sampler after changing the
model's weights.
"""

from __future__ import annotations

from contextlib import contextmanager, nullcontext

import torch
from tqdm import tqdm

from hafsvg_kernels import BackendUnavailable, fold_embedding, gaussian_lstm_step, lstm_step
from hafsvg_kernels.recurrent.interface import GAUSSIAN_LSTM_STEP

from ..metrics import HIGHER_IS_BETTER, PROTOCOLS, BestOfN, _extreme_index, check_unit_range, mse, psnr, ssim
from ..models import HAFSVG
from .split_conv import SplitConv, SplitConvDecoder
from .stages import Stages

__all__ = ["CPU_MEMORY_BUDGET", "CUDA_MEMORY_FRACTION", "FastSampler", "KERNEL_SEED"]

#: Bytes of activations a chunk may use on a CPU when no ``memory_budget`` is given.
CPU_MEMORY_BUDGET = 2 << 30
#: Fraction of the available CUDA memory (free on the device plus reserved but unallocated by
#: PyTorch's caching allocator) a chunk may use when no ``memory_budget`` is given.
CUDA_MEMORY_FRACTION = 0.5
#: Activation bytes per row counted by a dry run are multiplied by this (temporaries, buffers).
ACTIVATION_FACTOR = 3
#: Eager runs of the captured step before capture (kernel compilation, allocator warm-up).
GRAPH_WARMUP = 3
#: Captured steps a sampler keeps (a chunk size and the last chunk's remainder).
GRAPH_CACHE_SIZE = 2
#: Philox key of the in-kernel noise (``noise="kernel"``); a call's randomness is its first counter.
KERNEL_SEED = 0x4841465356
#: Philox counters of in-kernel noise are in [0, COUNTER_LIMIT) (``gaussian_lstm_step``'s int offsets).
COUNTER_LIMIT = 2**62
METRICS = {"ssim": ssim, "psnr": psnr, "mse": mse}
#: Samples per clip whose frames ``best_of_n(..., keep_frames=True)`` returns under "first".
KEEP_FIRST = 5


def _map(fn, tree):
    """``fn`` applied to each tensor of a nested (named) tuple of tensors and None (kept)."""
    if tree is None or isinstance(tree, torch.Tensor):
        return None if tree is None else fn(tree)
    items = [_map(fn, t) for t in tree]
    return type(tree)(*items) if hasattr(tree, "_fields") else tuple(items)


def _tensors(tree):
    """The tensors of a nested (named) tuple of tensors and None, in order."""
    if tree is None:
        return []
    if isinstance(tree, torch.Tensor):
        return [tree]
    return [t for sub in tree for t in _tensors(sub)]


def _signature(tree):
    """The structure, shapes and dtypes of a tree of tensors (hashable): what a capture depends on."""
    return _map(lambda t: (tuple(t.shape), t.dtype), tree)


def _copy_(dst, src):
    """Copy a tree of tensors into a tree of the same signature, in place (a tensor onto itself: skipped)."""
    for d, s in zip(_tensors(dst), _tensors(src), strict=True):
        if d is not s:
            d.copy_(s)


def _available_cuda_memory(device) -> int:
    """Bytes a chunk could use on a CUDA device: free on the device, plus reserved by PyTorch's
    caching allocator but not allocated (cached blocks that earlier runs freed). The free blocks of
    cached CUDA graphs' private pools count too, though only their graphs reuse them: with graphs
    the estimate is taken once per number of clips (see ``FastSampler``'s ``graphs``)."""
    cached = torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device)
    return torch.cuda.mem_get_info(device)[0] + cached


class FastSampler:
    """Fast :meth:`HAFSVG.sample` and streaming best-of-N for one model.

    Args:
        model: the model (sampling runs in eval mode; its mode is restored afterwards).
        backend: ``hafsvg_kernels`` backend of the recurrent steps and the attention.
        dtype: None (the model's dtype) or torch.bfloat16/float16 (CUDA autocast).
        graphs: capture one future step in a CUDA graph (CUDA only), cached across calls (see
            :meth:`reset_graphs`). With ``noise="kernel"`` the graph reads the Philox counter from
            device memory (needs the Triton backend) and draws the eager path's numbers for the
            same generator. With no ``memory_budget``, the chunk size first chosen for a number of
            clips is kept for them until :meth:`reset_graphs` (its graph's memory pool already
            holds that chunk's step; a fresh estimate would see that memory as used and capture
            anew).
        memory_budget: bytes of activations per chunk (default: a fraction of the available CUDA
            memory on a GPU, :data:`CPU_MEMORY_BUDGET` on a CPU).
        noise: where ε comes from when none is passed: "torch" (``torch.randn`` with the
            generator, the reference's numbers) or "kernel" (drawn in the recurrent kernels).
        recurrent_dtype: dtype of the recurrent steps (posterior, prior, predictor: their weights,
            states and z): None (bfloat16 with ``dtype=torch.bfloat16``, else the model's dtype),
            the model's dtype, or torch.bfloat16 (also without autocast, e.g. on a CPU). The weights
            are cast at the start of each call into the same bf16 tensors (which captured graphs
            read): about one read of the recurrent parameters per call.
        fold: fold each recurrent module's embedding into its first LSTM cell at the start of each
            call (``hafsvg_kernels.fold_embedding``; the steps then skip the embedding GEMM). None:
            where the backend picks Triton for the folded steps (which accepts them forward-only;
            the cpp and cuda backends refuse them, the torch backend takes them).

    Attributes:
        graph_captures: CUDA graphs captured so far (a cached graph is reused without capture).
    """

    def __init__(self, model: HAFSVG, *, backend="auto", dtype=None, graphs=False, memory_budget=None,
                 noise="torch", recurrent_dtype=None, fold=None):  # fmt: skip
        p = next(model.parameters())
        self.model, self.backend, self.device, self.model_dtype = model, backend, p.device, p.dtype
        self.dtype = p.dtype if dtype is None else dtype
        if recurrent_dtype is None:
            recurrent_dtype = torch.bfloat16 if self.dtype == torch.bfloat16 else p.dtype
        if recurrent_dtype not in (p.dtype, torch.bfloat16):
            raise ValueError(f"recurrent_dtype must be None, the model's {p.dtype} or bfloat16; got {recurrent_dtype}")
        self.recurrent_dtype = recurrent_dtype
        if self.dtype != p.dtype:
            if self.dtype not in (torch.bfloat16, torch.float16):
                raise ValueError(f"dtype must be None, the model's {p.dtype}, bfloat16 or float16; got {self.dtype}")
            if self.device.type != "cuda":
                raise ValueError(f"dtype {self.dtype} runs under CUDA autocast: needs CUDA (model on {self.device})")
        if noise not in ("torch", "kernel"):
            raise ValueError(f"noise must be 'torch' or 'kernel', got {noise!r}")
        if graphs and self.device.type != "cuda":
            raise ValueError(f"graphs=True needs CUDA (CUDA graphs); the model is on {self.device}")
        if graphs and noise == "kernel" and (chosen := prior_noise_backend(model, backend)) != "triton":
            raise ValueError(
                f"graphs=True with noise='kernel' needs the triton backend for the prior's step (it reads the "
                f"Philox counter from device memory while the graph replays); backend {backend!r} runs it on "
                f"{chosen!r}: use noise='torch' or backend='triton'"
            )
        if memory_budget is not None and memory_budget <= 0:
            raise ValueError(f"memory_budget must be a positive number of bytes, got {memory_budget}")
        if model.config.skip_source == "latest":
            raise ValueError(
                "FastSampler computes the skip features, the aligner's K/V and the decoder's F_e convolutions once "
                "per clip; skip_source 'latest' (SVG's --last_frame_skip) takes them from each sample's newest "
                "frame at every step, which defeats that: sample with HAFSVG.sample"
            )
        self.graphs, self.memory_budget, self.noise = graphs, memory_budget, noise
        self.stages = Stages(self.device)
        self.decoder = SplitConvDecoder(model.decoder, backend)
        self.decoder.stage = self.stages
        self._bytes_per_row = None
        self._offset = 0  # the next Philox counter of in-kernel noise
        self._graph_cache = {}  # signature -> _GraphSteps, least recently used first
        self._graph_chunks = {}  # clips -> samples per chunk, kept for the cached graphs (no memory_budget)
        self.graph_captures = 0
        self.fold = fold_picks_triton(model, backend, recurrent_dtype) if fold is None else bool(fold)
        if fold and (chosen := folded_step_backend(model, backend, recurrent_dtype)) not in ("torch", "triton"):
            raise ValueError(
                f"fold=True needs a backend that takes folded embeddings (torch, triton); backend {backend!r} "
                f"runs the folded step on {chosen!r}"
            )
        self._recurrent_weights = None  # cast to recurrent_dtype and/or folded (_own_weights)

    # ---- public --------------------------------------------------------------------------------

    @torch.no_grad()
    def sample(self, context, n_future, n_samples, generator=None, noise=None, *, progress=False, batchnorm="eval"):
        """``n_samples`` futures of ``n_future`` frames per clip, as :meth:`HAFSVG.sample`.

        Args:
            context: (B, k, C, 64, 64) in [0, 1].
            generator: ``torch.Generator`` for the noise.
            noise: (B, n_samples, k - 1 + n_future, z_dim) standard normal noise (step i's z uses
                ``noise[:, :, i]``), or None to draw it (see ``noise`` of the constructor; with
                ``noise="kernel"`` the call's first Philox counter is drawn from ``generator`` and
                the counters run on over the chunks, so the numbers depend on the chunk size).
            progress: show a tqdm bar over chunks x steps.
            batchnorm: "eval" only (BatchNorm with its running statistics, folded into the split
                decoder); "batch" (SVG's per-batch statistics) is refused: use :meth:`HAFSVG.sample`.

        Returns:
            (B, n_samples, n_future, C, 64, 64) in [0, 1], context's dtype, on the model's device.
        """
        _check_batchnorm(batchnorm)
        self.model._check_clip(context, "context", 1)
        shape = (context.shape[0], max(n_samples, 0), max(n_future, 0), *context.shape[2:])
        out = torch.empty(shape, device=self.device, dtype=context.dtype)

        def keep(s0, f, frame):
            out[:, s0 : s0 + frame.shape[1], f] = frame

        self._run(context, n_future, n_samples, generator, noise, keep, progress)
        return out

    @torch.no_grad()
    def best_of_n(self, context, target, n_samples, generator=None, noise=None, *, progress=False,
                  protocol="gaussian", keep_frames=False, batchnorm="eval"):  # fmt: skip
        """Best-of-``n_samples`` SSIM, PSNR and MSE per clip, streamed (best of N as SVG reports it).

        Each frame is scored as soon as it is decoded and a running best and worst are kept per
        clip (by each metric: the highest time-averaged SSIM / PSNR, the lowest MSE; ties to the
        lowest sample index). A sample that scores NaN (a NaN pixel) is never the best nor the
        worst while its clip has a sample that does not; a clip whose samples all score NaN gets
        index 0 and a NaN per-clip score, as :func:`hafsvg.metrics.best_of_n`.

        The target is checked once to be in [0, 1] (:func:`hafsvg.metrics.check_unit_range`, one
        device synchronization); the decoded frames are not checked (the decoder's sigmoid keeps
        them in [0, 1]), so scoring adds no host synchronization per frame.

        Args:
            context: (B, k, C, 64, 64); target: (B, T, C, 64, 64) ground truth of the T predicted
                frames; generator, noise, progress, batchnorm: as in :meth:`sample` (n_future = T).
            protocol: metric protocol, one of :data:`hafsvg.metrics.PROTOCOLS` (see
                :func:`hafsvg.metrics.ssim`, :func:`hafsvg.metrics.psnr`).
            keep_frames: also return frames, quantized to uint8 (``round(x * 255)`` clamped to
                [0, 255]). Costs device memory beyond the chunk budget: each chunk's frames are held
                as uint8 while the chunk runs (B x n x T x C x 64 x 64 bytes, n the samples per
                chunk, see :meth:`chunk_samples`) and folded into the running best / worst at its
                end, which take 2 x B x T x C x 64 x 64 bytes, plus B x min(5, n_samples) x T x C x
                64 x 64 bytes for the first samples.

        Returns:
            {"ssim": BestOfN, "psnr": BestOfN, "mse": BestOfN} as
            :func:`hafsvg.metrics.evaluate_samples` returns for the materialized samples with the
            same ``protocol`` (index (B,), per_clip (B,), per_step (T,), overall (), worst (B,)).
            With ``keep_frames``, also "frames": {"best": (B, T, C, 64, 64) the best sample by SSIM,
            "worst": (B, T, C, 64, 64) the worst by SSIM, "first": (B, min(5, n_samples), T, C,
            64, 64) the first samples}, uint8 tensors on the CPU.
        """
        _check_batchnorm(batchnorm)
        self.model._check_clip(context, "context", 1)
        if not isinstance(protocol, str) or protocol not in PROTOCOLS:
            raise ValueError(f"protocol must be one of {PROTOCOLS}, got {protocol!r}")
        B = context.shape[0]
        if not isinstance(target, torch.Tensor):
            raise TypeError("target must be a tensor (B, T, C, 64, 64)")
        if target.dim() != 5 or target.shape[0] != B or target.shape[2:] != context.shape[2:] or target.shape[1] < 1:
            raise ValueError(f"target has shape {tuple(target.shape)}; expected ({B}, T, *{tuple(context.shape[2:])})")
        if not target.is_floating_point():
            raise TypeError(f"target must be a floating-point tensor, got {target.dtype}")

        check_unit_range(target=target)
        T = target.shape[1]
        target = target.to(self.device)
        state = {}  # metric -> _fold's running best and worst
        chunk = {}  # metric -> the chunk's scores (B, n, T)
        kept = {}  # keep_frames: "chunk" (B, n, T, C, H, W) while a chunk runs, "best", "worst", "first"
        n_first = min(KEEP_FIRST, n_samples)
        clips = torch.arange(B, device=self.device)

        def quantize(frame):
            frame = frame.to(torch.promote_types(frame.dtype, torch.float32))
            return frame.mul(255).round_().clamp_(0, 255).to(torch.uint8)

        def keep(s0, f, frame):
            q = quantize(frame)  # (B, n, C, H, W)
            if f == 0:
                kept["chunk"] = q.new_empty(B, q.shape[1], T, *q.shape[2:])
            kept["chunk"][:, :, f] = q
            if s0 < n_first:
                if "first" not in kept:
                    kept["first"] = q.new_empty(B, n_first, T, *q.shape[2:])
                end = min(n_first, s0 + q.shape[1])
                kept["first"][:, s0:end, f] = q[:, : end - s0]

        def fold_frames(s0):
            frames = kept.pop("chunk")
            _, best, _, _, worst = state["ssim"]
            for key, idx in (("best", best), ("worst", worst)):
                picked = frames[clips, (idx - s0).clamp(min=0)]  # (B, T, C, H, W); used where idx >= s0
                if key in kept:
                    picked = torch.where((idx >= s0).view(B, 1, 1, 1, 1), picked, kept[key])
                kept[key] = picked

        def score(s0, f, frame):
            with self.stages("metrics"), torch.autocast(self.device.type, enabled=False):
                tgt = target[:, f].unsqueeze(1).expand_as(frame)
                for name, fn in METRICS.items():
                    s = fn(frame, tgt, protocol, check_range=False)  # (B, n); no host sync per frame
                    if f == 0:
                        chunk[name] = s.new_empty(*s.shape, T)
                    chunk[name][..., f] = s
                if keep_frames:
                    keep(s0, f, frame)
                if f == T - 1:
                    for name, scores in chunk.items():
                        state[name] = _fold(state.get(name), scores, s0, HIGHER_IS_BETTER[name])
                    if keep_frames:
                        fold_frames(s0)

        self._run(context, T, n_samples, generator, noise, score, progress)
        out = {
            name: BestOfN(idx, mean, steps.mean(0), mean.mean(), worst)
            for name, (mean, idx, steps, _, worst) in state.items()
        }
        if keep_frames:
            out["frames"] = {key: kept[key].cpu() for key in ("best", "worst", "first")}
        return out

    def chunk_samples(self, clips: int, n_samples: int) -> int:
        """Samples per chunk: as many as keep clips x samples x :meth:`bytes_per_row` within the
        memory budget (at least 1)."""
        return min(n_samples, self._max_chunk(clips))

    def reset_graphs(self) -> None:
        """Drop the cached CUDA graphs (their static buffers and private memory pools) and the chunk
        sizes kept for them: the next call sizes its chunks and captures afresh. The memory goes
        back to PyTorch's caching allocator (``torch.cuda.empty_cache()`` returns it to the device)."""
        self._graph_cache.clear()
        self._graph_chunks.clear()

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
                    x = torch.zeros(1, 2, c.channels, 64, 64, device=self.device, dtype=self.model_dtype)  # 2: "svg"
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

    def _max_chunk(self, clips):
        """Samples per chunk that keep clips x samples x :meth:`bytes_per_row` within the memory
        budget (at least 1)."""
        budget = self.memory_budget
        if budget is None and self.device.type == "cuda":
            budget = CUDA_MEMORY_FRACTION * _available_cuda_memory(self.device)
        elif budget is None:
            budget = CPU_MEMORY_BUDGET
        return max(1, int(budget // (self.bytes_per_row() * clips)))

    def _chunk(self, clips, n_samples):
        """The call's samples per chunk: :meth:`chunk_samples`, except with graphs and no
        ``memory_budget``, where the size first estimated for these clips is kept (see ``graphs``),
        and is a :data:`GRAPH_CACHE_SIZE`-th of the budget: each cached graph keeps a pool of its
        chunk's activations, so together they stay within one budget."""
        if not self.graphs or self.memory_budget is not None:
            return self.chunk_samples(clips, n_samples)
        if clips not in self._graph_chunks:
            self._graph_chunks[clips] = max(1, self._max_chunk(clips) // GRAPH_CACHE_SIZE)
        return min(n_samples, self._graph_chunks[clips])

    def _autocast(self):
        """The sampling dtype's autocast (``cache_enabled=False``, as CUDA-graph capture needs), or nothing."""
        if self.dtype == self.model_dtype:
            return nullcontext()
        return torch.autocast("cuda", dtype=self.dtype, cache_enabled=False)

    @contextmanager
    def _recurrent(self):
        """The recurrent stage, autocast off: the steps run in ``recurrent_dtype`` (their inputs are
        cast to it), which keeps their states in one dtype over the steps."""
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
            self._offset = _first_counter(generator, B * n_samples * (k - 1 + n_future) * c.z_dim)
        chunk = self._chunk(B, n_samples)
        self._refresh_recurrent_weights()
        was_training = m.training
        m.eval()
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
                    steps = self._graph_steps(state, eps, fctx, n, k, n_future)
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

    def _graph_steps(self, state, eps, fctx, n, k, n_future):
        """The chunk's future steps by a cached :class:`_GraphSteps` (captured on a miss, the least
        recently used dropped beyond :data:`GRAPH_CACHE_SIZE`), loaded with the chunk's state, its
        clips' context and its first future counter -> ``steps(f)``."""
        B = fctx.clip_terms[0].shape[0]
        key = (B, n, eps is None, self.dtype, _signature(state), _signature(fctx))
        graph = self._graph_cache.pop(key, None)  # re-inserted below: the most recently used is last
        if graph is None:
            while len(self._graph_cache) >= GRAPH_CACHE_SIZE:
                del self._graph_cache[next(iter(self._graph_cache))]  # freed before the new capture
            graph = _GraphSteps(self, state, eps, fctx, n)
            self.graph_captures += 1
        self._graph_cache[key] = graph
        first = self._take_offset(B * n * n_future) if eps is None else None  # the replays draw these
        return graph.load(state, eps, fctx, k, first)

    def _prepare(self, context):
        """context (B, k, C, 64, 64) -> h_ctx (B, k, g_dim), the decoder's per-clip context."""
        B, k = context.shape[:2]
        with self.stages("encoder"):
            h, skips = self.model.encoder(context.flatten(0, 1))
        last = [s.view(B, k, *s.shape[1:])[:, self.model.context_skip_frame(k)] for s in skips]
        with self.stages("decoder"):
            fctx = self.decoder.prepare(last)
        return h.view(B, k, -1).to(self.model_dtype), fctx

    def _encode(self, frame):
        """frame (rows, C, 64, 64) -> h (rows, g_dim) in the model's dtype."""
        with self.stages("encoder"):
            return self.model.encoder(frame)[0].to(self.model_dtype)

    def _take_offset(self, rows):
        """Reserve the Philox counters of ``rows`` rows of z (one Gaussian step of ``rows`` rows, or
        several steps' rows together) -> the first counter."""
        offset = self._offset
        self._offset += rows * self.model.config.z_dim
        return offset

    def _noise(self, eps, i, rows):
        """Keyword arguments of step i's Gaussian step: ``eps`` sliced, or the kernel's seed/offset."""
        if eps is not None:
            return {"eps": eps[:, i]}
        return {"seed": KERNEL_SEED, "offset": self._take_offset(rows)}

    def _module_weights(self, which):
        """The weights of recurrent module ``which`` (0 posterior, 1 prior, 2 predictor), as the
        steps take them."""
        m = self.model
        if which == 2:
            return m.frame_predictor.weights()
        return tuple(g.weights() for g in (m.posterior, m.prior)[which].groups)

    def _own_weights(self) -> bool:
        """Whether the steps read the sampler's weights (cast or folded; where neither changes a
        tensor, e.g. the heads with ``fold`` in the model's dtype, that tensor is the model's own)."""
        return self.fold or self.recurrent_dtype != self.model_dtype

    def _refresh_recurrent_weights(self):
        """The sampler's copies of the weights (cast to ``recurrent_dtype``, folded with ``fold``),
        at the start of every call and in place (captured CUDA graphs read those tensors). Every
        call, not only when a parameter's version changed: fused optimizers and edits through
        ``.data`` change parameters without a new version."""
        if not self._own_weights():
            return
        weights = tuple(self._module_weights(i) for i in range(3))
        if self.fold:  # computed in float32 from the model's weights, rounded once to recurrent_dtype
            weights = tuple(fold_embedding(w, self.recurrent_dtype) for w in weights)
        else:
            weights = _map(lambda t: t.to(self.recurrent_dtype), weights)
        if self._recurrent_weights is None:
            self._recurrent_weights = weights
        else:
            _copy_(self._recurrent_weights, weights)

    def _weights(self, which):
        """Weights of recurrent module ``which`` as the steps take them."""
        if not self._own_weights():
            return self._module_weights(which)
        if self._recurrent_weights is None:
            self._refresh_recurrent_weights()
        return self._recurrent_weights[which]

    def _gaussian(self, module, x, states, cond=None, **noise):
        which = 0 if module is self.model.posterior else 1
        rd = self.recurrent_dtype
        x, cond = x.to(rd), None if cond is None else cond.to(rd)
        if noise.get("eps") is not None:
            noise = {**noise, "eps": noise["eps"].to(rd)}
        z, _, _, states = gaussian_lstm_step(x, states, self._weights(which), cond=cond, backend=self.backend, **noise)
        return z, states

    def _predict(self, h, z, state):
        rd = self.recurrent_dtype
        return lstm_step(torch.cat([h.to(rd), z.to(rd)], 1), state, self._weights(2), backend=self.backend)

    def _context_steps(self, h_ctx, eps, n):
        """The k - 1 context steps of n samples per clip (posterior z) -> (h (rows, g_dim) of the
        last context frame, predictor state, prior state)."""
        m = self.model
        B, k = h_ctx.shape[:2]
        rows = B * n
        per_sample = lambda t: t.unsqueeze(1).expand(B, n, *t.shape[1:]).reshape(rows, *t.shape[1:])  # noqa: E731
        pred, post, prior = _map(lambda t: t.to(self.recurrent_dtype), m._init_states(rows))
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
            frame = self.decoder(g.to(self.model_dtype), fctx, n)
        return frame, pred, prior


def _check_batchnorm(batchnorm):
    if batchnorm != "eval":
        raise ValueError(
            f"FastSampler samples with batchnorm='eval' only (got {batchnorm!r}): it folds BatchNorm's running "
            "statistics into the split decoder and shares per-clip work across samples; SVG's per-batch statistics "
            "(batchnorm='batch') need HAFSVG.sample"
        )


def _prior_step_backend(model: HAFSVG, backend: str, dtype, fold: bool, **noise) -> str:
    """The backend that ``backend`` ("auto" included, and ``HAFSVG_BACKEND``) picks for the prior's
    step on the model's device, in ``dtype``, with folded embeddings or not, under no_grad as
    sampling runs it, or why none accepts it."""
    prior = model.prior
    p = next(prior.parameters())
    x = torch.zeros(1, prior.input_size, device=p.device, dtype=dtype)
    states = _map(lambda t: t.to(dtype), prior.init_state(1))
    try:
        with torch.no_grad():
            weights = tuple(g.weights() for g in prior.groups)
            weights = fold_embedding(weights, dtype) if fold else _map(lambda t: t.to(dtype), weights)
            return GAUSSIAN_LSTM_STEP.select(backend, p.device.type, x, states, weights, seed=0, **noise).name
    except BackendUnavailable as err:
        return f"none ({err})"


def prior_noise_backend(model: HAFSVG, backend: str) -> str:
    """The backend picked for the prior's Gaussian step with in-kernel noise and a device offset,
    in the model's dtype (what a graph with ``noise="kernel"`` captures), or why none accepts it."""
    p = next(model.parameters())
    offset = torch.zeros((), dtype=torch.int64, device=p.device)
    return _prior_step_backend(model, backend, p.dtype, False, offset=offset)


def folded_step_backend(model: HAFSVG, backend: str, dtype) -> str:
    """The backend picked for the prior's step with folded embeddings in ``dtype``."""
    return _prior_step_backend(model, backend, dtype, True)


def fold_picks_triton(model: HAFSVG, backend: str, dtype) -> bool:
    """``FastSampler``'s default ``fold``: whether Triton runs the folded steps."""
    return folded_step_backend(model, backend, dtype) == "triton"


def _first_counter(generator, count):
    """The first of a call's ``count`` Philox counters, drawn from ``generator`` (None: torch's
    default CPU generator) uniformly in [0, COUNTER_LIMIT - count]: the call uses [first, first +
    count), below 2**62. All calls share the key :data:`KERNEL_SEED`, so two calls' numbers
    overlap only if their counter ranges do: with probability at most (count_1 + count_2) / 2**62
    (2**-30 for calls of 2**31 numbers each; a best-of-100 evaluation of 256 clips x 30 steps x
    z_dim 64 draws about 2**26)."""
    dev = generator.device if generator is not None else "cpu"
    return int(torch.randint(0, COUNTER_LIMIT - count + 1, (1,), generator=generator, device=dev))


def _fold(best, scores, s0, higher_is_better=True):
    """Running best and worst per clip: best None or (mean (B,), index (B,), steps (B, T), worst mean
    (B,), worst index (B,)); scores (B, n, T) of samples s0.. -> the new state. Best is the highest
    time-averaged score (the lowest with ``higher_is_better=False``), worst the opposite; ties keep
    the earlier sample, as ``argmax`` / ``argmin`` and :func:`hafsvg.metrics.best_of_n` do. A sample
    whose mean is NaN is neither while the clip has one with a non-NaN mean (in any chunk); a clip
    whose samples are all NaN keeps sample 0 for both, with NaN means, as ``best_of_n``."""

    mean = scores.mean(dim=2)
    idx = _extreme_index(mean, largest=higher_is_better)
    worst = _extreme_index(mean, largest=not higher_is_better)
    clips = torch.arange(scores.shape[0], device=scores.device)
    cand = (mean[clips, idx], idx + s0, scores[clips, idx], mean[clips, worst], worst + s0)
    if best is None:
        return cand
    beats = (lambda x, y: x > y) if higher_is_better else (lambda x, y: x < y)  # noqa: E731
    # the chunk's pick replaces the running one if it is a number and beats it, or the running one is NaN
    better = ~cand[0].isnan() & (best[0].isnan() | beats(cand[0], best[0]))
    worse = ~cand[3].isnan() & (best[3].isnan() | beats(best[3], cand[3]))
    return (
        torch.where(better, cand[0], best[0]),
        torch.where(better, cand[1], best[1]),
        torch.where(better[:, None], cand[2], best[2]),
        torch.where(worse, cand[3], best[3]),
        torch.where(worse, cand[4], best[4]),
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
    """One future step and the re-encoding of its frame captured in a CUDA graph, cached by the
    sampler and reused by every chunk of the same signature (see ``FastSampler._graph_steps``).

    Static buffers (allocated at construction, outside the graph): h (rows, g_dim), the predictor
    and prior states, the per-clip decoder context (a copy of the ``SplitContext``: each chunk's
    clips are copied in, so the graph serves new clips of the same shapes) and the noise source;
    the output frame (rows, C, 64, 64) lives in the graph's private memory pool. The noise source:
    eps (rows, z_dim) when ε is given; with kernel noise, the Philox counter () int64, which the
    graph advances by rows * z_dim after the prior's draw (the key is :data:`KERNEL_SEED`, a
    launch constant). Capture runs under the sampler's autocast (``cache_enabled=False``): warm-up
    on a side stream, then capture. ``load`` copies a chunk's state, context and first counter in
    and returns ``steps(f)``, which copies step f's ε into the static buffer (when ε is given),
    replays, and returns the static frame (valid until the next replay). The last step's
    re-encoding is wasted work.
    """

    def __init__(self, sampler, state, eps, fctx, n):
        self.stages = sampler.stages
        self.h, self.pred, self.prior, self.fctx = _map(torch.clone, (*state, fctx))
        if eps is None:
            self.eps, self.offset = None, torch.zeros((), dtype=torch.int64, device=sampler.device)
            noise = {"seed": KERNEL_SEED, "offset": self.offset}
        else:
            self.eps, self.offset = eps[:, 0].clone(memory_format=torch.contiguous_format), None
            noise = {"eps": self.eps}
        timing, sampler.stages.timing = sampler.stages.timing, False  # no synchronization while capturing
        try:
            with sampler._autocast():
                self.replay = _capture(lambda: self._body(sampler, noise, n), sampler.device)
        finally:
            sampler.stages.timing = timing

    def _body(self, sampler, noise, n):
        frame, pred, prior = sampler._future_step(self.h, self.pred, self.prior, noise, self.fctx, n)
        if self.offset is not None:
            self.offset.add_(self.h.shape[0] * sampler.model.config.z_dim)  # the next replay's counters
        h = sampler._encode(frame)
        _copy_((self.pred, self.prior), (pred, prior))
        self.h.copy_(h)
        return frame

    def load(self, state, eps, fctx, k, first):
        """state (h, pred, prior) of the chunk, eps (rows, k - 1 + n_future, z_dim) or None, the
        clips' context, the first future counter (kernel noise) -> ``steps(f)``."""
        _copy_((self.h, self.pred, self.prior, self.fctx), (*state, fctx))
        if self.offset is not None:
            self.offset.fill_(first)
        return lambda f: self._step(eps, k - 1 + f)

    def _step(self, eps, i):
        if self.offset is None:
            self.eps.copy_(eps[:, i])
        with self.stages("graph step"):
            return self.replay()


def _capture(body, device):
    """``body()`` captured in a CUDA graph (after :data:`GRAPH_WARMUP` eager runs on a side stream:
    compilation, autotuning, allocator warm-up) -> ``replay()``: replays, returns body's output
    (static: rewritten by each replay). The graph and its private memory pool live while replay does."""
    side = torch.cuda.Stream(device)
    side.wait_stream(torch.cuda.current_stream(device))
    with torch.cuda.stream(side):
        for _ in range(GRAPH_WARMUP):
            body()
    torch.cuda.current_stream(device).wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out = body()

    def replay():
        graph.replay()
        return out

    return replay
