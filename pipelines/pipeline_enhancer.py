"""``EnhancerPipeline``: the A-FINE diffusion enhancer (PASD) as a diffusers pipeline.

Components: SD-1.5 ``vae``, ``text_encoder``, ``tokenizer``; the PASD ``unet``
(``PASDUNet2DConditionModel`` of ``unet_paca.py``); a stock ``controlnet``; a UniPC ``scheduler``
(see ``make_inference_scheduler`` in ``noising.py``).

One call, per image (what the official ``infer_pasd_enhancer.py`` + ``pipeline_pasd_infer.py`` do):

1. optional resize of the short side up to ``process_size``; sizes not divisible by 8 are resized to
   the multiple of 8 below (the official code required multiples of 8);
2. prompt / negative prompt through CLIP; classifier-free guidance when ``guidance_scale > 1``;
3. the control image in [0, 1] (not normalised) drives the ControlNet, whose residuals go to the UNet
   skips and to the PACA blocks;
4. start from noise, or from the input's VAE latent noised to timestep 999 and then again to
   ``added_noise_level`` (faithful "double noising", see ``double_noise`` in ``noising.py``);
5. UniPC denoising; above ``latent_tiled_size**2`` latent pixels the latent is processed in tiles
   blended with Gaussian weights;
6. untiled VAE decode, 8-bit quantisation, wavelet colour fix against the input, resize back to the
   original size (bicubic).

This file is saved with the weights by :meth:`EnhancerPipeline.save_pretrained` (together with
``noising.py``, ``tiling.py``, ``wavelet.py``, ``model_source.py`` and ``unet_paca.py``), so a saved
folder or Hub repository loads with ``DiffusionPipeline.from_pretrained(folder, trust_remote_code=True)``
without this project installed. Hence only relative imports of those files here.
"""

from __future__ import annotations

import functools
import json
import logging
import math
import os
import shutil
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence, Union

import numpy as np
import PIL.Image
import torch
import torch.nn.functional as F
from diffusers import AutoencoderKL, ControlNetModel, DiffusionPipeline, UNet2DConditionModel
from diffusers.callbacks import MultiPipelineCallbacks, PipelineCallback
from diffusers.image_processor import VaeImageProcessor
from diffusers.schedulers.scheduling_utils import SchedulerMixin
from diffusers.utils import BaseOutput
from diffusers.utils.torch_utils import randn_tensor
from transformers import CLIPTextModel, CLIPTokenizer

from .model_source import check_model_source
from .noising import MAX_INFERENCE_STEPS, MAX_NOISE_LEVEL, double_noise, make_inference_scheduler
from .tiling import gaussian_tile_weights, needs_tiling, tile_offsets
from .wavelet import wavelet_color_fix

logger = logging.getLogger(__name__)

__all__ = ["EnhancerPipeline", "EnhancerPipelineOutput", "DEFAULT_PROMPT", "DEFAULT_NEGATIVE_PROMPT"]

#: The fixed prompt used to generate DiffIQA (``"" + added_prompt`` in the official script).
DEFAULT_PROMPT = "clean, high-resolution, 8k"
#: The fixed negative prompt used to generate DiffIQA.
DEFAULT_NEGATIVE_PROMPT = "blurry, dotted, noise, raster lines, unclear, lowres, over-smoothed"

ImageInput = Union[PIL.Image.Image, np.ndarray, torch.Tensor]
_OUTPUT_TYPES = ("pil", "np", "pt", "latent")

#: Code saved into a pipeline folder, per subfolder ("" = the root), for ``trust_remote_code`` loading.
CODE_FILES: dict[str, tuple[str, ...]] = {
    "": ("pipeline_enhancer.py", "noising.py", "tiling.py", "wavelet.py", "model_source.py", "unet_paca.py"),
    "unet": ("unet_paca.py",),
}
#: ``model_index.json`` entries of a saved pipeline: [module file, class] resolved by diffusers' custom code loader.
REMOTE_CLASS_NAME = ["pipeline_enhancer", "EnhancerPipeline"]
REMOTE_UNET = ["unet_paca", "PASDUNet2DConditionModel"]


@dataclass
class EnhancerPipelineOutput(BaseOutput):
    """Output of :class:`EnhancerPipeline`.

    ``images``: a list of ``B`` PIL RGB images (``output_type="pil"``), a float32 numpy array
    ``(B, H, W, 3)`` in [0, 1] (``"np"``), a float32 tensor ``(B, 3, H, W)`` in [0, 1] (``"pt"``), or the
    final latents ``(B, 4, h, w)`` (``"latent"``). ``H, W`` are the input's size. Pixel outputs are
    8-bit values (multiples of 1/255), as the official script saved PNGs.
    """

    images: Union[list[PIL.Image.Image], np.ndarray, torch.Tensor]


_OLD_CALL_WARNING = "pipe(image, prompt) is deprecated; call pipe(prompt, image) or pass image= by keyword"
#: warnings raised in ``_enhance`` name the user's line: it sits under ``__call__`` and torch.no_grad's wrapper
_CALLER = 4


def _is_image_like(value) -> bool:
    if isinstance(value, (PIL.Image.Image, np.ndarray, torch.Tensor)):
        return True
    return isinstance(value, (list, tuple)) and len(value) > 0 and isinstance(
        value[0], (PIL.Image.Image, np.ndarray, torch.Tensor)
    )


def _split_batch(image) -> list:
    """``image`` argument -> list of single images (a 4-D array/tensor is a batch)."""
    if isinstance(image, (list, tuple)):
        return list(image)
    if isinstance(image, torch.Tensor) and image.dim() == 4:
        return list(image)
    if isinstance(image, np.ndarray) and image.ndim == 4:
        return list(image)
    return [image]


def _to_tensor01(image, index: int, processor: VaeImageProcessor) -> torch.Tensor:
    """One image -> float32 ``(3, H, W)`` in [0, 1]. Raises ``ValueError``/``TypeError`` naming it.

    PIL images go through ``processor`` (RGB conversion, /255). uint8 arrays/tensors are divided by
    255; float ones may be in [0, 1] or, if they hold negative values, in [-1, 1] (then mapped to [0, 1]).
    """
    name = f"image[{index}]"
    if isinstance(image, (str, os.PathLike)):
        raise TypeError(
            f"{name}: got a file path ({os.fspath(image)!r}); pass the image itself, e.g. "
            "PIL.Image.open(path).convert('RGB') (or modeling_afine.image_io.load_image(path))"
        )
    if isinstance(image, PIL.Image.Image):
        arr = processor.pil_to_numpy(processor.convert_to_rgb(image))  # (1, H, W, 3) float32 in [0, 1]
        return processor.numpy_to_pt(arr)[0]
    if isinstance(image, np.ndarray):
        arr = image
        if arr.ndim == 2:
            arr = np.repeat(arr[..., None], 3, axis=2)
        if arr.ndim != 3 or arr.shape[2] != 3:
            raise ValueError(f"{name}: numpy images must be (H, W, 3) or (H, W), got shape {arr.shape}")
        if arr.dtype == np.uint8:
            arr = arr.astype(np.float32) / 255.0
        elif np.issubdtype(arr.dtype, np.floating):
            arr = arr.astype(np.float32)
        else:
            raise TypeError(f"{name}: numpy images must be uint8 or float, got dtype {arr.dtype}")
        t = processor.numpy_to_pt(np.ascontiguousarray(arr)[None])[0]
    elif isinstance(image, torch.Tensor):
        t = image.detach()
        if t.dim() == 4 and t.shape[0] == 1:
            t = t[0]
        if t.dim() != 3 or t.shape[0] != 3:
            raise ValueError(f"{name}: tensors must be (3, H, W) or (B, 3, H, W), got shape {tuple(image.shape)}")
        if t.dtype == torch.uint8:
            t = t.float() / 255.0
        elif not t.is_floating_point():
            raise TypeError(f"{name}: tensors must be uint8 or float, got dtype {t.dtype}")
        t = t.float().cpu()
    else:
        raise TypeError(f"{name}: expected a PIL image, numpy array or torch tensor, got {type(image).__name__}")
    if not torch.isfinite(t).all():
        raise ValueError(f"{name}: contains NaN or infinite values")
    lo, hi = float(t.min()), float(t.max())
    if lo < -1e-3:
        if lo < -1 - 1e-3 or hi > 1 + 1e-3:
            raise ValueError(f"{name}: float images must be in [0, 1] or [-1, 1], got values in [{lo:.3g}, {hi:.3g}]")
        t = (t + 1) / 2  # a [-1, 1] image (it has negative values)
    elif hi > 1 + 1e-3:
        raise ValueError(f"{name}: float images must be in [0, 1] or [-1, 1], got values in [{lo:.3g}, {hi:.3g}]")
    return t.clamp(0, 1)


def _resize(x: torch.Tensor, size: tuple[int, int], mode: str) -> torch.Tensor:
    """Resize ``(B, C, H, W)`` float to ``size=(H', W')`` (antialiased like PIL when shrinking)."""
    if tuple(x.shape[-2:]) == tuple(size):
        return x
    return F.interpolate(x, size=size, mode=mode, align_corners=False, antialias=True)


def _as_list(value, n: int, what: str) -> list:
    if isinstance(value, str):
        return [value] * n
    if isinstance(value, (list, tuple)) and all(isinstance(v, str) for v in value):
        if len(value) == 1:
            return list(value) * n
        if len(value) != n:
            raise ValueError(f"{what}: got {len(value)} strings for a batch of {n}")
        return list(value)
    raise TypeError(f"{what} must be a string or a list of strings, got {type(value).__name__}")


def _count(value) -> int:
    return len(value) if isinstance(value, (list, tuple)) else 1


def _read_model_index(source, hub_kwargs: dict) -> dict | None:
    """``model_index.json`` of a local folder or Hub repository (``None`` if there is none / offline)."""
    index = Path(os.fspath(source)).expanduser() / "model_index.json"
    if not index.is_file():
        if Path(os.fspath(source)).expanduser().exists():
            return None
        try:
            from huggingface_hub import hf_hub_download

            index = Path(hf_hub_download(os.fspath(source), "model_index.json", **hub_kwargs))
        except Exception:  # noqa: BLE001 - no index / offline: the component loaders report it
            return None
    try:
        data = json.loads(index.read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def _is_enhancer_index(index: dict | None) -> bool:
    name = (index or {}).get("_class_name")
    if isinstance(name, (list, tuple)):
        name = name[-1] if name else None
    return name == "EnhancerPipeline"


_HUB_KWARGS = ("revision", "cache_dir", "local_files_only", "token", "force_download", "proxies")
_MODEL_KWARGS = ("variant", "use_safetensors", "low_cpu_mem_usage", "device_map")
_COMPONENTS = ("vae", "text_encoder", "tokenizer", "unet", "controlnet", "scheduler")


def _check_unet(unet) -> None:
    # Duck-typed: a pipeline loaded with trust_remote_code gets the UNet class from its own copy of
    # unet_paca.py, which is a different class object from the one this file could import.
    blocks = getattr(unet, "up_blocks", None)
    if blocks is None or not all(hasattr(b, "pixel_attentions") for b in blocks):
        raise TypeError(
            f"unet must be a PASDUNet2DConditionModel, got {type(unet).__name__}; convert a stock UNet "
            "with PASDUNet2DConditionModel.from_unet(unet)"
        )


class EnhancerPipeline(DiffusionPipeline):
    r"""The A-FINE / PASD diffusion enhancer.

    Load real weights with :meth:`from_sd15` (an SD-1.5 directory or Hub id plus the released
    enhancer folder holding ``unet/`` and ``controlnet/``), or :meth:`from_pretrained` on a directory
    written by :meth:`save_pretrained` (or on an SD-1.5 diffusers directory whose ``unet/`` is the
    released PASD UNet and that has the released ``controlnet/`` folder). Without this project
    installed, a saved folder loads with ``DiffusionPipeline.from_pretrained(folder, trust_remote_code=True)``.

    Call it like diffusers' ``StableDiffusionControlNetPipeline``: ``pipe(prompt, image, ...)``
    (``prompt`` may be omitted: the DiffIQA prompt is the default).
    """

    model_cpu_offload_seq = "text_encoder->controlnet->unet->vae"
    _callback_tensor_inputs = ["latents", "prompt_embeds", "negative_prompt_embeds"]

    def __init__(
        self,
        vae: AutoencoderKL,
        text_encoder: CLIPTextModel,
        tokenizer: CLIPTokenizer,
        unet: UNet2DConditionModel,
        controlnet: ControlNetModel,
        scheduler: SchedulerMixin,
    ):
        super().__init__()
        _check_unet(unet)
        self.register_modules(
            vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet, controlnet=controlnet, scheduler=scheduler
        )
        self.vae_scale_factor = 2 ** (len(self.vae.config.block_out_channels) - 1)
        # The control image stays in [0, 1] (the ControlNet was trained on un-normalised images).
        self.image_processor = VaeImageProcessor(
            vae_scale_factor=self.vae_scale_factor, do_resize=False, do_normalize=False, do_convert_rgb=True
        )

    # ------------------------------------------------------------------ loading / saving
    @classmethod
    def _assemble(
        cls,
        base_model,
        enhancer,
        kwargs: dict,
        scheduler_from_index: dict | None = None,
        labels: tuple[str, str] = ("SD-1.5 model", "enhancer"),
        checked: dict | None = None,
    ) -> "EnhancerPipeline":
        """Load every component not given in ``kwargs`` from ``base_model`` (vae, text_encoder,
        tokenizer, scheduler) and ``enhancer`` (unet, controlnet)."""
        from diffusers import UniPCMultistepScheduler

        from .unet_paca import PASDUNet2DConditionModel

        given = {k: kwargs.pop(k) for k in _COMPONENTS if k in kwargs}
        dtype = kwargs.pop("dtype", None)
        torch_dtype = kwargs.pop("torch_dtype", None)  # older diffusers spelling
        dtype = torch_dtype if dtype is None else dtype
        kwargs.pop("trust_remote_code", None)  # this is the project's own code
        kwargs.pop("custom_pipeline", None)
        unknown = sorted(set(kwargs) - set(_HUB_KWARGS) - set(_MODEL_KWARGS))
        if unknown:
            raise TypeError(f"unexpected keyword argument(s) {unknown} (components are {list(_COMPONENTS)})")
        hub = {k: v for k, v in kwargs.items() if k in _HUB_KWARGS}
        model = {**hub, **{k: v for k, v in kwargs.items() if k in _MODEL_KWARGS}}
        if dtype is not None:
            model["dtype"] = dtype

        needs = [c for c in _COMPONENTS if c not in given]
        sources = dict(checked or {})  # source -> extra loader kwargs (see check_model_source)
        for source, probe, what, comps in (
            (base_model, "vae/config.json", labels[0], ("vae", "text_encoder", "tokenizer", "scheduler")),
            (enhancer, "unet/config.json", labels[1], ("unet", "controlnet")),
        ):
            if any(c in needs for c in comps) and source not in sources:
                sources[source] = check_model_source(
                    source, probe, what=what, revision=hub.get("revision"), cache_dir=hub.get("cache_dir"),
                    local_files_only=hub.get("local_files_only", False),
                )

        def load(what: str, loader, source, subfolder, **extra):
            try:
                return loader(source, subfolder=subfolder, **{**extra, **sources.get(source, {})})
            except (OSError, ValueError) as err:
                raise OSError(f"could not load the {what} from {os.fspath(source)}/{subfolder}: {err}") from err

        if "vae" in needs:
            given["vae"] = load("VAE", AutoencoderKL.from_pretrained, base_model, "vae", **model)
        if "text_encoder" in needs:
            given["text_encoder"] = load("text encoder", CLIPTextModel.from_pretrained, base_model, "text_encoder", **model)
        if "tokenizer" in needs:
            given["tokenizer"] = load("tokenizer", CLIPTokenizer.from_pretrained, base_model, "tokenizer", **hub)
        if "scheduler" in needs:
            entry = (scheduler_from_index or {}).get("scheduler")
            if isinstance(entry, (list, tuple)) and len(entry) == 2 and entry[0] == "diffusers":
                import diffusers

                sched_cls = getattr(diffusers, entry[1], None) or UniPCMultistepScheduler
                given["scheduler"] = load("scheduler", sched_cls.from_pretrained, base_model, "scheduler", **hub)
            else:  # SD-1.5's scheduler config: its noise schedule, with the sampler settings of the official runs
                base = load("scheduler config", UniPCMultistepScheduler.from_pretrained, base_model, "scheduler", **hub)
                given["scheduler"] = make_inference_scheduler(base.config)
        if "unet" in needs:
            given["unet"] = load("PASD UNet", PASDUNet2DConditionModel.from_pretrained, enhancer, "unet", **model)
        if "controlnet" in needs:
            given["controlnet"] = load("ControlNet", ControlNetModel.from_pretrained, enhancer, "controlnet", **model)
        return cls(**given)

    @classmethod
    def from_sd15(
        cls,
        base_model: str | os.PathLike,
        enhancer: str | os.PathLike | None = None,
        **kwargs: Any,
    ) -> "EnhancerPipeline":
        """Assemble the pipeline from SD-1.5 (``vae``, ``text_encoder``, ``tokenizer``, ``scheduler``
        subfolders of ``base_model``) and the enhancer weights (``unet/`` and ``controlnet/`` of
        ``enhancer``; ``enhancer=None`` reads them from ``base_model``). Both may be local
        directories or Hub ids. UniPC is configured from SD's scheduler config with
        ``final_sigmas_type="sigma_min"``.

        Keyword arguments: components to use instead of loading them (``vae=``, ``text_encoder=``,
        ``tokenizer=``, ``unet=``, ``controlnet=``, ``scheduler=``); ``dtype`` (or ``torch_dtype``);
        Hub options (``revision``, ``cache_dir``, ``local_files_only``, ``token``, ...) and model
        options (``variant``, ``use_safetensors``, ``low_cpu_mem_usage``, ``device_map``).

        Raises ``OSError`` naming the component that could not be loaded (``ModelSourceError`` when a
        folder does not exist or a Hub id is neither cached nor reachable).
        """
        return cls._assemble(base_model, base_model if enhancer is None else enhancer, dict(kwargs))

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, **kwargs) -> "EnhancerPipeline":
        """Load a saved ``EnhancerPipeline`` (local folder or Hub id), or an SD-1.5 diffusers
        folder/repository whose ``unet/`` is the released PASD UNet and that has the released
        ``controlnet/`` folder. Keyword arguments as :meth:`from_sd15`: components passed here
        (``controlnet=cn, unet=u``) are used instead of loading them.

        This uses the project's classes; ``trust_remote_code`` is not needed (and ignored).
        """
        hub = {k: kwargs[k] for k in ("revision", "cache_dir", "local_files_only", "token") if k in kwargs}
        source = pretrained_model_name_or_path
        # fail fast (missing folder, uncached Hub id while offline) before anything touches the network
        extra = check_model_source(source, "model_index.json", what="model", revision=hub.get("revision"),
                                   cache_dir=hub.get("cache_dir"), local_files_only=hub.get("local_files_only", False))
        index = _read_model_index(source, {**hub, **extra})
        return cls._assemble(
            source, source, dict(kwargs), scheduler_from_index=index if _is_enhancer_index(index) else None,
            labels=("model", "model"), checked={source: extra},
        )

    def save_pretrained(self, save_directory: str | os.PathLike, *args, push_to_hub: bool = False, **kwargs) -> None:
        """As :meth:`DiffusionPipeline.save_pretrained`, plus the code: the folder gets
        ``pipeline_enhancer.py`` (and the files it imports) at its root and ``unet/unet_paca.py``, and
        ``model_index.json`` names them, so that
        ``DiffusionPipeline.from_pretrained(folder, trust_remote_code=True)`` works without this
        project installed. ``push_to_hub=True`` uploads the complete folder."""
        hub_keys = ("commit_message", "private", "create_pr", "token", "repo_id")
        hub_kwargs = {k: kwargs.pop(k) for k in hub_keys if k in kwargs}
        super().save_pretrained(save_directory, *args, push_to_hub=False, **kwargs)
        folder = Path(save_directory)
        here = Path(__file__).resolve().parent
        for sub, names in CODE_FILES.items():
            for name in names:
                shutil.copyfile(here / name, folder / sub / name)
        index_path = folder / "model_index.json"
        index = json.loads(index_path.read_text())
        index["_class_name"] = REMOTE_CLASS_NAME
        index["unet"] = REMOTE_UNET
        index_path.write_text(json.dumps(index, indent=2, sort_keys=True) + "\n")
        if push_to_hub:
            from huggingface_hub import create_repo

            repo_id = hub_kwargs.pop("repo_id", folder.name)
            repo_id = create_repo(repo_id, exist_ok=True, private=hub_kwargs.pop("private", None),
                                  token=hub_kwargs.get("token")).repo_id
            self._upload_folder(str(folder), repo_id, token=hub_kwargs.get("token"),
                                commit_message=hub_kwargs.get("commit_message"),
                                create_pr=hub_kwargs.get("create_pr", False))

    # ------------------------------------------------------------------ properties (diffusers conventions)
    @property
    def guidance_scale(self) -> float:
        return self._guidance_scale

    @property
    def do_classifier_free_guidance(self) -> bool:
        return self._guidance_scale > 1.0

    @property
    def cross_attention_kwargs(self) -> dict | None:
        return self._cross_attention_kwargs

    @property
    def num_timesteps(self) -> int:
        return self._num_timesteps

    @property
    def interrupt(self) -> bool:
        return self._interrupt

    # ------------------------------------------------------------------ pieces
    def _embed(self, prompts: list[str], device: torch.device) -> torch.Tensor:
        ids = self.tokenizer(
            prompts,
            padding="max_length",
            max_length=self.tokenizer.model_max_length,
            truncation=True,
            return_tensors="pt",
        ).input_ids.to(device)
        return self.text_encoder(ids)[0].to(dtype=self.text_encoder.dtype)

    def encode_prompt(
        self,
        prompt: str | list[str] | None,
        device: torch.device,
        num_images_per_prompt: int = 1,
        do_classifier_free_guidance: bool = True,
        negative_prompt: str | list[str] | None = None,
        prompt_embeds: torch.Tensor | None = None,
        negative_prompt_embeds: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """CLIP text embeddings ``(B * num_images_per_prompt, 77, D)`` of the prompts (padded/truncated
        to the tokenizer length) and of the negative prompts (``None`` without guidance; an empty
        negative prompt when ``negative_prompt`` is ``None``). Precomputed embeddings are used as given."""
        if prompt_embeds is None:
            prompts = _as_list(prompt, _count(prompt), "prompt")
            prompt_embeds = self._embed(prompts, device)
        batch = prompt_embeds.shape[0]
        negative = None
        if do_classifier_free_guidance:
            if negative_prompt_embeds is None:
                negative_prompt_embeds = self._embed(
                    _as_list("" if negative_prompt is None else negative_prompt, batch, "negative_prompt"), device
                )
            negative = negative_prompt_embeds.to(device=device, dtype=self.text_encoder.dtype)
            negative = negative.repeat_interleave(num_images_per_prompt, dim=0)
        prompt_embeds = prompt_embeds.to(device=device, dtype=self.text_encoder.dtype)
        return prompt_embeds.repeat_interleave(num_images_per_prompt, dim=0), negative

    def check_inputs(
        self,
        images: list[torch.Tensor],
        prompt,
        negative_prompt,
        prompt_embeds,
        negative_prompt_embeds,
        num_images_per_prompt,
        num_inference_steps,
        guidance_scale,
        controlnet_conditioning_scale,
        init_latent_from_noise,
        added_noise_level,
        latents,
        generator,
        latent_tiled_size,
        latent_tiled_overlap,
        process_size,
        output_type,
        callback_on_step_end_tensor_inputs,
    ) -> int:
        """Raise ``ValueError``/``TypeError`` with a clear message for unusable arguments; return the
        batch size before ``num_images_per_prompt``."""
        n = len(images)
        if n == 0:
            raise ValueError("image: no images given")
        size = tuple(images[0].shape[-2:])
        for i, im in enumerate(images):
            if tuple(im.shape[-2:]) != size:
                raise ValueError(f"image[{i}]: all images in one call must have the same size, {size} != {tuple(im.shape[-2:])}")
            if min(im.shape[-2:]) < self.vae_scale_factor:
                raise ValueError(f"image[{i}]: each side must be at least {self.vae_scale_factor} px, got {tuple(im.shape[-2:])}")
        if prompt is not None and prompt_embeds is not None:
            raise ValueError("pass either prompt or prompt_embeds, not both")
        if prompt_embeds is not None:
            if not isinstance(prompt_embeds, torch.Tensor) or prompt_embeds.dim() != 3:
                raise ValueError("prompt_embeds must be a tensor (B, tokens, dim)")
            n_prompts = prompt_embeds.shape[0]
        else:
            _as_list(prompt, _count(prompt), "prompt")
            n_prompts = _count(prompt)
        if n_prompts != 1 and n != 1 and n_prompts != n:
            raise ValueError(f"prompt: got {n_prompts} prompts for {n} images")
        batch = max(n, n_prompts)
        if negative_prompt is not None and negative_prompt_embeds is not None:
            raise ValueError("pass either negative_prompt or negative_prompt_embeds, not both")
        if negative_prompt is not None:
            _as_list(negative_prompt, batch, "negative_prompt")
        if negative_prompt_embeds is not None:
            if not isinstance(negative_prompt_embeds, torch.Tensor) or negative_prompt_embeds.dim() != 3:
                raise ValueError("negative_prompt_embeds must be a tensor (B, tokens, dim)")
            if prompt_embeds is not None and negative_prompt_embeds.shape != prompt_embeds.shape:
                raise ValueError(
                    f"negative_prompt_embeds {tuple(negative_prompt_embeds.shape)} and prompt_embeds "
                    f"{tuple(prompt_embeds.shape)} must have the same shape"
                )
        if isinstance(num_images_per_prompt, bool) or not isinstance(num_images_per_prompt, int) or num_images_per_prompt < 1:
            raise ValueError(f"num_images_per_prompt must be a positive integer, got {num_images_per_prompt!r}")
        total = batch * num_images_per_prompt
        if isinstance(num_inference_steps, bool) or not isinstance(num_inference_steps, (int, np.integer)) or num_inference_steps < 1:
            raise ValueError(f"num_inference_steps must be a positive integer, got {num_inference_steps!r}")
        for name, value in (("guidance_scale", guidance_scale), ("controlnet_conditioning_scale", controlnet_conditioning_scale)):
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                raise ValueError(f"{name} must be a finite number, got {value!r}")
        if guidance_scale < 0:
            raise ValueError(f"guidance_scale must be >= 0, got {guidance_scale}")
        if added_noise_level is not None and (
            isinstance(added_noise_level, bool)
            or not isinstance(added_noise_level, (int, np.integer))
            or not 1 <= added_noise_level <= MAX_NOISE_LEVEL + 1
        ):
            raise ValueError(f"added_noise_level must be an integer in [1, {MAX_NOISE_LEVEL + 1}], got {added_noise_level!r}")
        if latents is not None:
            if not init_latent_from_noise:
                raise ValueError("latents replace the noise start; they cannot be combined with init_latent_from_noise=False")
            f = self.vae_scale_factor
            h, w = size
            if process_size is not None and min(size) < process_size:
                s = process_size / min(size)
                h, w = max(process_size, round(h * s)), max(process_size, round(w * s))
            expected = (total, self.unet.config.in_channels, h // f, w // f)
            if not isinstance(latents, torch.Tensor) or tuple(latents.shape) != expected:
                got = tuple(latents.shape) if isinstance(latents, torch.Tensor) else type(latents).__name__
                raise ValueError(f"latents must be a tensor of shape {expected}, got {got}")
        if generator is not None:
            gens = generator if isinstance(generator, list) else [generator]
            if not all(isinstance(g, torch.Generator) for g in gens):
                raise TypeError("generator must be a torch.Generator or a list of them")
            if isinstance(generator, list) and len(generator) != total:
                raise ValueError(f"got {len(generator)} generators for a batch of {total} images")
        if not isinstance(latent_tiled_size, int) or latent_tiled_size < 1:
            raise ValueError(f"latent_tiled_size must be a positive integer, got {latent_tiled_size!r}")
        if not isinstance(latent_tiled_overlap, int) or not 0 <= latent_tiled_overlap < latent_tiled_size:
            raise ValueError(f"latent_tiled_overlap must be an integer in [0, latent_tiled_size), got {latent_tiled_overlap!r}")
        if process_size is not None and (not isinstance(process_size, int) or process_size < 1):
            raise ValueError(f"process_size must be None or a positive integer, got {process_size!r}")
        if output_type not in _OUTPUT_TYPES:
            raise ValueError(f"output_type must be one of {_OUTPUT_TYPES}, got {output_type!r}")
        bad = [k for k in callback_on_step_end_tensor_inputs if k not in self._callback_tensor_inputs]
        if bad:
            raise ValueError(f"callback_on_step_end_tensor_inputs: {bad} not in {self._callback_tensor_inputs}")
        return batch

    def _predict_noise(self, latents, t, embeds, control, conditioning_scale, cross_attention_kwargs=None) -> torch.Tensor:
        down, mid = self.controlnet(
            latents,
            t,
            encoder_hidden_states=embeds,
            controlnet_cond=control,
            conditioning_scale=conditioning_scale,
            guess_mode=False,
            return_dict=False,
        )
        return self.unet(
            latents,
            t,
            encoder_hidden_states=embeds,
            down_block_additional_residuals=down,
            mid_block_additional_residual=mid,
            cross_attention_kwargs=cross_attention_kwargs,
            return_dict=False,
        )[0]

    def _predict_noise_tiled(
        self, latents, t, embeds, control, conditioning_scale, tile_size, overlap, cross_attention_kwargs=None
    ) -> torch.Tensor:
        """Per-tile ControlNet+UNet, blended with Gaussian weights (float32 accumulation)."""
        h, w = latents.shape[-2:]
        ts = min(tile_size, h, w)
        weights = gaussian_tile_weights(ts).to(device=latents.device, dtype=torch.float32)
        f = self.vae_scale_factor
        noise = torch.zeros(latents.shape, device=latents.device, dtype=torch.float32)
        contributors = torch.zeros_like(noise)
        # The official loop runs over x offsets outside and y offsets inside.
        for x0 in tile_offsets(w, ts, overlap):
            for y0 in tile_offsets(h, ts, overlap):
                tile = latents[:, :, y0 : y0 + ts, x0 : x0 + ts]
                ctile = control[:, :, y0 * f : (y0 + ts) * f, x0 * f : (x0 + ts) * f]
                eps = self._predict_noise(tile, t, embeds, ctile, conditioning_scale,
                                          cross_attention_kwargs=cross_attention_kwargs)
                noise[:, :, y0 : y0 + ts, x0 : x0 + ts] += eps.float() * weights
                contributors[:, :, y0 : y0 + ts, x0 : x0 + ts] += weights
        return noise / contributors

    def _randn(self, shape, generator, device, dtype) -> torch.Tensor:
        return randn_tensor(shape, generator=generator, device=device, dtype=dtype)

    def _prepare_images(self, image) -> list[torch.Tensor]:
        if image is None:
            raise ValueError("image: no image given (call pipe(prompt, image) or pipe(image=...))")
        return [_to_tensor01(im, i, self.image_processor) for i, im in enumerate(_split_batch(image))]

    # ------------------------------------------------------------------ call
    def __call__(self, *args: Any, **kwargs: Any) -> EnhancerPipelineOutput | tuple:
        # Python binds ``pipe(image, prompt="...")`` (the old image-first call, prompt by keyword) before any code of
        # the call runs, so that form is recognised here; the signature and docs are those of ``_enhance``.
        if len(args) == 1 and "prompt" in kwargs and "image" not in kwargs and _is_image_like(args[0]):
            warnings.warn(_OLD_CALL_WARNING, FutureWarning, stacklevel=2)
            kwargs["image"], args = args[0], ()
        return self._enhance(*args, **kwargs)

    @torch.no_grad()
    def _enhance(
        self,
        prompt: str | list[str] | None = None,
        image: ImageInput | Sequence[ImageInput] | None = None,
        *,
        num_inference_steps: int = 20,
        guidance_scale: float = 7.5,
        negative_prompt: str | list[str] | None = DEFAULT_NEGATIVE_PROMPT,
        num_images_per_prompt: int = 1,
        generator: torch.Generator | list[torch.Generator] | None = None,
        latents: torch.Tensor | None = None,
        prompt_embeds: torch.Tensor | None = None,
        negative_prompt_embeds: torch.Tensor | None = None,
        output_type: str = "pil",
        return_dict: bool = True,
        cross_attention_kwargs: dict[str, Any] | None = None,
        controlnet_conditioning_scale: float = 1.0,
        init_latent_from_noise: bool = True,
        added_noise_level: int | None = None,
        latent_tiled_size: int = 64,
        latent_tiled_overlap: int = 8,
        process_size: int | None = None,
        color_fix: bool = True,
        callback_on_step_end: Callable | PipelineCallback | MultiPipelineCallbacks | None = None,
        callback_on_step_end_tensor_inputs: list[str] = ["latents"],  # noqa: B006 - diffusers' signature
        **kwargs,
    ) -> EnhancerPipelineOutput | tuple:
        r"""Enhance one image or a batch of same-size images.

        Args:
            prompt: text conditioning (default: the DiffIQA prompt ``"clean, high-resolution, 8k"``);
                one string, or one per image. Give ``prompt_embeds`` instead to skip CLIP.
            image: PIL image(s), numpy ``(H, W, 3)`` uint8 or float, or tensors ``(3, H, W)`` /
                ``(B, 3, H, W)`` (float in [0, 1], or in [-1, 1] when they hold negative values); a
                list (or a 4-D array/tensor) is a batch of same-size images. File paths are refused:
                load the image first.
            num_inference_steps: UniPC steps; values above 999 run 999 steps (what diffusers 0.21.4
                did for 1000; 0.42 would produce NaN).
            guidance_scale: classifier-free guidance weight; guidance is off for values <= 1.
            negative_prompt: the unconditional prompt (default: the DiffIQA negative prompt; ``None``:
                the empty prompt).
            num_images_per_prompt: outputs per (image, prompt) pair, each from its own noise.
            generator: ``torch.Generator`` (or one per output image) for reproducible results.
            latents: initial noise ``(B * num_images_per_prompt, 4, h, w)`` to use instead of drawing
                it (noise start only; ``h, w`` = processed image size / 8).
            prompt_embeds, negative_prompt_embeds: precomputed CLIP embeddings ``(B, 77, D)``.
            output_type: ``"pil"``, ``"np"``, ``"pt"`` or ``"latent"``.
            cross_attention_kwargs: passed to the UNet's attention processors.
            controlnet_conditioning_scale: multiplies the ControlNet residuals (skips *and* PACA
                keys/values). ``conditioning_scale`` is the deprecated old name.
            init_latent_from_noise: the start of the denoising. ``True``: Gaussian noise. ``False``:
                the input's VAE latent noised to the first timestep and then *again* to
                ``added_noise_level``, as the official code did. This is not an img2img ``strength``:
                the input keeps a weight of only 0.01-0.07, a faint low-frequency hint.
            added_noise_level: DDPM timestep of the second noising (1..1000, 1000 is used as 999);
                defaults to ``num_inference_steps`` as in the DiffIQA generation.
            latent_tiled_size, latent_tiled_overlap: tile in latent pixels when
                ``h * w > latent_tiled_size**2`` (h, w: latent size = image size / 8).
            process_size: if set and the short side is smaller, the image is first resized
                (bilinear) so that its short side is ``process_size`` (512 in the official script).
            color_fix: apply the wavelet colour fix against the processed input.
            callback_on_step_end: ``fn(pipe, step, timestep, callback_kwargs) -> dict`` called after
                every step with the tensors named in ``callback_on_step_end_tensor_inputs``
                (``"latents"``, ``"prompt_embeds"``, ``"negative_prompt_embeds"``); returned tensors
                replace them. ``prompt_embeds`` holds ``[negative, positive]`` under guidance, as in
                diffusers' pipelines.

        The old call ``pipe(image, ...)`` (image first, the prompt second or by keyword) still works with a
        ``FutureWarning``.
        """
        # --- deprecated spellings
        if "conditioning_scale" in kwargs:
            warnings.warn("conditioning_scale is deprecated; use controlnet_conditioning_scale", FutureWarning,
                          stacklevel=_CALLER)
            value = kwargs.pop("conditioning_scale")
            if controlnet_conditioning_scale != 1.0 and value != controlnet_conditioning_scale:
                raise ValueError("pass controlnet_conditioning_scale or conditioning_scale, not both")
            controlnet_conditioning_scale = value
        if kwargs:
            raise TypeError(f"unexpected keyword argument(s) {sorted(kwargs)}")
        if _is_image_like(prompt) and (image is None or isinstance(image, str) or
                                       (isinstance(image, (list, tuple)) and image and isinstance(image[0], str))):
            warnings.warn(_OLD_CALL_WARNING, FutureWarning, stacklevel=_CALLER)
            prompt, image = image, prompt
        if isinstance(callback_on_step_end, (PipelineCallback, MultiPipelineCallbacks)):
            callback_on_step_end_tensor_inputs = callback_on_step_end.tensor_inputs
        if prompt is None and prompt_embeds is None:
            prompt = DEFAULT_PROMPT
        if negative_prompt_embeds is not None and negative_prompt == DEFAULT_NEGATIVE_PROMPT:
            negative_prompt = None  # the default gives way to given embeddings

        images = self._prepare_images(image)
        batch = self.check_inputs(
            images, prompt, negative_prompt, prompt_embeds, negative_prompt_embeds, num_images_per_prompt,
            num_inference_steps, guidance_scale, controlnet_conditioning_scale, init_latent_from_noise,
            added_noise_level, latents, generator, latent_tiled_size, latent_tiled_overlap, process_size,
            output_type, callback_on_step_end_tensor_inputs,
        )
        self._guidance_scale = guidance_scale
        self._cross_attention_kwargs = cross_attention_kwargs
        self._interrupt = False
        device = self._execution_device
        x = torch.stack(images)  # (n, 3, H, W) in [0, 1], float32 on CPU
        if x.shape[0] != batch:
            x = x.expand(batch, -1, -1, -1)
        if num_images_per_prompt > 1:
            x = x.repeat_interleave(num_images_per_prompt, dim=0)
        total = x.shape[0]
        orig_size = tuple(x.shape[-2:])

        # 1. processing size
        if process_size is not None and min(orig_size) < process_size:
            s = process_size / min(orig_size)
            size = (max(process_size, round(orig_size[0] * s)), max(process_size, round(orig_size[1] * s)))
            x = _resize(x, size, "bilinear").clamp(0, 1)
        f = self.vae_scale_factor
        size8 = (x.shape[-2] // f * f, x.shape[-1] // f * f)
        x = _resize(x, size8, "bicubic").clamp(0, 1)
        h, w = size8[0] // f, size8[1] // f

        # 2. prompts (one string per image of the batch, as the official pipeline encoded them)
        if prompt_embeds is None:
            prompt = _as_list(prompt, batch, "prompt")
        elif prompt_embeds.shape[0] != batch:
            prompt_embeds = prompt_embeds.expand(batch, -1, -1)
            if negative_prompt_embeds is not None:
                negative_prompt_embeds = negative_prompt_embeds.expand(batch, -1, -1)
        prompt_embeds, negative_prompt_embeds = self.encode_prompt(
            prompt, device, num_images_per_prompt, self.do_classifier_free_guidance, negative_prompt,
            prompt_embeds, negative_prompt_embeds,
        )
        if self.do_classifier_free_guidance:
            prompt_embeds = torch.cat([negative_prompt_embeds, prompt_embeds])

        # 3. control image in [0, 1]
        control = x.to(device=device, dtype=self.controlnet.dtype)

        # 4. timesteps
        steps = int(num_inference_steps)
        if steps > MAX_INFERENCE_STEPS:
            logger.info("num_inference_steps=%d is run as %d UniPC steps", steps, MAX_INFERENCE_STEPS)
            steps = MAX_INFERENCE_STEPS
        self.scheduler.set_timesteps(steps, device=device)
        timesteps = self.scheduler.timesteps
        self._num_timesteps = len(timesteps)

        # 5. initial latents
        latent_dtype = prompt_embeds.dtype
        shape = (total, self.unet.config.in_channels, h, w)
        if latents is not None:
            latents = latents.to(device=device, dtype=latent_dtype)
        elif init_latent_from_noise:
            latents = self._randn(shape, generator, device, latent_dtype)
        else:
            level = steps if added_noise_level is None else int(added_noise_level)
            level = min(level, MAX_NOISE_LEVEL)  # t=1000 was an index error in the official code
            vae_in = (control * 2.0 - 1.0).to(self.vae.dtype)
            dist = self.vae.encode(vae_in).latent_dist
            if isinstance(generator, list):
                z = torch.cat([dist.mean[i : i + 1] + dist.std[i : i + 1] * self._randn(
                    dist.mean[i : i + 1].shape, generator[i], device, dist.mean.dtype) for i in range(total)])
            else:
                z = dist.sample(generator)
            z = (z * self.vae.config.scaling_factor).to(latent_dtype)
            n1 = self._randn(z.shape, generator, device, latent_dtype)
            n2 = self._randn(z.shape, generator, device, latent_dtype)
            latents = double_noise(z, n1, n2, int(timesteps[0]), level, self.scheduler.alphas_cumprod)
        latents = latents * self.scheduler.init_noise_sigma

        # 6. denoising loop
        tiled = needs_tiling(h, w, latent_tiled_size)
        with self.progress_bar(total=len(timesteps)) as progress_bar:
            for i, t in enumerate(timesteps):
                if self.interrupt:
                    continue
                do_cfg = self.do_classifier_free_guidance
                model_in = torch.cat([latents] * 2) if do_cfg else latents
                model_in = self.scheduler.scale_model_input(model_in, t)
                control_in = torch.cat([control] * 2) if do_cfg else control
                if tiled:
                    noise = self._predict_noise_tiled(
                        model_in, t, prompt_embeds, control_in, controlnet_conditioning_scale, latent_tiled_size,
                        latent_tiled_overlap, cross_attention_kwargs=self.cross_attention_kwargs,
                    )
                else:
                    noise = self._predict_noise(model_in, t, prompt_embeds, control_in, controlnet_conditioning_scale,
                                                cross_attention_kwargs=self.cross_attention_kwargs)
                if do_cfg:
                    uncond, cond = noise.chunk(2)
                    noise = uncond + self.guidance_scale * (cond - uncond)
                latents = self.scheduler.step(noise, t, latents, return_dict=False)[0].to(latent_dtype)
                if callback_on_step_end is not None:
                    values = {"latents": latents, "prompt_embeds": prompt_embeds,
                              "negative_prompt_embeds": negative_prompt_embeds}
                    returned = callback_on_step_end(self, i, t, {k: values[k] for k in callback_on_step_end_tensor_inputs})
                    latents = returned.pop("latents", latents)
                    prompt_embeds = returned.pop("prompt_embeds", prompt_embeds)
                    negative_prompt_embeds = returned.pop("negative_prompt_embeds", negative_prompt_embeds)
                progress_bar.update()

        if output_type == "latent":
            self.maybe_free_model_hooks()
            return EnhancerPipelineOutput(images=latents) if return_dict else (latents,)

        # 7. decode (untiled), quantise to 8 bits like the PIL output of the official pipeline
        decoded = self.vae.decode(latents.to(self.vae.dtype) / self.vae.config.scaling_factor, return_dict=False)[0]
        out = (decoded.float().cpu() / 2 + 0.5).clamp(0, 1)
        out = torch.round(out * 255) / 255
        if color_fix:
            # torchvision's to_pil_image truncates (mul(255).byte()); reproduced with floor.
            out = wavelet_color_fix(out, x.float())
            out8 = torch.floor(out * 255).to(torch.uint8)
        else:
            out8 = torch.round(out * 255).to(torch.uint8)
        self.maybe_free_model_hooks()

        # 8. back to the input size (PIL bicubic, as the official script resized its PIL output)
        arrays = [o.permute(1, 2, 0).numpy() for o in out8]
        pils = [PIL.Image.fromarray(a) for a in arrays]
        if tuple(out8.shape[-2:]) != orig_size:
            pils = [p.resize((orig_size[1], orig_size[0]), PIL.Image.BICUBIC) for p in pils]
        if output_type == "pil":
            result: Any = pils
        else:
            arr = np.stack([np.asarray(p, dtype=np.float32) / 255.0 for p in pils])
            result = arr if output_type == "np" else torch.from_numpy(arr).permute(0, 3, 1, 2).contiguous()
        return EnhancerPipelineOutput(images=result) if return_dict else (result,)


functools.update_wrapper(EnhancerPipeline.__call__, EnhancerPipeline._enhance, assigned=("__doc__",), updated=())
