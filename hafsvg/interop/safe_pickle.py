"""Allow-list unpickling of ``torch.save`` files that hold whole pickled modules, without running them.

SVG's checkpoints pickle its modules whole: unpickling them the ordinary way imports SVG's
``models`` package and may call any function the file names, so a hostile file runs its code.
:func:`safe_torch_load` reads them with ``torch.load(..., weights_only=False,
pickle_module=<a module of this file's restricted Unpickler>)`` instead, where every global the
file names goes through :meth:`RestrictedUnpickler.find_class`, which imports nothing and hands back:

* for SVG's classes (``models.lstm.lstm``, ``models.dcgan_64.encoder``, ...), torch.nn module
  classes (also under their 2018 paths) and ``argparse.Namespace``: an inert :class:`PickledObject`
  subclass that only records its constructor arguments and its pickled state (the instance's
  ``__dict__``: ``_parameters``, ``_buffers``, ``_modules``, ...); :func:`module_tensors` rebuilds
  the state_dict from it;
* for torch's tensor and parameter rebuild functions, ``Parameter``, ``Variable`` and the 2018
  tensor classes: validating stand-ins of our own that build a plain tensor on a storage that
  torch itself read from the file (``Tensor.set_`` checks the bounds);
* storage types, dtypes, ``torch.Size``, ``torch.device``, ``collections.OrderedDict``,
  ``set``/``frozenset``, ``copyreg._reconstructor`` (a stand-in accepting only our holders) and
  ``_codecs.encode`` (latin1 bytes of protocol 2 pickles only): data types whose construction
  runs nothing;
* classes named under ``torch.optim`` (SVG stores ``opt.optimizer = torch.optim.Adam``): a
  :class:`ClassRef` that keeps the name only and cannot be called;
* anything else (``os.system``, ``builtins.eval``, ``builtins.getattr``, ``subprocess.Popen``,
  a class of another package, ...): :class:`RefusedGlobal`, before anything of it is looked up.

Why this is safe with torch 2.13's ``torch/serialization.py``: with an explicit ``pickle_module``
torch unpickles the object graph with ``class UnpicklerWrapper(pickle_module.Unpickler)`` (zip
format in ``_load``, pre-zip "legacy" format in ``_legacy_load``) whose ``find_class`` only
short-cuts storage type names (``"FloatStorage"`` -> ``StorageType``, a dtype record) and
otherwise calls ``super().find_class``, i.e. ours; the legacy header (magic number, protocol,
system info, storage keys) is read with ``pickle_module.load``, also ours. Pickle's opcodes
reach code only through globals (``GLOBAL``/``STACK_GLOBAL``/``INST`` and the extension registry
all call ``find_class``), so the only callables a file can reach are the ones listed above, and
``BUILD`` on our classes goes to their ``__setstate__``. The zip path hands TorchScript archives
to ``torch.jit.load`` and the legacy path extracts pre-2017 tar archives: :func:`safe_torch_load`
refuses both before calling ``torch.load``. The legacy path may compare a module class's source
with the one stored in the file; our holder classes set ``dump_patches = False``, so that check
can only warn (warnings are silenced), never write a patch file. What stays possible is what
any data file can do: ask for large allocations or hold wrong numbers.
"""

from __future__ import annotations

import collections
import io
import pickle
import types
import warnings
import zipfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

__all__ = [
    "ClassRef",
    "LoadReport",
    "NotACheckpoint",
    "PickledObject",
    "RefusedGlobal",
    "RestrictedUnpickler",
    "TensorRef",
    "as_plain",
    "as_plain_tensor",
    "file_format",
    "first_line",
    "kind_of",
    "load",
    "loads",
    "module_classes",
    "module_tensors",
    "resolve_global",
    "safe_torch_load",
]

#: SVG's module classes by module path (edenton/svg ``models/``).
SVG_CLASSES = {
    "models.lstm": frozenset({"lstm", "gaussian_lstm"}),
    "models.dcgan_64": frozenset({"encoder", "decoder", "dcgan_conv", "dcgan_upconv"}),
    "models.vgg_64": frozenset({"encoder", "decoder", "vgg_layer"}),
}
#: torch.nn module classes an SVG model is built from (any ``torch.nn.modules.*`` path or ``torch.nn``).
TORCH_NN_CLASSES = frozenset({
    "Conv2d", "ConvTranspose2d", "BatchNorm1d", "BatchNorm2d", "LeakyReLU", "ReLU", "Tanh", "Sigmoid",
    "Sequential", "ModuleList", "ModuleDict", "Linear", "LSTMCell", "LSTM", "MaxPool2d",
    "UpsamplingNearest2d", "UpsamplingBilinear2d", "Upsample", "Dropout", "Dropout2d", "Identity",
})  # fmt: skip
#: 2018 torch's module backend object (``module._backend``), pickled by reference to a getter.
THNN_BACKEND = ("torch.nn.backends.thnn", frozenset({"_get_thnn_function_backend", "THNNFunctionBackend"}))
TENSOR_TYPE_NAMES = frozenset(
    f"{kind}Tensor" for kind in ("Float", "Double", "Half", "BFloat16", "Long", "Int", "Short", "Char", "Byte", "Bool")
)
TENSOR_CLASSES = frozenset(
    {"torch.nn.parameter.Parameter", "torch.autograd.variable.Variable", "torch.Tensor", "torch._tensor.Tensor"}
)
#: Python 2 module names in protocol 0-2 pickles.
PY2_MODULES = {"__builtin__": "builtins", "copy_reg": "copyreg"}


class RefusedGlobal(pickle.UnpicklingError):
    """The file names a global that is not on the allow-list."""

    def __init__(self, path: str):
        super().__init__(f"refuses to load class '{path}'")
        self.path = path


class _Inert:
    """Base of everything find_class hands out that is not a plain data type: never touched by
    torch's source-patch writer, and a ``BUILD`` on the class object itself fails."""

    __slots__ = ()
    dump_patches = False

    def __setstate__(self, state):  # overridden where a state is expected
        raise pickle.UnpicklingError(f"{type(self).__name__} takes no state")


class PickledObject(_Inert):
    """An inert record of a pickled instance of an allowed class: the class path (``class_path``
    on the class), its category ("svg", "torch.nn", "python"), the constructor arguments and the
    pickled state, nothing else."""

    __slots__ = ("args", "state")
    class_path = "?"
    category = "?"

    def __new__(cls, *args, **kwargs):
        obj = object.__new__(cls)
        obj.args, obj.state = args, None
        return obj

    def __init__(self, *args, **kwargs):
        pass

    def __setstate__(self, state):
        self.state = state

    @property
    def attributes(self) -> dict:
        """The pickled ``__dict__`` (a ``(dict, slots)`` state's dict part); {} if none."""
        state = self.state
        if isinstance(state, tuple) and len(state) == 2 and isinstance(state[0], (dict, type(None))):
            state = state[0]
        return state if isinstance(state, dict) else {}

    def __repr__(self):
        return f"<pickled {self.class_path}>"


_HOLDERS: dict[tuple[str, str], type[PickledObject]] = {}


def _holder(path: str, category: str) -> type[PickledObject]:
    """The (cached) PickledObject subclass standing for the class at ``path``."""
    key = (path, category)
    if key not in _HOLDERS:
        name = "Pickled_" + path.replace(".", "_")
        _HOLDERS[key] = type(name, (PickledObject,), {"__slots__": (), "class_path": path, "category": category})
    return _HOLDERS[key]


class ClassRef(_Inert):
    """A class the file names as a value (SVG's ``opt.optimizer = torch.optim.Adam``): its path only."""

    __slots__ = ("path",)

    def __init__(self, path: str):
        self.path = path

    def __repr__(self):
        return self.path

    def __eq__(self, other):
        return isinstance(other, ClassRef) and other.path == self.path

    def __hash__(self):
        return hash(self.path)


class _Function(_Inert):
    """A validating stand-in for a function the file may call (``torch._utils._rebuild_tensor_v2``, ...)."""

    __slots__ = ("path", "fn")

    def __init__(self, path: str, fn: Callable):
        self.path, self.fn = path, fn

    def __call__(self, *args):
        return self.fn(*args)

    def __repr__(self):
        return f"<stand-in for {self.path}>"


def _check_int(value, what):
    if type(value) is not int:
        raise pickle.UnpicklingError(f"{what} must be an int, got {type(value).__name__}")
    return value


def _check_ints(value, what):
    if not isinstance(value, (tuple, list, torch.Size)):
        raise pickle.UnpicklingError(f"{what} must be a tuple of ints, got {type(value).__name__}")
    return tuple(_check_int(v, what) for v in value)


def _tensor_on(storage, offset, size, stride, dtype=None) -> torch.Tensor:
    """A plain tensor viewing ``storage`` (a TypedStorage torch read from the file)."""
    if not isinstance(storage, torch.storage.TypedStorage):
        raise pickle.UnpicklingError(f"tensor storage must be a torch storage, got {type(storage).__name__}")
    dtype = storage.dtype if dtype is None else dtype
    if not isinstance(dtype, torch.dtype):
        raise pickle.UnpicklingError(f"tensor dtype must be a torch.dtype, got {type(dtype).__name__}")
    untyped = storage._untyped_storage
    t = torch.empty((0,), dtype=dtype, device=untyped.device)
    offset = _check_int(offset, "storage offset")
    return t.set_(untyped, offset, _check_ints(size, "size"), _check_ints(stride, "stride"))


def _no_metadata(metadata):
    if metadata:
        raise pickle.UnpicklingError("tensor metadata (conjugate / negative bits) is not supported here")


def _rebuild_tensor(storage, offset, size, stride):
    return _tensor_on(storage, offset, size, stride)


def _rebuild_tensor_v2(storage, offset, size, stride, requires_grad=False, backward_hooks=None, metadata=None):
    _no_metadata(metadata)  # backward hooks are never kept
    return _tensor_on(storage, offset, size, stride)


def _rebuild_tensor_v3(storage, offset, size, stride, requires_grad, backward_hooks, dtype, metadata=None):
    _no_metadata(metadata)
    return _tensor_on(storage, offset, size, stride, dtype)


def _tensor_of(value, what="parameter data") -> torch.Tensor:
    value = as_plain_tensor(value)
    if not isinstance(value, torch.Tensor):
        raise pickle.UnpicklingError(f"{what} must be a tensor, got {type(value).__name__}")
    return value


def _rebuild_parameter(data, requires_grad=True, backward_hooks=None, state=None):
    return _tensor_of(data)


def _rebuild_from_type_v2(func, new_type, args, state):
    if not isinstance(func, _Function) or not isinstance(args, tuple):
        raise pickle.UnpicklingError("_rebuild_from_type_v2 must call an allowed rebuild function")
    return _tensor_of(func(*args), "rebuilt tensor")


def _codecs_encode(text, encoding="utf-8"):
    if not isinstance(text, str) or encoding not in ("latin1", "latin-1"):
        raise pickle.UnpicklingError("_codecs.encode is only allowed for the latin1 bytes of protocol 2 pickles")
    return text.encode("latin1")


class TensorRef(_Inert):
    """Stands for ``Parameter(data, requires_grad)`` (torch 0.4), ``Variable`` and
    ``torch[.cuda].FloatTensor()`` + ``(storage, offset, size, stride)`` state (torch 0.3):
    ``tensor`` is the plain tensor, or None until the state arrives."""

    __slots__ = ("tensor",)

    def __new__(cls, data=None, *args, **kwargs):
        obj = object.__new__(cls)
        obj.tensor = None if data is None else _tensor_of(data)
        return obj

    def __init__(self, *args, **kwargs):
        pass

    def __setstate__(self, state):
        if not isinstance(state, tuple):
            raise pickle.UnpicklingError(f"unexpected tensor state of type {type(state).__name__}")
        if len(state) == 4 and isinstance(state[0], torch.storage.TypedStorage):
            self.tensor = _tensor_on(*state)  # 0.3 tensor: (storage, offset, size, stride)
        elif len(state) == 5 and self.tensor is None:
            self.tensor = _tensor_of(state[0])  # 0.3 Variable: (data, ...flags)
        # other states (requires_grad, volatile, backward hooks) carry no weights

    def __repr__(self):
        return f"<tensor {None if self.tensor is None else tuple(self.tensor.shape)}>"


def as_plain_tensor(value):
    """``value`` with a :class:`TensorRef` replaced by its tensor."""
    return value.tensor if isinstance(value, TensorRef) else value


def _reconstructor(cls, base, state):
    """``copyreg._reconstructor`` (protocol 0/1 object creation) for our holders only."""
    if not (isinstance(cls, type) and issubclass(cls, PickledObject)) or base is not object:
        raise pickle.UnpicklingError("copyreg._reconstructor is only allowed for allowed classes")
    return cls.__new__(cls)


_TORCH_FUNCTIONS = {
    "torch._utils._rebuild_tensor": _rebuild_tensor,
    "torch._utils._rebuild_tensor_v2": _rebuild_tensor_v2,
    "torch._utils._rebuild_tensor_v3": _rebuild_tensor_v3,
    "torch._utils._rebuild_parameter": _rebuild_parameter,
    "torch._utils._rebuild_parameter_with_state": _rebuild_parameter,
    "torch._tensor._rebuild_from_type_v2": _rebuild_from_type_v2,
}
_THNN = object()  # what ``_get_thnn_function_backend()`` stands for
#: torch.float32 & co. by attribute name (read from the module dict: no lazy imports of torch submodules)
_DTYPES = {name: value for name, value in vars(torch).items() if isinstance(value, torch.dtype)}
#: Deepest module nesting :func:`module_tensors` follows (SVG's is 4).
MAX_DEPTH = 32


def _storage_type(name: str):
    try:
        return torch.serialization.StorageType(name)
    except KeyError:
        return None


def resolve_global(module: str, name: str) -> tuple[Any, str]:
    """(the object standing for global ``module.name``, its category); RefusedGlobal if not allowed.

    Categories: "svg" (SVG's classes), "torch.nn", "tensor" (rebuild functions, tensor classes,
    storages, dtypes), "optimizer", "python" (containers, Namespace, copyreg).
    """
    if not isinstance(name, str) or not isinstance(module, str):
        raise RefusedGlobal(f"{module!r}.{name!r}")
    module = PY2_MODULES.get(module, module)
    path = f"{module}.{name}"
    if name in SVG_CLASSES.get(module, ()):
        return _holder(path, "svg"), "svg"
    if name in TORCH_NN_CLASSES and (module == "torch.nn" or module.startswith("torch.nn.modules.")):
        return _holder(path, "torch.nn"), "torch.nn"
    if module == THNN_BACKEND[0] and name in THNN_BACKEND[1]:
        return (_Function(path, lambda *args: _THNN) if name.startswith("_") else _holder(path, "torch.nn")), "torch.nn"
    if path in _TORCH_FUNCTIONS:
        return _Function(path, _TORCH_FUNCTIONS[path]), "tensor"
    if path in TENSOR_CLASSES or (module in ("torch", "torch.cuda") and name in TENSOR_TYPE_NAMES):
        return TensorRef, "tensor"
    if module in ("torch", "torch.cuda") and name.endswith("Storage") and _storage_type(name) is not None:
        return _storage_type(name), "tensor"
    if module == "torch" and name in _DTYPES:
        return _DTYPES[name], "tensor"
    if path in ("torch.Size", "torch.device"):
        return getattr(torch, name), "tensor"
    if module == "torch.optim" or module.startswith("torch.optim."):
        return ClassRef(path), "optimizer"
    if path == "argparse.Namespace":
        return _holder(path, "python"), "python"
    plain = {
        "collections.OrderedDict": collections.OrderedDict,
        "builtins.set": set,
        "builtins.frozenset": frozenset,
        "builtins.object": object,
        "copyreg._reconstructor": _Function(path, _reconstructor),
        "_codecs.encode": _Function(path, _codecs_encode),
    }
    if path in plain:
        return plain[path], "python"
    raise RefusedGlobal(path)


@dataclass
class LoadReport:
    """What a restricted load met: the globals the file named, by category, with counts."""

    globals: dict[str, collections.Counter] = field(
        default_factory=lambda: collections.defaultdict(collections.Counter)
    )

    def record(self, module: str, name: str, category: str) -> None:
        self.globals[category][f"{PY2_MODULES.get(module, module)}.{name}"] += 1

    def names(self, category: str) -> list[str]:
        return sorted(self.globals.get(category, ()))


class RestrictedUnpickler(pickle.Unpickler):
    """pickle.Unpickler whose globals come from :func:`resolve_global` only; ``report`` (a
    :class:`LoadReport` or None) records them."""

    report: LoadReport | None = None

    def find_class(self, module, name):
        obj, category = resolve_global(module, name)
        if self.report is not None:
            self.report.record(module, name, category)
        return obj


def load(file, **kwargs):
    """``pickle.load`` with :class:`RestrictedUnpickler`."""
    return RestrictedUnpickler(file, **kwargs).load()


def loads(data: bytes, **kwargs):
    """``pickle.loads`` with :class:`RestrictedUnpickler`."""
    return RestrictedUnpickler(io.BytesIO(data), **kwargs).load()


def _pickle_module(report: LoadReport) -> types.ModuleType:
    """A module object for ``torch.load(pickle_module=...)`` whose unpickling records into ``report``."""
    mod = types.ModuleType(f"{__name__}.session")
    unpickler = type("RecordingUnpickler", (RestrictedUnpickler,), {"report": report})
    mod.Unpickler = unpickler
    mod.load = lambda file, **kw: unpickler(file, **kw).load()
    mod.loads = lambda data, **kw: unpickler(io.BytesIO(data), **kw).load()
    mod.UnpicklingError = pickle.UnpicklingError
    return mod


def first_line(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    return text[0] if text else type(err).__name__


class NotACheckpoint(ValueError):
    """The file is not something torch.save wrote (empty, text, random bytes, another archive)."""


def file_format(path: Path) -> str:
    """The format: "zip" or "legacy" (pre-zip ``torch.save``); NotACheckpoint for empty files, TorchScript
    archives and the pre-2017 tar format (which torch would extract to disk)."""
    with open(path, "rb") as f:
        head = f.read(512)
    if not head:
        raise NotACheckpoint(f"{path}: not a readable checkpoint (the file is empty)")
    if zipfile.is_zipfile(path):
        try:
            with zipfile.ZipFile(path) as z:
                names = z.namelist()
        except (zipfile.BadZipFile, OSError) as err:
            raise NotACheckpoint(f"{path}: not a readable checkpoint (a damaged zip archive: {err})") from err
        if any(n.rpartition("/")[2] == "constants.pkl" for n in names):
            raise NotACheckpoint(f"{path}: a TorchScript archive, not a checkpoint of pickled modules")
        if not any(n.rpartition("/")[2] == "data.pkl" for n in names):
            raise NotACheckpoint(f"{path}: not a readable checkpoint (a zip archive without data.pkl)")
        return "zip"
    if len(head) >= 262 and head[257:262] == b"ustar":
        raise NotACheckpoint(f"{path}: the pre-2017 tar checkpoint format is not supported")
    if head[:1] != b"\x80":
        raise NotACheckpoint(f"{path}: not a readable checkpoint (not written by torch.save: no pickle at its start)")
    return "legacy"


def safe_torch_load(path: str | Path, map_location: Any = "cpu") -> tuple[Any, str, LoadReport]:
    """Read a ``torch.save`` file (zip or legacy) with the restricted unpickler.

    Returns:
        (the object graph, with PickledObject holders for module instances; "zip" or "legacy";
        the LoadReport). FileNotFoundError for a missing path; ValueError (one line, naming the
        path) for a refused global; NotACheckpoint (a ValueError) for a file torch cannot read.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {str(path)!r} not found")
    fmt = file_format(path)
    report = LoadReport()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # source-change and "couldn't retrieve source" notes of legacy files
            obj = torch.load(
                path, map_location="cpu" if map_location is None else map_location,
                weights_only=False, pickle_module=_pickle_module(report),
            )  # fmt: skip
    except RefusedGlobal as err:
        raise ValueError(
            f"{path}: refuses to load class '{err.path}' (not on the allow-list of SVG checkpoint contents; "
            "nothing from the file was run)"
        ) from None
    except Exception as err:  # anything a malformed file makes torch or pickle raise
        raise NotACheckpoint(f"{path}: not a readable checkpoint ({fmt} torch.save format: {first_line(err)})") from err
    return obj, fmt, report


def as_plain(value):
    """Namespace holders -> dict, ClassRef -> its path string, TensorRef -> tensor; else unchanged."""
    if isinstance(value, PickledObject) and value.class_path == "argparse.Namespace":
        return {k: as_plain(v) for k, v in value.attributes.items()}
    if isinstance(value, ClassRef):
        return value.path
    return as_plain_tensor(value)


def module_tensors(obj, prefix: str = "") -> collections.OrderedDict:
    """The state_dict of a pickled module (a PickledObject of an SVG or torch.nn class), rebuilt
    from its ``_parameters``, ``_buffers`` (persistent ones) and ``_modules``; keys prefixed.
    ValueError if the structure is not a module's."""
    out: collections.OrderedDict = collections.OrderedDict()
    _walk(obj, prefix, out, ())
    return out


def _walk(obj, prefix, out, parents):
    where = prefix.rstrip(".") or "the module"
    if not isinstance(obj, PickledObject) or obj.category not in ("svg", "torch.nn"):
        raise ValueError(f"{where} is a {kind_of(obj)}, not a pickled module")
    if any(obj is p for p in parents) or len(parents) > MAX_DEPTH:
        raise ValueError(f"{where}: modules nested in a cycle or deeper than {MAX_DEPTH} levels")
    attrs = obj.attributes
    if "_parameters" not in attrs or "_modules" not in attrs:
        raise ValueError(f"{where} ({obj.class_path}) has no _parameters/_modules: not a pickled module")
    skip = attrs.get("_non_persistent_buffers_set") or set()
    for group in ("_parameters", "_buffers"):
        entries = attrs.get(group) or {}
        if not isinstance(entries, dict):
            raise ValueError(f"{where}.{group} is a {type(entries).__name__}, not a dict")
        for name, value in entries.items():
            if value is None or (group == "_buffers" and name in skip):
                continue
            value = as_plain_tensor(value)
            if not isinstance(value, torch.Tensor):
                raise ValueError(f"{prefix}{name} is a {kind_of(value)}, not a tensor")
            out[prefix + name] = value
    modules = attrs["_modules"]
    if not isinstance(modules, dict):
        raise ValueError(f"{where}._modules is a {type(modules).__name__}, not a dict")
    for name, child in modules.items():
        if child is not None:
            _walk(child, f"{prefix}{name}.", out, (*parents, obj))


def kind_of(obj) -> str:
    """What ``obj`` is, for messages: a pickled object's class path, else its type's name."""
    return f"pickled {obj.class_path}" if isinstance(obj, PickledObject) else type(obj).__name__


def module_classes(obj) -> list[str]:
    """Class paths of a pickled module and its submodules, in order, without repeats."""
    seen: dict[str, None] = {}
    visited: set[int] = set()

    def visit(o):
        if isinstance(o, PickledObject) and id(o) not in visited:
            visited.add(id(o))
            seen.setdefault(o.class_path)
            modules = o.attributes.get("_modules")
            for child in modules.values() if isinstance(modules, dict) else ():
                visit(child)

    visit(obj)
    return list(seen)
