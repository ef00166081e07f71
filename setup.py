"""dllm_rl: JAX-native reinforcement learning for masked diffusion language models (LLaDA)."""
from setuptools import find_packages, setup

setup(
    name="dllm_rl",
    version="0.1.0",
    description="JAX-native RL (AGRPO, diffu-GRPO) for masked diffusion language models such as LLaDA-8B",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    python_requires=">=3.11",
    packages=find_packages(include=["dllm_rl", "dllm_rl.*", "experiments", "experiments.*"]),
    package_data={"dllm_rl.tasks": ["data/*", "data/**/*"], "dllm_rl.assets": ["demo_model/*", "demo_model_dream/*",
                                                                                   "demo_model_a2d_qwen3/*",
                                                                                   "demo_model_llada_moe/*",
                                                                                   "llada_8b_instruct_meta/*"],
                  "experiments": ["configs/*.gin"]},
    install_requires=[
        # CPU: jax 0.10.x (py3.11); the GPU image ships jax 0.11.2 / flax 0.12.10 / orbax 0.12.4 (py3.12).
        "jax>=0.10.2,<0.12",
        "flax>=0.12.8,<0.13",
        "optax>=0.2.5,<0.3",
        "orbax-checkpoint>=0.12.4,<0.13",
        "chex>=0.1.90,<0.2",
        "numpy>=1.26,<3",
        "ml_dtypes>=0.5",
        "safetensors>=0.4.5,<1",
        "tokenizers>=0.20,<1",
        "jinja2>=3.1,<4",
        "grain>=0.2.12,<0.3",
        "tensorflow-datasets>=4.9.9,<5",
        "gin-config>=0.5,<0.6",
        "math-verify>=0.7,<1",
        "tqdm>=4.66,<5",
        "tensorboardX>=2.6,<3",
        "matplotlib>=3.8,<4",
        "pyarrow>=15",
        "scipy>=1.11",
    ],
    extras_require={
        # gs:// workdirs, checkpoints and model folders (etils epath reads them through fsspec's gcsfs).
        "gcs": ["gcsfs>=2024.2"],
        # libtpu: run on TPU VMs, and compile for TPU topologies on any Linux x86_64 machine (experiments.aot,
        # tests/test_aot.py). pip keeps the installed jax when it is in range and takes its matching libtpu.
        "tpu": ["jax[tpu]>=0.10.2,<0.12"],
        # Weights & Biases logging (experiments.run --wandb_project; WANDB_MODE=offline needs no account).
        "wandb": ["wandb>=0.17,<1"],
        # nbclient + ipykernel execute notebooks/*.ipynb in tests/test_notebooks.py (no network needed); pytest-xdist runs
        # `./run test`'s tiers on one worker per core.
        "test": ["pytest>=8,<10", "pytest-timeout>=2.3,<3", "pytest-xdist>=3.5,<4", "hypothesis>=6.100,<7", "nbclient>=0.10,<0.12",
                 "nbformat>=5.10,<6", "ipykernel>=6.29,<8", "gcsfs>=2024.2", "wandb>=0.17,<1"],
    },
)
