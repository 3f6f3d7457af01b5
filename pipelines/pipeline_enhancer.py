"""``EnhancerPipeline``: the A-FINE diffusion enhancer (PASD) as a diffusers pipeline.

Components: SD-1.5 ``vae``, ``text_encoder``, ``tokenizer``; the PASD ``unet``
(:class:`~pipelines.unet_paca.PASDUNet2DConditionModel`); a stock ``controlnet``; a UniPC ``scheduler``
(see :func:`pipelines.noising.make_inference_scheduler`).

One call, per image (what the official ``infer_pasd_enhancer.py`` + ``pipeline_pasd_infer.py`` do):

1. optional resize of the short side up to ``process_size``; sizes not divisible by 8 are resized to
   the multiple of 8 below (the official code required multiples of 8);
2. prompt / negative prompt through CLIP; classifier-free guidance when ``guidance_scale > 1``;
3. the control image in [0, 1] (not normalised) drives the ControlNet, whose residuals go to the UNet
   skips and to the PACA blocks;
4. start from noise, or from the input's VAE latent noised to timestep 999 and then again to
   ``added_noise_level`` (faithful "double noising", see :func:`pipelines.noising.double_noise`);
5. UniPC denoising; above ``latent_tiled_size**2`` latent pixels the latent is processed in tiles
   blended with Gaussian weights;
6. untiled VAE decode, 8-bit quantisation, wavelet colour fix against the input, resize back to the
   original size (bicubic).
"""

from __future__ import annotations

import json
import logging
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence, Union

import numpy as np
import PIL.Image
import torch
import torch.nn.functional as F
from diffusers import AutoencoderKL, ControlNetModel, DiffusionPipeline
from diffusers.utils import BaseOutput
from diffusers.utils.torch_utils import randn_tensor
from transformers import CLIPTextModel, CLIPTokenizer

from .noising import MAX_INFERENCE_STEPS, MAX_NOISE_LEVEL, double_noise, make_inference_scheduler
from .tiling import gaussian_tile_weights, needs_tiling, tile_offsets
from .unet_paca import PASDUNet2DConditionModel
from .wavelet import wavelet_color_fix

logger = logging.getLogger(__name__)

__all__ = ["EnhancerPipeline", "EnhancerPipelineOutput", "DEFAULT_PROMPT", "DEFAULT_NEGATIVE_PROMPT"]

#: The fixed prompt used to generate DiffIQA (``"" + added_prompt`` in the official script).
DEFAULT_PROMPT = "clean, high-resolution, 8k"
#: The fixed negative prompt used to generate DiffIQA.
DEFAULT_NEGATIVE_PROMPT = "blurry, dotted, noise, raster lines, unclear, lowres, over-smoothed"

ImageInput = Union[PIL.Image.Image, np.ndarray, torch.Tensor]
_OUTPUT_TYPES = ("pil", "np", "pt", "latent")


@dataclass
class EnhancerPipelineOutput(BaseOutput):
    """Output of :class:`EnhancerPipeline`.

    ``images``: a list of ``B`` PIL RGB images (``output_type="pil"``), a float32 numpy array
    ``(B, H, W, 3)`` in [0, 1] (``"np"``), a float32 tensor ``(B, 3, H, W)`` in [0, 1] (``"pt"``), or the
    final latents ``(B, 4, h, w)`` (``"latent"``). ``H, W`` are the input's size. Pixel outputs are
    8-bit values (multiples of 1/255), as the official script saved PNGs.
    """

    images: Union[list[PIL.Image.Image], np.ndarray, torch.Tensor]


def _to_tensor01(image: ImageInput, index: int) -> torch.Tensor:
    """One image -> float32 ``(3, H, W)`` in [0, 1]. Raises ``ValueError``/``TypeError`` naming it."""
    name = f"image[{index}]"
    if isinstance(image, PIL.Image.Image):
        arr = np.asarray(image.convert("RGB"), dtype=np.float32) / 255.0
        return torch.from_numpy(arr).permute(2, 0, 1).contiguous()
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
            raise TypeError(f"{name}: numpy images must be uint8 or float in [0, 1], got dtype {arr.dtype}")
        t = torch.from_numpy(np.ascontiguousarray(arr)).permute(2, 0, 1).contiguous()
    elif isinstance(image, torch.Tensor):
        t = image.detach()
        if t.dim() == 4 and t.shape[0] == 1:
            t = t[0]
        if t.dim() != 3 or t.shape[0] != 3:
            raise ValueError(f"{name}: tensors must be (3, H, W) or (1, 3, H, W), got shape {tuple(image.shape)}")
        if t.dtype == torch.uint8:
            t = t.float() / 255.0
        elif not t.is_floating_point():
            raise TypeError(f"{name}: tensors must be uint8 or float in [0, 1], got dtype {t.dtype}")
        t = t.float().cpu()
    else:
        raise TypeError(
            f"{name}: expected a PIL image, numpy array or torch tensor, got {type(image).__name__}"
        )
    if not torch.isfinite(t).all():
        raise ValueError(f"{name}: contains NaN or infinite values")
    lo, hi = float(t.min()), float(t.max())
    if lo < -1e-3 or hi > 1 + 1e-3:
        raise ValueError(f"{name}: float images must be in [0, 1], got values in [{lo:.3g}, {hi:.3g}]")
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
            raise ValueError(f"{what}: got {len(value)} strings for {n} images")
        return list(value)
    raise TypeError(f"{what} must be a string or a list of strings, got {type(value).__name__}")


def _model_index_class(source, kwargs: dict) -> str | None:
    """``_class_name`` of ``model_index.json`` in a local folder or Hub repository (``None`` if unknown)."""
    index = Path(str(source)) / "model_index.json"
    if not index.is_file() and not Path(str(source)).exists():
        try:
            from huggingface_hub import hf_hub_download

            index = Path(hf_hub_download(
                str(source), "model_index.json", revision=kwargs.get("revision"),
                cache_dir=kwargs.get("cache_dir"), token=kwargs.get("token"),
                local_files_only=kwargs.get("local_files_only", False),
            ))
        except Exception:  # noqa: BLE001 - offline / not a repo: let diffusers report it
            return None
    try:
        return json.loads(index.read_text()).get("_class_name")
    except (OSError, ValueError):
        return None


class EnhancerPipeline(DiffusionPipeline):
    r"""The A-FINE / PASD diffusion enhancer.

    Load real weights with :meth:`from_sd15` (an SD-1.5 directory or Hub id plus the released
    enhancer folder holding ``unet/`` and ``controlnet/``), or :meth:`from_pretrained` on a directory
    written by :meth:`save_pretrained` (or on an SD-1.5 diffusers directory whose ``unet/`` is the
    released PASD UNet and that has the released ``controlnet/`` folder).
    """

    model_cpu_offload_seq = "text_encoder->controlnet->unet->vae"

    def __init__(
        self,
        vae: AutoencoderKL,
        text_encoder: CLIPTextModel,
        tokenizer: CLIPTokenizer,
        unet: PASDUNet2DConditionModel,
        controlnet: ControlNetModel,
        scheduler,
    ):
        super().__init__()
        if not isinstance(unet, PASDUNet2DConditionModel):
            raise TypeError(
                f"unet must be a PASDUNet2DConditionModel, got {type(unet).__name__}; convert a stock UNet "
                "with PASDUNet2DConditionModel.from_unet(unet)"
            )
        self.register_modules(
            vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet, controlnet=controlnet, scheduler=scheduler
        )
        self.vae_scale_factor = 2 ** (len(self.vae.config.block_out_channels) - 1)

    # ------------------------------------------------------------------ loading
    @classmethod
    def from_sd15(
        cls,
        base_model: str | os.PathLike,
        enhancer: str | os.PathLike | None = None,
        *,
        dtype: torch.dtype | None = None,
        **kwargs: Any,
    ) -> "EnhancerPipeline":
        """Assemble the pipeline from SD-1.5 (``vae``, ``text_encoder``, ``tokenizer``, ``scheduler``
        subfolders of ``base_model``) and the enhancer weights (``unet/`` and ``controlnet/`` of
        ``enhancer``; ``enhancer=None`` reads them from ``base_model``). Both may be local
        directories or Hub ids. ``kwargs`` go to every ``from_pretrained`` (e.g. ``local_files_only``,
        ``revision``); ``dtype`` sets the weights' precision. UniPC is configured from SD's scheduler config with ``final_sigmas_type="sigma_min"``.
        """
        enhancer = base_model if enhancer is None else enhancer
        dtype = kwargs.pop("torch_dtype", None) if dtype is None else dtype  # older spelling

        def load(what: str, loader, source, subfolder, **extra):
            try:
                return loader(source, subfolder=subfolder, **extra, **kwargs)
            except (OSError, ValueError) as err:
                offline = os.environ.get("HF_HUB_OFFLINE", "0") not in ("0", "", "false", "False")
                hint = (
                    " (HF_HUB_OFFLINE is set: download the weights first or pass a local directory)"
                    if offline and not Path(str(source)).exists()
                    else ""
                )
                raise OSError(f"could not load the {what} from {source!s}/{subfolder}{hint}: {err}") from err

        dtype_kw = {} if dtype is None else {"dtype": dtype}
        vae = load("VAE", AutoencoderKL.from_pretrained, base_model, "vae", **dtype_kw)
        text_encoder = load("text encoder", CLIPTextModel.from_pretrained, base_model, "text_encoder", **dtype_kw)
        tokenizer = load("tokenizer", CLIPTokenizer.from_pretrained, base_model, "tokenizer")
        from diffusers import UniPCMultistepScheduler

        base_sched = load("scheduler config", UniPCMultistepScheduler.from_pretrained, base_model, "scheduler")
        scheduler = make_inference_scheduler(base_sched.config)
        unet = load("PASD UNet", PASDUNet2DConditionModel.from_pretrained, enhancer, "unet", **dtype_kw)
        controlnet = load("ControlNet", ControlNetModel.from_pretrained, enhancer, "controlnet", **dtype_kw)
        return cls(vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet, controlnet=controlnet, scheduler=scheduler)

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, **kwargs):
        """Load a saved ``EnhancerPipeline`` (local folder or Hub id). A diffusers folder/repository of
        another pipeline class (SD-1.5 whose ``unet/`` is the released PASD UNet, plus the released
        ``controlnet/`` folder) is assembled through :meth:`from_sd15`."""
        class_name = _model_index_class(pretrained_model_name_or_path, kwargs)
        if class_name is not None and class_name != cls.__name__:
            return cls.from_sd15(pretrained_model_name_or_path, **kwargs)
        return super().from_pretrained(pretrained_model_name_or_path, **kwargs)

    # ------------------------------------------------------------------ pieces
    def encode_prompt(self, prompts: list[str], device: torch.device) -> torch.Tensor:
        """CLIP text embeddings ``(B, 77, D)`` of prompts padded/truncated to the tokenizer length."""
        ids = self.tokenizer(
            prompts,
            padding="max_length",
            max_length=self.tokenizer.model_max_length,
            truncation=True,
            return_tensors="pt",
        ).input_ids.to(device)
        return self.text_encoder(ids)[0].to(dtype=self.text_encoder.dtype)

    def check_inputs(
        self,
        images: list[torch.Tensor],
        prompt,
        negative_prompt,
        num_inference_steps,
        guidance_scale,
        conditioning_scale,
        added_noise_level,
        generator,
        latent_tiled_size,
        latent_tiled_overlap,
        process_size,
        output_type,
    ) -> None:
        """Raise ``ValueError``/``TypeError`` with a clear message for unusable arguments."""
        n = len(images)
        if n == 0:
            raise ValueError("image: no images given")
        size = tuple(images[0].shape[-2:])
        for i, im in enumerate(images):
            if tuple(im.shape[-2:]) != size:
                raise ValueError(f"image[{i}]: all images in one call must have the same size, {size} != {tuple(im.shape[-2:])}")
            if min(im.shape[-2:]) < self.vae_scale_factor:
                raise ValueError(f"image[{i}]: each side must be at least {self.vae_scale_factor} px, got {tuple(im.shape[-2:])}")
        _as_list(prompt, n, "prompt")
        if negative_prompt is not None:
            _as_list(negative_prompt, n, "negative_prompt")
        if isinstance(num_inference_steps, bool) or not isinstance(num_inference_steps, (int, np.integer)) or num_inference_steps < 1:
            raise ValueError(f"num_inference_steps must be a positive integer, got {num_inference_steps!r}")
        for name, value in (("guidance_scale", guidance_scale), ("conditioning_scale", conditioning_scale)):
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
        if generator is not None:
            gens = generator if isinstance(generator, list) else [generator]
            if not all(isinstance(g, torch.Generator) for g in gens):
                raise TypeError("generator must be a torch.Generator or a list of them")
            if isinstance(generator, list) and len(generator) != n:
                raise ValueError(f"got {len(generator)} generators for {n} images")
        if not isinstance(latent_tiled_size, int) or latent_tiled_size < 1:
            raise ValueError(f"latent_tiled_size must be a positive integer, got {latent_tiled_size!r}")
        if not isinstance(latent_tiled_overlap, int) or not 0 <= latent_tiled_overlap < latent_tiled_size:
            raise ValueError(f"latent_tiled_overlap must be an integer in [0, latent_tiled_size), got {latent_tiled_overlap!r}")
        if process_size is not None and (not isinstance(process_size, int) or process_size < 1):
            raise ValueError(f"process_size must be None or a positive integer, got {process_size!r}")
        if output_type not in _OUTPUT_TYPES:
            raise ValueError(f"output_type must be one of {_OUTPUT_TYPES}, got {output_type!r}")

    def _predict_noise(self, latents, t, embeds, control, conditioning_scale) -> torch.Tensor:
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
            return_dict=False,
        )[0]

    def _predict_noise_tiled(self, latents, t, embeds, control, conditioning_scale, tile_size, overlap) -> torch.Tensor:
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
                eps = self._predict_noise(tile, t, embeds, ctile, conditioning_scale)
                noise[:, :, y0 : y0 + ts, x0 : x0 + ts] += eps.float() * weights
                contributors[:, :, y0 : y0 + ts, x0 : x0 + ts] += weights
        return noise / contributors

    def _randn(self, shape, generator, device, dtype) -> torch.Tensor:
        return randn_tensor(shape, generator=generator, device=device, dtype=dtype)

    # ------------------------------------------------------------------ call
    @torch.no_grad()
    def __call__(
        self,
        image: ImageInput | Sequence[ImageInput],
        prompt: str | list[str] = DEFAULT_PROMPT,
        negative_prompt: str | list[str] | None = DEFAULT_NEGATIVE_PROMPT,
        num_inference_steps: int = 20,
        guidance_scale: float = 7.5,
        conditioning_scale: float = 1.0,
        init_latent_from_noise: bool = True,
        added_noise_level: int | None = None,
        generator: torch.Generator | list[torch.Generator] | None = None,
        latent_tiled_size: int = 64,
        latent_tiled_overlap: int = 8,
        process_size: int | None = None,
        color_fix: bool = True,
        output_type: str = "pil",
        return_dict: bool = True,
    ) -> EnhancerPipelineOutput | tuple:
        r"""Enhance one image or a batch of same-size images.

        Args:
            image: PIL image(s), numpy ``(H, W, 3)`` uint8 or float in [0, 1], or tensors ``(3, H, W)``
                / ``(1, 3, H, W)`` in [0, 1]; a list makes a batch (same size).
            prompt, negative_prompt: text conditioning; defaults are the DiffIQA prompts.
                ``negative_prompt=None`` uses the empty prompt for the unconditional half.
            num_inference_steps: UniPC steps; values above 999 run 999 steps (what diffusers 0.21.4
                did for 1000; 0.42 would produce NaN).
            guidance_scale: classifier-free guidance weight; guidance is off for values <= 1.
            conditioning_scale: multiplies the ControlNet residuals (skips *and* PACA keys/values).
            init_latent_from_noise: ``True`` starts from Gaussian noise; ``False`` from the input's VAE
                latent noised to the first timestep and then again to ``added_noise_level``.
            added_noise_level: DDPM timestep of the second noising (1..1000, 1000 is used as 999);
                defaults to ``num_inference_steps`` as in the DiffIQA generation.
            generator: ``torch.Generator`` (or one per image) for reproducible results.
            latent_tiled_size, latent_tiled_overlap: tile in latent pixels when
                ``h * w > latent_tiled_size**2`` (h, w: latent size = image size / 8).
            process_size: if set and the short side is smaller, the image is first resized
                (bilinear) so that its short side is ``process_size`` (512 in the official script).
            color_fix: apply the wavelet colour fix against the processed input.
            output_type: ``"pil"``, ``"np"``, ``"pt"`` or ``"latent"``.
        """
        raw = list(image) if isinstance(image, (list, tuple)) else [image]
        images = [_to_tensor01(im, i) for i, im in enumerate(raw)]
        self.check_inputs(
            images, prompt, negative_prompt, num_inference_steps, guidance_scale, conditioning_scale,
            added_noise_level, generator, latent_tiled_size, latent_tiled_overlap, process_size, output_type,
        )
        if negative_prompt is None:
            negative_prompt = ""
        batch = len(images)
        device = self._execution_device
        x = torch.stack(images)  # (B, 3, H, W) in [0, 1], float32 on CPU
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

        # 2. prompts
        do_cfg = guidance_scale > 1.0
        embeds = self.encode_prompt(_as_list(prompt, batch, "prompt"), device)
        if do_cfg:
            neg = self.encode_prompt(_as_list(negative_prompt, batch, "negative_prompt"), device)
            embeds = torch.cat([neg, embeds])

        # 3. control image in [0, 1] (the ControlNet was trained on un-normalised images)
        control = x.to(device=device, dtype=self.controlnet.dtype)
        control_in = torch.cat([control] * 2) if do_cfg else control

        # 4. timesteps
        steps = int(num_inference_steps)
        if steps > MAX_INFERENCE_STEPS:
            logger.info("num_inference_steps=%d is run as %d UniPC steps", steps, MAX_INFERENCE_STEPS)
            steps = MAX_INFERENCE_STEPS
        self.scheduler.set_timesteps(steps, device=device)
        timesteps = self.scheduler.timesteps

        # 5. initial latents
        latent_dtype = embeds.dtype
        shape = (batch, self.unet.config.in_channels, h, w)
        if init_latent_from_noise:
            latents = self._randn(shape, generator, device, latent_dtype)
        else:
            level = steps if added_noise_level is None else int(added_noise_level)
            level = min(level, MAX_NOISE_LEVEL)  # t=1000 was an index error in the official code
            vae_in = (control * 2.0 - 1.0).to(self.vae.dtype)
            dist = self.vae.encode(vae_in).latent_dist
            if isinstance(generator, list):
                z = torch.cat([dist.mean[i : i + 1] + dist.std[i : i + 1] * self._randn(
                    dist.mean[i : i + 1].shape, generator[i], device, dist.mean.dtype) for i in range(batch)])
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
            for t in timesteps:
                model_in = torch.cat([latents] * 2) if do_cfg else latents
                model_in = self.scheduler.scale_model_input(model_in, t)
                if tiled:
                    noise = self._predict_noise_tiled(
                        model_in, t, embeds, control_in, conditioning_scale, latent_tiled_size, latent_tiled_overlap
                    )
                else:
                    noise = self._predict_noise(model_in, t, embeds, control_in, conditioning_scale)
                if do_cfg:
                    uncond, cond = noise.chunk(2)
                    noise = uncond + guidance_scale * (cond - uncond)
                latents = self.scheduler.step(noise, t, latents, return_dict=False)[0].to(latent_dtype)
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
