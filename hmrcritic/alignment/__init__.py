"""Group preference export and finetuning (GPA, Diffusion-DPO, best-of-group SFT)."""
