"""EnhancerPipeline behaviour with tiny random components."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from diffusers import PNDMScheduler

from pipelines.pipeline_enhancer import EnhancerPipeline, EnhancerPipelineOutput

from .conftest import build_tiny_components, random_image

FAST = dict(num_inference_steps=2, output_type="np")


def gen(seed=0):
    return torch.Generator().manual_seed(seed)


def test_deterministic_under_seed_and_seed_matters(tiny_pipe):
    img = random_image((64, 64))
    a = tiny_pipe(image=img, generator=gen(0), **FAST).images
    b = tiny_pipe(image=img, generator=gen(0), **FAST).images
    c = tiny_pipe(image=img, generator=gen(1), **FAST).images
    assert a.shape == (1, 64, 64, 3) and a.dtype == np.float32
    np.testing.assert_array_equal(a, b)
    assert np.abs(a - c).max() > 1e-3
    # 8-bit values in [0, 1]
    np.testing.assert_allclose(a * 255, np.round(a * 255), atol=1e-4)
    assert a.min() >= 0 and a.max() <= 1


def _capture_first_sample(pipe, monkeypatch):
    """Record the latents entering the first scheduler step (the pipeline's initial latents)."""
    seen = []
    orig = type(pipe.scheduler).step

    def step(self, model_output, timestep, sample, *args, **kwargs):
        if not seen:
            seen.append(sample.clone())
        return orig(self, model_output, timestep, sample, *args, **kwargs)

    monkeypatch.setattr(type(pipe.scheduler), "step", step)
    return seen


def test_noise_start_is_generator_noise(tiny_pipe, monkeypatch):
    seen = _capture_first_sample(tiny_pipe, monkeypatch)
    tiny_pipe(image=random_image((64, 48)), generator=gen(3), **FAST)
    expected = torch.randn(1, 4, 6, 8, generator=gen(3))  # (H/8, W/8) = (48/8, 64/8)
    torch.testing.assert_close(seen[0], expected)


def test_latent_start_double_noising_matches_closed_form(tiny_pipe, monkeypatch):
    img = random_image((64, 64), seed=5)
    seen = _capture_first_sample(tiny_pipe, monkeypatch)
    out_latent = tiny_pipe(image=img, generator=gen(7), init_latent_from_noise=False, added_noise_level=300, **FAST).images
    # independent recomputation: VAE sample, then two generator draws, closed form
    g = gen(7)
    x = torch.from_numpy(np.asarray(img, dtype=np.float32) / 255).permute(2, 0, 1)[None]
    with torch.no_grad():
        dist = tiny_pipe.vae.encode(x * 2 - 1).latent_dist
        z = dist.mean + dist.std * torch.randn(dist.mean.shape, generator=g)
    z = z * tiny_pipe.vae.config.scaling_factor
    n1 = torch.randn(z.shape, generator=g)
    n2 = torch.randn(z.shape, generator=g)
    acp = tiny_pipe.scheduler.alphas_cumprod.double()
    a1, a2 = acp[999], acp[300]
    expected = (a1 * a2).sqrt() * z.double() + (a2 * (1 - a1)).sqrt() * n1.double() + (1 - a2).sqrt() * n2.double()
    torch.testing.assert_close(seen[0].double(), expected, rtol=1e-4, atol=1e-5)
    monkeypatch.undo()
    noise_start = tiny_pipe(image=img, generator=gen(7), **FAST).images
    assert np.abs(out_latent - noise_start).max() > 1e-3
    # default added_noise_level = num_inference_steps
    a = tiny_pipe(image=img, generator=gen(7), init_latent_from_noise=False, **FAST).images
    b = tiny_pipe(image=img, generator=gen(7), init_latent_from_noise=False, added_noise_level=2, **FAST).images
    np.testing.assert_array_equal(a, b)


def test_tiled_blend_reproduces_a_pointwise_model(tiny_pipe, monkeypatch):
    """Where every tile's prediction is the crop of the global prediction, the Gaussian blend must
    give back the global prediction exactly (weights normalise, tiles cover everything)."""

    def pointwise(latents, t, embeds, control, scale, **kw):
        pooled = torch.nn.functional.avg_pool2d(control.float(), tiny_pipe.vae_scale_factor)
        return 0.5 * latents + pooled.mean(1, keepdim=True)

    monkeypatch.setattr(tiny_pipe, "_predict_noise", pointwise)
    lat = torch.randn(2, 4, 10, 14, generator=gen(0))
    ctrl = torch.rand(2, 3, 80, 112, generator=gen(1))
    full = pointwise(lat, 0, None, ctrl, 1.0)
    tiled = tiny_pipe._predict_noise_tiled(lat, 0, None, ctrl, 1.0, tile_size=6, overlap=2)
    torch.testing.assert_close(tiled, full, rtol=1e-5, atol=1e-6)


def test_tiled_vs_untiled_with_real_models(tiny_pipe):
    img = random_image((96, 64), seed=2)  # latent 8 x 12
    untiled = tiny_pipe(image=img, generator=gen(0), latent_tiled_size=64, **FAST).images
    same = tiny_pipe(image=img, generator=gen(0), latent_tiled_size=10, **FAST).images  # 96 <= 100: not tiled
    np.testing.assert_array_equal(untiled, same)
    tiled = tiny_pipe(image=img, generator=gen(0), latent_tiled_size=8, latent_tiled_overlap=2, **FAST).images
    tiled2 = tiny_pipe(image=img, generator=gen(0), latent_tiled_size=8, latent_tiled_overlap=2, **FAST).images
    assert tiled.shape == untiled.shape == (1, 64, 96, 3)
    np.testing.assert_array_equal(tiled, tiled2)
    assert np.isfinite(tiled).all()
    # same images, same noise: the tiled result stays close to the untiled one on average
    assert np.abs(tiled - untiled).mean() < 0.2


def test_steps_above_999_run_999_steps(tiny_pipe, monkeypatch):
    calls = []

    def cheap(latents, t, embeds, control, scale, **kw):
        calls.append(int(t))
        return 0.5 * latents

    monkeypatch.setattr(tiny_pipe, "_predict_noise", cheap)
    out = tiny_pipe(image=random_image((32, 32)), num_inference_steps=1000, guidance_scale=1.0, generator=gen(0),
                    output_type="latent").images
    assert len(calls) == 999 and len(set(calls)) == 999 and calls[0] == 999
    assert torch.isfinite(out).all()
    calls.clear()
    tiny_pipe(image=random_image((32, 32)), num_inference_steps=1000, init_latent_from_noise=False, added_noise_level=1000,
              guidance_scale=1.0, generator=gen(0), output_type="latent")
    assert len(calls) == 999


def test_output_types_sizes_and_resize_back(tiny_pipe):
    img = random_image((70, 50), seed=4)  # not multiples of 8: processed at 64 x 48, resized back
    pil = tiny_pipe(image=img, generator=gen(0), num_inference_steps=2).images
    assert isinstance(pil, list) and pil[0].size == (70, 50) and pil[0].mode == "RGB"
    arr = tiny_pipe(image=img, generator=gen(0), **FAST).images
    pt = tiny_pipe(image=img, generator=gen(0), num_inference_steps=2, output_type="pt").images
    np.testing.assert_array_equal(np.asarray(pil[0], dtype=np.float32) / 255, arr[0])
    np.testing.assert_array_equal(pt.permute(0, 2, 3, 1).numpy(), arr)
    lat = tiny_pipe(image=img, generator=gen(0), num_inference_steps=2, output_type="latent").images
    assert lat.shape == (1, 4, 6, 8)
    up = tiny_pipe(image=img, generator=gen(0), num_inference_steps=2, process_size=64, output_type="np").images
    assert up.shape == (1, 50, 70, 3)
    out = tiny_pipe(image=img, generator=gen(0), num_inference_steps=2, return_dict=False)
    assert isinstance(out, tuple) and out[0][0].size == (70, 50)
    assert isinstance(tiny_pipe(image=img, num_inference_steps=1), EnhancerPipelineOutput)


def test_input_types_agree_and_batches(tiny_pipe):
    img = random_image((64, 64), seed=6)
    arr = np.asarray(img)
    ten = torch.from_numpy(arr.copy()).permute(2, 0, 1).float() / 255
    a = tiny_pipe(image=img, generator=gen(0), **FAST).images
    b = tiny_pipe(image=arr, generator=gen(0), **FAST).images
    c = tiny_pipe(image=ten, generator=gen(0), **FAST).images
    d = tiny_pipe(image=arr.astype(np.float32) / 255, generator=gen(0), **FAST).images
    for other in (b, c, d):
        np.testing.assert_array_equal(a, other)
    two = tiny_pipe(image=[img, random_image((64, 64), seed=7)], generator=[gen(0), gen(1)], **FAST).images
    assert two.shape == (2, 64, 64, 3)
    # batched convolutions differ from single ones by float rounding: at most one 8-bit level
    np.testing.assert_allclose(two[0], a[0], atol=1.01 / 255)
    assert np.abs(two[0] - two[1]).max() > 1e-2


def test_guidance_and_conditioning_scale_matter(tiny_pipe):
    img = random_image((32, 32), seed=8)
    base = tiny_pipe(image=img, generator=gen(0), **FAST).images
    no_cfg = tiny_pipe(image=img, generator=gen(0), guidance_scale=1.0, **FAST).images
    no_ctrl = tiny_pipe(image=img, generator=gen(0), controlnet_conditioning_scale=0.0, **FAST).images
    no_fix = tiny_pipe(image=img, generator=gen(0), color_fix=False, **FAST).images
    for other in (no_cfg, no_ctrl, no_fix):
        assert np.abs(base - other).max() > 1e-3


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(image="x.png"), "got a file path"),
        (dict(image=3), "PIL image, numpy array or torch tensor"),
        (dict(image=None), "no image given"),
        (dict(image=np.full((32, 32, 3), -2.0, np.float32)), r"\[-1, 1\]"),
        (dict(image=np.zeros((32, 32, 4), np.uint8)), r"\(H, W, 3\)"),
        (dict(image=np.full((32, 32, 3), 2.0, np.float32)), r"in \[0, 1\]"),
        (dict(image=torch.full((3, 32, 32), float("nan"))), "NaN"),
        (dict(image=np.zeros((4, 32, 3), np.uint8)), "at least 8 px"),
        (dict(image=[np.zeros((32, 32, 3), np.uint8), np.zeros((40, 32, 3), np.uint8)]), "same size"),
        (dict(num_inference_steps=0), "num_inference_steps"),
        (dict(num_inference_steps=2.5), "num_inference_steps"),
        (dict(guidance_scale=float("nan")), "guidance_scale"),
        (dict(guidance_scale=-1.0), "guidance_scale"),
        (dict(guidance_scale="7.5"), "guidance_scale"),
        (dict(controlnet_conditioning_scale="1"), "controlnet_conditioning_scale"),
        (dict(prompt=3), "prompt"),
        (dict(image=[np.zeros((32, 32, 3), np.uint8)] * 3, prompt=["a", "b"]), "2 prompts for 3 images"),
        (dict(prompt="a", prompt_embeds=torch.zeros(1, 77, 32)), "either prompt or prompt_embeds"),
        (dict(prompt_embeds=torch.zeros(77, 32)), "prompt_embeds must be a tensor"),
        (dict(num_images_per_prompt=0), "num_images_per_prompt"),
        (dict(latents=torch.zeros(1, 4, 3, 4)), r"latents must be a tensor of shape \(1, 4, 4, 4\)"),
        (dict(latents=torch.zeros(1, 4, 4, 4), init_latent_from_noise=False), "cannot be combined"),
        (dict(callback_on_step_end_tensor_inputs=["noise"]), "callback_on_step_end_tensor_inputs"),
        (dict(strength=0.5), "unexpected keyword"),
        (dict(negative_prompt=5), "negative_prompt"),
        (dict(added_noise_level=1001, init_latent_from_noise=False), "added_noise_level"),
        (dict(generator=123), "generator"),
        (dict(generator=[torch.Generator(), torch.Generator()]), "2 generators"),
        (dict(output_type="jpg"), "output_type"),
        (dict(latent_tiled_overlap=64), "latent_tiled_overlap"),
        (dict(process_size=0), "process_size"),
    ],
)
def test_bad_inputs_give_clear_errors(tiny_pipe, kwargs, match):
    args = dict(image=np.zeros((32, 32, 3), np.uint8), num_inference_steps=1)
    args.update(kwargs)
    with pytest.raises((ValueError, TypeError), match=match):
        tiny_pipe(**args)


def test_save_load_round_trip_is_identical(tiny_pipe, tiny_pipe_dir):
    index = json.loads((tiny_pipe_dir / "model_index.json").read_text())
    # diffusers' custom-code entries: [file at the root / in the component folder, class]
    assert index["_class_name"] == ["pipeline_enhancer", "EnhancerPipeline"]
    assert index["unet"] == ["unet_paca", "PASDUNet2DConditionModel"]
    assert (tiny_pipe_dir / "pipeline_enhancer.py").is_file() and (tiny_pipe_dir / "unet" / "unet_paca.py").is_file()
    assert "pipelines." not in json.dumps(index)
    loaded = EnhancerPipeline.from_pretrained(tiny_pipe_dir)
    loaded.set_progress_bar_config(disable=True)
    assert loaded.scheduler.config.final_sigmas_type == "sigma_min"
    img = random_image((64, 64), seed=9)
    for kw in (dict(), dict(init_latent_from_noise=False, added_noise_level=40)):
        a = tiny_pipe(image=img, generator=gen(0), **kw, **FAST).images
        b = loaded(image=img, generator=gen(0), **kw, **FAST).images
        np.testing.assert_array_equal(a, b)


def _write_sd_style_dir(pipe, root):
    """An SD-1.5-style diffusers folder (StableDiffusionPipeline model index, PNDM scheduler) whose
    unet/ and controlnet/ folders are the enhancer's, like the released weights dropped into SD."""
    pipe.vae.save_pretrained(root / "vae")
    pipe.text_encoder.save_pretrained(root / "text_encoder")
    pipe.tokenizer.save_pretrained(root / "tokenizer")
    PNDMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", steps_offset=1,
                  skip_prk_steps=True).save_pretrained(root / "scheduler")
    pipe.unet.save_pretrained(root / "unet")
    pipe.controlnet.save_pretrained(root / "controlnet")
    (root / "model_index.json").write_text(json.dumps({
        "_class_name": "StableDiffusionPipeline", "_diffusers_version": "0.6.0",
        "vae": ["diffusers", "AutoencoderKL"], "text_encoder": ["transformers", "CLIPTextModel"],
        "tokenizer": ["transformers", "CLIPTokenizer"], "scheduler": ["diffusers", "PNDMScheduler"],
        "unet": ["diffusers", "UNet2DConditionModel"], "safety_checker": [None, None],
        "feature_extractor": [None, None],
    }))


def test_loads_from_sd_directory_with_released_folders(tiny_pipe, tmp_path):
    _write_sd_style_dir(tiny_pipe, tmp_path / "sd")
    img = random_image((64, 64), seed=10)
    ref = tiny_pipe(image=img, generator=gen(0), **FAST).images
    combined = EnhancerPipeline.from_pretrained(tmp_path / "sd")
    combined.set_progress_bar_config(disable=True)
    np.testing.assert_array_equal(combined(image=img, generator=gen(0), **FAST).images, ref)
    separate = EnhancerPipeline.from_sd15(tmp_path / "sd", tmp_path / "sd")
    assert separate.scheduler.config.final_sigmas_type == "sigma_min"
    with pytest.raises(OSError, match="enhancer folder not found: .*nowhere"):
        EnhancerPipeline.from_sd15(tmp_path / "sd", tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    with pytest.raises(OSError, match="could not load the PASD UNet from .*empty"):
        EnhancerPipeline.from_sd15(tmp_path / "sd", tmp_path / "empty")


def test_component_overrides_are_used(tiny_pipe, tmp_path):
    """from_pretrained(sd_dir, controlnet=cn, unet=u): the given objects are used, the rest loaded."""
    _write_sd_style_dir(tiny_pipe, tmp_path / "sd")
    img = random_image((64, 64), seed=12)
    ref = tiny_pipe(image=img, generator=gen(0), **FAST).images
    pipe = EnhancerPipeline.from_pretrained(tmp_path / "sd", controlnet=tiny_pipe.controlnet, unet=tiny_pipe.unet)
    assert pipe.controlnet is tiny_pipe.controlnet and pipe.unet is tiny_pipe.unet
    pipe.set_progress_bar_config(disable=True)
    np.testing.assert_array_equal(pipe(image=img, generator=gen(0), **FAST).images, ref)
    # the same on a saved enhancer folder, and with from_sd15
    other = EnhancerPipeline.from_sd15(tmp_path / "sd", tmp_path / "nowhere-not-needed", unet=tiny_pipe.unet,
                                       controlnet=tiny_pipe.controlnet)
    assert other.unet is tiny_pipe.unet
    with pytest.raises(TypeError, match="unexpected keyword"):
        EnhancerPipeline.from_pretrained(tmp_path / "sd", feature_extractor=None)


def test_rejects_stock_unet(tiny_components):
    from diffusers import UNet2DConditionModel

    comps = dict(tiny_components)
    comps["unet"] = UNet2DConditionModel.from_config(comps["unet"].config)
    with pytest.raises(TypeError, match="PASDUNet2DConditionModel"):
        EnhancerPipeline(**comps)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_precision_runs(tmp_path, dtype):
    pipe = EnhancerPipeline(**build_tiny_components(tmp_path)).to(dtype=dtype)
    pipe.set_progress_bar_config(disable=True)
    img = random_image((32, 32))
    try:
        out = pipe(image=img, generator=gen(0), num_inference_steps=2, output_type="np").images
    except RuntimeError as err:  # some CPU builds lack fp16 kernels
        if dtype == torch.float16 and "not implemented" in str(err).lower():
            pytest.skip(f"fp16 not supported on this CPU build: {err}")
        raise
    assert out.shape == (1, 32, 32, 3) and np.isfinite(out).all()


def test_matches_stock_controlnet_pipeline_oracle(tiny_components):
    """Noise start, untiled: diffusers' own StableDiffusionControlNetPipeline, run with the PASD UNet,
    is an independent implementation of the same loop (prompting, CFG, ControlNet, UniPC)."""
    from diffusers import StableDiffusionControlNetPipeline

    from pipelines.noising import make_inference_scheduler

    comps = dict(tiny_components)
    ours = EnhancerPipeline(**{**comps, "scheduler": make_inference_scheduler()})
    ours.set_progress_bar_config(disable=True)
    stock = StableDiffusionControlNetPipeline(
        vae=comps["vae"], text_encoder=comps["text_encoder"], tokenizer=comps["tokenizer"], unet=comps["unet"],
        controlnet=comps["controlnet"], scheduler=make_inference_scheduler(), safety_checker=None,
        feature_extractor=None, requires_safety_checker=False,
    )
    stock.set_progress_bar_config(disable=True)
    img = random_image((64, 48), seed=11)
    kw = dict(prompt="a photo", negative_prompt="blurry", num_inference_steps=3, guidance_scale=5.0)
    a = ours(image=img, generator=gen(4), controlnet_conditioning_scale=0.7, output_type="latent", **kw).images
    b = stock(image=img, generator=gen(4), controlnet_conditioning_scale=0.7, output_type="latent", **kw).images
    torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)


# ---------------------------------------------------------------- diffusers call conventions
def test_old_image_first_call_with_the_prompt_by_keyword(tiny_pipe):
    """``pipe(image, prompt="...")``: Python would bind the image to ``prompt`` and stop with "multiple values for
    argument 'prompt'"; it is the old call and works like ``pipe(prompt, image)``, with a FutureWarning that names
    the caller's line."""
    import inspect

    img = random_image((64, 48), seed=17)
    kw = dict(num_inference_steps=2, output_type="np", guidance_scale=5.0)
    with pytest.warns(FutureWarning, match=r"pipe\(prompt, image\)") as caught:
        old = tiny_pipe(img, prompt="a photo of a cat", generator=gen(3), **kw).images
    assert {w.filename for w in caught if w.category is FutureWarning} == {__file__}
    new = tiny_pipe("a photo of a cat", img, generator=gen(3), **kw).images
    np.testing.assert_array_equal(old, new)
    assert not np.array_equal(old, tiny_pipe(image=img, generator=gen(3), **kw).images)  # the prompt was used
    with pytest.warns(FutureWarning) as caught:  # the old positional form and old keyword name also name the caller
        tiny_pipe(img, "a photo of a cat", generator=gen(3), conditioning_scale=0.5, **kw)
    future = [w for w in caught if w.category is FutureWarning]
    assert len(future) == 2 and {w.filename for w in future} == {__file__}
    # the call still shows (and checks) the documented signature
    params = list(inspect.signature(tiny_pipe.__call__).parameters)
    assert params[:2] == ["prompt", "image"] and "guidance_scale" in params
    assert "image-first" not in (tiny_pipe.__call__.__doc__ or "") and "Enhance one image" in tiny_pipe.__call__.__doc__
    with pytest.raises(TypeError, match="multiple values"):
        tiny_pipe(img, prompt="x", image=img)  # two images: genuinely ambiguous


def test_prompt_first_positional_and_keyword_calls_equal_the_old_call(tiny_pipe):
    from pipelines.pipeline_enhancer import DEFAULT_PROMPT

    img = random_image((64, 48), seed=13)
    kw = dict(num_inference_steps=2, output_type="np")
    with pytest.warns(FutureWarning):
        old = tiny_pipe(img, generator=gen(2), conditioning_scale=0.6, **kw).images  # image first, old name
    calls = [
        tiny_pipe(DEFAULT_PROMPT, img, generator=gen(2), controlnet_conditioning_scale=0.6, **kw),
        tiny_pipe(prompt=DEFAULT_PROMPT, image=img, generator=gen(2), controlnet_conditioning_scale=0.6, **kw),
        tiny_pipe(None, img, generator=gen(2), controlnet_conditioning_scale=0.6, **kw),
        tiny_pipe(image=img, generator=gen(2), controlnet_conditioning_scale=0.6, **kw),
    ]
    for out in calls:
        np.testing.assert_array_equal(out.images, old)
    # precomputed embeddings give the same result as the prompts they came from
    pos, neg = tiny_pipe.encode_prompt(DEFAULT_PROMPT, tiny_pipe.device, 1, True,
                                       "blurry, dotted, noise, raster lines, unclear, lowres, over-smoothed")
    emb = tiny_pipe(image=img, prompt_embeds=pos, negative_prompt_embeds=neg, generator=gen(2),
                    controlnet_conditioning_scale=0.6, **kw).images
    np.testing.assert_array_equal(emb, old)


def test_tensor_inputs_in_both_ranges_agree(tiny_pipe):
    img = random_image((32, 32), seed=14)
    t01 = torch.from_numpy(np.asarray(img).copy()).permute(2, 0, 1).float() / 255
    a = tiny_pipe(image=t01, generator=gen(0), **FAST).images
    b = tiny_pipe(image=t01 * 2 - 1, generator=gen(0), **FAST).images  # [-1, 1], as VaeImageProcessor outputs
    c = tiny_pipe(image=t01[None], generator=gen(0), **FAST).images
    np.testing.assert_allclose(a, b, atol=1.01 / 255)
    np.testing.assert_array_equal(a, c)


def test_num_images_per_prompt_and_given_latents(tiny_pipe):
    img = random_image((32, 32), seed=15)
    single = [tiny_pipe(image=img, generator=gen(s), **FAST).images[0] for s in (0, 1)]
    two = tiny_pipe(image=img, num_images_per_prompt=2, generator=[gen(0), gen(1)], **FAST).images
    assert two.shape == (2, 32, 32, 3)
    for got, ref in zip(two, single):
        np.testing.assert_allclose(got, ref, atol=1.01 / 255)  # batched vs single: float rounding only
    # two prompts for one image: a batch of 2
    pair = tiny_pipe(["a photo", "a painting"], img, generator=[gen(0), gen(0)], **FAST).images
    assert pair.shape == (2, 32, 32, 3) and np.abs(pair[0] - pair[1]).max() > 1e-3
    # given latents = the noise the generator would have drawn
    noise = torch.randn(1, 4, 4, 4, generator=gen(5))
    np.testing.assert_array_equal(tiny_pipe(image=img, latents=noise, **FAST).images,
                                  tiny_pipe(image=img, generator=gen(5), **FAST).images)


def test_callback_on_step_end_sees_and_replaces_tensors(tiny_pipe):
    img = random_image((32, 32), seed=16)
    ref = tiny_pipe(image=img, generator=gen(0), num_inference_steps=3, output_type="latent").images
    seen = []

    def record(pipe, step, t, tensors):
        seen.append((step, int(t), tuple(tensors["latents"].shape), tuple(tensors["prompt_embeds"].shape)))
        return {}

    same = tiny_pipe(image=img, generator=gen(0), num_inference_steps=3, output_type="latent",
                     callback_on_step_end=record, callback_on_step_end_tensor_inputs=["latents", "prompt_embeds"]).images
    torch.testing.assert_close(same, ref, rtol=0, atol=0)
    assert [s[0] for s in seen] == [0, 1, 2] and seen[0][2] == (1, 4, 4, 4) and seen[0][3] == (2, 77, 32)

    def zero_last(pipe, step, t, tensors):
        return {"latents": torch.zeros_like(tensors["latents"])} if step == pipe.num_timesteps - 1 else {}

    zeroed = tiny_pipe(image=img, generator=gen(0), num_inference_steps=3, output_type="latent",
                       callback_on_step_end=zero_last).images
    assert torch.count_nonzero(zeroed) == 0
    # a diffusers callback that switches guidance off half-way
    from diffusers.callbacks import SDCFGCutoffCallback

    cut = tiny_pipe(image=img, generator=gen(0), num_inference_steps=4, output_type="latent",
                    callback_on_step_end=SDCFGCutoffCallback(cutoff_step_ratio=0.5)).images
    full = tiny_pipe(image=img, generator=gen(0), num_inference_steps=4, output_type="latent").images
    assert torch.isfinite(cut).all() and (cut - full).abs().max() > 1e-4
