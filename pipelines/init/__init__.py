"""``stf init``: a LLaVA-STF model directory assembled from a base LLM and a vision tower, the
start of stage 1 (the projector trains from scratch on top of the pretrained parts).

The LLM directory (Vicuna, Llama 3, Qwen2, Mistral, ...) and the tower directory (a full CLIP or
SigLIP release, or its vision half) may be local or on S3; the written directory is what every
other job takes as ``model``.
"""
