"""A diffusers pipeline for exported latentgen models: noise -> scheduler loop with the UNet -> VAE decode.

This file imports only torch and diffusers: ``python -m latentgen.export`` copies it into the exported folder as
``pipeline.py``, and diffusers loads it from there::

    pipe = DiffusionPipeline.from_pretrained(out, custom_pipeline=f"{out}/pipeline.py", trust_remote_code=True)
    images = pipe(batch_size=4, num_inference_steps=50, generator=torch.Generator().manual_seed(0)).images

The loop is the latent-diffusion loop of LDM: ``latents`` (B, C, h, w) start as N(0, I) drawn from ``generator``
(as latentgen draws its initial noise), each step calls ``unet(latents, t)`` with the class labels (diffusers'
``class_labels``) or the cross-attention tokens (``encoder_hidden_states``), applies classifier-free guidance
``uncond + s (cond - uncond)`` when ``guidance_scale != 1`` and calls ``scheduler.step`` (with ``eta`` and
``generator`` where the scheduler takes them). The image is ``vae.decode(latents / scaling_factor + shift_factor)``.
"""

from __future__ import annotations

import inspect

import torch
from diffusers import DiffusionPipeline, ImagePipelineOutput
from diffusers.utils.torch_utils import randn_tensor


class LatentgenPipeline(DiffusionPipeline):
    """``vae`` (AutoencoderKL), ``unet`` (UNet2DModel or UNet2DConditionModel), ``scheduler``."""

    model_cpu_offload_seq = "unet->vae"

    def __init__(self, vae, unet, scheduler) -> None:
        super().__init__()
        self.register_modules(vae=vae, unet=unet, scheduler=scheduler)

    def _unet(self, latents, t, class_labels, encoder_hidden_states, encoder_attention_mask):
        kw = {}
        if class_labels is not None:
            kw["class_labels"] = class_labels
        if encoder_hidden_states is not None:
            kw["encoder_hidden_states"] = encoder_hidden_states
            if encoder_attention_mask is not None:
                kw["encoder_attention_mask"] = encoder_attention_mask
        return self.unet(latents, t, **kw).sample

    @torch.no_grad()
    def __call__(
        self,
        batch_size: int = 1,
        num_inference_steps: int = 50,
        generator: torch.Generator | None = None,
        latents: torch.Tensor | None = None,
        class_labels: torch.Tensor | None = None,
        encoder_hidden_states: torch.Tensor | None = None,
        encoder_attention_mask: torch.Tensor | None = None,
        negative_encoder_hidden_states: torch.Tensor | None = None,
        negative_encoder_attention_mask: torch.Tensor | None = None,
        guidance_scale: float = 1.0,
        eta: float = 0.0,
        sigmas: list[float] | None = None,
        output_type: str = "pil",
        return_dict: bool = True,
    ):
        """``output_type``: "pil", "np", "pt" (images in [0, 1]) or "latent" (the final latents, not decoded)."""
        size = self.unet.config.sample_size
        size = (size, size) if isinstance(size, int) else tuple(size)
        if class_labels is not None:
            batch_size = len(class_labels)
        if encoder_hidden_states is not None:
            batch_size = encoder_hidden_states.shape[0]
        shape = (batch_size, self.unet.config.in_channels, *size)
        if latents is None:
            latents = randn_tensor(shape, generator=generator, device=self.device, dtype=torch.float32)
        latents = latents.to(self.device, torch.float32)
        if sigmas is not None:
            self.scheduler.set_timesteps(sigmas=sigmas, device=self.device)
        else:
            self.scheduler.set_timesteps(num_inference_steps, device=self.device)
        latents = latents * getattr(self.scheduler, "init_noise_sigma", 1.0)  # 1 for these schedulers
        step_params = set(inspect.signature(self.scheduler.step).parameters)
        step_kw = {k: v for k, v in (("eta", eta), ("generator", generator)) if k in step_params}

        uncond_labels = uncond_states = None
        if guidance_scale != 1.0:
            if class_labels is not None:  # the null class is the last class embedding
                uncond_labels = torch.full_like(class_labels, self.unet.config.num_class_embeds - 1)
            elif negative_encoder_hidden_states is not None:
                uncond_states = negative_encoder_hidden_states
            else:
                raise ValueError("guidance_scale != 1 needs class_labels or negative_encoder_hidden_states")
        for t in self.progress_bar(self.scheduler.timesteps):
            scale_input = getattr(self.scheduler, "scale_model_input", None)  # flow schedulers have none
            model_in = latents if scale_input is None else scale_input(latents, t)
            out = self._unet(model_in, t, class_labels, encoder_hidden_states, encoder_attention_mask)
            if guidance_scale != 1.0:
                mask = negative_encoder_attention_mask
                out_u = self._unet(model_in, t, uncond_labels, uncond_states, mask)
                out = out_u + guidance_scale * (out - out_u)
            latents = self.scheduler.step(out, t, latents, **step_kw).prev_sample
        if output_type == "latent":
            return ImagePipelineOutput(images=latents) if return_dict else (latents,)
        shift = self.vae.config.get("shift_factor") or 0.0
        image = self.vae.decode(latents / self.vae.config.scaling_factor + shift).sample  # (B, C, H, W) in [-1, 1]
        image = (image / 2 + 0.5).clamp(0, 1)
        if output_type != "pt":
            image = image.permute(0, 2, 3, 1).float().cpu().numpy()
            if output_type == "pil":
                image = self.numpy_to_pil(image)
        return ImagePipelineOutput(images=image) if return_dict else (image,)
